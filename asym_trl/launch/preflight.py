"""What `asym-trl train` checks before it loads anything heavy (and what `--dry-run` resolves), offline.

Each check raises `RecipeError` (one line, exit 2) naming the key:

- `check_model`: a `model_name_or_path` that looks local (starts with `/`, `./`, `../`, `~`, has more than one `/`,
  or its first component is a directory here) must be a saved model directory -- checked before any Hub call, which
  would otherwise retry for half a minute; anything else must be a valid Hub id.  Returns a one-line description
  (the local config's model type and size, or the Hub id and whether its config is in the local cache).
- `check_output_dir`: `output_dir` must be creatable and writable, without creating it.
- `locate_datasets`: the training set and validation benchmarks must be found (a registered name, a local file that
  exists, an importable `module:function`); nothing is loaded or downloaded.
"""

from __future__ import annotations

import os
from pathlib import Path

from .recipes import RecipeError, import_object

__all__ = ["check_model", "check_output_dir", "locate_datasets", "looks_local"]


def looks_local(name: str) -> bool:
    """Whether a model name is meant as a local path rather than a Hub id (`org/name`)."""
    head = name.split("/")[0]
    return name.startswith(("/", "./", "../", "~")) or name.count("/") > 1 or (head != name and Path(head).is_dir())


def check_model(name: str) -> str:
    """A description of the model `name` resolves to; `RecipeError` when it cannot be found (see module doc)."""
    if looks_local(name) or Path(name).expanduser().is_dir():
        path = Path(name).expanduser()
        if not path.is_dir():
            raise RecipeError(
                f"model_name_or_path={name!r} is a local path and {path.absolute()} does not exist (a Hub id is "
                "'org/name'; for the CPU recipes build the tiny model first: see recipes/cpu/quickstart.yaml)"
            )
        if (path / "adapter_config.json").is_file() and not (path / "config.json").is_file():
            return f"local PEFT adapter {path}"
        from transformers import AutoConfig

        try:
            config = AutoConfig.from_pretrained(path)
        except (OSError, ValueError) as e:
            raise RecipeError(f"model_name_or_path={name!r}: {path} is not a saved model ({e})") from e
        return f"local {config.model_type} ({getattr(config, 'num_hidden_layers', '?')} layers) from {path}"
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError as e:
        raise RecipeError(f"model_name_or_path={name!r} is neither a local directory nor a Hub id ({e})") from e
    cached = try_to_load_from_cache(name, "config.json")
    where = "its config is in the local Hub cache" if isinstance(cached, str) else "not in the local Hub cache"
    return f"Hub model {name} ({where}; --dry-run does not download)"


def check_output_dir(output_dir: str) -> None:
    """`output_dir` can be created (or exists) and is writable; nothing is created."""
    path = Path(output_dir).expanduser().absolute()
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise RecipeError(f"output_dir={output_dir!r} cannot be created: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "is not writable" if existing == path else f"cannot be created: {existing} is not writable"
        raise RecipeError(f"output_dir={output_dir!r} {what}")


def _locate(name: str, kind: str, data_files: str | None = None) -> str:
    """Where a training set (`kind="train"`) or benchmark comes from, without loading it."""
    from ..task.data import _LOCAL_FORMATS, BENCHMARKS, REASONING_GYM_TASKS, TRAIN_DATASETS

    registry = TRAIN_DATASETS if kind == "train" else BENCHMARKS
    key = "dataset_name" if kind == "train" else "validation_benchmarks"
    if name in registry:
        if data_files is not None and not Path(data_files).is_file():
            raise RecipeError(f"dataset_data_files: {data_files} does not exist")
        return f"{name} from {data_files or f'the Hub ({registry[name].hub_id}; not downloaded by --dry-run)'}"
    if name in REASONING_GYM_TASKS or name.startswith("reasoning_gym:"):
        return f"reasoning-gym task {name.removeprefix('reasoning_gym:')} (generated offline)"
    if Path(name).is_file():
        return f"local file {name}"
    if Path(name).suffix.lower() in _LOCAL_FORMATS:
        raise RecipeError(f"{key}: data file {name} does not exist")
    if kind == "train" and ":" in name:
        import_object(name, "dataset factory", key)  # imported, not called
        return f"factory {name} (called at launch)"
    known = ", ".join([*registry, *REASONING_GYM_TASKS])
    raise RecipeError(f"{key}: unknown {kind} dataset {name!r}; expected one of {known}, 'reasoning_gym:<task>', a "
                      f"local data file{' or package.module:function' if kind == 'train' else ''}")  # fmt: skip


def locate_datasets(script_args) -> list[str]:
    """One line per dataset of the run (training set, then validation benchmarks); `RecipeError` if one is missing."""
    if script_args.dataset_name is None:
        raise RecipeError("dataset_name is not set: give a registered name, a local file or module:function")
    lines = [f"training set: {_locate(script_args.dataset_name, 'train', script_args.dataset_data_files)}"]
    lines += [f"validation: {_locate(b, 'benchmark')}" for b in script_args.validation_benchmarks]
    return lines
