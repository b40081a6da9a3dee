"""Cost of the diagnostics: optimizer-step time with them on / off, against plain TRL, in one process.

Four settings train the same tiny Qwen3 on the same data, interleaved over repetitions so that load from
other processes hits all of them alike:

* ``trl``      -- TRL's GRPOTrainer (reference);
* ``off``      -- AsymGRPOTrainer, ``log_diagnostics=False``;
* ``on``       -- AsymGRPOTrainer, diagnostics on, likelihood displacement off (the default);
* ``on+disp``  -- the same plus ``likelihood_displacement_rollout_steps=1`` (one extra forward over the
  correct rollouts of each rollout step).

A step's time runs between consecutive ``on_step_end`` callbacks (generation, loss, backward, optimizer,
diagnostics, displacement forward); the median over steps after a warm-up, then over repetitions.  Both
wall time and this process's CPU time are reported: on a shared CPU machine other processes inflate wall
time at random, while CPU time (torch on ``--threads`` threads, default 1) counts only this run's work.
Because a few per cent is within the noise of that A/B comparison on a loaded machine, the ``on`` runs
also time the diagnostics code itself (``GroupDiagnostics.on_generation``, ``on_loss_micro_batch`` and
``on_step_end``, wall clock) and report it as a share of the
step: ``1 + share`` is the on/off ratio without the noise.  Target: on / off <= 1.02.

    PYTHONPATH=. python benchmarks/bench_diagnostics.py [--steps 6] [--reps 5] [--hidden 256] [--tokens 64]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch
from transformers import PrinterCallback, TrainerCallback
from trl import GRPOTrainer

from asym_trl import AsymGRPOConfig, AsymGRPOTrainer
from asym_trl.apps.tiny import build_tiny_model, toy_sum_dataset


def digit_first(completions, **kwargs):
    return [float(any(ch.isdigit() for ch in c[-1]["content"][:3])) for c in completions]


class StepTimer(TrainerCallback):
    def __init__(self):
        self.marks = []  # (wall, cpu) at the start of training and at the end of every step

    def _mark(self):
        self.marks.append((time.perf_counter(), time.process_time()))

    def on_step_begin(self, args, state, control, **kwargs):
        if not self.marks:
            self._mark()

    def on_step_end(self, args, state, control, **kwargs):
        self._mark()


DIAGNOSTICS_METHODS = ("on_generation", "on_loss_micro_batch", "on_step_end")  # of trainer.diagnostics


def time_diagnostics(trainer) -> list[float]:
    """Wrap the diagnostics' entry points (``trainer.diagnostics``); the returned list collects their wall times."""
    spent: list[float] = []

    def timed(method):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                spent.append(time.perf_counter() - start)

        return wrapper

    for name in DIAGNOSTICS_METHODS:
        setattr(trainer.diagnostics, name, timed(getattr(trainer.diagnostics, name)))
    return spent


def step_time(setting: str, model_dir: str, out_dir: str, opts) -> tuple[float, float, float]:
    """Median (wall, cpu) seconds per optimizer step of one short run, and diagnostics seconds per step."""
    kwargs = dict(
        output_dir=out_dir,
        use_cpu=not torch.cuda.is_available(),
        bf16=False,
        gradient_checkpointing=False,
        per_device_train_batch_size=opts.batch,
        num_generations=opts.G,
        max_completion_length=opts.tokens,
        generation_kwargs={"min_new_tokens": opts.tokens},  # every rollout has the same length in all settings
        max_steps=opts.steps,
        learning_rate=1e-4,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=0,
        disable_tqdm=True,
    )
    dataset = toy_sum_dataset(opts.batch * opts.steps)
    timer = StepTimer()
    if setting == "trl":
        from trl import GRPOConfig

        trainer = GRPOTrainer(
            model=model_dir, reward_funcs=digit_first, args=GRPOConfig(**kwargs), train_dataset=dataset
        )
    else:
        args = AsymGRPOConfig(
            **kwargs,
            advantage_estimator="grpo",
            log_diagnostics=setting != "off",
            likelihood_displacement_rollout_steps=1 if setting == "on+disp" else 0,
        )
        trainer = AsymGRPOTrainer(model=model_dir, reward_funcs=digit_first, args=args, train_dataset=dataset)
    spent = time_diagnostics(trainer) if setting.startswith("on") else []
    trainer.add_callback(timer)
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    pairs = list(zip(timer.marks, timer.marks[1:], strict=False))[opts.warmup :]
    wall, cpu = (statistics.median(b[i] - a[i] for a, b in pairs) for i in (0, 1))
    return wall, cpu, sum(spent) / opts.steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--G", type=int, default=8)
    opts = parser.parse_args()
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    torch.set_num_threads(opts.threads)
    settings = ("trl", "off", "on", "on+disp")
    times: dict[str, list[tuple[float, float, float]]] = {s: [] for s in settings}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = str(
            build_tiny_model(
                f"{tmp}/model",
                hidden_size=opts.hidden,
                num_hidden_layers=opts.layers,
                num_attention_heads=opts.hidden // 32,
            )
        )
        for rep in range(opts.reps):
            for setting in settings:
                times[setting].append(step_time(setting, model_dir, f"{tmp}/{setting}-{rep}", opts))
                wall, cpu, diag = times[setting][-1]
                print(
                    f"rep {rep} {setting:8s} wall {wall:.4f}  cpu {cpu:.4f}  diagnostics {diag:.4f} s/step", flush=True
                )
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {opts.threads} torch thread(s)"
    print(
        f"\n{device}; hidden {opts.hidden} x {opts.layers} layers, batch {opts.batch}, G {opts.G}, {opts.tokens} tok"
    )
    for i, clock in enumerate(("wall", "cpu")):
        med = {s: statistics.median(t[i] for t in v) for s, v in times.items()}
        print(f"[{clock} time]")
        for s in settings:
            print(
                f"  {s:8s} {med[s]:.4f} s/step   vs trl {med[s] / med['trl']:.3f}   vs off {med[s] / med['off']:.3f}"
            )
        print(f"  diagnostics on / off (target <= 1.02): {med['on'] / med['off']:.3f}")
        extra = med["on+disp"] - med["on"]
        print(f"  displacement forward: {extra:+.4f} s/step = {med['on+disp'] / med['on']:.3f} x the 'on' step")
    for setting in ("on", "on+disp"):
        share = statistics.median(t[2] / t[0] for t in times[setting])
        print(f"[{setting}: time inside the diagnostics code] {share:.2%} of the step -> on/off = {1 + share:.3f}")


if __name__ == "__main__":
    main()
