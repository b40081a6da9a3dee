"""The testbed study in the paper's regime (docs/testbed.md): the claims of §3 and Table 1, decided by statistics
fixed before any comparison.  One command per stage, resumable, one JSON per run:

    PYTHONPATH=. python experiments/testbed.py --out runs/testbed --study tune-entropy-reg   # once, before the study
    PYTHONPATH=. python experiments/testbed.py --out runs/testbed --study primary --workers 2
    PYTHONPATH=. python experiments/testbed.py --out runs/testbed --study secondary --workers 2
    PYTHONPATH=. python experiments/testbed.py --out runs/testbed --analyse-only --results docs/testbed/results.json

1. **Warm start** (cached): TRL's ``SFTTrainer`` on the countdown teacher's demonstrations of the "use 2 of 4"
   problems that have exactly one solution (:mod:`asym_trl.apps.countdown`), so no problem of the study is seen.
2. **Regime** (cached in ``problems.json`` / ``pool.jsonl``): the warm start's success rate on each of the
   problems with >= 2 distinct solutions, from ``--filter-samples`` samples; those in ``--p-range`` (1/8..7/8) are
   shuffled and split into the RL training pool (``--pool-size``), the validation set and the test set.
3. **Warm start on test** (``warm_start.json``): the "before" of every gain.
4. **Runs**: ``python -m asym_trl.train --config recipes/cpu/testbed/<method>.yaml`` per (method, seed), each
   checkpoint on the validation set (the validation curve), the final policy on the test set
   (:func:`asym_trl.diagnostics.exploration.exploration_report`: Avg@n, pass@k, distinct correct solutions, entropy on
   correct / incorrect samples); the training curve and the per-epoch group shares from the trainer's own diagnostics.
5. **Analysis**: per claim, the paired t-test on same-seed differences, Holm's correction across every claim
   (:mod:`asym_trl.diagnostics.seed_stats`), the verdict rule -> ``table.md`` and ``results.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # asym_trl from this checkout, also in spawned workers

from asym_trl.diagnostics.seed_stats import ALPHA, holm, paired_t, student_t_quantile, verdict  # noqa: E402

RECIPES = ROOT / "recipes" / "cpu" / "testbed"
METHODS = {  # recipe -> label, in Table 1's order
    "reinforce": "REINFORCE",
    "reinforce-entropy-reg": "REINFORCE + entropy reg.",
    "grpo": "GRPO",
    "pos-only": "Pos-only",
    "neg-only": "Neg-only",
    "asym": "AsymGRPO",
    "ent-increase": "EntIncrease",
    "ent-decrease": "EntDecrease",
    "dr-grpo": "Dr.GRPO",
    "pass-at-k": "Pass@K",
    "grpo-entropy-adv": "GRPO + entropy advantage",
    "asym-symmetric": "AsymGRPO beta_pos = beta_neg",
    "asym-offpolicy": "AsymGRPO, off-policy arm",
    "asym-clip-higher-offpolicy": "AsymGRPO + clip-higher, off-policy arm",
}
STUDIES = {
    "primary": ["reinforce", "reinforce-entropy-reg", "grpo", "pos-only", "neg-only", "asym"],
    "secondary": [
        "ent-increase", "ent-decrease", "dr-grpo", "pass-at-k", "grpo-entropy-adv", "asym-symmetric",
        "asym-offpolicy", "asym-clip-higher-offpolicy",
    ],
}  # fmt: skip
SEEDS = list(range(16))
ENTROPY_COEFS = [0.001, 0.003, 0.01, 0.03]  # the tuning grid of REINFORCE + entropy reg. (validation split only)
TUNE_SEEDS = [100, 101]
EMA_ALPHA = 0.5  # smoothing of the validation curve (late degradation = best EMA - final EMA)
GATE = {"train_p_mean_warm_start": (0.25, 0.75), "grpo_gain": 0.10}


@dataclass(frozen=True)
class Claim:
    """One claim of the paper: ``a - b`` on ``metric`` has sign ``sign``; ``needs_clip``: the arm's clip must bind."""

    id: str
    text: str
    a: str
    b: str
    metric: str
    sign: int
    needs_clip: bool = False


