"""Every command that README.md and docs/*.md quote must exist: the documents cannot drift from the
command line.

A command is found in the documents' code blocks (a line, with ``\\`` continuations joined and ``#``
comments dropped) and inline code spans, when it starts (after any ``VAR=value`` prefix) with:

- ``actionpp``, ``python -m ACTIONPlusPlusLib`` or ``torchrun ... -m ACTIONPlusPlusLib``: checked
  against ``ACTIONPlusPlusLib.cli.make_parser()``;
- ``[.venv/bin/]python bench/NAME.py`` or ``bench/NAME.py``: against that script's own parser, taken
  from its ``main()`` with ``ArgumentParser.parse_args`` intercepted, so nothing runs; a script without a
  parser takes no options; ``bench/NAME.sh`` must exist;
- ``Slicer ... --python-script .../ACTIONPlusPlusBatch.py -- ARGS`` or ``python .../ACTIONPlusPlusBatch.py
  ARGS``: against the batch script's ``build_parser()``;
- ``make TARGET``: a target of the Makefile.

The check is ``--help``-level: the subcommand exists, every option exists (full names, no
abbreviations), a value given to an option with choices is one of them, a value converts with the
option's type, and every ``--set KEY=VALUE`` names a config field. Values that are placeholders (an
upper-case word such as ``N``, ``S`` or ``JOB.json``'s ``JOB``, or text with ``<``, ``>`` or ``...``)
are not checked; positional arguments are not checked.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import runpy
import shlex
import sys
from pathlib import Path
from unittest import mock

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
BATCH_SCRIPT = REPO / "ACTIONPlusPlus" / "ACTIONPlusPlusBatch.py"
PYTHONS = ("python", "python3", ".venv/bin/python", "PythonSlicer")
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=\S*$")
PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]*(\.[a-z]+)?$|<|>|\.\.\.")
SET_OPTIONS = ("--set", "--set-both")


# ------------------------------------------------------------------------------------- extraction


def _code_block_lines(text: str) -> list[str]:
    lines, inside, pending = [], False, ""
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            inside, pending = not inside, ""
            continue
        if not inside:
            continue
        line = re.sub(r"\s#.*$", "", line).rstrip()
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    return lines


def _inline_spans(text: str) -> list[str]:
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    return re.findall(r"`([^`\n]+)`", prose)


def document_commands(text: str) -> list[str]:
    """Every candidate command of a Markdown text (code block lines and inline spans)."""
    return [c.strip() for c in _code_block_lines(text) + _inline_spans(text) if c.strip()]


def _tokens(command: str) -> list[str]:
    try:
        tokens = shlex.split(command)
    except ValueError:
        tokens = command.split()
    while tokens and ENV_ASSIGNMENT.match(tokens[0]):
        tokens = tokens[1:]
    return tokens


# ------------------------------------------------------------------------------------------ parsers


class _Captured(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        super().__init__("parser captured")
        self.parser = parser


_PARSERS: dict[str, argparse.ArgumentParser | None] = {}


def _run_path(path: Path) -> dict:
    saved = list(sys.path)
    try:
        return runpy.run_path(str(path), run_name="_docs_command_check")
    finally:
        sys.path[:] = saved


def script_parser(path: Path) -> argparse.ArgumentParser | None:
    """The parser a script's ``main()`` builds (None: the script parses no arguments); nothing runs."""
    key = str(path)
    if key not in _PARSERS:
        if "ArgumentParser" not in path.read_text():
            _PARSERS[key] = None
        else:
            namespace = _run_path(path)

            def capture(self, *args, **kwargs):
                raise _Captured(self)

            with mock.patch.object(argparse.ArgumentParser, "parse_args", capture), \
                    mock.patch.object(argparse.ArgumentParser, "parse_known_args", capture):
                try:
                    namespace["main"]()
                except _Captured as captured:
                    _PARSERS[key] = captured.parser
                else:
                    raise AssertionError(f"{path.name}: main() returned without parsing its arguments")
    return _PARSERS[key]


def cli_parser() -> argparse.ArgumentParser:
    from ACTIONPlusPlusLib.cli import make_parser

    return make_parser()


def batch_parser() -> argparse.ArgumentParser:
    return _run_path(BATCH_SCRIPT)["build_parser"]()


def makefile_targets() -> set[str]:
    return set(re.findall(r"^([A-Za-z][\w-]*)\s*:(?!=)", (REPO / "Makefile").read_text(), re.M))


def config_fields() -> set[str]:
    from ACTIONPlusPlusLib.config import Config

    return {f.name for f in dataclasses.fields(Config)}


# ---------------------------------------------------------------------------------------- checking


def _is_option(token: str) -> bool:
    return token.startswith("-") and len(token) > 1 and not re.match(r"^-\d", token)


