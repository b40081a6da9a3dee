"""The long-horizon study (docs/testbed_long.md, issue 27): when does asymmetry pay? The testbed's regime trained until
GRPO's entropy has collapsed, every method at the learning rate chosen for it on validation, the asymmetric schemes
head to head. One command per stage, resumable (a run whose JSON exists is skipped), one JSON per run:

    PYTHONPATH=. python experiments/long_horizon.py --out runs/long --stage tune --workers 2     # first
    PYTHONPATH=. python experiments/long_horizon.py --out runs/long --stage study-a --workers 2
    PYTHONPATH=. python experiments/long_horizon.py --out runs/long --stage study-b --workers 2
    PYTHONPATH=. python experiments/long_horizon.py --out runs/long --stage study-c --workers 2
    PYTHONPATH=. python experiments/long_horizon.py --out runs/long --stage study-d --workers 2
    PYTHONPATH=. python experiments/long_horizon.py --out runs/long --analyse-only \
        --results docs/testbed/long/results.json

1. **Regime**: the versioned warm start and problem lists of ``experiments/regime/countdown-2of4`` (checked against
   ``SHA256SUMS``), so every CPU trains from the same weights on the same splits.
2. **Tuning** (``--stage tune``): every method at each learning rate of ``LEARNING_RATES`` on the tuning seeds,
   validation only; per method the rate with the best mean of the last three validation points. The recipes in
   ``recipes/cpu/testbed-long/`` must carry the chosen rates (checked before a study stage runs).
3. **Study** (``--stage study-a|b|c|d``): 16 seeds per method; the final policy on the held-out test set (Avg@32,
   pass@k, distinct correct solutions), the validation curve every 32 steps, the trainer's diagnostics.
4. **Analysis**: the design gate, then each pre-registered claim (paired t on same-seed differences, Holm over the
   family) -> ``table.md``, ``results.json``, ``curves.json``.

Runs, evaluation and the statistics are the testbed study's (``experiments/testbed.py``), reused as they are.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))

import testbed as tb  # noqa: E402

from asym_trl.diagnostics.seed_stats import ALPHA, paired_t  # noqa: E402

REGIME = ROOT / "experiments" / "regime" / "countdown-2of4"
RECIPES = ROOT / "recipes" / "cpu" / "testbed-long"
METHODS = {  # recipe -> label
    "grpo": "GRPO",
    "asym": "AsymGRPO (0.9, 0.4)",
    "adaptive-beta": "Adaptive beta",
    "a-grae": "A-GRAE",
    "w-reinforce": "W-REINFORCE",
    "nsr": "NSR",
    "pos-only": "Pos-only",
    "reinforce": "REINFORCE",
}
STAGES = {  # 32 runs each: < 90 min on 2 cores
    "study-a": ["grpo", "asym"],
    "study-b": ["adaptive-beta", "a-grae"],
    "study-c": ["w-reinforce", "nsr"],
    "study-d": ["pos-only", "reinforce"],
}
SEEDS = list(range(16))
LEARNING_RATES = [1e-4, 3e-4, 1e-3]  # the grid every method is tuned on (validation only)
TUNE_SEEDS = [100, 101]
TUNE_POINTS = 3  # the selection score: mean of the last three validation points over the tuning seeds
HORIZON_STEPS = 640  # 40 epochs of the 256-problem pool; chosen by the GRPO pilot (docs/testbed_long.md)
STEPS_PER_EPOCH = 16  # 256 problems / 16 prompts per step
VALIDATION_EVERY = 32  # the recipes' save_steps: a checkpoint, then a validation point
MAX_GRAD_NORM = 1.0  # the recipes' gradient clipping: a step clips when its pre-clip norm exceeds it
GATE = {"train_p_mean_warm_start": (0.25, 0.75), "grpo_gain": 0.10, "entropy_ratio_below": 0.5, "val_gain_below": 0.01}

# Fixed in docs/testbed_long.md before any method was compared. "acc" = held-out Avg@32; "pass" = pass@32; "H" =
# training entropy over the last epoch; "drop" = late degradation of the validation EMA (best minus last point).
CLAIMS = [
    tb.Claim("P1", "AsymGRPO beats GRPO in mean accuracy at the long horizon (primary)", "asym", "grpo",
             "sampled_accuracy", +1),
    tb.Claim("P2", "AsymGRPO beats GRPO in pass@32 at the long horizon (co-primary: exploration)", "asym", "grpo",
             "pass@n", +1),
    tb.Claim("L1", "GRPO degrades late more than AsymGRPO (§3.2)", "grpo", "asym", "val_ema_drop", +1),
    tb.Claim("H1", "AsymGRPO keeps more training entropy than GRPO at the end (§3.1)", "asym", "grpo",
             "train_entropy", +1),
    tb.Claim("A1", "A-GRAE beats GRPO in mean accuracy", "a-grae", "grpo", "sampled_accuracy", +1),
    tb.Claim("A2", "Adaptive beta beats GRPO in mean accuracy", "adaptive-beta", "grpo", "sampled_accuracy", +1),
    tb.Claim("A3", "Adaptive beta beats fixed (0.9, 0.4) in mean accuracy", "adaptive-beta", "asym",
             "sampled_accuracy", +1),
    tb.Claim("Z1", "W-REINFORCE beats GRPO in pass@32 (Zhu et al. 2025)", "w-reinforce", "grpo", "pass@n", +1),
    tb.Claim("Z2", "NSR beats GRPO in pass@32 (Zhu et al. 2025)", "nsr", "grpo", "pass@n", +1),
    tb.Claim("S1", "Pos-only beats REINFORCE in mean accuracy at the long horizon (§3.1)", "pos-only", "reinforce",
             "sampled_accuracy", +1),
]  # fmt: skip
COLUMNS = [
    ("sampled_accuracy", "Avg@32"),
    ("gain", "gain"),
    ("greedy_accuracy", "greedy"),
    ("pass@n", "pass@32"),
    ("distinct@n", "distinct@32"),
    ("train_entropy", "H last epoch"),
    ("entropy_ratio", "H last / first"),
    ("val_best", "best val"),
    ("val_ema_drop", "late drop"),
    ("val_gain_last_quarter", "val gain, last quarter"),
    ("clip_rate", "clip rate"),
    ("grad_norm_mean", "grad norm"),
]


# ------------------------------------------------------------------------------------------------------ regime
def check_regime(regime: Path = REGIME) -> None:
    """Every file of the versioned regime has the checksum in ``SHA256SUMS`` (else: stop, naming the file)."""
    for line in (regime / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        path = regime / name
        if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            raise SystemExit(f"{path}: missing or changed (its SHA-256 is not the one in {regime / 'SHA256SUMS'})")


def install_regime(out: Path, n: int = 32, max_test: int = 0, regime: Path = REGIME) -> dict:
    """Put the versioned regime where the testbed runner reads it: ``warm-start`` (a link), ``problems.json`` (the
    test set cut to ``max_test`` problems for a smoke run), ``pool.jsonl``; evaluate the warm start on the test set
    once (``warm_start.json``, the "before" of every gain)."""
    check_regime(regime)
    out.mkdir(parents=True, exist_ok=True)
    link = out / "warm-start"
    if not link.exists():
        link.symlink_to((regime / "warm-start").resolve())
    problems = json.loads((regime / "problems.json").read_text())
    problems["test"] = problems["test"][: max_test or None]
    (out / "problems.json").write_text(json.dumps(problems))
    with open(out / "pool.jsonl", "w") as f:
        f.writelines(json.dumps({"prompt": r["prompt"], "solution": r["solution"]}) + "\n" for r in problems["pool"])
    if not (out / "warm_start.json").exists():
        ks = [k for k in (1, 2, 4, 8, 16, 32, 64) if k <= n]
        report = tb.evaluate(link, tb.split(problems, "test"), n, ks, seed=0)
        (out / "warm_start.json").write_text(json.dumps(report, indent=1))
    problems["train_p_mean_warm_start"] = sum(r["p"] for r in problems["pool"]) / len(problems["pool"])
    return problems


# ------------------------------------------------------------------------------------------------------ tuning
def recipe_learning_rate(method: str) -> float:
    import yaml

    return float(yaml.safe_load((RECIPES / f"{method}.yaml").read_text()).get("learning_rate", 3e-4))


def tuning_jobs(opts) -> list:
    tune = opts.out / "tune"
    tune.mkdir(exist_ok=True)
    return [
        (m, seed, opts, ("--learning_rate", str(lr)), f"-lr{lr:g}", False, str(tune / f"{m}-lr{lr:g}-s{seed}.json"),
         str(RECIPES))
        for seed in TUNE_SEEDS for lr in LEARNING_RATES for m in METHODS
    ]  # fmt: skip


def tuning_report(out: Path) -> dict:
    """Per method and rate: the mean over the tuning seeds of the last ``TUNE_POINTS`` validation points; the
    chosen rate (best score; a tie goes to the smaller rate). Written to ``tune/chosen.json``."""
    scores: dict[str, dict[float, list[float]]] = {}
    for path in sorted((out / "tune").glob("*-lr*-s*.json")):
        run = json.loads(path.read_text())
        lr = float(path.name.split("-lr")[1].split("-s")[0])
        points = [p["sampled_accuracy"] for p in run["validation_curve"]][-TUNE_POINTS:]
        scores.setdefault(run["method"], {}).setdefault(lr, []).append(sum(points) / len(points))
    table = {m: {lr: sum(v) / len(v) for lr, v in sorted(by_lr.items())} for m, by_lr in scores.items()}
    chosen = {m: max(sorted(t), key=lambda lr: (round(t[lr], 9), -lr)) for m, t in table.items()}
    report = {"scores": {m: {f"{lr:g}": s for lr, s in t.items()} for m, t in table.items()}, "chosen": chosen,
              "seeds": {m: {f"{lr:g}": len(v) for lr, v in by_lr.items()} for m, by_lr in scores.items()}}  # fmt: skip
    (out / "tune" / "chosen.json").write_text(json.dumps(report, indent=1))
    return report


def check_recipes_carry_the_tuned_rates(out: Path, methods: list[str]) -> None:
    if not (out / "tune" / "chosen.json").is_file():
        raise SystemExit(f"no tuned learning rates in {out / 'tune'}: run --stage tune first (docs/testbed_long.md)")
    chosen = json.loads((out / "tune" / "chosen.json").read_text())["chosen"]
    wrong = [f"{m}: recipe {recipe_learning_rate(m):g}, tuned {chosen[m]:g}" for m in methods
             if m not in chosen or not math.isclose(recipe_learning_rate(m), chosen[m])]  # fmt: skip
    if wrong:
        raise SystemExit("the study recipes must carry the tuned learning rates (recipes/cpu/testbed-long/): " +
                         "; ".join(wrong))  # fmt: skip


# ------------------------------------------------------------------------------------------------------ metrics
def ema(values: list[float], alpha: float = tb.EMA_ALPHA) -> list[float]:
    smoothed, e = [], values[0]
    for value in values:
        e = alpha * value + (1 - alpha) * e
        smoothed.append(e)
    return smoothed


def long_metrics(run: dict) -> dict:
    """The long study's run metrics beside the testbed's: entropy collapse, the validation curve's plateau and late
    drop, gradient-norm clipping."""
    curve = run["training_curve"]
    entropy = [h["entropy"] for h in curve if h.get("entropy") is not None]
    per_epoch = min(STEPS_PER_EPOCH, len(entropy))
    first, last = entropy[:per_epoch], entropy[-per_epoch:]
    points = run["validation_curve"]
    smoothed = ema([p["sampled_accuracy"] for p in points])
    steps = [p["step"] for p in points]
    quarter = min(range(len(steps)), key=lambda i: abs(steps[i] - 3 * steps[-1] / 4))  # the point at 3/4
    norms = [h["grad_norm"] for h in curve if h.get("grad_norm") is not None]
    out = {
        "entropy_ratio": (sum(last) / len(last)) / (sum(first) / len(first)),
        "val_best": max(p["sampled_accuracy"] for p in points),
        "val_gain_last_quarter": smoothed[-1] - smoothed[quarter],
        "clip_rate": sum(n > MAX_GRAD_NORM for n in norms) / len(norms) if norms else float("nan"),
        "grad_norm_mean": sum(norms) / len(norms) if norms else float("nan"),
    }
    betas = [(h["adaptive/beta_pos"], h["adaptive/beta_neg"]) for h in curve if "adaptive/beta_pos" in h]
    if betas:
        out["final_beta_pos"], out["final_beta_neg"] = betas[-1]
    return out


def load_runs(out: Path) -> dict[str, dict[int, dict]]:
    results = tb.load_runs(out)
    for path in sorted((out / "runs").glob("*.json")):
        run = json.loads(path.read_text())
        results[run["method"]][run["seed"]] |= long_metrics(run)
    return results


def analyse(out: Path, results_path: Path | None = None) -> dict:
    results = load_runs(out)
    problems = json.loads((out / "problems.json").read_text())
    warm = json.loads((out / "warm_start.json").read_text())
    grpo = list(results.get("grpo", {}).values())
    tuned = json.loads((out / "tune" / "chosen.json").read_text()) if (out / "tune" / "chosen.json").exists() else {}

    def mean(rows, key):
        return sum(r[key] for r in rows) / len(rows) if rows else None

    summary = {
        "seeds": {m: len(results[m]) for m in METHODS if m in results},
        "learning_rate": tuned.get("chosen", {}),
        "tuning": tuned.get("scores", {}),
        "horizon_steps": HORIZON_STEPS,
        "train_p_mean_warm_start": sum(r["p"] for r in problems["pool"]) / len(problems["pool"]),
        "warm_start_test": {k: v for k, v in warm.items() if not isinstance(v, dict)},
        "correction": "holm",
        "alpha": ALPHA,
        "test": "paired t (two-sided) on same-seed differences",
        "regime": {name: len(problems[name]) for name in ("pool", "validation", "test")} | {"source": str(REGIME)},
    }
    entropy_ratio, val_gain, gain = (
        mean(grpo, "entropy_ratio"),
        mean(grpo, "val_gain_last_quarter"),
        mean(grpo, "gain"),
    )
    low, high = GATE["train_p_mean_warm_start"]
    checks = {
        "train_p_in_range": low <= summary["train_p_mean_warm_start"] <= high,
        "grpo_gain_at_least_0.10": gain is not None and gain >= GATE["grpo_gain"],
        "grpo_entropy_collapsed": entropy_ratio is not None and entropy_ratio < GATE["entropy_ratio_below"],
        "grpo_validation_plateaued": val_gain is not None and val_gain < GATE["val_gain_below"],
    }
    summary["gate"] = {"passed": all(checks.values()), **checks, "grpo_entropy_ratio": entropy_ratio,
                       "grpo_val_gain_last_quarter": val_gain, "grpo_gain": gain}  # fmt: skip
    summary["verdicts"] = [
        {k: row[k] for k in ("id", "claim", "a", "b", "metric", "predicted", "n", "verdict") if k in row}
        | {"effect": row.get("effect"), "ci": row.get("ci"), "p": row.get("p"), "p_holm": row.get("p_holm")}
        for row in tb.judge(results, CLAIMS)
    ]
    summary["methods"] = {
        m: {k: tb.mean_ci([r[k] for r in results[m].values()]) for k, _ in COLUMNS} for m in METHODS if m in results
    }
    summary["clip_rate"] = {m: v["clip_rate"][0] for m, v in summary["methods"].items()}
    adaptive = list(results.get("adaptive-beta", {}).values())
    if adaptive:
        finals = ("final_beta_pos", "final_beta_neg")
        summary["adaptive_final_betas"] = {k: tb.mean_ci([r[k] for r in adaptive]) for k in finals}
    summary["exploratory"] = [
        {"a": a, "b": "grpo", "metric": key} | {k: getattr(t, k) for k in ("n", "mean", "ci_low", "ci_high", "p")}
        for a in METHODS if a != "grpo" for key in ("sampled_accuracy", "pass@n", "greedy_accuracy", "distinct@n")
        if len(diffs := tb.paired(results, a, "grpo", key)) >= 2 and (t := paired_t(diffs))
    ]  # fmt: skip
    (out / "table.md").write_text(render(summary))
    curves = tb.aggregate_curves(out, METHODS)
    add_long_curves(out, curves)
    for path in filter(None, [out / "results.json", results_path]):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(summary, indent=1) + "\n")
        Path(path).with_name("curves.json").write_text(json.dumps(curves) + "\n")
    return summary


def add_long_curves(out: Path, curves: dict, every: int = 4) -> None:
    """The long runs' curves, thinned to every ``every``-th step (the JSON stays small enough to commit): the
    training curves of :func:`testbed.aggregate_curves`, plus the pre-clip gradient norm and adaptive beta's betas."""
    runs: dict[str, list[dict]] = {}
    for path in sorted((out / "runs").glob("*.json")):
        run = json.loads(path.read_text())
        runs.setdefault(run["method"], []).append(run)
    for method, group in runs.items():
        training = curves[method]["training"]
        for key in ("grad_norm", "adaptive/beta_pos", "adaptive/beta_neg"):
            logged = [[h for h in r["training_curve"] if h.get(key) is not None] for r in group]
            if all(logged):
                steps = [h["step"] for h in min(logged, key=len)]
                training[key] = {"steps": steps} | tb._band([[h[key] for h in rows] for rows in logged])
        for series in training.values():
            for name in series:
                series[name] = series[name][::every]


