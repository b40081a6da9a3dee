"""Train a recipe: the accelerate entry point of asym_trl.

    accelerate launch --config_file recipes/accelerate_configs/zero2.yaml \\
        -m asym_trl.train --config recipes/qwen3-4b/asym.yaml
    asym-trl train --config recipes/cpu/quickstart.yaml            # same script, one process
    asym-trl train --config recipes/qwen3-4b/asym.yaml --dry-run --num_processes 4

The recipe format, its checks and the batch arithmetic are `asym_trl.launch.recipes`.  What `main()` does, in order:
1. Resolve and check the recipe (`asym_trl.launch.recipes.parse_args`): an unknown key or a bad value stops here,
   naming the key, before anything heavy is imported or loaded; then what the run needs is found without loading it
   (`asym_trl.launch.preflight`: reward functions, datasets, the model's config, a writable `output_dir`, the
   loggers' packages (`asym_trl.launch.loggers`), and what the Hub cannot give here: one probe, or
   `HF_HUB_OFFLINE` and the local cache).
   `--dry-run`: print the resolved recipe, what it found and the batch arithmetic (prompts per rollout step,
   completions per optimizer step, optimizer steps per generation), with what a launch here would stop on as notes
   (an unreachable Hub, a quantization without a GPU), and exit.  Every user mistake is one line
   `asym-trl train: error: ...` and exit code 2 (`asym_trl.errors`; `ASYM_TRL_DEBUG=1` shows the traceback).
2. Model: `model_name_or_path` with the recipe's dtype / quantization / LoRA (TRL's `get_quantization_config`,
   `get_peft_config`).  QLoRA is `load_in_4bit: true` + `use_peft: true`; where bitsandbytes cannot run (not
   installed, no CUDA GPU) the launch stops here with the cause and the fix, before any model is loaded.
3. Data: the training set (`asym_trl.task.data`, or a `module:function` factory) and the validation benchmarks.
4. Rewards: `asym_trl.task.rewards.REWARD_FUNCS` names, or `module:function`.
5. Trainer: `AsymGRPOTrainer`, validating greedily every `validation_steps` and keeping the best model in
   `output_dir/best` (`asym_trl.diagnostics.validation`).
6. Train, resuming from the newest complete checkpoint in `output_dir` (or `resume_from_checkpoint`).  A stop
   signal (SIGTERM, SIGINT, SIGUSR1) checkpoints and exits with code 75; a step that raises checkpoints the last
   completed step first (`docs/stopping.md`).
7. Save, write the model card, and push once to `hub_model_id` when `push_to_hub: true` (see `asym_trl.launch.hub`;
   TRL's per-checkpoint pushes are not used).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import shlex
import sys
import traceback
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from .errors import one_line_errors
from .lifecycle.quiet_logs import show_once

if TYPE_CHECKING:  # TRL, torch and transformers are imported when a run starts, not for --help
    from .config import AsymGRPOConfig
    from .launch.recipes import ScriptArguments

logger = logging.getLogger(__name__)

USAGE = """\
usage: asym-trl train --config RECIPE [--dry-run] [--KEY VALUE ...]
       accelerate launch [--config_file ACCELERATE_CONFIG] -m asym_trl.train --config RECIPE [--KEY VALUE ...]

Train a recipe: a YAML file of TRL's GRPOConfig and ModelConfig keys plus the method's (docs/recipes.md).

