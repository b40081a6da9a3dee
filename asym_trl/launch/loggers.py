"""Where a run's metrics go: the loggers of ``report_to``, checked and set up by ``asym-trl train`` / ``train-async``.

- :func:`check_loggers`: every logger of ``report_to`` must be importable here, else a ``RecipeError`` (one line,
  exit 2) naming the extra to install (``pip install "asym_trl[trackio]"``); an unknown name is refused with the
  supported ones.  Checked with the recipe, before anything heavy loads, in ``--dry-run`` too (transformers would
  otherwise raise a ``RuntimeError`` traceback after the model has loaded).
- :func:`set_logger_defaults`: where a run logs when the user has not said: Weights & Biases writes its run under
  ``output_dir`` (``WANDB_DIR``, else ``wandb/`` lands in the current directory) in the project ``asym-trl``
  (``WANDB_PROJECT``, else transformers' ``huggingface``); trackio's project (the recipe key ``project``, TRL's
  default ``huggingface``) becomes ``asym-trl`` too.  TensorBoard already writes ``output_dir/runs``.

The diagnostics (``docs/diagnostics.md``) and ``rollout_step`` are in every log entry, so every logger gets them.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
from pathlib import Path

from .recipes import RecipeError

__all__ = ["DEFAULT_PROJECT", "LOGGER_EXTRAS", "check_loggers", "set_logger_defaults"]

DEFAULT_PROJECT = "asym-trl"
TRL_DEFAULT_PROJECT = "huggingface"  # TrainingArguments.project, and transformers' WANDB_PROJECT default
# logger -> (the asym_trl extra that installs it, the modules any one of which transformers accepts)
LOGGER_EXTRAS: dict[str, tuple[str, tuple[str, ...]]] = {
    "wandb": ("wandb", ("wandb",)),
    "trackio": ("trackio", ("trackio",)),
    "tensorboard": ("tensorboard", ("tensorboard", "tensorboardX")),
}


def _supported() -> list[str]:
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    return sorted(INTEGRATION_TO_CALLBACK)


def check_loggers(report_to: list[str] | str | None) -> None:
    """Each logger of ``report_to`` is one transformers knows and its package is installed (``RecipeError`` if
    not, naming the extra or package to install)."""
    names = [report_to] if isinstance(report_to, str) else list(report_to or [])
    for name in names:
        if name in ("none", "all"):  # "all": transformers takes whatever is installed
            continue
        if name in LOGGER_EXTRAS:
            extra, modules = LOGGER_EXTRAS[name]
            if not any(importlib.util.find_spec(module) is not None for module in modules):
                raise RecipeError(
                    f'report_to: {name} is not installed: pip install "asym_trl[{extra}]" (or pip install '
                    f"{modules[0]}), or log elsewhere with --report_to none"
                )
            continue
        supported = _supported()  # transformers' other integrations (mlflow, comet_ml, ...)
        if name not in supported:
            close = difflib.get_close_matches(name, [*supported, "none"], n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise RecipeError(f"report_to: unknown logger {name!r}; {hint}choose from {', '.join(supported)}, none")
        if not _installed(name):
            raise RecipeError(f"report_to: {name} is not installed (see transformers' docs for its package)")


def _installed(name: str) -> bool:
    """transformers' own test of the other integrations (mlflow, comet_ml, ...)."""
    from transformers.integrations import integration_utils as integrations

    test = getattr(integrations, f"is_{name}_available", None)
    return test is None or bool(test())


def set_logger_defaults(training_args, environ: dict[str, str] | None = None) -> dict[str, str]:
    """Set what the user left unset (see the module doc); returns the environment variables it set."""
    environ = os.environ if environ is None else environ
    if training_args.project == TRL_DEFAULT_PROJECT:
        training_args.project = DEFAULT_PROJECT
    report_to = training_args.report_to or []
    defaults = {}
    if "wandb" in report_to:
        defaults = {
            "WANDB_DIR": str(Path(training_args.output_dir).expanduser().absolute()),
            "WANDB_PROJECT": training_args.project,
        }
    set_here = {key: value for key, value in defaults.items() if not environ.get(key)}
    environ.update(set_here)
    return set_here
