"""After every weight sync, check end to end that the vLLM engine serves the trainer's weights (``vllm_sync_check``).

A sync that reports success can still leave the engine computing with other weights: a backend that computes with a
processed copy of a parameter (packed for a CPU GEMM kernel, say) keeps the old copy if nothing re-processes it, and
a checksum of the engine's parameters would not see that. So the check compares what the model *computes*: the
log-probs of a fixed probe sequence under the trainer's model (float32 or whatever it trains in) and under the engine
(``prompt_logprobs``), and measures

    gap = max over probe positions |log p_engine - log p_trainer|.

The two never agree exactly (the engine computes in bf16, other kernels), and that rounding noise is relative: it
grows with the size of the logits as training grows the weights (one step at the integration test's learning rate
multiplies both by ~10). So the first sync, where both sides hold the same checkpoint, calibrates:

    tolerance_t = max(FACTOR * gap_0, FLOOR) * max(1, scale_t / scale_0),
    scale = the trainer's logit spread on the probe (std over the vocabulary, averaged over positions)

That noise model is not exact: at a very large learning rate (the integration tests' 1e-1, where one step moves the
probe's log-probs by 1.8-13 nats) the gap grew 140x (0.002 to 0.29, on CI) while the spread grew 13x. What tells a
stale engine from amplified noise is the step itself: an engine that still holds the previous sync's weights is off
by about as much as the trainer moved since then, ``move_t = max |log p_trainer,t - log p_trainer,t-1|``, while an
engine that took the update is off by noise only (measured: at most 0.02 x move). So the tolerance is

    tolerance_t = max(that noise tolerance, STALE_SHARE * move_t)

and a sync whose gap exceeds it is a mismatch; so is a first sync whose gap exceeds ``FIRST_SYNC_MAX``
(the engine computes with another model, and calibrating on it would hide that). ``vllm_sync_check="error"`` (the
default) stops training with a message naming the gap, ``"warn"`` warns each time, ``"off"`` skips the check.

What it detects: an engine whose log-probs differ from the trainer's by more than ``FACTOR`` x the noise measured at
the start and by more than ``STALE_SHARE`` of the last step's movement (a stale or half-updated engine, a wrong
model). What it cannot: a divergence smaller than that (e.g. one stale step at a very small learning rate, or a part of
the model left stale that carries less than a quarter of one step's change), which it catches once enough steps have
accumulated: the drift grows with every step, the allowance does not.

It does not read TRL's ``sampling/*`` metrics, which do not exist when the importance-sampling correction is off.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import torch

__all__ = [
    "FACTOR",
    "FIRST_SYNC_MAX",
    "FLOOR",
    "STALE_SHARE",
    "SYNC_CHECK_MODES",
    "PROBE_TEXT",
    "SyncMismatchError",
    "WeightSyncCheck",
    "model_logprobs",
    "probe_token_ids",
]

SYNC_CHECK_MODES = ("error", "warn", "off")
FACTOR = 10.0  # x the (logit-scaled) gap at the first sync
FLOOR = 0.02  # nats; for an engine that matches the trainer to float precision at the start (float32 serving)
STALE_SHARE = 0.25  # x the trainer's move since the last sync; a stale engine is off by ~1 x, a fresh one <= 0.02 x
FIRST_SYNC_MAX = 1.0  # nats; bf16 serving of the same weights differs by ~0.002 (tiny model) to ~0.1 (billions)
PROBE_LENGTH = 64
PROBE_TEXT = (
    "Let x be the number of apples. Then 3x + 5 = 20, so 3x = 15 and x = 5. "
    "The answer is $\\boxed{5}$. Check: 3 * 5 + 5 = 20, which is correct."
)


class SyncMismatchError(RuntimeError):
    """The generation engine does not serve the trainer's weights after a sync."""


