"""The ``asym-trl`` command: one sub-command per everyday task, each a module with ``main(argv)``.

A command's module imports the heavy libraries (torch, transformers, TRL, datasets, vLLM) inside ``main``, after its
arguments are parsed, so that ``asym-trl --help`` and ``asym-trl <command> --help`` answer at once
(``tests/test_cli_help.py``).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import OneLineParser

# name -> (module with a main(argv) function, one-line help). Add a line to add a command.
COMMANDS: dict[str, tuple[str, str]] = {
    "quickstart": (
        "asym_trl.apps.quickstart",
        "offline CPU run: SFT warm start + AsymGRPO, held-out accuracy before -> after",
    ),
    "train": ("asym_trl.train", "train a recipe: asym-trl train --config recipes/qwen3-4b/asym.yaml [--dry-run]"),
    "train-async": (
        "asym_trl.train_async",
        "train with asynchronous generation: asym-trl train-async --config recipes/cpu/asym-async.yaml",
    ),
    "push": ("asym_trl.launch.hub", "write a run's model card and push it to the Hub: asym-trl push RUN_DIR"),
    "eval": ("asym_trl.task.evaluation", "Avg@k on the paper's math benchmarks (vLLM, server or transformers)"),
    "vllm-serve": ("asym_trl.generation.vllm_serve", "start a vLLM generation server for vllm_mode='server' training"),
    "plot": ("asym_trl.diagnostics.plotting", "paper-style diagnostics plots of finished runs (PNG)"),
}


def make_parser() -> OneLineParser:
    width = max(map(len, COMMANDS))
    commands = "\n".join(f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items())
    parser = OneLineParser(
        prog="asym-trl",
        usage="asym-trl COMMAND [options]",
        description=f"AsymGRPO on Hugging Face TRL.\n\ncommands:\n{commands}",
        epilog="asym-trl COMMAND --help: the options of one command.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=sorted(COMMANDS), help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = make_parser()
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0
    args = parser.parse_args(argv[:1])
    module = importlib.import_module(COMMANDS[args.command][0])
    return module.main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
