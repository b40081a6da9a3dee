"""The model card (``README.md``) of a finished run directory, as ``asym-trl train`` and ``asym-trl push`` write it.

It reads the run's records: ``recipe.yaml`` (the resolved recipe: the estimator, its parameters, the settings, embedded
whole), ``trainer_state.json`` (the last logged training metrics: reward, entropy, the all- and none-solved shares,
...; else the newest checkpoint's), ``validation.jsonl`` and ``best/best.json`` (the validation table, the step whose
weights these are) and ``eval_results.json`` (or ``asym-trl eval``'s ``results.json``: the evaluation table).

The card's ``base_model`` is a Hub id, never a local path: a recipe's Hub id as it is; for a local model, the Hub id
it was saved from (its config's ``_name_or_path``, a PEFT adapter's ``base_model_name_or_path``, or the
``models--org--name`` folder of a Hub cache snapshot) when that is one, else no ``base_model`` and the text names the
local model.  Nothing here touches the network; the heavy imports (TRL, huggingface_hub) happen when a card is
written, so ``asym-trl push --help`` answers at once.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

__all__ = [
    "final_training_metrics",
    "load_eval_results",
    "render_model_card",
    "resolve_base_model",
    "validation_records",
    "write_model_card",
]

CARD_FILE = "README.md"
EVAL_RESULTS_FILE = "eval_results.json"
BEST_DIR = "best"
STATE_FILE = "trainer_state.json"
VALIDATION_FILE = "validation.jsonl"
PAPER = "Rethinking Exploration in RLVR: Bidirectional Entropy Modulation (AsymGRPO)"
MAX_VALIDATION_ROWS = 20  # a longer validation history is shown evenly thinned (first, best, last kept)
# The training metrics of the card, in this order, when the log has them (TRL's names, then the diagnostics').
TRAINING_METRICS = {
    "reward": "mean reward",
    "reward_std": "reward std",
    "groups/all_solved": "all-solved groups (share)",
    "groups/none_solved": "none-solved groups (share)",
    "frac_reward_zero_std": "groups with zero reward std (share)",
    "entropy": "token entropy",
    "entropy/correct": "token entropy, correct rollouts",
    "entropy/incorrect": "token entropy, incorrect rollouts",
    "completions/mean_length": "mean completion length (tokens)",
    "kl": "KL to the reference model",
}


def load_eval_results(path: str | Path) -> dict[str, dict[str, float]]:
    """Read `{benchmark: score}`, `{benchmark: {metric: score}}` or `asym-trl eval`'s `results.json` into
    `{benchmark: {metric: score}}`."""
    with open(path) as f:
        raw = json.load(f)
    if isinstance(raw, dict) and isinstance(raw.get("benchmarks"), dict):  # `asym-trl eval`'s results.json
        raw = {name: {f"avg@{r['k']}": r["avg_at_k"]} for name, r in raw["benchmarks"].items()}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: evaluation results must be a JSON object of benchmark -> score(s)")
    results = {}
    for bench, scores in raw.items():
        scores = scores if isinstance(scores, dict) else {"score": scores}
        for metric, value in scores.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{path}: score of {bench}/{metric} must be a number, got {value!r}")
        results[bench] = {metric: float(value) for metric, value in scores.items()}
    return results


# ------------------------------------------------------------------------------------------- the run's records
def final_training_metrics(output_dir: str | Path) -> dict[str, Any] | None:
    """The last logged training entry of a run (``trainer_state.json`` of ``output_dir``, else of its newest
    checkpoint) as ``{"step", "max_steps", "rollout_step", "epoch", "runtime", "metrics": {name: value}}``; None
    without a log."""
    output_dir = Path(output_dir)
    candidates = [output_dir / STATE_FILE]
    checkpoints = [p for p in output_dir.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
    candidates += [p / STATE_FILE for p in sorted(checkpoints, key=lambda p: -int(p.name.split("-")[-1]))]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        return None
    state = json.loads(path.read_text())
    history = state.get("log_history") or []
    entries = [e for e in history if "reward" in e or "loss" in e]
    if not entries:
        return None
    last = entries[-1]
    names = list(TRAINING_METRICS) + sorted(k for k in last if k.startswith("rewards/") and k.endswith("/mean"))
    values = {name: last[name] for name in names if isinstance(last.get(name), (int, float))}
    runtime = next((e["train_runtime"] for e in reversed(history) if "train_runtime" in e), None)
    return {
        "step": last.get("step"),
        "max_steps": state.get("max_steps"),
        "rollout_step": last.get("rollout_step"),
        "epoch": last.get("epoch"),
        "runtime": runtime,
        "source": path.relative_to(output_dir).as_posix(),
        "metrics": values,
    }


def validation_records(output_dir: str | Path) -> list[dict[str, Any]]:
    """Every greedy validation of the run (``validation.jsonl``: ``{"step", "val/<benchmark>", "val/avg"}``)."""
    path = Path(output_dir) / VALIDATION_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def resolve_base_model(name: str | None) -> tuple[str | None, str | None]:
    """``(Hub id for base_model or None, the local model's name or None)`` for a recipe's ``model_name_or_path``."""
    if not name:
        return None, None
    from .preflight import looks_local

    if not (looks_local(name) or Path(name).expanduser().is_dir()):
        return name, None  # a Hub id (preflight checked it before the run)
    return _hub_id_of_local(Path(name).expanduser()), name


def _hub_id_of_local(path: Path, depth: int = 0) -> str | None:
    """The Hub id a local model came from, when it says so (see the module doc)."""
    from .preflight import looks_local

    cache = re.search(r"(?:^|/)models--([^/]+)/snapshots/", path.absolute().as_posix())
    if cache:  # huggingface_hub's cache folder of "org/name" (or "name")
        return cache.group(1).replace("--", "/", 1)
    origin = None
    for file, key in (("adapter_config.json", "base_model_name_or_path"), ("config.json", "_name_or_path")):
        try:
            origin = json.loads((path / file).read_text()).get(key)
        except (OSError, ValueError, AttributeError):
            continue
        break
    if not isinstance(origin, str) or not origin:
        return None
    if looks_local(origin) or Path(origin).expanduser().is_dir():
        return _hub_id_of_local(Path(origin).expanduser(), depth + 1) if depth < 3 else None
    return origin if _is_hub_id(origin) else None


def _is_hub_id(name: str) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _hub_dataset(name: str | None) -> str | None:
    """The Hub id of the training set, for the card's ``datasets``: never a local file or a factory."""
    if not name:
        return None
    from ..task.data import TRAIN_DATASETS

    if name in TRAIN_DATASETS:
        return TRAIN_DATASETS[name].hub_id
    if ":" in name or Path(name).exists() or Path(name).suffix or name.count("/") != 1:
        return None
    return name if _is_hub_id(name) else None


# ------------------------------------------------------------------------------------------------- rendering
def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.4g}"


