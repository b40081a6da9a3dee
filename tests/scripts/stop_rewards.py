"""Reward functions for tests/test_stopping.py, named in recipes as ``tests.scripts.stop_rewards:<name>``.

Each is the toy task's reward (``asym_trl.apps.tiny.toy_sum_reward``) plus one way of going wrong, switched on by
environment variables so that the straight run of a comparison uses the same function untouched.
"""

from __future__ import annotations

import os
import signal
import time

from asym_trl.apps.tiny import toy_sum_reward
from asym_trl.task.rewards import completion_text

CALLS = {"n": 0}  # reward calls in this process


def _call_number() -> int:
    CALLS["n"] += 1
    return CALLS["n"]


def signalling_reward(completions, answer, **kwargs):
    """On call ``STOP_TEST_SIGNAL_CALL`` of rank ``STOP_TEST_SIGNAL_RANK`` (default 0), send ``STOP_TEST_SIGNAL`` to
    this process: the signal arrives in the middle of that optimizer step's generation, on that rank alone."""
    n = _call_number()
    name = os.environ.get("STOP_TEST_SIGNAL")
    rank = os.environ.get("RANK", "0") == os.environ.get("STOP_TEST_SIGNAL_RANK", "0")
    if name and rank and n == int(os.environ["STOP_TEST_SIGNAL_CALL"]):
        os.kill(os.getpid(), signal.Signals[name])
    return toy_sum_reward(completions, answer)


def failing_reward(completions, answer, **kwargs):
    """Raises on call ``STOP_TEST_FAIL_CALL`` (a grader that goes down)."""
    if _call_number() == int(os.environ.get("STOP_TEST_FAIL_CALL", "0")):
        raise ConnectionError("grader at http://grader:8000 is unreachable")
    return toy_sum_reward(completions, answer)


def flaky_reward(completions, answer, **kwargs):
    """Fails whenever one of its completions has an odd length (about half of them)."""
    if any(len(completion_text(c)) % 2 for c in completions):
        raise TimeoutError("grader timed out")
    return toy_sum_reward(completions, answer)


def slow_reward(completions, answer, **kwargs):
    """Sleeps ``STOP_TEST_SLEEP`` seconds per call (a long generation or verification)."""
    time.sleep(float(os.environ.get("STOP_TEST_SLEEP", "0")))
    return toy_sum_reward(completions, answer)


def string_reward(completions, **kwargs):
    return ["1.0" for _ in completions]


def none_reward(completions, **kwargs):
    return [None for _ in completions]


def empty_dataset():
    """A training-set factory that returns no rows."""
    from datasets import Dataset

    return Dataset.from_list([])