options:
  --config RECIPE  the recipe, e.g. recipes/cpu/quickstart.yaml (CPU, the tiny model) or recipes/qwen3-4b/asym.yaml
  --dry-run        check the recipe and find its model, data and rewards without loading them; print the resolved
                   recipe and the batch arithmetic, then exit
  --KEY VALUE      set or override a recipe key, e.g. --max_steps 20 --output_dir runs/try --advantage_estimator grpo
  -h, --help       this summary
  --help-all       every key, with its default and help (about 1,500 lines: TRL's GRPOConfig and ModelConfig)

A mistake is one line "asym-trl train: error: ..." (exit 2). A stop signal checkpoints and exits 75; the same
command resumes (docs/stopping.md)."""


def print_help(argv: list[str], usage: str, make_parser) -> bool:
    """``-h`` / ``--help``: ``usage`` (nothing heavy is imported); ``--help-all``: it, then every option."""
    if "--help-all" in argv:
        print(f"{usage}\n\nevery option:\n")
        make_parser().print_help()
    elif "-h" in argv or "--help" in argv:
        print(usage)
    else:
        return False
    return True


# ------------------------------------------------------------------------------------------- data and rewards
def load_reward_funcs(names: list[str]) -> list:
    """Reward functions from `REWARD_FUNCS` names or `package.module:function` specs."""
    from .launch.recipes import RecipeError, import_object

    funcs = []
    for name in names:
        if ":" in name:
            funcs.append(import_object(name, "reward function", "reward_funcs"))
            continue
        from .task.rewards import REWARD_FUNCS

        if name not in REWARD_FUNCS:
            raise RecipeError(f"reward_funcs: unknown reward {name!r}; choose from {sorted(REWARD_FUNCS)}")
        funcs.append(REWARD_FUNCS[name])
    return funcs


def load_datasets(script_args: ScriptArguments):
    """The training set and the validation benchmarks (`{name: dataset}`, empty without validation)."""
    from .launch.preflight import locate_datasets
    from .launch.recipes import RecipeError, import_object
    from .task.data import load_benchmark, load_train_dataset

    locate_datasets(script_args)
    name = script_args.dataset_name
    prompt = {"instruction": script_args.dataset_instruction, "system_prompt": script_args.dataset_system_prompt}
    prompt = {k: v for k, v in prompt.items() if v is not None}  # None: asym_trl.task.data's defaults
    if ":" in name and not Path(name).exists():
        train = import_object(name, "dataset factory", "dataset_name")()
    else:
        split, data_files = script_args.dataset_train_split, script_args.dataset_data_files
        train = load_train_dataset(name, split=split, data_files=data_files, **prompt)
    validation = {Path(b).stem: load_benchmark(b, **prompt) for b in script_args.validation_benchmarks}
    if len(train) == 0:
        raise RecipeError(f"dataset_name={name!r} has no rows: this run has nothing to train on")
    if validation and script_args.validation_select_on not in validation:
        raise RecipeError(
            f"validation_select_on={script_args.validation_select_on!r} is not one of validation_benchmarks "
            f"{list(validation)}"
        )
    return train, validation


def resume_command(argv: list[str], world_size: int) -> str:
    """The command that resumes this run: the same one (it resumes from the newest complete checkpoint)."""
    command = f"asym-trl train {shlex.join(argv)}"
    return command if world_size == 1 else f"the same launch ({world_size} processes) of {command}"


# ------------------------------------------------------------------------------------------------------- main
def _error(message: str, after_progress_bar: bool = False) -> int:
    """One line on stderr (on a line of its own when a progress bar may be mid-line); exit code 2."""
    print(f"{chr(10) if after_progress_bar else ''}asym-trl train: error: {message}", file=sys.stderr, flush=True)
    return 2


def _launch_error(script_args: ScriptArguments, training_args: AsymGRPOConfig, model_args) -> str | None:
    """What stops a (non dry-run) launch before anything is loaded, or None."""
    world_size = training_args.world_size
    if model_args.model_name_or_path is None:
        return "model_name_or_path is not set (a Hub id or a local directory)"
    if training_args.push_to_hub and not training_args.hub_model_id:
        return "push_to_hub is set but hub_model_id is not (want 'user/name')"
    if (engine := _engine_dropped_on_cpu(training_args)) is not None:
        return (
            f"accelerate was launched with a {engine} config, but this run is on CPU (use_cpu or no accelerator), "
            f"where accelerate (1.15) silently drops {engine} and trains plain DDP: the model would not be sharded. "
            "On CPU launch with recipes/accelerate_configs/cpu_multi.yaml (DDP); "
            f"{engine} needs GPUs (tests/test_fsdp.py shows how FSDP2 is exercised on CPU)"
        )
    if (message := quantization_error(model_args, training_args)) is not None:
        return message
    if script_args.num_processes is not None and script_args.num_processes != world_size:
        return (
            f"num_processes={script_args.num_processes} (the world size this recipe's batch "
            f"arithmetic is written for) but {world_size} process(es) were launched; launch "
            f"{script_args.num_processes} or override num_processes and the batch sizes together"
        )
    return None


def _engine_dropped_on_cpu(training_args: AsymGRPOConfig) -> str | None:
    """The sharding engine the accelerate launcher asked for (FSDP / DeepSpeed) when accelerate will drop it on CPU."""
    import torch

    on_cpu = training_args.use_cpu or not torch.accelerator.is_available()
    for engine, variable in (("FSDP", "ACCELERATE_USE_FSDP"), ("DeepSpeed", "ACCELERATE_USE_DEEPSPEED")):
        if on_cpu and os.environ.get(variable, "false").lower() == "true":
            return engine
    return None


def quantization_error(model_args, training_args: AsymGRPOConfig) -> str | None:
    """Why a bitsandbytes-quantized (QLoRA) launch cannot run here, or None: checked before any model load."""
    key = "load_in_4bit" if model_args.load_in_4bit else "load_in_8bit" if model_args.load_in_8bit else None
    if key is None:
        return None
    if not model_args.use_peft:
        return f"{key} needs use_peft: true (QLoRA: the quantized base is frozen, only the LoRA adapters train)"
    if importlib.util.find_spec("bitsandbytes") is None:
        return (
            f"{key} needs bitsandbytes, which is not installed: `pip install bitsandbytes` on a CUDA machine, "
            f"or drop {key} to train LoRA on the unquantized base"
        )
    import torch

    if training_args.use_cpu or not torch.cuda.is_available():
        return (
            f"{key} needs a CUDA GPU (bitsandbytes' quantized kernels) and none is in use here: run on a GPU "
            f"machine, or drop {key} (use_peft alone trains LoRA on CPU)"
        )
    return None


def describe_model(model_args) -> str:
    """One line: the base model's quantization and the LoRA adapters, as TRL's config helpers build them."""
    from trl import get_peft_config, get_quantization_config

    quant, peft = get_quantization_config(model_args), get_peft_config(model_args)
    if quant is None:
        base = f"dtype={model_args.dtype}"
    elif quant.load_in_4bit:
        base = (
            f"4-bit {quant.bnb_4bit_quant_type} (BitsAndBytesConfig, compute dtype {quant.bnb_4bit_compute_dtype}, "
            f"double quant {quant.bnb_4bit_use_double_quant})"
        )
    else:
        base = "8-bit (BitsAndBytesConfig)"
    adapters = "full fine-tuning" if peft is None else f"LoRA r={peft.r} alpha={peft.lora_alpha}"
    if peft is not None:
        adapters += f" dropout={peft.lora_dropout} targets={peft.target_modules or 'the model type default'}"
    return f"{base} + {adapters}" + (" (QLoRA)" if quant is not None and peft is not None else "")


def _print_dry_run(resolved: dict[str, Any], training_args: AsymGRPOConfig, model_args, plan, found, notes) -> None:
    from .launch.recipes import describe_plan

    print("# resolved recipe (recipe + command line, defaults omitted)")
    print(yaml.safe_dump(resolved, sort_keys=True, default_flow_style=None).rstrip())
    ta = training_args
    params = ", ".join(f"{name}={value}" for name, value in ta.estimator_params.items())
    print(f"# advantage estimator: {ta.advantage_estimator} ({params}), loss_type={ta.loss_type}")
    print(f"# model: {describe_model(model_args)}")
    for line in found:
        print(f"# found {line}")
    if (message := quantization_error(model_args, training_args)) is not None:
        notes = [*notes, message]
    for message in notes:
        print(f"# note: a launch here would stop: {message}")
    print(describe_plan(plan, training_args))


def _model_init_kwargs(model_args, training_args: AsymGRPOConfig) -> dict[str, Any]:
    """The recipe's model settings (revision, dtype, attention, quantization) as `from_pretrained` keywords."""
    from trl import get_quantization_config

    kwargs = dict(
        revision=model_args.model_revision,
        trust_remote_code=training_args.trust_remote_code,
        attn_implementation=model_args.attn_implementation,
        dtype=model_args.dtype,
        quantization_config=get_quantization_config(model_args),
    )
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    return {**kwargs, **(training_args.model_init_kwargs or {})}


def _write_resolved_recipe(output_dir: str, resolved: dict[str, Any], argv: list[str]) -> None:
    from .launch.recipes import RESOLVED_RECIPE_FILE, recipe_source

    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, RESOLVED_RECIPE_FILE), "w") as f:
        f.write(f"# source: {recipe_source(argv)} (+ command line)\n")
        yaml.safe_dump(resolved, f, sort_keys=True)


