"""How a run stops (docs/stopping.md): stop signals, published checkpoints, the crash checkpoint, flaky graders.

The signal tests run `asym_trl.train` in a subprocess on the tiny model (CPU float32) and compare the final weights
of stop + resume with those of a straight run, exactly.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from asym_trl.lifecycle.checkpoints import COMPLETE_FILE, incomplete_reason, newest_complete_checkpoint
from asym_trl.lifecycle.graceful_stop import STOP_EXIT_CODE, parse_signals
from asym_trl.train import main
from tests.scripts import stop_rewards

ROOT = Path(__file__).resolve().parents[1]
CPU_RECIPE = str(ROOT / "tests" / "fixtures" / "cpu_toy.yaml")  # the CPU recipe on the tiny model and toy task
REWARDS = "tests.scripts.stop_rewards"
# REINFORCE gives +-1 to every rollout: every step moves the weights, so a lost or repeated step shows.
REINFORCE = ["--advantage_estimator", "reinforce", "--beta_pos", "none", "--beta_neg", "none"]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
STOP_LINE = re.compile(
    r"^asym-trl train: stopped by (\S+|a stop signal on another process) at step (\d+); checkpoint (\S+); "
    r"resume with: (.+)$"
)


def args(model, output_dir, *extra, steps=6, reward="signalling_reward") -> list[str]:
    return [
        "--config", CPU_RECIPE, "--model_name_or_path", str(model), "--output_dir", str(output_dir),
        "--max_steps", str(steps), "--save_strategy", "no", "--logging_steps", "1",
        "--per_device_train_batch_size", "8", "--num_generations", "4",
        "--reward_funcs", f"{REWARDS}:{reward}", *REINFORCE, *extra,
    ]  # fmt: skip


def weights(path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(path) / "model.safetensors"))


def assert_same_weights(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), f"{name} differs"


@pytest.fixture(autouse=True)
def _fresh_process_state():
    saved = dict(os.environ)
    stop_rewards.CALLS["n"] = 0
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="module")
def straight(tiny_model_path, tmp_path_factory):
    """A straight 6-step run (the reference every stopped-and-resumed run must reproduce)."""
    out = tmp_path_factory.mktemp("straight") / "out"
    stop_rewards.CALLS["n"] = 0
    assert main(args(tiny_model_path, out)) == 0
    return out


# ---------------------------------------------------------------------------------------------- graceful stop
@pytest.mark.slow
def test_sigterm_checkpoints_and_the_resume_equals_the_straight_run(tiny_model_path, straight, tmp_path):
    """SIGTERM from outside in the middle of a run: checkpoint, one line, exit 75; the same command resumes from
    that checkpoint and ends with the straight run's weights, bit for bit."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "asym_trl.train", *args(tiny_model_path, out, "--reward_funcs",
           f"{REWARDS}:slow_reward")]  # fmt: skip
    env = {**ENV, "STOP_TEST_SLEEP": "0.3"}  # each step takes >= 0.3 s: the signal lands mid-run
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    for line in proc.stdout:  # the first logged step
        if "'loss':" in line:
            break
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    elapsed = time.monotonic() - sent
    assert proc.returncode == STOP_EXIT_CODE, err[-3000:]
    match = STOP_LINE.match(err.strip().splitlines()[-1])
    assert match, err[-3000:]
    name, step, checkpoint, resume = match.groups()
    assert name == "SIGTERM" and 1 <= int(step) < 6 and checkpoint == str(out / f"checkpoint-{step}")
    assert incomplete_reason(checkpoint) is None  # published
    assert (Path(checkpoint) / "group_diagnostics.json").is_file()  # the diagnostics' state is in it
    assert resume.startswith("asym-trl train --config ")
    assert elapsed < 30, f"signal to exit took {elapsed:.1f}s"
    print(f"signal-to-exit: {elapsed:.2f}s (stopped at step {step})")

    assert not (out / "model.safetensors").exists()  # a stopped run is not a finished one
    # the same command (the resume command is the original one) resumes from the newest complete checkpoint
    assert main(args(tiny_model_path, out, "--reward_funcs", f"{REWARDS}:slow_reward")) == 0
    state = json.loads((out / "trainer_state.json").read_text())
    assert [h["step"] for h in state["log_history"] if "loss" in h] == [1, 2, 3, 4, 5, 6]
    assert_same_weights(out, straight)


@pytest.mark.slow
def test_a_second_signal_exits_at_once(tiny_model_path, tmp_path):
    cmd = [sys.executable, "-m", "asym_trl.train", *args(tiny_model_path, tmp_path / "out", reward="slow_reward")]
    env = {**ENV, "STOP_TEST_SLEEP": "30"}  # the first step would take 30 s
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    for line in proc.stdout:
        if "batch arithmetic" in line:
            break
    time.sleep(2)  # inside the first step's reward call
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGINT
    assert time.monotonic() - sent < 5


