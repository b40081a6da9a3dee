"""Accuracy/format rewards: a table of judged answers, hostile completions with their time bound, threads, metrics."""

from __future__ import annotations

import threading
import time

import pytest

from asym_trl.task.rewards import (
    REWARD_FUNCS,
    TIMEOUT_ENV,
    AnswerLimits,
    MathVerifier,
    accuracy_reward,
    check_answer,
    check_statuses,
    extract_boxed,
    format_reward,
    get_verifier,
    normalize_gold,
    refusal_reason,
    score_completions,
)

# (completion, gold solution, expected reward).  1.0 equivalent; 0.0 wrong, no boxed answer or an answer that cannot
# be verified; None (unscorable) only for a gold answer that does not parse.
CASES = [
    # equivalent forms
    ("The answer is \\boxed{42}.", "42", 1.0),
    ("\\boxed{42.0}", "42", 1.0),
    ("\\boxed{\\frac{1}{2}}", "\\frac12", 1.0),
    ("\\boxed{0.5}", "\\frac{1}{2}", 1.0),
    ("\\boxed{\\dfrac{3}{4}}", "0.75", 1.0),
    ("\\boxed{2\\sqrt{2}}", "\\sqrt{8}", 1.0),
    ("\\boxed{\\sqrt{2}/2}", "\\frac{\\sqrt{2}}{2}", 1.0),
    ("\\boxed{x = 3}", "3", 1.0),
    ("\\boxed{(1, 2)}", "(1,2)", 1.0),
    ("\\boxed{3, 1, 2}", "1, 2, 3", 1.0),
    ("\\boxed{50\\%}", "50", 1.0),
    ("\\boxed{\\pi}", "\\pi", 1.0),
    ("\\boxed{2\\pi}", "\\pi \\cdot 2", 1.0),
    ("\\boxed{x^2+2x+1}", "(x+1)^2", 1.0),
    ("\\boxed{[0, 1)}", "[0,1)", 1.0),
    ("\\boxed{-\\frac{7}{3}}", "-\\frac73", 1.0),
    ("\\boxed{10^{3}}", "1000", 1.0),
    ("\\boxed{1,000}", "1000", 1.0),
    ("\\boxed{\\text{(B)}}", "\\text{(B)}", 1.0),
    ("first \\boxed{5}, corrected: \\boxed{7}", "7", 1.0),  # the last box counts
    ("\\fbox{12}", "12", 1.0),
    ("\\boxed 9", "9", 1.0),
    ("\\boxed{\\frac{1}{2}}", "$\\frac{1}{2}$", 1.0),  # gold already wrapped in $...$
    ("\\boxed{6}", "so the total is \\boxed{6}.", 1.0),  # gold is a worked solution (MATH's column)
    ("\\boxed{27}", 27.0, 1.0),  # numeric gold (AMC's float column)
    ("\\boxed{\\frac{1}{2}, 3}", ["$\\frac{1}{2}$", "$3$"], 1.0),  # list gold (OlympiadBench)
    ([{"role": "assistant", "content": "\\boxed{5}"}], "5", 1.0),  # conversational completion
    ("\\boxed{2^{10000}}", "2^{10000}", 1.0),  # big but cheap power
    # wrong answers
    ("\\boxed{41}", "42", 0.0),
    ("\\boxed{\\frac{1}{3}}", "\\frac12", 0.0),
    ("\\boxed{-2}", "2", 0.0),
    ("\\boxed{x^2+1}", "(x+1)^2", 0.0),
    ("\\boxed{(2, 1)}", "(1,2)", 0.0),
    ("\\boxed{[0, 1]}", "[0,1)", 0.0),
    ("\\boxed{7}, corrected: \\boxed{5}", "7", 0.0),  # the last box counts
    ("\\boxed{\\sqrt{3}}", "\\sqrt{8}", 0.0),
    ("\\boxed{__import__('os').system('echo pwned')}", "2", 0.0),  # parsed as symbols, never executed
    ("\\boxed{hello}", "5", 0.0),
    # no boxed answer
    ("The answer is 42.", "42", 0.0),
    ("", "42", 0.0),
    ("\\boxed{}", "42", 0.0),
    ("\\boxed{42", "42", 0.0),  # never closed
    ("$42$", "42", 0.0),  # right number, but not boxed
    # unparseable gold: no completion can be judged
    ("\\boxed{42}", "", None),
    ("\\boxed{42}", "\\boxed{}", None),
    # refused by the pre-checks: wrong (a policy must not escape its penalty with answers nobody can check)
    ("\\boxed{9^{9^{9^{9}}}}", "1", 0.0),
    ("\\boxed{10^{100000}}", "1", 0.0),
    ("\\boxed{100000!}", "1", 0.0),
    ("\\boxed{" + "(" * 20 + "1" + ")" * 20 + "}", "1", 0.0),
    ("\\boxed{" + "1+" * 300 + "1}", "301", 0.0),
]


