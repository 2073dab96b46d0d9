"""The member and admin pages in headless Chromium, against a real `quotad serve`.

Every figure a page shows is checked against the JSON API's answer for the
same thing, asked of the same server in the same test. Screenshots at desktop
and phone width (and in the dark scheme) go to tests/browser.py's output
folder, var/test-output/pages/, for review.
"""

from __future__ import annotations

import datetime as dt
import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from quotad.auth.service import TokenService
from quotad.db import session_scope
from quotad.enforcement.repository import EnforcementRepository
from quotad.formatting import human_size
from quotad.ledger.service import LedgerService, ScanInput
from quotad.members.service import MemberService
from scanners.base import Measurement
from tests.browser import Server, browser, desktop, phone, screenshot, serve  # noqa: F401
from tests.conftest import Ledger

if TYPE_CHECKING:
    from playwright.sync_api import Page

GIB = 1024**3
MIB = 1024**2
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
DAYS = 45

CONFIG = """
[defaults.quota.total]
soft = "10GiB"
hard = "12GiB"
grace = "7d"
[enforcement]
stale_after = "36h"
[scheduler]
enabled = false  # nothing but the test changes the ledger while it looks
[billing]
currency = "EUR"
free = "1GiB"
price_per_gib_month = "0.10"
[[sources]]
name = "homes"
kind = "tree"
path = "/nonexistent/homes/{member}"
[[sources]]
name = "web"
kind = "tree"
path = "/nonexistent/web/{member}"
"""


def record(ledger: Ledger, source: str, at: dt.datetime, rows: list[Measurement]) -> None:
    scan = ScanInput(
        scan_id=uuid.uuid4(),
        source=source,
        source_kind="tree",
        started_at=at - dt.timedelta(seconds=30),
        finished_at=at,
        measurements=rows,
    )
    with session_scope(ledger.engine, write=True) as session:
        LedgerService(session, auto_register=True).record(scan)


def tree(member: str | None, name: str, size: int, files: int) -> Measurement:
    return Measurement(member=member, kind="tree", name=name, bytes=size, files=files)


@pytest.fixture
def site(ledger: Ledger) -> Iterator[Site]:
    """45 days of history: alice grows towards her soft limit, bob has sat
    over his for all of it, carol is small; the `web` source went stale
    three days ago; one directory belongs to nobody; one enforcement step
    failed."""
    for days_ago in range(DAYS, -1, -1):
        at = NOW - dt.timedelta(days=days_ago, hours=1)
        record(
            ledger,
            "homes",
            at,
            [
                tree("alice", "alice", 6 * GIB + (DAYS - days_ago) * 50 * MIB, 40_000 + days_ago),
                tree("bob", "bob", 11 * GIB, 1_200),
                tree("carol", "carol", 500 * MIB, 90),
                tree(None, "old-backup", 300 * MIB, 12),
            ],
        )
    record(ledger, "web", NOW - dt.timedelta(days=3), [tree("alice", "alice-site", 200 * MIB, 800)])
    with session_scope(ledger.engine, write=True) as session:
        alice = MemberService(session, "test").get("alice")
        EnforcementRepository(session).add_action(
            {
                "run_id": str(uuid.uuid4()),
                "member_id": alice.id,
                "source": "homes",
                "kind": "tree",
                "resource": "alice",
                "action": "push_limit",
                "status": "failed",
                "saved": None,
                "reason": "soft limit 10 GiB",
                "message": "setquota: permission denied",
                "at": NOW - dt.timedelta(minutes=5),
            }
        )
        tokens = TokenService(session, "test")
        alice_token = tokens.create(role="member", member="alice")[1]
        bob_token = tokens.create(role="member", member="bob")[1]
        admin_token = tokens.create(role="admin")[1]
    with serve(ledger.config_file(CONFIG)) as server:
        yield Site(server, alice_token, bob_token, admin_token)


class Site:
    def __init__(self, server: Server, alice: str, bob: str, admin: str) -> None:
        self.server = server
        self.base = server.base
        self.alice = alice
        self.bob = bob
        self.admin = admin

    def api(self, path: str, token: str) -> Any:
        request = urllib.request.Request(self.base + path)
        request.add_header("Authorization", f"Bearer {token}")
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)

    def sign_in(self, page: Page, token: str) -> None:
        page.goto(self.base + "/")
        assert page.url == self.base + "/signin"
        page.get_by_label("API token").fill(token)
        page.get_by_label("API token").press("Enter")  # the keyboard, not the mouse
        page.wait_for_load_state()


def data_values(page: Page, selector: str) -> list[int]:
    return [
        int(v)
        for v in page.locator(f"{selector} data").evaluate_all("els => els.map(e => e.value)")
    ]


# Text must stand out from what is behind it by 4.5:1 (WCAG 2 AA, normal text).
CONTRAST_SCRIPT = """
els => els.map(e => {
  const rgb = s => s.match(/[\\d.]+/g).map(Number);
  let bg = null;
  for (let n = e; n; n = n.parentElement) {
    const c = getComputedStyle(n).backgroundColor;
    const v = rgb(c);
    if (v.length < 4 || v[3] > 0) { bg = v; break; }
  }
  return {text: e.textContent.trim().slice(0, 40), fg: rgb(getComputedStyle(e).color),
          bg: bg || [255, 255, 255]};
})
"""


