"""The architecture as the import graph shows it (every import, lazy ones inside functions too): one DeepSpeed
importer, no cycles between files, folders that only import downwards, tools that the product never imports."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FOLDERS = ("launch", "shards", "pretrain", "finetune")
"""Bottom to top: a module may import its own folder or a folder to its left, never one to its right."""
ENTRY_SCRIPTS = {"launch.pretrain", "shards.build", "finetune.layerwise", "finetune.pseudolabel", "finetune.predict",
                  "finetune.export"}
"""Thin scripts that name the task they run (nothing of ours imports them)."""


def _modules() -> dict[str, Path]:
    out = {}
    for folder in FOLDERS:
        for f in sorted((REPO / folder).rglob("*.py")):
            name = ".".join(f.relative_to(REPO).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = f
    return out


MODULES = _modules()


def _imports(module: str) -> tuple[set[str], set[str]]:
    """(modules of ours that ``module`` imports, top-level names of everything it imports)."""
    path = MODULES[module]
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    ours, tops = set(), set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            tops.add(name.split(".")[0])
            parts = name.split(".")
            while parts and ".".join(parts) not in MODULES:
                parts.pop()
            if parts and ".".join(parts) != module:
                ours.add(".".join(parts))
    return ours, tops


GRAPH = {m: _imports(m)[0] for m in MODULES}


def test_deepspeed_is_imported_in_exactly_one_module():
    importers = sorted(m for m in MODULES if "deepspeed" in _imports(m)[1])
    assert importers == ["launch.runtime.engine"]


def test_no_import_cycle_between_files():
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(GRAPH[m]):
            assert state.get(n) != 1, "import cycle: " + " -> ".join(path[path.index(n):] + [m, n])
            if n not in state:
                visit(n, path + [m])
        state[m] = 2

    for m in MODULES:
        if m not in state:
            visit(m, [])


def test_folders_import_only_downwards_and_launch_imports_no_task_package():
    rank = {f: i for i, f in enumerate(FOLDERS)}
    upward = [f"{m} -> {n}" for m, targets in GRAPH.items() for n in targets
              if rank[n.split(".")[0]] > rank[m.split(".")[0]]]
    assert not upward  # the entry scripts too: they name their task as "module:function", they do not import it
    assert not [m for m, targets in GRAPH.items() if targets & ENTRY_SCRIPTS]
    assert not [f"{m} -> {n}" for m, targets in GRAPH.items() if m.startswith("launch") for n in targets
                if not n.startswith("launch")]


def test_the_shared_basics_and_the_runtime_sit_at_the_bottom():
    for m, targets in GRAPH.items():
        if m.startswith("launch.common"):
            assert all(t.startswith("launch.common") for t in targets), (m, targets)
        if m.startswith("launch.runtime"):
            assert all(t.startswith(("launch.common", "launch.runtime")) for t in targets), (m, targets)
        if m.startswith("shards"):
            assert all(t.startswith(("shards", "launch.common", "launch.submit")) for t in targets), (m, targets)


def test_tools_stand_beside_the_product():
    product = [m for m in MODULES if ".tools" not in m]
    assert not [f"{m} -> {t}" for m in product for t in GRAPH[m] if ".tools" in t]