@pytest.mark.slow
def test_two_processes_stop_together_when_one_rank_gets_the_signal(tiny_model_path, tmp_path):
    """SIGUSR1 to rank 1 alone, in the middle of step 3: both ranks stop after step 3 and write its checkpoint
    (one RNG file each); the resumed 2-process run ends where a straight 2-process run ends."""

    def launch(output_dir, **env):
        cmd = [
            sys.executable, "-m", "accelerate.commands.launch",
            "--config_file", str(ROOT / "recipes" / "accelerate_configs" / "cpu_multi.yaml"),
            "--main_process_port", str(_free_port()),
            "-m", "asym_trl.train", *args(tiny_model_path, output_dir, "--num_processes", "2"),
        ]  # fmt: skip
        started = time.monotonic()
        proc = subprocess.run(cmd, env={**ENV, **env}, capture_output=True, text=True, timeout=600, cwd=tmp_path)
        return proc, time.monotonic() - started

    reference, _ = launch(tmp_path / "straight2")
    assert reference.returncode == 0, reference.stderr[-3000:]
    stopped, seconds = launch(tmp_path / "out", STOP_TEST_SIGNAL="SIGUSR1", STOP_TEST_SIGNAL_CALL="3",
                              STOP_TEST_SIGNAL_RANK="1")  # fmt: skip
    assert stopped.returncode != 0  # the launcher reports the workers' exit code 75 as a failure
    lines = [m for line in stopped.stderr.splitlines() if (m := STOP_LINE.match(line))]
    assert len(lines) == 1, stopped.stderr[-3000:]  # printed once, by the main process
    assert lines[0].group(1) == "a stop signal on another process" and lines[0].group(2) == "3"
    checkpoint = tmp_path / "out" / "checkpoint-3"
    assert incomplete_reason(checkpoint) is None
    assert {p.name for p in checkpoint.glob("rng_state_*.pth")} == {"rng_state_0.pth", "rng_state_1.pth"}
    assert not (tmp_path / "out" / "checkpoint-4").exists()
    print(f"2 processes: launch to exit {seconds:.1f}s")

    resumed, _ = launch(tmp_path / "out")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {checkpoint}" in resumed.stdout
    assert_same_weights(tmp_path / "out", tmp_path / "straight2")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_stop_signals_are_parsed_and_checked():
    assert parse_signals("SIGTERM, usr1,INT") == [signal.SIGTERM, signal.SIGUSR1, signal.SIGINT]
    assert parse_signals("") == []
    with pytest.raises(ValueError, match="SIGKILL is not a signal that can be caught"):
        parse_signals("SIGTERM,SIGKILL")


# ------------------------------------------------------------------------------------- published checkpoints
def test_a_half_written_checkpoint_is_skipped_on_resume(tiny_model_path, straight, tmp_path, capsys):
    """checkpoint-4 killed mid-write (here: a truncated weights file; or no completion marker): the resume says it
    skips it, takes checkpoint-2, and still ends with the straight run's weights."""
    first = tmp_path / "first"
    assert main(args(tiny_model_path, first, "--save_strategy", "steps", "--save_steps", "2")) == 0
    assert incomplete_reason(first / "checkpoint-4") is None
    out = tmp_path / "out"
    for step in (2, 4):
        shutil.copytree(first / f"checkpoint-{step}", out / f"checkpoint-{step}")
    weights_file = out / "checkpoint-4" / "model.safetensors"
    size = weights_file.stat().st_size
    weights_file.write_bytes(weights_file.read_bytes()[:1000])  # the kill came during the weights write
    shutil.copytree(first / "checkpoint-4", out / "checkpoint-6")
    (out / "checkpoint-6" / COMPLETE_FILE).unlink()  # ... or before the marker

    assert newest_complete_checkpoint(out) == (
        str(out / "checkpoint-2"),
        [
            (str(out / "checkpoint-6"), f"no {COMPLETE_FILE}: its write did not finish"),
            (
                str(out / "checkpoint-4"),
                f"model.safetensors has 1000 bytes, {size} were written (truncated or changed)",
            ),
        ],
    )
    capsys.readouterr()
    stop_rewards.CALLS["n"] = 0
    assert main(args(tiny_model_path, out)) == 0
    captured = capsys.readouterr()
    assert f"asym-trl: skipping {out / 'checkpoint-4'}: model.safetensors has 1000 bytes" in captured.err
    assert f"asym-trl: skipping {out / 'checkpoint-6'}: no {COMPLETE_FILE}" in captured.err
    assert f"resuming from {out / 'checkpoint-2'}" in captured.out
    assert_same_weights(out, straight)


# ------------------------------------------------------------------------------------------ crash checkpoint
def test_a_failing_step_checkpoints_the_last_completed_step(tiny_model_path, straight, tmp_path, capsys):
    """The grader goes down during step 4: step 3 is checkpointed (with its RNG), one line says what failed and how
    to resume; once the grader is back the resume ends with the straight run's weights."""
    out = tmp_path / "out"
    os.environ["STOP_TEST_FAIL_CALL"] = "4"
    assert main(args(tiny_model_path, out, reward="failing_reward")) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(
        "asym-trl train: step 4 failed: RewardFunctionError: reward function 'failing_reward' raised ConnectionError: "
        f"grader at http://grader:8000 is unreachable; step 3 is checkpointed in {out / 'checkpoint-3'}; resume with: "
        "asym-trl train --config"
    ), last
    assert incomplete_reason(out / "checkpoint-3") is None
    os.environ["STOP_TEST_FAIL_CALL"] = "0"
    assert main(args(tiny_model_path, out, reward="failing_reward")) == 0
    assert_same_weights(out, straight)


