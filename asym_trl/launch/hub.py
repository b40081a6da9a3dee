"""Hugging Face Hub push of a finished run directory (`asym-trl push`); its model card is `model_card`'s.

    asym-trl push runs/qwen3-4b-math-asym --hub_model_id me/qwen3-4b-asymgrpo --eval_results results.json

A run directory is what `asym_trl.train` writes to `output_dir`: the final model, `best/` (the best model by
greedy validation, with `best.json`), `validation.jsonl`, `trainer_state.json`, `recipe.yaml` (the resolved recipe)
and, once evaluated, `eval_results.json` (or pass `asym-trl eval`'s `results.json`).  The card
(`asym_trl.launch.model_card`) names the advantage estimator and the parameters it reads (betas, scales, ...), the
last training metrics, the validation and evaluation tables and the recipe (embedded).  A push uploads the best model
when there is one (the paper reports the checkpoint best on MATH-500), else the final one, with the card and the
run's records, never the `checkpoint-*` folders; when it cannot happen (offline, not logged in, no access) it raises
`HubPushError` with the reason and leaves the local run untouched, with the `asym-trl push` command that retries it
(every option given repeated).  Nothing heavy is imported until a card is written: `asym-trl push --help` is instant.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from ..errors import OneLineParser, UsageError, one_line_errors
from .model_card import (  # the card is model_card's; its names stay importable from here
    BEST_DIR,
    CARD_FILE,
    EVAL_RESULTS_FILE,
    PAPER,
    load_eval_results,
    render_model_card,
    write_model_card,
)

__all__ = [
    "CARD_FILE",
    "PAPER",
    "HubPushError",
    "files_to_push",
    "load_eval_results",
    "main",
    "push_command",
    "push_run",
    "render_model_card",
    "write_model_card",
]

# pushed beside the model: the card and the run's records (trainer_state.json: the training log `asym-trl plot` reads)
RUN_RECORDS = ("README.md", "recipe.yaml", "validation.jsonl", EVAL_RESULTS_FILE, "trainer_state.json")
_NOT_MODEL = ("checkpoint-", "runs", "wandb", BEST_DIR, *RUN_RECORDS)


class HubPushError(RuntimeError):
    """The run could not be pushed; the local run directory is unchanged."""


def push_command(
    output_dir: str | Path, hub_model_id: str | None, *, eval_results: str | None = None, private: bool = False
) -> str:
    """The ``asym-trl push`` command line that pushes this run with every option given (the retry hint)."""
    argv = ["asym-trl", "push", str(output_dir), "--hub_model_id", hub_model_id or "user/name"]
    argv += ["--eval_results", str(eval_results)] if eval_results else []
    argv += ["--private"] if private else []
    return shlex.join(argv)


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
    output_dir: str | Path,
    hub_model_id: str | None,
    *,
    private: bool | None = None,
    token: str | None = None,
    retry_command: str | None = None,
) -> str:
    """Upload a run directory (model, tokenizer, card, recipe; no checkpoints) to `hub_model_id`; return its URL.
    A failure says how to retry: ``retry_command``, else ``asym-trl push OUTPUT_DIR --hub_model_id ID [--private]``."""
    output_dir = Path(output_dir)
    retry_command = retry_command or push_command(output_dir, hub_model_id, private=bool(private))
    retry = f"the local run {output_dir} is unchanged; retry with `{retry_command}`"
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
    try:  # the heavy imports (TRL, huggingface_hub) start here: `--help` above answers at once
        from .recipes import RESOLVED_RECIPE_FILE, load_recipe

        card = write_model_card(opts.output_dir, opts.eval_results, opts.hub_model_id)
        print(f"model card written to {card}")
        if opts.card_only:
            return 0
        hub_model_id = opts.hub_model_id or load_recipe(Path(opts.output_dir) / RESOLVED_RECIPE_FILE).get(
            "hub_model_id"
        )
        retry = push_command(opts.output_dir, hub_model_id, eval_results=opts.eval_results, private=opts.private)
        url = push_run(opts.output_dir, hub_model_id, private=opts.private or None, retry_command=retry)
        print(f"pushed to {url}")
    except HubPushError as e:  # the Hub refused or cannot be reached: exit 1, the run is unchanged
        print(f"asym-trl push: error: {e}", file=sys.stderr)
        return 1
    except (FileNotFoundError, ValueError) as e:  # not a run directory, a bad results file
        raise UsageError(str(e)) from e
    return 0


if __name__ == "__main__":
    sys.exit(main())
