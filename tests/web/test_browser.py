"""The owner's page in a real browser: Debian's Chromium driven by Playwright.

One browser and one real ``appliance web`` process (plain HTTP on loopback) for the module;
each test opens its own context (its own cookies). Screenshots of every page go to
``test-artifacts/screenshots/`` (gitignored). Chromium comes from apt (``./setup.sh test``
installs it); Playwright is only the driver and never downloads a browser of its own.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright import sync_api as playwright_api

from appliance.bench.web import free_port, start_process, stop_process
from appliance.reference import format_reference
from tests.web.conftest import HOSTILE_NAME, USERS, Shop, make_shop

CHROMIUM = Path(os.environ.get("APPLIANCE_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--autoplay-policy=no-user-gesture-required"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
#: Upper bound for a page to load, an element to appear.
UI_TIMEOUT_MS = 10_000
#: The simulated call of the live-status test: the daemon starts and the call rings within.
LIVE_CALL_TIMEOUT_MS = 60_000

if not CHROMIUM.exists():  # the whole module needs the browser; say how to get it
    pytest.fail(f"{CHROMIUM} missing: sudo apt-get install chromium (./setup.sh test does)",
                pytrace=False)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Shop:
    return make_shop(tmp_path_factory.mktemp("browser") / "state")


@pytest.fixture(scope="module")
def base_url(shop: Shop) -> Iterator[str]:
    port = free_port()
    proc = start_process(["--state-dir", str(shop.state_dir), "web", "--listen", "127.0.0.1",
                          "--port", str(port), "--http"], port, env=_env())
    yield f"http://127.0.0.1:{port}"
    # After every test's logins, plays, searches: the page's memory budget
    # (docs/performance.md) holds because the audio stack never entered its process.
    maps = Path(f"/proc/{proc.pid}/maps").read_text()
    stop_process(proc)
    assert "numpy" not in maps
    assert "scipy" not in maps


@pytest.fixture(scope="module")
def browser(base_url: str) -> Iterator[object]:
    # After the shop and its server: Playwright's sync API keeps an event loop running in
    # this thread, and the shop is made with asyncio.run().
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page_for(browser: object, base_url: str) -> Iterator[object]:
    """``page_for(account)``: a logged-in page in a context of its own."""
    contexts = []

    def make(account: str | None) -> object:
        context = browser.new_context(base_url=base_url, accept_downloads=True,  # type: ignore[attr-defined]
                                      viewport={"width": 1000, "height": 720})
        context.set_default_timeout(UI_TIMEOUT_MS)
        contexts.append(context)
        page = context.new_page()
        dialogs: list[str] = []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.dialogs = dialogs
        if account is not None:
            page.goto("/login")
            page.fill("#account", account)
            page.fill("#password", USERS[account][1])
            page.click("#login")
            page.wait_for_selector("#who")
        return page

    yield make
    for context in contexts:
        context.close()


def shot(page: object, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)  # type: ignore[attr-defined]


def test_login_then_search_with_a_typo(page_for: object, shop: Shop) -> None:
    page = page_for(None)
    page.goto("/calls")
    assert page.url.endswith("/login?next=/calls")
    shot(page, "login")
    page.fill("#account", "olga")
    page.fill("#password", "not the password")
    page.click("#login")
    assert page.locator("#error").is_visible()
    page.fill("#password", USERS["olga"][1])
    page.click("#login")
    page.wait_for_selector("#calls")
    assert page.locator("#calls tbody tr").count() >= 3  # (+ the live test's demo call)
    shot(page, "calls")
    ref = shop.calls[0].reference
    typo = ref[:-1] + str((int(ref[-1]) + 1) % 10)
    page.fill("#q", format_reference(typo))
    page.click("#search")
    page.wait_for_selector("#ref-error")
    shot(page, "did-you-mean")
    page.click(f"a.suggestion[href='/calls/{ref}']")
    page.wait_for_selector("#reference")
    assert page.locator("#reference").inner_text() == format_reference(ref)


def test_playing_a_recording(page_for: object, shop: Shop) -> None:
    page = page_for("sam")
    page.goto(f"/calls/{shop.calls[0].reference}")
    page.evaluate("""() => new Promise((resolve, reject) => {
        const player = document.getElementById('player');
        player.addEventListener('playing', () => resolve(), {once: true});
        player.addEventListener('error', () => reject(player.error.message), {once: true});
        player.play().catch(reject);
    })""")
    assert page.evaluate("document.getElementById('player').paused") is False
    # Seeking: the server answers ranges, so the element can jump.
    page.evaluate("document.getElementById('player').currentTime = 0.5")
    page.wait_for_function("document.getElementById('player').currentTime >= 0.5")
    shot(page, "call")
    # Staff: no hand-over or erase here, and the server refuses them.
    assert page.locator("#handover-form").count() == 0
    token = page.locator("input[name=csrf]").first.get_attribute("value")
    reply = page.request.post(f"/calls/{shop.calls[0].reference}/handover",
                              form={"csrf": token, "reason": "asked"})
    assert reply.status == 403


def test_hostile_caller_name_renders_as_text(page_for: object, shop: Shop) -> None:
    page = page_for("olga")
    page.goto(f"/calls/{shop.hostile.reference}")
    assert page.locator("#caller-name").inner_text() == HOSTILE_NAME
    page.goto("/calls")
    assert HOSTILE_NAME in page.locator("#calls").inner_text()
    assert page.locator("#calls img").count() == 0
    assert page.dialogs == []


def test_handover_download_verifies(page_for: object, shop: Shop, tmp_path: Path) -> None:
    page = page_for("olga")
    ref = shop.calls[0].reference
    page.goto(f"/calls/{ref}")
    page.fill("#handover-reason", "caller's request by phone")
    with page.expect_download() as info:
        page.click("#handover")
    target = tmp_path / info.value.suggested_filename
    info.value.save_as(target)
    zipfile.ZipFile(target).extractall(tmp_path)
    check = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=tmp_path / format_reference(ref),
                           capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"{format_reference(ref)}.wav: OK" in check.stdout


def test_erase(page_for: object, shop: Shop) -> None:
    page = page_for("olga")
    made = shop.calls[1]  # the declined call: erasing it does not disturb the other tests
    page.goto(f"/calls/{made.reference}")
    page.fill("#erase-reason", "GDPR Art. 17 request")
    page.fill("#erase-confirm", format_reference(made.reference))
    page.click("#erase")
    page.wait_for_selector("#flash")
    assert page.locator("#caller-number").inner_text() != "06301112233"
    assert page.locator("#erased-at").is_visible()
    shot(page, "erased")


def test_audit_and_health_pages(page_for: object) -> None:
    page = page_for("tina")
    page.goto("/audit")
    page.click("#verify")
    page.wait_for_selector("#chain")
    assert page.locator("#chain.ok").is_visible()
    shot(page, "audit")
    page.goto("/health")
    page.wait_for_selector("#checks")
    shot(page, "health")
    page.goto("/logs")
    page.wait_for_selector("#journal, #no-journal")
    shot(page, "logs")
    reply = page.goto("/calls")
    assert reply.status == 403
    assert page.locator("#message").is_visible()


def test_live_status_changes_during_a_simulated_call(page_for: object, shop: Shop) -> None:
    page = page_for("olga")
    page.goto("/status")
    page.wait_for_selector("#daemon.error")  # no daemon yet
    demo = subprocess.Popen(
        [sys.executable, "-m", "appliance", "demo", "--scenario", "abandoned", "--state-dir",
         str(shop.state_dir)], env=_env(), stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    try:
        # The same page, not reloaded: app.js swaps in the new state.
        page.wait_for_selector(".call-in-progress", timeout=LIVE_CALL_TIMEOUT_MS)
        assert page.locator("#daemon.state").is_visible()
        shot(page, "status-live")
    finally:
        stop_process(demo, 30)