def probe_token_ids(processing_class, vocab_size: int, length: int = PROBE_LENGTH) -> list[int]:
    """A fixed probe: ``PROBE_TEXT`` through the trainer's tokenizer, repeated to ``length`` tokens.

    Real text makes the model's predictions peaked, so a change of weights shows in the log-probs. Without a usable
    tokenizer, a fixed pseudo-random sequence of ids below ``vocab_size``.
    """
    tokenizer = getattr(processing_class, "tokenizer", processing_class)
    ids = []
    try:
        ids = list(tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"])
    except Exception:  # noqa: BLE001 - any processor without a text tokenizer falls back to fixed ids
        ids = []
    ids = [i for i in ids if 0 <= i < vocab_size]
    if len(ids) < 8:
        generator = torch.Generator().manual_seed(0)
        ids = torch.randint(vocab_size, (length,), generator=generator).tolist()
    return (ids * (length // len(ids) + 1))[:length]


def model_logprobs(model, token_ids: list[int], with_scale: bool = False, **forward_kwargs):
    """Log-probs of ``token_ids[1:]`` given their prefixes under ``model`` (float32, on CPU), as a 1-D tensor; with
    ``with_scale``, also the logit spread (mean over positions of the std over the vocabulary).

    A plain forward of the (possibly wrapped or sharded) model: under FSDP / ZeRO-3 every process must call it.
    ``forward_kwargs`` go to the forward too (e.g. the packing of a model whose attention needs one).
    """
    device = next(model.parameters()).device
    ids = torch.tensor([token_ids], device=device)
    was_training = model.training
    model.eval()  # no dropout, no gradient checkpointing
    try:
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), **forward_kwargs).logits[0, :-1].float()
    finally:
        model.train(was_training)
    logprobs = torch.log_softmax(logits, dim=-1).gather(1, ids[0, 1:, None])[:, 0].cpu()
    return (logprobs, logits.std(dim=-1).mean().item()) if with_scale else logprobs


@dataclass
class WeightSyncCheck:
    """The tolerance rule of the module doc, as a small state machine fed one (trainer, engine) pair per sync."""

    mode: str = "error"
    factor: float = FACTOR
    floor: float = FLOOR
    stale_share: float = STALE_SHARE
    baseline: tuple[float, float] | None = None  # (gap_0, scale_0), set by the first sync
    previous: torch.Tensor | None = field(default=None, repr=False, compare=False)  # trainer's probe at the last sync
    history: list[dict] = field(default_factory=list)

    def tolerance(self, scale: float, move: float = 0.0) -> float:
        """The noise tolerance at logit spread ``scale``, or ``stale_share`` x the trainer's ``move`` if larger."""
        gap0, scale0 = self.baseline
        noise = max(self.factor * gap0, self.floor) * max(1.0, scale / max(scale0, 1e-6))
        return max(noise, self.stale_share * move)

    def observe(self, trainer: torch.Tensor, engine: torch.Tensor, scale: float, step: int, where: str) -> dict:
        """Record one sync; raise (``error``) or warn (``warn``) when the engine does not serve the trainer's model.

        ``trainer`` / ``engine``: the probe's log-probs on each side; ``scale``: the trainer's logit spread.
        """
        gap = _max_abs_diff(engine, trainer)
        move = _max_abs_diff(trainer, self.previous) if self.previous is not None else 0.0
        self.previous = trainer.detach().clone()
        if self.baseline is None:  # the first sync calibrates; it only has to be the same model
            tolerance = FIRST_SYNC_MAX
            self.baseline = (min(gap, FIRST_SYNC_MAX), scale)
        else:
            tolerance = self.tolerance(scale, move if math.isfinite(move) else 0.0)
        record = {"step": step, "gap": gap, "tolerance": tolerance, "scale": scale, "move": move}
        record["ok"] = gap <= tolerance
        self.history.append(record)
        if not record["ok"]:
            message = self.message(record, trainer, engine, where)
            if self.mode == "error":
                raise SyncMismatchError(message)
            warnings.warn(message, RuntimeWarning, stacklevel=2)
        return record

    def message(self, record: dict, trainer: torch.Tensor, engine: torch.Tensor, where: str) -> str:
        shown = slice(0, 6)
        if len(self.history) == 1:
            rule = (
                f"tolerance {FIRST_SYNC_MAX:g} at the first sync, where both sides should hold the same checkpoint: "
                "the engine computes with another model"
            )
        else:
            rule = (
                f"tolerance {record['tolerance']:.4g}: the larger of max({self.factor:g} x {self.baseline[0]:.3g} "
                f"measured at the first sync, {self.floor:g}) scaled with the logits, and {self.stale_share:g} x the "
                f"trainer's move since the last sync ({record['move']:.4g})"
            )
        trainer_shown = [round(v, 3) for v in trainer[shown].tolist()]
        engine_shown = [round(v, 3) for v in engine[shown].tolist()]
        return (
            f"vllm_sync_check: after the weight sync at step {record['step']}, {where} does not serve the trainer's "
            f"weights: probe log-probs differ by up to {record['gap']:.4g} nats ({rule}). Trainer {trainer_shown}, "
            f"engine {engine_shown}. Training on its rollouts would learn from another policy's samples. Likely "
            "causes: a server started without the weight-sync extension (start it with "
            "`asym-trl vllm-serve MODEL --weight-sync disk`), a server of another model or revision, or a backend "
            "that does not refresh its kernels after a reload (docs/vllm.md). To continue anyway, set "
            "vllm_sync_check='warn' (or 'off')."
        )


def _max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| in float64; inf where it is not finite (a NaN from the engine is a mismatch)."""
    value = (a.double() - b.double()).abs().max().item()
    return value if math.isfinite(value) else math.inf
