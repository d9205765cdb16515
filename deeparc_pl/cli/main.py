"""``deeparc``: the command line, a thin layer over the deeparc_pl API.

    deeparc COMMAND [--config recipe.yaml] [--overwrite] [key=value ...]
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Callable, Sequence

from .config import build_config, describe_keys

# command -> (module with run(cfg, overwrite), one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("deeparc_pl.cli.train", "train a zoo or user model on a data set and write a checkpoint"),
    "modularize": ("deeparc_pl.cli.modularize", "layer similarity (CKA) + semantic modules -> architecture.json, plots"),
    "models": ("deeparc_pl.cli.listing", "list the model zoo"),
    "pruners": ("deeparc_pl.cli.listing", "list the installed pruner plugins (entry-point group deeparc_pl.pruners)"),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deeparc",
        description="DeepArc on PyTorch Lightning: modularize a trained network, then restructure or re-adapt it.",
        epilog="Run `deeparc COMMAND --help` for the keys a command takes.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, epilog=describe_keys(name),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--config", help="omegaconf YAML recipe (see recipes/)")
        p.add_argument("--overwrite", action="store_true", help="replace existing output files")
        p.add_argument("overrides", nargs="*", metavar="key=value", help="configuration overrides")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("WANDB_MODE", "offline")
    parser = _parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    module_name, _ = COMMANDS[args.command]
    try:
        cfg = build_config(args.command, args.config, args.overrides)
        module = importlib.import_module(module_name)
        runner: Callable = getattr(module, f"run_{args.command}", None) or module.run
        runner(cfg, overwrite=args.overwrite)
    except (ValueError, KeyError, FileNotFoundError, FileExistsError, TypeError, ImportError) as exc:
        print(f"deeparc {args.command}: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
