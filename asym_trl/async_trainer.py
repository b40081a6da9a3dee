"""AsymAsyncGRPOTrainer: TRL's asynchronous GRPO (generation overlaps training) with the AsymGRPO advantages.

TRL 1.16's ``trl.experimental.async_grpo.AsyncGRPOTrainer`` streams scored groups from a vLLM server: a rollout
worker in a spawned child process generates over HTTP, scores each group as soon as its ``num_generations``
completions are in, and queues the samples; the trainer drops every sample more than ``max_staleness`` policy
versions old when it takes it from the queue and trains on the rest (PPO-clipped ratio against the sampler's own
log-probs). Its advantage is hard-coded, ``(r - mean) / (std + 1e-8)``. This module changes only the scoring:

1. **Advantages.** The child's loop class is :class:`AsymRolloutLoop`: after TRL has scored a group (reward
   functions, ``None`` -> NaN, environment rewards), the group's advantages are recomputed by the registered
   estimator (:mod:`asym_trl.method.estimators`) under the run's success rule (``success_reward_func``,
   ``success_threshold``, the stop on non-binary rewards) -- the functions :class:`asym_trl.AsymGRPOTrainer` calls,
   so identical group rewards give identical advantages. TRL's async sum of several reward functions is unweighted.
2. **Zero-signal groups** (every advantage 0) are dropped at scoring time (``drop_zero_signal``): they never reach
   the queue nor the optimizer. DAPO-style: the loss normaliser (TRL's token count of the step) then counts only
   informative rollouts.
3. **Diagnostics** (``log_diagnostics``), per scored group, through TRL's metrics: ``groups/zero_signal``,
   ``groups/all_solved``, ``groups/none_solved``, ``groups/p_JofG``, ``advantages/{correct,incorrect}_mean``; and
   per trained token ``entropy/positive_advantage`` / ``entropy/negative_advantage`` (``docs/vllm.md`` says which
   diagnostics of the synchronous trainer do not apply). TRL logs the policy lag of the trained samples
   (``sample/staleness_mean``, ``sample/staleness_max``) and the stale ones dropped (``sample/dropped_stale_total``).
4. **Weight push.** ``vllm_weight_sync="nccl"``: TRL's NCCL transfer (GPU). ``"disk"``: :class:`DiskWeightTransfer`
   (pause the server, write safetensors, reload through the project's worker extension with the tied-head refresh,
   reset the prefix cache, resume), then the after-sync check of :mod:`asym_trl.generation.weight_check`.
5. **CPU** (no CUDA): TRL's FlashAttention-3 packed attention is served by :mod:`asym_trl.generation.async_cpu`
   (``tree_attention``), and two checks of TRL's ``__init__`` that assume a GPU trainer with vLLM installed are
   answered (:func:`asym_trl.trl_compat.async_trainer_shims`).

The TRL internals it touches are in :mod:`asym_trl.trl_compat` (pinned by ``tests/test_trl_contract.py``).
"""

from __future__ import annotations

import importlib.util
import os
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import torch
from trl.experimental.async_grpo import AsyncGRPOConfig, AsyncGRPOTrainer
from trl.experimental.async_grpo.async_rollout_worker import AsyncRolloutWorker
from trl.experimental.async_grpo.vllm_client import VLLMClient as AsyncVLLMClient
from trl.trainer.utils import get_callable_name

from .diagnostics import measures as diag
from .generation.vllm_sync import WEIGHTS_FILE, DiskSyncClient, served_logprobs
from .generation.vllm_worker import WEIGHT_SYNC_MODES
from .generation.weight_check import SYNC_CHECK_MODES, WeightSyncCheck, model_logprobs, probe_token_ids
from .lifecycle.checkpoints import ComponentStates
from .method.adaptive import STATE_FILE as ADAPTIVE_FILE
from .method.adaptive import AdaptiveBeta, AdaptiveBetaCallback, BetasFile
from .method.args import AdvantageArgs, promote_config
from .method.estimators import DEFAULT_SUCCESS_THRESHOLD, get_estimator
from .method.success import SuccessRule
from .trl_compat import async_loop_hooks, async_trainer_shims, metrics, set_rollout_loop

