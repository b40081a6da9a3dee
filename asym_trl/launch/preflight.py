"""What `asym-trl train` checks before it loads anything heavy (and what `--dry-run` resolves), offline.

Each check raises `RecipeError` (one line, exit 2) naming the key:

- `check_model`: a `model_name_or_path` that looks local (starts with `/`, `./`, `../`, `~`, has more than one `/`,
  or its first component is a directory here) must be a saved model directory (a missing tiny model: the command that
  builds it); anything else must be a valid Hub id.  Returns a one-line description (the local config's model type
  and size, or the Hub id and whether its config is in the local cache).
- `hub_problems`: what the run would fetch from the Hub (model, registered datasets) and cannot, one line each
  (`asym_trl.task.hub_access`: one probe of the Hub, or `HF_HUB_OFFLINE` and the local cache); a launch stops on
  the first, `--dry-run` prints them as notes (a recipe may be checked on one machine and run on another).
- `check_output_dir`: `output_dir` must be creatable and writable; nothing is left behind (a directory is made and
  removed in its nearest existing parent: `os.access` says yes to root even where that fails, e.g. under `/proc`).
- `locate_datasets`: the training set and validation benchmarks must be found (a registered name, a local file that
  exists, an importable `module:function`); nothing is loaded or downloaded.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from ..task.hub_access import hub_problem, looks_local
from .recipes import RecipeError, import_object

__all__ = ["check_model", "check_output_dir", "hub_problems", "locate_datasets", "looks_local"]

TINY_MODEL_COMMAND = "python -c \"from asym_trl.apps.tiny import build_tiny_model; build_tiny_model('{path}')\""
WARM_START_COMMAND = (
    "python -c \"from asym_trl.apps.quickstart import warm_started_model; warm_started_model('{path}')\""
)


def check_model(name: str) -> str:
    """A description of the model `name` resolves to; `RecipeError` when it cannot be found (see module doc)."""
    if looks_local(name) or Path(name).expanduser().is_dir():
        path = Path(name).expanduser()
        if not path.is_dir():
            if "tiny" in path.name:
                fix = f"build the tiny model first: {TINY_MODEL_COMMAND.format(path=name)}"
            elif "warm-start" in path.name:
                fix = f"make the quickstart's warm start first: {WARM_START_COMMAND.format(path=name)}"
            else:
                fix = "a Hub id is 'org/name' (to build the CPU recipes' tiny model: see recipes/cpu/quickstart.yaml)"
            raise RecipeError(
                f"model_name_or_path={name!r} is a local path and {path.absolute()} does not exist: {fix}"
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
    """`output_dir` can be created (or exists) and is writable: a directory is made and removed in its nearest
    existing parent, so nothing is left behind."""
    path = Path(output_dir).expanduser().absolute()
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise RecipeError(f"output_dir={output_dir!r} cannot be created: {existing} is a file, not a directory")
    try:
        tempfile.TemporaryDirectory(prefix=".asym-trl-write-check-", dir=existing).cleanup()
    except OSError as e:
        what = "is not writable" if existing == path else f"cannot be created in {existing}"
        raise RecipeError(f"output_dir={output_dir!r} {what} ({e.strerror}): choose another output_dir") from e


def hub_problems(script_args, model_name: str | None) -> list[str]:
    """What the run would fetch from the Hub and cannot here, one line each (the model, then the registered datasets
    without a local copy); empty when the Hub answers, or `HF_HUB_OFFLINE` is set and the model is in the cache."""
    from ..task.data import BENCHMARKS, TRAIN_DATASETS

    problems = []
    if model_name is not None and not looks_local(model_name) and not Path(model_name).expanduser().is_dir():
        what = f"model_name_or_path={model_name!r} (no such local directory here, so a Hub id)"
        problems.append(hub_problem(what, model_name, alternative="a local model directory"))
    name = script_args.dataset_name
    if name in TRAIN_DATASETS and script_args.dataset_data_files is None:
        what = f"dataset_name={name!r} ({TRAIN_DATASETS[name].hub_id})"
        alternative = "a local copy as dataset_data_files"
        problems.append(hub_problem(what, TRAIN_DATASETS[name].hub_id, repo_type="dataset", alternative=alternative))
    for benchmark in (b for b in getattr(script_args, "validation_benchmarks", ()) if b in BENCHMARKS):
        what = f"validation_benchmarks: {benchmark} ({BENCHMARKS[benchmark].hub_id})"
        alternative = "the path of a local copy instead of its name"
        problems.append(hub_problem(what, BENCHMARKS[benchmark].hub_id, repo_type="dataset", alternative=alternative))
    return [p for p in problems if p is not None]


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
