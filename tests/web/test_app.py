"""The owner's page through its ASGI interface (Starlette's TestClient, real index, real files).

The browser itself is driven in test_browser.py; these are the rules: login, roles, CSRF,
escaping, path traversal, hand-over and erase through the store's own code.
"""

from __future__ import annotations

import dataclasses
import io
import os
import re
import sqlite3
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from appliance.config import load_config
from appliance.reference import format_reference
from appliance.web.app import JOURNAL_UNITS, WebSettings, create_app
from tests.web.conftest import USERS, Shop

CSRF_RE = re.compile(r'name="csrf" value="([^"]+)"')


class Clock:
    """An injectable wall clock."""

    def __init__(self) -> None:
        import time

        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def app_client(shop: Shop, clock: Clock) -> Iterator[TestClient]:
    settings = dataclasses.replace(
        WebSettings.from_config(load_config(Path(os.devnull), state_dir=shop.state_dir),
                                secure_cookies=True, fingerprint=None,
                                cli_args=("--state-dir", str(shop.state_dir))),
        language="en", lockout_failures=3, lockout_s=60.0, session_idle_s=600.0,
        session_max_s=3600.0)
    # https: the session cookie is Secure, and httpx sends it back only over https.
    with TestClient(create_app(settings, clock=clock), base_url="https://testserver",
                    follow_redirects=False) as client:
        yield client


def test_settings_come_from_the_configuration_alone(tmp_path: Path) -> None:
    defaulted = [f.name for f in dataclasses.fields(WebSettings)
                 if f.default is not dataclasses.MISSING
                 or f.default_factory is not dataclasses.MISSING]
    assert defaulted == []
    path = tmp_path / "config.toml"
    path.write_text('[device]\nlanguage = "en"\n[web]\nsession_idle_s = 11.0\n'
                    'session_max_s = 12.0\nlockout_failures = 13\nlockout_s = 14.0\n',
                    encoding="utf-8")
    config = load_config(path, state_dir=tmp_path / "state")
    settings = WebSettings.from_config(config, secure_cookies=False, fingerprint="ab",
                                       cli_args=("--x",))
    assert settings == WebSettings(
        db_path=config.db_path, recordings_dir=config.recordings_dir,
        state_dir=tmp_path / "state", web_dir=config.web_dir, language="en",
        device_language="en", languages_dir=config.speech.languages_dir, lines=("main",),
        secure_cookies=False, session_idle_s=11.0, session_max_s=12.0, lockout_failures=13,
        lockout_s=14.0, fingerprint="ab", cli_args=("--x",), journal_units=JOURNAL_UNITS)
    path.write_text('[device]\nlanguage = "en"\n[web]\nlanguage = "hu"\n', encoding="utf-8")
    assert WebSettings.from_config(load_config(path, state_dir=tmp_path), secure_cookies=True,
                                   fingerprint=None, cli_args=()).language == "hu"


def login(client: TestClient, name: str, password: str | None = None) -> None:
    page = client.get("/login")
    token = CSRF_RE.search(page.text).group(1)
    reply = client.post("/login", data={"csrf": token, "account": name, "password":
                                        password or USERS[name][1], "next": "/"})
    assert reply.status_code == 303, reply.text


def csrf(client: TestClient, path: str) -> str:
    return CSRF_RE.search(client.get(path).text).group(1)


def audit_rows(shop: Shop) -> list[tuple[str, str, str | None]]:
    with sqlite3.connect(shop.db_path) as conn:
        return conn.execute("SELECT action, actor, reference FROM audit ORDER BY id").fetchall()


PAGES = ["/", "/calls", "/calls/{ref}", "/calls/{ref}/audio", "/calls/{ref}/download",
         "/status", "/status/fragment", "/health", "/audit", "/logs"]
POSTS = ["/logout", "/calls/{ref}/handover", "/calls/{ref}/erase", "/audit/verify"]