@pytest.fixture(scope="module")
def verifier():
    v = MathVerifier()
    yield v
    v.close()


@pytest.fixture(scope="module")
def patient_verifier():
    """For judgments, not speed: a bound that a loaded CI machine cannot hit on legitimate answers."""
    v = MathVerifier(timeout_s=30)
    yield v
    v.close()


def test_case_table_size():
    assert len(CASES) >= 40
    assert {expected for _, _, expected in CASES} == {1.0, 0.0, None}


@pytest.mark.parametrize(("completion", "gold", "expected"), CASES, ids=range(len(CASES)))
def test_accuracy_cases(completion, gold, expected, patient_verifier):
    assert score_completions([completion], [gold], patient_verifier)[0] == [expected]


def test_extract_boxed():
    assert extract_boxed("a \\boxed{\\frac{1}{2}} b") == "\\frac{1}{2}"
    assert extract_boxed("\\boxed{1} then \\boxed{{2}}") == "{2}"
    assert extract_boxed("\\boxed{1} then \\fbox{3}") == "3"
    assert extract_boxed("\\boxed 7$") == "7"
    assert extract_boxed("\\boxed{unclosed") is None
    assert extract_boxed("no box") is None


def test_normalize_gold():
    assert normalize_gold("\\sqrt{8}") == "$\\sqrt{8}$"
    assert normalize_gold("$$x=2$$") == "$x=2$"
    assert normalize_gold("Thus \\boxed{\\frac{1}{2}}.") == "$\\frac{1}{2}$"
    assert normalize_gold(27.0) == "$27$"
    assert normalize_gold(["$1$", "$2$"]) == "$1, 2$"


def test_refusal_reasons():
    assert refusal_reason("\\frac{1}{2}") is None
    assert refusal_reason("e^{x^{2}}") is None  # symbolic tower: fine
    assert refusal_reason("2^{2^{10}}") is None  # 2^1024: cheap
    assert refusal_reason("9^{9^{9}}") == "huge_power"
    assert refusal_reason("x^{9^{9^{9}}}") == "huge_power"
    assert refusal_reason("2^{-9^{9^{9}}}") == "huge_power"  # 9^{-n} costs sympy what 9^n does
    assert refusal_reason("9^{(9^{9})}") == "huge_power"
    assert refusal_reason("9^{\\left(9^{9}\\right)}") == "huge_power"
    assert refusal_reason("2^{-3}") is None and refusal_reason("(x+1)^{2}") is None
    assert refusal_reason("x" * 401) == "too_long"
    assert refusal_reason("{" * 7 + "1" + "}" * 7) == "too_nested"
    assert refusal_reason("1001!") == "huge_factorial"
    assert refusal_reason("x" * 10, AnswerLimits(max_chars=5)) == "too_long"


