"""``deeparc``: the command line, a thin layer over the deeparc_pl API.

    deeparc COMMAND [--config recipe.yaml] [--overwrite] [key=value ...]

Each command is a module in ``deeparc_pl/cli/`` with ``run(cfg, overwrite)`` (or ``run_<command>``),
a ``HELP`` line and a ``KEYS`` dict (key -> (default, help)) merged over the shared keys. A module
may name a ``POSITIONAL`` key: a first bare word becomes its value (``deeparc reproduce rq1``).
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from types import ModuleType
from typing import Callable, Sequence

# command -> (module, one-line help shown before the module is imported)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("deeparc_pl.cli.train", "train a zoo or user model on a data set and write a checkpoint"),
    "modularize": ("deeparc_pl.cli.modularize", "layer similarity (CKA) + semantic modules -> architecture.json, plots"),
    "compress": ("deeparc_pl.cli.compress", "iterative pruning with and without DeepArc layer reduction, side by side"),
    "attack": ("deeparc_pl.cli.attack", "adversarial samples (fgsm, pgd, deepfool, cw) for a model, written to a file"),
    "enhance": ("deeparc_pl.cli.readapt", "fit adversarial samples by training one located module vs full training"),
    "repair": ("deeparc_pl.cli.readapt", "repair a damaged (mutant) model by training one located module vs full"),
    "reproduce": ("deeparc_pl.cli.reproduce", "reproduce a research question of the paper: rq1, rq2, rq3, rq4"),
    "models": ("deeparc_pl.cli.listing", "list the model zoo"),
    "pruners": ("deeparc_pl.cli.listing", "list the installed pruner plugins (entry-point group deeparc_pl.pruners)"),
}


def command_module(command: str) -> ModuleType:
    if command not in COMMANDS:
        raise KeyError(f"unknown command {command!r}; commands: {sorted(COMMANDS)}")
    name = COMMANDS[command][0]
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name == name:
            raise ImportError(f"command {command!r} is not available in this version ({name} missing)") from None
        raise


def _parser() -> argparse.ArgumentParser:
    from .config import describe_keys

    parser = argparse.ArgumentParser(
        prog="deeparc",
        description="DeepArc on PyTorch Lightning: modularize a trained network, then restructure or re-adapt it.",
        epilog="Run `deeparc COMMAND --help` for the keys a command takes.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = sys.argv[1] if len(sys.argv) > 1 else None
    for name, (_, help_text) in COMMANDS.items():
        try:
            epilog = describe_keys(name) if name == wanted else None
        except ImportError:
            epilog = None
        p = sub.add_parser(name, help=help_text, description=help_text, epilog=epilog,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--config", help="omegaconf YAML recipe (see recipes/)")
        p.add_argument("--overwrite", action="store_true", help="replace existing output files")
        p.add_argument("overrides", nargs="*", metavar="key=value", help="configuration overrides")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("WANDB_MODE", "offline")
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    parser = _parser()
    # key=value may also follow --config: collect what argparse leaves over, refuse stray --flags
    args, extra = parser.parse_known_args(argv)
    stray = [e for e in extra if e.startswith("-")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if args.command:
        args.overrides = [*(args.overrides or []), *extra]
    if not args.command:
        parser.print_help()
        return 2
    from .config import build_config

    try:
        module = command_module(args.command)
        overrides = list(args.overrides)
        positional = getattr(module, "POSITIONAL", None)  # e.g. `deeparc reproduce rq1` -> rq=rq1
        if positional and overrides and "=" not in overrides[0]:
            overrides[0] = f"{positional}={overrides[0]}"
        cfg = build_config(args.command, args.config, overrides)
        runner: Callable = getattr(module, f"run_{args.command}", None) or module.run
        if getattr(module, "COMMAND_AWARE", False):
            runner(cfg, overwrite=args.overwrite, command=args.command)
        else:
            runner(cfg, overwrite=args.overwrite)
    except (ValueError, KeyError, FileNotFoundError, FileExistsError, TypeError, ImportError) as exc:
        print(f"deeparc {args.command}: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