# Fixed in docs/testbed.md before any comparison. "acc" = held-out test Avg@n at T = 1; "H" = mean policy entropy of
# the training rollouts over the last epoch; "none" = share of none-solved training groups in the last epoch;
# "drop" = late degradation of the validation EMA.
CLAIMS = [
    Claim("P1", "AsymGRPO beats GRPO (primary)", "asym", "grpo", "sampled_accuracy", +1),
    Claim("S1", "Pos-only keeps entropy above REINFORCE (§3.1)", "pos-only", "reinforce", "train_entropy", +1),
    Claim("S2", "Pos-only beats REINFORCE (§3.1)", "pos-only", "reinforce", "sampled_accuracy", +1),
    Claim("S3", "Pos-only lowers none-solved training groups vs REINFORCE (§3.1, Fig. 2 c,g)", "pos-only",
          "reinforce", "none_solved_last_epoch", -1),
    Claim("S4", "Neg-only lowers entropy vs REINFORCE (§3.1)", "neg-only", "reinforce", "train_entropy", -1),
    Claim("S5", "Neg-only beats REINFORCE (§3.1)", "neg-only", "reinforce", "sampled_accuracy", +1),
    Claim("S6", "entropy reg. raises entropy vs REINFORCE (§3.1)", "reinforce-entropy-reg", "reinforce",
          "train_entropy", +1),
    Claim("S7", "Pos-only beats REINFORCE + entropy reg. (§3.1)", "pos-only", "reinforce-entropy-reg",
          "sampled_accuracy", +1),
    Claim("F1", "EntDecrease lowers entropy vs GRPO (§3.2)", "ent-decrease", "grpo", "train_entropy", -1),
    Claim("F2", "EntIncrease raises entropy vs GRPO (§3.2)", "ent-increase", "grpo", "train_entropy", +1),
    Claim("F3", "EntDecrease loses accuracy vs GRPO (§3.2)", "ent-decrease", "grpo", "sampled_accuracy", -1),
    Claim("F4", "EntIncrease loses accuracy vs GRPO (§3.2)", "ent-increase", "grpo", "sampled_accuracy", -1),
    Claim("F5", "EntDecrease degrades late vs GRPO (§3.2)", "ent-decrease", "grpo", "val_ema_drop", +1),
    Claim("F6", "EntIncrease degrades late vs GRPO (§3.2)", "ent-increase", "grpo", "val_ema_drop", +1),
    Claim("C1", "clip-higher adds to AsymGRPO (off-policy arm; Table 1)", "asym-clip-higher-offpolicy",
          "asym-offpolicy", "sampled_accuracy", +1, needs_clip=True),
    Claim("T1", "AsymGRPO beats Dr.GRPO (Table 1)", "asym", "dr-grpo", "sampled_accuracy", +1),
    Claim("T2", "AsymGRPO beats Pass@K training (Table 1)", "asym", "pass-at-k", "sampled_accuracy", +1),
    Claim("T3", "AsymGRPO beats GRPO + entropy advantage (Table 1)", "asym", "grpo-entropy-adv",
          "sampled_accuracy", +1),
    Claim("T4", "AsymGRPO beats its symmetric setting beta_pos = beta_neg = 0.7 (Table 1)", "asym",
          "asym-symmetric", "sampled_accuracy", +1),
]  # fmt: skip
# Exploratory, added after the primary results were seen (docs/testbed.md, change log): the exploration metrics the
# paper's argument is about, for the primary pair. Reported with unadjusted p; never a verdict, not in Holm's family.
EXPLORATORY = [("asym", "grpo", key) for key in ("pass@n", "distinct@n", "greedy_accuracy", "train_entropy")]
# (key, header) of the per-method table
COLUMNS = [
    ("sampled_accuracy", "acc (Avg@n)"),
    ("gain", "gain"),
    ("greedy_accuracy", "greedy"),
    ("pass@n", "pass@n"),
    ("distinct@n", "distinct@n"),
    ("train_entropy", "H train"),
    ("train_entropy_correct", "H correct"),
    ("train_entropy_incorrect", "H incorrect"),
    ("none_solved_last_epoch", "none-solved"),
    ("all_solved_last_epoch", "all-solved"),
    ("val_ema_drop", "late drop"),
    ("clip_high_max", "clip high max"),
]


# ------------------------------------------------------------------------------------------------------ regime
def quiet() -> None:
    """One torch thread; no progress bars or library deprecations on the console (runs log to ``logs/``)."""
    import torch

    from asym_trl.apps.quickstart import quiet_console

    torch.set_num_threads(1)
    quiet_console()


