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
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import PrinterCallback, TrainerCallback

from .config import AsymGRPOConfig
from .plotting import plot_quickstart, plot_runs
from .tiny import build_tiny_model, cpu_run_kwargs, last_digit_reward, last_digit_splits
from .trainer import AsymGRPOTrainer

__all__ = ["HeldOutCallback", "QuickstartSettings", "evaluate_policy", "run_quickstart", "train_rl", "warm_start"]


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
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

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
    print(f"warm start: SFT of the tiny model, {settings.sft_steps} steps (cached in {out})", flush=True)
    trainer.train()
    trainer.save_model(str(tmp))
    trainer.state.save_to_json(str(tmp / "sft_trainer_state.json"))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)  # complete or absent: an interrupted run never leaves a half-written cache entry
    return out


@torch.no_grad()
def evaluate_policy(
    model,
    tokenizer,
    dataset,
    *,
    num_samples: int = 8,
    max_new_tokens: int = 16,
    seed: int = 0,
    reward_func=last_digit_reward,
):
    """Held-out metrics of a policy on ``dataset`` (``prompt`` + ``solution`` columns), scored by ``reward_func``
    (TRL signature; a reward >= 1 is a success, None a failure).

    Returns a dict: ``greedy_accuracy``; over ``num_samples`` samples per prompt at temperature 1 (as the
    RL rollouts): ``sampled_accuracy``, ``all_solved`` / ``none_solved`` (share of prompts with p = 1 / 0),
    ``entropy`` (mean token entropy of the policy along its samples, eos included, as TRL measures it)
    and the same mean over ``entropy_correct`` / ``entropy_incorrect`` rollouts only.
    """
    was_training, side = model.training, tokenizer.padding_side
    model.eval()
    tokenizer.padding_side = "left"
    try:
        texts = [
            tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in dataset["prompt"]
        ]
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        prompt_len = enc["input_ids"].shape[1]
        gen = dict(
            max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id
        )
        greedy = model.generate(**enc, do_sample=False, **gen)
        greedy_texts = tokenizer.batch_decode(greedy[:, prompt_len:], skip_special_tokens=True)
        greedy_ok = [r is not None and r >= 1 for r in reward_func(greedy_texts, solution=dataset["solution"])]

        torch.manual_seed(seed)
        rep = {k: v.repeat_interleave(num_samples, dim=0) for k, v in enc.items()}
        out = model.generate(
            **rep,
            do_sample=True,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            output_logits=True,
            return_dict_in_generate=True,
            **gen,
        )
        completion = out.sequences[:, prompt_len:]
        # completion mask: every token up to and including the first eos
        is_eos = completion == tokenizer.eos_token_id
        after_eos = (is_eos.cumsum(dim=1) - is_eos.long()) > 0
        mask = (~after_eos).float()
        logp = torch.stack(out.logits, dim=1).float().log_softmax(-1)
        token_entropy = -(logp.exp() * logp).sum(-1)
        rollout_entropy = (token_entropy * mask).sum(1)
        rollout_tokens = mask.sum(1)
        solutions = [s for s in dataset["solution"] for _ in range(num_samples)]
        sampled_texts = tokenizer.batch_decode(completion, skip_special_tokens=True)
        correct = torch.tensor([r is not None and r >= 1 for r in reward_func(sampled_texts, solution=solutions)])
        p = correct.view(-1, num_samples).float().mean(1)

        def mean_entropy(select):
            return float(rollout_entropy[select].sum() / rollout_tokens[select].sum().clamp(min=1))

        return {
            "greedy_accuracy": sum(greedy_ok) / len(greedy_ok),
            "sampled_accuracy": float(correct.float().mean()),
            "all_solved": float((p == 1).float().mean()),
            "none_solved": float((p == 0).float().mean()),
            "entropy": mean_entropy(torch.ones_like(correct)),
            "entropy_correct": mean_entropy(correct) if correct.any() else float("nan"),
            "entropy_incorrect": mean_entropy(~correct) if (~correct).any() else float("nan"),
        }
    finally:
        model.train(was_training)
        tokenizer.padding_side = side


class HeldOutCallback(TrainerCallback):
    """Every ``every`` steps, evaluate the policy on held-out problems and add ``heldout/*`` to the log history."""

    def __init__(self, dataset, every: int, num_samples: int = 4, max_new_tokens: int = 16, verbose: bool = True):
        self.dataset, self.every, self.num_samples, self.max_new_tokens = dataset, every, num_samples, max_new_tokens
        self.verbose = verbose

    def on_step_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        if self.every and state.global_step % self.every == 0:
            metrics = evaluate_policy(
                model,
                processing_class,
                self.dataset,
                num_samples=self.num_samples,
                max_new_tokens=self.max_new_tokens,
                seed=state.global_step,
            )
            state.log_history.append({"step": state.global_step, **{f"heldout/{k}": v for k, v in metrics.items()}})
            if self.verbose:
                print(
                    f"  RL step {state.global_step:4d}: held-out accuracy sampled {metrics['sampled_accuracy']:.3f}, "
                    f"greedy {metrics['greedy_accuracy']:.3f}; entropy {metrics['entropy']:.3f}",
                    flush=True,
                )


def train_rl(
    settings: QuickstartSettings, model_dir: str | Path, train_dataset, output_dir: str | Path, callbacks=None
):
    """Train ``model_dir`` with AsymGRPOTrainer on the task; returns the trainer (model trained in place)."""
    args = AsymGRPOConfig(
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
        likelihood_displacement_steps=settings.displacement_every,
        disable_tqdm=True,
    )
    trainer = AsymGRPOTrainer(
        model=str(model_dir),
        reward_funcs=last_digit_reward,
        args=args,
        train_dataset=train_dataset.remove_columns("completion"),
        callbacks=callbacks,
    )
    trainer.remove_callback(PrinterCallback)  # progress comes from HeldOutCallback; metrics go to the log history
    trainer.train()
    return trainer


def run_quickstart(settings: QuickstartSettings, output_dir: str | Path, cache_dir: str | Path | None = None) -> dict:
    """Warm start (cached), evaluate, train with AsymGRPO, evaluate again; write and return the summary."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(settings.seed)
    train, test = last_digit_splits(num_test=settings.num_test, seed=settings.seed, noise=settings.sft_noise)
    start = time.time()
    sft_dir = warm_start(settings, default_cache_dir() if cache_dir is None else cache_dir, train)
    sft_seconds = time.time() - start

    tokenizer = AutoTokenizer.from_pretrained(sft_dir)
    eval_kwargs = dict(num_samples=settings.eval_samples, max_new_tokens=settings.max_completion_length)
    before = evaluate_policy(AutoModelForCausalLM.from_pretrained(sft_dir), tokenizer, test, **eval_kwargs)
    print(
        f"after SFT: held-out accuracy sampled {before['sampled_accuracy']:.3f}, "
        f"greedy {before['greedy_accuracy']:.3f}; "
        f"AsymGRPO ({settings.advantage_estimator}) for {settings.rl_steps} steps",
        flush=True,
    )
    start = time.time()
    curve = HeldOutCallback(
        test.select(range(min(settings.curve_problems, len(test)))),
        every=settings.curve_every,
        max_new_tokens=settings.max_completion_length,
    )
    trainer = train_rl(settings, sft_dir, train, output_dir, callbacks=[curve])
    rl_seconds = time.time() - start
    after = evaluate_policy(trainer.model, tokenizer, test, **eval_kwargs)

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
    parser = argparse.ArgumentParser(
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
