"""Every access asym_trl makes to TRL 1.16's private API, in one module (pinned by ``tests/test_trl_contract.py``).

TRL has no hook for advantages or per-token loss inputs (upstream requests trl#4525, #7291), so some private
methods and attributes must be used.  They are used here only, and turned into plain hooks and functions:

* :class:`GRPOHooks` overrides five private ``GRPOTrainer`` methods and calls public hooks that
  :class:`asym_trl.AsymGRPOTrainer` implements:

  - ``_calculate_rewards`` -- keeps the rewards it returns (already gathered from all processes, global order);
  - ``_generate_and_score_completions`` -- hands TRL's batch and those rewards to :meth:`GRPOHooks.rescore`;
    :meth:`GRPOHooks.generation_batch` may run that (:meth:`GRPOHooks.trl_generate`) more than once;
  - ``_compute_loss`` / ``_get_per_token_logps_and_entropies`` -- :meth:`GRPOHooks.micro_batch_loss` may run
    TRL's loss (:meth:`GRPOHooks.trl_loss`) on a subset of the micro-batch's rows; when
    :meth:`GRPOHooks.wants_token_stats`, the loss runs inside a :class:`TokenStats` scope that records the per-token
    log-probs and entropies TRL computes for it (and may reshape the advantages per token before TRL reads them);
    :meth:`GRPOHooks.finish_loss` then sees them.  Otherwise TRL's loss runs untouched;
  - ``_prepare_inputs`` -- when TRL has split a new training generation batch into its buffer of micro-batches
    (``_buffered_inputs``), :meth:`GRPOHooks.arrange_micro_batches` may move rows between them.

* attributes: the metrics buffer ``_metrics``, the completions table ``_logs``, the entropy-bonus switch
  ``_entropy_bonus_enabled`` (:func:`entropy_bonus_enabled`), the micro-step counter ``_step``, the buffer of
  micro-batches ``_buffered_inputs``, the vLLM sync tag
  ``_last_loaded_step``, the FSDP helper ``_dist``; the Trainer's checkpoint writer ``_save_checkpoint``
  (:func:`save_checkpoint`, for the crash checkpoint); ``VLLMGeneration`` (its ``_init_vllm`` / ``_iter_named_params``
  and sampling attributes) and the module-level ``trl.trainer.grpo_trainer.VLLMGeneration`` that
  ``GRPOTrainer.__init__`` instantiates.

* async GRPO (``trl.experimental.async_grpo``, for :mod:`asym_trl.async_trainer`): the rollout loop class
  ``_AsyncRolloutLoop`` (its ``_score_group`` calls :meth:`AsyncLoopHooks.rescore_group`, its ``_push_metrics`` is
  ``push_metrics``), the worker's ``_loop_cls`` / ``_loop_kwargs`` (:func:`set_rollout_loop`), and two module-level
  names ``AsyncGRPOTrainer.__init__`` calls that assume a GPU trainer with vLLM (:func:`async_trainer_shims`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from trl import GRPOTrainer
from trl.generation.vllm_generation import VLLMGeneration

__all__ = [
    "MODEL_INPUT_KEYS",
    "TRL_VERSION",
    "GRPOHooks",
    "async_loop_hooks",
    "async_trainer_shims",
    "set_rollout_loop",
    "TokenStats",
    "VLLMGenerationHooks",
    "disable_entropy_bonus",
    "entropy_bonus_enabled",
    "loss_normaliser",
    "fsdp_helper",
    "greedy_vllm_sampling",
    "last_loaded_step",
    "metrics",
    "micro_step",
    "pad_token_id",
    "replace_logged_advantages",
    "save_checkpoint",
    "set_last_loaded_step",
    "swap_vllm_generation",
]

TRL_VERSION = "1.16.0"
# Extra model inputs TRL's loss forwards to _get_per_token_logps_and_entropies (multimodal models).
MODEL_INPUT_KEYS = (
    "pixel_values",
    "image_grid_thw",
    "num_images",
    "pixel_attention_mask",
    "spatial_shapes",
    "num_tiles",
    "image_sizes",
    "token_type_ids",
    "mm_token_type_ids",
    "image_position_ids",
)


class TokenStats:
    """The per-token log-probs and entropies of the policy that TRL computes inside one ``_compute_loss`` call.

    ``inputs`` is a shallow copy of the micro-batch that TRL's loss reads (the buffered batch is reused when
    ``num_iterations > 1``); ``shape_advantages(advantages, entropies)``, when given, replaces its advantages by
    per-token ones as soon as the entropies exist, before TRL's loss reads them.
    """

    def __init__(self, inputs: dict, shape_advantages: Callable | None = None):
        self.inputs = dict(inputs)
        self.logps: torch.Tensor | None = None
        self.entropies: torch.Tensor | None = None
        self._shape_advantages = shape_advantages

    def record(self, logps: torch.Tensor, entropies: torch.Tensor) -> None:
        self.logps, self.entropies = logps, entropies
        if self._shape_advantages is not None:
            self.inputs["advantages"] = self._shape_advantages(self.inputs["advantages"], entropies)


class GRPOHooks(GRPOTrainer):
    """``GRPOTrainer`` whose private scoring and loss steps call the public hooks below (see the module doc)."""

    _token_stats: TokenStats | None = None  # the scope of the loss being computed, if any

    # -- hooks ----------------------------------------------------------------------------------------------------
    def rescore(self, output: dict, inputs: list, rewards_per_func: torch.Tensor) -> dict:
        """TRL's scored batch (this process's slice) and the gathered ``(N, num_funcs)`` rewards of all processes."""
        return output

    def wants_token_stats(self) -> bool:
        return False

    def shape_token_advantages(self) -> Callable | None:
        """``fn(advantages, entropies) -> per-token advantages`` applied inside the loss, or None."""
        return None

    def finish_loss(self, loss: torch.Tensor, inputs: dict, stats: TokenStats) -> torch.Tensor:
        return loss

    def micro_batch_loss(self, inputs: dict, loss_fn: Callable[[dict], torch.Tensor]) -> torch.Tensor:
        """The loss of one micro-batch; ``loss_fn(batch)`` is :meth:`trl_loss` (it may get a subset of the rows)."""
        return loss_fn(inputs)

    def trl_loss(self, model, inputs: dict) -> torch.Tensor:
        """TRL's loss of ``inputs``, inside a :class:`TokenStats` scope when :meth:`wants_token_stats`."""
        if not self.wants_token_stats():
            return super()._compute_loss(model, inputs)
        with self._token_scope(inputs) as stats:
            loss = super()._compute_loss(model, stats.inputs)
        return self.finish_loss(loss, inputs, stats)

    def policy_logps(self, model, batch: dict) -> torch.Tensor:
        """Per-token log-probs of ``batch``'s completions under ``model`` (TRL's forward, outside any loss scope)."""
        completion_ids = batch["completion_ids"]
        logps, _ = self._get_per_token_logps_and_entropies(
            model,
            torch.cat([batch["prompt_ids"], completion_ids], dim=1),
            torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1),
            completion_ids.size(1),
            **{key: batch.get(key) for key in MODEL_INPUT_KEYS},
        )[:2]
        return logps

    # -- TRL's private methods ------------------------------------------------------------------------------------
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._gathered_rewards_per_func = rewards_per_func
        return rewards_per_func

    def _generate_and_score_completions(self, inputs):
        return self.generation_batch(inputs, self.trl_generate)

    def generation_batch(self, inputs: list, generate_fn: Callable[[list], dict]) -> dict:
        """The scored batch of ``inputs``; ``generate_fn(inputs)`` is :meth:`trl_generate` (it may be called again)."""
        return generate_fn(inputs)

    def trl_generate(self, inputs: list) -> dict:
        """TRL's generated and scored batch of ``inputs``, rescored by :meth:`rescore`."""
        output = super()._generate_and_score_completions(inputs)
        return self.rescore(output, inputs, self._gathered_rewards_per_func)

    def arrange_micro_batches(self, micro_batches: list[dict]) -> list[dict]:
        """The ``steps_per_generation`` micro-batches of a new training generation batch (TRL's shuffled split), as
        the loss will see them, in turn (``num_iterations`` times)."""
        return micro_batches

    def _prepare_inputs(self, generation_batch):
        buffered = self._buffered_inputs
        inputs = super()._prepare_inputs(generation_batch)
        if self.model.training and self._buffered_inputs is not buffered:  # TRL generated and split a new batch
            self._buffered_inputs = self.arrange_micro_batches(self._buffered_inputs)
            inputs = self._buffered_inputs[self._step % self.args.steps_per_generation]
        return inputs

    def _compute_loss(self, model, inputs):
        return self.micro_batch_loss(inputs, lambda batch: self.trl_loss(model, batch))

    @contextlib.contextmanager
    def _token_scope(self, inputs):
        self._token_stats = TokenStats(inputs, self.shape_token_advantages())
        try:
            yield self._token_stats
        finally:
            self._token_stats = None

    def _get_per_token_logps_and_entropies(self, *args, compute_entropy=False, **kwargs):
        out = super()._get_per_token_logps_and_entropies(*args, compute_entropy=compute_entropy, **kwargs)
        if compute_entropy and self._token_stats is not None:  # the policy forward of the loss in scope
            self._token_stats.record(out[0], out[1])
        return out