def sft_problems():
    """The warm start's problems: "use 2 of 4" with exactly one solution (disjoint from the study's problems)."""
    from asym_trl.apps.countdown import countdown_problems

    multi = set(countdown_problems(operands=2))
    return [p for p in countdown_problems(min_solutions=1, operands=2) if p not in multi]


def make_warm_start(out: Path, sft_steps: int) -> Path:
    from datasets import Dataset

    from asym_trl.apps.countdown import _row, teacher_dataset
    from asym_trl.apps.quickstart import QuickstartSettings, warm_start

    rng = random.Random(0)
    rows = Dataset.from_list([_row(numbers, target, rng, 2) for numbers, target in sft_problems()])
    start = time.time()
    path = warm_start(QuickstartSettings(sft_steps=sft_steps, sft_noise=0.3), out / "cache", teacher_dataset(rows))
    link = out / "warm-start"
    if not link.exists():
        link.symlink_to(path.resolve())
    print(f"warm start {path} ({time.time() - start:.0f} s)", flush=True)
    return link


def make_regime(out: Path, warm: Path, opts) -> dict:
    """Split the problems with >= 2 distinct solutions by the warm start's success rate (cached in problems.json)."""
    from datasets import Dataset

    from asym_trl.apps.countdown import _row, countdown_problems

    path = out / "problems.json"
    if path.exists():
        regime = json.loads(path.read_text())
    else:
        rng = random.Random(0)
        problems = countdown_problems(operands=2)
        rng.shuffle(problems)
        rows = [_row(numbers, target, rng, 2) for numbers, target in problems]
        report = evaluate(warm, Dataset.from_list(rows), opts.filter_samples, [1], seed=12345, full=False)
        low, high = opts.p_range
        kept = [dict(row, p=p) for row, p in zip(rows, report["per_prompt_accuracy"], strict=True) if low <= p <= high]
        if len(kept) < opts.pool_size + opts.num_validation + 1:
            raise SystemExit(f"only {len(kept)} problems in {opts.p_range}: too few for the pool and held-out sets")
        sizes = {"pool": opts.pool_size, "validation": opts.num_validation}
        regime = {"candidates": len(rows), "p_range": [low, high], "filter_samples": opts.filter_samples}
        regime["pool"], regime["validation"] = kept[: sizes["pool"]], kept[sizes["pool"] : sum(sizes.values())]
        regime["test"] = kept[sum(sizes.values()) :][: opts.max_test]
        path.write_text(json.dumps(regime, indent=1))
    with open(out / "pool.jsonl", "w") as f:
        f.writelines(json.dumps({"prompt": r["prompt"], "solution": r["solution"]}) + "\n" for r in regime["pool"])
    regime["train_p_mean_warm_start"] = sum(r["p"] for r in regime["pool"]) / len(regime["pool"])
    return regime


def split(regime: dict, name: str):
    from datasets import Dataset

    return Dataset.from_list([{"prompt": r["prompt"], "solution": r["solution"]} for r in regime[name]])


# ------------------------------------------------------------------------------------------------------ metrics
def evaluate(model_dir, dataset, n: int, ks: list[int], seed: int, full: bool = True) -> dict:
    """The exploration report of a policy (``n`` samples at T = 1 plus greedy); ``full=False``: only the per-prompt
    accuracies (the regime filter)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from asym_trl.apps.countdown import canonical, countdown_reward
    from asym_trl.diagnostics.exploration import exploration_report
    from asym_trl.generation.backends import EvalSampling, TransformersGenerator
    from asym_trl.task.evaluation import evaluate_benchmark

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    generate = TransformersGenerator(model, tokenizer, batch_size=len(dataset), token_entropy=True)
    sampling = EvalSampling(temperature=1.0, top_p=1.0, max_new_tokens=8, seed=seed)
    if not full:
        result = evaluate_benchmark(generate, dataset, k=n, sampling=sampling, reward_func=countdown_reward)
        return {"per_prompt_accuracy": [sum(c) / len(c) for c in result.correct]}
    return exploration_report(
        generate, dataset, n=n, ks=ks, sampling=sampling, reward_func=countdown_reward, canonical=canonical
    )


def ema_drop(values: list[float], alpha: float = EMA_ALPHA) -> float:
    """Late degradation of a validation curve: the best point of its EMA minus its last point."""
    ema, smoothed = values[0], []
    for value in values:
        ema = alpha * value + (1 - alpha) * ema
        smoothed.append(ema)
    return max(smoothed) - smoothed[-1]


def derived_metrics(curve: list[dict], epochs: list[dict]) -> dict:
    """The training-side metrics of the claims: last-epoch means of the trainer's diagnostics."""
    last = math.ceil(max(h["epoch"] for h in curve)) - 1
    tail = [h for h in curve if h["epoch"] > last]

    def mean(key):
        values = [h[key] for h in tail if h.get(key) is not None and not math.isnan(h[key])]
        return sum(values) / len(values) if values else float("nan")

    final = max(epochs, key=lambda e: e["epoch_index"]) if epochs else {}
    first_epoch = [h["reward"] for h in curve if h["epoch"] <= 1 and "reward" in h]
    return {
        "train_entropy": mean("entropy"),
        "train_entropy_correct": mean("entropy/correct"),
        "train_entropy_incorrect": mean("entropy/incorrect"),
        "train_reward_first_epoch": sum(first_epoch) / len(first_epoch),
        "train_reward_last_epoch": mean("reward"),
        "none_solved_last_epoch": final.get("epoch_none_solved", float("nan")),
        "all_solved_last_epoch": final.get("epoch_all_solved", float("nan")),
        "clip_high_max": max((h.get("clip_ratio/high_max", 0.0) for h in curve), default=0.0),
    }


