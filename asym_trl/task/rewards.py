"""Verifiable math rewards (TRL reward-function signature) and their registry, ``REWARD_FUNCS``.

``REWARD_FUNCS`` maps a name to ``fn(completions, solution, **kwargs) -> list[float | None]``:

- ``"accuracy"``: 1.0 when the last ``\\boxed{...}`` of the completion is mathematically equivalent to the gold
  ``solution`` (math-verify), 0.0 when it is not, when there is no boxed answer, or when the *answer* cannot be
  verified (refused by a pre-check, verifier timeout or failure: scoring those 0 keeps the policy from escaping a
  penalty with garbage answers); ``None`` only when the *gold* answer does not parse.  TRL turns ``None`` into NaN;
  such a rollout is left out of its group's success rate and gets advantage 0.
- ``"format"``: 1.0 when the completion contains a closed, non-empty ``\\boxed{...}`` answer, else 0.0.

Model output is untrusted: the boxed answer is extracted here in linear time, and judged by the time-bounded
verifier of :mod:`asym_trl.task.verifier` (pre-checks, then math-verify in a worker process that is killed on timeout).

A pair is *unscorable* (``None``) only when the gold answer does not parse.  Answers a check refuses, or whose
verification times out or fails, are *unverifiable* and score 0.0.  Both are counted, in the
``accuracy/unscorable_frac`` and ``accuracy/unverifiable_frac`` metrics (through TRL's ``log_metric``), so that they
are never silent.
"""

from __future__ import annotations

import re

from .verifier import (
    CORRECT,
    GOLD_UNPARSEABLE,
    NO_ANSWER,
    REFUSED,
    TIMEOUT_ENV,
    AnswerLimits,
    MathVerifier,
    get_verifier,
    is_unverifiable,
    refusal_reason,
)

__all__ = [
    "REWARD_FUNCS",
    "TIMEOUT_ENV",
    "completion_text",
    "UNSCORABLE",
    "UNSCORABLE_STATUSES",
    "AnswerLimits",
    "MathVerifier",
    "accuracy_reward",
    "check_answer",
    "check_statuses",
    "extract_boxed",
    "format_reward",
    "get_verifier",
    "is_unverifiable",
    "normalize_gold",
    "refusal_reason",
    "score_completions",
]

UNSCORABLE = None  # the reward of a pair that cannot be scored (TRL: NaN, excluded from the group statistics)

# ----------------------------------------------------------------------------------------------------------------
# Extraction (linear time in the completion length; no regex backtracking on model output)
# ----------------------------------------------------------------------------------------------------------------

_BOX_COMMANDS = ("\\boxed", "\\fbox")


def completion_text(completion) -> str:
    """Text of a TRL completion: a string, or a conversation whose last message is the model's."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        content = completion[-1].get("content", "")
        if isinstance(content, list):  # multimodal content parts
            return "".join(part.get("text", "") for part in content if isinstance(part, dict))
        return content if isinstance(content, str) else ""
    raise TypeError(f"a completion must be a string or a list of chat messages, got {type(completion).__name__}")


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``, or ``\\boxed x``) in ``text``; ``None`` if none.

    An unclosed last box yields ``None``.  Runs in O(len(text)).
    """
    start = max(text.rfind(cmd) for cmd in _BOX_COMMANDS)
    if start < 0:
        return None
    i = start + (len("\\boxed") if text.startswith("\\boxed", start) else len("\\fbox"))
    if i < len(text) and text[i] == " ":  # "\boxed 5": the next token, up to whitespace or '$'
        match = re.match(r" +([^\s$]+)", text[i : i + 1000])
        return match.group(1) if match else None
    if i >= len(text) or text[i] != "{":
        return None
    depth = 0
    for j in range(i, len(text)):
        char = text[j]
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j]
    return None


