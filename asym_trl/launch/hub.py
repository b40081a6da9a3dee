"""Model card and Hugging Face Hub push for a finished run directory.

    asym-trl push runs/qwen3-4b-math-asym --hub_model_id me/qwen3-4b-asymgrpo --eval_results results.json

A run directory is what `asym_trl.train` writes to `output_dir`: the final model, `best/` (the best model by
greedy validation, with `best.json`), `validation.jsonl`, `recipe.yaml` (the resolved recipe) and, once evaluated,
`eval_results.json` (or pass `asym-trl eval`'s `results.json`).  The card names the advantage estimator and the
parameters it reads (betas, scales, ...), the recipe (embedded) and the evaluation table.  A push uploads the best
model when there is one (the paper reports the checkpoint best on MATH-500), else the final one, with the card and the
run's records, never the `checkpoint-*` folders; when it cannot happen (offline, not logged in, no access) it raises
`HubPushError` with the reason and leaves the local run untouched, so it can be retried with `asym-trl push`.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

from ..errors import OneLineParser, UsageError, one_line_errors
from ..method.estimators import get_estimator
from .recipes import RESOLVED_RECIPE_FILE, load_recipe, parse_args

CARD_FILE = "README.md"
EVAL_RESULTS_FILE = "eval_results.json"
BEST_DIR = "best"
RUN_RECORDS = ("README.md", "recipe.yaml", "validation.jsonl", EVAL_RESULTS_FILE)  # pushed beside the model
_NOT_MODEL = ("checkpoint-", "runs", "wandb", BEST_DIR, *RUN_RECORDS)
PAPER = "Rethinking Exploration in RLVR: Bidirectional Entropy Modulation (AsymGRPO)"


class HubPushError(RuntimeError):
    """The run could not be pushed; the local run directory is unchanged."""


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


def render_model_card(
    *,
    model_name: str,
    base_model: str | None,
    estimator: str,
    estimator_params: dict[str, Any],
    recipe_text: str,
    recipe_source: str | None = None,
    dataset: str | None = None,
    selection: str | None = None,
    settings: dict[str, Any] | None = None,
    eval_results: dict[str, dict[str, float]] | None = None,
) -> str:
    """The model card (YAML front matter + markdown) of an asym_trl run."""
    from huggingface_hub import ModelCard, ModelCardData

    data = ModelCardData(
        base_model=base_model,
        library_name="transformers",
        tags=["asym_trl", "trl", "grpo", "asymgrpo", "reinforcement-learning"],
        datasets=[dataset] if dataset and "/" in dataset else None,
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
    intro = (
        f"{f'`{base_model}`' if base_model else 'A model'} fine-tuned with `asym_trl` (AsymGRPO on Hugging Face TRL)"
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

## Evaluation

{evaluation}

## Recipe

The resolved recipe{source} (reload it with `asym-trl train --config recipe.yaml`):

```yaml
{recipe_text.strip()}
```
"""
    return str(ModelCard(content))


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.4g}"


def _card_settings(script_args, training_args) -> dict[str, Any]:
    """The settings a reader of the card needs beside the estimator (the full recipe follows them)."""
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


def write_model_card(output_dir: str | Path, eval_results: str | Path | None = None) -> Path:
    """Write `README.md` of a run directory from its `recipe.yaml` (and evaluation results, if any)."""
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
    selection = None
    if best.is_file():
        record = json.loads(best.read_text())
        selection = (
            f"the best step by greedy validation, step {record['step']} "
            f"({record['select_on']} = {_fmt(record['score'])})"
        )
    hub_id = training_args.hub_model_id
    card = render_model_card(
        model_name=hub_id.split("/")[-1] if hub_id else output_dir.name,
        base_model=model_args.model_name_or_path,
        estimator=training_args.advantage_estimator,
        estimator_params=training_args.estimator_params,
        recipe_text=recipe_text,
        recipe_source=source.group(1) if source else None,
        dataset=script_args.dataset_name,
        selection=selection,
        settings=_card_settings(script_args, training_args),
        eval_results=load_eval_results(eval_results) if eval_results is not None else None,
    )
    path = output_dir / CARD_FILE
    path.write_text(card)
    return path


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def _push_blocker(token: str | None = None) -> str | None:
    """Why a push cannot even be attempted (no network call), or None."""
    from huggingface_hub import get_token

    if _offline():
        return "HF_HUB_OFFLINE is set, so the Hub cannot be reached"
    if token is None and get_token() is None:
        return "not logged in to the Hugging Face Hub (run `hf auth login` or set HF_TOKEN)"
    return None