# ---------------------------------------------------------------------------------------------------------- runs
CURVE_KEYS = ("epoch", "reward", "entropy", "entropy/correct", "entropy/incorrect", "groups/all_solved",
              "groups/none_solved", "clip_ratio/high_max", "clip_ratio/high_mean", "grad_norm",
              "adaptive/beta_pos", "adaptive/beta_neg")  # fmt: skip


def run_one(
    method: str, seed: int, opts, *, extra: tuple[str, ...] = (), tag: str = "", test: bool = True, recipes=RECIPES
) -> dict:
    """Train one (method, seed) through the library's entry point and recipe (its output in ``logs/``); evaluate;
    drop the checkpoints."""
    quiet()
    out = Path(opts.out)
    regime = json.loads((out / "problems.json").read_text())
    train_dir = out / "train" / f"{method}{tag}-s{seed}"
    shutil.rmtree(train_dir, ignore_errors=True)  # a run interrupted mid-way starts again
    command = [sys.executable, "-m", "asym_trl.train", "--config", str(Path(recipes) / f"{method}.yaml"),
               "--model_name_or_path", str(out / "warm-start"), "--seed", str(seed), "--output_dir", str(train_dir),
               *(["--max_steps", str(opts.max_steps)] if opts.max_steps else []), *extra]  # fmt: skip
    env = os.environ | {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "ASYM_TRL_TESTBED_POOL": str(out / "pool.jsonl"),
        "OMP_NUM_THREADS": "1",
    }
    start = time.time()
    (out / "logs").mkdir(exist_ok=True)
    with open(out / "logs" / f"{method}{tag}-s{seed}.log", "w") as log:
        subprocess.run(command, check=True, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    train_seconds = time.time() - start
    checkpoints = sorted(train_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    curve, epochs = training_logs(train_dir)
    validation = split(regime, "validation")
    val_curve = [{"step": 0, **evaluate(out / "warm-start", validation, opts.val_n, [1], seed)}]
    val_curve += [{"step": int(c.name.split("-")[1]), **evaluate(c, validation, opts.val_n, [1], seed)}
                  for c in checkpoints]  # fmt: skip
    result = {
        "method": method,
        "seed": seed,
        "tag": tag,
        "settings": {"n": opts.n, "val_n": opts.val_n, "num_test": len(regime["test"]), "extra": list(extra)},
        "train_seconds": round(train_seconds, 1),
        "training_curve": curve,
        "epochs": epochs,
        "validation_curve": val_curve,
    }
    refresh_derived(result)
    if test:
        ks = [k for k in (1, 2, 4, 8, 16, 32, 64) if k <= opts.n]
        result["test"] = evaluate(train_dir, split(regime, "test"), opts.n, ks, seed)
    for checkpoint in checkpoints:
        shutil.rmtree(checkpoint)
    result["seconds"] = round(time.time() - start, 1)
    return result


def training_logs(train_dir: Path) -> tuple[list[dict], list[dict]]:
    """The training curve (every logged optimizer step: the loss-side metrics on each, the generation-side ones, e.g.
    ``reward``, on the steps that generated) and the per-epoch group shares, from the run's final
    ``trainer_state.json``."""
    history = json.loads((train_dir / "trainer_state.json").read_text())["log_history"]
    curve = [{"step": h["step"]} | {k: v for k, v in h.items() if k in CURVE_KEYS or k.startswith("groups/p_")}
             for h in history if "loss" in h]  # fmt: skip
    epochs = [{k.removeprefix("groups/"): h[k] for k in h if k.startswith("groups/epoch")} | {"step": h["step"]}
              for h in history if "groups/epoch_index" in h]  # fmt: skip
    return curve, epochs


def refresh_derived(run: dict) -> None:
    """The run's ``derived`` metrics from its curves (in place)."""
    drop = ema_drop([p["sampled_accuracy"] for p in run["validation_curve"]])
    run["derived"] = derived_metrics(run["training_curve"], run["epochs"]) | {"val_ema_drop": drop}


def refresh_curves(out: Path) -> int:
    """Re-read every run's training curve from its ``train/<run>/trainer_state.json`` and recompute its derived
    metrics (the evaluations are kept): the fix of 2026-12-03 (docs/testbed.md, change log)."""
    paths = sorted((out / "runs").glob("*.json"))
    for path in paths:
        run = json.loads(path.read_text())
        run["training_curve"], run["epochs"] = training_logs(
            out / "train" / f"{run['method']}{run['tag']}-s{run['seed']}"
        )
        refresh_derived(run)
        path.write_text(json.dumps(run, indent=1))
    return len(paths)


def _run_and_save(job) -> str:
    method, seed, opts, extra, tag, test, path, *recipes = job  # recipes: another study's folder
    result = run_one(
        method, seed, opts, extra=extra, tag=tag, test=test, **({"recipes": recipes[0]} if recipes else {})
    )
    Path(path).write_text(json.dumps(result, indent=1))
    accuracy = result["test"]["sampled_accuracy"] if test else result["validation_curve"][-1]["sampled_accuracy"]
    return f"{method}{tag} seed {seed}: {result['seconds']:.0f} s, {'test' if test else 'validation'} {accuracy:.3f}"


def run_jobs(jobs: list, workers: int) -> None:
    """Run (method, seed) jobs seed-major, ``workers`` at a time (separate processes, one torch thread each)."""
    if workers <= 1:
        for job in jobs:
            print(_run_and_save(job), flush=True)
        return
    import multiprocessing

    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        for line in pool.map(_run_and_save, jobs):
            print(line, flush=True)


# ------------------------------------------------------------------------------------------------------ analysis
def load_runs(out: Path) -> dict[str, dict[int, dict]]:
    """``{method: {seed: flat metrics}}`` from ``<out>/runs/*.json``."""
    results: dict[str, dict[int, dict]] = {}
    warm = json.loads((out / "warm_start.json").read_text())
    for path in sorted((out / "runs").glob("*.json")):
        run = json.loads(path.read_text())
        test = run["test"]
        n = max(map(int, test["pass_at_k"]))
        flat = {k: v for k, v in test.items() if not isinstance(v, dict)} | run["derived"]
        flat |= {"pass@n": test["pass_at_k"][str(n)], "distinct@n": test["distinct_at_k"][str(n)]}
        flat["gain"] = test["sampled_accuracy"] - warm["sampled_accuracy"]
        results.setdefault(run["method"], {})[run["seed"]] = flat
    return results


def paired(results: dict, a: str, b: str, key: str) -> list[float]:
    """Same-seed differences ``a - b`` of ``key`` over the seeds both methods ran."""
    seeds = sorted(set(results.get(a, {})) & set(results.get(b, {})))
    return [results[a][s][key] - results[b][s][key] for s in seeds]


def mean_ci(values: list[float]) -> tuple[float, float, float]:
    """Mean and 95 % t interval over seeds (the interval is the mean when n < 2)."""
    n, mean = len(values), sum(values) / len(values)
    if n < 2:
        return mean, mean, mean
    half = student_t_quantile(0.975, n - 1) * math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)
    return mean, mean - half, mean + half


def judge(results: dict, claims: list[Claim] = CLAIMS) -> list[dict]:
    """Every claim: the paired t-test, Holm's adjustment over the testable claims, the verdict.  A claim whose
    runs are missing counts in the family with p = 1; a clip claim whose arm never clips is "not testable"."""
    rows = []
    for claim in claims:
        row = {"id": claim.id, "claim": claim.text, "a": claim.a, "b": claim.b, "metric": claim.metric}
        row["predicted"] = ">" if claim.sign > 0 else "<"
        diffs = paired(results, claim.a, claim.b, claim.metric)
        clip = max((r["clip_high_max"] for m in (claim.a, claim.b) for r in results.get(m, {}).values()), default=0)
        if claim.needs_clip and diffs and clip <= 0:
            row |= {"n": len(diffs), "verdict": "not testable (the clip never binds)"}
        elif len(diffs) < 2:
            row |= {"n": len(diffs), "p": 1.0, "verdict": "not run"}
        else:
            test = paired_t(diffs)
            row |= {"n": test.n, "effect": test.mean, "ci": [test.ci_low, test.ci_high], "t": test.t, "p": test.p}
        rows.append(row)
    family = [row for row in rows if "p" in row]
    for row, adjusted in zip(family, holm([row["p"] for row in family]), strict=True):
        row["p_holm"] = adjusted
        if "effect" in row:
            sign = 1 if row["predicted"] == ">" else -1
            row["verdict"] = verdict(adjusted, row["effect"], sign)
    return rows


def analyse(out: Path, results_path: Path | None = None) -> dict:
    results = load_runs(out)
    regime = json.loads((out / "problems.json").read_text())
    warm = json.loads((out / "warm_start.json").read_text())
    grpo = list(results.get("grpo", {}).values())
    arm = [r for m in ("asym-offpolicy", "asym-clip-higher-offpolicy") for r in results.get(m, {}).values()]
    summary = {
        "seeds": {m: len(results[m]) for m in METHODS if m in results},
        "train_p_mean_warm_start": sum(r["p"] for r in regime["pool"]) / len(regime["pool"]),
        "train_p_first_epoch_grpo": sum(r["train_reward_first_epoch"] for r in grpo) / len(grpo) if grpo else None,
        "warm_start_test": {k: v for k, v in warm.items() if not isinstance(v, dict)},
        "grpo_gain": sum(r["gain"] for r in grpo) / len(grpo) if grpo else None,
        "clip_high_active": max((r["clip_high_max"] for r in arm), default=0.0),
        "correction": "holm",
        "alpha": ALPHA,
        "test": "paired t (two-sided) on same-seed differences",
        "regime": {k: regime[k] for k in ("candidates", "p_range", "filter_samples")}
        | {name: len(regime[name]) for name in ("pool", "validation", "test")},
    }
    summary["seeds_min"] = min(summary["seeds"].values(), default=0)
    low, high = GATE["train_p_mean_warm_start"]
    gate = {
        "train_p_in_range": low <= summary["train_p_mean_warm_start"] <= high,
        "grpo_gain_at_least_0.10": summary["grpo_gain"] is not None and summary["grpo_gain"] >= GATE["grpo_gain"],
    }
    summary["gate"] = gate | {"passed": all(gate.values())}
    summary["verdicts"] = judge(results)
    summary["exploratory"] = [
        {"a": a, "b": b, "metric": key} | {k: getattr(test, k) for k in ("n", "mean", "ci_low", "ci_high", "p")}
        for a, b, key in EXPLORATORY
        if len(diffs := paired(results, a, b, key)) >= 2 and (test := paired_t(diffs))
    ]
    summary["methods"] = {
        m: {k: mean_ci([r[k] for r in results[m].values()]) for k, _ in COLUMNS} for m in METHODS if m in results
    }
    (out / "table.md").write_text(render(summary))
    curves = aggregate_curves(out)
    for path in filter(None, [out / "results.json", results_path]):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(summary, indent=1) + "\n")
        Path(path).with_name("curves.json").write_text(json.dumps(curves) + "\n")
    return summary


