"""The time-bounded math verifier: math-verify in a worker process that is killed when a pair runs too long.

Model output is untrusted.  Nothing in it is executed: the only thing that reads it is math-verify's LaTeX parser
(never ``eval``/``sympify`` of raw text).  Checking an extracted answer against a gold answer is bounded in time in
any thread or process:

1. cheap checks on the answer (length, bracket nesting, power towers, huge factorials) refuse inputs known to make
   the parser or sympy blow up (math-verify's parse time grows exponentially with bracket nesting);
2. everything else runs in a persistent worker *process* that is killed and restarted when one pair exceeds
   ``timeout_s``.  math-verify's own timeouts use ``signal.alarm``, which only works in the main thread; a killed
   process works everywhere (TRL's async reward loop, threads, several accelerate processes).

The statuses below are what a check can end in; :mod:`asym_trl.task.rewards` turns them into rewards and
:mod:`asym_trl.task.evaluation` counts them.  An answer is *unverifiable* (:func:`is_unverifiable`) when a pre-check
refused it or its verification timed out or failed: it scores 0.0, like a wrong answer.

This module imports only the standard library at top level: the worker process loads this very file as a standalone
module (``python -c``) to run :func:`_worker_loop`, without importing the package, torch or TRL.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import re
import select
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "CORRECT",
    "DEFAULT_TIMEOUT_S",
    "ERROR",
    "GOLD_UNPARSEABLE",
    "NO_ANSWER",
    "REFUSED",
    "TIMEOUT",
    "TIMEOUT_ENV",
    "WRONG",
    "AnswerLimits",
    "MathVerifier",
    "get_verifier",
    "is_unverifiable",
    "refusal_reason",
]

# Statuses of a checked answer: from the worker, or decided before it (no answer, refused by a pre-check).
CORRECT, WRONG, GOLD_UNPARSEABLE, ERROR, TIMEOUT = "correct", "wrong", "gold_unparseable", "error", "timeout"
NO_ANSWER = "no_answer"  # no closed, non-empty boxed answer
REFUSED = "refused:"  # prefix of "refused:<reason>" (see refusal_reason)


def is_unverifiable(status: str) -> bool:
    """The model's answer could not be verified: refused by a pre-check, timed out or failed (it scores 0.0)."""
    return status.startswith(REFUSED) or status in (TIMEOUT, ERROR)


# ----------------------------------------------------------------------------------------------------------------
# Cheap pre-checks on an extracted answer
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AnswerLimits:
    """Answers outside these limits are refused without being parsed (unverifiable: they score 0.0).

    Defaults keep every realistic competition answer (MATH's longest boxed answers are ~150 characters with nesting
    depth ~4) while a worst case inside them parses in about a second.
    """

    max_chars: int = 400
    max_nesting: int = 6  # brackets of any kind, {} [] () and \left/\right pairs count once each
    max_exponent: float = 1e4  # numeric exponents (evaluated through power towers) above this are refused
    max_factorial: int = 1000


_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def _nesting_depth(answer: str) -> int:
    depth = deepest = 0
    for char in answer:
        if char in "{[(":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "}])":
            depth = max(depth - 1, 0)
    return deepest


def _group_end(answer: str, i: int) -> int:
    """Index just past the ``{...}`` group that opens at ``answer[i]`` (or past the single token at ``i``)."""
    if i < len(answer) and answer[i] == "{":
        depth = 0
        for j in range(i, len(answer)):
            depth += {"{": 1, "}": -1}.get(answer[j], 0)
            if depth == 0:
                return j + 1
        return len(answer)
    if i < len(answer) and answer[i] == "\\":  # a command such as \pi
        match = re.match(r"\\[A-Za-z]+", answer[i:])
        return i + (len(match.group()) if match else 1)
    match = _NUMBER.match(answer, i)
    return match.end() if match else min(i + 1, len(answer))


