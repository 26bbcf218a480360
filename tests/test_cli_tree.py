"""The command line as one tree: no import cycle anywhere in spanmeter, every command's --help usable, one
error policy. Pure: no database, no subprocess but ``--help`` runs of the tree in this process."""

from __future__ import annotations

import argparse
import ast
import contextlib
import io
import tomllib
from pathlib import Path

import pytest

from spanmeter import cli

ROOT = Path(__file__).resolve().parent.parent


def _package_dirs() -> dict[str, Path]:
    """pyproject's package-dir: the folders that import as spanmeter.*."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return {name: ROOT / folder for name, folder in config["tool"]["setuptools"]["package-dir"].items()}


def _modules() -> dict[str, Path]:
    dirs = _package_dirs()
    found: dict[str, Path] = {}
    for package, folder in dirs.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts and parts[-1] == "__init__":
                parts.pop()
            name = ".".join([package, *parts])
            found[name] = path
    return found


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every spanmeter module ``name`` imports, at module level or inside functions (lazy imports count:
    a cycle through a lazy import is still a cycle in the design)."""
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # `from pkg import sub` imports the submodule; `from mod import name`, the module
            targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in known else module for a in node.names]
        for target in targets:
            while target and target not in known:  # spanmeter.billing.ledger.writer.X -> ...writer
                target = target.rpartition(".")[0]
            # a module's own packages are always imported before it: an edge up to them is no cycle
            if target and target.startswith("spanmeter") and not (name == target or name.startswith(target + ".")):
                out.add(target)
    return out


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    # a package imports its own submodules only through `from . import x`; importing a package runs its
    # __init__, so an edge to the package is an edge to its __init__ (named as the package)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def test_the_import_graph_is_read_from_every_package_folder():
    graph = import_graph()
    assert {
        "spanmeter.cli",
        "spanmeter.commands.billing",
        "spanmeter.collector.server",
        "spanmeter.billing.invoices",
    } <= set(graph)
    assert "spanmeter.commands._shared" in graph["spanmeter.commands.billing"]
    assert "spanmeter.billing.ledger.writer" in graph["spanmeter.collector.exporters.ledger"]


def test_no_module_of_spanmeter_is_in_an_import_cycle():
    """The CLI used to be two cycles (cli <-> billing_cli, cli <-> ops_cli); nothing may be one again."""
    assert _cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def _leaves(parser: argparse.ArgumentParser, path: tuple[str, ...] = (), handler=None):
    """Every parser of the tree with its path and the handler it runs (its own, or its group's)."""
    handler = parser.get_default("handler") or handler
    yield path, parser, handler
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _leaves(child, (*path, name), handler)


PARSERS = list(_leaves(cli._parser()))


@pytest.mark.parametrize(("path", "parser", "handler"), PARSERS, ids=[" ".join(p) or "spanmeter" for p, *_ in PARSERS])
def test_every_command_and_flag_says_what_it_does(path, parser, handler):
    assert len(PARSERS) > 30
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as done:
        cli._parser().parse_args([*path, "--help"])
    assert done.value.code == 0 and out.getvalue().startswith("usage: spanmeter")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            assert all(choice.help for choice in action._choices_actions), path
        elif not isinstance(action, argparse._HelpAction):
            assert action.help, f"spanmeter {' '.join(path)} {action.option_strings or action.dest}: no help text"
    is_leaf = not any(isinstance(a, argparse._SubParsersAction) for a in parser._actions)
    if path and is_leaf:  # every runnable command names its handler (set_defaults): one dispatch style
        assert callable(handler), path