def _check_value(action: argparse.Action, option: str, value: str, where: str) -> list[str]:
    if PLACEHOLDER.search(value):
        return []
    if option in SET_OPTIONS:
        key = value.split("=", 1)[0]
        if "=" not in value:
            return [f"{where}: {option} {value}: not KEY=VALUE"]
        return [] if key in config_fields() else [f"{where}: {option} {value}: no config field {key!r}"]
    problems = []
    if action.type is not None and callable(action.type):
        try:
            converted = action.type(value)
        except (TypeError, ValueError, argparse.ArgumentTypeError) as exc:
            return [f"{where}: {option} {value}: {exc or 'invalid value'}"]
    else:
        converted = value
    if action.choices is not None and converted not in action.choices:
        problems.append(f"{where}: {option} {value}: not one of {sorted(map(str, action.choices))}")
    return problems


def _option_values(action: argparse.Action, tokens: list[str], start: int) -> list[str]:
    nargs = action.nargs
    if nargs == 0:
        return []
    if nargs is None:
        return tokens[start:start + 1]
    if nargs == "?":
        return tokens[start:start + 1] if start < len(tokens) and not _is_option(tokens[start]) else []
    if nargs in ("*", "+", argparse.REMAINDER):
        end = start
        while end < len(tokens) and not _is_option(tokens[end]):
            end += 1
        return tokens[start:end]
    return tokens[start:start + int(nargs)]


def check_arguments(parser: argparse.ArgumentParser | None, tokens: list[str], where: str) -> list[str]:
    """Problems of ``tokens`` (the arguments after the program) against ``parser``."""
    if parser is None:
        options = [t for t in tokens if _is_option(t)]
        return [f"{where}: takes no options, got {options}"] if options else []
    subparsers = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    problems, index = [], 0
    while index < len(tokens):
        token = tokens[index]
        if _is_option(token):
            name, has_value, value = token.partition("=")
            action = parser._option_string_actions.get(name)
            if action is None:
                problems.append(f"{where}: unknown option {name}")
                index += 1
                continue
            values = [value] if has_value else _option_values(action, tokens, index + 1)
            for item in values:
                problems += _check_value(action, name, item, where)
            index += 1 + (0 if has_value else len(values))
            continue
        if subparsers is not None and "|" in token:  # a synopsis: train|predict|evaluate
            unknown = [name for name in token.split("|") if name not in subparsers.choices]
            return problems + ([f"{where}: unknown subcommands {unknown}"] if unknown else [])
        if subparsers is not None:
            if token not in subparsers.choices:
                return problems + [f"{where}: unknown subcommand {token!r} (one of {sorted(subparsers.choices)})"]
            return problems + check_arguments(subparsers.choices[token], tokens[index + 1:], f"{where} {token}")
        index += 1
    return problems


def check_command(command: str) -> list[str] | None:
    """Problems of one documented command; None when the text is not a command this test knows."""
    tokens = _tokens(command)
    if not tokens:
        return None
    head = tokens[0]
    if head == "actionpp":
        return check_arguments(cli_parser(), tokens[1:], "actionpp")
    if head == "torchrun" or (head in PYTHONS and tokens[1:3] == ["-m", "ACTIONPlusPlusLib"]):
        if "ACTIONPlusPlusLib" not in tokens:
            return None
        module = tokens.index("ACTIONPlusPlusLib")
        if tokens[module - 1] != "-m":
            return None
        return check_arguments(cli_parser(), tokens[module + 1:], "python -m ACTIONPlusPlusLib")
    if head == "make":
        unknown = sorted(set(tokens[1:]) - makefile_targets())
        return [f"make: no target {unknown}"] if unknown else []
    if head in PYTHONS and len(tokens) > 1:
        tokens = tokens[1:]
        head = tokens[0]
    if head.startswith("bench/"):
        path = REPO / head
        if not path.is_file():
            return [f"{head}: no such script"]
        if path.suffix != ".py":
            return []
        return check_arguments(script_parser(path), tokens[1:], head)
    if head.endswith("ACTIONPlusPlusBatch.py") or (head == "Slicer" and any(t.endswith("ACTIONPlusPlusBatch.py") for t in tokens)):
        arguments = tokens[tokens.index("--") + 1:] if head == "Slicer" and "--" in tokens else tokens[1:]
        return check_arguments(batch_parser(), arguments, "ACTIONPlusPlusBatch.py")
    return None


def _documented() -> list[tuple[str, str]]:
    found = []
    for path in DOCUMENTS:
        for command in document_commands(path.read_text()):
            if _tokens(command) and _knows(command):
                found.append((path.relative_to(REPO).as_posix(), command))
    return found


def _knows(command: str) -> bool:
    tokens = _tokens(command)
    if len(tokens) < 2:  # a program named in prose (`torchrun`, `actionpp`), not a command
        return False
    head = tokens[0]
    if head in PYTHONS and len(tokens) > 1:
        head = tokens[1] if tokens[1] != "-m" else "-m " + (tokens[2] if len(tokens) > 2 else "")
    return (head in ("actionpp", "make", "torchrun", "Slicer", "-m ACTIONPlusPlusLib") or head.startswith("bench/")
            or head.endswith("ACTIONPlusPlusBatch.py"))


DOCUMENTED = _documented()

# options of the programs that start ours (torchrun, Slicer), which the documents quote too
EXTERNAL_OPTIONS = {"--nnodes", "--nproc_per_node", "--rdzv_backend", "--rdzv_endpoint", "--rdzv_id",
                    "--no-main-window", "--python-script"}


