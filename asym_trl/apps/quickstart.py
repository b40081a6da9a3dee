"""The README's main job: an offline CPU run in which AsymGRPO visibly improves a small model.

What it does, in order (nothing is downloaded):

1. **Task.** "What is the last digit of a + b?" for two-digit ``a, b``, answered with one worked step
   ("7 + 8 = 15, so 5"); the reward is 1 when the final digit is right (binary, verifiable).  The
   8100 problems are split once: 500 held out for evaluation, never trained on.
2. **Warm start.** A tiny Qwen3 (~95k parameters, local tokenizer) is trained for 200 steps with TRL's
   ``SFTTrainer`` on worked answers from a *noisy teacher* (half of them end with a wrong final digit),
   so that it is partly right: prompt accuracies spread over 0 < p < 1, which is where group-relative
   advantages carry signal.  The warm-started model is
   cached (``--cache-dir``) and reused by later runs with the same settings.
3. **RL.** ``AsymGRPOTrainer`` with the paper's AsymGRPO (beta_pos=0.9, beta_neg=0.4): 100 steps of
   16 prompts x G=8 rollouts at temperature 1, AdamW lr 3e-4, token-level loss, no KL, one update per
   generation (on-policy).
4. **Held-out accuracy before -> after**: greedy accuracy and the mean accuracy of 8 samples at
   temperature 1, plus the sampled policy's token entropy (overall, on correct and on incorrect
   rollouts) and the shares of all-solved / none-solved prompts.  ``summary.json``, the trainer's
   log history (``trainer_state.json``: TRL's metrics, the paper's diagnostics of ``docs/diagnostics.md``
   and a held-out accuracy curve every 20 steps), the model, ``quickstart.png`` (accuracy and entropy,
   before vs after) and ``diagnostics.png`` (``asym-trl plot``) are written to ``--output-dir``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..diagnostics.plotting import plot_quickstart, plot_runs
from ..errors import OneLineParser
from ..generation.backends import EvalSampling, TransformersGenerator
from ..lifecycle.quiet_logs import LIBRARY_DEPRECATIONS
from ..task.evaluation import evaluate_policy
from .tiny import build_tiny_model, cpu_run_kwargs, last_digit_reward, last_digit_splits

# torch, transformers, TRL and the trainer are imported inside the functions that run, not for --help.
__all__ = [
    "QuickstartSettings",
    "warm_started_model",
    "evaluate_heldout",
    "quiet_console",
    "run_quickstart",
    "train_rl",
    "warm_start",
]

# Deprecations raised by TRL's own defaults against this transformers (gradient_checkpointing ->
# activation_checkpointing): nothing a quickstart user can change.


def quiet_console() -> None:
    """The quickstart's console: its own lines and one bar per phase, not the libraries' (dataset tokenisation,
    "Loading weights" / "Writing model shards" bars, deprecations of TRL's defaults).  Called by the app only."""
    import datasets
    from transformers.utils import logging as hf_logging

    datasets.disable_progress_bar()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=LIBRARY_DEPRECATIONS, category=FutureWarning)


@dataclass
class QuickstartSettings:
    """Every knob of the quickstart; the defaults are the README's run."""

    seed: int = 0
    num_test: int = 500  # held-out problems
    # warm start (SFT); the cache key is built from these
    sft_steps: int = 200
    sft_batch_size: int = 64
    sft_learning_rate: float = 3e-3
    sft_noise: float = 0.5  # share of SFT demonstrations with a wrong final digit (a noisy teacher)
    # RL
    advantage_estimator: str = "asym"
    beta_pos: float | None = None  # None: the estimator's default (asym: 0.9 / 0.4)
    beta_neg: float | None = None
    rl_steps: int = 100
    prompts_per_step: int = 16
    num_generations: int = 8
    rl_learning_rate: float = 3e-4
    max_completion_length: int = 16
    logging_steps: int = 5
    displacement_every: int = 5  # log-prob gain of correct rollouts after an update (one extra forward)
    # evaluation
    eval_samples: int = 8
    curve_every: int = 20  # held-out accuracy curve during RL (on the first `curve_problems` held-out problems)
    curve_problems: int = 200
    trainer_overrides: dict = field(default_factory=dict)  # extra AsymGRPOConfig keys (experiments)

    def sft_key(self) -> str:
        fields = (
            self.seed,
            self.num_test,
            self.sft_steps,
            self.sft_batch_size,
            self.sft_learning_rate,
            self.sft_noise,
        )
        return hashlib.sha1(repr(fields).encode()).hexdigest()[:10]


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "asym_trl"