def test_every_page_refuses_without_login(app_client: TestClient, shop: Shop) -> None:
    ref = shop.calls[0].reference
    for path in PAGES:
        page = app_client.get(path.format(ref=ref), headers={"accept": "text/html"})
        assert page.status_code == 303, path
        assert page.headers["location"].startswith("/login"), path
        assert shop.calls[0].reference not in page.text
        media = app_client.get(path.format(ref=ref), headers={"accept": "*/*"})
        assert media.status_code == 401, path
    for path in POSTS:
        reply = app_client.post(path.format(ref=ref), data={"reason": "x", "confirm": ref})
        assert reply.status_code == 401, path
    assert shop.calls[0].recording.exists()


def test_login_is_audited_and_wrong_passwords_lock(app_client: TestClient, shop: Shop) -> None:
    login(app_client, "olga")
    assert app_client.get("/calls").status_code == 200
    other = TestClient(app_client.app, base_url="https://testserver", follow_redirects=False)
    for _ in range(3):
        token = CSRF_RE.search(other.get("/login").text).group(1)
        reply = other.post("/login", data={"csrf": token, "account": "sam",
                                           "password": "wrong-password"})
        assert reply.status_code in (401, 429)
    assert reply.status_code == 429
    # Locked: even the right password is refused now.
    token = CSRF_RE.search(other.get("/login").text).group(1)
    reply = other.post("/login", data={"csrf": token, "account": "sam",
                                       "password": USERS["sam"][1]})
    assert reply.status_code == 429
    actions = [(a, actor) for a, actor, _ in audit_rows(shop) if a.startswith("web-login")]
    assert actions[0] == ("web-login", "web:olga@testclient")
    assert ("web-login-failed", "web:sam@testclient") in actions


def test_login_form_without_its_token_is_refused(app_client: TestClient) -> None:
    app_client.get("/login")
    reply = app_client.post("/login", data={"account": "olga", "password": USERS["olga"][1]})
    assert reply.status_code == 403
    assert "appliance_session" not in reply.cookies


def test_forms_without_csrf_are_refused(app_client: TestClient, shop: Shop) -> None:
    login(app_client, "olga")
    ref = shop.calls[0].reference
    for path in POSTS:
        reply = app_client.post(path.format(ref=ref), data={"reason": "r", "confirm": ref,
                                                            "csrf": "forged"})
        assert reply.status_code == 403, path
    assert shop.calls[0].recording.exists()
    assert app_client.get("/calls").status_code == 200  # the logout was refused too


def test_roles(app_client: TestClient, shop: Shop) -> None:
    ref = shop.calls[0].reference
    login(app_client, "sam")
    token = csrf(app_client, f"/calls/{ref}")
    assert app_client.get(f"/calls/{ref}/audio").status_code == 200
    page = app_client.get(f"/calls/{ref}").text
    assert 'id="handover-form"' not in page
    assert 'id="erase-form"' not in page
    for path in (f"/calls/{ref}/handover", f"/calls/{ref}/erase"):
        reply = app_client.post(path, data={"csrf": token, "reason": "r", "confirm": ref})
        assert reply.status_code == 403
    assert app_client.get("/audit").status_code == 403
    app_client.post("/logout", data={"csrf": token})
    login(app_client, "tina")
    assert app_client.get(f"/calls/{ref}/audio").status_code == 403
    assert app_client.get("/calls").status_code == 403
    assert app_client.get("/audit").status_code == 200
    assert app_client.get("/status").status_code == 200


def test_hostile_caller_name_is_text(app_client: TestClient, shop: Shop) -> None:
    login(app_client, "olga")
    for path in ("/calls", f"/calls/{shop.hostile.reference}"):
        page = app_client.get(path).text
        assert "<script>alert" not in page
        assert "<img src=x" not in page
        assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in page


@pytest.mark.parametrize("path", [
    "/calls/..%2F..%2Fappliance.db/audio",
    "/calls/../../appliance.db/download",
    "/calls/%2e%2e/download",
    "/calls/12345678/../../appliance.db",
    "/static/../appliance.db",
    "/static/%2e%2e/%2e%2e/store/db.py",
])
def test_path_traversal_in_download_urls(app_client: TestClient, path: str) -> None:
    login(app_client, "olga")
    reply = app_client.get(path)
    assert reply.status_code in (404, 303, 400), reply.status_code
    assert b"SQLite format" not in reply.content
    assert b"def " not in reply.content


