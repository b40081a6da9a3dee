"""Train a recipe with asynchronous generation (``asym_trl.async_trainer``): ``asym-trl train-async``.

    asym-trl vllm-serve MODEL --weight-sync disk ...              # the generation server first (docs/vllm.md)
    asym-trl train-async --config recipes/cpu/asym-async.yaml [--dry-run]

The recipe format is ``asym-trl train``'s (``base:``, ``env:``, command-line overrides; ``asym_trl.launch.recipes``),
with the keys of :class:`AsyncScriptArguments` and :class:`asym_trl.async_trainer.AsymAsyncGRPOConfig` (every field
of TRL's ``AsyncGRPOConfig``: no ``use_vllm`` / ``vllm_mode``, no ``GRPOConfig``-only keys). One process trains (TRL's
async trainer also runs under ``accelerate launch``); the model is loaded by TRL from ``model_name_or_path`` with
``dtype``; there is no in-training validation here.
"""

from __future__ import annotations

import os
import sys
import warnings
from dataclasses import dataclass, field

from .train import _write_resolved_recipe, load_reward_funcs, print_help

__all__ = ["AsyncScriptArguments", "main", "parse_args"]

USAGE = """\
usage: asym-trl train-async --config RECIPE [--dry-run] [--KEY VALUE ...]

Train a recipe with asynchronous generation: a vLLM server generates while the trainer trains (docs/vllm.md).
Start the server first: asym-trl vllm-serve MODEL --weight-sync disk ... (asym-trl vllm-serve --help).

options:
  --config RECIPE  the recipe, e.g. recipes/cpu/asym-async.yaml (CPU) or recipes/qwen3-4b/asym-async.yaml
  --dry-run        print the resolved recipe and exit
  --KEY VALUE      set or override a recipe key, e.g. --max_steps 20 --output_dir runs/try
  -h, --help       this summary
  --help-all       every key, with its default and help (TRL's AsyncGRPOConfig)"""


def last_checkpoint(training_args) -> str | None:
    """``resume_from_checkpoint`` when given, else the newest ``checkpoint-N`` in ``output_dir`` (None: start fresh).
    TRL's async trainer writes no completion marker (``asym_trl.lifecycle.checkpoints`` publishes the sync trainer's
    only)."""
    if training_args.resume_from_checkpoint is not None:
        return training_args.resume_from_checkpoint
    if not os.path.isdir(training_args.output_dir):
        return None
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(training_args.output_dir)