def _numeric_value(token: str) -> float | None:
    """Upper estimate of the magnitude of a purely numeric power tower such as ``9^{-(9^{9})}``; ``None`` if it is
    not numeric.  Signs, braces and parentheses around it are ignored (sympy computes ``9^{-n}`` via ``9^n`` too)."""
    token = token.replace("\\left", "").replace("\\right", "").strip()
    while True:
        token = token.lstrip("+-").strip()
        if token.startswith("{") and _group_end(token, 0) == len(token):
            token = token[1:-1].strip()
        elif token.startswith("(") and token.endswith(")"):
            token = token[1:-1].strip()
        else:
            break
    match = _NUMBER.match(token)
    if not match:
        return None
    base = float(match.group())
    rest = token[match.end() :].strip()
    if not rest:
        return base
    if not rest.startswith("^"):
        return None
    exponent = _numeric_value(rest[1:])
    if exponent is None:
        return None
    if base <= 1:
        return base
    # log10(base ** exponent) > 300 overflows a float: report it as infinite, that is all a caller needs.
    return float("inf") if exponent * math.log10(base) > 300 else base**exponent


def refusal_reason(answer: str, limits: AnswerLimits | None = None) -> str | None:
    """Why ``answer`` is refused without parsing (``"too_long"``, ``"too_nested"``, ``"huge_power"``,
    ``"huge_factorial"``), or ``None`` when it may be parsed."""
    limits = limits or AnswerLimits()
    if len(answer) > limits.max_chars:
        return "too_long"
    if _nesting_depth(answer) > limits.max_nesting:
        return "too_nested"
    for match in re.finditer(r"\^\s*", answer):
        exponent = answer[match.end() : _group_end(answer, match.end())]
        value = _numeric_value(exponent)
        if value is not None and value > limits.max_exponent:
            return "huge_power"
    for match in re.finditer(r"(\d+)\s*!", answer):
        if int(match.group(1)) > limits.max_factorial:
            return "huge_factorial"
    return None


# ----------------------------------------------------------------------------------------------------------------
# The verification worker (a separate process; this file is loaded there as a standalone module)
# ----------------------------------------------------------------------------------------------------------------

_READY = "ready"
_WINDOW = 8  # requests in flight per worker (small: a request is at most a few hundred bytes)
DEFAULT_TIMEOUT_S = 1.5  # per pair, wall clock


def _worker_loop(memory_limit_bytes: int | None = None) -> None:  # pragma: no cover - runs in the child process
    """Read ``[gold, answer]`` JSON lines on stdin, write ``[status]`` JSON lines on stdout, until EOF."""
    import logging
    import signal
    from functools import lru_cache

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent owns this process's lifetime
    if memory_limit_bytes:
        try:
            import resource

            resource.setrlimit(resource.RLIMIT_AS, (memory_limit_bytes, memory_limit_bytes))
        except (ImportError, ValueError, OSError):
            pass
    logging.disable(logging.WARNING)  # math-verify warns once that its (signal) timeouts are off: we bound time here
    out = os.fdopen(os.dup(sys.stdout.fileno()), "w")  # the protocol's channel; anything else printed goes to stderr
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    from math_verify import parse, verify

    @lru_cache(maxsize=8192)
    def parse_gold(gold: str):
        return parse(gold, parsing_timeout=None)

    def answer(gold: str, pred: str) -> str:
        gold_parsed = parse_gold(gold)
        if not gold_parsed:
            return GOLD_UNPARSEABLE
        pred_parsed = parse(f"\\boxed{{{pred}}}", parsing_timeout=None)
        return CORRECT if verify(gold_parsed, pred_parsed, timeout_seconds=None) else WRONG

    answer("$1$", "1")  # warm up the LaTeX grammar before announcing readiness
    out.write(json.dumps([_READY]) + "\n")
    out.flush()
    for line in sys.stdin:
        try:
            gold, pred = json.loads(line)
            status = answer(gold, pred)
        except Exception:  # noqa: BLE001 - any failure of the parser: an unverifiable answer, reported as such
            status = ERROR
        out.write(json.dumps([status]) + "\n")
        out.flush()


def _decode_status(line: str) -> str:
    try:
        status = json.loads(line)[0]
    except (ValueError, IndexError, TypeError):
        return ERROR
    return status if status in (CORRECT, WRONG, GOLD_UNPARSEABLE, ERROR) else ERROR


_WORKER_BOOTSTRAP = (
    "import sys, importlib.util\n"
    "sys.path = [p for p in sys.path if p not in ('', '.')]\n"
    "spec = importlib.util.spec_from_file_location('_asym_trl_reward_worker', sys.argv[1])\n"
    "module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)\n"
    "spec.loader.exec_module(module)\n"
    "module._worker_loop(int(sys.argv[2]) or None)\n"
)


