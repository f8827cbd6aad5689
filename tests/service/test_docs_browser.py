"""`/docs` and `/redoc` render every operation in a real browser with no internet: chromium (driven by
Playwright) against uvicorn on loopback, with every request to another host refused and recorded.
Screenshots go to tests/artifacts/screenshots/ like the dashboard's."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest

from tests.service.test_admin_browser import CHROMIUM, CHROMIUM_ARGS, shot

pytestmark = pytest.mark.integration

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
def offline_page(browser, live_api: str):  # type: ignore[no-untyped-def]
    """A page that may reach only the API's own host; ``page.outside`` lists what it tried elsewhere."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    own_host = urlsplit(live_api).netloc
    outside: list[str] = []

    def only_the_api(route, request) -> None:  # type: ignore[no-untyped-def]
        parts = urlsplit(request.url)
        if parts.scheme in ("data", "blob") or parts.netloc == own_host:
            route.continue_()
        else:
            outside.append(request.url)
            route.abort()

    context.route("**/*", only_the_api)
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.outside = outside
    yield page
    context.close()


def operations(live_api: str) -> list[tuple[str, str, str]]:
    schema = httpx.get(f"{live_api}/openapi.json").json()
    return [
        (method.upper(), path, op["summary"]) for path, ops in schema["paths"].items() for method, op in ops.items()
    ]


def test_swagger_ui_renders_every_operation_offline(offline_page, live_api: str) -> None:  # type: ignore[no-untyped-def]
    page = offline_page
    page.goto(f"{live_api}/docs")
    blocks = page.locator(".opblock")
    expected = operations(live_api)
    sync_api.expect(blocks).to_have_count(len(expected))
    paths = set(page.locator(".opblock-summary-path").all_inner_texts())
    assert {path.replace("\u200b", "") for path in paths} >= {"/v1/videos", "/v1/models", "/v1/webhook_endpoints"}
    # Open the create operation: its documented body and error responses render from the schema.
    page.locator("#operations-videos-create_video_v1_videos_post").click()
    sync_api.expect(page.locator(".responses-table").first).to_contain_text("415")
    shot(page, "api-docs")
    assert page.outside == []


def test_redoc_renders_every_operation_offline(offline_page, live_api: str) -> None:  # type: ignore[no-untyped-def]
    page = offline_page
    page.goto(f"{live_api}/redoc")
    expected = operations(live_api)
    sync_api.expect(page.locator('[data-section-id^="operation/"]')).to_have_count(len(expected))
    for _, _, summary in expected:
        sync_api.expect(page.get_by_text(summary, exact=True).first).to_be_attached()
    shot(page, "api-redoc", full_page=False)
    assert page.outside == []