__all__ = [
    "AsymAsyncGRPOConfig",
    "AsymAsyncGRPOTrainer",
    "AsymRolloutLoop",
    "DiskWeightTransfer",
    "GroupScorer",
    "group_rewards",
    "single_sequence_packing",
]


TREE_ATTENTIONS = ("auto", "fa3", "sdpa")


@dataclass
class AsymAsyncGRPOConfig(AdvantageArgs, AsyncGRPOConfig):
    r"""
    Configuration for [`AsymAsyncGRPOTrainer`]: every [`~trl.experimental.async_grpo.AsyncGRPOConfig`] field, the
    advantage fields of [`AsymGRPOConfig`] (`advantage_estimator`, `beta_pos`, `beta_neg`, `scale_pos`, `scale_neg`,
    `success_threshold`, `success_reward_func`, `pass_at_k`, `grpo_std`, `agrae_alpha`, `adaptive_beta_*`; same
    meaning), plus the following.

    Parameters:
        scale_rewards (`str`, *optional*, defaults to `"group"`):
            Read by `advantage_estimator="grpo"` only, as in `GRPOConfig` (`"group"`, `"batch"` is refused: a group
            is scored alone here, `"none"`).
        drop_zero_signal (`bool`, *optional*, defaults to `True`):
            Drop the groups whose advantages are all 0 when they are scored: they never reach the optimizer (their
            share is logged as `groups/zero_signal` either way).
        log_diagnostics (`bool`, *optional*, defaults to `True`):
            Log the per-group diagnostics and the entropy split by advantage sign (module doc).
        vllm_weight_sync (`str`, *optional*, defaults to `"nccl"`):
            `"nccl"`: TRL's NCCL weight transfer (GPU, vLLM installed in the trainer's environment). `"disk"`: through
            `vllm_weight_sync_dir` and the server's worker extension (`asym-trl vllm-serve --weight-sync disk`).
        vllm_weight_sync_dir (`str` or `None`, *optional*):
            Directory of the disk sync, visible to the server at the same path. Default: `<output_dir>/vllm-weights`.
        vllm_sync_check (`str`, *optional*, defaults to `"error"`):
            After every disk sync, check that the server serves the trainer's weights
            (`asym_trl.generation.weight_check`): `"error"`, `"warn"` or `"off"`.
        tree_attention (`str`, *optional*, defaults to `"auto"`):
            The packed attention of training: `"fa3"` (TRL's: FlashAttention-3 through the `kernels` package, a Hub
            download, Hopper GPUs), `"sdpa"` (`asym_trl.generation.async_cpu`: torch SDPA, any device, slower),
            `"auto"`: FA3 with CUDA, SDPA without.
    """

    scale_rewards: str = field(
        default="group", metadata={"help": "grpo estimator only: 'group' or 'none'.", "choices": ["group", "none"]}
    )
    drop_zero_signal: bool = field(
        default=True, metadata={"help": "Drop groups whose advantages are all 0 when they are scored."}
    )
    log_diagnostics: bool = field(default=True, metadata={"help": "Log the per-group diagnostics."})
    vllm_weight_sync: str = field(
        default="nccl", metadata={"help": "Weight push: TRL's NCCL or via disk.", "choices": list(WEIGHT_SYNC_MODES)}
    )
    vllm_weight_sync_dir: str | None = field(
        default=None, metadata={"help": "Directory for vllm_weight_sync='disk' (default: <output_dir>/vllm-weights)."}
    )
    vllm_sync_check: str = field(
        default="error",
        metadata={
            "help": "Check after every disk sync that vLLM serves the trainer's weights.",
            "choices": list(SYNC_CHECK_MODES),
        },
    )
    tree_attention: str = field(
        default="auto",
        metadata={"help": "Packed attention: TRL's FA3, torch SDPA, or auto.", "choices": list(TREE_ATTENTIONS)},
    )

    def __post_init__(self):
        super().__post_init__()  # TRL's own checks first
        self.validate_method()

    def validate_method(self):
        """The checks of the fields this config adds (after TRL's; also for a promoted AsyncGRPOConfig)."""
        self._validate_advantage_args()
        if self.scale_rewards == "batch":
            raise ValueError("scale_rewards='batch' does not apply to the async trainer: each group is scored alone")
        self._validate_group_size()
        if self.vllm_weight_sync not in WEIGHT_SYNC_MODES:
            raise ValueError(f"vllm_weight_sync={self.vllm_weight_sync!r}: choose one of {list(WEIGHT_SYNC_MODES)}")
        if self.tree_attention not in TREE_ATTENTIONS:
            raise ValueError(f"tree_attention={self.tree_attention!r}: choose one of {list(TREE_ATTENTIONS)}")
        if self.vllm_sync_check not in SYNC_CHECK_MODES:
            raise ValueError(f"vllm_sync_check={self.vllm_sync_check!r}: choose one of {list(SYNC_CHECK_MODES)}")