HOSTILE = {
    "code_injection": "\\boxed{__import__('os').system('touch /tmp/asym_trl_pwned')}",
    "eval_in_text": "eval(\"__import__('os').system('touch /tmp/asym_trl_pwned')\") \\boxed{exec('1')}",
    "power_tower": "\\boxed{9^{9^{9^{9}}}}",
    "deep_nesting": "\\boxed{" + "{" * 10_000 + "1" + "}" * 10_000 + "}",
    "deep_parens_short": "\\boxed{" + "(" * 6 + "1" + ")" * 6 + "}",  # inside the limits: parsed, slowly
    "megabyte_text": "blah " * 200_000 + "\\boxed{1}",
    "megabyte_box": "\\boxed{" + "1+" * 500_000 + "1}",
    "megabyte_unclosed": "\\boxed{" + "{" * 1_000_000,
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_completions_return_fast(name, verifier, tmp_path):
    check_answer("\\boxed{1}", "1", verifier)  # a warm worker: its start-up is not part of the bound
    start = time.monotonic()
    status = check_answer(HOSTILE[name], "1", verifier)
    elapsed = time.monotonic() - start
    assert elapsed < 2.0, f"{name} took {elapsed:.2f} s ({status})"
    assert status in {"wrong", "correct", "no_answer", "timeout"} or status.startswith("refused:")
    assert not (tmp_path.parent / "asym_trl_pwned").exists()
    import os

    assert not os.path.exists("/tmp/asym_trl_pwned")


def test_hard_timeout_kills_and_recovers():
    # Loosen the pre-checks so that an exponentially slow parse reaches the worker; the hard bound must stop it.
    v = MathVerifier(timeout_s=0.5, limits=AnswerLimits(max_nesting=100))
    slow = "\\boxed{" + "{" * 14 + "1" + "}" * 14 + "}"
    try:
        assert v.check("$1$", "1") == "correct"
        start = time.monotonic()
        assert check_answer(slow, "1", v) == "timeout"
        assert time.monotonic() - start < 1.5
        assert v.restarts == 1
        assert v.check("$\\frac{1}{2}$", "0.5") == "correct"  # a fresh worker took over
        # in the middle of a pipelined batch: the pairs in flight behind the slow one are re-sent to a new worker
        batch = ["\\boxed{1}", "\\boxed{2}", slow, "\\boxed{1}", "\\boxed{3}"] * 2
        assert (
            check_statuses(batch, ["1", "1", "1", "1", "3"] * 2, v)
            == ["correct", "wrong", "timeout", "correct", "correct"] * 2
        )
        assert v.restarts == 3
    finally:
        v.close()


def test_a_dead_worker_is_replaced():
    v = MathVerifier(timeout_s=30)
    try:
        assert v.check("$2$", "2") == "correct"
        v._proc.kill()  # e.g. killed by the OOM killer between batches
        v._proc.wait()
        assert v.check("$2$", "2") == "correct"
    finally:
        v.close()


def test_reward_in_a_thread_and_concurrently():
    """math-verify's signal-based timeouts fail outside the main thread; ours must not."""
    completions = ["\\boxed{2\\sqrt2}", "\\boxed{3}", "no answer", "\\boxed{9^{9^{9}}}"]
    solutions = ["\\sqrt{8}", "4", "1", "1"]
    results = {}

    def run(i):
        results[i] = accuracy_reward(completions, solutions)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results == {i: [1.0, 0.0, 0.0, 0.0] for i in range(3)}


def test_unscorable_and_no_answer_metrics():
    logged = {}
    rewards = accuracy_reward(
        ["\\boxed{1}", "\\boxed{9^{9^{9}}}", "nothing", "\\boxed{2}"],
        ["1", "1", "1", ""],
        log_metric=lambda name, value: logged.setdefault(name, value),
    )
    assert rewards == [1.0, 0.0, 0.0, None]  # refused answer: wrong; unparseable gold: unscorable
    assert logged == {
        "accuracy/unscorable_frac": 0.25,
        "accuracy/no_answer_frac": 0.25,
        "accuracy/unverifiable_frac": 0.25,
    }


def test_format_reward():
    assert format_reward(
        ["\\boxed{1}", "\\boxed{}", "1", "\\boxed{1", [{"role": "assistant", "content": "\\boxed{x}"}]]
    ) == [
        1.0,
        0.0,
        0.0,
        0.0,
        1.0,
    ]


def test_registry_and_errors():
    assert REWARD_FUNCS["accuracy"] is accuracy_reward and REWARD_FUNCS["format"] is format_reward
    with pytest.raises(ValueError, match="got 2 completions but 1 solutions"):
        accuracy_reward(["a", "b"], ["1"])
    with pytest.raises(TypeError, match="completion must be"):
        accuracy_reward([3], ["1"])
    with pytest.raises(ValueError, match="timeout_s"):
        MathVerifier(timeout_s=0)


def test_shared_verifier_is_per_process():
    assert get_verifier() is get_verifier()


def _score_in_subprocess(args):
    completions, solutions = args
    return accuracy_reward(completions, solutions)


@pytest.mark.slow
def test_two_processes_match_one(monkeypatch):
    """Under several processes (as accelerate runs them) each has its own worker and gives the same rewards."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    monkeypatch.setenv(TIMEOUT_ENV, "30")  # this test is about processes, not speed: the machine may be loaded

    completions = [case[0] for case in CASES]
    solutions = [case[1] for case in CASES]
    half = len(CASES) // 2
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork")) as pool:
        parts = list(
            pool.map(
                _score_in_subprocess, [(completions[:half], solutions[:half]), (completions[half:], solutions[half:])]
            )
        )
    assert parts[0] + parts[1] == [case[2] for case in CASES]


def test_rewards_in_a_real_trl_run(tiny_model_path, cpu_config):
    """Data -> rewards -> TRL contract: the `solution` column reaches the rewards and the metrics reach the logs."""
    from asym_trl import AsymGRPOTrainer
    from asym_trl.task.data import load_train_dataset

    dataset = load_train_dataset("basic_arithmetic", size=16)
    trainer = AsymGRPOTrainer(
        model=tiny_model_path,
        reward_funcs=[REWARD_FUNCS["accuracy"], REWARD_FUNCS["format"]],
        args=cpu_config(max_steps=1, max_completion_length=4, success_reward_func="accuracy"),
        train_dataset=dataset,
    )
    trainer.train()
    logs = trainer.state.log_history[0]
    # a random tiny model writes no boxed answer in 4 tokens: every completion is a scorable 0
    assert logs["rewards/accuracy_reward/mean"] == 0.0 and logs["rewards/format_reward/mean"] == 0.0
    assert logs["accuracy/no_answer_frac"] == 1.0 and logs["accuracy/unscorable_frac"] == 0.0


LATEXISH = "0123456789+-*/^_{}()[]!.,= x\\frac\\sqrt\\boxed\\left\\right\\pi e"


def test_fuzz_extraction_and_prechecks_never_fail():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=300, deadline=None)
    @given(st.text(alphabet=LATEXISH, max_size=300))
    def check(text):
        answer = extract_boxed(text)
        assert answer is None or answer in text
        refusal_reason(text)  # never raises, whatever the input
        normalize_gold(text)

    check()


def test_fuzz_scoring_is_bounded(verifier):
    """Random LaTeX-ish answers through the real worker: a valid status for each, each within the bound."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    allowed = {"correct", "wrong", "no_answer", "timeout", "error"}

    @settings(max_examples=15, deadline=None)
    @given(st.text(alphabet=LATEXISH, min_size=1, max_size=60))
    def check(answer):
        check_answer("\\boxed{1}", "1", verifier)  # warm worker
        start = time.monotonic()
        status = check_answer(f"\\boxed{{{answer}}}", "1", verifier)
        assert time.monotonic() - start < verifier.timeout_s + 0.5
        assert status in allowed or status.startswith("refused:")

    check()