def test_a_tampered_index_path_cannot_serve_other_files(app_client: TestClient,
                                                         shop: Shop) -> None:
    ref = shop.calls[0].reference
    with sqlite3.connect(shop.db_path) as conn:
        conn.execute("UPDATE calls SET recording_path = ? WHERE reference = ?",
                     (str(shop.db_path), ref))
    login(app_client, "olga")
    assert app_client.get(f"/calls/{ref}/audio").status_code == 404


def test_search_did_you_mean_number_and_paging(app_client: TestClient, shop: Shop) -> None:
    login(app_client, "sam")
    ref = shop.calls[0].reference
    typo = ref[:-1] + str((int(ref[-1]) + 1) % 10)
    page = app_client.get("/calls", params={"q": format_reference(typo)}).text
    assert "not a valid call reference" in page
    assert f'href="/calls/{ref}"' in page
    found = app_client.get("/calls", params={"q": format_reference(ref)})
    assert found.status_code == 303
    assert found.headers["location"] == f"/calls/{ref}"
    # Any spelling of the number.
    page = app_client.get("/calls", params={"q": "+36 30 111 2233"}).text
    assert shop.calls[1].reference in page
    assert shop.calls[0].reference not in page
    page = app_client.get("/calls", params={"outcome": "abandoned"}).text
    assert shop.calls[1].reference in page
    assert shop.calls[2].reference not in page
    page = app_client.get("/calls").text
    order = list(re.findall(r'href="/calls/(\d{8})"', page))
    assert order == [c.reference for c in reversed(shop.calls)]


def test_play_and_download_are_audited_and_seekable(app_client: TestClient,
                                                    shop: Shop) -> None:
    login(app_client, "sam")
    ref = shop.calls[0].reference
    part = app_client.get(f"/calls/{ref}/audio", headers={"range": "bytes=4-9"})
    assert part.status_code == 206
    assert len(part.content) == 6
    assert part.headers["content-type"] == "audio/flac"
    app_client.get(f"/calls/{ref}/audio", headers={"range": "bytes=10-20"})
    whole = app_client.get(f"/calls/{ref}/download")
    assert whole.content == shop.calls[0].recording.read_bytes()
    assert "attachment" in whole.headers["content-disposition"]
    rows = [(a, actor) for a, actor, r in audit_rows(shop) if r == ref]
    assert rows.count(("play", "web:sam@testclient")) == 1  # a seek is not a new play
    assert ("download", "web:sam@testclient") in rows


def test_handover_zip_verifies_and_is_audited_with_its_reason(app_client: TestClient,
                                                              shop: Shop,
                                                              tmp_path: Path) -> None:
    login(app_client, "olga")
    ref = shop.calls[0].reference
    token = csrf(app_client, f"/calls/{ref}")
    empty = app_client.post(f"/calls/{ref}/handover", data={"csrf": token, "reason": " "})
    assert empty.status_code == 303
    assert "Give a reason." in app_client.get(empty.headers["location"]).text
    reply = app_client.post(f"/calls/{ref}/handover",
                            data={"csrf": token, "reason": "caller's request, ticket 7"})
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == "application/zip"
    zipfile.ZipFile(io.BytesIO(reply.content)).extractall(tmp_path)
    folder = tmp_path / format_reference(ref)
    check = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=folder, capture_output=True,
                           text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "proof.json: OK" in check.stdout
    actions = [(a, actor) for a, actor, r in audit_rows(shop) if r == ref]
    assert ("handover", "web:olga@testclient") in actions
    assert ("export", "web:olga@testclient") in actions
    assert "caller's request, ticket 7" in (folder / "proof.json").read_text()
    assert not list((shop.web_dir / "tmp").iterdir())  # the package does not linger


def test_erase_needs_reason_and_confirmation(app_client: TestClient, shop: Shop) -> None:
    login(app_client, "olga")
    made = shop.calls[0]
    ref = made.reference
    token = csrf(app_client, f"/calls/{ref}")
    wrong = app_client.post(f"/calls/{ref}/erase",
                            data={"csrf": token, "reason": "asked", "confirm": "12345678"})
    assert wrong.status_code == 303
    assert "does not match" in app_client.get(wrong.headers["location"]).text
    assert made.recording.exists()
    done = app_client.post(f"/calls/{ref}/erase", data={
        "csrf": token, "reason": "GDPR Art. 17 request", "confirm": format_reference(ref)})
    assert done.status_code == 303
    assert done.headers["location"].endswith("done=erased")
    assert not made.recording.exists()
    page = app_client.get(done.headers["location"]).text
    assert "The call was erased" in page
    assert "+36305550123" not in page
    assert 'id="player"' not in page
    assert ("erase", "web:olga@testclient", ref) in audit_rows(shop)


