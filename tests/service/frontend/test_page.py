"""service.frontend.page: the page and its assets (size, package data, no outside fetches) and
its two JSON routes, /v1/model and /v1/live. The page in a browser: test_page_browser.py."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from pathlib import Path

from svc_helpers import png_bytes

from service.frontend import page

REPO = Path(__file__).resolve().parents[3]
STATIC = REPO / "service" / "frontend" / "static"
ASSET_BUDGET_BYTES = 100_000  # the bound on what the page adds to the package


def test_the_assets_stay_under_100_kb():
    sizes = {p.name: p.stat().st_size for p in STATIC.iterdir()}
    assert sum(sizes.values()) < ASSET_BUDGET_BYTES, sizes


def test_every_shipped_file_is_served_and_every_served_file_ships():
    assert {p.name for p in STATIC.iterdir()} == {page.PAGE, *page.ASSETS}


def test_the_assets_are_package_data():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["service"]
    for path in STATIC.iterdir():
        relative = path.relative_to(REPO / "service").as_posix()
        assert any(fnmatch.fnmatch(relative, p) for p in patterns), f"{relative} is not in the package data"


def test_the_page_fetches_nothing_from_elsewhere():
    for path in STATIC.iterdir():
        text = path.read_text()
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.IGNORECASE), path.name
        assert "@import" not in text and "<iframe" not in text, path.name


def test_get_root_serves_the_page_and_its_assets(http):
    r = http.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in r.headers["content-security-policy"]
    referenced = re.findall(r'(?:src|href)="(/ui/[^"]+)"', r.text)
    assert sorted(referenced) == ["/ui/app.js", "/ui/style.css"]
    for path in referenced:
        asset = http.get(path)
        assert asset.status_code == 200 and asset.content == (STATIC / path.removeprefix("/ui/")).read_bytes()
    assert http.get("/ui/app.js").headers["content-type"].startswith("text/javascript")
    assert http.get("/ui/style.css").headers["content-type"].startswith("text/css")


def test_unknown_assets_are_404_and_no_path_reaches_the_disk(http):
    for path in ("/ui/nothing.js", "/ui/..%2Fpage.py", "/ui/index.html", "/ui/%2E%2E%2F%2E%2E%2Fsettings.py"):
        r = http.get(path)
        assert r.status_code == 404 and "error" in r.json(), path


def test_v1_model_describes_the_levels_for_the_page(http, server):
    body = http.get("/v1/model").json()
    info = server.engine.describe()
    assert body["model"] == info.name and [lv["name"] for lv in body["levels"]] == list(info.levels)
    dense = body["levels"][0]
    assert dense["gflops_ratio"] == 1.0 and dense["gflops"] > body["levels"][-1]["gflops"] > 0
    assert {"top1", "agreement"} <= set(dense) and body["has_card"] is info.has_card
    assert body["default_budget_ms"] == server.app.state.settings.default_budget_ms
    assert body["ladder"] == list(info.ladder) and body["device"] == "cpu"


def test_v1_live_shows_a_request_in_its_second(http, server):
    image = png_bytes()
    r = http.post("/v1/classify", params={"density": "l050"}, content=image, headers={"content-type": "image/png"})
    assert r.status_code == 200, r.text
    body = http.get("/v1/live").json()
    assert body["levels"] == list(server.engine.describe().levels)
    samples = body["samples"]
    assert samples and [s["t_s"] for s in samples] == sorted({s["t_s"] for s in samples})
    assert sum(s["served"].get("l050", 0) for s in samples) >= 1 and sum(s["arrived"] for s in samples) >= 1
    newest = samples[-1]["t_s"]
    later = http.get("/v1/live", params={"since_s": newest}).json()["samples"]
    assert later[0]["t_s"] == newest and all(s["t_s"] >= newest for s in later)


def test_v1_live_refuses_a_bad_since(http):
    for bad in ("soon", "nan", "inf"):
        r = http.get("/v1/live", params={"since_s": bad})
        assert r.status_code == 400 and "since_s" in r.json()["error"], bad