def normalize_gold(solution) -> str:
    """Gold answer wrapped as ``$...$`` so that math-verify parses it (a bare ``\\sqrt{8}`` parses to nothing).

    Accepts a bare answer (``"\\frac{1}{2}"``, ``"28080"``, ``"$x=2$"``), a worked solution ending in ``\\boxed{}``
    (MATH's ``solution`` column), a number, or a list of answers (OlympiadBench), joined by commas.
    """
    if isinstance(solution, (list, tuple)):
        return normalize_gold(", ".join(_strip_dollars(str(s)) for s in solution))
    if solution is None:  # a missing gold answer: "$$" parses to nothing, so the pair is unscorable
        solution = ""
    if isinstance(solution, float) and solution.is_integer():
        solution = int(solution)
    text = str(solution).strip()
    boxed = extract_boxed(text)
    answer = boxed if boxed is not None else _strip_dollars(text)
    return f"${answer.strip()}$"


def _strip_dollars(text: str) -> str:
    text = text.strip()
    while len(text) >= 2 and text.startswith("$") and text.endswith("$"):
        text = text[1:-1].strip()
    return text


def _prepare(completion, solution, limits: AnswerLimits) -> str | tuple[str, str]:
    """A final status decided without the verifier, or the ``(gold, answer)`` pair it must judge."""
    answer = extract_boxed(completion_text(completion))
    if answer is None or not answer.strip():
        return NO_ANSWER
    reason = refusal_reason(answer, limits)
    if reason is not None:
        return f"{REFUSED}{reason}"
    return normalize_gold(solution), answer


def check_statuses(completions, solutions, verifier: MathVerifier | None = None) -> list[str]:
    """Status of each completion against its gold solution.

    ``"correct"`` / ``"wrong"``; ``"no_answer"`` when there is no (closed) boxed answer; ``"refused:<reason>"`` for an
    answer refused by the pre-checks; ``"gold_unparseable"``, ``"timeout"`` or ``"error"`` from the verifier.
    """
    verifier = verifier or get_verifier()
    prepared = [_prepare(c, s, verifier.limits) for c, s in zip(completions, solutions, strict=True)]
    verdicts = iter(verifier.check_many([p for p in prepared if isinstance(p, tuple)]))
    return [next(verdicts) if isinstance(p, tuple) else p for p in prepared]


def check_answer(completion, solution, verifier: MathVerifier | None = None) -> str:
    """:func:`check_statuses` of one completion."""
    return check_statuses([completion], [solution], verifier)[0]


# Every other status (refused:*, timeout, error: the model's answer could not be verified) is wrong: 0.0.
UNSCORABLE_STATUSES = frozenset({GOLD_UNPARSEABLE})  # not the model's fault: left out of the group (None)


# ----------------------------------------------------------------------------------------------------------------
# TRL reward functions
# ----------------------------------------------------------------------------------------------------------------


def score_completions(completions, solution, verifier: MathVerifier | None = None) -> tuple[list, list[str]]:
    """Rewards (1.0 / 0.0 / ``None``) and statuses (see :func:`check_answer`) of completions against gold answers."""
    if len(completions) != len(solution):
        raise ValueError(f"got {len(completions)} completions but {len(solution)} solutions")
    statuses = check_statuses(completions, solution, verifier)
    return [UNSCORABLE if s in UNSCORABLE_STATUSES else float(s == CORRECT) for s in statuses], statuses


def accuracy_reward(completions, solution, **kwargs) -> list[float | None]:
    """1.0 if the last boxed answer equals the gold ``solution`` (math-verify); 0.0 if not, absent or unverifiable;
    ``None`` if the gold does not parse.  Logs ``accuracy/{unscorable,unverifiable,no_answer}_frac`` (log_metric)."""
    rewards, statuses = score_completions(completions, solution)
    log_metric = kwargs.get("log_metric")
    if log_metric is not None and statuses:
        log_metric("accuracy/unscorable_frac", sum(r is None for r in rewards) / len(rewards))
        log_metric("accuracy/no_answer_frac", statuses.count(NO_ANSWER) / len(statuses))
        log_metric("accuracy/unverifiable_frac", sum(map(is_unverifiable, statuses)) / len(statuses))
    return rewards


def format_reward(completions, **kwargs) -> list[float]:
    """1.0 when the completion contains a closed, non-empty ``\\boxed{...}`` answer, else 0.0."""
    rewards = []
    for completion in completions:
        answer = extract_boxed(completion_text(completion))
        rewards.append(float(answer is not None and bool(answer.strip())))
    return rewards


REWARD_FUNCS = {"accuracy": accuracy_reward, "format": format_reward}
