"""The pages' sign-in, access rules and headers, through the app (both ledgers).

What a browser renders is tested in Chromium (tests/test_pages_browser.py);
here are the rules a browser cannot show: cookies' flags, CSRF refusals,
who may see which page, and that nothing of another member leaks.
"""

from __future__ import annotations

import datetime as dt
import re

import httpx2 as httpx
import pytest

from tests.api.conftest import NOW, Api, bearer

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_of(api: Api) -> str:
    page = api.client.get("/signin")
    assert page.status_code == 200
    match = CSRF.search(page.text)
    assert match is not None, page.text
    return match.group(1)


def sign_in(api: Api, token: str) -> httpx.Response:
    csrf = csrf_of(api)
    return api.client.post("/signin", data={"csrf": csrf, "token": token}, follow_redirects=False)


def set_cookies(response: httpx.Response) -> dict[str, str]:
    """Set-Cookie headers by cookie name, whole."""
    found = {}
    for header in response.headers.get_list("set-cookie"):
        found[header.split("=", 1)[0]] = header
    return found


def test_a_stranger_is_sent_to_sign_in(api: Api) -> None:
    for path in ("/", "/admin", "/admin/members/alice"):
        response = api.client.get(path, follow_redirects=False)
        assert response.status_code == 303, path
        assert response.headers["location"] == "/signin"
    form = api.client.get("/signin")
    assert form.status_code == 200
    assert 'type="password"' in form.text
    assert '<label for="token">' in form.text


def test_signing_in_with_a_member_token_sets_a_strict_httponly_cookie(usage_data: Api) -> None:
    api = usage_data
    token = api.token("member", "alice")
    response = sign_in(api, token)
    assert response.status_code == 303
    assert response.headers["location"] == "/"
    cookie = set_cookies(response)["quotad_session"]
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie or "SameSite=Strict" in cookie
    assert "Path=/" in cookie
    page = api.client.get("/")
    assert page.status_code == 200
    assert "<h1>Your storage</h1>" in page.text
    usage = api.client.get("/me/usage", headers=bearer(token)).json()
    assert f'<data value="{usage["total"]["bytes"]}"' in page.text
    assert "bob" not in page.text


def test_sign_in_refuses_a_form_without_its_csrf_token(usage_data: Api) -> None:
    api = usage_data
    token = api.token("member", "alice")
    csrf_of(api)  # the browser holds a CSRF cookie, but the form does not repeat it
    for data in ({"token": token}, {"token": token, "csrf": "x" * 43}):
        response = api.client.post("/signin", data=data, follow_redirects=False)
        assert response.status_code == 403
        assert "quotad_session" not in set_cookies(response)
        assert "expired or was not sent by this site" in response.text


def test_sign_in_refuses_a_form_another_site_sent(usage_data: Api) -> None:
    api = usage_data
    token = api.token("member", "alice")
    csrf = csrf_of(api)
    response = api.client.post(
        "/signin",
        data={"csrf": csrf, "token": token},
        headers={"Sec-Fetch-Site": "cross-site"},
        follow_redirects=False,
    )
    assert response.status_code == 403
    assert "quotad_session" not in set_cookies(response)