def _resolve(script_args: ScriptArguments, training_args: AsymGRPOConfig, model_args) -> tuple[list, list, list]:
    """Everything a run needs, found without loading weights or data: the reward functions, one line each for the
    datasets and the model (`RecipeError` naming what is missing), and what the Hub cannot give here (a launch stops
    on it, `--dry-run` notes it); the output directory must be writable."""
    from .launch.preflight import check_model, check_output_dir, hub_problems, locate_datasets
    from .launch.recipes import RecipeError

    reward_funcs = load_reward_funcs(script_args.reward_funcs)
    try:
        training_args.check_success_rule(len(reward_funcs))
    except ValueError as e:
        raise RecipeError(str(e)) from e
    found = locate_datasets(script_args)
    if model_args.model_name_or_path is not None:
        found.append(f"model: {check_model(model_args.model_name_or_path)}")
    check_output_dir(training_args.output_dir)
    from .launch.loggers import check_loggers

    check_loggers(training_args.report_to)
    problems = hub_problems(script_args, model_args.model_name_or_path)
    if problems and not script_args.dry_run:
        raise RecipeError(problems[0])
    return reward_funcs, found, problems


@one_line_errors("train")
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if print_help(argv, USAGE, _make_parser):
        return 0
    from .launch.recipes import describe_plan, parse_args, plan_for

    show_once()  # upstream deprecations: once per run, not at every step
    with warnings.catch_warnings(record=True) as caught:  # shown once the checks pass: a mistake is one line
        script_args, training_args, model_args, resolved = parse_args(argv)
        plan = plan_for(training_args, resolved, script_args.num_processes or training_args.world_size)
        if not script_args.dry_run and (message := _launch_error(script_args, training_args, model_args)):
            return _error(message)
        reward_funcs, found, notes = _resolve(script_args, training_args, model_args)
    for w in caught:
        warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    if script_args.dry_run:
        _print_dry_run(resolved, training_args, model_args, plan, found, notes)
        return 0

    from trl import get_peft_config

    from .launch import hub
    from .launch.loggers import set_logger_defaults
    from .lifecycle.graceful_stop import STOP_EXIT_CODE
    from .trainer import AsymGRPOTrainer

    # model, data and rewards
    training_args.model_init_kwargs = _model_init_kwargs(model_args, training_args)
    try:
        train_dataset, validation = load_datasets(script_args)
    except (ValueError, FileNotFoundError) as e:  # asym_trl.task.data names the dataset it cannot load
        return _error(str(e))
    push = training_args.push_to_hub
    training_args.push_to_hub = False  # asym_trl.launch.hub pushes once at the end, with its own model card
    if push:
        hub.warn_if_cannot_push(training_args.hub_model_id)
    set_logger_defaults(training_args)  # wandb under output_dir, project asym-trl (unless set)

    # trainer
    trainer = AsymGRPOTrainer(
        model=model_args.model_name_or_path,
        reward_funcs=reward_funcs,
        args=training_args,
        train_dataset=train_dataset,
        peft_config=get_peft_config(model_args),
    )
    if validation:
        from .diagnostics.validation import ValidationCallback

        trainer.add_callback(
            ValidationCallback(
                trainer,
                validation,
                eval_steps=script_args.validation_steps,
                select_on=script_args.validation_select_on,
                batch_size=script_args.validation_batch_size,
                stop_requested=trainer.graceful_stop.requested,
            )
        )
    if trainer.accelerator.is_main_process:
        _write_resolved_recipe(training_args.output_dir, resolved, argv)
    trainer.accelerator.print(describe_plan(plan, training_args))

    # train: from the newest complete checkpoint; a stop signal or a failing step checkpoints and exits
    checkpoint = training_args.resume_from_checkpoint or trainer.newest_checkpoint()
    if checkpoint is not None:
        trainer.accelerator.print(f"resuming from {checkpoint}")
    resume = resume_command(argv, trainer.accelerator.num_processes)
    try:
        trainer.train(resume_from_checkpoint=checkpoint)
    except Exception as e:
        return _failed(trainer, e, resume)
    stop = trainer.graceful_stop
    if stop.stop_step is not None:
        trainer.accelerator.wait_for_everyone()
        if trainer.accelerator.is_main_process:
            print(
                f"asym-trl train: stopped by {stop.signal_name} at step {stop.stop_step}; checkpoint "
                f"{Path(training_args.output_dir) / f'checkpoint-{stop.stop_step}'}; resume with: {resume}",
                file=sys.stderr,
                flush=True,
            )
        _end(trainer)
        return STOP_EXIT_CODE

    # save, model card, push
    trainer.save_model(training_args.output_dir)
    status = 0
    if trainer.accelerator.is_main_process:
        hub.write_model_card(training_args.output_dir)
        if push:
            try:
                url = hub.push_run(training_args.output_dir, training_args.hub_model_id)
                print(f"pushed {training_args.output_dir} to {url}")
            except hub.HubPushError as e:
                print(f"asym-trl train: error: {e}", file=sys.stderr)
                status = 1
    trainer.accelerator.wait_for_everyone()
    _end(trainer)
    return status


