"""Every command the README and docs name runs from where they say: each `python -m X` answers --help,
every path they cite under the packages exists, and every invariant the code cites is in
docs/architecture.md."""

from __future__ import annotations

import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
PACKAGES = ("models", "service", "bench")


def documented_modules() -> list[str]:
    found = set()
    for doc in DOCS:
        found.update(re.findall(r"python3? -m ((?:models|service|bench)(?:\.[a-z_]+)*)", doc.read_text()))
    return sorted(found)


def cited_paths() -> list[str]:
    found = set()
    for doc in DOCS:
        found.update(re.findall(r"`((?:models|service|bench)/[\w/]+\.(?:py|toml|json))`", doc.read_text()))
    return sorted(found)


def test_the_docs_name_the_tools():
    modules = documented_modules()
    assert {"service", "bench", "bench.loadgen", "bench.request_cost", "models.train"} <= set(modules)


def test_every_documented_command_answers_help():
    def run(module: str) -> tuple[str, int, str]:
        proc = subprocess.run(
            [sys.executable, "-m", module, "--help"], cwd=REPO, capture_output=True, text=True, timeout=180
        )
        return module, proc.returncode, proc.stderr[-500:]

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(run, documented_modules()))
    failed = [(m, rc, err) for m, rc, err in results if rc != 0]
    assert not failed, failed


@pytest.mark.parametrize("path", cited_paths())
def test_cited_paths_exist(path):
    assert (REPO / path).exists(), f"the docs cite {path}, which does not exist"


def test_the_locust_file_is_where_the_docs_say():
    readme = (REPO / "README.md").read_text()
    locustfile = re.search(r"locust -f (\S+)", readme).group(1)
    assert (REPO / locustfile).is_file()


def test_every_cited_invariant_is_in_the_architecture():
    arch = (REPO / "docs" / "architecture.md").read_text()
    numbered = set(re.findall(r"^(\d+)\. \*\*", arch, re.M))
    cited = set()
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            cited.update(re.findall(r"invariants? (\d+)", path.read_text()))
    assert cited, "the code cites no invariant (the pattern is wrong)"
    assert cited <= numbered, f"invariants cited in code but not in docs/architecture.md: {cited - numbered}"
