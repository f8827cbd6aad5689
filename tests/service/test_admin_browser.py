"""The admin dashboard in a real browser: Debian's chromium driven by Playwright, against the real
stack (uvicorn, PostgreSQL, Redis, moto S3, a `vidq worker` process). Each page's screenshot is
written to tests/artifacts/screenshots/ for a reviewer to look at."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.service.conftest import auth, finished, wait_for_job

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parents[1] / "artifacts" / "screenshots"
# Long enough (a few seconds on a CPU) for the progress bar to be seen moving.
SLOW_JOB = {
    "prompt": "a paper boat drifting down a rainy street",
    "size": "96x64",
    "num_frames": 33,
    "num_inference_steps": 200,
}
QUICK_JOB = {"prompt": "a lantern in fog", "size": "96x64", "num_frames": 9, "num_inference_steps": 4}

sync_api = pytest.importorskip("playwright.sync_api")
if not CHROMIUM.exists():  # `make test` installs it (scripts/ensure-chromium.sh)
    pytest.skip("chromium is not installed: run scripts/ensure-chromium.sh", allow_module_level=True)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):  # type: ignore[no-untyped-def]
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    page.set_default_timeout(30_000)
    yield page
    context.close()


def shot(page, name: str, *, full_page: bool = True) -> None:  # type: ignore[no-untyped-def]
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=full_page)


def log_in(page, base: str, key: str) -> None:  # type: ignore[no-untyped-def]
    page.goto(f"{base}/admin")
    assert "/admin/login" in page.url  # anonymous: sent to the login form
    page.get_by_label("Admin API key").fill(key)
    page.get_by_role("button", name="Log in").click()


def progress_of(page, job_id: str) -> int:  # type: ignore[no-untyped-def]
    return int(page.eval_on_selector(f'tr[data-job="{job_id}"] progress', "el => el.value"))


def test_a_client_key_cannot_log_in(page, live_api, make_key) -> None:  # type: ignore[no-untyped-def]
    log_in(page, live_api, make_key("client"))
    sync_api.expect(page.get_by_role("alert")).to_contain_text("not an admin key")
    assert "/admin/login" in page.url
    shot(page, "login-refused")
    page.goto(f"{live_api}/admin/jobs")
    assert "/admin/login" in page.url


def test_an_admin_watches_a_job_live_plays_its_video_and_cancels_a_queued_one(  # type: ignore[no-untyped-def]
    page, live_api, make_key, start_worker, no_backlog
) -> None:
    client_key, admin_key = make_key("browser-client"), make_key("browser-admin", admin=True)
    start_worker()
    log_in(page, live_api, admin_key)
    sync_api.expect(page.get_by_role("heading", name="Jobs")).to_be_visible()

    with httpx.Client(base_url=live_api, headers=auth(client_key), timeout=30) as api:
        slow = api.post("/v1/videos", json=SLOW_JOB).json()["id"]
        queued = api.post("/v1/videos", json=QUICK_JOB).json()["id"]

        # 1. the job submitted through the API is in the table; its bar moves with no reload
        page.goto(f"{live_api}/admin/jobs")
        row = page.locator(f'tr[data-job="{slow}"]')
        sync_api.expect(row).to_be_visible()
        bar = f"document.querySelector('tr[data-job=\"{slow}\"] progress')"
        page.wait_for_function(f"() => {bar} && {bar}.value > 5")
        first = progress_of(page, slow)
        page.wait_for_function(f"""() => document.querySelector('tr[data-job="{slow}"] progress').value > {first}""")
        assert progress_of(page, slow) > first
        sync_api.expect(row.locator('[data-field="status"]')).to_have_text("in_progress")
        shot(page, "jobs")

        # 2. the second job waits behind the first: cancel it from its page
        page.goto(f"{live_api}/admin/jobs/{queued}")
        status = page.locator('[data-field="status"]')
        sync_api.expect(status).to_have_text("queued")
        page.get_by_role("button", name="Cancel job").click()
        sync_api.expect(page.locator('[data-field="status"]')).to_have_text("cancelled")
        assert api.get(f"/v1/videos/{queued}").json()["status"] == "cancelled"
        shot(page, "job-cancelled")

        # 3. the workers page shows the worker busy with the slow job
        page.goto(f"{live_api}/admin/workers")
        sync_api.expect(page.locator("tr[data-worker]").first).to_be_visible()
        shot(page, "workers")

        # 4. once finished, its page plays the video
        done = wait_for_job(api, client_key, slow, finished, timeout_s=120)
        assert done["status"] == "completed"
    page.goto(f"{live_api}/admin/jobs/{slow}")
    video = page.locator("video#result-video")
    sync_api.expect(video).to_be_visible()
    page.wait_for_function(
        "() => { const v = document.getElementById('result-video'); return v.readyState >= 1 && v.duration > 0; }"
    )
    duration = page.eval_on_selector("#result-video", "v => v.duration")
    assert duration == pytest.approx(float(done["seconds"]), rel=0.3)
    page.eval_on_selector("#result-video", "v => v.play()")
    page.wait_for_function("() => document.getElementById('result-video').currentTime > 0")
    sync_api.expect(page.get_by_role("img", name=f"Thumbnail of {slow}")).to_be_visible()
    sync_api.expect(page.get_by_role("heading", name="Timeline")).to_be_visible()
    assert page.locator("section:has(#h-attempts) tbody tr").count() == 1
    shot(page, "job-detail")

    # 5. every other page renders; a phone-width view of the jobs table
    for name, path in [
        ("overview", "/admin"),
        ("dead", "/admin/dead"),
        ("keys", "/admin/keys"),
        ("audit", "/admin/audit"),
    ]:
        page.goto(f"{live_api}{path}")
        sync_api.expect(page.locator("h1")).to_be_visible()
        shot(page, name)
    # the audit page: this test's cancel (other modules share the session database and cancel jobs too)
    own_cancel = page.locator("tbody tr").filter(has=page.get_by_role("cell", name=queued, exact=True))
    sync_api.expect(own_cancel.get_by_role("cell", name="job.cancel", exact=True)).to_be_visible()
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(f"{live_api}/admin/jobs")
    shot(page, "jobs-phone")
