"""The package layering, read from the source: imports point one way, with no cycles.

    service.frontend -> service.engine -> service.device -> models

`service.__main__` and `service.supervisor` (the composition roots: processes) may import
every layer; the base modules
(`service.settings`, `service.errors`, `service.dial`) may be imported by every layer and
import none. `models` never imports the server, and the server never imports the tools
(`bench`) or their dependencies, so `pip install .` without extras serves.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BASE = ("service.settings", "service.errors", "service.dial", "service.proc")
ROOTS = ("service.__main__", "service.supervisor")  # processes: they wire the layers together
LAYERS = ("models", "service.device", "service.engine", "service.frontend")  # lowest first
TOOL_PACKAGES = ("bench", "tritonclient", "httpx", "matplotlib", "locust")
SERVER_PACKAGES = ("service", "bench", "fastapi", "starlette", "uvicorn", "prometheus_client", "pydantic_settings")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every module `path` imports, at module level or inside functions."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            # `from service.frontend import v1` imports the submodule service.frontend.v1.
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def modules(package: str) -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in sorted((REPO / package).rglob("*.py"))}


SERVICE = modules("service")
MODELS = modules("models")


def layer(name: str) -> int | None:
    """The index in LAYERS of the layer `name` belongs to (None for base modules and others)."""
    for i, prefix in reversed(list(enumerate(LAYERS))):
        if name == prefix or name.startswith(prefix + "."):
            return i
    return None


def within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_the_layers_exist():
    assert {layer(m) for m in SERVICE} >= {1, 2, 3}
    assert all(m in SERVICE for m in BASE)


@pytest.mark.parametrize("module", sorted(SERVICE))
def test_no_upward_import(module):
    if module in ROOTS:
        return  # the composition roots wire every layer together
    imported = [i for i in SERVICE[module] if within(i, ("service", "models"))]
    if within(module, BASE) or module == "service":
        upward = [i for i in imported if layer(i) is not None and layer(i) > 0]
        assert not upward, f"base module {module} imports the layer(s) {upward}"
        return
    mine = layer(module)
    upward = [i for i in imported if layer(i) is not None and layer(i) > mine]
    assert not upward, f"{module} (layer {LAYERS[mine]}) imports upward: {upward}"


@pytest.mark.parametrize("module", sorted(SERVICE))
def test_the_server_imports_no_tool(module):
    tools = [i for i in SERVICE[module] if within(i, TOOL_PACKAGES)]
    assert not tools, f"{module} imports tooling {tools}: it would need the [bench] extra to serve"


@pytest.mark.parametrize("module", sorted(MODELS))
def test_models_import_no_server(module):
    server = [i for i in MODELS[module] if within(i, SERVER_PACKAGES)]
    assert not server, f"{module} imports {server}: models/ is pure PyTorch"


def test_no_import_cycles_in_the_server():
    graph = {m: {i for i in imps if i in SERVICE and i != m} for m, imps in SERVICE.items()}
    # A module imports its package's __init__ implicitly; only explicit edges count here.
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycle = stack[stack.index(n) :] + [n]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_the_checks_can_fail(tmp_path):
    """The parser sees function-level imports too (a lazy upward import is still upward)."""
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from service.frontend.app import create_app\n")
    assert "service.frontend.app" in imports_of(src)
    assert layer("service.frontend.app") > layer("service.engine.core")


# Import names of the runtime dependencies in pyproject.toml (a distribution's import name can
# differ from its own); pynvml is the optional `gpu` extra, imported inside a try.
IMPORT_NAMES = {
    "pillow": "PIL",
    "prometheus-client": "prometheus_client",
    "pydantic-settings": "pydantic_settings",
    "python-multipart": "multipart",
    "uvicorn[standard]": "uvicorn",
}
OPTIONAL = {"pynvml"}
PROVIDED_BY = {"starlette": "fastapi", "huggingface_hub": "timm"}  # installed with a listed package


def runtime_imports() -> set[str]:
    """Third-party top-level packages the server's processes import: the closure of imports from
    service.__main__ through the first-party modules (models' own CLIs and plots excluded)."""
    import sys

    first_party = {**SERVICE, **MODELS}
    seen, todo, third = set(), ["service.__main__"], set()
    while todo:
        module = todo.pop()
        if module in seen or module not in first_party:
            continue
        seen.add(module)
        for name in first_party[module]:
            top = name.split(".")[0]
            if top in ("service", "models"):
                todo.extend(n for n in (name, name.rsplit(".", 1)[0]) if n in first_party)
            elif top not in sys.stdlib_module_names and top != "bench":
                third.add(top)
    return third


def test_the_server_needs_only_its_runtime_dependencies():
    import re
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = {re.split(r"[<>=!~ ]", d, maxsplit=1)[0].strip() for d in project["dependencies"]}
    importable = {IMPORT_NAMES.get(d, d.replace("-", "_")) for d in declared}
    missing = {n for n in runtime_imports() - OPTIONAL if PROVIDED_BY.get(n, n) not in importable}
    assert not missing, f"the server imports {sorted(missing)}, which pyproject.toml's dependencies do not list"
