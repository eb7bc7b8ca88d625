"""The house rules, checked: dependencies point one way, settings are read in one place.

docs/architecture.md describes the layout; these tests keep it true as the code grows.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("worker", "vision", "model")


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def _imports(path: Path, name: str) -> set[str]:
    """Modules of ours that ``path`` imports (module level and inside functions)."""
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in found if m.split(".")[0] in PACKAGES}


def test_vision_and_model_never_import_worker_or_each_other():
    for name, path in _modules().items():
        top = name.split(".")[0]
        if top == "worker":
            continue
        other = {"vision": ("worker", "model"), "model": ("worker", "vision")}[top]
        bad = [m for m in _imports(path, name) if m.split(".")[0] in other]
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_the_sam_audio_port_stands_alone():
    for name, path in _modules().items():
        if name.startswith("model.sam_audio"):
            bad = [m for m in _imports(path, name) if not m.startswith("model.sam_audio")]
            assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_no_import_circle():
    modules = _modules()
    graph = {
        name: {m for m in _imports(path, name) if m in modules and m != name}
        for name, path in modules.items()
    }
    state: dict[str, int] = {}

    def visit(n: str, trail: list[str]) -> None:
        state[n] = 1
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                raise AssertionError("import circle: " + " -> ".join([*trail, n, m]))
            if m not in state:
                visit(m, [*trail, n])
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n, [])


def test_only_the_settings_module_reads_the_environment():
    """Hugging Face's own ``HF_*`` switches are read where the port resolves its cache."""
    pattern = re.compile(r"os\.environ|getenv")
    allowed = {ROOT / "worker" / "settings.py"}
    for path in _modules().values():
        if path in allowed:
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line) and "HF_HUB_OFFLINE" not in line:
                raise AssertionError(f"{path.relative_to(ROOT)}:{i} reads the environment")