def warm_start(settings: QuickstartSettings, cache_dir: str | Path, train_dataset) -> Path:
    """SFT the tiny model on worked answers (TRL ``SFTTrainer``); cached under ``cache_dir`` by settings."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback
    from trl import SFTConfig, SFTTrainer

    from .quickstart_callbacks import PhaseProgress

    out = Path(cache_dir) / f"sft-{settings.sft_key()}"
    if (out / "config.json").exists():
        return out
    tmp = out.with_name(out.name + ".tmp")
    base = build_tiny_model(Path(cache_dir) / f"tiny-seed{settings.seed}", seed=settings.seed)
    tokenizer = AutoTokenizer.from_pretrained(base)
    args = SFTConfig(
        output_dir=str(tmp),
        max_steps=settings.sft_steps,
        per_device_train_batch_size=settings.sft_batch_size,
        learning_rate=settings.sft_learning_rate,
        lr_scheduler_type="constant",
        logging_steps=max(1, settings.sft_steps // 6),
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=False,
        seed=settings.seed,
        disable_tqdm=True,
    )
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(base),
        args=args,
        train_dataset=train_dataset.select_columns(["prompt", "completion"]),
        processing_class=tokenizer,
    )
    trainer.remove_callback(PrinterCallback)  # no per-step dicts on stdout
    trainer.add_callback(PhaseProgress("warm start (SFT)"))
    print(f"warm start: SFT of the tiny model, {settings.sft_steps} steps (cached in {out})", flush=True)
    trainer.train()
    trainer.save_model(str(tmp))
    trainer.state.save_to_json(str(tmp / "sft_trainer_state.json"))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)  # complete or absent: an interrupted run never leaves a half-written cache entry
    return out


def warm_started_model(link: str | Path | None = None, cache_dir: str | Path | None = None) -> Path:
    """The quickstart's warm start: the tiny Qwen3 after its SFT on the last-digit task (built once, about a minute
    on 2 cores, then cached; the same model ``make quickstart`` trains). It solves the task part of the time, so
    group-relative advantages have signal: the README's example and ``recipes/cpu/quickstart.yaml`` train it.
    ``link``: also make that path a symbolic link to it (e.g. ``runs/warm-start``, the recipe's model)."""
    settings = QuickstartSettings()
    train, _ = last_digit_splits(settings.num_test, settings.seed, noise=settings.sft_noise)
    model = warm_start(settings, cache_dir or default_cache_dir(), train)
    if link is not None:
        link = Path(link)
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(model.resolve())
    return model


def evaluate_heldout(
    generate: TransformersGenerator, dataset, settings: QuickstartSettings, *, num_samples: int, seed: int
):
    """:func:`~asym_trl.task.evaluation.evaluate_policy` of the task: ``num_samples`` samples at temperature 1 (as the
    RL rollouts) and greedy; ``generate`` takes all prompts in one batch (``batch_size=len(dataset)``)."""
    sampling = EvalSampling(temperature=1.0, top_p=1.0, max_new_tokens=settings.max_completion_length, seed=seed)
    return evaluate_policy(generate, dataset, k=num_samples, sampling=sampling, reward_func=last_digit_reward)


def train_rl(
    settings: QuickstartSettings,
    model_dir: str | Path,
    train_dataset,
    output_dir: str | Path,
    heldout=None,
    callbacks=(),
):
    """Train ``model_dir`` with AsymGRPOTrainer on the task, with the held-out curve on ``heldout`` (every
    ``settings.curve_every`` steps; none if either is unset) and extra ``callbacks``; returns the trainer (model
    trained in place)."""
    from transformers import PrinterCallback

    from ..config import AsymGRPOConfig
    from ..trainer import AsymGRPOTrainer
    from .quickstart_callbacks import HeldOutCallback, PhaseProgress

    config = dict(
        **cpu_run_kwargs(seed=settings.seed, logging_steps=settings.logging_steps),
        output_dir=str(output_dir),
        advantage_estimator=settings.advantage_estimator,
        beta_pos=settings.beta_pos,
        beta_neg=settings.beta_neg,
        learning_rate=settings.rl_learning_rate,
        lr_scheduler_type="constant",
        per_device_train_batch_size=settings.prompts_per_step * settings.num_generations,
        num_generations=settings.num_generations,
        max_completion_length=settings.max_completion_length,
        max_steps=settings.rl_steps,
        likelihood_displacement_rollout_steps=settings.displacement_every,
        disable_tqdm=True,
    )
    args = AsymGRPOConfig(**{**config, **settings.trainer_overrides})
    trainer = AsymGRPOTrainer(
        model=str(model_dir),
        reward_funcs=last_digit_reward,
        args=args,
        train_dataset=train_dataset.remove_columns("completion"),
    )
    trainer.remove_callback(PrinterCallback)  # metrics go to the log history; progress to one bar and the curve
    trainer.add_callback(PhaseProgress("RL (AsymGRPO)"))  # before the curve: the bar shows the step it is printed at
    if heldout is not None and settings.curve_every:

        def curve(generate, dataset, step: int) -> dict:
            return evaluate_heldout(generate, dataset, settings, num_samples=4, seed=step)

        trainer.add_callback(HeldOutCallback(trainer, heldout, curve, eval_steps=settings.curve_every))
    for callback in callbacks:
        trainer.add_callback(callback)
    trainer.train()
    return trainer


def run_quickstart(settings: QuickstartSettings, output_dir: str | Path, cache_dir: str | Path | None = None) -> dict:
    """Warm start (cached), evaluate, train with AsymGRPO, evaluate again; write and return the summary."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(settings.seed)
    train, test = last_digit_splits(num_test=settings.num_test, seed=settings.seed, noise=settings.sft_noise)
    start = time.time()
    sft_dir = warm_start(settings, default_cache_dir() if cache_dir is None else cache_dir, train)
    sft_seconds = time.time() - start

    tokenizer = AutoTokenizer.from_pretrained(sft_dir)
    model = AutoModelForCausalLM.from_pretrained(sft_dir)
    eval_kwargs = dict(num_samples=settings.eval_samples, seed=0)
    before = evaluate_heldout(
        TransformersGenerator(model, tokenizer, batch_size=len(test), token_entropy=True),
        test,
        settings,
        **eval_kwargs,
    )
    print(
        f"after SFT: held-out accuracy sampled {before['sampled_accuracy']:.3f}, "
        f"greedy {before['greedy_accuracy']:.3f}; "
        f"AsymGRPO ({settings.advantage_estimator}) for {settings.rl_steps} steps",
        flush=True,
    )
    start = time.time()
    curve = test.select(range(min(settings.curve_problems, len(test))))
    trainer = train_rl(settings, sft_dir, train, output_dir, heldout=curve)
    rl_seconds = time.time() - start
    after = evaluate_heldout(
        TransformersGenerator(trainer.model, tokenizer, batch_size=len(test), token_entropy=True),
        test,
        settings,
        **eval_kwargs,
    )

    trainer.save_model()
    trainer.state.save_to_json(str(output_dir / "trainer_state.json"))
    summary = {
        "settings": asdict(settings),
        "sft_model": str(sft_dir),
        "sft_seconds": round(sft_seconds, 1),
        "rl_seconds": round(rl_seconds, 1),
        "before": before,
        "after": after,
    }
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    plot_quickstart(output_dir)
    plot_runs(output_dir, labels=[f"quickstart ({settings.advantage_estimator})"])  # -> diagnostics.png
    return summary


def format_summary(summary: dict) -> str:
    before, after = summary["before"], summary["after"]
    rows = [
        ("greedy accuracy", "greedy_accuracy"),
        ("sampled accuracy (T=1)", "sampled_accuracy"),
        ("all-solved prompts", "all_solved"),
        ("none-solved prompts", "none_solved"),
        ("token entropy", "entropy"),
        ("  on correct rollouts", "entropy_correct"),
        ("  on incorrect rollouts", "entropy_incorrect"),
    ]
    n = summary["settings"]["num_test"]
    lines = [f"held-out problems ({n}, never trained on)   after SFT -> after AsymGRPO"]
    lines += [f"  {label:<40} {before[key]:6.3f} -> {after[key]:6.3f}" for label, key in rows]
    lines.append(f"  (SFT warm start {summary['sft_seconds']:.0f} s, RL {summary['rl_seconds']:.0f} s)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    defaults = QuickstartSettings()
    parser = OneLineParser(
        prog="asym-trl quickstart", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output-dir", default="runs/quickstart")
    parser.add_argument("--cache-dir", default=None, help=f"warm-start cache (default {default_cache_dir()})")
    parser.add_argument("--advantage-estimator", default=defaults.advantage_estimator)
    parser.add_argument("--rl-steps", type=int, default=defaults.rl_steps)
    parser.add_argument("--sft-steps", type=int, default=defaults.sft_steps)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument(
        "--num-threads", type=int, default=1, help="torch CPU threads (1: the tiny model gains nothing from more)"
    )
    opts = parser.parse_args(argv)
    import torch

    quiet_console()
    torch.set_num_threads(opts.num_threads)
    settings = QuickstartSettings(
        seed=opts.seed, sft_steps=opts.sft_steps, rl_steps=opts.rl_steps, advantage_estimator=opts.advantage_estimator
    )
    summary = run_quickstart(settings, opts.output_dir, opts.cache_dir)
    print(format_summary(summary))
    print(
        f"run written to {opts.output_dir}: summary.json, trainer_state.json (log history with the diagnostics), "
        "quickstart.png, diagnostics.png, the model"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