# ---------------------------------------------------------------------------------------------- trainer attributes
def metrics(trainer, mode: str) -> dict[str, list]:
    """TRL's metric buffer of ``mode`` (``"train"``/``"eval"``): ``name -> values``, averaged by ``log()``."""
    return trainer._metrics[mode]


def replace_logged_advantages(trainer, advantages: torch.Tensor) -> None:
    """TRL appended its own advantages for all N rollouts to the completions table: put ``advantages`` instead."""
    logged = trainer._logs["advantages"]
    for _ in range(min(len(advantages), len(logged))):
        logged.pop()
    logged.extend(advantages.tolist())


def disable_entropy_bonus(trainer) -> None:
    """Switch TRL's own entropy bonus (every token) off."""
    trainer._entropy_bonus_enabled = False


def entropy_bonus_enabled(trainer) -> bool:
    """Whether TRL adds its entropy bonus (static ``entropy_coef`` or adaptive) to the loss."""
    return bool(trainer._entropy_bonus_enabled)


# How TRL 1.16's ``_compute_loss`` divides the summed per-token loss of a micro-batch (without entropy bonus, KL or
# router loss): by its row count ("rows": a mean over rows, or rows x max_completion_length), by its masked token
# count ("tokens") or by a normaliser that does not depend on the micro-batch (``num_items_in_batch``: "global").
_LOSS_NORMALISERS = {
    "grpo": "rows",
    "sapo": "rows",
    "dr_grpo": "rows",
    "luspo": "rows",
    "bnpo": "tokens",
    "dapo": "global",
    "cispo": "global",
    "vespo": "global",
}


