"""The floors: project imports flow one way, form no cycle, and sit at module top (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("shared_model", "client", "server", "simulations", "fedprofile")
# A package may import its own floor and the floors below it; client and server stand side by side.
FLOOR = {"shared_model": 0, "client": 1, "server": 1, "simulations": 2, "fedprofile": 3}
# Sub-floors inside a package: (importer prefix, prefixes it may not import).
INNER_RULES = [
    ("shared_model.data", ("shared_model",), ("shared_model.data",)),  # the data floor imports only itself
    ("client.onsite", ("client.client_app", "client.daemon", "client.keys"), ()),  # serving needs no federation
]
# `fedprofile --help` answers in 0.3 s; importing torch, Flower and Ray first takes 7 s on this machine
# (measured 2026-12-01), so the Typer command modules import the project inside each command.
# measured exceptions: the CLI answers --help without torch; the ClientApp forwards to the warm worker without it
LAZY_ALLOWED = {"fedprofile.cli", "fedprofile.deploy_cli", "fedprofile.onsite_cli", "client.client_app"}


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for file in (ROOT / package).rglob("*.py"):
            parts = file.relative_to(ROOT).with_suffix("").parts
            if any(p.startswith(("_pb2", "merchant_pb2")) for p in parts):
                continue  # protoc's generated code
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = file
    return out


MODULES = _modules()


def _imports(name: str, file: Path) -> list[tuple[str, int, bool]]:
    """(imported project module, line, inside a function) for every import in `file`."""
    tree = ast.parse(file.read_text(), filename=str(file))
    package = name if file.name == "__init__.py" else name.rpartition(".")[0]
    found = []

    def visit(node: ast.AST, nested: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = nested or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    found.append((alias.name, child.lineno, inner))
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:  # relative: from the importing module's package
                    anchor = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                for alias in child.names:
                    sub = f"{base}.{alias.name}"
                    found.append((sub if sub in MODULES else base, child.lineno, inner))
            visit(child, inner)

    visit(tree, False)
    return [(target, line, inner) for target, line, inner in found if target.split(".")[0] in PACKAGES]


GRAPH = {name: _imports(name, file) for name, file in MODULES.items()}


def test_the_tree_is_found():
    assert {"shared_model.model", "shared_model.data.loaders", "client.client_app", "client.onsite.engine",
            "server.server_app", "simulations.simulate", "fedprofile.cli"} <= set(MODULES)


def test_imports_only_flow_down_the_floors():
    upward = []
    for name, edges in GRAPH.items():
        source = name.split(".")[0]
        for target, line, _ in edges:
            top = target.split(".")[0]
            sideways = FLOOR[top] == FLOOR[source] and top != source
            if FLOOR[top] > FLOOR[source] or sideways:
                upward.append(f"{MODULES[name].relative_to(ROOT)}:{line} imports {target}")
            for prefix, forbidden, allowed in INNER_RULES:
                if (name == prefix or name.startswith(prefix + ".")) and any(
                        target == f or target.startswith(f + ".") for f in forbidden) and not any(
                        target == a or target.startswith(a + ".") for a in allowed):
                    upward.append(f"{MODULES[name].relative_to(ROOT)}:{line} imports {target} (floor {prefix})")
    assert not upward, "imports against the floors:\n" + "\n".join(sorted(set(upward)))


def test_no_import_cycle():
    edges = {name: sorted({t for t, _, _ in targets if t in MODULES and t != name}) for name, targets in GRAPH.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in edges[node]:
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := walk(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for module in sorted(edges):
        if module not in state and (cycle := walk(module)):
            pytest.fail("import cycle: " + " -> ".join(cycle))


def test_project_imports_sit_at_module_top():
    hidden = [f"{MODULES[name].relative_to(ROOT)}:{line} imports {target} inside a function"
              for name, edges in GRAPH.items() if name not in LAZY_ALLOWED
              for target, line, inner in edges if inner]
    assert not hidden, "\n".join(sorted(set(hidden)))


def test_the_checker_sees_an_upward_and_a_hidden_import(tmp_path):
    file = tmp_path / "probe.py"
    file.write_text("from simulations.simulate import simulate\n\ndef f():\n    from client import daemon\n")
    edges = _imports("shared_model.probe", file)
    assert ("simulations.simulate", 1, False) in edges
    assert ("client.daemon", 4, True) in edges


def test_a_merchant_that_only_serves_does_not_import_opacus():
    """The on-site service, the console and the daemon load the training loop and the ledger but train no DP
    themselves: Opacus (about 2 s to import) waits for the first DP step or epsilon (shared_model/dp_engine.py)."""
    import subprocess
    import sys

    probe = ("import sys, fedprofile.onsite_cli, client.daemon, client.console.app, client.onsite.engine, client.policy, "
             "shared_model.training; print(sorted(m for m in sys.modules if m.split('.')[0] == 'opacus'))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]", done.stdout
