"""AsymGRPOTrainer: TRL's GRPOTrainer with the AsymGRPO advantage family."""

from __future__ import annotations

import sys
import textwrap

import torch
from trl import GRPOConfig

from .config import AsymGRPOConfig
from .diagnostics.groups import STATE_FILE as DIAGNOSTICS_FILE
from .diagnostics.groups import GroupDiagnostics
from .generation.vllm_sync import GuardedVLLMGeneration, vllm_generation_class
from .lifecycle.checkpoints import CheckpointPublisher, ComponentStates, CrashCheckpoint, newest_complete_checkpoint
from .lifecycle.distributed import lost_peer_error
from .lifecycle.graceful_stop import GracefulStop, StopSignals, parse_signals
from .lifecycle.reward_guard import guard_reward_funcs
from .method.adaptive import STATE_FILE as ADAPTIVE_FILE
from .method.adaptive import AdaptiveBeta, AdaptiveBetaCallback
from .method.advantages import entropy_shaped_advantages, scoped_entropy_term
from .method.args import promote_config
from .method.estimators import get_estimator
from .method.success import DegenerateWatch, SuccessRule
from .rollouts.dynamic_sampling import DynamicSampler
from .rollouts.zero_signal import ZeroSignalSkip
from .trl_compat import GRPOHooks, TokenStats, disable_entropy_bonus, metrics, micro_step, replace_logged_advantages


