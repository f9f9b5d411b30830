"""Command lines generated from config dataclasses (the way nerfstudio's tyro CLI works).

Every field of a config class becomes a flag, ``--field-name``, typed from its annotation
(``X | None``, ``list[X]`` as ``nargs="+"``, ``dict`` as a JSON object, ``bool`` as
``--flag / --no-flag``, ``Literal[...]`` as choices), with the field's docstring as its help.
A config class adds spellings in ``cli_aliases`` (field -> extra flags, the first is the one
shown and written back, e.g. ``--store`` for ``store_url``) and flags that set one key of a
dict field in ``cli_shortcuts`` (``--fpn-channels 64`` -> ``detector_overrides["channels"]``).

Flags left out keep the dataclass defaults: a parsed namespace holds only what was typed.
:func:`config_argv` is the inverse (what ``torchrun`` launches are given), so
``config_from_args(cls, parser.parse_args(config_argv(config))) == config``.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import json
import logging
import os
import re
import sys
import textwrap
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

SHORTCUT_PREFIX = "shortcut__"


@dataclass(frozen=True)
class Shortcut:
    """A flag that sets one key of a dict field of the config."""

    field: str
    """The dict field (e.g. ``detector_overrides``)."""
    key: str
    """The key it sets (e.g. ``channels``)."""
    type: Callable[[str], Any]
    help: str


def field_docs(config_class: type) -> dict[str, str]:
    """``{field: docstring}`` from the string literal under each field in the class bodies
    (base classes first, so a subclass that only changes a default keeps the base's text)."""
    docs: dict[str, str] = {}
    for cls in reversed(config_class.__mro__):
        if not dataclasses.is_dataclass(cls):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(cls))
        except (OSError, TypeError):
            continue
        body = next(n for n in ast.parse(source).body if isinstance(n, ast.ClassDef)).body
        for statement, following in zip(body, body[1:], strict=False):
            if (
                isinstance(statement, ast.AnnAssign)
                and isinstance(statement.target, ast.Name)
                and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            ):
                docs[statement.target.id] = " ".join(following.value.value.split())
    return docs


def _flag_kind(annotation: Any) -> tuple[Any, bool, tuple | None]:
    """``(scalar type, is_list, choices)`` of a field's annotation (``X | None`` -> ``X``)."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        choices = typing.get_args(annotation)
        return type(choices[0]), False, choices
    if origin is dict:
        return dict, False, None
    if origin is list:
        kind, _, choices = _flag_kind(typing.get_args(annotation)[0])
        return kind, True, choices
    inner = [a for a in typing.get_args(annotation) if a is not type(None)]
    if inner:
        return _flag_kind(inner[0])
    return annotation, False, None


def json_object(text: str) -> dict[str, Any]:
    """A flag value that must be a JSON object."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON ({exc.msg}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def flags_of(config_class: type, name: str) -> list[str]:
    """The flags of field ``name``: the aliases first (the first one is shown), then
    ``--field-name``."""
    aliases = getattr(config_class, "cli_aliases", {}).get(name, ())
    own = "--" + name.replace("_", "-")
    return list(dict.fromkeys([*aliases, own]))