def _band(series: list[list[float]]) -> dict:
    """Mean and 95 % t interval over seeds, point by point (series cut to the shortest)."""
    length = min(map(len, series))
    points = [mean_ci([s[i] for s in series]) for i in range(length)]
    return {name: [round(p[j], 5) for p in points] for j, name in enumerate(("mean", "low", "high"))}


def aggregate_curves(out: Path, labels: dict[str, str] = METHODS) -> dict:
    """Per method, the seed-averaged curves the notebook draws (``curves.json``, small enough to commit): training
    entropy on all / correct / incorrect rollouts and reward per step, the per-epoch all-/none-solved shares
    (Fig. 2 c,g), the group-accuracy histogram of the first and last epoch, the validation curve, pass@k and
    distinct@k on the test set."""
    runs: dict[str, list[dict]] = {}
    for path in sorted((out / "runs").glob("*.json")):
        run = json.loads(path.read_text())
        runs.setdefault(run["method"], []).append(run)
    curves = {}
    for method, group in runs.items():
        training = {}
        for key in ("entropy", "entropy/correct", "entropy/incorrect", "reward"):
            logged = [[h for h in r["training_curve"] if h.get(key) is not None] for r in group]
            steps = [h["step"] for h in min(logged, key=len)]
            training[key] = {"steps": steps} | _band([[h[key] for h in rows] for rows in logged])
        last = math.ceil(max(h["epoch"] for h in group[0]["training_curve"])) - 1
        histogram = {}
        for name, (low, high) in {"first_epoch": (0, 1), "last_epoch": (last, math.inf)}.items():
            per_run = []
            for r in group:
                rows = [h for h in r["training_curve"] if low < h["epoch"] <= high and "groups/p_0of8" in h]
                bins = sorted(k for k in rows[0] if k.startswith("groups/p_"))
                per_run.append([sum(h[b] for h in rows) / len(rows) for b in bins])
            histogram[name] = _band(per_run)
        ks = sorted(map(int, group[0]["test"]["pass_at_k"]))
        curves[method] = {
            "label": labels[method],
            "seeds": len(group),
            "training": training,
            "epochs": {k: _band([[e[k] for e in r["epochs"]] for r in group])
                       for k in ("epoch_all_solved", "epoch_none_solved")},
            "group_accuracy_histogram": histogram,
            "validation_steps": [p["step"] for p in group[0]["validation_curve"]],
            "validation": _band([[p["sampled_accuracy"] for p in r["validation_curve"]] for r in group]),
            "ks": ks,
            "pass_at_k": _band([[r["test"]["pass_at_k"][str(k)] for k in ks] for r in group]),
            "distinct_at_k": _band([[r["test"]["distinct_at_k"][str(k)] for k in ks] for r in group]),
        }  # fmt: skip
    return curves


