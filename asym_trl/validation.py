"""In-training validation (paper App. E): greedy accuracy every N steps, best-checkpoint selection on MATH-500.

``ValidationCallback(trainer, {"math500": dataset, ...}, eval_steps=10)`` generates one greedy (temperature 0)
completion per validation problem with the live policy every ``eval_steps`` optimizer steps, scores it with the
accuracy reward, and

- logs ``val/<benchmark>`` (accuracy in percent) and ``val/avg`` (their mean, the paper's "Avg. Val Acc") through
  TRL's metrics (``trainer._metrics["train"]``), so they appear in the trainer's next log line / W&B;
- tracks the step with the highest ``val/<select_on>`` (default ``math500``; the earliest step wins a tie) and saves
  that model to ``<output_dir>/best`` (with ``best.json``), recorded as ``state.best_metric`` /
  ``state.best_model_checkpoint``;
- appends every evaluation to ``<output_dir>/validation.jsonl``.

Several processes each evaluate an equal share of the problems (equal, so that sharded models generate in lockstep)
and the counts are summed over processes, so every process logs the same global numbers.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from transformers import TrainerCallback

from .evaluation import EvalSampling, TransformersGenerator
from .rewards import score_completions

__all__ = ["ValidationCallback", "select_best"]


def select_best(history: Sequence[tuple[int, float]]) -> tuple[int, float] | None:
    """The ``(step, score)`` with the highest score, the earliest one on ties; ``None`` if there is none.

    NaN scores (nothing could be evaluated) never win.
    """
    best = None
    for step, score in history:
        if not math.isnan(score) and (best is None or score > best[1]):
            best = (step, score)
    return best


class ValidationCallback(TrainerCallback):
    """Greedy validation every ``eval_steps`` steps with best-checkpoint tracking (see the module docstring).

    Args:
        trainer: the (AsymGRPO/GRPO) trainer being trained; its model, tokenizer and accelerator are used.
        benchmarks: ``{name: dataset}`` with ``prompt``/``solution`` columns (:func:`~asym_trl.data.load_benchmark`).
        eval_steps: evaluate when ``global_step % eval_steps == 0`` (paper: 10).
        select_on: the benchmark whose accuracy selects the best checkpoint (paper: ``"math500"``).
        max_new_tokens: completion budget (default: the trainer's ``max_completion_length``).
        batch_size: prompts per ``generate`` call on each process.
        save_best: save the best model to ``<output_dir>/best``.
    """

    def __init__(
        self,
        trainer,
        benchmarks: Mapping[str, object],
        *,
        eval_steps: int = 10,
        select_on: str = "math500",
        max_new_tokens: int | None = None,
        batch_size: int = 16,
        save_best: bool = True,
    ):
        if not benchmarks:
            raise ValueError("ValidationCallback needs at least one validation benchmark")
        if select_on not in benchmarks:
            raise ValueError(f"select_on={select_on!r} is not one of the validation benchmarks {list(benchmarks)}")
        if eval_steps < 1:
            raise ValueError(f"eval_steps must be >= 1, got {eval_steps}")
        for name, dataset in benchmarks.items():
            if len(dataset) == 0:
                raise ValueError(f"validation benchmark {name!r} is empty")
        self.trainer = trainer
        self.benchmarks = dict(benchmarks)
        self.eval_steps, self.select_on, self.batch_size, self.save_best = eval_steps, select_on, batch_size, save_best
        self.max_new_tokens = max_new_tokens or trainer.args.max_completion_length
        self.history: list[dict] = []  # {"step": int, "val/<name>": float, ..., "val/avg": float}
        self.best: tuple[int, float] | None = None

    # -- evaluation ---------------------------------------------------------------------------------------------
    def _evaluate_benchmarks(self) -> dict[str, float]:
        """Global greedy accuracy (percent) per benchmark; runs on every process, in the same order."""
        import torch
        from trl.models import unwrap_model_for_generation

        accelerator = self.trainer.accelerator
        rank, world = accelerator.process_index, accelerator.num_processes
        sampling = EvalSampling(temperature=0.0, max_new_tokens=self.max_new_tokens)
        scores = {}
        with unwrap_model_for_generation(self.trainer.model_wrapped, accelerator) as model:
            generate = TransformersGenerator(model, self.trainer.processing_class, batch_size=self.batch_size)
            for name, dataset in self.benchmarks.items():
                per_process = math.ceil(len(dataset) / world)
                indices = [rank + world * i for i in range(per_process)]
                valid = [i < len(dataset) for i in indices]
                shard = dataset.select([i if ok else 0 for i, ok in zip(indices, valid, strict=True)])
                completions = [c[0] for c in generate(shard["prompt"], 1, sampling, desc=f"validation {name}")]
                rewards, _ = score_completions(completions, shard["solution"])
                correct = sum(r == 1.0 for r, ok in zip(rewards, valid, strict=True) if ok)
                counts = torch.tensor([float(correct), float(sum(valid))], device=accelerator.device)
                total_correct, total = accelerator.gather(counts).view(-1, 2).sum(dim=0).tolist()
                scores[name] = 100.0 * total_correct / total
        return scores

    # -- callback -------------------------------------------------------------------------------------------------
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.eval_steps != 0:
            return control
        scores = self._evaluate_benchmarks()
        record = {"step": state.global_step, **{f"val/{name}": score for name, score in scores.items()}}
        record["val/avg"] = sum(scores.values()) / len(scores)
        self.history.append(record)
        metrics = self.trainer._metrics["train"]
        for key, value in record.items():
            if key != "step":
                metrics[key].append(value)

        best = select_best([(r["step"], r[f"val/{self.select_on}"]) for r in self.history])
        if best is not None and best != self.best:
            self.best = best
            self._save_best(args, state, record)
        if state.is_world_process_zero:
            output_dir = Path(args.output_dir)
            output_dir.mkdir(parents=True, exist_ok=True)
            with open(output_dir / "validation.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
        return control

    def _save_best(self, args, state, record: dict) -> None:
        best_dir = Path(args.output_dir) / "best"
        state.best_metric = self.best[1]
        state.best_global_step = self.best[0]
        state.best_model_checkpoint = str(best_dir)
        if not self.save_best:
            return
        self.trainer.save_model(str(best_dir))  # every process calls it (sharded models), the main one writes
        if state.is_world_process_zero:
            summary = {"select_on": f"val/{self.select_on}", "score": self.best[1], **record}
            (best_dir / "best.json").write_text(json.dumps(summary, indent=2) + "\n")
