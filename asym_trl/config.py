"""AsymGRPOConfig: GRPOConfig plus the advantage estimator of the AsymGRPO paper."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property

from trl import GRPOConfig

from .generation.vllm_sync import WEIGHT_SYNC_MODES, validate_weight_sync
from .generation.weight_check import SYNC_CHECK_MODES
from .lifecycle.distributed import init_cpu_process_group
from .method.args import AdvantageArgs

ENTROPY_SCOPES = ("all", "positive", "negative")
REWARD_FAILURE_POLICIES = ("raise", "unscorable")
DYNAMIC_SAMPLING_PROMPTS = ("new", "same")


@dataclass
class AsymGRPOConfig(AdvantageArgs, GRPOConfig):
    r"""
    Configuration for [`AsymGRPOTrainer`]: every [`~trl.GRPOConfig`] field, plus the following.

    Parameters:
        advantage_estimator (`str`, *optional*, defaults to `"asym"`):
            How rollout advantages are computed from the group's rewards (see `asym_trl.method.advantages`):
            `"asym"` (Eq. 10 with `beta_pos`, `beta_neg`), its presets `"reinforce"` (0, 0), `"grpo"` (TRL's GRPO
            on the raw rewards, any rewards; for binary ones the (0.5, 0.5) member; see `grpo_std`), `"pos_only"`
            (0.5, 0), `"neg_only"` (0, 0.5); the sign-weighted REINFORCE presets of Zhu et al. 2025 (beta = (0, 0),
            `(scale_pos, scale_neg)`): `"psr"` (1, 0), `"nsr"` (0, 1), `"w_reinforce"` (0.1, 1); the flipped curves
            `"ent_decrease"` / `"ent_increase"` (App. D); `"pass_at_k"` (Chen et al. 2025), `"dr_grpo"` (r - mean,
            no std), `"a_grae"` (Yu et al. 2026) and `"adaptive_beta"` (Eq. 10 with betas moved towards a target
            training entropy, `asym_trl.method.adaptive`); or an estimator of your own registered with
            `asym_trl.register_estimator` (by name, or `"package.module:attribute"`; see `docs/estimators.md`).
        beta_pos (`float` or `None`, *optional*):
            Exponent on correct rollouts, >= 0. Defaults to the estimator's value (asym: 0.9; flipped: 0.5); a
            preset accepts only its own value.
        beta_neg (`float` or `None`, *optional*):
            Exponent on incorrect rollouts, >= 0. Defaults to the estimator's value (asym: 0.4; flipped: 0.5).
        scale_pos (`float` or `None`, *optional*):
            Scale of the advantage of correct rollouts in Eq. 10 (`scale_pos * ((1-p)/p)^beta_pos`), >= 0. Defaults
            to the estimator's value (asym: 1); a preset accepts only its own (`"w_reinforce"`: 0.1).
        scale_neg (`float` or `None`, *optional*):
            Scale of the advantage of incorrect rollouts (`-scale_neg * (p/(1-p))^beta_neg`), >= 0; default as
            `scale_pos`. At least one of the two must be > 0.
        success_threshold (`float` or `None`, *optional*):
            A rollout is a success when its reward is >= this value (unset: 1.0). Rewards need not be binary: partial
            credit below the threshold counts as a failure. Unscorable rollouts (every reward function returned
            `None`) count as neither and get advantage 0. The estimators of binary successes (all but `"grpo"` and
            `"dr_grpo"`) stop at the first batch when the deciding rewards are not all 0 or 1 and neither this nor
            `success_reward_func` is set: a reward such as a length or a reward-model score would otherwise make
            every rollout a success and every advantage 0.
        success_reward_func (`str` or `None`, *optional*):
            The reward function whose raw score decides success, by TRL's name (`"accuracy_reward"`) or
            `asym_trl.task.rewards.REWARD_FUNCS` name (`"accuracy"`), e.g. to leave a format bonus out; or
            `"weighted_sum"` for TRL's weighted sum of all of them. Default: the reward function when there is one;
            with several it must be set (accuracy + format summed would count wrong boxed answers as successes).
            Not used by `"dr_grpo"`; `"grpo"` uses TRL's weighted sum unless it is set. Environment rewards
            (`environment_factory` with `get_reward`) count as reward functions, named after the environment class.
        grpo_std (`str`, *optional*, defaults to `"population"`):
            The std of `advantage_estimator="grpo"`: `"population"` (0 where it is 0; for binary rewards exactly the
            beta = 0.5 member of Eq. 10) or `"sample"` (TRL's Bessel-corrected std + 1e-4: TRL's own numbers).
            `"grpo"` honours `scale_rewards` as TRL does (`"group"`, `"batch"`, `"none"`).
        pass_at_k (`int`, *optional*, defaults to `5`):
            K of `"pass_at_k"`; 1 <= K <= `num_generations`.
        agrae_alpha (`float` or `None`, *optional*):
            `"a_grae"` only: positive advantages x min(1, batch accuracy / alpha). Unset: 1 (the fork's, for math).
        adaptive_beta_target (`float` or `None`, *optional*):
            `"adaptive_beta"` only: the target training entropy as a fraction of the first step's. Unset: 0.5.
        adaptive_beta_target_entropy (`float` or `None`, *optional*):
            `"adaptive_beta"` only: an absolute target, nats per token, instead of the fraction.
        adaptive_beta_step (`float` or `None`, *optional*):
            `"adaptive_beta"` only: the largest move of either beta per optimizer step. Unset: 0.05.
        adaptive_beta_range (`list[float]` or `None`, *optional*):
            `"adaptive_beta"` only: `[low, high]` bounds of both betas. Unset: `[0, 1.5]`. See
            `asym_trl.method.adaptive` (the betas start at `beta_pos` / `beta_neg`).
        entropy_adv_alpha (`float`, *optional*, defaults to `0.0`):
            Entropy advantage (Cheng et al. 2025): per token `A + min(alpha * H_t, |A| / kappa)`. 0 disables it;
            the paper's baseline uses 0.4.
        entropy_adv_kappa (`float`, *optional*, defaults to `2.0`):
            kappa of the entropy advantage, > 1 (the term is capped at |A|/kappa, so it never flips A's sign).
        entropy_scope (`str`, *optional*, defaults to `"all"`):
            Which rollouts receive TRL's entropy bonus (`entropy_coef`): `"all"` (TRL's own bonus, unchanged),
            `"positive"` (only tokens of correct rollouts: informative entropy) or `"negative"` (only tokens of
            incorrect rollouts: spurious entropy). The per-token weight is the same as for `"all"`, so
            `entropy_coef` keeps its meaning.
        vllm_weight_sync (`str`, *optional*, defaults to `"nccl"`):
            How `vllm_mode="server"` pushes the trainer's weights to the server: `"nccl"` (TRL's weight-transfer
            engine, CUDA only) or `"disk"` (save to `vllm_weight_sync_dir`, then the server reloads them; works
            without NCCL, e.g. on CPU). See `docs/vllm.md`.
        vllm_weight_sync_dir (`str` or `None`, *optional*):
            Directory for `vllm_weight_sync="disk"`, visible to the server at the same path. Default:
            `<output_dir>/vllm-weights`.
        vllm_sync_check (`str`, *optional*, defaults to `"error"`):
            After every weight sync (disk, TRL's NCCL push, colocate), compare the log-probs of a fixed probe under
            the trainer and under the vLLM engine: `"error"` stops training when the engine does not serve the
            trainer's weights (gap above 10x the gap measured at the first sync, see
            `asym_trl.generation.weight_check`), `"warn"` warns and goes on, `"off"` skips the check (one probe
        forward and request per sync). log_diagnostics (`bool`, *optional*, defaults to `True`):
            Log the paper's entropy-refinement diagnostics through TRL's metrics (see `docs/diagnostics.md`): group
            all-/none-solved shares (per step and per epoch), the group-accuracy histogram, advantages and token
            entropy on correct vs incorrect rollouts, and Cov(p) (App. B).
        cov_window_rollout_steps (`int`, *optional*, defaults to `40`):
            Cov(p) (Eq. 12-14) is averaged over the first `cov_window_rollout_steps` rollout steps (generation
            batches: the paper's "training steps", each `steps_per_generation x num_iterations /
            gradient_accumulation_steps` optimizer steps) and no longer computed afterwards. 0 disables it. The
            default is the paper's (App. B: the first 40 training steps).
        likelihood_displacement_rollout_steps (`int`, *optional*, defaults to `0`):
            Every this many rollout steps, log E[log pi_new(y) - log pi_old(y)] over the correct rollouts of the
            generation batch, pi_old the policy that sampled it and pi_new the policy after all its optimizer steps
            (Lazy Likelihood Displacement, §3.1; the paper's Fig. 2 d,h: "after each policy update", a verl update
            being one rollout step). Costs one extra forward pass over the correct rollouts; 0 (the default) turns
            it off at no cost.
        likelihood_displacement_optimizer_steps (`int`, *optional*, defaults to `0`):
            The same over one optimizer step: every this many optimizer steps, over the correct rollouts of that
            step's micro-batches only (one mini-batch update). Costs one extra forward pass over the step's
            rollouts; 0 (the default) turns it off.
        skip_zero_signal (`bool`, *optional*, defaults to `True`):
            Leave the rollouts whose gradient is exactly zero (advantage 0, e.g. all of an all-solved group) out of
            the loss forward/backward; the update is unchanged up to float summation order. Off by itself (the
            reason is logged) with a KL term, an entropy bonus or advantage, `top_entropy_quantile < 1` or a router
            loss. On skipped steps the loss-forward metrics (`entropy`, `clip_ratio/*`, `entropy/correct`, ...)
            cover the informative rollouts and are logged as `<name>/informative`; steps where the diagnostics need
            every rollout (the Cov(p) window, displacement steps) run in full under the usual names
            (`docs/zero_signal.md`). `False` gives TRL's behaviour and metric names on every step.
        dynamic_sampling (`bool`, *optional*, defaults to `False`):
            DAPO's filter groups: while the generation batch has groups whose advantages are all 0, generate again
            and put informative groups in their place, up to `dynamic_sampling_max_generations` generations in all
            (`docs/zero_signal.md`). Each process must hold whole groups.
        dynamic_sampling_prompts (`str`, *optional*, defaults to `"new"`):
            What is generated again: `"new"` prompts drawn from the training set (as DAPO does; needs a map-style
            dataset), whose informative groups fill the zero-signal slots in order, or the batch's `"same"` prompts,
            each zero-signal group replaced by an informative group of its own prompt.
        dynamic_sampling_max_generations (`int`, *optional*, defaults to `3`):
            Most generations (the first included) per generation batch under `dynamic_sampling`.
        stop_signals (`str`, *optional*, defaults to `"SIGTERM,SIGINT,SIGUSR1"`):
            Signals that stop training gracefully (comma-separated; `""`: none): the run stops at the next point where
            a resume is exact, writes a full checkpoint, and `asym-trl train` exits with code 75; a second signal of
            the same kind exits at once. With several processes every rank stops at the same step even when one rank
            alone got the signal (`docs/stopping.md`).
        stop_timeout (`float`, *optional*, defaults to `600`):
            Seconds after a stop signal within which the run must reach its checkpoint; past it the process exits
            (code 75) without one, and a resume starts from the last complete checkpoint. 0: no bound.
        crash_checkpoint (`bool`, *optional*, defaults to `True`):
            When a training step raises (a reward function, the verifier, the generation server), checkpoint the last
            completed optimizer step before the error propagates. One process only (with several, a rank that fails
            cannot run the save's collectives: the periodic checkpoints are the fallback).
        reward_failure_policy (`str`, *optional*, defaults to `"raise"`):
            What a reward function that raises does: `"raise"` stops the run (after the crash checkpoint);
            `"unscorable"` (for flaky external graders) scores the batch again one completion at a time and gives the
            completions whose call still fails the reward `None` (unscorable: advantage 0), logged as
            `reward_failures/<function>`. Rewards of the wrong type (not a number or `None`) always stop the run.
        max_reward_failure_fraction (`float`, *optional*, defaults to `0.1`):
            Under `reward_failure_policy="unscorable"`, the largest share of a batch's completions (per reward
            function and process) whose reward call may fail; above it the run stops with an error.

    Clip-higher is TRL's `epsilon_high`, the entropy bonus TRL's `entropy_coef`, token-level aggregation TRL's
    `loss_type="dapo"` (the default): they are used as they are. `scale_rewards="batch"` normalises TRL's own
    advantages, which the estimators of binary successes replace: it is rejected except under `"grpo"`;
    `multi_objective_aggregation="normalize_then_sum"` normalises each reward function before summing, which no
    estimator here sees (they work on one reward per rollout): it is rejected (`docs/estimators.md`).
    """

    entropy_adv_alpha: float = field(default=0.0, metadata={"help": "Entropy-advantage alpha (0 = off)."})
    entropy_adv_kappa: float = field(default=2.0, metadata={"help": "Entropy-advantage kappa."})
    entropy_scope: str = field(
        default="all",
        metadata={"help": "Rollouts that receive the entropy bonus.", "choices": list(ENTROPY_SCOPES)},
    )
    vllm_weight_sync: str = field(
        default="nccl",
        metadata={"help": "Server-mode weight sync: NCCL or via disk.", "choices": list(WEIGHT_SYNC_MODES)},
    )
    vllm_weight_sync_dir: str | None = field(
        default=None, metadata={"help": "Directory for vllm_weight_sync='disk' (default: <output_dir>/vllm-weights)."}
    )
    vllm_sync_check: str = field(
        default="error",
        metadata={
            "help": "Check after every weight sync that vLLM serves the trainer's weights.",
            "choices": list(SYNC_CHECK_MODES),
        },
    )

    log_diagnostics: bool = field(default=True, metadata={"help": "Log the paper's entropy diagnostics."})
    cov_window_rollout_steps: int = field(
        default=40, metadata={"help": "Cov(p) over the first N rollout steps (generation batches; 0 = off)."}
    )
    likelihood_displacement_rollout_steps: int = field(
        default=0,
        metadata={"help": "Likelihood displacement over each Nth rollout step, as the paper's Fig. 2 d,h (0 = off)."},
    )
    likelihood_displacement_optimizer_steps: int = field(
        default=0, metadata={"help": "Likelihood displacement over each Nth optimizer step (0 = off)."}
    )

    skip_zero_signal: bool = field(
        default=True,
        metadata={"help": "Skip the forward/backward of zero-advantage rollouts (same update; docs/zero_signal.md)."},
    )

    dynamic_sampling: bool = field(
        default=False, metadata={"help": "Replace zero-signal groups by informative ones (DAPO's filter groups)."}
    )
    dynamic_sampling_prompts: str = field(
        default="new",
        metadata={
            "help": "Dynamic sampling generates again from new training prompts or the batch's same prompts.",
            "choices": list(DYNAMIC_SAMPLING_PROMPTS),
        },
    )
    dynamic_sampling_max_generations: int = field(
        default=3, metadata={"help": "Most generations per generation batch under dynamic_sampling."}
    )

    stop_signals: str = field(
        default="SIGTERM,SIGINT,SIGUSR1",
        metadata={"help": "Signals that stop training gracefully with a checkpoint (comma-separated; '' = none)."},
    )
    stop_timeout: float = field(
        default=600.0, metadata={"help": "Seconds after a stop signal before exiting without a checkpoint (0 = off)."}
    )
    crash_checkpoint: bool = field(
        default=True, metadata={"help": "Checkpoint the last completed step when a training step raises."}
    )
    reward_failure_policy: str = field(
        default="raise",
        metadata={
            "help": "A reward function that raises: stop ('raise') or mark its completions unscorable.",
            "choices": list(REWARD_FAILURE_POLICIES),
        },
    )
    max_reward_failure_fraction: float = field(
        default=0.1, metadata={"help": "Largest share of a batch whose reward call may fail ('unscorable' policy)."}
    )

    def __post_init__(self):
        super().__post_init__()  # TRL's own checks first: ours never mask them
        self.validate_method()

    def validate_method(self):
        """The checks of the fields AsymGRPOConfig adds (after TRL's; also for a promoted GRPOConfig)."""
        self._validate_run_length()
        self._validate_estimator()
        self._validate_against_grpo()
        validate_weight_sync(self)

    def _validate_run_length(self):
        """Refuse a run that would train nothing and the settings of how a run stops that cannot work."""
        from .lifecycle.graceful_stop import parse_signals  # ValueError naming an unknown signal

        if self.max_steps <= 0 and self.num_train_epochs <= 0:
            raise ValueError(
                f"max_steps={self.max_steps} and num_train_epochs={self.num_train_epochs}: this run has no training "
                "steps; set max_steps > 0 or num_train_epochs > 0"
            )
        parse_signals(self.stop_signals)
        if not (math.isfinite(self.stop_timeout) and self.stop_timeout >= 0):
            raise ValueError(f"stop_timeout={self.stop_timeout} must be a number of seconds >= 0 (0 = no bound)")
        if self.reward_failure_policy not in REWARD_FAILURE_POLICIES:
            raise ValueError(
                f"reward_failure_policy={self.reward_failure_policy!r} is unknown; choose one of "
                f"{list(REWARD_FAILURE_POLICIES)}"
            )
        if not 0 <= self.max_reward_failure_fraction <= 1:
            raise ValueError(f"max_reward_failure_fraction={self.max_reward_failure_fraction} must be in [0, 1]")
        if self.epsilon_high is not None and self.epsilon_high < self.epsilon and self.loss_type != "cispo":
            raise ValueError(  # cispo's epsilon_high is a cap on the ratio itself, not a clip range
                f"epsilon_high={self.epsilon_high} is below epsilon={self.epsilon}: clip-higher widens the upper clip "
                "range (DAPO: epsilon=0.2, epsilon_high=0.28); set epsilon_high >= epsilon or leave it unset"
            )

    @cached_property
    def _setup_devices(self):
        # transformers passes ddp_timeout to the process group except with use_cpu, where a lost peer would then be
        # waited for torch's default 30 min: create the CPU group first, with it (asym_trl.lifecycle.distributed)
        init_cpu_process_group(self.use_cpu, self.ddp_backend, self.ddp_timeout)
        return super()._setup_devices

    def _validate_estimator(self):
        self._validate_advantage_args()
        if self.entropy_adv_alpha < 0 or not math.isfinite(self.entropy_adv_alpha):
            raise ValueError(f"entropy_adv_alpha={self.entropy_adv_alpha} must be a finite number >= 0 (0 = off)")
        if not (self.entropy_adv_kappa > 1 and math.isfinite(self.entropy_adv_kappa)):
            raise ValueError(  # the bonus is capped at |A|/kappa: kappa <= 1 could flip a negative advantage's sign
                f"entropy_adv_kappa={self.entropy_adv_kappa} must be a finite number > 1 (Cheng et al.: the entropy "
                "term must not reverse the sign of a negative advantage)"
            )
        if self.entropy_scope not in ENTROPY_SCOPES:
            raise ValueError(f"entropy_scope={self.entropy_scope!r} is unknown; choose one of {list(ENTROPY_SCOPES)}")
        self._validate_diagnostics()

    def _validate_diagnostics(self):
        displacement = ("likelihood_displacement_rollout_steps", "likelihood_displacement_optimizer_steps")
        for name in ("cov_window_rollout_steps", *displacement):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name}={value!r} must be an integer >= 0 (0 = off)")
            if name in displacement and value > 0 and not self.log_diagnostics:
                raise ValueError(f"{name} > 0 needs log_diagnostics=True")

    def _validate_against_grpo(self):
        """Checks that need GRPOConfig's resolved fields."""
        if self.dynamic_sampling:
            if self.dynamic_sampling_max_generations < 1:
                raise ValueError("dynamic_sampling_max_generations must be >= 1")
            if self.dynamic_sampling_prompts not in DYNAMIC_SAMPLING_PROMPTS:
                raise ValueError(
                    f"dynamic_sampling_prompts={self.dynamic_sampling_prompts!r} is unknown; choose one of "
                    f"{list(DYNAMIC_SAMPLING_PROMPTS)}"
                )
            local = self.per_device_train_batch_size * self.steps_per_generation
            if local % self.num_generations:
                raise ValueError(
                    f"dynamic_sampling needs whole groups on each process: per_device_train_batch_size x "
                    f"steps_per_generation ({local}) must be a multiple of num_generations ({self.num_generations})"
                )
        self._validate_group_size()
        if self.multi_objective_aggregation != "sum_then_normalize":
            raise ValueError(
                f"multi_objective_aggregation={self.multi_objective_aggregation!r} is not supported: "
                "every advantage_estimator works on one reward per rollout, the weighted sum "
                "('sum_then_normalize'); see docs/estimators.md"
            )
        if self.entropy_scope != "all":
            if self.entropy_coef == 0.0:
                raise ValueError(f"entropy_scope={self.entropy_scope!r} has no effect with entropy_coef=0; set both")
            if self.use_adaptive_entropy or self.top_entropy_quantile < 1.0:
                raise ValueError(
                    f"entropy_scope={self.entropy_scope!r} cannot be combined with use_adaptive_entropy or "
                    "top_entropy_quantile < 1; use entropy_scope='all' for those"
                )