class AsymGRPOTrainer(GRPOHooks):
    """GRPOTrainer whose advantages come from ``args.advantage_estimator`` (see [`AsymGRPOConfig`]).

    A drop-in: same constructor arguments as [`~trl.GRPOTrainer`]; ``args`` an [`AsymGRPOConfig`] (TRL's
    ``GRPOConfig`` is promoted to one with the paper's defaults, saying so).
    The only changes are:

    1. **Advantages** (:meth:`rescore`): after TRL has scored a batch, every group's advantages are recomputed by the
       registered estimator (:mod:`asym_trl.method.estimators`) from the rewards TRL gathered from all processes; a
       rollout succeeds when the deciding reward reaches ``success_threshold``; this process keeps its slice, and the
       logged advantages (completions table) are fixed. ``advantage_estimator="adaptive_beta"``: the betas come from
       a controller fed each step's token entropy (:mod:`asym_trl.method.adaptive`).
    2. **Entropy advantage** (``entropy_adv_alpha > 0``): inside the loss, each token's advantage becomes
       ``A + min(alpha * H_t, |A| / kappa)`` (Cheng et al.), from the entropies TRL computes for the loss.
    3. **Scoped entropy bonus** (``entropy_scope`` other than ``"all"``): TRL's bonus applies to the tokens of
       correct (or incorrect) rollouts only, with TRL's per-token weight.
    4. **Diagnostics** (``log_diagnostics``): a :class:`~asym_trl.diagnostics.groups.GroupDiagnostics` callback is fed
       each scored batch and each loss micro-batch (``docs/diagnostics.md``).
    5. **Weight sync** (``use_vllm``): after every push the engine is checked end to end to serve the trainer's
       weights (``vllm_sync_check``); with ``vllm_weight_sync="disk"`` the push goes through disk and the server's
       worker extension instead of NCCL (:mod:`asym_trl.generation.vllm_sync`).
    6. **Zero-signal skip** (``skip_zero_signal``): rollouts whose gradient is exactly zero are gathered into the
       first micro-batches of their optimizer step (within runs of ``gcd(steps_per_generation,
       gradient_accumulation_steps)`` micro-batches) and left out of the loss forward/backward, with the full
       micro-batch's normaliser (:mod:`asym_trl.rollouts.zero_signal`).
    7. **Dynamic sampling** (``dynamic_sampling``): zero-signal groups are replaced by informative groups generated
       again, from new training prompts or the same ones, up to a cap (:mod:`asym_trl.rollouts.dynamic_sampling`).
    8. **How a run stops** (``docs/stopping.md``): reward functions are checked and may fail as
       ``reward_failure_policy`` says (:mod:`asym_trl.lifecycle.reward_guard`); during :meth:`train` a stop signal
       ends training with a checkpoint at the next exact resume point (:mod:`asym_trl.lifecycle.graceful_stop`), a
       step that raises first checkpoints the last completed step (one process), checkpoints are published complete,
       and ``resume_from_checkpoint=True`` takes the newest complete one (:mod:`asym_trl.lifecycle.checkpoints`).
    9. **A lost peer** (several processes or nodes): a collective that fails because another process died or stopped
       answering raises :class:`~asym_trl.lifecycle.distributed.LostPeerError`, naming this process and the node it
       lost; ``ddp_timeout`` bounds the wait on CPU too (:mod:`asym_trl.lifecycle.distributed`).

    How they reach TRL's private methods (pinned to trl 1.16.0) is :mod:`asym_trl.trl_compat`.
    """

    _tag_names = ["trl", "grpo", "asym_trl", "asymgrpo"]
    _name = "AsymGRPO"
    _paper = {
        "title": "Rethinking Exploration in RLVR: Bidirectional Entropy Modulation",
        "id": None,
        # docstyle-ignore
        "citation": textwrap.dedent("""\
            @article{asymgrpo,
                title        = {{Rethinking Exploration in RLVR: Bidirectional Entropy Modulation}},
                note         = {AsymGRPO},
            }"""),
    }

    def __init__(self, model, reward_funcs=None, args=None, *more, **kwargs):
        if args is None:  # as TRL does for GRPOConfig
            name = model if isinstance(model, str) else model.config._name_or_path
            args = AsymGRPOConfig(f"{str(name).split('/')[-1]}-AsymGRPO")
        elif not isinstance(args, AsymGRPOConfig):  # TRL's GRPOConfig: a TRL user changes one line
            if not isinstance(args, GRPOConfig):
                raise TypeError(f"AsymGRPOTrainer needs a GRPOConfig, got {type(args).__name__}")
            args = promote_config(args, AsymGRPOConfig, "AsymGRPOTrainer")
        reward_funcs = guard_reward_funcs(reward_funcs, args.reward_failure_policy, args.max_reward_failure_fraction)
        with vllm_generation_class(args):
            super().__init__(model, reward_funcs, args, *more, **kwargs)  # TRL's checks first: ours never mask them
        args.check_success_rule(len(self.reward_funcs))  # environment rewards included
        self.estimator = get_estimator(args.advantage_estimator)
        self.success_rule = SuccessRule(args, self.estimator, self.reward_func_names, self.reward_weights)
        self._degenerate = DegenerateWatch(self.success_rule)
        if isinstance(getattr(self, "vllm_generation", None), GuardedVLLMGeneration):
            self.vllm_generation.current_step = lambda: self.state.global_step
        self._scoped_entropy = args.entropy_scope != "all"
        if self._scoped_entropy:
            disable_entropy_bonus(self)  # TRL's bonus covers every token; ours is added in finish_loss
        self.diagnostics = GroupDiagnostics(self) if args.log_diagnostics else None
        if self.diagnostics is not None:
            self.add_callback(self.diagnostics)
        self.adaptive_beta = None
        if self.estimator.adaptive:  # (beta_pos, beta_neg) move towards a target entropy (asym_trl.method.adaptive)
            self.adaptive_beta = AdaptiveBetaCallback(
                AdaptiveBeta.from_config(args),
                reduce=lambda sums: self.accelerator.reduce(sums.to(self.accelerator.device), reduction="sum"),
                log=lambda name, value: metrics(self, "train")[name].append(value),
            )
            self.add_callback(self.adaptive_beta)
        self.zero_signal = ZeroSignalSkip(self)
        self.dynamic_sampling = DynamicSampler(self) if args.dynamic_sampling else None
        # how a run stops: after every callback above, the publisher last (it marks each checkpoint complete)
        states = {DIAGNOSTICS_FILE: self.diagnostics, ADAPTIVE_FILE: self.adaptive_beta}
        self.component_states = ComponentStates({name: part for name, part in states.items() if part is not None})
        self.add_callback(self.component_states)
        single = self.accelerator.num_processes == 1
        self.crash_checkpoint = CrashCheckpoint(self) if args.crash_checkpoint and single else None
        if self.crash_checkpoint is not None:
            self.add_callback(self.crash_checkpoint)
        signals = StopSignals(parse_signals(args.stop_signals), args.stop_timeout)
        self.graceful_stop = GracefulStop(signals, self._next_step_generates, self.accelerator.device)
        self.add_callback(self.graceful_stop)
        self.add_callback(CheckpointPublisher(self.accelerator))
        self.crash_checkpoint_dir = None  # set when a step raised and the last completed step was checkpointed

    def train(self, resume_from_checkpoint=None, *more, **kwargs):
        if resume_from_checkpoint is True:  # the newest *complete* checkpoint (HF would take the newest)
            resume_from_checkpoint = self.newest_checkpoint()
            if resume_from_checkpoint is None:
                raise ValueError(f"resume_from_checkpoint=True but {self.args.output_dir} has no complete checkpoint")
        self.component_states.resume_from(resume_from_checkpoint, self.args.output_dir)  # state spanning steps
        with self.graceful_stop.signals:
            try:
                return super().train(resume_from_checkpoint, *more, **kwargs)
            except Exception as exc:
                if self.crash_checkpoint is not None:
                    try:
                        self.crash_checkpoint_dir = self.crash_checkpoint.save()
                    except Exception as save_error:  # the step's error is the one to report
                        print(f"asym-trl: the crash checkpoint failed too: {save_error!r}", file=sys.stderr)
                # a collective on a lost peer: say which process noticed and which peers it had
                if (lost := lost_peer_error(exc, self.args.ddp_timeout)) is not None:
                    raise lost from exc
                raise
            finally:
                self.graceful_stop.done()

    def newest_checkpoint(self) -> str | None:
        """The newest complete checkpoint of ``output_dir``; the newer incomplete ones are reported as skipped."""
        checkpoint, skipped = newest_complete_checkpoint(self.args.output_dir)
        if self.accelerator.is_main_process:
            for path, reason in skipped:
                print(f"asym-trl: skipping {path}: {reason}", file=sys.stderr)
        return checkpoint

    def _next_step_generates(self) -> bool:
        """Whether TRL's next training micro-step starts a new generation batch: only then is a resume exact (TRL
        generates again after a resume)."""
        return micro_step(self) % (self.args.steps_per_generation * self.num_iterations) == 0

    # ----------------------------------------------------------------- 1. advantages
    def rescore(self, output, inputs, rewards_per_func):
        mode = "train" if self.model.training else "eval"
        num_generations = self.num_generations if mode == "train" else self.num_generations_eval
        rewards = self.success_rule.rewards(rewards_per_func)  # stops on non-binary rewards without a rule
        params = self.args.estimator_params | (self.adaptive_beta.controller.betas() if self.adaptive_beta else {})
        advantages = self.estimator(rewards.view(-1, num_generations), **params).reshape(-1)
        success = self.success_rule.success(rewards)
        if mode == "train":
            self._degenerate.update(advantages, rewards)
            if self.dynamic_sampling is not None:
                self.dynamic_sampling.observe(advantages, success, ~torch.isnan(rewards))

        rank = self.accelerator.process_index
        local = slice(rank * len(inputs), (rank + 1) * len(inputs))
        output["advantages"] = advantages[local].to(output["advantages"].dtype)
        output["success"] = success[local]
        output["scorable"] = ~torch.isnan(rewards[local])
        if self.diagnostics is not None:
            self.diagnostics.on_generation(mode, rewards, advantages, success, num_generations)
            output["rollout_index"] = torch.arange(len(rewards), device=rewards.device)[local]
        replace_logged_advantages(self, advantages)
        return output

    def generation_batch(self, inputs, generate_fn):
        if self.dynamic_sampling is None:
            return generate_fn(inputs)
        return self.dynamic_sampling.generate(inputs, generate_fn)

    # ----------------------------------------------------------------- 2-4, 6. the loss
    def arrange_micro_batches(self, micro_batches):
        return self.zero_signal.arrange(micro_batches)

    def micro_batch_loss(self, inputs, loss_fn):
        return self.zero_signal.loss(inputs, loss_fn)

    def wants_token_stats(self) -> bool:
        return any((self.args.entropy_adv_alpha > 0, self._scoped_entropy, self.diagnostics, self.adaptive_beta))

    def shape_token_advantages(self):
        if self.args.entropy_adv_alpha <= 0:
            return None
        alpha, kappa = self.args.entropy_adv_alpha, self.args.entropy_adv_kappa
        return lambda advantages, entropies: entropy_shaped_advantages(advantages, entropies, alpha, kappa)

    def finish_loss(self, loss, inputs, stats: TokenStats):
        mask = inputs["completion_mask"] * inputs["tool_mask"] if "tool_mask" in inputs else inputs["completion_mask"]
        if self._scoped_entropy:  # TRL's bonus on correct (or incorrect) rollouts only, with TRL's per-token weight
            success = inputs["success"]  # incorrect = scored and not a success (unscorable rollouts are neither)
            in_scope = success if self.args.entropy_scope == "positive" else inputs["scorable"] & ~success
            steps = self.current_gradient_accumulation_steps if self.model.training else 1
            loss = loss - self.args.entropy_coef * scoped_entropy_term(stats.entropies, mask, in_scope, steps)
        if self.adaptive_beta is not None and self.model.training:
            self.adaptive_beta.observe(stats.entropies, mask)
        if self.diagnostics is not None:
            self.diagnostics.on_loss_micro_batch(inputs, stats)
        return loss
