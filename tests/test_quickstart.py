"""The quickstart task and its learning claim: AsymGRPO raises held-out accuracy over the SFT warm start."""

from __future__ import annotations

import json

import pytest
import torch

from asym_trl.apps.quickstart import QuickstartSettings, run_quickstart, warm_start
from asym_trl.apps.tiny import last_digit_answer, last_digit_reward, last_digit_splits


def _pairs(dataset):
    return {row[0]["content"] for row in dataset["prompt"]}


def test_splits_are_disjoint_and_cover_every_problem():
    train, test = last_digit_splits(num_test=100, seed=3, low=10, high=29)
    assert len(test) == 100 and len(train) == 20 * 20 - 100
    assert not _pairs(train) & _pairs(test)
    rows = [r for split in (train, test) for r in split if " 17 + 25?" in r["prompt"][0]["content"]]
    assert len(rows) == 1
    assert rows[0]["completion"][0]["content"] == "7 + 5 = 12, so 2" and rows[0]["solution"] == "2"


def test_noise_corrupts_only_the_final_digit_of_train_demonstrations():
    clean_train, clean_test = last_digit_splits(num_test=200, seed=0)
    train, test = last_digit_splits(num_test=200, seed=0, noise=0.5)
    assert test["completion"] == clean_test["completion"]  # the held-out split stays clean
    assert train["prompt"] == clean_train["prompt"] and train["solution"] == clean_train["solution"]
    wrong = [
        last_digit_answer(noisy[0]["content"]) != gold
        for noisy, gold in zip(train["completion"], train["solution"], strict=True)
    ]
    assert 0.45 < sum(wrong) / len(wrong) < 0.55
    for noisy, clean in zip(train["completion"], clean_train["completion"], strict=True):
        assert noisy[0]["content"][:-1] == clean[0]["content"][:-1]  # the worked step is untouched


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_test": 0}, "num_test"),
        ({"num_test": 8100}, "num_test"),
        ({"noise": 1.5}, "noise"),
        ({"low": 50, "high": 10}, "low"),
    ],
)
def test_bad_split_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        last_digit_splits(**kwargs)


def test_reward_reads_the_final_digit_only():
    completions = [
        "7 + 5 = 12, so 2",
        "7 + 5 = 12, so 3",
        "2",
        "so 2 and more",
        [{"role": "assistant", "content": "so 2 "}],
    ]
    assert last_digit_reward(completions, ["2"] * 5) == [1.0, 0.0, 0.0, 0.0, 1.0]


@pytest.fixture
def one_torch_thread():
    """The tiny model gains nothing from threads; on a loaded 2-core machine extra threads cost several x."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_asymgrpo_raises_held_out_accuracy(tmp_path, one_torch_thread):
    """The README's claim on a reduced RL budget (30 steps, 200 held-out problems), fixed seed."""
    settings = QuickstartSettings(rl_steps=30, num_test=200, eval_samples=4, curve_every=10, curve_problems=50)
    summary = run_quickstart(settings, tmp_path / "run", cache_dir=tmp_path / "cache")
    before, after = summary["before"], summary["after"]

    assert 0.05 < before["sampled_accuracy"] < 0.6  # partly right: the estimators have signal
    # ... in at least a fifth of the groups (mixed outcomes). The warm start's exact shares depend on the CPU's float
    # kernels (none-solved 0.5 on an AVX-512 Xeon, lower on others), so the test asks for signal, not a number.
    assert before["none_solved"] + before["all_solved"] < 0.8
    assert after["sampled_accuracy"] > before["sampled_accuracy"] + 0.05
    assert after["greedy_accuracy"] > before["greedy_accuracy"]
    assert after["none_solved"] < before["none_solved"]

    run = tmp_path / "run"
    history = json.loads((run / "trainer_state.json").read_text())["log_history"]
    assert [h["step"] for h in history if "heldout/sampled_accuracy" in h] == [10, 20, 30]
    assert any("groups/all_solved" in h for h in history)  # the trainer's diagnostics are in the log
    assert (run / "quickstart.png").stat().st_size > 0 and (run / "diagnostics.png").stat().st_size > 0

    # the warm start is cached: the same settings reuse it without training again
    sft_dir = tmp_path / "cache" / f"sft-{settings.sft_key()}"
    stamp = (sft_dir / "model.safetensors").stat().st_mtime_ns
    assert warm_start(settings, tmp_path / "cache", train_dataset=None) == sft_dir
    assert (sft_dir / "model.safetensors").stat().st_mtime_ns == stamp


def test_quiet_console_filters_only_the_libraries_noise():
    import warnings

    import datasets
    from transformers.utils import logging as hf_logging

    from asym_trl.apps.quickstart import quiet_console

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            quiet_console()
            for text in (
                "`gradient_checkpointing` is deprecated and will be removed in v6.",
                "`is_gradient_checkpointing` is deprecated and will be removed in v6.",
                "`learning_rate` is deprecated",  # anything else still shows
            ):
                warnings.warn(text, FutureWarning, stacklevel=1)
            warnings.warn("`gradient_checkpointing` is deprecated", UserWarning, stacklevel=1)
        assert [str(w.message) for w in caught] == [
            "`learning_rate` is deprecated",
            "`gradient_checkpointing` is deprecated",
        ]
        assert not datasets.is_progress_bar_enabled() and not hf_logging.is_progress_bar_enabled()
    finally:
        datasets.enable_progress_bar()
        hf_logging.enable_progress_bar()
