"""The machine and checkout a benchmark names."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.environment import git_commit

CHECKOUT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(not (CHECKOUT / ".git").exists(), reason="not a git checkout")
def test_the_commit_is_this_checkouts():
    # It read the folder above the checkout once, so every report said "commit unknown".
    import subprocess

    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=CHECKOUT, capture_output=True, text=True)
    assert git_commit() is not None and git_commit().split("+")[0] == head.stdout.strip()
