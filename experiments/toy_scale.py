"""Toy-scale check of the paper's §3.1 entropy orderings on the quickstart task.

Five members of the beta family (REINFORCE, Pos-only, Neg-only, GRPO, AsymGRPO 0.9/0.4) each train the
*same* cached SFT warm start of the quickstart (tiny Qwen3, worked last-digit task, noisy teacher) for a
short RL budget, with several RL seeds (sampling and data order).  After training, each policy is
evaluated on the 500 held-out problems with 8 samples per problem at temperature 1: token entropy
(overall, on correct and on incorrect rollouts), shares of all-solved / none-solved prompts, sampled and
greedy accuracy.  The training-time entropy (TRL's ``entropy``, averaged over the last logged steps) is
reported too.  Results go to ``--output-dir`` (one JSON per run, resumable) and a markdown table with
mean +- std over seeds is printed (and written to ``table.md``).

    PYTHONPATH=. python experiments/toy_scale.py --output-dir runs/toy_scale    # ~15 min on 1 CPU core

Paper claims under test (§3.1, Fig. 2a,e): Pos-only keeps entropy above REINFORCE; Neg-only below.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from asym_trl.apps.quickstart import QuickstartSettings, default_cache_dir, evaluate_heldout, train_rl, warm_start
from asym_trl.apps.tiny import last_digit_splits
from asym_trl.generation.backends import TransformersGenerator

METHODS = {  # name -> (advantage_estimator, beta_pos, beta_neg)
    "REINFORCE (0,0)": ("reinforce", None, None),
    "Pos-only (0.5,0)": ("pos_only", None, None),
    "Neg-only (0,0.5)": ("neg_only", None, None),
    "GRPO (0.5,0.5)": ("grpo", None, None),
    "AsymGRPO (0.9,0.4)": ("asym", 0.9, 0.4),
}
TRAIN_COLUMNS = [  # (key in a run's result, header): the trainer's diagnostics during RL
    ("train/entropy", "entropy"),
    ("train/entropy_correct", "entropy, correct"),
    ("train/entropy_incorrect", "entropy, incorrect"),
    ("train/all_solved", "all-solved"),
    ("train/none_solved", "none-solved"),
    ("train/reward", "reward"),
]
HELDOUT_COLUMNS = [  # the final policy on the held-out problems
    ("entropy", "entropy"),
    ("entropy_correct", "entropy, correct"),
    ("entropy_incorrect", "entropy, incorrect"),
    ("all_solved", "all-solved"),
    ("none_solved", "none-solved"),
    ("sampled_accuracy", "sampled acc (T=1)"),
    ("greedy_accuracy", "greedy acc"),
]


def run_one(base: QuickstartSettings, method: str, seed: int, out_dir: Path, cache_dir: Path, train, test) -> dict:
    estimator, beta_pos, beta_neg = METHODS[method]
    # train/entropy below is over every rollout of the last 10 steps: no zero-signal skip (it would rename it on
    # steps it skips rows, leaving the full steps only)
    overrides = {"skip_zero_signal": False}
    settings = replace(
        base,
        advantage_estimator=estimator,
        beta_pos=beta_pos,
        beta_neg=beta_neg,
        seed=seed,
        trainer_overrides=overrides,
    )
    # The warm start is shared: its cache key uses the SFT seed (base.seed), not the RL seed.
    sft_dir = warm_start(base, cache_dir, train)
    start = time.time()
    trainer = train_rl(settings, sft_dir, train, out_dir / "trainer")
    history = trainer.state.log_history
    train_logs = [h for h in history if "entropy" in h and "reward" in h]
    generate = TransformersGenerator(trainer.model, trainer.processing_class, batch_size=len(test), token_entropy=True)
    final = evaluate_heldout(generate, test, settings, num_samples=settings.eval_samples, seed=seed)
    last = train_logs[-2:]  # logged every 5 steps: the last 10 steps
    whole_run = next(h for h in reversed(history) if "groups/epoch_all_solved" in h)  # one (partial) epoch
    return {
        "method": method,
        "seed": seed,
        "seconds": round(time.time() - start, 1),
        "train/entropy": statistics.fmean(h["entropy"] for h in last),
        "train/entropy_correct": statistics.fmean(h["entropy/correct"] for h in last),
        "train/entropy_incorrect": statistics.fmean(h["entropy/incorrect"] for h in last),
        "train/reward": statistics.fmean(h["reward"] for h in last),
        "train/all_solved": whole_run["groups/epoch_all_solved"],
        "train/none_solved": whole_run["groups/epoch_none_solved"],
        **final,
        "log_history": history,
    }


def table(results: list[dict], columns: list[tuple[str, str]], sft_metrics: dict | None = None) -> str:
    """Markdown table, one row per method: mean ± sample std over seeds."""
    lines = ["| method | " + " | ".join(h for _, h in columns) + " |", "|" + "---|" * (len(columns) + 1)]
    if sft_metrics is not None:
        cells = [f"{sft_metrics[k]:.3f}" for k, _ in columns]
        lines.append("| SFT warm start (before RL) | " + " | ".join(cells) + " |")
    for method in METHODS:
        runs = [r for r in results if r["method"] == method]
        if not runs:
            continue
        cells = []
        for key, _ in columns:
            values = [r[key] for r in runs]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.fmean(values):.3f} ± {spread:.3f}")
        lines.append(f"| {method} (n={len(runs)}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="runs/toy_scale")
    parser.add_argument("--cache-dir", default=str(default_cache_dir()))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--rl-steps", type=int, default=50)
    parser.add_argument("--prompts-per-step", type=int, default=16)
    parser.add_argument("--num-threads", type=int, default=1)
    opts = parser.parse_args(argv)
    torch.set_num_threads(opts.num_threads)

    base = QuickstartSettings(rl_steps=opts.rl_steps, prompts_per_step=opts.prompts_per_step, curve_every=0)
    out = Path(opts.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    cache_dir = Path(opts.cache_dir)
    train, test = last_digit_splits(num_test=base.num_test, seed=base.seed, noise=base.sft_noise)

    sft_file = out / "sft_metrics.json"
    if not sft_file.exists():
        from transformers import AutoModelForCausalLM, AutoTokenizer

        sft_dir = warm_start(base, cache_dir, train)
        model, tokenizer = AutoModelForCausalLM.from_pretrained(sft_dir), AutoTokenizer.from_pretrained(sft_dir)
        generate = TransformersGenerator(model, tokenizer, batch_size=len(test), token_entropy=True)
        metrics = evaluate_heldout(generate, test, base, num_samples=base.eval_samples, seed=0)
        sft_file.write_text(json.dumps(metrics, indent=2))
    sft_metrics = json.loads(sft_file.read_text())

    results = []
    for seed in opts.seeds:
        for method in opts.methods:
            name = f"{METHODS[method][0]}-seed{seed}"
            result_file = out / f"{name}.json"
            if not result_file.exists():
                result = run_one(base, method, seed, out / name, cache_dir, train, test)
                result_file.write_text(json.dumps(result, indent=2))
                summary = f"entropy {result['entropy']:.3f}, accuracy {result['sampled_accuracy']:.3f}"
                print(f"{name}: {result['seconds']} s, {summary}", flush=True)
            results.append(json.loads(result_file.read_text()))
    text = (
        f"During RL ({opts.rl_steps} steps; entropies and reward: mean of the last 10 steps; all-/none-solved: "
        "share of the run's groups)\n\n" + table(results, TRAIN_COLUMNS) + "\n\n"
        f"Final policy on the {base.num_test} held-out problems ({base.eval_samples} samples each, T=1)\n\n"
        + table(results, HELDOUT_COLUMNS, sft_metrics)
    )
    (out / "table.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