# ----------------------------------------------------------------------------------------------- flaky graders
def test_flaky_grader_policy(tiny_model_path, tmp_path, capsys):
    """reward_failure_policy=unscorable: completions whose grading fails are unscorable and counted; above
    max_reward_failure_fraction the run stops with an error naming the function."""
    policy = ["--reward_failure_policy", "unscorable", "--max_reward_failure_fraction"]
    out = tmp_path / "tolerant"
    assert main(args(tiny_model_path, out, *policy, "1.0", reward="flaky_reward", steps=2)) == 0
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    failures = [h["reward_failures/flaky_reward"] for h in history if "reward_failures/flaky_reward" in h]
    assert len(failures) == 2 and all(0 < f < 1 for f in failures)

    capsys.readouterr()
    assert main(args(tiny_model_path, tmp_path / "strict", *policy, "0.05", reward="flaky_reward", steps=2)) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert re.match(
        r"asym-trl train: step 1 failed: RewardFunctionError: reward function 'flaky_reward' failed on \d+ of 8 "
        r"completions, more than max_reward_failure_fraction=0.05 \(first error: TimeoutError: grader timed out\); "
        r"no optimizer step had completed: nothing to checkpoint$",
        last,
    ), last


def test_a_batch_of_none_rewards_is_warned_about_at_once(tiny_model_path, tmp_path):
    with pytest.warns(UserWarning, match="every reward of this generation batch is None"):
        assert main(args(tiny_model_path, tmp_path / "out", reward="none_reward", steps=1)) == 0


def test_validation_gives_up_between_batches_when_a_stop_is_requested(tmp_path, monkeypatch):
    """A signal during a validation pass: the pass stops at the next generation batch, nothing is recorded; a
    validation due when the stop is already agreed is skipped."""
    import contextlib
    from types import SimpleNamespace

    from datasets import Dataset

    from asym_trl.diagnostics.validation import ValidationCallback

    rows = [{"prompt": [{"role": "user", "content": f"{i}+1?"}], "solution": str(i + 1)} for i in range(8)]
    accelerator = SimpleNamespace(process_index=0, num_processes=1, device="cpu", gather=lambda t: t)
    trainer = SimpleNamespace(args=SimpleNamespace(max_completion_length=4), accelerator=accelerator)
    answers = {"stop": False, "batches": 0}

    def generate(prompts, desc):
        answers["batches"] += 1
        answers["stop"] = True  # the signal arrives during the first batch
        return ["x"] * len(prompts)

    callback = ValidationCallback(
        trainer, {"val": Dataset.from_list(rows)}, eval_steps=1, select_on="val", batch_size=2,
        stop_requested=lambda: answers["stop"],
    )  # fmt: skip
    monkeypatch.setattr(callback, "_greedy_transformers_generator", lambda: contextlib.nullcontext(generate))
    args = SimpleNamespace(output_dir=str(tmp_path))
    state = SimpleNamespace(global_step=1, is_world_process_zero=True)
    callback.on_step_end(args, state, None)
    assert answers["batches"] == 1 and callback.history == []  # gave up after 1 of 4 batches, nothing recorded
    callback.on_step_end(args, state, None)
    assert answers["batches"] == 1 and not (tmp_path / "validation.jsonl").exists()  # skipped


def test_with_two_steps_per_generation_the_stop_waits_for_the_generation_batch_to_end(
    tiny_model_path, tmp_path, capsys
):
    """steps_per_generation=2, one micro-batch per optimizer step: a generation feeds optimizer steps 3 and 4. A
    SIGTERM during its generation (reward call 2) stops after step 4, not 3 (TRL would generate again after a
    resume at 3); the resume ends with the straight run's weights."""
    two = ["--steps_per_generation", "2"]
    assert main(args(tiny_model_path, tmp_path / "straight", *two)) == 0
    os.environ.update(STOP_TEST_SIGNAL="SIGTERM", STOP_TEST_SIGNAL_CALL="2")
    stop_rewards.CALLS["n"] = 0
    capsys.readouterr()
    assert main(args(tiny_model_path, tmp_path / "out", *two)) == STOP_EXIT_CODE  # the signal is sent to pytest
    match = STOP_LINE.match(capsys.readouterr().err.strip().splitlines()[-1])
    assert match and match.group(1) == "SIGTERM" and match.group(2) == "4"
    os.environ["STOP_TEST_SIGNAL"] = ""
    assert main(args(tiny_model_path, tmp_path / "out", *two)) == 0
    assert_same_weights(tmp_path / "out", tmp_path / "straight")
