"""Table 1 in miniature on the countdown testbed (docs/testbed.md): every method row, >= 5 seeds, one command.

    PYTHONPATH=. python experiments/table1_mini.py --out runs/table1_mini          # the study (resumable)
    PYTHONPATH=. python experiments/table1_mini.py --out runs/table1_mini --analyse-only

1. Warm start (once, cached under ``--out``): TRL's ``SFTTrainer`` on the countdown teacher's demonstrations
   (:func:`asym_trl.apps.quickstart.warm_start`, :func:`asym_trl.apps.countdown.teacher_dataset`).
2. Every (method, seed): ``python -m asym_trl.train --config recipes/cpu/table1-mini/<method>.yaml`` from that warm
   start, then each saved checkpoint on the validation split (the validation curve) and the final policy on the
   held-out test split (:func:`asym_trl.exploration.exploration_report`: pass@k, distinct correct solutions,
   entropy on correct / incorrect samples, all-/none-solved).  One JSON per run in ``<out>/runs``; a run whose JSON
   exists is skipped.
3. Analysis (the plan fixed in docs/testbed.md): per method mean and 95 % bootstrap CI over seeds, the paired
   (same-seed) difference to GRPO, and one verdict line per claim of the paper -> ``<out>/table.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes" / "cpu" / "table1-mini"
METHODS = [  # Table 1's rows, in its order: (recipe, label)
    ("reinforce", "REINFORCE"),
    ("grpo", "GRPO"),
    ("grpo-entropy-reg", "+ entropy reg."),
    ("grpo-clip-higher", "+ clip-higher"),
    ("grpo-entropy-adv", "+ entropy advantage"),
    ("dr-grpo", "Dr.GRPO"),
    ("pass-at-k", "Pass@K"),
    ("pos-only", "Pos-only"),
    ("neg-only", "Neg-only"),
    ("ent-increase", "EntIncrease"),
    ("ent-decrease", "EntDecrease"),
    ("asym-symmetric", "AsymGRPO beta_pos = beta_neg"),
    ("asym", "AsymGRPO"),
    ("asym-clip-higher", "AsymGRPO + clip-higher"),
]
KS = [1, 2, 4, 8, 16, 32, 64]
# (key, header) of the summary table; "val_drop" = best - final validation accuracy (§3.2's late degradation)
COLUMNS = [
    ("sampled_accuracy", "acc (T=1)"),
    ("greedy_accuracy", "greedy"),
    ("pass@1", "pass@1"),
    ("pass@64", "pass@64"),
    ("distinct@64", "distinct@64"),
    ("entropy", "entropy"),
    ("entropy_correct", "H correct"),
    ("entropy_incorrect", "H incorrect"),
    ("none_solved", "none-solved"),
    ("all_solved", "all-solved"),
    ("val_drop", "val drop"),
]


# ------------------------------------------------------------------------------------------------ statistics
def bootstrap_ci(values: list[float], resamples: int = 10_000, seed: int = 0) -> tuple[float, float, float]:
    """Mean and 95 % percentile-bootstrap interval over ``values`` (seeds), resampled with replacement."""
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(rng.choices(values, k=n)) / n for _ in range(resamples))
    return sum(values) / n, means[int(0.025 * resamples)], means[int(0.975 * resamples) - 1]


def paired(results: dict, a: str, b: str, key: str) -> list[float]:
    """Same-seed differences ``a - b`` of ``key`` (seeds both methods ran with that metric)."""
    seeds = sorted(set(results.get(a, {})) & set(results.get(b, {})))
    seeds = [s for s in seeds if key in results[a][s] and key in results[b][s]]
    return [results[a][s][key] - results[b][s][key] for s in seeds]


def verdict(diffs: list[float], direction: int) -> str:
    """The plan's rule: supported when the 95 % CI of the paired difference excludes 0 on the predicted side
    (``direction`` +1: a > b), not supported when it excludes 0 on the other side, else inconclusive."""
    if len(diffs) < 2:
        return "inconclusive (fewer than 2 paired seeds)"
    mean, low, high = bootstrap_ci(diffs)
    numbers = f"{mean:+.3f} [{low:+.3f}, {high:+.3f}], {len(diffs)} seeds"
    if low > 0 or high < 0:  # the interval excludes 0
        word = "supported" if direction * mean > 0 else "not supported"
    else:
        word = "inconclusive"
    return f"{word} ({numbers})"


CLAIMS = [  # (claim, [(method a, method b, key, predicted sign of a - b)]) -- fixed in docs/testbed.md
    ("Pos-only keeps entropy above REINFORCE (§3.1)", [("pos-only", "reinforce", "entropy", +1)]),
    ("Pos-only lowers none-solved vs REINFORCE (§3.1)", [("pos-only", "reinforce", "none_solved", -1)]),
    ("Neg-only lowers entropy vs REINFORCE (§3.1)", [("neg-only", "reinforce", "entropy", -1)]),
    ("entropy reg. raises entropy vs GRPO (§3.1)", [("grpo-entropy-reg", "grpo", "entropy", +1)]),
    (
        "entropy reg. does not match Pos-only's accuracy (§3.1)",
        [("pos-only", "grpo-entropy-reg", "sampled_accuracy", +1)],
    ),
    ("EntIncrease loses accuracy vs GRPO (§3.2)", [("ent-increase", "grpo", "sampled_accuracy", -1)]),
    ("EntDecrease loses accuracy vs GRPO (§3.2)", [("ent-decrease", "grpo", "sampled_accuracy", -1)]),
    ("EntIncrease degrades late (best - final val) vs GRPO (§3.2)", [("ent-increase", "grpo", "val_drop", +1)]),
    ("EntDecrease degrades late (best - final val) vs GRPO (§3.2)", [("ent-decrease", "grpo", "val_drop", +1)]),
    ("AsymGRPO beats GRPO (accuracy)", [("asym", "grpo", "sampled_accuracy", +1)]),
    ("AsymGRPO beats GRPO (pass@64)", [("asym", "grpo", "pass@64", +1)]),
    ("clip-higher adds to AsymGRPO (accuracy)", [("asym-clip-higher", "asym", "sampled_accuracy", +1)]),
]


def load_results(out: Path) -> dict[str, dict[int, dict]]:
    """``{method: {seed: flat metrics}}`` from ``<out>/runs/*.json``."""
    results: dict[str, dict[int, dict]] = {}
    for path in sorted((out / "runs").glob("*.json")):
        run = json.loads(path.read_text())
        test = run["test"]
        flat = {k: v for k, v in test.items() if not isinstance(v, dict)}
        flat |= {f"pass@{k}": v for k, v in test["pass_at_k"].items()}
        flat |= {f"distinct@{k}": v for k, v in test["distinct_at_k"].items()}
        accs = [point["sampled_accuracy"] for point in run["validation_curve"]]
        flat["val_drop"] = max(accs) - accs[-1] if accs else float("nan")
        results.setdefault(run["method"], {})[run["seed"]] = flat
    return results


def analyse(out: Path) -> str:
    results = load_results(out)
    label = dict(METHODS)
    runs = [r for per_seed in results.values() for r in per_seed.values()]
    columns = [(k, h) for k, h in COLUMNS if all(k in r for r in runs)]  # pass@64 needs n >= 64
    lines = ["| method | seeds | " + " | ".join(h for _, h in columns) + " |", "|---" * (len(columns) + 2) + "|"]
    for method, _ in METHODS:
        if method not in results:
            continue
        cells = []
        for key, _ in columns:
            mean, low, high = bootstrap_ci([r[key] for r in results[method].values()])
            cell = f"{mean:.3f} [{low:.3f}, {high:.3f}]"
            if method != "grpo" and "grpo" in results:
                diffs = paired(results, method, "grpo", key)
                cell += f" (Δ {sum(diffs) / len(diffs):+.3f})" if diffs else ""
            cells.append(cell)
        lines.append(f"| {label[method]} | {len(results[method])} | " + " | ".join(cells) + " |")
    lines += ["", "mean [95 % bootstrap CI over seeds] (Δ: mean same-seed difference to GRPO)", "", "## Verdicts", ""]
    for claim, tests in CLAIMS:
        for a, b, key, sign in tests:
            lines.append(f"- {claim}: {verdict(paired(results, a, b, key), sign)}")
    text = "\n".join(lines) + "\n"
    (out / "table.md").write_text(text)
    return text


# ----------------------------------------------------------------------------------------------------- runs
def make_warm_start(out: Path, sft_steps: int) -> Path:
    from asym_trl.apps.countdown import countdown_splits, teacher_dataset
    from asym_trl.apps.quickstart import QuickstartSettings, warm_start

    start = time.time()
    path = warm_start(
        QuickstartSettings(sft_steps=sft_steps), out / "cache", teacher_dataset(countdown_splits()["train"])
    )
    print(f"warm start {path} ({time.time() - start:.0f} s)", flush=True)
    return path


def evaluate(model_dir, dataset, n: int, ks: list[int], seed: int) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from asym_trl.apps.countdown import canonical, countdown_reward
    from asym_trl.exploration import exploration_report
    from asym_trl.generation import EvalSampling, TransformersGenerator

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    generate = TransformersGenerator(model, tokenizer, batch_size=len(dataset), token_entropy=True)
    sampling = EvalSampling(temperature=1.0, top_p=1.0, max_new_tokens=12, seed=seed)
    return exploration_report(
        generate, dataset, n=n, ks=ks, sampling=sampling, reward_func=countdown_reward, canonical=canonical
    )


def run_one(method: str, seed: int, args, warm: Path, splits: dict) -> dict:
    train_dir = args.out / "train" / f"{method}-s{seed}"
    command = [
        sys.executable, "-m", "asym_trl.train", "--config", str(RECIPES / f"{method}.yaml"),
        "--model_name_or_path", str(warm), "--seed", str(seed), "--max_steps", str(args.steps),
        "--save_steps", str(max(1, args.steps // args.checkpoints)), "--output_dir", str(train_dir),
    ]  # fmt: skip
    env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    start = time.time()
    subprocess.run(command, check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    train_seconds = time.time() - start
    checkpoints = sorted(train_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    history = json.loads((checkpoints[-1] / "trainer_state.json").read_text())["log_history"]
    curve_keys = ("entropy", "entropy/correct", "entropy/incorrect", "reward", "groups/none_solved")
    training_curve = [{"step": h["step"], **{k: h[k] for k in curve_keys if k in h}} for h in history if "reward" in h]
    validation = splits["validation"]
    validation_curve = [
        {"step": 0, **evaluate(warm, validation, args.val_n, [1], seed)},
        *({"step": int(c.name.split("-")[1]), **evaluate(c, validation, args.val_n, [1], seed)} for c in checkpoints),
    ]
    ks = [k for k in KS if k <= args.n]
    return {
        "method": method,
        "seed": seed,
        "settings": {"steps": args.steps, "n": args.n, "num_test": len(splits["test"]), "val_n": args.val_n},
        "train_seconds": round(train_seconds, 1),
        "seconds": round(time.time() - start, 1),
        "training_curve": training_curve,
        "validation_curve": validation_curve,
        "test": evaluate(train_dir, splits["test"], args.n, ks, seed),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/table1_mini"))
    parser.add_argument("--methods", nargs="+", default=[m for m, _ in METHODS], choices=[m for m, _ in METHODS])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--steps", type=int, default=40, help="RL optimizer steps per run")
    parser.add_argument("--checkpoints", type=int, default=4, help="validation points along a run")
    parser.add_argument("--sft-steps", type=int, default=400)
    parser.add_argument("--num-test", type=int, default=100, help="held-out test problems (<= 100)")
    parser.add_argument("--num-validation", type=int, default=100, help="validation problems (<= 100)")
    parser.add_argument("--n", type=int, default=64, help="samples per test problem (pass@k up to k = n)")
    parser.add_argument("--val-n", type=int, default=4, help="samples per validation problem")
    parser.add_argument("--analyse-only", action="store_true")
    args = parser.parse_args(argv)
    args.out = args.out.resolve()
    if not args.analyse_only:
        import torch

        from asym_trl.apps.countdown import countdown_splits

        torch.set_num_threads(1)
        splits = countdown_splits()
        splits["test"] = splits["test"].select(range(args.num_test))
        splits["validation"] = splits["validation"].select(range(args.num_validation))
        warm = make_warm_start(args.out, args.sft_steps)
        (args.out / "runs").mkdir(parents=True, exist_ok=True)
        for seed in args.seeds:  # seed-major: an interrupted study has every method at the same seeds
            for method in args.methods:
                path = args.out / "runs" / f"{method}-s{seed}.json"
                if path.exists():
                    continue
                result = run_one(method, seed, args, warm, splits)
                path.write_text(json.dumps(result, indent=1))
                accuracy = result["test"]["sampled_accuracy"]
                print(f"{method} seed {seed}: {result['seconds']:.0f} s, test accuracy {accuracy:.3f}", flush=True)
    print(analyse(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