def test_sign_in_explains_a_wrong_token_and_keeps_the_form(api: Api) -> None:
    csrf = csrf_of(api)
    response = api.client.post("/signin", data={"csrf": csrf, "token": "qd_nonsense"})
    assert response.status_code == 401
    assert "That token was not accepted" in response.text
    assert 'name="token"' in response.text
    response = api.client.post("/signin", data={"csrf": csrf, "token": ""})
    assert response.status_code == 401
    assert "Enter your API token." in response.text
    response = api.client.post(
        "/signin", content=b'{"token": "x"}', headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 415


def test_a_scanner_token_cannot_sign_in(api: Api) -> None:
    response = sign_in(api, api.token("scanner"))
    assert response.status_code == 403
    assert "quotad_session" not in set_cookies(response)


def test_a_member_cannot_reach_another_members_page_or_the_admin_page(usage_data: Api) -> None:
    api = usage_data
    sign_in(api, api.token("member", "alice"))
    for path in ("/admin/members/bob", "/admin/members/nobody-at-all"):
        response = api.client.get(path, follow_redirects=False)
        # The same answer whether or not the member exists.
        assert response.status_code == 403, path
        assert "You may only see your own usage." in response.text
        assert "700" not in response.text
    assert api.client.get("/admin").status_code == 403
    own = api.client.get("/admin/members/alice", follow_redirects=False)
    assert own.status_code == 303
    assert own.headers["location"] == "/"


def test_admin_page_puts_members_over_quota_first(usage_data: Api) -> None:
    api = usage_data
    response = sign_in(api, api.token("admin"))
    assert response.headers["location"] == "/admin"
    page = api.client.get("/admin")
    assert page.status_code == 200
    over = page.text.split('id="over-quota"')[1].split("</ul>")[0]
    assert 'data-member="alice"' in over
    assert 'data-member="bob"' not in over
    by_name = api.client.get("/admin?sort=name&order=asc").text
    assert by_name.index('data-member="alice" data-state') < by_name.index('data-member="bob"')
    by_bytes = api.client.get("/admin?sort=bytes&order=asc").text
    rows = re.findall(r'<tr data-member="(\w+)"', by_bytes)
    assert rows == ["bob", "alice"]
    assert 'aria-sort="ascending"' in by_bytes
    bad = api.client.get("/admin?sort=password")
    assert bad.status_code == 422
    assert "The table sorts by" in bad.text
    member_page = api.client.get("/admin/members/bob")
    assert member_page.status_code == 200
    assert "Storage of bob" in member_page.text
    assert api.client.get("/admin/members/nobody").status_code == 404


def test_the_trusted_proxys_identity_header_signs_in_a_member(usage_data: Api) -> None:
    api = usage_data
    proxy = api.client_from("10.1.2.3")
    page = proxy.get("/", headers={"X-Remote-User": "alice"})
    assert page.status_code == 200
    assert "(single sign-on)" in page.text
    assert "Sign out" not in page.text  # the proxy's session is not ours to end
    # From anyone else the header is ignored.
    stranger = api.client_from("192.0.2.7")
    response = stranger.get("/", headers={"X-Remote-User": "alice"}, follow_redirects=False)
    assert response.status_code == 303
    assert proxy.get("/", headers={"X-Remote-User": "nobody"}).status_code == 401


def test_a_revoked_token_ends_the_session(usage_data: Api) -> None:
    api = usage_data
    token = api.token("member", "alice")
    sign_in(api, token)
    assert api.client.get("/").status_code == 200
    api.revoke(token)
    response = api.client.get("/", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/signin?expired=1"
    assert "quotad_session" in set_cookies(response)  # deleted: Max-Age=0
    assert "Max-Age=0" in set_cookies(response)["quotad_session"]
    assert "Your session has ended" in api.client.get("/signin?expired=1").text


def test_signing_out_needs_the_csrf_token_and_forgets_the_cookie(usage_data: Api) -> None:
    api = usage_data
    sign_in(api, api.token("member", "alice"))
    page = api.client.get("/")
    match = CSRF.search(page.text)
    assert match is not None
    refused = api.client.post("/signout", data={"csrf": "no"}, follow_redirects=False)
    assert refused.status_code == 403
    assert api.client.get("/").status_code == 200
    response = api.client.post("/signout", data={"csrf": match.group(1)}, follow_redirects=False)
    assert response.status_code == 303
    assert "Max-Age=0" in set_cookies(response)["quotad_session"]
    api.client.cookies.delete("quotad_session")
    assert api.client.get("/", follow_redirects=False).status_code == 303


def test_over_https_the_cookies_are_secure_host_only(usage_data: Api) -> None:
    api = usage_data
    proxy = api.client_from("10.1.2.3")
    https = {"X-Forwarded-Proto": "https"}
    form = proxy.get("/signin", headers=https)
    cookies = set_cookies(form)
    assert "__Host-quotad_csrf" in cookies
    assert "Secure" in cookies["__Host-quotad_csrf"]
    match = CSRF.search(form.text)
    assert match is not None
    # The test client, speaking plain HTTP to the app, keeps Secure cookies to
    # itself: send the one a browser would.
    response = proxy.post(
        "/signin",
        data={"csrf": match.group(1), "token": api.token("member", "alice")},
        headers={**https, "Cookie": f"__Host-quotad_csrf={match.group(1)}"},
        follow_redirects=False,
    )
    assert response.status_code == 303
    session = set_cookies(response)["__Host-quotad_session"]
    assert "Secure" in session
    assert "HttpOnly" in session
    assert "Domain" not in session


def test_pages_are_never_cached_or_framed_and_run_no_script(usage_data: Api) -> None:
    api = usage_data
    token = api.token("member", "alice")
    page = api.client.get("/", headers=bearer(token))
    assert page.status_code == 200
    assert page.headers["cache-control"] == "no-store"
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert "script-src" not in page.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert "<script" not in page.text
    css = api.client.get("/static/quotad.css")
    assert css.status_code == 200
    assert css.headers["content-type"].startswith("text/css")


def test_the_member_page_shows_state_grace_and_charges_in_words(usage_data: Api) -> None:
    api = usage_data
    token = api.token("member", "alice")
    page = api.client.get("/", headers=bearer(token)).text
    usage = api.client.get("/me/usage", headers=bearer(token)).json()
    total = next(q for q in usage["quotas"] if q["scope"] == "total")
    assert total["state"] == "soft"
    grace_end = dt.datetime.fromisoformat(total["grace_ends_at"])
    assert f"{grace_end.day} {grace_end:%B} {grace_end.year}" in page
    assert "over your soft limit" in page
    charges = api.client.get("/me/charges", headers=bearer(token)).json()
    assert f'<data value="{charges["amount"]}" id="current-amount">' in page
    forecast = api.client.get("/me/forecast", headers=bearer(token)).json()
    for scope in forecast["forecasts"]:
        assert scope["summary"] in page
    assert NOW.year >= 2026  # the fixture's clock: pages speak of real dates


@pytest.mark.parametrize("path", ["/", "/admin", "/admin/members/alice"])
def test_a_bad_bearer_token_gets_a_page_not_a_redirect(api: Api, path: str) -> None:
    response = api.client.get(path, headers=bearer("qd_" + "a" * 43))
    assert response.status_code == 401
    assert "Sign in" in response.text


def test_admin_page_says_whether_a_grace_period_has_ended(api: Api) -> None:
    # carol has been over her soft limit for ten days (grace 7 days): ended.
    # dave went over his hard limit an hour ago: restricted, but his grace
    # period, which began then, has not ended.
    api.record("homes", NOW - dt.timedelta(days=10), [("carol", 1500, 1), ("dave", 10, 1)])
    api.record("homes", NOW - dt.timedelta(hours=1), [("carol", 1500, 1), ("dave", 2500, 1)])
    page = api.client.get("/admin", headers=bearer(api.token("admin"))).text
    over = page.split('id="over-quota"')[1].split("</ul>")[0]
    items = re.findall(r'<li data-member="(\w+)">(.*?)</li>', over, re.DOTALL)
    assert [name for name, _ in items] == ["dave", "carol"]  # hard before grace over
    dave, carol = (text for _, text in items)
    assert "over hard limit" in dave
    assert "grace ends" in dave
    assert "grace period over" in carol
    assert "grace ended" in carol
