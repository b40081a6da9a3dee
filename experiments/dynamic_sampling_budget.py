"""Dynamic sampling (DAPO's filter groups, issue 13) against plain AsymGRPO at an equal *generation* budget.

Every arm starts from the quickstart's cached SFT warm start (tiny Qwen3, last-digit task) and may spend the same
number of generation batches (``--budget``, 16 prompts x 8 rollouts each). Plain AsymGRPO takes one optimizer step per
generation batch; with ``dynamic_sampling=True`` a step replaces its zero-signal groups by informative groups of
new prompts (arm ``dynamic_sampling``, DAPO's way) or of the same prompts (``dynamic_sampling_same``), up to
``dynamic_sampling_max_generations`` generations, and so takes fewer, fuller steps. A callback stops a run once the
generations it used reach the budget. Then each is evaluated on the quickstart's 500 held-out problems (8 samples
at T=1, and greedy). One JSON per (arm, seed) in ``--output-dir`` (resumable), and a table.

    PYTHONPATH=. python experiments/dynamic_sampling_budget.py --output-dir runs/ds_budget --budget 60 --seeds 0 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch
from transformers import TrainerCallback

from asym_trl.apps.quickstart import QuickstartSettings, default_cache_dir, evaluate_heldout, train_rl, warm_start
from asym_trl.apps.tiny import last_digit_splits
from asym_trl.generation.backends import TransformersGenerator

DYNAMIC = {"dynamic_sampling": True, "dynamic_sampling_max_generations": 3}
ARMS = {
    "plain": {},
    "dynamic_sampling": DYNAMIC,  # new prompts, as DAPO
    "dynamic_sampling_same": {**DYNAMIC, "dynamic_sampling_prompts": "same"},
}


class GenerationBudget(TrainerCallback):
    """Stops training once the generation batches used (``dynamic_sampling/generations``, else 1 per step) reach
    ``budget``; needs ``logging_steps=1`` so that every step's count is logged."""

    def __init__(self, budget: int):
        self.budget, self.used = budget, 0

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:  # a training step's entry
            self.used += round(logs.get("dynamic_sampling/generations", 1.0))
            control.should_training_stop = self.used >= self.budget


def run_arm(arm: str, seed: int, budget: int, out_dir: Path) -> dict:
    path = out_dir / f"{arm}-seed{seed}.json"
    if path.exists():
        return json.loads(path.read_text())
    base = QuickstartSettings()
    settings = replace(base, seed=seed, rl_steps=budget, logging_steps=1, trainer_overrides=ARMS[arm])
    torch.manual_seed(seed)
    train, test = last_digit_splits(num_test=base.num_test, seed=base.seed, noise=base.sft_noise)
    sft_dir = warm_start(base, default_cache_dir(), train)  # the README run's warm start, whatever the RL seed
    stop = GenerationBudget(budget)
    start = time.time()
    trainer = train_rl(settings, sft_dir, train, out_dir / f"{arm}-seed{seed}", heldout=None, callbacks=[stop])
    tokenizer = trainer.processing_class
    report = evaluate_heldout(
        TransformersGenerator(trainer.model, tokenizer, batch_size=len(test), token_entropy=True),
        test,
        settings,
        num_samples=base.eval_samples,
        seed=0,
    )
    result = {
        "arm": arm,
        "seed": seed,
        "budget": budget,
        "generations_used": stop.used,
        "optimizer_steps": trainer.state.global_step,
        "seconds": round(time.time() - start, 1),
        **{k: report[k] for k in ("greedy_accuracy", "sampled_accuracy", "none_solved", "all_solved")},
    }
    path.write_text(json.dumps(result, indent=2))
    return result


def table(results: list[dict]) -> str:
    keys = ("optimizer_steps", "generations_used", "greedy_accuracy", "sampled_accuracy", "none_solved")
    lines = ["| arm | seeds | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    for arm in ARMS:
        rows = [r for r in results if r["arm"] == arm]
        if not rows:
            continue
        cells = []
        for key in keys:
            values = [r[key] for r in rows]
            spread = f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else ""
            cells.append(f"{statistics.mean(values):.3f}{spread}")
        lines.append(f"| {arm} | {len(rows)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", type=Path, default=Path("runs/ds_budget"))
    parser.add_argument("--budget", type=int, default=60, help="generation batches per run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args()
    args.output_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    results = [run_arm(arm, seed, args.budget, args.output_dir) for seed in args.seeds for arm in ARMS]
    text = table(results)
    (args.output_dir / "table.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
