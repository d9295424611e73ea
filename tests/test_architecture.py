"""The import graph of msam_lab: no cycles, and no module imports a layer above its own.

Imports inside functions count: a cycle hidden in a function is still a cycle. The layers are those
ARCHITECTURE.md draws; a module may import its own layer and those below. Run on another tree with
``python tests/test_architecture.py PATH`` (it printed 3 cycles for the tree before the restructure).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# lowest first; a module's layer is the longest prefix listed
LAYERS = [
    ["msam_lab.errors", "msam_lab.yaml_text", "msam_lab.faults", "msam_lab.paths", "msam_lab._compat"],
    ["msam_lab.config"],
    ["msam_lab.shapley", "msam_lab.distributed", "msam_lab.registry", "msam_lab.datasets"],
    ["msam_lab.models"],
    ["msam_lab.optim"],
    ["msam_lab.methods", "msam_lab.runs", "msam_lab.loggers"],
    ["msam_lab.analysis", "msam_lab.landscape", "msam_lab.plugins"],
    ["msam_lab.training"],
    ["msam_lab.experiments", "msam_lab.integrations"],
    ["msam_lab.viz", "msam_lab.cli", "msam_lab.__main__"],
    ["msam_lab.notebook_utils", "msam_lab.widgets", "msam_lab.figures"],
    ["msam_lab"],
]


def modules(root: Path) -> dict[str, Path]:
    found = {}
    for path in (root / "msam_lab").rglob("*.py"):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imports(root: Path) -> dict[str, set[str]]:
    """module -> the msam_lab modules it imports anywhere in its file (functions included)."""
    mods = modules(root)
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
                # `from pkg import sub` imports the submodule; `from mod import name` the module
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in mods:  # `import a.b.c` of a name inside a module
                    target = target.rpartition(".")[0]
                if target and target != mod:
                    edges[mod].add(target)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, found, counter = {}, {}, set(), [], [], [0]
    for start in edges:
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = counter[0]
        counter[0] += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def layer(module: str) -> int:
    best, rank = -1, None
    for i, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > best:
                best, rank = len(name), i
    assert rank is not None, f"{module} is in no layer; add it to LAYERS and ARCHITECTURE.md"
    return rank


def upward(edges: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{a} -> {b}" for a, targets in edges.items() for b in targets if b != "msam_lab" and layer(b) > layer(a)
    )


def test_the_package_has_no_import_cycles():
    assert cycles(imports(ROOT)) == []


def test_no_module_imports_a_layer_above_its_own():
    assert upward(imports(ROOT)) == []


def test_the_check_finds_a_cycle_and_an_upward_import(tmp_path):
    pkg = tmp_path / "msam_lab"
    (pkg / "runs").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "config.py").write_text("def f():\n    from msam_lab.runs import reader\n")
    (pkg / "runs" / "__init__.py").write_text("")
    (pkg / "runs" / "reader.py").write_text("from msam_lab import config\n")
    edges = imports(tmp_path)
    assert cycles(edges) == [["msam_lab.config", "msam_lab.runs.reader"]]
    assert upward(edges) == ["msam_lab.config -> msam_lab.runs.reader"]


if __name__ == "__main__":
    tree = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT
    graph = imports(tree)
    found = cycles(graph)
    print(f"{len(graph)} modules, {len(found)} import cycles")
    for component in found:
        print(f"  cycle of {len(component)}: {', '.join(component)}")
    sys.exit(1 if found else 0)
