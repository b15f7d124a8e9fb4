"""Every ``mrx`` command the operator's pages and deploy/ write is one the CLI has.

A command named in prose or a comment (```mrx keys rotate```) must be a real
subcommand; a command line in a shell block of a page, or in a script, must
parse with the CLI's own parser, options and all. The node's own texts that
send an operator somewhere (its modules' docstrings, the help of its
``/metrics``) name real commands too.
"""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from mrx.node.cli import build_parser
from mrx.node.metrics import NodeMetrics
from tests.deploy.conftest import REPO

PAGES = [REPO / "docs" / "operations.md", REPO / "docs" / "corridor.md", *sorted((REPO / "deploy").rglob("*.md")),
         *sorted((REPO / "deploy").rglob("*.sh")), *sorted((REPO / "deploy").rglob("*.service")),
         *sorted((REPO / "deploy").rglob("Containerfile")), *sorted((REPO / "deploy").rglob("compose.yaml"))]

# `mrx` as a command: at the start of a (comment) line, a code span or `$(`, after a path or `exec`.
_NAMED = re.compile(r"(?:^[#\s]*|[`(]|\$\(|/opt/mrx/bin/|\bexec (?:[\w-]+ )?)mrx ([a-z]+)(?: ([a-z]+))?", re.MULTILINE)
# A command line: `mrx` up to a shell operator, a comment or the end of the (continued) line.
_LINE = re.compile(r"(?:^[ \t]*|\$\(|/opt/mrx/bin/)mrx ((?:[^`)|;&>#\n\\]|\\\n)+)", re.MULTILINE)


def _choices(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return next((a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)), {})


def command_lines(page: Path) -> list[str]:
    """The command lines a page or script runs: a markdown page's ``sh`` blocks, a script's code."""
    text = page.read_text()
    if page.suffix == ".md":
        code = "\n".join(re.findall(r"^```sh\n(.*?)^```$", text, flags=re.MULTILINE | re.DOTALL))
    elif page.suffix == ".sh":
        code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    else:
        code = ""
    return [m.group(1).replace("\\\n", " ").strip() for m in _LINE.finditer(code)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_mrx_command_named_is_a_subcommand(page: Path) -> None:
    top = _choices(build_parser())
    named = _NAMED.findall(page.read_text())
    wrong = [" ".join(n) for n in named if n[0] not in top or (_choices(top[n[0]]) and n[1] not in _choices(top[n[0]]))]
    assert not wrong, f"{page.name} names commands mrx does not have: {wrong}"


@pytest.mark.parametrize("page", [p for p in PAGES if command_lines(p)], ids=lambda p: str(p.relative_to(REPO)))
def test_every_mrx_command_line_parses(page: Path) -> None:
    parser = build_parser()
    wrong = []
    for line in command_lines(page):
        try:
            parser.parse_args(shlex.split(line.replace("…", "X")))
        except SystemExit:
            wrong.append(line)
    assert not wrong, f"{page.name} runs mrx command lines the CLI refuses: {wrong}"


def _not_commands(named: list[tuple[str, str]]) -> list[str]:
    """The commands (``log``, ``log key``) among ``named`` that mrx does not have; a group alone names the group."""
    top = _choices(build_parser())
    return [" ".join(n).strip() for n in named
            if n[0] not in top or (n[1] and _choices(top[n[0]]) and n[1] not in _choices(top[n[0]]))]


# ``mrx keys rotate`` in a docstring (perhaps across a line break); "mrx adapters" in a metric's help (metric
# names are mrx_..., never "mrx ").
_IN_DOCSTRING = re.compile(r"``mrx ([a-z]+)(?:\s+([a-z]+))?``")
_IN_HELP = re.compile(r"\bmrx ([a-z]+)")


@pytest.mark.parametrize("module", sorted((REPO / "node").rglob("*.py")), ids=lambda p: str(p.relative_to(REPO)))
def test_the_node_points_operators_only_at_commands_it_has(module: Path) -> None:
    wrong = _not_commands(_IN_DOCSTRING.findall(module.read_text()))
    assert not wrong, f"{module.name} names commands mrx does not have: {wrong}"


def test_the_metrics_help_names_only_commands_mrx_has() -> None:
    helps = [m.documentation for m in NodeMetrics().registry.collect()]
    wrong = _not_commands([(name, "") for text in helps for name in _IN_HELP.findall(text)])
    assert not wrong, f"/metrics help names commands mrx does not have: {wrong}"