def warn_if_cannot_push(hub_model_id: str | None) -> None:
    """At the start of a run with push_to_hub: say now if the final push is bound to fail."""
    reason = _push_blocker()
    if reason:
        print(
            f"warning: push_to_hub is set but {reason}; the run will be saved locally and can be pushed later "
            f"with `asym-trl push OUTPUT_DIR --hub_model_id {hub_model_id}`",
            file=sys.stderr,
        )


def push_run(
    output_dir: str | Path, hub_model_id: str, *, private: bool | None = None, token: str | None = None
) -> str:
    """Upload a run directory (model, tokenizer, card, recipe; no checkpoints) to `hub_model_id`; return its URL."""
    output_dir = Path(output_dir)
    retry = f"the local run {output_dir} is unchanged; retry with `asym-trl push {output_dir}`"
    if not hub_model_id:
        raise HubPushError(f"hub_model_id is not set (want 'user/name'); {retry}")
    reason = _push_blocker(token)
    if reason:
        raise HubPushError(f"cannot push to {hub_model_id}: {reason}; {retry}")

    import httpx
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalTokenNotFoundError, OfflineModeIsEnabled

    api = HfApi(token=token)
    operations = [
        CommitOperationAdd(path_in_repo=k, path_or_fileobj=str(v)) for k, v in files_to_push(output_dir).items()
    ]
    try:
        repo = api.create_repo(hub_model_id, private=private, exist_ok=True, repo_type="model")
        api.create_commit(hub_model_id, operations=operations, commit_message="Upload asym_trl run")
    except (
        HfHubHTTPError,
        HFValidationError,
        LocalTokenNotFoundError,
        OfflineModeIsEnabled,
        httpx.HTTPError,
        OSError,
    ) as e:
        raise HubPushError(f"cannot push to {hub_model_id}: {type(e).__name__}: {e}; {retry}") from e
    return str(repo)


def files_to_push(output_dir: str | Path) -> dict[str, Path]:
    """Repository path -> local file: the best model (`best/`) if there is one, else the final model, plus the card
    and the run's records; no `checkpoint-*`."""
    output_dir = Path(output_dir)
    model_dir = output_dir / BEST_DIR if (output_dir / BEST_DIR).is_dir() else output_dir
    files = {}
    for path in sorted(model_dir.rglob("*")):
        relative = path.relative_to(model_dir)
        if path.is_file() and not (model_dir == output_dir and relative.parts[0].startswith(_NOT_MODEL)):
            files[relative.as_posix()] = path
    for name in RUN_RECORDS:
        if (output_dir / name).is_file():
            files[name] = output_dir / name
    return files


@one_line_errors("push")
def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="asym-trl push", description="Write the model card of a run and push it.")
    parser.add_argument("output_dir", help="run directory written by `asym-trl train`")
    parser.add_argument("--hub_model_id", "--hub-model-id", help="user/name (default: the recipe's hub_model_id)")
    parser.add_argument("--eval_results", "--eval-results", help="JSON {benchmark: score or {metric: score}}")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--card_only", "--card-only", action="store_true", help="write README.md, do not push")
    opts = parser.parse_args(argv)
    try:
        card = write_model_card(opts.output_dir, opts.eval_results)
        print(f"model card written to {card}")
        if opts.card_only:
            return 0
        hub_model_id = opts.hub_model_id or load_recipe(Path(opts.output_dir) / RESOLVED_RECIPE_FILE).get(
            "hub_model_id"
        )
        print(f"pushed to {push_run(opts.output_dir, hub_model_id, private=opts.private or None)}")
    except HubPushError as e:  # the Hub refused or cannot be reached: exit 1, the run is unchanged
        print(f"asym-trl push: error: {e}", file=sys.stderr)
        return 1
    except (FileNotFoundError, ValueError) as e:  # not a run directory, a bad results file
        raise UsageError(str(e)) from e
    return 0


if __name__ == "__main__":
    sys.exit(main())
