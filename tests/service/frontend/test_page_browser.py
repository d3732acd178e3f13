"""The page (service.frontend.page and its static/ assets) in a real browser.

Headless Chromium from Debian's `chromium` package (.ci/system-deps installs it), driven by
Playwright for Python (its own browser download is not used). A real server serves the tiny
model; the test loads `/`, uploads a photo, moves the density slider, checks the answer and
the side-by-side table against the server, sends a burst of requests and waits for the live
charts to move, and fails on any console error.

    SAIT_PAGE_SERVER_URL=http://127.0.0.1:8000   test a server already running (`make serve`:
                                                 the real DeiT-Tiny) instead of starting one
    SAIT_PAGE_BURST_BUDGET_MS=400                the burst's budget (default: one all can meet)
    SAIT_PAGE_SCREENSHOT=docs/page.png           after the checks, a few steps of load, then
                                                 the screenshot the README shows
"""

from __future__ import annotations

import io
import os
import re
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from PIL import Image
from svc_helpers import jpeg_bytes, running_server

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="Playwright for Python is absent (pip install playwright; the dev extra)"
)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SERVER_URL = os.environ.get("SAIT_PAGE_SERVER_URL")
SCREENSHOT = os.environ.get("SAIT_PAGE_SCREENSHOT")
ASSETS_DIR = (Path(__file__).resolve().parents[3] / ".." / "shared" / "assets").resolve()
PHOTO = ("imagenet-samples", "n01443537_goldfish.JPEG")
BURST = 40
BURST_BUDGET_MS = float(os.environ.get("SAIT_PAGE_BURST_BUDGET_MS", 20_000))
KEY = "s3cret-key"

if not Path(CHROMIUM).is_file():
    pytest.skip(f"no Chromium at {CHROMIUM} (Debian's chromium package: bash .ci/system-deps)", allow_module_level=True)


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def server_url():
    """The base URL of a real server: SAIT_PAGE_SERVER_URL's, else the tiny model on a free port."""
    if SERVER_URL:
        yield SERVER_URL.rstrip("/")
        return
    # A generous budget: on a shared 2-core runner a tiny batch can take a second.
    with running_server(default_budget_ms=20_000, max_batch_size=8, max_queue_delay_ms=5) as s:
        yield s.url


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    """A real photo from the shared assets; where they are absent, a generated JPEG."""
    path = ASSETS_DIR.joinpath(*PHOTO)
    if path.is_file():
        return path
    made = tmp_path_factory.mktemp("photo") / "generated.jpg"
    made.write_bytes(jpeg_bytes(320, 240, seed=3))
    return made


def console_errors(page) -> list[str]:
    """Every console error and uncaught exception of `page`, as they happen."""
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(f"uncaught: {exc}"))
    return errors


def step_load(url: str, body: bytes, steps: list[tuple[float, float]]) -> None:
    """Open-loop POSTs at (requests/s, seconds) steps with the burst's budget; answers ignored."""
    send = lambda: httpx.post(
        f"{url}/v1/classify",
        params={"latency_budget_ms": BURST_BUDGET_MS},
        content=body,
        headers={"content-type": "image/jpeg"},
        timeout=60,
    )
    with ThreadPoolExecutor(64) as pool:
        due = time.monotonic()
        for rate, duration_s in steps:
            end = due + duration_s
            while due < end:
                time.sleep(max(0.0, due - time.monotonic()))
                pool.submit(send)
                due += 1.0 / rate


def chart_total(page, chart: str) -> float:
    """What a live chart drew: its values summed over the window (the page keeps it on the canvas)."""
    return float(page.get_attribute(f"#chart-{chart}", "data-total") or 0)


def wait_for_chart(page, chart: str, at_least: float) -> None:
    """Until the chart, redrawn once a second, sums to `at_least` (the browser polls; 10 s at most)."""
    page.wait_for_function(
        "([id, least]) => Number(document.getElementById(id).dataset.total || 0) >= least",
        arg=[f"chart-{chart}", at_least],
        timeout=10_000,
    )


