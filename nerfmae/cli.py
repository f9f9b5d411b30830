"""``nerfmae``: one console script, one subcommand module per stage (DESIGN contract 5).

Each module in :mod:`nerfmae.commands` defines ``register(subparsers)`` which adds its
parser and sets ``func`` (called with the parsed namespace, returns an exit code).
Heavy imports stay inside the command functions so ``nerfmae --help`` is fast. A command
whose parser is generated when it runs (``pretrain``, ``finetune``) sets ``passthrough``:
it receives the rest of the command line as ``args.extra``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys

from nerfmae import commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nerfmae",
        description="NeRF-MAE: scenes -> NeRFs -> radiance grids (Zarr) -> 3D Swin MAE.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        importlib.import_module(f"nerfmae.commands.{info.name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "passthrough", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, ValueError) as exc:
        # Bad input: the message already names the file and field; no traceback.
        print(f"nerfmae {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