def loss_normaliser(loss_type: str) -> str | None:
    """``"rows"``, ``"tokens"`` or ``"global"`` for TRL's ``loss_type`` (see above); None for one not known here."""
    return _LOSS_NORMALISERS.get(loss_type)


def pad_token_id(trainer) -> int:
    """The id TRL pads completions with."""
    return trainer._tokenizer.pad_token_id


def micro_step(trainer) -> int:
    """TRL's count of micro-batches processed (it decides when to generate)."""
    return trainer._step


def save_checkpoint(trainer) -> None:
    """Write ``checkpoint-<global_step>`` as the Trainer does at ``save_steps`` (model, optimizer, scheduler, RNG,
    trainer state; TRL adds its model card); the ``on_save`` callbacks are the caller's to run."""
    trainer._save_checkpoint(trainer.model_wrapped, trial=None)


def last_loaded_step(trainer) -> int:
    return trainer._last_loaded_step


def set_last_loaded_step(trainer, step: int) -> None:
    """Tag the vLLM weights as those of ``step`` (TRL then skips its own sync before the next rollout)."""
    trainer._last_loaded_step = step


def fsdp_helper(trainer):
    """TRL's FSDP helper (``summon_full_params``), or None."""
    return getattr(trainer, "_dist", None)


# ---------------------------------------------------------------------------------------------------------- vLLM
_VLLM_SAMPLING_ATTRIBUTES = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repetition_penalty",
    "max_completion_length",
    "logprobs",
    "structured_outputs_regex",
    "generation_kwargs",
)


@contextlib.contextmanager
def greedy_vllm_sampling(generation, max_tokens: int):
    """``VLLMGeneration.generate`` reads its sampling settings from attributes: greedy with ``max_tokens`` (no
    structured outputs, ``generation_kwargs`` or log-probs) for the duration, then put back."""
    greedy = dict(zip(_VLLM_SAMPLING_ATTRIBUTES, (0.0, 1.0, 0, 0.0, 1.0, max_tokens, None, None, {}), strict=True))
    saved = {key: getattr(generation, key) for key in greedy}
    try:
        for key, value in greedy.items():
            setattr(generation, key, value)
        yield generation
    finally:
        for key, value in saved.items():
            setattr(generation, key, value)