def test_try_it_all_levels_and_live_charts(browser, server_url, photo):
    expect = sync_api.expect
    model = httpx.get(f"{server_url}/v1/model", timeout=30).json()
    levels = [lv["name"] for lv in model["levels"]]  # densest first
    page = browser.new_page(viewport={"width": 1240, "height": 900})
    errors = console_errors(page)
    page.goto(server_url + "/")
    page.wait_for_selector("body[data-ready=true]")
    expect(page.locator("#model-line")).to_contain_text(model["model"])

    # Try it: the controller chooses from the budget.
    page.set_input_files("#file", str(photo))
    page.wait_for_selector("#answer[data-state=done]")
    assert page.inner_text("#answer-level") in levels
    expect(page.locator("#answer-why")).to_contain_text("The controller chose")
    expect(page.locator("#answer-deadline")).to_have_text("deadline met")
    probabilities = [
        float(re.search(r"([\d.]+) %$", text).group(1)) for text in page.locator("#answer-top5 li").all_inner_texts()
    ]
    assert len(probabilities) == 5 and probabilities == sorted(probabilities, reverse=True)
    assert 0 < sum(probabilities) <= 100.5

    # All levels at once: one row per level, each with the server's top-1 class at that level.
    page.wait_for_selector("#levels-table[data-state=done]", timeout=60_000)
    rows = page.locator("#levels-table tbody tr")
    assert rows.count() == len(levels)
    body = photo.read_bytes()
    for i, level in enumerate(levels):
        cells = rows.nth(i).locator("td").all_inner_texts()
        assert cells[0] == level and float(cells[6]) > 0 and float(cells[7]) >= float(cells[6])
        served = httpx.post(
            f"{server_url}/v1/classify",
            params={"density": level, "top_k": 1},
            content=body,
            headers={"content-type": "image/jpeg"},
            timeout=60,
        ).json()
        assert cells[4] == served["predictions"][0]["label"], level

    # Move the slider to its left end: the sparsest level, pinned.
    page.focus("#density")
    page.keyboard.press("Home")
    expect(page.locator("#answer-level")).to_have_text(levels[-1], timeout=30_000)
    expect(page.locator("#answer-why")).to_contain_text("You pinned the density")
    assert not page.is_checked("#auto")

    # A burst: the live charts (redrawn once a second from GET /v1/live) must move.
    wait_for_chart(page, "arrivals", 1)  # the page's own requests
    before = {chart: chart_total(page, chart) for chart in ("arrivals", "mix", "deadlines")}
    pixels_before = page.evaluate("document.getElementById('chart-mix').toDataURL()")
    with ThreadPoolExecutor(8) as pool:
        codes = list(
            pool.map(
                lambda _: (
                    httpx.post(
                        f"{server_url}/v1/classify",
                        params={"latency_budget_ms": BURST_BUDGET_MS},
                        content=body,
                        headers={"content-type": "image/jpeg"},
                        timeout=60,
                    ).status_code
                ),
                range(BURST),
            )
        )
    assert set(codes) <= {200, 429, 504} and codes.count(200) > 0, codes  # served, shed, or expired
    # Each line's or stack's samples summed over the window: arrivals count every request,
    # the level mix the served ones, the deadline chart every one met, missed or shed.
    for chart, grown in (("arrivals", BURST), ("mix", codes.count(200)), ("deadlines", BURST)):
        wait_for_chart(page, chart, before[chart] + grown)
    assert page.evaluate("document.getElementById('chart-mix').toDataURL()") != pixels_before
    assert page.inner_text("#live-state") == ""  # polling without errors

    if SCREENSHOT:
        # Steps of open-loop load for the charts to show the controller at work, then a rest.
        step_load(server_url, body, [(3, 8), (25, 12), (3, 8)])
        time.sleep(2.5)  # two more polls: the last seconds complete
        # ImageNet's terms allow research use only: the photo is masked. A palette keeps it small.
        png = page.screenshot(full_page=True, mask=[page.locator("#preview")], mask_color="#c5cbd3")
        Image.open(io.BytesIO(png)).convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE).save(
            SCREENSHOT, optimize=True
        )
    page.close()
    assert errors == []


def test_asks_for_a_key_after_a_401_and_sends_it_on_every_fetch(browser, server_url, photo):
    """Behind the server's API keys (stood in for by the browser's request routing here): the
    page asks for a key, keeps it in sessionStorage and sends it as Authorization: Bearer."""
    page = browser.new_page()
    errors = console_errors(page)
    seen: list[tuple[str, str | None]] = []

    def guard(route, request):
        auth = request.headers.get("authorization")
        seen.append((request.url, auth))
        if auth == f"Bearer {KEY}":
            route.continue_()
        else:
            route.fulfill(status=401, content_type="application/json", body='{"error": "missing or invalid API key"}')

    page.route(re.compile(r".*/v1/.*"), guard)
    page.goto(server_url + "/")
    dialog = page.locator("#key-dialog")
    sync_api.expect(dialog).to_be_visible()
    sync_api.expect(page.locator("#key-why")).to_contain_text("missing or invalid API key")
    page.fill("#key", "wrong")
    page.click("#key-form button")
    sync_api.expect(page.locator("#key-why")).to_contain_text("The key was refused")
    page.fill("#key", KEY)
    page.click("#key-form button")
    page.wait_for_selector("body[data-ready=true]")
    assert page.evaluate("sessionStorage.getItem('sait-api-key')") == KEY
    page.set_input_files("#file", str(photo))
    page.wait_for_selector("#answer[data-state=done]")
    with page.expect_request(lambda r: "/v1/live" in r.url, timeout=5_000):
        pass  # one more poll of the live charts
    after_key = seen[[auth for _, auth in seen].index(f"Bearer {KEY}") :]
    assert all(auth == f"Bearer {KEY}" for _, auth in after_key), after_key
    assert any("/v1/classify" in url for url, _ in after_key) and any("/v1/live" in url for url, _ in after_key)
    assert page.inner_text("#answer-level")  # the keyed classify was served
    page.close()
    # The browser logs each 401 it was answered; nothing else may appear.
    assert [e for e in errors if "status of 401" not in e] == []