def _make_parser():
    from .launch.recipes import make_parser

    return make_parser()


def _end(trainer) -> None:
    if hasattr(trainer, "end"):  # transformers >= 5.18: finish the trackers, destroy the process group
        trainer.end()


def _failed(trainer, error: Exception, resume: str) -> int:
    """A training step raised: the traceback, then one line saying what failed and where to resume from."""
    from .errors import UsageError, debugging

    step = trainer.state.global_step
    if isinstance(error, UsageError) and not debugging():  # e.g. a reward function returning strings
        where = f"; checkpoint {trainer.crash_checkpoint_dir}" if trainer.crash_checkpoint_dir else ""
        return _error(f"{error} (at step {step + 1}{where})", after_progress_bar=True)
    traceback.print_exception(error)
    if trainer.crash_checkpoint_dir is not None:
        saved = f"step {step} is checkpointed in {trainer.crash_checkpoint_dir}; resume with: {resume}"
    elif trainer.crash_checkpoint is None:
        saved = f"no crash checkpoint (several processes, or crash_checkpoint off); resume with: {resume}"
    else:
        saved = "no optimizer step had completed: nothing to checkpoint"
    print(
        f"\nasym-trl train: step {step + 1} failed: {type(error).__name__}: {' '.join(str(error).split())}; {saved}",
        file=sys.stderr,
        flush=True,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