def luminance(rgb: list[float]) -> float:
    def channel(c: float) -> float:
        c /= 255
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (channel(c) for c in rgb[:3])
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def low_contrast(page: Page) -> list[str]:
    found = page.locator(
        "p, li, th, td, a, button, label, .badge, .aside, caption, figcaption, h1, h2, h3"
    ).evaluate_all(CONTRAST_SCRIPT)
    problems = []
    for item in found:
        light, dark = sorted((luminance(item["fg"]), luminance(item["bg"])), reverse=True)
        ratio = (light + 0.05) / (dark + 0.05)
        if ratio < 4.5:
            problems.append(f"{item['text']!r}: {ratio:.2f}")
    return problems


def fits_width(page: Page) -> bool:
    width: bool = page.evaluate(
        "document.documentElement.scrollWidth <= document.documentElement.clientWidth"
    )
    return width


def test_member_page_shows_the_apis_figures(
    site: Site,
    desktop: Page,  # noqa: F811
    ledger: Ledger,
) -> None:
    site.sign_in(desktop, site.alice)
    assert desktop.url == site.base + "/"
    cookies = {c["name"]: c for c in desktop.context.cookies()}
    assert cookies["quotad_session"]["httpOnly"]
    assert cookies["quotad_session"]["sameSite"] == "Strict"
    usage = site.api("/me/usage", site.alice)

    assert desktop.locator("h1").inner_text() == "Your storage"
    assert data_values(desktop, "#total") == [usage["total"]["bytes"]]
    assert human_size(usage["total"]["bytes"]) in desktop.locator("#total").inner_text()
    for quota in usage["quotas"]:
        article = f"#quota-{quota['scope']}"
        figures = data_values(desktop, f"{article} .figures")
        assert figures == [quota["used_bytes"], quota["soft_bytes"], quota["hard_bytes"]]
        state = desktop.locator(f"{article} .state")
        assert state.get_attribute("data-state") == quota["state"]
    total = next(q for q in usage["quotas"] if q["scope"] == "total")
    assert total["state"] == "ok"
    assert desktop.locator("#quota-total .state").inner_text() == "You are within your limits."

    rows = desktop.locator("#resources tbody tr")
    assert rows.count() == len(usage["resources"])
    for resource in usage["resources"]:
        row = desktop.locator(
            f'#resources tr[data-source="{resource["source"]}"][data-name="{resource["name"]}"]'
        )
        assert data_values(desktop, f'#resources tr[data-name="{resource["name"]}"]') == [
            resource["bytes"]
        ]
        assert ("stale" in row.inner_text()) == resource["stale"]

    forecast = site.api("/me/forecast", site.alice)
    for scope in forecast["forecasts"]:
        shown = desktop.locator(f'.forecast li[data-scope="{scope["scope"]}"] .summary')
        assert shown.inner_text() == scope["summary"]
    assert "At this rate you reach your soft limit around" in forecast["forecasts"][0]["summary"]

    charges = site.api("/me/charges", site.alice)
    assert desktop.locator("#current-amount").get_attribute("value") == charges["amount"]
    assert charges["amount"] in desktop.locator("#current-statement").inner_text()
    past = desktop.locator("#past-statements tbody tr")
    assert past.count() >= 1
    for i in range(past.count()):
        row = past.nth(i)
        period = row.get_attribute("data-period")
        statement = site.api(f"/me/charges?period={period}", site.alice)
        assert row.locator("data").last.get_attribute("value") == statement["amount"]

    chart = desktop.locator("figure.chart .wide svg[role=img]")
    assert chart.count() == 1
    assert chart.locator("path.usage").count() == 1
    assert chart.locator(".limit").count() == 2
    assert human_size(usage["total"]["bytes"]) in (chart.locator("desc").text_content() or "")

    assert low_contrast(desktop) == []
    screenshot(desktop, f"member-desktop-{ledger.backend}")
    desktop.emulate_media(color_scheme="dark")
    assert low_contrast(desktop) == []
    screenshot(desktop, f"member-desktop-dark-{ledger.backend}")


def test_member_page_reads_at_a_phones_width(
    site: Site,
    phone: Page,  # noqa: F811
    ledger: Ledger,
) -> None:
    site.sign_in(phone, site.alice)
    assert phone.locator("h1").inner_text() == "Your storage"
    assert fits_width(phone), "the page scrolls sideways at 390 px"
    # The narrow drawing of the chart, whose labels stay legible at this width.
    assert phone.locator("figure.chart .narrow svg").is_visible()
    assert not phone.locator("figure.chart .wide svg").is_visible()
    screenshot(phone, f"member-phone-{ledger.backend}")