# --------------------------------------------------------------------------------------------------- the scoring
@dataclass(frozen=True)
class GroupScorer:
    """What the rollout worker's child needs to score a group as :class:`asym_trl.AsymGRPOTrainer` does.

    Picklable (it crosses to the spawned child): the estimator travels by name and is looked up there.
    """

    estimator: str
    params: dict
    success_reward_func: str | None = None
    success_threshold: float | None = None
    drop_zero_signal: bool = True
    log_diagnostics: bool = True
    batch_groups: int = 1  # the groups of one optimizer step: A-GRAE's batch accuracy is theirs
    betas_file: str | None = None  # adaptive_beta: the trainer's controller publishes its betas here

    @classmethod
    def from_config(cls, args: AsymAsyncGRPOConfig) -> GroupScorer:
        estimator = get_estimator(args.advantage_estimator)
        per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
        return cls(
            estimator=args.advantage_estimator,
            params=dict(args.estimator_params),
            success_reward_func=args.success_reward_func,
            success_threshold=args.success_threshold,
            drop_zero_signal=args.drop_zero_signal,
            log_diagnostics=args.log_diagnostics,
            batch_groups=max(1, per_step // args.num_generations),
            betas_file=os.path.join(args.output_dir, "adaptive_beta_live.json") if estimator.adaptive else None,
        )

    def success_rule(self, reward_func_names: list[str]) -> SuccessRule:
        """The run's success rule over these reward functions, summed unweighted (TRL's async reward)."""
        threshold = DEFAULT_SUCCESS_THRESHOLD if self.success_threshold is None else self.success_threshold
        args = SimpleNamespace(
            advantage_estimator=self.estimator,
            success_reward_func=self.success_reward_func,
            success_threshold=self.success_threshold,
            threshold=threshold,
        )
        AdvantageArgs.check_success_rule(args, len(reward_func_names))  # several rewards: the deciding one named
        return SuccessRule(args, get_estimator(self.estimator), reward_func_names, torch.ones(len(reward_func_names)))

    def score(self, rewards_per_func: torch.Tensor, rule: SuccessRule, context: dict | None = None, betas=None):
        """``(G, F)`` rewards of one group -> ``(rewards, advantages, success)``, each ``(G,)``. ``context``: facts
        of the batch the group belongs to (A-GRAE's ``batch_accuracy``); ``betas``: the adaptive controller's."""
        rewards = rule.rewards(rewards_per_func)  # stops on non-binary rewards without a rule, as the sync trainer
        params = self.params | (betas or {})
        advantages = get_estimator(self.estimator)(rewards.view(1, -1), context=context, **params).view(-1)
        return rewards, advantages, rule.success(rewards)


def group_rewards(group, samples: list, reward_func_names: list[str]) -> torch.Tensor:
    """The ``(G, F)`` float32 rewards TRL computed for ``group`` (NaN: the function returned ``None``), read from the
    ``rewards/<name>`` metrics it stamped on each conversation's samples (they share the conversation's
    ``completion`` object). A conversation without a training row (no generated token) is NaN: unscorable."""
    rows = torch.full((len(group.completions), len(reward_func_names)), float("nan"))
    index = {id(completion): i for i, completion in enumerate(group.completions)}
    for sample in samples:
        rows[index[id(sample.completion)]] = torch.tensor([sample.metrics[f"rewards/{n}"] for n in reward_func_names])
    return rows


def group_metrics(rewards, advantages, success, zero_signal: bool) -> dict:
    """One group's diagnostics as TRL's worker metrics: ``(numerator, denominator)`` pairs, summed over the log
    window before dividing, so each is a share (or mean) over the window's groups (rollouts)."""
    valid = ~torch.isnan(rewards)
    k, n = (int(x) for x in diag.group_counts(success.view(1, -1), valid.view(1, -1)))
    size = len(rewards)
    scored = float(n > 0)
    values = {
        "groups/zero_signal": (float(zero_signal), 1.0),
        "groups/all_solved": (float(n > 0 and k == n), scored),
        "groups/none_solved": (float(n > 0 and k == 0), scored),
    }
    level = int(diag.accuracy_levels(torch.tensor([k]), torch.tensor([n]), size))
    width = len(str(size))
    for j in range(size + 1):
        values[f"groups/p_{j:0{width}d}of{size}"] = (float(level == j), scored)
    for name, chosen in (("correct", success & valid), ("incorrect", ~success & valid)):
        values[f"advantages/{name}_mean"] = (float(advantages[chosen].sum()), float(chosen.sum()))
    return values


class AsymRolloutLoop(async_loop_hooks()):
    """TRL's rollout loop (in the spawned child) whose groups are rescored by a :class:`GroupScorer`."""

    def __init__(self, *, asym_scorer: GroupScorer, **kwargs):
        super().__init__(**kwargs)
        self.scorer = asym_scorer
        self.rule = asym_scorer.success_rule(self.reward_func_names)  # environment rewards included
        self.recent_accuracy = deque(maxlen=asym_scorer.batch_groups)  # the last step's worth of groups
        self.betas = BetasFile(asym_scorer.betas_file) if asym_scorer.betas_file else None

    def batch_context(self, rewards_per_func: torch.Tensor) -> dict:
        """A-GRAE's batch accuracy: the mean success rate of the last ``batch_groups`` scored groups (this one
        included, groups of two or more scorable rollouts), the async stand-in for the synchronous batch."""
        rewards = self.rule.rewards(rewards_per_func)
        valid = ~torch.isnan(rewards)
        if int(valid.sum()) >= 2:
            self.recent_accuracy.append(float(self.rule.success(rewards)[valid].double().mean()))
        if not self.recent_accuracy:
            return {}
        return {"batch_accuracy": sum(self.recent_accuracy) / len(self.recent_accuracy)}

    def rescore_group(self, group, samples):
        rewards_per_func = group_rewards(group, samples, self.reward_func_names)
        rewards, advantages, success = self.scorer.score(
            rewards_per_func,
            self.rule,
            context=self.batch_context(rewards_per_func),
            betas=self.betas.read() if self.betas is not None else None,
        )
        zero_signal = bool((advantages == 0).all())
        if self.scorer.log_diagnostics:
            self.push_metrics(group_metrics(rewards, advantages, success, zero_signal))
        if zero_signal and self.scorer.drop_zero_signal:
            return []
        index = {id(completion): i for i, completion in enumerate(group.completions)}
        for sample in samples:
            sample.advantage = float(advantages[index[id(sample.completion)]])
        return samples


# ----------------------------------------------------------------------------------------------- the weight push
def single_sequence_packing(length: int, device=None) -> dict:
    """The forward keywords of TRL's packed attention for one plain sequence (one trie segment): a model built by
    ``AsyncGRPOTrainer`` computes attention only through them."""
    cu_seqlens = torch.tensor([0, length], dtype=torch.int32, device=device)
    return dict(
        position_ids=torch.arange(length, device=device)[None],
        tree_kv_index=torch.arange(length, device=device),
        tree_cu_seqlens_q=cu_seqlens,
        tree_cu_seqlens_k=cu_seqlens,
        tree_max_seqlen_q=length,
        tree_max_seqlen_k=length,
    )


class DiskWeightTransfer:
    """TRL's ``WeightTransferProtocol`` through disk: no NCCL, so it works on CPU (and across any shared file system).

    ``pause`` (``/pause?mode=keep``: in-flight requests wait), ``send_weights`` (one safetensors file, the worker
    extension's reload with the tied-head refresh through ``/collective_rpc``, ``/reset_prefix_cache``),
    ``resume``; then, unless ``sync_check="off"``, the check that the server serves the trainer's weights. TRL calls
    it on the main process only: the check's forward is the main process's model (not for sharded training).
    """

    def __init__(self, base_url: str, weights_dir, server_timeout: float = 240.0, sync_check: str = "error"):
        self.base_url = base_url.rstrip("/")
        self.weights_dir = Path(weights_dir).resolve()
        self.server_timeout = server_timeout
        self.sync_check = WeightSyncCheck(mode=sync_check)
        self.syncs = 0
        self.refreshed_layers = None  # the workers' answer to the latest reload
        self.model = self.probe = self.client = self.control = None  # control: pause / resume (TRL's client)

    def attach(self, model, processing_class) -> None:
        """The model whose served copy the check compares (its tokenizer makes the probe)."""
        self.model = model
        self.probe = probe_token_ids(processing_class, model.config.get_text_config().vocab_size)

    def init_weight_transfer(self) -> None:
        self.client = DiskSyncClient(self.base_url, connection_timeout=self.server_timeout)
        self.control = AsyncVLLMClient(self.base_url, self.server_timeout)
        self.weights_dir.mkdir(parents=True, exist_ok=True)

    def pause(self) -> None:
        self.control.pause(timeout=300)

    def send_weights(self, iterator) -> None:
        from safetensors.torch import save_file

        state = {name: tensor.detach().to("cpu", copy=True).contiguous() for name, tensor in iterator}
        tmp = self.weights_dir / f"{WEIGHTS_FILE}.partial"  # the loader reads *.safetensors only
        save_file(state, str(tmp), metadata={"format": "pt"})
        os.replace(tmp, self.weights_dir / WEIGHTS_FILE)
        self.refreshed_layers = self.client.reload_weights(self.weights_dir)
        self.client.reset_prefix_cache()

    def resume(self) -> None:
        self.control.resume(timeout=300)
        if self.sync_check.mode != "off" and self.model is not None:
            self.check()
        self.syncs += 1

    def check(self) -> dict:
        """Probe log-probs under the trainer's model (through its packed attention) and under the server."""
        packing = single_sequence_packing(len(self.probe), next(self.model.parameters()).device)
        trainer, scale = model_logprobs(self.model, self.probe, with_scale=True, **packing)
        engine = served_logprobs(self.base_url, self.probe, session=self.client.session, model=self.client.model)
        where = f"the vLLM server at {self.base_url}"
        return self.sync_check.observe(trainer, engine, scale, step=self.syncs, where=where)

    def destroy(self) -> None:
        pass


# --------------------------------------------------------------------------------------------------- the trainer
class AsymAsyncGRPOTrainer(AsyncGRPOTrainer):
    """``AsyncGRPOTrainer`` whose advantages come from ``args.advantage_estimator`` (see the module doc).

    Same constructor as TRL's; ``args`` must be an [`AsymAsyncGRPOConfig`]. Reward functions must be picklable
    (module-level), and a script must guard its entry point (``if __name__ == "__main__":``): TRL's rollout worker is
    a spawned process that re-imports ``__main__``. A ``rollout_worker`` passed in does its own scoring.
    """

    _tag_names = ["trl", "async-grpo", "asym_trl", "asymgrpo"]
    _name = "AsymAsyncGRPO"

    def __init__(self, model, reward_funcs=None, args=None, train_dataset=None, *more, **kwargs):
        if args is None:  # as TRL does for AsyncGRPOConfig
            args = AsymAsyncGRPOConfig(f"{model.split('/')[-1]}-AsymAsyncGRPO")
        elif not isinstance(args, AsymAsyncGRPOConfig):
            if not isinstance(args, AsyncGRPOConfig):
                raise TypeError(f"AsymAsyncGRPOTrainer needs an AsyncGRPOConfig, got {type(args).__name__}")
            args = promote_config(args, AsymAsyncGRPOConfig, "AsymAsyncGRPOTrainer")
        self.scorer = GroupScorer.from_config(args)
        if kwargs.get("environment_factory") is None:  # else the worker adds environment rewards: checked there
            funcs = [] if reward_funcs is None else reward_funcs if isinstance(reward_funcs, list) else [reward_funcs]
            self.scorer.success_rule([get_callable_name(f) for f in funcs])  # a bad success rule fails here
        on_cpu = not torch.cuda.is_available()
        if kwargs.get("weight_transfer") is None:
            if args.vllm_weight_sync == "disk":
                weights_dir = args.vllm_weight_sync_dir or os.path.join(args.output_dir, "vllm-weights")
                kwargs["weight_transfer"] = DiskWeightTransfer(
                    args.vllm_server_base_url, weights_dir, args.vllm_server_timeout, args.vllm_sync_check
                )
            elif on_cpu:
                raise ValueError(
                    "vllm_weight_sync='nccl' (TRL's weight transfer) needs CUDA and vLLM in the trainer's "
                    "environment; on CPU use vllm_weight_sync='disk' with `asym-trl vllm-serve MODEL --device cpu "
                    "--weight-sync disk` (docs/vllm.md)"
                )
        with async_trainer_shims(no_cuda=on_cpu, no_vllm=importlib.util.find_spec("vllm") is None):
            super().__init__(model, reward_funcs, args, train_dataset, *more, **kwargs)
        if args.tree_attention == "sdpa" or (args.tree_attention == "auto" and on_cpu):
            from .generation.async_cpu import use_sdpa_tree_attention

            use_sdpa_tree_attention()  # after TRL registered its FA3 one
        if isinstance(self.rollout_worker, AsyncRolloutWorker):
            set_rollout_loop(self.rollout_worker, AsymRolloutLoop, asym_scorer=self.scorer)
        if isinstance(self.weight_transfer, DiskWeightTransfer):
            self.weight_transfer.attach(self.model, self.processing_class)
        self.adaptive_beta = None
        if get_estimator(args.advantage_estimator).adaptive:  # the scorer (a child process) reads the betas file
            betas_file = BetasFile(self.scorer.betas_file)
            self.adaptive_beta = AdaptiveBetaCallback(
                AdaptiveBeta.from_config(args),
                reduce=lambda sums: self.accelerator.reduce(sums.to(self.accelerator.device), reduction="sum"),
                log=lambda name, value: metrics(self, "train")[name].append(value),
                publish=betas_file.write,
            )
            betas_file.write(self.adaptive_beta.controller.betas())
            self.add_callback(self.adaptive_beta)
        self.component_states = ComponentStates({ADAPTIVE_FILE: self.adaptive_beta} if self.adaptive_beta else {})
        self.add_callback(self.component_states)
        self._token_entropy = None
        if args.log_diagnostics or self.adaptive_beta is not None:
            self.model.register_forward_hook(self._keep_token_entropy)

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        self.component_states.resume_from(resume_from_checkpoint, self.args.output_dir)  # the controller's state
        if self.adaptive_beta is not None:
            self.adaptive_beta.publish(self.adaptive_beta.controller.betas())
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _keep_token_entropy(self, module, inputs, output):
        entropy = getattr(output, "entropy", None)  # TRL's fused head computes it for the loss
        self._token_entropy = None if entropy is None else entropy.detach()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self._token_entropy = None
        loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if self._token_entropy is not None and self.args.log_diagnostics:
            self._log_entropy_by_sign(inputs)
        if self._token_entropy is not None and self.adaptive_beta is not None and self.model.training:
            trained = self._token_entropy.flatten()[inputs["token_index"][inputs["token_index"] >= 0]]
            self.adaptive_beta.observe(trained, torch.ones_like(trained))
        return loss

    def _log_entropy_by_sign(self, inputs) -> None:
        """Mean token entropy where the advantage is > 0 / < 0: for the binary estimators with both scales > 0
        (zero-signal groups dropped) exactly the tokens of correct / incorrect rollouts. Token-weighted over the
        window and all processes."""
        selected = inputs["token_index"] >= 0  # the trained tokens, as TRL's compute_loss selects them
        entropy = self._token_entropy.flatten()[inputs["token_index"][selected]].double()
        advantages = inputs["advantages"][selected]
        positive, negative = (advantages > 0).double(), (advantages < 0).double()
        sums = torch.stack([(entropy * positive).sum(), positive.sum(), (entropy * negative).sum(), negative.sum()])
        sums = self.accelerator.reduce(sums, reduction="sum").tolist()
        logged = metrics(self, "train" if self.model.training else "eval")
        logged["entropy/positive_advantage"].append((sums[0], sums[1]))
        logged["entropy/negative_advantage"].append((sums[2], sums[3]))