def render(summary: dict) -> str:
    lines = ["| method | lr | seeds | " + " | ".join(h for _, h in COLUMNS) + " |", "|---" * (len(COLUMNS) + 3) + "|"]
    for method, values in summary["methods"].items():
        cells = [f"{m:.3f} [{lo:.3f}, {hi:.3f}]" for m, lo, hi in (values[k] for k, _ in COLUMNS)]
        lr = summary["learning_rate"].get(method)
        lines.append(f"| {METHODS[method]} | {lr if lr is None else f'{lr:g}'} | {summary['seeds'][method]} | "
                     + " | ".join(cells) + " |")  # fmt: skip
    lines += ["", "| id | claim | effect (a - b) [95 % CI] | n | p | p (Holm) | verdict |", "|---" * 7 + "|"]
    for row in summary["verdicts"]:
        if row["effect"] is None:
            lines.append(f"| {row['id']} | {row['claim']} | - | {row['n']} | - | - | {row['verdict']} |")
            continue
        lo, hi = row["ci"]
        lines.append(f"| {row['id']} | {row['claim']} | {row['effect']:+.4f} [{lo:+.4f}, {hi:+.4f}] | {row['n']} | "
                     f"{row['p']:.2g} | {row['p_holm']:.2g} | {row['verdict']} |")  # fmt: skip
    gate = summary["gate"]
    lines += ["", f"gate: {'passed' if gate['passed'] else 'FAILED'} {json.dumps(gate)}"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/long"))
    parser.add_argument("--stage", choices=["tune", *STAGES], default="tune")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), help="override the stage's methods")
    parser.add_argument("--seeds", nargs="+", type=int, default=SEEDS)
    parser.add_argument("--workers", type=int, default=1, help="runs at once (one torch thread each)")
    parser.add_argument("--max-steps", type=int, default=0, help="cut every run to this many steps (CI smoke)")
    parser.add_argument("--max-test", type=int, default=0, help="cut the test set to this many problems (CI smoke)")
    parser.add_argument("--n", type=int, default=32, help="samples per test problem (Avg@n, pass@k up to n)")
    parser.add_argument("--val-n", type=int, default=8, help="samples per validation problem")
    parser.add_argument("--analyse-only", action="store_true")
    parser.add_argument("--results", type=Path, help="also write results.json here (docs/testbed/long/results.json)")
    opts = parser.parse_args(argv)
    opts.out = opts.out.resolve()
    start = time.time()
    if not opts.analyse_only:
        methods = opts.methods or STAGES.get(opts.stage, list(METHODS))
        if opts.stage != "tune" and not opts.max_steps:
            check_recipes_carry_the_tuned_rates(opts.out, methods)
        tb.quiet()
        problems = install_regime(opts.out, opts.n, opts.max_test)
        sizes = ", ".join(f"{name} {len(problems[name])}" for name in ("pool", "validation", "test"))
        print(f"regime: {sizes}; warm-start p on the pool {problems['train_p_mean_warm_start']:.3f}")
        if opts.stage == "tune":
            jobs = tuning_jobs(opts)
        else:
            (opts.out / "runs").mkdir(exist_ok=True)
            jobs = [(m, seed, opts, (), "", True, str(opts.out / "runs" / f"{m}-s{seed}.json"), str(RECIPES))
                    for seed in opts.seeds for m in methods]  # fmt: skip
        tb.run_jobs([job for job in jobs if not Path(job[6]).exists()], opts.workers)
        with open(opts.out / "timing.jsonl", "a") as f:
            f.write(json.dumps({"stage": opts.stage, "seconds": round(time.time() - start), "jobs": len(jobs)}) + "\n")
        print(f"{opts.stage}: {time.time() - start:.0f} s", flush=True)
        if opts.stage == "tune":
            print(json.dumps(tuning_report(opts.out)["chosen"]))
            return 0
    if (opts.out / "runs").is_dir():
        summary = analyse(opts.out, opts.results)
        print((opts.out / "table.md").read_text())
        print("gate passed" if summary["gate"]["passed"] else "gate FAILED")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