class VLLMGenerationHooks(VLLMGeneration):
    """TRL's ``VLLMGeneration`` with its engine set-up as :meth:`init_engine` and its parameter walk public."""

    def _init_vllm(self):
        return self.init_engine()

    def init_engine(self):
        return super()._init_vllm()

    def iter_named_params(self):
        """TRL's walk over the full (ZeRO-3 / FSDP gathered, PEFT merged) parameters; collective."""
        return self._iter_named_params()


@contextlib.contextmanager
def swap_vllm_generation(factory):
    """Make ``GRPOTrainer.__init__`` build ``factory(...)`` instead of ``VLLMGeneration`` for the duration."""
    import trl.trainer.grpo_trainer as grpo_module

    original = grpo_module.VLLMGeneration
    grpo_module.VLLMGeneration = factory
    try:
        yield
    finally:
        grpo_module.VLLMGeneration = original


# ------------------------------------------------------------------------------------------ async GRPO (experimental)
# TRL's ``trl.experimental.async_grpo``: the rollout worker's loop class ``_AsyncRolloutLoop`` (it lives in a spawned
# child process) scores each group in its private ``_score_group`` and reports metrics through ``_push_metrics``; the
# parent-side ``AsyncRolloutWorker`` spawns ``_loop_cls`` with ``_loop_kwargs``. Imported on first use only: the
# module is experimental and warns when imported.


def async_loop_hooks():
    """The class :class:`AsyncLoopHooks` (built on first use, then cached)."""
    global _ASYNC_LOOP_HOOKS
    if _ASYNC_LOOP_HOOKS is None:
        from trl.experimental.async_grpo.async_rollout_worker import _AsyncRolloutLoop

        class AsyncLoopHooks(_AsyncRolloutLoop):
            """TRL's rollout loop whose ``_score_group`` hands the group and TRL's scored samples to
            :meth:`rescore_group`, and whose metrics sink is :meth:`push_metrics`."""

            def rescore_group(self, group, samples: list) -> list:
                """The samples to queue for training, from ``group`` and the ``samples`` TRL scored for it."""
                return samples

            def push_metrics(self, values: dict) -> None:
                """Send ``{name: float or (numerator, denominator)}`` to the trainer (reduced in its ``log()``)."""
                self._push_metrics(values)

            async def _score_group(self, group):
                return self.rescore_group(group, await super()._score_group(group))

        AsyncLoopHooks.__module__ = __name__
        _ASYNC_LOOP_HOOKS = AsyncLoopHooks
    return _ASYNC_LOOP_HOOKS


_ASYNC_LOOP_HOOKS = None


def set_rollout_loop(worker, loop_cls, **loop_kwargs) -> None:
    """Make TRL's ``AsyncRolloutWorker`` spawn ``loop_cls`` (a module-level subclass of :func:`async_loop_hooks`,
    picklable by reference) with ``loop_kwargs`` added to TRL's; before ``worker.start()``."""
    worker._loop_cls = loop_cls
    worker._loop_kwargs.update(loop_kwargs)


@contextlib.contextmanager
def async_trainer_shims(no_cuda: bool, no_vllm: bool):
    """While ``AsyncGRPOTrainer.__init__`` runs: with ``no_cuda``, its MFU lookup (``trl.trainer.utils.
    get_peak_flops_per_device``, which calls ``torch.cuda.get_device_name``) answers "unknown" (None); with
    ``no_vllm``, the rollout worker's ``is_vllm_available()`` check passes (the worker only speaks HTTP to the server;
    vLLM lives in the server's environment)."""
    import trl.experimental.async_grpo.async_grpo_trainer as trainer_module
    import trl.experimental.async_grpo.async_rollout_worker as worker_module

    saved = trainer_module.get_peak_flops_per_device, worker_module.is_vllm_available
    if no_cuda:
        trainer_module.get_peak_flops_per_device = lambda accelerator, dtype: None
    if no_vllm:
        worker_module.is_vllm_available = lambda *args, **kwargs: True
    try:
        yield
    finally:
        trainer_module.get_peak_flops_per_device, worker_module.is_vllm_available = saved