class MathVerifier:
    """A math-verify worker process with a hard per-pair time bound; safe to share between threads (POSIX: it waits
    on the worker's pipe with ``select``).

    Each pair waits at most ``timeout_s`` for its verdict.  On timeout the worker is killed and a new one starts in
    the background; the next call waits for it to be ready (at most ``startup_timeout_s``, about a second).
    """

    def __init__(
        self,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        startup_timeout_s: float = 120.0,
        memory_limit_bytes: int = 4 * 2**30,
        limits: AnswerLimits | None = None,
    ):
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        self.timeout_s = timeout_s
        self.startup_timeout_s = startup_timeout_s
        self.memory_limit_bytes = memory_limit_bytes
        self.limits = limits or AnswerLimits()
        self.restarts = 0
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._buffer = b""
        self._ready = False
        atexit.register(self.close)

    # -- process management ---------------------------------------------------------------------------------------
    def _start(self) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _WORKER_BOOTSTRAP, os.path.abspath(__file__), str(self.memory_limit_bytes or 0)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self._buffer, self._ready = b"", False

    def _kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            for stream in (self._proc.stdin, self._proc.stdout):
                stream.close()
            self._proc = None

    def close(self) -> None:
        """Stop the worker process (it is restarted on the next check)."""
        with self._lock:
            self._kill()

    def _read_line(self, deadline: float) -> str | None:
        """One line from the worker, or ``None`` if it does not come before ``deadline`` (or the worker died)."""
        fd = self._proc.stdout.fileno()
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:  # the worker exited (e.g. out of memory)
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()

    def _ensure_ready(self) -> None:
        if self._proc is None or self._proc.poll() is not None:
            self._kill()
            self._start()
        if not self._ready:
            if self._read_line(time.monotonic() + self.startup_timeout_s) != json.dumps([_READY]):
                self._kill()
                raise RuntimeError(
                    f"the math-verify worker did not start within {self.startup_timeout_s} s "
                    f"(is math-verify installed for {sys.executable}?)"
                )
            self._ready = True

    # -- scoring --------------------------------------------------------------------------------------------------
    def check(self, gold: str, answer: str) -> str:
        """Status of ``answer`` (an extracted boxed answer) against ``gold`` (normalised by :func:`normalize_gold`):
        ``"correct"``, ``"wrong"``, ``"gold_unparseable"``, ``"error"`` or ``"timeout"``."""
        return self.check_many([(gold, answer)])[0]

    def check_many(self, pairs: Sequence[tuple[str, str]]) -> list[str]:
        """:meth:`check` for many pairs, pipelined: up to ``_WINDOW`` requests are in flight so the worker never
        waits for this process to be scheduled.  The worker answers in order, so pair ``i``'s clock starts when
        pair ``i-1``'s verdict arrives; each pair gets at most ``timeout_s``."""
        statuses: list[str] = []
        with self._lock:
            sent = 0  # pairs[len(statuses):sent] are in flight
            while len(statuses) < len(pairs):
                self._ensure_ready()
                try:
                    while sent < len(pairs) and sent - len(statuses) < _WINDOW:
                        self._proc.stdin.write((json.dumps(list(pairs[sent])) + "\n").encode())
                        sent += 1
                    self._proc.stdin.flush()
                except BrokenPipeError:  # the worker died: this pair fails, the rest go to a new worker
                    self._kill()
                    statuses.append(ERROR)
                    sent = len(statuses)
                    continue
                line = self._read_line(time.monotonic() + self.timeout_s)
                if line is None:
                    died = self._proc.poll() is not None
                    self._kill()
                    self.restarts += 1
                    self._start()  # boots in the background; the pairs in flight are sent again to it
                    statuses.append(ERROR if died else TIMEOUT)
                    sent = len(statuses)
                else:
                    statuses.append(_decode_status(line))
        return statuses


TIMEOUT_ENV = "ASYM_TRL_REWARD_TIMEOUT_S"  # overrides the shared verifier's per-pair bound (e.g. on a loaded machine)
_VERIFIERS: dict[int, MathVerifier] = {}
_VERIFIERS_LOCK = threading.Lock()


def get_verifier() -> MathVerifier:
    """This process's shared :class:`MathVerifier` (a fork gets its own); its bound is ``$ASYM_TRL_REWARD_TIMEOUT_S``
    seconds per pair, 1.5 by default."""
    with _VERIFIERS_LOCK:
        pid = os.getpid()
        if pid not in _VERIFIERS:
            _VERIFIERS[pid] = MathVerifier(timeout_s=float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)))
        return _VERIFIERS[pid]
