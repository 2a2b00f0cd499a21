"""``--help`` of every command: defaults shown once, and only when they say something."""

from __future__ import annotations

import argparse
import re

import pytest

from sparseyolo.cli.common import HelpFormatter, informative_default
from sparseyolo.cli.main import build_parser, main


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(("train",), parser), ..., (("data", "voc2yolo"), parser): every (sub)command parser."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, p in action.choices.items():
                yield (*path, name), p
                yield from _commands(p, (*path, name))


COMMANDS = list(_commands(build_parser()))


def test_every_command_found():
    names = {" ".join(path) for path, _ in COMMANDS}
    assert {"train", "benchmark", "report", "demo", "data voc2yolo", "data get-voc"} <= names


@pytest.mark.parametrize("path,parser", COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_help_states_defaults_once(path, parser, monkeypatch):
    monkeypatch.setenv("COLUMNS", "2000")  # one line per option's help, so a line is one option
    assert parser.formatter_class is HelpFormatter
    text = parser.format_help()
    assert "(default: None)" not in text
    assert "(default: False)" not in text
    assert "(default: ==SUPPRESS==)" not in text
    twice = [line.strip() for line in text.splitlines() if len(re.findall("default", line, re.I)) > 1]
    assert not twice, f"'default' twice in: {twice}"
    # the same per option, from the formatter itself (independent of line wrapping)
    fmt = parser._get_formatter()
    for action in parser._actions:
        if not action.help or action.help == argparse.SUPPRESS:
            continue
        help_text = fmt._expand_help(action)
        assert len(re.findall("default", help_text, re.I)) <= 1, (action.option_strings, help_text)
        if informative_default(action) and "default" not in action.help.lower() and action.option_strings:
            assert help_text.endswith(f"(default: {action.default})"), help_text  # informative ones shown


def test_benchmark_help_shape(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "2000")
    with pytest.raises(SystemExit) as e:
        main(["benchmark", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if "batch size (default" in ln)  # --batch-size's help
    assert line.rstrip().endswith("(default 1 or the model's static batch)")  # nothing appended
    assert "--time TIME" in out and "(default: 10.0)" in out  # an informative default is still shown
    # the epilog keeps its line breaks
    assert "\nShapes: dynamic input axes take --batch-size / --img" in out


def test_formatter_rules():
    p = argparse.ArgumentParser(formatter_class=HelpFormatter)
    p.add_argument("--a", default=None, help="a")
    p.add_argument("--b", default=3, help="b")
    p.add_argument("--c", default=3, help="c (default 3 unless ...)")
    p.add_argument("--d", action="store_true", help="d")
    p.add_argument("--e", default="", help="e")
    p.add_argument("--f", default=[1, 2], nargs="+", type=int, help="f")
    p.add_argument("--g", action="store_false", help="g")
    p.add_argument("pos", help="positional")
    fmt = p._get_formatter()
    helps = {a.dest: fmt._expand_help(a) for a in p._actions if a.dest != "help"}
    assert helps == {
        "a": "a",
        "b": "b (default: 3)",
        "c": "c (default 3 unless ...)",
        "d": "d",
        "e": "e",
        "f": "f (default: [1, 2])",
        "g": "g",
        "pos": "positional",
    }