@dataclass
class AsyncScriptArguments:
    """What ``asym-trl train-async`` needs beside the trainer's config.

    Parameters:
        model_name_or_path (`str`): the model to train and serve (a Hub id or a local directory).
        dataset_name (`str`): a name registered in ``asym_trl.task.data``, a local file, or
            ``package.module:function``.
        dataset_instruction, dataset_system_prompt, dataset_data_files: as for ``asym-trl train``.
        reward_funcs (`list[str]`): ``asym_trl.task.rewards`` names or ``package.module:function`` (module level: the
            rollout worker is a spawned process that unpickles them).
        response_template (`str`, *optional*): one of TRL's response templates (``trl.chat_template_utils``, e.g.
            ``qwen3``) to parse completions with, for a chat template TRL does not recognise (the tiny model's).
        dry_run (`bool`): print the resolved recipe and exit.
    """

    model_name_or_path: str | None = field(default=None, metadata={"help": "Model id or local directory."})
    dataset_name: str | None = field(default=None, metadata={"help": "Training set (task.data name or module:fn)."})
    dataset_instruction: str | None = field(default=None, metadata={"help": "Instruction appended to prompts."})
    dataset_system_prompt: str | None = field(default=None, metadata={"help": "System message before prompts."})
    dataset_data_files: str | None = field(default=None, metadata={"help": "Local copy of the training set."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split of the training set."})
    reward_funcs: list[str] = field(default_factory=lambda: ["accuracy"], metadata={"help": "Reward functions."})
    response_template: str | None = field(
        default=None, metadata={"help": "TRL response template to parse completions with (e.g. qwen3)."}
    )
    dry_run: bool = field(default=False, metadata={"help": "Print the resolved recipe and exit."})


def make_parser():
    from trl import TrlParser

    from .async_trainer import AsymAsyncGRPOConfig

    return TrlParser((AsyncScriptArguments, AsymAsyncGRPOConfig), prog="asym-trl train-async")


def parse_args(argv: list[str]):
    """Recipe + command line -> (script arguments, ``AsymAsyncGRPOConfig``, resolved recipe); ``RecipeError``
    names a bad key."""
    from .launch.recipes import parse_recipe

    configs, resolved = parse_recipe(make_parser(), argv)
    return (*configs, resolved)


def load_tokenizer(script_args: AsyncScriptArguments):
    from transformers import AutoTokenizer

    from .launch.recipes import RecipeError

    tokenizer = AutoTokenizer.from_pretrained(script_args.model_name_or_path)
    if script_args.response_template is not None:
        import trl.chat_template_utils as templates

        template = getattr(templates, f"{script_args.response_template}_template", None)
        if not isinstance(template, dict):
            raise RecipeError(f"response_template={script_args.response_template!r} is not one of TRL's templates")
        tokenizer.response_template = template
    return tokenizer


def load_train_set(script_args: AsyncScriptArguments):
    from .launch.recipes import RecipeError, import_object

    name = script_args.dataset_name
    if name is None:
        raise RecipeError("dataset_name is not set: give a registered name, a local file or module:function")
    if ":" in name and not os.path.exists(name):
        return import_object(name, "dataset factory", "dataset_name")()
    from .task.data import load_train_dataset

    prompt = {"instruction": script_args.dataset_instruction, "system_prompt": script_args.dataset_system_prompt}
    prompt = {k: v for k, v in prompt.items() if v is not None}
    split, files = script_args.dataset_train_split, script_args.dataset_data_files
    return load_train_dataset(name, split=split, data_files=files, **prompt)


def check_launch_model(script_args: AsyncScriptArguments) -> None:
    """The model is set and can be found here: a saved local directory, or a Hub id the Hub (or, with
    ``HF_HUB_OFFLINE``, the local cache) can give (``asym_trl.launch.preflight``); a ``RecipeError`` if not."""
    from .launch.preflight import check_model, hub_problems
    from .launch.recipes import RecipeError

    if script_args.model_name_or_path is None:
        raise RecipeError("model_name_or_path is not set (a Hub id or a local directory)")
    check_model(script_args.model_name_or_path)
    if problems := hub_problems(script_args, script_args.model_name_or_path):
        raise RecipeError(problems[0])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if print_help(argv, USAGE, make_parser):
        return 0
    try:
        with warnings.catch_warnings(record=True) as caught:  # shown once the checks pass: a mistake is one line
            script_args, training_args, resolved = parse_args(argv)
            from .launch.loggers import check_loggers

            check_loggers(training_args.report_to)
            if not script_args.dry_run:
                reward_funcs = load_reward_funcs(script_args.reward_funcs)
                train_dataset = load_train_set(script_args)
                check_launch_model(script_args)
                tokenizer = load_tokenizer(script_args)
    except (ValueError, FileNotFoundError) as e:  # RecipeError is a ValueError
        print(f"asym-trl train-async: error: {e}", file=sys.stderr)
        return 2
    for w in caught:
        warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    if script_args.dry_run:
        import yaml

        print(yaml.safe_dump(resolved, sort_keys=False), end="")
        return 0

    from .async_trainer import AsymAsyncGRPOTrainer
    from .launch.loggers import set_logger_defaults

    set_logger_defaults(training_args)  # wandb under output_dir, project asym-trl (unless set)
    trainer = AsymAsyncGRPOTrainer(
        script_args.model_name_or_path,
        reward_funcs,
        args=training_args,
        train_dataset=train_dataset,
        processing_class=tokenizer,
    )
    if trainer.accelerator.is_main_process:
        _write_resolved_recipe(training_args.output_dir, resolved, argv)
    trainer.train(resume_from_checkpoint=last_checkpoint(training_args))
    trainer.save_model(training_args.output_dir)
    return 0


if __name__ == "__main__":  # the rollout worker is a spawned process: it re-imports __main__
    raise SystemExit(main())
