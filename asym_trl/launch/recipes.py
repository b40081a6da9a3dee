"""Recipes: loading, validation and batch arithmetic of `asym-trl train` runs (no model, data or trainer here).

A recipe is a TRL-style YAML file: its keys are the fields of `ScriptArguments` (below), `AsymGRPOConfig`
(every `GRPOConfig` field plus the advantage estimator) and TRL's `ModelConfig` (model id, dtype, LoRA); an `env:`
mapping is exported; command-line flags override the file.  One addition to TRL's format: `base: other.yaml`
(relative to the recipe) reads that recipe first, so a method's recipe lists only the keys it changes.

- `parse_args(argv)` resolves the recipe (`base:` chain) and checks every key and value against the three dataclasses:
  an unknown key or a bad value raises `RecipeError` naming the key, before anything heavy is imported or loaded.
  It also returns the *resolved recipe* (every setting that differs from the defaults), which `asym_trl.train` writes
  to `output_dir/recipe.yaml` (`RESOLVED_RECIPE_FILE`) and `asym_trl.launch.hub` embeds in the model card.
- `batch_plan` / `plan_for` / `describe_plan`: TRL's batch settings in verl's units (prompts per rollout step,
  completions per optimizer step, optimizer steps per generation), for `--dry-run` and the start of a run.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import importlib
import os
import sys
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import yaml
from trl import ModelConfig, TrlParser
from trl import ScriptArguments as TrlScriptArguments

from ..config import AsymGRPOConfig
from ..errors import OneLineParser, UsageError

RESOLVED_RECIPE_FILE = "recipe.yaml"  # written to output_dir: the run's recipe, loadable with --config


class RecipeError(UsageError):
    """A recipe (or command line) that cannot be trained: the message names the key."""


@dataclass
class ScriptArguments(TrlScriptArguments):
    """TRL's script arguments plus what `asym_trl.train` needs to build the data, rewards and launch checks.

    Parameters:
        dataset_name (`str`):
            Training set: a name registered in `asym_trl.task.data` (e.g. `"math"`), a local json/jsonl/parquet file,
            or `"package.module:function"`, a factory returning a `datasets.Dataset` with a conversational `prompt`.
        dataset_instruction (`str`, *optional*):
            Instruction appended to every prompt by `asym_trl.task.data.load_train_dataset` (its default when unset).
        dataset_system_prompt (`str`, *optional*):
            A system message put before every prompt (training and validation).
        dataset_data_files (`str`, *optional*):
            A local copy of the registered training set `dataset_name` (same layout), for machines without Hub access.
        validation_benchmarks (`list[str]`, *optional*):
            Greedy in-training validation (paper App. E, `asym_trl.diagnostics.validation.ValidationCallback`):
            benchmark names of `asym_trl.task.data.load_benchmark` (e.g. `math500`) or local files. Empty: no
        validation. validation_steps (`int`, *optional*, defaults to `10`):
            Validate every this many optimizer steps (TRL's `global_step`).
        validation_select_on (`str`, *optional*, defaults to `"math500"`):
            The benchmark whose accuracy picks the best model, saved to `<output_dir>/best`.
        validation_batch_size (`int`, *optional*, defaults to `16`):
            Prompts per `model.generate` call on each process during validation (runs without vLLM; with vLLM each
            benchmark goes to the engine in one call).
        reward_funcs (`list[str]`, *optional*, defaults to `["accuracy"]`):
            Reward functions: names in `asym_trl.task.rewards.REWARD_FUNCS` or `"package.module:function"`.
        num_processes (`int`, *optional*):
            Training processes the recipe's batch arithmetic is written for. When set, training refuses to start under
            another world size (the batch sizes would silently differ from the recipe's), and `--dry-run` prints the
            arithmetic for it. Unset: the actual world size.
        dry_run (`bool`, *optional*, defaults to `False`):
            Print the resolved recipe and the batch arithmetic, then exit without loading anything.
    """

    dataset_instruction: str | None = field(default=None, metadata={"help": "Instruction appended to prompts."})
    dataset_system_prompt: str | None = field(default=None, metadata={"help": "System message before prompts."})
    dataset_data_files: str | None = field(
        default=None, metadata={"help": "Local copy of the registered training set (no Hub access)."}
    )
    validation_benchmarks: list[str] = field(
        default_factory=list, metadata={"help": "Greedy in-training validation benchmarks (names or local files)."}
    )
    validation_steps: int = field(default=10, metadata={"help": "Validate every this many optimizer steps."})
    validation_select_on: str = field(
        default="math500", metadata={"help": "Benchmark whose accuracy picks the best model (output_dir/best)."}
    )
    validation_batch_size: int = field(
        default=16, metadata={"help": "Prompts per model.generate call in validation (not used with vLLM)."}
    )
    reward_funcs: list[str] = field(
        default_factory=lambda: ["accuracy"],
        metadata={"help": "Reward functions: REWARD_FUNCS names or package.module:function."},
    )
    num_processes: int | None = field(
        default=None, metadata={"help": "World size the recipe's batch arithmetic is written for."}
    )
    dry_run: bool = field(default=False, metadata={"help": "Print the resolved recipe and batch arithmetic; exit."})

    def __post_init__(self):
        # TRL's script arguments that this script has no use for: refuse them rather than ignore them.
        for name in ("dataset_config", "dataset_streaming", "dataset_test_split", "ignore_bias_buffers"):
            f = TrlScriptArguments.__dataclass_fields__[name]
            if getattr(self, name) != f.default:
                raise ValueError(f"{name} is not used by asym_trl.train; remove it (see docs/recipes.md)")
        if self.validation_steps < 1:
            raise ValueError(f"validation_steps={self.validation_steps} must be >= 1")


# ---------------------------------------------------------------------------------------------------- recipes
def load_recipe(path: str | Path) -> dict[str, Any]:
    """Read a recipe YAML, resolving its `base:` chain: the recipe's keys override its base's; `env` maps merge."""
    return _load_recipe(Path(path), ())


def import_object(spec: str, what: str, key: str) -> Any:
    """The object a ``package.module:name`` spec names (a :class:`RecipeError` naming ``key`` if not importable)."""
    module_name, _, attr = spec.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise RecipeError(f"{key}: cannot import {what} {spec!r} ({e})") from e


def _load_recipe(path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    path = path.resolve()
    if path in chain:
        raise RecipeError(f"recipe base chain loops: {' -> '.join(str(p) for p in (*chain, path))}")
    if not path.is_file():
        where = f" (base of {chain[-1]})" if chain else ""
        raise RecipeError(f"recipe file {path} does not exist{where}")
    recipe = read_yaml(path) or {}
    if not isinstance(recipe, dict):
        raise RecipeError(f"recipe {path} must be a YAML mapping of keys to values, got {type(recipe).__name__}")
    for key in ("base", "env"):
        if key in recipe and not isinstance(recipe[key], str if key == "base" else dict):
            want = "a path relative to the recipe" if key == "base" else "a mapping of variable names to values"
            raise RecipeError(f"recipe {path}: key {key!r} must be {want}, got {recipe[key]!r}")
    base = recipe.pop("base", None)
    if base is None:
        return recipe
    merged = _load_recipe(path.parent / base, (*chain, path))
    env = {**merged.get("env", {}), **recipe.get("env", {})}
    merged.update(recipe)
    if env:
        merged["env"] = env
    return merged


def read_yaml(path: Path) -> Any:
    """A YAML file's content; a syntax error is a `RecipeError` with the file, line and column."""
    try:
        with open(path) as f:
            return yaml.safe_load(f)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise RecipeError(f"recipe {path}: invalid YAML{where}: {e.problem or e.context}") from e
    except yaml.YAMLError as e:
        raise RecipeError(f"recipe {path}: invalid YAML: {e}") from e


class RecipeParser(OneLineParser, TrlParser):
    """TRL's parser of the three dataclasses, answering a bad flag in one line."""


def make_parser() -> TrlParser:
    return RecipeParser((ScriptArguments, AsymGRPOConfig, ModelConfig), prog="asym-trl train")


def _options_by_key(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    options = {}
    for action in parser._actions:
        if action.option_strings and not isinstance(action, (argparse._StoreFalseAction, argparse._HelpAction)):
            options.setdefault(action.dest, action)
    return options


def check_recipe(parser: argparse.ArgumentParser, recipe: dict[str, Any], source: str) -> dict[str, Any]:
    """Each recipe key must be a parser option and its value must convert to the option's type and choices.

    Returns the converted values (TrlParser puts YAML values in as argparse defaults, which argparse neither
    converts unless they are strings nor checks against `choices`).
    """
    options = _options_by_key(parser)
    checked = {}
    for key, value in recipe.items():
        action = options.get(key)
        if action is None:
            close = difflib.get_close_matches(key, options, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise RecipeError(f"{source}: unknown recipe key {key!r}{hint}")
        checked[key] = _convert_value(key, value, action, source)
    return checked


def _convert_value(key: str, value: Any, action: argparse.Action, source: str) -> Any:
    is_list = action.nargs == "+"
    if value is None or (isinstance(value, (dict, list)) and not is_list):
        return value  # mappings/lists for fields TRL declares as str (model_init_kwargs, report_to, ...)
    items = value if isinstance(value, list) else [value]
    try:
        converted = [item if action.type is None else action.type(str(item)) for item in items]
    except (TypeError, ValueError, argparse.ArgumentTypeError) as e:
        type_name = getattr(action.type, "__name__", "value")
        raise RecipeError(f"{source}: recipe key {key!r} has an invalid value {value!r} (expected {type_name})") from e
    if action.choices is not None:
        for item in converted:
            if item not in action.choices:
                raise RecipeError(
                    f"{source}: recipe key {key!r} has an invalid value {item!r}; choose one of {list(action.choices)}"
                )
    return converted if isinstance(value, list) else converted[0]


def _pop_config_flag(argv: list[str]) -> tuple[str | None, list[str]]:
    argv = list(argv)
    for i, arg in enumerate(argv):
        if arg == "--config":
            if i + 1 >= len(argv):
                raise RecipeError("--config needs a recipe path")
            return argv[i + 1], argv[:i] + argv[i + 2 :]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1], argv[:i] + argv[i + 1 :]
    return None, argv


def recipe_source(argv: list[str]) -> str | None:
    """The `--config` path of a command line."""
    return _pop_config_flag(argv)[0]


def parse_args(argv: list[str]) -> tuple[ScriptArguments, AsymGRPOConfig, ModelConfig, dict[str, Any]]:
    """Recipe (`--config`, resolved) + command line -> the three dataclasses and the resolved recipe.

    The resolved recipe is every setting that differs from the dataclass defaults, before the dataclasses derive
    anything (so it reloads as a recipe and reproduces the run); its `env` is the recipe's (already exported).
    Raises `RecipeError` naming the key for unknown keys and bad values.
    """
    (script_args, training_args, model_args), resolved = parse_recipe(make_parser(), argv)
    return script_args, training_args, model_args, resolved


def parse_recipe(parser, argv: list[str]) -> tuple[list, dict[str, Any]]:
    """``--config`` recipe (its ``env`` exported) + command line -> the parser's dataclasses and the resolved recipe
    (every setting that differs from the defaults); ``RecipeError`` names a bad key or value."""
    recipe_path, argv = _pop_config_flag(argv)
    baseline = vars(parser.parse_args([]))
    env = {}
    if recipe_path is not None:
        recipe = load_recipe(recipe_path)
        env = {key: str(value) for key, value in recipe.pop("env", {}).items()}
        os.environ.update(env)
        parser.set_defaults_with_config(**check_recipe(parser, recipe, recipe_path))
    namespace = parser.parse_args(argv)  # argparse exits with the offending flag for bad command-line values
    resolved = {k: v for k, v in vars(namespace).items() if v != baseline[k] and k != "dry_run"}
    if env:
        resolved["env"] = env
    return instantiate(parser, namespace), resolved


def instantiate(parser, namespace) -> list:
    """The parser's dataclasses built from a parsed ``namespace`` (``RecipeError`` names the invalid one); with
    ``--dry-run`` on a machine without a GPU, a bf16/fp16 recipe is checked with ``use_cpu=true``."""
    mixed = getattr(namespace, "bf16", False) or getattr(namespace, "fp16", False)
    if namespace.dry_run and mixed and not namespace.use_cpu:
        import torch

        if not torch.cuda.is_available():  # a GPU recipe checked on a machine without one
            print("note: no GPU here, so the recipe is checked with use_cpu=true", file=sys.stderr)
            namespace.use_cpu = True
    outputs = []
    for dtype in parser.dataclass_types:
        inputs = {f.name: getattr(namespace, f.name) for f in dataclasses.fields(dtype) if f.init}
        try:
            outputs.append(dtype(**inputs))
        except (ValueError, TypeError) as e:
            raise RecipeError(f"invalid {dtype.__name__}: {e}") from e
    return outputs


# ---------------------------------------------------------------------------------------------- batch arithmetic
@dataclass(frozen=True)
class BatchPlan:
    """How TRL's batch settings map to verl's units (prompts per rollout step, prompts per optimizer step)."""

    num_processes: int
    num_generations: int
    generation_batch_size: int  # completions per rollout (generation) step
    steps_per_generation: int  # micro-steps (per process) fed by one generation batch
    completions_per_optimizer_step: int
    optimizer_steps_per_generation: Fraction  # counts num_iterations (each generation batch reused mu times)

    @property
    def prompts_per_rollout_step(self) -> int:
        return self.generation_batch_size // self.num_generations

    @property
    def prompts_per_optimizer_step(self) -> Fraction:
        return Fraction(self.completions_per_optimizer_step, self.num_generations)


def batch_plan(
    *,
    per_device_train_batch_size: int,
    gradient_accumulation_steps: int,
    num_generations: int,
    num_processes: int,
    generation_batch_size: int | None = None,
    steps_per_generation: int | None = None,
    num_iterations: int = 1,
) -> BatchPlan:
    """TRL's derivation (GRPOConfig.__post_init__) of the generation batch, evaluated for `num_processes`."""
    micro_batch = per_device_train_batch_size * num_processes  # completions per micro-step, all processes
    if generation_batch_size is not None and steps_per_generation is not None:
        raise RecipeError("set generation_batch_size or steps_per_generation, not both")
    if generation_batch_size is None:
        steps_per_generation = steps_per_generation or gradient_accumulation_steps
        generation_batch_size = micro_batch * steps_per_generation
    elif generation_batch_size % micro_batch:
        raise RecipeError(
            f"generation_batch_size={generation_batch_size} must be divisible by per_device_train_batch_size "
            f"x num_processes = {per_device_train_batch_size} x {num_processes}"
        )
    else:
        steps_per_generation = generation_batch_size // micro_batch
    if generation_batch_size % num_generations:
        raise RecipeError(
            f"generation_batch_size={generation_batch_size} must be divisible by num_generations={num_generations}"
        )
    return BatchPlan(
        num_processes=num_processes,
        num_generations=num_generations,
        generation_batch_size=generation_batch_size,
        steps_per_generation=steps_per_generation,
        completions_per_optimizer_step=micro_batch * gradient_accumulation_steps,
        optimizer_steps_per_generation=Fraction(steps_per_generation * num_iterations, gradient_accumulation_steps),
    )


def plan_for(training_args: AsymGRPOConfig, resolved: dict[str, Any], num_processes: int) -> BatchPlan:
    """The batch plan of a parsed run for `num_processes` (from the recipe's inputs, not TRL's derived values)."""
    return batch_plan(
        per_device_train_batch_size=training_args.per_device_train_batch_size,
        gradient_accumulation_steps=training_args.gradient_accumulation_steps,
        num_generations=training_args.num_generations,
        num_processes=num_processes,
        generation_batch_size=resolved.get("generation_batch_size"),
        steps_per_generation=resolved.get("steps_per_generation"),
        num_iterations=training_args.num_iterations,
    )


def describe_plan(plan: BatchPlan, training_args: AsymGRPOConfig) -> str:
    ta = training_args
    steps = plan.optimizer_steps_per_generation
    mu = f" x num_iterations {ta.num_iterations}" if ta.num_iterations != 1 else ""
    lines = [
        f"batch arithmetic for {plan.num_processes} training process(es):",
        f"  prompts per rollout step:       {plan.prompts_per_rollout_step} "
        f"(generation_batch_size {plan.generation_batch_size} completions / num_generations {plan.num_generations})",
        f"  completions per optimizer step: {plan.completions_per_optimizer_step} "
        f"(per_device_train_batch_size {ta.per_device_train_batch_size} x gradient_accumulation_steps "
        f"{ta.gradient_accumulation_steps} x {plan.num_processes} processes = {plan.prompts_per_optimizer_step} "
        f"prompts' worth)",
        f"  optimizer steps per generation: {steps} "
        f"(steps_per_generation {plan.steps_per_generation}{mu} / gradient_accumulation_steps "
        f"{ta.gradient_accumulation_steps})",
    ]
    if steps.denominator != 1:
        lines.append("  warning: a generation batch does not split into whole optimizer steps")
    return "\n".join(lines)
