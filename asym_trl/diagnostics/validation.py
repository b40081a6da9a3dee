"""In-training validation (paper App. E): greedy accuracy every N steps, best-checkpoint selection on MATH-500.

``ValidationCallback(trainer, {"math500": dataset, ...}, eval_steps=10)`` generates one greedy (temperature 0)
completion per validation problem with the live policy every ``eval_steps`` optimizer steps, scores it with the
accuracy reward, and

- logs ``val/<benchmark>`` (accuracy in percent) and ``val/avg`` (their mean, the paper's "Avg. Val Acc") through
  TRL's train metrics, so they appear in the trainer's next log line / W&B (averaged if
  several validations fall in one logging interval; ``validation.jsonl`` has each);
- tracks the step with the highest ``val/<select_on>`` (default ``math500``; the earliest step wins a tie) and saves
  that model to ``<output_dir>/best`` (with ``best.json``), recorded as ``state.best_metric`` /
  ``state.best_model_checkpoint``;
- appends every evaluation to ``<output_dir>/validation.jsonl``.

Several processes each evaluate an equal share of the problems (equal, so that sharded models generate in lockstep)
and the counts are summed over processes, so every process logs the same global numbers.

Generation backend: with ``use_vllm`` the run's own vLLM engine, ``trainer.vllm_generation`` (server or colocate),
after pushing the trainer's current weights through the trainer's sync (TRL's, or our disk sync); otherwise
``model.generate`` under TRL's generation context.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from transformers import TrainerCallback

from ..generation.backends import NON_THINKING, EvalSampling, TransformersGenerator
from ..task.rewards import score_completions
from ..trl_compat import fsdp_helper, greedy_vllm_sampling, last_loaded_step, metrics, set_last_loaded_step

__all__ = ["ValidationCallback", "select_best"]


class ValidationStopped(Exception):
    """A stop signal came during a validation pass: the pass is given up."""


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
        benchmarks: ``{name: dataset}`` with ``prompt``/``solution`` columns
        (:func:`~asym_trl.task.data.load_benchmark`). eval_steps: evaluate when ``global_step % eval_steps == 0``
        (paper: 10). select_on: the benchmark whose accuracy selects the best checkpoint (paper: ``"math500"``).
        max_new_tokens: completion budget (default: the trainer's ``max_completion_length``).
        batch_size: prompts per ``model.generate`` call on each process (vLLM takes each benchmark in one call).
        save_best: save the best model to ``<output_dir>/best``.
        stop_requested: a collective ``() -> bool`` (``GracefulStop.requested``): when it says a stop signal came,
            the validation pass is skipped, or given up between generation batches (its record is not written).
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
        stop_requested: Callable[[], bool] | None = None,
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
        self.stop_requested = stop_requested or (lambda: False)
        self.max_new_tokens = max_new_tokens or trainer.args.max_completion_length
        self.history: list[dict] = []  # {"step": int, "val/<name>": float, ..., "val/avg": float}
        self.best: tuple[int, float] | None = None

    # -- evaluation ---------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def transformers_generator(self, **generator_kwargs):
        """A :class:`~asym_trl.generation.backends.TransformersGenerator` of the live policy, under TRL's generation
        context."""
        from trl.models import unwrap_model_for_generation

        trainer, args = self.trainer, self.trainer.args
        dist = fsdp_helper(trainer)  # FSDP v1 needs its full parameters to generate
        with (
            unwrap_model_for_generation(  # as TRL's own generation: ZeRO-3 gather, gradient checkpointing off
                trainer.model_wrapped,
                trainer.accelerator,
                gather_deepspeed3_params=args.ds3_gather_for_generation,
                gradient_checkpointing_kwargs=args.gradient_checkpointing_kwargs,
            ) as model,
            dist.summon_full_params(trainer.model_wrapped, recurse=False) if dist else contextlib.nullcontext(),
        ):
            yield TransformersGenerator(  # the training prompts' chat-template options (default: non-thinking)
                model,
                trainer.processing_class,
                batch_size=self.batch_size,
                chat_template_kwargs=getattr(args, "chat_template_kwargs", None),
                **generator_kwargs,
            )

    @contextlib.contextmanager
    def _greedy_transformers_generator(self):
        """``generate(prompts, desc) -> completions``: one greedy completion per prompt with ``model.generate``."""
        sampling = EvalSampling(temperature=0.0, max_new_tokens=self.max_new_tokens)
        with self.transformers_generator() as generate:
            yield lambda prompts, desc: [c[0] for c in generate(prompts, 1, sampling, desc=desc)]

    @contextlib.contextmanager
    def _vllm_generator(self):
        """``generate(prompts, desc) -> completions`` with the run's vLLM engine (``trainer.vllm_generation``).

        First the trainer's current weights go to vLLM exactly as before a rollout (same method, same
        ``_last_loaded_step`` tag, so the next rollout at this step does not push them again). TRL's
        ``VLLMGeneration.generate`` reads its sampling settings from attributes: they are made greedy with the
        validation budget for the duration (no structured outputs or ``generation_kwargs``; no log-probs) and put
        back afterwards. Collective like TRL's rollouts: in server mode the main process sends every process's
        prompts in one request and each gets its own completions back; colocated engines generate their own.
        """
        from trl.extras.profiling import profiling_context

        trainer = self.trainer
        generation, tokenizer = trainer.vllm_generation, trainer.processing_class
        if trainer.state.global_step != last_loaded_step(trainer):
            with profiling_context(trainer, "sync_weights"):
                generation.sync_weights()
            set_last_loaded_step(trainer, trainer.state.global_step)
        template_kwargs = getattr(trainer.args, "chat_template_kwargs", None)
        template_kwargs = NON_THINKING if template_kwargs is None else template_kwargs  # as TransformersGenerator

        def generate(prompts, desc):
            texts = [
                tokenizer.apply_chat_template(list(p), tokenize=False, add_generation_prompt=True, **template_kwargs)
                for p in prompts
            ]
            prompt_ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
            with profiling_context(trainer, "vLLM.generate"):
                _, completion_ids, _, _ = generation.generate(prompts=prompt_ids, images=None, num_generations=1)
            return tokenizer.batch_decode(completion_ids, skip_special_tokens=True)

        with greedy_vllm_sampling(generation, self.max_new_tokens):
            yield generate

    def _evaluate_benchmarks(self) -> dict[str, float]:
        """Global greedy accuracy (percent) per benchmark; runs on every process, in the same order."""
        import torch

        accelerator = self.trainer.accelerator
        rank, world = accelerator.process_index, accelerator.num_processes
        scores = {}
        use_vllm = getattr(self.trainer, "use_vllm", False)
        with self._vllm_generator() if use_vllm else self._greedy_transformers_generator() as generate:
            for name, dataset in self.benchmarks.items():
                per_process = math.ceil(len(dataset) / world)
                indices = [rank + world * i for i in range(per_process)]
                valid = [i < len(dataset) for i in indices]
                shard = dataset.select([i if ok else 0 for i, ok in zip(indices, valid, strict=True)])
                prompts, completions = list(shard["prompt"]), []
                chunk = len(shard) if use_vllm else self.batch_size  # one engine call / one generate batch
                for start in range(0, len(shard), chunk):  # the same number of chunks on every process
                    if self.stop_requested():
                        raise ValidationStopped
                    completions += generate(prompts[start : start + chunk], f"validation {name}")
                rewards, _ = score_completions(completions, shard["solution"])
                correct = sum(r == 1.0 for r, ok in zip(rewards, valid, strict=True) if ok)
                counts = torch.tensor([float(correct), float(sum(valid))], device=accelerator.device)
                total_correct, total = accelerator.gather(counts).view(-1, 2).sum(dim=0).tolist()
                scores[name] = 100.0 * total_correct / total
        return scores

    # -- callback -------------------------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, **kwargs):
        """On resume, the best so far comes back from the checkpoint's trainer state, so a worse model cannot
        overwrite ``best/``."""
        if state.best_global_step is not None and state.best_metric is not None and state.best_model_checkpoint:
            if Path(state.best_model_checkpoint) == Path(args.output_dir) / "best":
                self.best = (state.best_global_step, state.best_metric)
        return control

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.eval_steps == 0 and not self.stop_requested():
            try:
                self.record(args, state, {"step": state.global_step, **self.evaluate()})
            except ValidationStopped:
                pass  # the run stops at the next exact checkpoint; this step's validation is not recorded
        return control

    def evaluate(self) -> dict[str, float]:
        """``val/<benchmark>`` (greedy accuracy in percent) and their mean ``val/avg``."""
        scores = {f"val/{name}": score for name, score in self._evaluate_benchmarks().items()}
        return {**scores, "val/avg": sum(scores.values()) / len(scores)}

    def record(self, args, state, record: dict) -> None:
        """Log through TRL's train metrics, track and save the best model, append to ``validation.jsonl``."""
        self.history.append(record)
        train_metrics = metrics(self.trainer, "train")
        for key, value in record.items():
            if key != "step":
                train_metrics[key].append(value)

        # the best so far (restored on resume) against this step: the same as selecting over the whole history
        best = select_best([*([self.best] if self.best else []), (state.global_step, record[f"val/{self.select_on}"])])
        if best is not None and best != self.best:
            self.best = best
            self._save_best(args, state, record)
        if state.is_world_process_zero:
            output_dir = Path(args.output_dir)
            output_dir.mkdir(parents=True, exist_ok=True)
            with open(output_dir / "validation.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

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
