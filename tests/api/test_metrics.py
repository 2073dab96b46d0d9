"""GET /metrics: Prometheus text, open to all, on both ledgers."""

from __future__ import annotations

import datetime as dt
import re
import uuid

from api.metrics import escape
from quotad.db import session_scope
from quotad.ledger.service import LedgerService, ScanInput
from tests.api.conftest import NOW, Api, bearer
from tests.api.test_authorization import credentials

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
VALUE = r'(?:[^"\\\n]|\\[\\"n])*'
LABEL = rf'[a-zA-Z_][a-zA-Z0-9_]*="{VALUE}"'
SAMPLE = re.compile(rf"({NAME})(?:\{{({LABEL}(?:,{LABEL})*)\}})? (-?[0-9.e+]+|\+Inf|NaN)")
COMMENT = re.compile(rf"# (?:HELP {NAME} [^\n]*|TYPE {NAME} (?:counter|gauge|histogram))")

Metrics = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Metrics:
    """Every sample, by name and labels; any line out of the format fails the test."""
    assert text.endswith("\n")
    result: Metrics = {}
    typed: set[str] = set()
    for line in text[:-1].split("\n"):
        if line.startswith("#"):
            assert COMMENT.fullmatch(line), line
            if line.startswith("# TYPE"):
                typed.add(line.split()[2])
            continue
        match = SAMPLE.fullmatch(line)
        assert match, line
        name, tags, value = match.groups()
        assert re.sub(r"_(bucket|sum|count)$", "", name) in typed or name in typed, line
        pairs = re.findall(rf'([a-zA-Z_][a-zA-Z0-9_]*)="({VALUE})"', tags or "")
        key = (name, frozenset(pairs))
        assert key not in result, line
        result[key] = float(value)
    return result


def sample(metrics: Metrics, name: str, **tags: str) -> float:
    return metrics[(name, frozenset(tags.items()))]


def scrape(api: Api) -> Metrics:
    response = api.client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(response.text)


def test_sources_and_members(usage_data: Api) -> None:
    # The scans are dated from NOW, fixed when the suite started: their age
    # grows by however long the tests before this one took.
    before = (dt.datetime.now(dt.UTC) - NOW).total_seconds()
    metrics = scrape(usage_data)
    after = (dt.datetime.now(dt.UTC) - NOW).total_seconds()
    age = "quotad_source_last_scan_age_seconds"
    assert 3600 + before - 1 <= sample(metrics, age, source="homes") <= 3600 + after + 1
    assert 2 * 86400 + before - 1 <= sample(metrics, age, source="old") <= 2 * 86400 + after + 1
    for source in ("homes", "old"):
        statuses = {
            s: sample(metrics, "quotad_source_last_scan_status", source=source, status=s)
            for s in ("complete", "partial", "failed")
        }
        assert statuses == {"complete": 1, "partial": 0, "failed": 0}
    members = {
        s: sample(metrics, "quotad_members", state=s)
        for s in ("ok", "soft", "grace_expired", "hard")
    }
    # alice is over soft within her grace; bob is under.
    assert members == {"ok": 1, "soft": 1, "grace_expired": 0, "hard": 0}


def test_a_failing_source_shows_failed(usage_data: Api) -> None:
    scan = ScanInput(
        scan_id=uuid.uuid4(),
        source="homes",
        source_kind="tree",
        started_at=NOW - dt.timedelta(minutes=2),
        finished_at=NOW - dt.timedelta(minutes=1),
        error="mount point gone",
    )
    with session_scope(usage_data.ledger.engine, write=True) as session:
        LedgerService(session).record(scan)
    metrics = scrape(usage_data)
    status = "quotad_source_last_scan_status"
    assert sample(metrics, status, source="homes", status="failed") == 1
    assert sample(metrics, status, source="homes", status="complete") == 0
    assert sample(metrics, status, source="old", status="complete") == 1


def test_requests_are_counted_per_route_template(usage_data: Api) -> None:
    api = usage_data
    admin = bearer(api.token("admin"))
    before = scrape(api)
    total = "quotad_http_requests_total"
    key = (
        total,
        frozenset({("method", "GET"), ("route", "/members/{name}/usage"), ("status", "200")}),
    )
    assert key not in before
    for name in ("alice", "bob"):
        assert api.client.get(f"/members/{name}/usage", headers=admin).status_code == 200
    assert api.client.get("/members/carol/usage", headers=admin).status_code == 404
    assert api.client.get("/no/such/thing").status_code == 404
    metrics = scrape(api)
    route = "/members/{name}/usage"
    assert sample(metrics, total, method="GET", route=route, status="200") == 2
    assert sample(metrics, total, method="GET", route=route, status="404") == 1
    assert sample(metrics, total, method="GET", route="unmatched", status="404") == 1
    # The scrape before this one is counted too.
    assert sample(metrics, total, method="GET", route="/metrics", status="200") == 1
    assert not any("alice" in dict(tags).get("route", "") for _, tags in metrics)
    duration = "quotad_http_request_duration_seconds"
    assert sample(metrics, f"{duration}_count", method="GET", route=route) == 3
    assert sample(metrics, f"{duration}_bucket", method="GET", route=route, le="+Inf") == 3
    assert sample(metrics, f"{duration}_sum", method="GET", route=route) > 0
    buckets = sorted(
        (float(dict(tags)["le"]), value)
        for (name, tags), value in metrics.items()
        if name == f"{duration}_bucket" and dict(tags)["route"] == route
    )
    counts = [value for _, value in buckets]
    assert counts == sorted(counts)
    again = scrape(api)
    assert sample(again, total, method="GET", route="/metrics", status="200") == 2


def test_label_values_are_escaped() -> None:
    assert escape('a\\b"c\nd') == 'a\\\\b\\"c\\nd'
    line = f'm{{source="{escape(chr(92) + chr(34) + chr(10))}"}} 1\n'
    assert parse("# TYPE m gauge\n" + line) == {("m", frozenset({("source", '\\\\\\"\\n')})): 1}


def test_an_empty_ledger_still_answers(api: Api) -> None:
    metrics = scrape(api)
    assert sample(metrics, "quotad_members", state="ok") == 0


def test_open_to_every_caller(usage_data: Api) -> None:
    # Not in the matrix of test_authorization: its checks that nothing of
    # another member leaks look for figures like "700", which a latency sum may
    # hold by chance. The metrics name no member and no path.
    for caller, headers in credentials(usage_data).items():
        response = usage_data.client.get("/metrics", headers=headers)
        assert response.status_code == 200, caller
        assert "alice" not in response.text
        assert "bob" not in response.text
