"""The layout's rules, checked on the source: imports point beam_jobs -> trainer -> schemas and never in a cycle, no
module imports another's private name, and every flag of every command has help text that shows its default."""
import argparse
import ast
import importlib
import pathlib
import re

import pytest

from tests.conftest import REPO_ROOT

PACKAGES = ("beam_jobs", "trainer", "schemas")
# what each package may import of the others
ALLOWED = {"beam_jobs": {"beam_jobs", "trainer", "schemas"}, "trainer": {"trainer", "schemas"}, "schemas": {"schemas"}}
# every console script setup.py installs -> its module
COMMANDS = dict(re.findall(r'"(imcap-[a-z-]+)=([a-z_.]+):main"', pathlib.Path(REPO_ROOT, "setup.py").read_text()))


def _modules() -> dict:
    """module name -> its source file, for every module of the three packages."""
    root = pathlib.Path(REPO_ROOT)
    found = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _imports(modules: dict) -> tuple[dict, list]:
    """(module -> the project modules it imports, anywhere in its file; [(module, private name it imports)])."""
    graph, private = {}, []
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names if alias.name in modules)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module in modules:
                targets.add(node.module)
                for alias in node.names:
                    if f"{node.module}.{alias.name}" in modules:
                        targets.add(f"{node.module}.{alias.name}")
                    elif alias.name.startswith("_"):
                        private.append((name, f"{node.module}.{alias.name}"))
        targets.discard(name)
        graph[name] = targets
    return graph, private


def _cycles(graph: dict) -> list:
    """The strongly connected components of more than one module (Tarjan), a package's __init__ importing its own
    submodules aside."""
    def edges(name):
        return {t for t in graph[name] if not (t.startswith(name + ".") or name.startswith(t + "."))}

    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in edges(node):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
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

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_imports_point_one_way_and_never_in_a_cycle():
    modules = _modules()
    graph, private = _imports(modules)
    assert len(modules) > 40 and sum(map(len, graph.values())) > 200  # the walk saw the code
    upward = [(name, target) for name, targets in graph.items() for target in targets
              if target.split(".")[0] not in ALLOWED[name.split(".")[0]]]
    assert upward == []
    assert _cycles(graph) == []
    assert private == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"p": {"p.x"}, "p.x": {"p"}}) == []  # a package and its own submodule


def _parser_of(module_name: str, monkeypatch) -> argparse.ArgumentParser:
    """The parser a command builds, caught where it starts parsing (nothing runs)."""
    from trainer import cli

    class Caught(Exception):
        pass

    def catch(self, *args, **kwargs):
        raise Caught(self)

    monkeypatch.setattr(cli.ArgumentParser, "parse_known_args", catch)
    monkeypatch.setattr(cli.ArgumentParser, "parse_args", catch)
    module = importlib.import_module(module_name)
    entry = getattr(module, "parse_args", None) or module.main
    with pytest.raises(Caught) as caught:
        entry([])
    return caught.value.args[0]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_flag_has_help_that_shows_its_default(command, monkeypatch):
    assert len(COMMANDS) >= 11
    parser = _parser_of(COMMANDS[command], monkeypatch)
    assert parser.prog == command
    formatter = parser._get_formatter()
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        name = "/".join(action.option_strings) or action.dest
        assert action.help, f"{command} {name}: no help text"
        shown = formatter._get_help_string(action)
        if action.default not in (None, False, [], argparse.SUPPRESS):
            assert "default" in shown.lower(), f"{command} {name}: the help does not show the default"


def test_a_default_is_added_to_help_that_does_not_say_it():
    from trainer import cli
    parser = cli.ArgumentParser(prog="x")
    parser.add_argument("--beam_width", type=int, default=3, help="hypotheses kept")
    parser.add_argument("--seed", type=int, default=0, help="the seed (default 0)")
    parser.add_argument("--model_dir", help="a bundle")
    text = " ".join(parser.format_help().split())
    assert "hypotheses kept (default 3)" in text
    assert "the seed (default 0)" in text and "(default 0) (default 0)" not in text
    assert "a bundle (default" not in text
