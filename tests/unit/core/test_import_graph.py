"""The layout's dependency rules (DESIGN "Dependency rules"), checked on the source itself.

The import graph is built from every `import` statement (module level and inside functions),
so a lazy import counts like an eager one.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
AREAS = ("core", "crypto", "policy", "evidence", "integrity", "agent", "report", "cli",
         "anomaly", "adversarial", "trainer")
HEAVY = ("torch", "sklearn")


def _imports() -> Iterator[tuple[str, Path, int, str, list[str]]]:
    """(area, file, line, imported module, imported names) for every import in every area."""
    for area in AREAS:
        for path in sorted((REPO / area).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    yield area, path, node.lineno, node.module, [a.name for a in node.names]
                elif isinstance(node, ast.Import):
                    for alias in node.names:
                        yield area, path, node.lineno, alias.name, []


def _area_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] == "trainguard" and len(parts) > 1 and parts[1] in AREAS:
        return parts[1]
    return None


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {a: set() for a in AREAS}
    for area, _path, _line, module, _names in _imports():
        other = _area_of(module)
        if other and other != area:
            graph[area].add(other)
    return graph


def test_no_cycle_between_areas() -> None:
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                pytest.fail("import cycle between areas: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for area in AREAS:
        if area not in state:
            visit(area)


def test_no_area_imports_another_areas_private_names() -> None:
    bad = []
    for area, path, line, module, names in _imports():
        other = _area_of(module)
        if other is None or other == area:
            continue
        private = [p for p in module.split(".")[2:] if p.startswith("_")]
        private += [n for n in names if n.startswith("_")]
        if private:
            bad.append(f"{path.relative_to(REPO)}:{line} {module} {private}")
    assert not bad, "private names imported across areas:\n" + "\n".join(bad)


def test_library_areas_never_import_cli() -> None:
    bad = [f"{p.relative_to(REPO)}:{line}" for area, p, line, module, _ in _imports()
           if area != "cli" and _area_of(module) == "cli"]
    assert not bad, bad


def test_agent_stays_light() -> None:
    """The agent never imports the trainer, the CLI, torch or scikit-learn (the anomaly area
    loads scikit-learn lazily, only when a learned detector is built)."""
    bad = []
    for area, path, line, module, _names in _imports():
        if area != "agent":
            continue
        if _area_of(module) in ("trainer", "cli", "adversarial") or module.split(".")[0] in HEAVY:
            bad.append(f"{path.relative_to(REPO)}:{line} {module}")
    assert not bad, bad


def test_lower_areas_keep_to_their_dependencies() -> None:
    allowed = {
        "core": set(),
        "crypto": {"core"},
        "policy": {"core", "crypto", "evidence"},
        "evidence": {"core", "crypto"},
        "integrity": {"core", "crypto", "evidence"},
    }
    graph = _graph()
    for area, deps in allowed.items():
        assert graph[area] <= deps, f"{area} imports {sorted(graph[area] - deps)}"


def test_trainer_reaches_the_agent_only_through_its_client() -> None:
    bad = [f"{p.relative_to(REPO)}:{line} {module}" for area, p, line, module, _ in _imports()
           if area == "trainer" and _area_of(module) == "agent"
           and not module.startswith("trainguard.agent.api.client")]
    assert not bad, bad


def test_a_new_process_importing_the_agent_loads_no_torch_or_sklearn() -> None:
    import subprocess
    import sys

    code = ("import sys, trainguard.agent.daemon, trainguard.cli.commands.agent; "
            "print(sorted(m for m in ('torch', 'sklearn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