def _all_option_parsers() -> list[argparse.ArgumentParser]:
    cli = cli_parser()
    subparsers = next(a for a in cli._actions if isinstance(a, argparse._SubParsersAction))
    benches = [script_parser(path) for path in sorted((REPO / "bench").glob("*.py"))]
    return [*subparsers.choices.values(), batch_parser(), *[p for p in benches if p is not None]]


def check_option_mention(text: str) -> list[str]:
    """An option named on its own in prose (`--resume`, `--set lambda_a=0.1`): it must be an option of
    the command line, a bench or the batch script (or of torchrun / Slicer), with a valid value."""
    tokens = _tokens(text)
    name = tokens[0].split("=", 1)[0]
    if name in EXTERNAL_OPTIONS:
        return []
    owners = [p for p in _all_option_parsers() if name in p._option_string_actions]
    if not owners:
        return [f"{text}: no command has the option {name}"]
    results = [check_arguments(p, tokens, "option") for p in owners]
    return [] if any(not r for r in results) else results[0]


def _mentioned_options() -> list[tuple[str, str]]:
    found = []
    for path in DOCUMENTS:
        for span in _inline_spans(path.read_text()):
            if re.match(r"^--[a-z]", span.strip()):
                found.append((path.relative_to(REPO).as_posix(), span.strip()))
    return found


MENTIONED = _mentioned_options()


# --------------------------------------------------------------------------------------------- tests


def test_the_documents_quote_commands_of_every_kind():
    kinds = {_tokens(c)[0] for _, c in DOCUMENTED}
    assert {"actionpp", "make", ".venv/bin/python", "torchrun", "Slicer"} <= kinds, kinds
    assert any("bench/small_acdc.py" in c for _, c in DOCUMENTED)
    assert len(DOCUMENTED) >= 30


@pytest.mark.parametrize("document,command", DOCUMENTED, ids=[f"{d}:{c[:60]}" for d, c in DOCUMENTED])
def test_documented_command_parses(document, command):
    problems = check_command(command)
    assert problems is not None, f"{document}: not recognised as a command: {command}"
    assert not problems, f"{document}: `{command}`:\n" + "\n".join(problems)


@pytest.mark.parametrize("document,option", MENTIONED, ids=[f"{d}:{o[:60]}" for d, o in MENTIONED])
def test_documented_option_exists(document, option):
    problems = check_option_mention(option)
    assert not problems, f"{document}: `{option}`:\n" + "\n".join(problems)


def test_the_check_catches_what_drifts():
    """A wrong flag, subcommand, choice, config key, script or make target is reported."""
    assert check_command("actionpp train --preset acdc --data d --out o --iterations 600") == []
    assert check_command("actionpp train --preset acdc --data d --out o --no-such-flag") == ["actionpp train: unknown option --no-such-flag"]
    assert check_command("actionpp tran --preset acdc")[0].startswith("actionpp: unknown subcommand 'tran'")
    assert "not one of" in check_command("actionpp train --preset heart --data d --out o")[0]
    assert "invalid" in check_command("actionpp train --preset la --data d --out o --iterations many")[0]
    assert check_command("actionpp train --preset la --data d --out o --iterations N") == []  # a placeholder
    assert "no config field 'lambda_x'" in check_command("actionpp train --preset la --data d --out o --set lambda_x=1")[0]
    assert check_command("torchrun --nproc_per_node 2 -m ACTIONPlusPlusLib train --preset la --data d --out o --batch-size 1,1") == []
    assert check_command(".venv/bin/python bench/small_acdc.py --seeds 1337,1 --sizes 64") == ["bench/small_acdc.py: unknown option --sizes"]
    assert check_command(".venv/bin/python bench/pasted_foreground.py --quick") == ["bench/pasted_foreground.py: takes no options, got ['--quick']"]
    assert check_command("bench/no_such_bench.py --seeds 1") == ["bench/no_such_bench.py: no such script"]
    assert check_command("make demo test") == [] and check_command("make deploy") == ["make: no target ['deploy']"]
    assert check_command("Slicer --no-main-window --python-script ACTIONPlusPlus/ACTIONPlusPlusBatch.py -- --presett la") == [
        "ACTIONPlusPlusBatch.py: unknown option --presett"]
    assert check_command("--set lambda_a=0.1") is None and check_command("docs/DESIGN.md") is None
    assert check_command("actionpp train|predict|evaluate") == []
    assert check_command("actionpp train|serve") == ["actionpp: unknown subcommands ['serve']"]
    assert check_option_mention("--resume") == [] and check_option_mention("--set lambda_a=0.1") == []
    assert check_option_mention("--supervised_only") == ["--supervised_only: no command has the option --supervised_only"]
    assert "no config field" in check_option_mention("--set no_such_key=1")[0]


def test_extraction_joins_continuations_and_drops_comments():
    text = "Run `actionpp demo --out x` or:\n\n```bash\nactionpp train --preset la \\\n    --data d --out o  # comment\n```\n"
    assert document_commands(text) == ["actionpp train --preset la      --data d --out o", "actionpp demo --out x"]