def _or_nan(value: float | None) -> float:
    return float("nan") if value is None else value


def render(summary: dict) -> str:
    header = "| method | seeds | " + " | ".join(h for _, h in COLUMNS) + " |"
    lines = [header, "|---" * (len(COLUMNS) + 2) + "|"]
    for method, values in summary["methods"].items():
        cells = [f"{m:.3f} [{lo:.3f}, {hi:.3f}]" for m, lo, hi in (values[k] for k, _ in COLUMNS)]
        lines.append(f"| {METHODS[method]} | {summary['seeds'][method]} | " + " | ".join(cells) + " |")
    lines += ["", "mean [95 % t interval over seeds]", "", "| id | claim | effect (a - b) [95 % CI] | n | p | "
              "p (Holm) | verdict |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for row in summary["verdicts"]:
        effect = f"{row['effect']:+.4f} [{row['ci'][0]:+.4f}, {row['ci'][1]:+.4f}]" if "effect" in row else "-"
        p = f"{row['p']:.2g}" if "effect" in row else "-"
        p_holm = f"{row['p_holm']:.2g}" if "effect" in row else "-"
        lines.append(f"| {row['id']} | {row['claim']} | {effect} | {row['n']} | {p} | {p_holm} | {row['verdict']} |")
    lines += ["", "Exploratory (after the results; unadjusted p; not verdicts):", ""]
    lines += [f"- {row['a']} - {row['b']}, {row['metric']}: {row['mean']:+.4f} [{row['ci_low']:+.4f}, "
              f"{row['ci_high']:+.4f}], n {row['n']}, p {row['p']:.2g}" for row in summary["exploratory"]]  # fmt: skip
    gate = summary["gate"]
    lines += ["", f"gate: {'passed' if gate['passed'] else 'FAILED'} (warm-start training p "
              f"{summary['train_p_mean_warm_start']:.3f}, GRPO gain {_or_nan(summary['grpo_gain']):+.3f}, "
              f"clip high max {summary['clip_high_active']:.3f})"]  # fmt: skip
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/testbed"))
    parser.add_argument("--study", choices=[*STUDIES, "tune-entropy-reg"], default="primary")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), help="override the study's methods")
    parser.add_argument("--seeds", nargs="+", type=int, default=SEEDS)
    parser.add_argument("--workers", type=int, default=1, help="runs at once (one torch thread each)")
    parser.add_argument("--max-steps", type=int, default=0, help="cut every run to this many steps (CI smoke)")
    parser.add_argument("--sft-steps", type=int, default=400)
    parser.add_argument("--filter-samples", type=int, default=16, help="samples per problem of the regime filter")
    parser.add_argument("--p-range", nargs=2, type=float, default=[0.125, 0.875])
    parser.add_argument("--pool-size", type=int, default=256)
    parser.add_argument("--num-validation", type=int, default=100)
    parser.add_argument("--max-test", type=int, default=10_000, help="cap on the test problems (CI smoke)")
    parser.add_argument("--n", type=int, default=32, help="samples per test problem (Avg@n, pass@k up to n)")
    parser.add_argument("--val-n", type=int, default=8, help="samples per validation problem")
    parser.add_argument("--analyse-only", action="store_true")
    parser.add_argument("--refresh-curves", action="store_true", help="re-read the training curves, then analyse")
    parser.add_argument("--results", type=Path, help="also write results.json here (docs/testbed/results.json)")
    opts = parser.parse_args(argv)
    opts.out = opts.out.resolve()
    start = time.time()
    if not opts.analyse_only:
        quiet()
        opts.out.mkdir(parents=True, exist_ok=True)
        warm = make_warm_start(opts.out, opts.sft_steps)
        regime = make_regime(opts.out, warm, opts)
        sizes = ", ".join(f"{name} {len(regime[name])}" for name in ("pool", "validation", "test"))
        print(f"regime: {sizes} problems; mean warm-start p on the pool {regime['train_p_mean_warm_start']:.3f}")
        if not (opts.out / "warm_start.json").exists():
            ks = [k for k in (1, 2, 4, 8, 16, 32, 64) if k <= opts.n]
            report = evaluate(warm, split(regime, "test"), opts.n, ks, seed=0)
            (opts.out / "warm_start.json").write_text(json.dumps(report, indent=1))
        if opts.study == "tune-entropy-reg":
            (opts.out / "tune").mkdir(exist_ok=True)
            jobs = [("reinforce-entropy-reg", seed, opts, ("--entropy_coef", str(c)), f"-c{c}", False,
                     opts.out / "tune" / f"c{c}-s{seed}.json")
                    for seed in TUNE_SEEDS for c in ENTROPY_COEFS]  # fmt: skip
        else:
            (opts.out / "runs").mkdir(exist_ok=True)
            methods = opts.methods or STUDIES[opts.study]
            jobs = [(m, seed, opts, (), "", True, opts.out / "runs" / f"{m}-s{seed}.json")
                    for seed in opts.seeds for m in methods]  # fmt: skip
        run_jobs([job for job in jobs if not Path(job[-1]).exists()], opts.workers)
        with open(opts.out / "timing.jsonl", "a") as f:
            f.write(json.dumps({"study": opts.study, "seconds": round(time.time() - start), "jobs": len(jobs)}) + "\n")
        print(f"{opts.study}: {time.time() - start:.0f} s", flush=True)
    if opts.study == "tune-entropy-reg" and not opts.analyse_only:
        print(tuning_report(opts.out))
        return 0
    if opts.refresh_curves:
        print(f"refreshed the training curves of {refresh_curves(opts.out)} runs")
    if (opts.out / "runs").is_dir():
        print(analyse(opts.out, opts.results)["gate"])
        print((opts.out / "table.md").read_text())
    return 0


def tuning_report(out: Path) -> str:
    """The entropy coefficient of REINFORCE + entropy reg.: the best mean final validation accuracy (seeds 100-101)."""
    scores: dict[float, list[float]] = {}
    for path in (out / "tune").glob("c*-s*.json"):
        coef = float(path.name.split("-s")[0][1:])
        scores.setdefault(coef, []).append(json.loads(path.read_text())["validation_curve"][-1]["sampled_accuracy"])
    means = {c: sum(v) / len(v) for c, v in sorted(scores.items())}
    best = max(means, key=means.get)
    (out / "tune" / "entropy_reg.json").write_text(json.dumps({"means": means, "chosen": best}, indent=1))
    return f"entropy_coef -> final validation accuracy (mean of seeds {TUNE_SEEDS}): {means}; chosen {best}"


if __name__ == "__main__":
    raise SystemExit(main())