def _default_text(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return "" if f.default is None else f" (default: {f.default})"
    if f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
        return f" (default: {json.dumps(value)})" if value else ""
    return ""


def add_config_flags(parser: argparse.ArgumentParser, config_class: type) -> None:
    """One flag per field of ``config_class`` (and its shortcuts), help from the docstrings."""
    hints = typing.get_type_hints(config_class)
    docs = field_docs(config_class)
    for f in dataclasses.fields(config_class):
        flags = flags_of(config_class, f.name)
        kind, is_list, choices = _flag_kind(hints[f.name])
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        text = (docs.get(f.name, "") + _default_text(f)).replace("%", "%%")
        options: dict[str, Any] = {"dest": f.name, "help": text}
        if not required:
            options["default"] = argparse.SUPPRESS
        if kind is bool:
            parser.add_argument(*flags, action=argparse.BooleanOptionalAction, **options)
            continue
        if kind is dict:
            options.update(type=json_object, metavar="JSON")
        else:
            options.update(type=kind, choices=choices, nargs="+" if is_list else None)
        parser.add_argument(*flags, required=required, **options)
    for flag, shortcut in getattr(config_class, "cli_shortcuts", {}).items():
        text = f"{shortcut.help} (sets {shortcut.field}[{shortcut.key!r}])".replace("%", "%%")
        parser.add_argument(flag, dest=SHORTCUT_PREFIX + flag, type=shortcut.type,
                            metavar=shortcut.key.upper(),
                            default=argparse.SUPPRESS, help=text)  # fmt: skip


def config_parser(config_class: type, prog: str, description: str) -> argparse.ArgumentParser:
    """A parser with one flag per field of ``config_class``."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=f"{description} Each flag sets the {config_class.__name__} field of its "
        "name; flags left out keep their defaults.",
    )
    add_config_flags(parser, config_class)
    return parser


def config_from_args(config_class: type, args: argparse.Namespace | dict[str, Any]):
    """The config of a parsed command line (shortcuts merged into their dict fields)."""
    given = dict(vars(args) if isinstance(args, argparse.Namespace) else args)
    shortcuts = getattr(config_class, "cli_shortcuts", {})
    fields = {f.name for f in dataclasses.fields(config_class)}
    values = {k: v for k, v in given.items() if k in fields}
    for flag, shortcut in shortcuts.items():
        if SHORTCUT_PREFIX + flag in given:
            merged = dict(values.get(shortcut.field) or {})
            merged[shortcut.key] = given[SHORTCUT_PREFIX + flag]
            values[shortcut.field] = merged
    try:
        return config_class(**values)
    except ValueError as exc:
        raise ValueError(flag_message(config_class, str(exc))) from None


_FIELD_PREFIX = re.compile(r"(?:(?P<owner>[A-Z]\w*)(?:\.|: ))?(?P<field>\w+): ")


def flag_message(config_class: type, message: str) -> str:
    """``message`` with the field it opens with (``Config.field:``, ``Config: field:`` or
    ``field:``) spelled as the flag that sets it: the user of a command line typed the flag.
    Other messages are returned as they are."""
    match = _FIELD_PREFIX.match(message)
    owners = {cls.__name__ for cls in config_class.__mro__}
    fields = {f.name for f in dataclasses.fields(config_class)}
    if (match is None or match["field"] not in fields
            or (match["owner"] is not None and match["owner"] not in owners)):  # fmt: skip
        return message
    return f"{flags_of(config_class, match['field'])[0]}: {message[match.end() :]}"


def config_argv(config: Any) -> list[str]:
    """The flags that make ``config`` from its class's parser: every field that differs from
    its default, under its first flag."""
    argv: list[str] = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.default is not dataclasses.MISSING and value == f.default:
            continue
        if f.default_factory is not dataclasses.MISSING and value == f.default_factory():
            continue
        flag = flags_of(type(config), f.name)[0]
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, dict):
            argv += [flag, json.dumps(value)]
        elif isinstance(value, (list, tuple)):
            if not value:
                raise ValueError(f"{f.name}: an empty list has no command-line spelling")
            argv += [flag, *map(str, value)]
        elif value is None:
            raise ValueError(f"{f.name}: None has no command-line spelling (default {f.default})")
        else:
            argv += [flag, str(value)]
    return argv


def configure_rank_logging() -> int:
    """Log at INFO on rank 0 and WARNING on the other ranks of a ``torchrun`` launch;
    returns this process's rank."""
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s %(levelname)s [rank {rank}] %(name)s: %(message)s",
    )
    return rank


def run_config_command(
    parser: argparse.ArgumentParser,
    make_config: Callable[[argparse.Namespace], Any],
    run: Callable[[Any], dict[str, Any]],
    argv: Sequence[str] | None = None,
) -> int:
    """The ``python -m`` entry of a training run, one rank of ``torchrun`` or alone: parse,
    log, run, and print the summary on rank 0. Bad input is one line on stderr, exit 2."""
    args = parser.parse_args(argv)
    rank = configure_rank_logging()
    config = None
    try:
        config = make_config(args)
        summary = run(config)
    except (FileNotFoundError, ValueError) as exc:
        message = str(exc) if config is None else flag_message(type(config), str(exc))
        sys.stderr.write(f"{parser.prog}: error: {message}\n")
        return 2
    if rank == 0:
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    return 0