def test_one_member_cannot_reach_anothers_page(
    site: Site,
    desktop: Page,  # noqa: F811
) -> None:
    site.sign_in(desktop, site.alice)
    bob = site.api("/me/usage", site.bob)
    for path in ("/admin/members/bob", "/admin/members/nobody", "/admin"):
        response = desktop.goto(site.base + path)
        assert response is not None
        assert response.status == 403, path
        assert "bob" not in desktop.locator("main").inner_text() or path == "/admin/members/bob"
        assert str(bob["total"]["bytes"]) not in desktop.content()
        assert human_size(bob["total"]["bytes"]) not in desktop.content()
    # The cookie is for the pages only: the JSON API still wants a bearer token.
    response = desktop.goto(site.base + "/members/bob/usage")
    assert response is not None
    assert response.status == 401
    # Signing out (a form with its CSRF token) ends the session.
    desktop.goto(site.base + "/")
    desktop.get_by_role("button", name="Sign out").click()
    desktop.wait_for_load_state()
    assert desktop.url == site.base + "/signin"
    desktop.goto(site.base + "/")
    assert desktop.url == site.base + "/signin"


def test_admin_page_puts_trouble_first_and_sorts(
    site: Site,
    desktop: Page,  # noqa: F811
    phone: Page,  # noqa: F811
    ledger: Ledger,
) -> None:
    site.sign_in(desktop, site.admin)
    assert desktop.url == site.base + "/admin"
    report = {u["member"]: u for u in site.api("/report", site.admin)}

    over = desktop.locator("#over-quota li")
    assert over.count() == 1
    assert over.first.get_attribute("data-member") == "bob"
    for name, usage in report.items():
        row = f'#members tr[data-member="{name}"]'
        assert data_values(desktop, row) == [usage["total"]["bytes"]]
    default_order = desktop.locator("#members tbody tr").evaluate_all(
        "rows => rows.map(r => r.dataset.member)"
    )
    assert default_order[0] == "bob"  # over quota sorts first by default

    desktop.get_by_role("link", name="Used").click()
    desktop.wait_for_load_state()
    assert "sort=bytes" in desktop.url
    order = desktop.locator("#members tbody tr").evaluate_all(
        "rows => rows.map(r => r.dataset.member)"
    )
    by_bytes = sorted(report, key=lambda n: report[n]["total"]["bytes"], reverse=True)
    assert order == by_bytes
    header = desktop.locator("#members th[aria-sort]")
    assert header.get_attribute("aria-sort") == "descending"
    desktop.get_by_role("link", name="Used").click()
    desktop.wait_for_load_state()
    order = desktop.locator("#members tbody tr").evaluate_all(
        "rows => rows.map(r => r.dataset.member)"
    )
    assert order == by_bytes[::-1]

    stale = desktop.locator("#sources tbody tr").first
    assert stale.get_attribute("data-source") == "web"
    assert stale.get_attribute("data-stale") == "true"
    assert "1 resource (300.0 MiB)" in desktop.locator("#unattributed-summary").inner_text()
    assert "old-backup" in desktop.locator("#unattributed").inner_text()
    actions = desktop.locator("#actions").inner_text()
    assert "setquota: permission denied" in actions
    assert "push limit" in actions

    # Keyboard: the first Tab reaches the skip link, which moves to the content.
    desktop.goto(site.base + "/admin")
    desktop.keyboard.press("Tab")
    assert desktop.evaluate("document.activeElement.textContent") == "Skip to content"
    desktop.keyboard.press("Enter")
    assert desktop.evaluate("document.activeElement.id") == "main"
    assert low_contrast(desktop) == []
    screenshot(desktop, f"admin-desktop-{ledger.backend}")

    site.sign_in(phone, site.admin)
    assert fits_width(phone), "the admin page scrolls sideways at 390 px"
    screenshot(phone, f"admin-phone-{ledger.backend}")

    # From the list to bob's own page, which says in words where he stands.
    desktop.locator("#over-quota").get_by_role("link", name="bob").click()
    desktop.wait_for_load_state()
    assert desktop.url == site.base + "/admin/members/bob"
    bob = site.api("/members/bob/usage", site.admin)
    total = next(q for q in bob["quotas"] if q["scope"] == "total")
    assert total["state"] == "grace_expired"
    grace_end = dt.datetime.fromisoformat(total["grace_ends_at"])
    words = desktop.locator("#quota-total .state").inner_text()
    assert words.startswith("This member is over their soft limit and the grace period ended on")
    assert f"{grace_end.day} {grace_end:%B} {grace_end.year}, {grace_end:%H:%M} UTC" in words
    assert data_values(desktop, "#total") == [bob["total"]["bytes"]]
    screenshot(desktop, f"admin-member-desktop-{ledger.backend}")


def test_sign_in_says_why_a_token_was_refused(
    site: Site,
    desktop: Page,  # noqa: F811
) -> None:
    desktop.goto(site.base + "/signin")
    desktop.get_by_label("API token").fill("qd_not-a-real-token")
    desktop.get_by_role("button", name="Sign in").click()
    desktop.wait_for_load_state()
    assert desktop.url == site.base + "/signin"
    alert = desktop.get_by_role("alert")
    assert "That token was not accepted" in alert.inner_text()
    assert not [c for c in desktop.context.cookies() if c["name"] == "quotad_session"]