def _duration(seconds: float) -> str:
    for unit, size in (("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.3g} {unit}"
    return f"{seconds:.3g} s"


def _label(name: str) -> str:
    if name.startswith("rewards/") and name.endswith("/mean"):
        return f"mean reward of {name.removeprefix('rewards/').removesuffix('/mean')}"
    return TRAINING_METRICS.get(name, name)


def _training_section(training: dict[str, Any] | None) -> str:
    if not training:
        return "No training log in the run directory (`trainer_state.json`)."
    where = [f"step {training['step']}" + (f" of {training['max_steps']}" if training.get("max_steps") else "")]
    if training.get("rollout_step") is not None:
        where.append(f"rollout step {_fmt(training['rollout_step'])}")
    if training.get("epoch") is not None:
        where.append(f"epoch {_fmt(training['epoch'])}")
    runtime = f"; {_duration(training['runtime'])} of training" if training.get("runtime") else ""
    rows = "\n".join(f"| {_label(name)} | `{name}` | {_fmt(value)} |" for name, value in training["metrics"].items())
    return (
        f"The last logged training step ({', '.join(where)}{runtime}), averaged over its logging interval; the whole "
        f"log is `{training['source']}` (`asym-trl plot` draws it).\n\n"
        f"| metric | name | value |\n|---|---|---|\n{rows}"
    )


def _validation_section(records: list[dict[str, Any]], best_step: int | None, select_on: str | None) -> str:
    if not records:
        return ""
    shown = records
    if len(records) > MAX_VALIDATION_ROWS:
        n = MAX_VALIDATION_ROWS
        keep = {round(i * (len(records) - 1) / (n - 1)) for i in range(n)}  # first and last included
        keep |= {i for i, r in enumerate(records) if r.get("step") == best_step}
        shown = [records[i] for i in sorted(keep)]
    columns = [key for key in records[-1] if key.startswith("val/")]
    header = "| step | " + " | ".join(c.removeprefix("val/") for c in columns) + " |\n|---|" + "---|" * len(columns)
    body = "\n".join(
        f"| {r.get('step')}{' (best)' if r.get('step') == best_step else ''} | "
        + " | ".join(_fmt(r.get(c)) for c in columns)
        + " |"
        for r in shown
    )
    thinned = (
        f" ({len(shown)} of {len(records)} shown; `validation.jsonl` has every one)" if shown is not records else ""
    )
    best = f"; the row marked (best) is the step selected on `{select_on}`" if best_step is not None else ""
    return f"\n\n## Validation\n\nGreedy accuracy (%) during training{thinned}{best}.\n\n{header}\n{body}"


def render_model_card(
    *,
    model_name: str,
    base_model: str | None,
    estimator: str,
    estimator_params: dict[str, Any],
    recipe_text: str,
    recipe_source: str | None = None,
    dataset: str | None = None,
    hub_dataset: str | None = None,
    local_model: str | None = None,
    selection: str | None = None,
    settings: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
    validation: list[dict[str, Any]] | None = None,
    best_step: int | None = None,
    select_on: str | None = None,
    eval_results: dict[str, dict[str, float]] | None = None,
) -> str:
    """The model card (YAML front matter + markdown) of an asym_trl run. ``base_model`` must be a Hub id (or None);
    ``local_model`` names a local model the run started from."""
    from huggingface_hub import ModelCard, ModelCardData

    data = ModelCardData(
        base_model=base_model,
        library_name="transformers",
        tags=["asym_trl", "trl", "grpo", "asymgrpo", "reinforcement-learning"],
        datasets=[hub_dataset] if hub_dataset else None,
    )
    # the parameters the registry says this estimator reads (betas, per-sign scales, K, threshold, ...)
    params = ", ".join(f"{name} = {value}" for name, value in estimator_params.items())
    rows = "\n".join(f"| `{key}` | `{value}` |" for key, value in (settings or {}).items())
    if eval_results:
        metrics = sorted({m for scores in eval_results.values() for m in scores})
        header = "| benchmark | " + " | ".join(metrics) + " |\n|---|" + "---|" * len(metrics)
        body = "\n".join(
            f"| {bench} | " + " | ".join(_fmt(scores.get(m)) for m in metrics) + " |"
            for bench, scores in eval_results.items()
        )
        evaluation = f"{header}\n{body}"
    else:
        evaluation = "No evaluation results yet: evaluate the model, then `asym-trl push RUN --eval_results FILE`."
    source = f" from `{recipe_source}`" if recipe_source else ""
    if local_model:
        start = f"The local model `{local_model}`" + (f" (from `{base_model}`)" if base_model else "")
    else:
        start = f"`{base_model}`" if base_model else "A model"
    intro = (
        f"{start} fine-tuned with `asym_trl` (AsymGRPO on Hugging Face TRL)"
        f"{f' on `{dataset}`' if dataset else ''}: reinforcement learning with verifiable rewards.\n"
        f"Paper: *{PAPER}*."
    )
    content = f"""---
{data.to_yaml()}
---

# {model_name}

{intro}

## Method

- advantage estimator: `{estimator}`
- estimator parameters: {params or "none"}
- weights: {selection or "the final step of training"}

| setting | value |
|---|---|
{rows}

## Training

{_training_section(training)}{_validation_section(validation or [], best_step, select_on)}

## Evaluation

{evaluation}

## Recipe

The resolved recipe{source} (reload it with `asym-trl train --config recipe.yaml`):

```yaml
{recipe_text.strip()}
```
"""
    return str(ModelCard(content))


def _card_settings(script_args, training_args) -> dict[str, Any]:
    """The settings a reader of the card needs beside the estimator (the full recipe follows them)."""
    from ..method.estimators import get_estimator

    ta = training_args
    keys = ["learning_rate", "num_generations", "max_completion_length", "loss_type", "epsilon", "epsilon_high"]
    if ta.entropy_coef:
        keys += ["entropy_coef", "entropy_scope"]
    if ta.entropy_adv_alpha:
        keys += ["entropy_adv_alpha", "entropy_adv_kappa"]
    if "pass_at_k" in get_estimator(ta.advantage_estimator).params:
        keys.append("pass_at_k")
    settings = {key: getattr(ta, key) for key in keys}
    if settings["epsilon_high"] is None:
        settings["epsilon_high"] = ta.epsilon  # TRL's default: symmetric clipping
    settings["reward_funcs"] = script_args.reward_funcs
    return settings


def write_model_card(
    output_dir: str | Path, eval_results: str | Path | None = None, hub_model_id: str | None = None
) -> Path:
    """Write `README.md` of a run directory from its records (see the module doc); ``hub_model_id`` overrides the
    recipe's for the card's title."""
    from .recipes import RESOLVED_RECIPE_FILE, parse_args

    output_dir = Path(output_dir)
    recipe_path = output_dir / RESOLVED_RECIPE_FILE
    if not recipe_path.is_file():
        raise FileNotFoundError(f"{output_dir} is not an asym_trl run: {RESOLVED_RECIPE_FILE} is missing")
    recipe_text = recipe_path.read_text()
    script_args, training_args, model_args, _ = parse_args(["--config", str(recipe_path)])
    if eval_results is None and (output_dir / EVAL_RESULTS_FILE).is_file():
        eval_results = output_dir / EVAL_RESULTS_FILE
    source = re.search(r"^# source: (\S+)", recipe_text, re.MULTILINE)
    best = output_dir / BEST_DIR / "best.json"
    selection = best_step = select_on = None
    if best.is_file():
        record = json.loads(best.read_text())
        best_step, select_on = record["step"], record["select_on"]
        selection = f"the best step by greedy validation, step {best_step} ({select_on} = {_fmt(record['score'])})"
    hub_id = hub_model_id or training_args.hub_model_id
    base_model, local_model = resolve_base_model(model_args.model_name_or_path)
    card = render_model_card(
        model_name=hub_id.split("/")[-1] if hub_id else output_dir.name,
        base_model=base_model,
        local_model=local_model,
        estimator=training_args.advantage_estimator,
        estimator_params=training_args.estimator_params,
        recipe_text=recipe_text,
        recipe_source=source.group(1) if source else None,
        dataset=script_args.dataset_name,
        hub_dataset=_hub_dataset(script_args.dataset_name),
        selection=selection,
        settings=_card_settings(script_args, training_args),
        training=final_training_metrics(output_dir),
        validation=validation_records(output_dir),
        best_step=best_step,
        select_on=select_on,
        eval_results=load_eval_results(eval_results) if eval_results is not None else None,
    )
    path = output_dir / CARD_FILE
    path.write_text(card)
    return path