def test_sessions_expire_and_end_with_a_new_password(app_client: TestClient, shop: Shop,
                                                     clock: Clock) -> None:
    from appliance.web.accounts import Accounts

    login(app_client, "sam")
    assert app_client.get("/calls").status_code == 200
    clock.now += 601  # idle longer than session_idle_s
    assert app_client.get("/calls").status_code == 401
    login(app_client, "sam")
    clock.now += 1
    Accounts.in_dir(shop.web_dir).set_password("sam", "a-new-password")
    assert app_client.get("/calls").status_code == 401


def test_audit_page_verifies_the_chain(app_client: TestClient, shop: Shop) -> None:
    login(app_client, "tina")
    token = csrf(app_client, "/audit")
    reply = app_client.post("/audit/verify", data={"csrf": token})
    assert reply.status_code == 303
    page = app_client.get(reply.headers["location"]).text
    assert "The audit chain is intact" in page
    with sqlite3.connect(shop.db_path) as conn:
        conn.execute("UPDATE audit SET actor = 'someone else' WHERE id = 1")
    reply = app_client.post("/audit/verify", data={"csrf": token})
    page = app_client.get(reply.headers["location"]).text
    assert "BROKEN" in page
    assert "row 1" in page
    assert "someone else" in page  # the newest rows are listed, the altered one too


def test_language_switch(app_client: TestClient) -> None:
    login(app_client, "sam")
    assert "Calls" in app_client.get("/calls").text
    app_client.get("/lang/hu?next=/calls")
    assert "Hívások" in app_client.get("/calls").text


def test_health_shows_the_doctors_checks(app_client: TestClient) -> None:
    login(app_client, "tina")
    page = app_client.get("/health").text
    assert 'class="check-pass"' in page
    assert ">config<" in page


def test_every_word_the_templates_use_exists_in_both_languages() -> None:
    from appliance.store.db import OUTCOMES, RECORDING_DECISIONS
    from appliance.web.i18n import translator

    templates = Path(__file__).resolve().parents[2] / "appliance/web/templates"
    keys = {k for p in templates.glob("*.html")
            for k in re.findall(r'\bt\("([a-z_]+)"\)', p.read_text(encoding="utf-8"))}
    keys |= {f"out_{o}" for o in OUTCOMES} | {f"dec_{d}" for d in RECORDING_DECISIONS}
    assert len(keys) > 50
    for lang in ("hu", "en"):
        t = translator(lang)
        assert all(t(k) for k in keys)


def test_notice_layers_as_stored_are_read_safely() -> None:
    from appliance.web.app import _layers

    stored = '[{"layer": "notice", "version": "v3", "played": "full"}, "junk"]'
    assert _layers(stored) == [{"layer": "notice", "version": "v3", "played": "full"}]
    assert _layers(None) == []
    assert _layers("{not json") == []
    assert _layers('{"layer": 1}') == []


def test_audit_page_lists_the_newest_rows_and_pages_back(app_client: TestClient,
                                                         shop: Shop) -> None:
    from appliance.web.index import AUDIT_PAGE_SIZE

    with sqlite3.connect(shop.db_path) as conn:
        conn.executemany("INSERT INTO audit (t, action, actor, reference, details, prev_hash, "
                         "hash) VALUES (?, 'filler', 'test', NULL, '{}', '', '')",
                         [(float(i),) for i in range(AUDIT_PAGE_SIZE)])
    login(app_client, "tina")
    first = app_client.get("/audit").text
    assert first.count("<tr><td class=\"num\">") == AUDIT_PAGE_SIZE
    assert "call-finalized" not in first  # the oldest rows are on the next page
    older = re.search(r'id="older" href="(/audit\?before=\d+)"', first).group(1)
    assert "call-finalized" in app_client.get(older).text
