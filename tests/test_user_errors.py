"""The bad-input matrix: every user mistake is one line `asym-trl <command>: error: ...`, exit code 2, no traceback,
and nothing written to the output directory."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from asym_trl.cli import main as cli

ROOT = Path(__file__).resolve().parents[1]
CPU_RECIPE = str(ROOT / "tests" / "fixtures" / "cpu_toy.yaml")  # the CPU recipe on the tiny model and toy task
REWARDS = "tests.scripts.stop_rewards"
CLOSED_HUB = "http://127.0.0.1:9"  # a closed local port: refused at once, so no test needs or uses the network
NOT_CACHED = "asym-trl-tests/not-a-model"  # a Hub id that no local cache holds
TINY_BUILD = "python -c \"from asym_trl.apps.tiny import build_tiny_model; build_tiny_model('./runs/tiny-model')\""
FAST_S = 10  # an in-process check answers in well under a second; the Hub retries it replaces took 25-40 s


pytestmark = pytest.mark.usefixtures("restore_environ")  # recipes export `env:` (WANDB_PROJECT)


@pytest.fixture
def closed_hub(monkeypatch):
    """The Hub endpoint is a closed local port and offline mode is off: the one probe fails at once."""
    from huggingface_hub import constants

    from asym_trl.task.hub_access import hub_unreachable

    monkeypatch.setattr(constants, "ENDPOINT", CLOSED_HUB)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for variable in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(variable, raising=False)
    hub_unreachable.cache_clear()
    yield
    hub_unreachable.cache_clear()


@pytest.fixture
def hub_offline(closed_hub, monkeypatch):
    """``HF_HUB_OFFLINE=1``: the Hub must not even be probed."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("asym_trl.task.hub_access.hub_unreachable", lambda endpoint: pytest.fail("Hub probed"))


def run(argv: list[str]) -> int:
    """`asym-trl ARGV`'s exit code (argparse exits by itself on a bad flag)."""
    try:
        return cli(argv)
    except SystemExit as e:
        return e.code


def _recipe(tmp_path, text: str) -> str:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return str(path)


# (id, argv after `asym-trl train` given (model, out, tmp_path), the start of the message after "error: ")
TRAIN_CASES = [
    ("yaml-syntax", lambda m, o, t: ["--config", _recipe(t, "learning_rate: 1e-4\nreward_funcs: [a, b\nseed: 1\n")],
     "recipe {t}/recipe.yaml: invalid YAML at line 3, column 5: expected ',' or ']'"),
    ("unknown-key", lambda m, o, t: ["--config", _recipe(t, "learnin_rate: 1e-4\n")],
     "{t}/recipe.yaml: unknown recipe key 'learnin_rate'; did you mean 'learning_rate'?"),
    ("bad-flag-value", lambda m, o, t: ["--config", CPU_RECIPE, "--learning_rate", "fast"],
     "argument --learning_rate/--learning-rate: invalid float value: 'fast' (see asym-trl train --help)"),
    ("local-model-missing", lambda m, o, t: ["--config", CPU_RECIPE, "--model_name_or_path", "./no-such-model"],
     "model_name_or_path='./no-such-model' is a local path and {t}/no-such-model does not exist"),
    ("local-model-under-a-local-dir", lambda m, o, t: ["--config", CPU_RECIPE, "--model_name_or_path", "runs/tiny"],
     "model_name_or_path='runs/tiny' is a local path and {t}/runs/tiny does not exist"),
    ("not-a-model-dir", lambda m, o, t: ["--config", CPU_RECIPE, "--model_name_or_path", str(t)],
     "model_name_or_path='{t}': {t} is not a saved model"),
    ("bad-hub-id", lambda m, o, t: ["--config", CPU_RECIPE, "--model_name_or_path", "my model!"],
     "model_name_or_path='my model!' is neither a local directory nor a Hub id"),
    ("output-dir-under-a-file", lambda m, o, t: ["--config", CPU_RECIPE, "--output_dir", f"{t}/runs/file/x"],
     "output_dir='{t}/runs/file/x' cannot be created: {t}/runs/file is a file, not a directory"),
    ("reward-not-importable", lambda m, o, t: ["--config", CPU_RECIPE, "--reward_funcs", "no_such_module:score"],
     "reward_funcs: cannot import reward function 'no_such_module:score'"),
    ("unknown-reward", lambda m, o, t: ["--config", CPU_RECIPE, "--reward_funcs", "acuracy"],
     "reward_funcs: unknown reward 'acuracy'"),
    ("dataset-file-missing", lambda m, o, t: ["--config", CPU_RECIPE, "--dataset_name", "data/train.jsonl"],
     "dataset_name: data file data/train.jsonl does not exist"),
    ("unknown-dataset", lambda m, o, t: ["--config", CPU_RECIPE, "--dataset_name", "gsm9k"],
     "dataset_name: unknown train dataset 'gsm9k'"),
    ("dataset-factory-missing", lambda m, o, t: ["--config", CPU_RECIPE, "--dataset_name", "asym_trl.apps.tiny:nope"],
     "dataset_name: cannot import dataset factory 'asym_trl.apps.tiny:nope'"),
    ("no-steps", lambda m, o, t: ["--config", CPU_RECIPE, "--max_steps", "-1", "--num_train_epochs", "0"],
     "invalid AsymGRPOConfig: max_steps=-1 and num_train_epochs=0.0: this run has no training steps"),
    ("empty-dataset", lambda m, o, t: ["--config", CPU_RECIPE, "--dataset_name", f"{REWARDS}:empty_dataset"],
     f"dataset_name='{REWARDS}:empty_dataset' has no rows: this run has nothing to train on"),
    ("epsilon-high-below-epsilon", lambda m, o, t: ["--config", CPU_RECIPE, "--epsilon_high", "0.1"],
     "invalid AsymGRPOConfig: epsilon_high=0.1 is below epsilon=0.2"),
    ("unknown-stop-signal", lambda m, o, t: ["--config", CPU_RECIPE, "--stop_signals", "SIGTERM,SIGFOO"],
     "invalid AsymGRPOConfig: stop_signals: SIGFOO is not a signal that can be caught"),
    ("dry-run-reward", lambda m, o, t: ["--config", CPU_RECIPE, "--dry-run", "--reward_funcs", "pkg_missing:f"],
     "reward_funcs: cannot import reward function 'pkg_missing:f'"),
    ("dry-run-dataset", lambda m, o, t: ["--config", CPU_RECIPE, "--dry-run", "--dataset_name", "missing.parquet"],
     "dataset_name: data file missing.parquet does not exist"),
    ("dry-run-model", lambda m, o, t: ["--config", CPU_RECIPE, "--dry-run", "--model_name_or_path", "/nonexistent/m"],
     "model_name_or_path='/nonexistent/m' is a local path and /nonexistent/m does not exist"),
    ("tiny-model-not-built", lambda m, o, t: ["--config", CPU_RECIPE, "--model_name_or_path", "./runs/tiny-model"],
     "model_name_or_path='./runs/tiny-model' is a local path and {t}/runs/tiny-model does not exist: build the tiny "
     f"model first: {TINY_BUILD}"),
    ("dry-run-tiny-model-not-built",
     lambda m, o, t: ["--config", CPU_RECIPE, "--dry-run", "--model_name_or_path", "./runs/tiny-model"],
     "model_name_or_path='./runs/tiny-model' is a local path and {t}/runs/tiny-model does not exist: build the tiny "
     f"model first: {TINY_BUILD}"),
    ("hub-model-unreachable", lambda m, o, t: ["--config", CPU_RECIPE, "--model_name_or_path", NOT_CACHED],
     f"model_name_or_path='{NOT_CACHED}' (no such local directory here, so a Hub id): the Hugging Face Hub "
     f"({CLOSED_HUB}) is unreachable from here (ConnectError: "),
    ("hub-dataset-unreachable", lambda m, o, t: ["--config", CPU_RECIPE, "--dataset_name", "math"],
     f"dataset_name='math' (DigitalLearningGmbH/MATH-lighteval): the Hugging Face Hub ({CLOSED_HUB}) is unreachable"),
    ("hub-benchmark-unreachable", lambda m, o, t: ["--config", CPU_RECIPE, "--validation_benchmarks", "math500"],
     f"validation_benchmarks: math500 (HuggingFaceH4/MATH-500): the Hugging Face Hub ({CLOSED_HUB}) is unreachable"),
    ("output-dir-in-proc", lambda m, o, t: ["--config", CPU_RECIPE, "--output_dir", "/proc/asym-trl-run"],
     "output_dir='/proc/asym-trl-run' cannot be created in /proc"),
    ("dry-run-output-dir-in-proc", lambda m, o, t: ["--config", CPU_RECIPE, "--dry-run", "--output_dir", "/proc/x/y"],
     "output_dir='/proc/x/y' cannot be created in /proc"),
]  # fmt: skip


@pytest.mark.parametrize("build, expected", [c[1:] for c in TRAIN_CASES], ids=[c[0] for c in TRAIN_CASES])
def test_train_mistakes_are_one_line(build, expected, tiny_model_path, tmp_path, capsys, monkeypatch, closed_hub):
    import huggingface_hub

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "file").write_text("not a directory")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: pytest.fail("Hub call"))
    out = tmp_path / "out"
    argv = ["--model_name_or_path", tiny_model_path, "--output_dir", str(out)] + build(tiny_model_path, out, tmp_path)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    start = time.monotonic()
    assert run(["train", *argv]) == 2
    assert time.monotonic() - start < FAST_S
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    assert lines[0].startswith("asym-trl train: error: " + expected.format(t=tmp_path)), lines[0]
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written anywhere


def _one_line(capsys, command: str) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"asym-trl {command}: error: ") and "Traceback" not in err, err
    return lines[0]


def test_an_unreachable_hub_is_one_try_naming_hf_hub_offline(tmp_path, capsys, monkeypatch, closed_hub):
    """A Hub model with no network: one probe, one line naming the model, the Hub and HF_HUB_OFFLINE (train, the
    same for train-async); --dry-run still checks the recipe, and notes what a launch here would stop on."""
    monkeypatch.chdir(tmp_path)
    for command in ("train", "train-async"):
        start = time.monotonic()
        recipe = CPU_RECIPE if command == "train" else str(ROOT / "recipes" / "cpu" / "asym-async.yaml")
        assert run([command, "--config", recipe, "--model_name_or_path", NOT_CACHED]) == 2
        assert time.monotonic() - start < FAST_S
        line = _one_line(capsys, command)
        assert f"{NOT_CACHED}' (no such local directory here, so a Hub id)" in line
        assert f"the Hugging Face Hub ({CLOSED_HUB}) is unreachable from here" in line
        assert "HF_HUB_OFFLINE=1 (with it, only models and datasets in the local cache are used)" in line

    assert run(["train", "--config", CPU_RECIPE, "--model_name_or_path", NOT_CACHED, "--dry-run"]) == 0
    note = f"# note: a launch here would stop: model_name_or_path='{NOT_CACHED}' (no such local directory here"
    assert note in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []


def test_offline_mode_without_the_model_in_the_cache_fails_at_once(tmp_path, capsys, monkeypatch, hub_offline):
    bench = tmp_path / "bench.jsonl"
    bench.write_text('{"problem": "1 + 1?", "answer": "2"}\n')
    monkeypatch.chdir(tmp_path)
    assert run(["train", "--config", CPU_RECIPE, "--model_name_or_path", NOT_CACHED]) == 2
    line = _one_line(capsys, "train")
    assert f"HF_HUB_OFFLINE is set and {NOT_CACHED} is not in the local Hub cache" in line
    assert f"hf download {NOT_CACHED}" in line and "or give a local model directory" in line
    assert run(["eval", "--backend", "transformers", "--model", NOT_CACHED, "--benchmarks", str(bench)]) == 2
    assert f"HF_HUB_OFFLINE is set and {NOT_CACHED} is not in the local Hub cache" in _one_line(capsys, "eval")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.jsonl"]


def test_eval_answers_the_hub_and_the_backend_in_one_line(tmp_path, capsys, monkeypatch, closed_hub):
    """`asym-trl eval` with its defaults offline, with a local benchmark and no vLLM, and a Hub model."""
    bench = tmp_path / "bench.jsonl"
    bench.write_text('{"problem": "1 + 1?", "answer": "2"}\n')
    monkeypatch.chdir(tmp_path)
    start = time.monotonic()
    assert run(["eval", "--model", NOT_CACHED, "--backend", "transformers"]) == 2  # the five benchmarks: Hub
    line = _one_line(capsys, "eval")
    assert line.startswith(f"asym-trl eval: error: --benchmarks math500 (HuggingFaceH4/MATH-500): the Hugging Face "
                           f"Hub ({CLOSED_HUB}) is unreachable from here")  # fmt: skip
    assert "--data-dir DIR" in line and "HF_HUB_OFFLINE=1" in line

    assert run(["eval", "--model", NOT_CACHED, "--backend", "transformers", "--benchmarks", str(bench)]) == 2
    line = _one_line(capsys, "eval")
    assert f"--model {NOT_CACHED} (no such local directory here, so a Hub id): the Hugging Face Hub" in line
    assert run(["eval", "--model", "./runs/tiny-model", "--backend", "transformers", "--benchmarks", str(bench)]) == 2
    assert _one_line(capsys, "eval").endswith(f"--model ./runs/tiny-model: {tmp_path}/runs/tiny-model does not exist")

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real_find_spec(name, *a)
    )
    assert run(["eval", "--model", NOT_CACHED, "--benchmarks", str(bench)]) == 2  # --backend vllm: the default
    line = _one_line(capsys, "eval")
    assert line.startswith("asym-trl eval: error: --backend vllm (the default) needs vLLM, which is not installed")
    assert "use --backend transformers" in line
    assert time.monotonic() - start < FAST_S
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.jsonl"]


def test_a_hub_dataset_loaded_from_python_fails_at_once(closed_hub):
    from asym_trl.task.data import load_benchmark

    start = time.monotonic()
    with pytest.raises(ValueError, match=rf"^dataset HuggingFaceH4/MATH-500: the Hugging Face Hub \({CLOSED_HUB}\)"):
        load_benchmark("math500")
    assert time.monotonic() - start < FAST_S


def test_a_reward_function_returning_strings_is_named(tiny_model_path, tmp_path, capsys):
    """Found at the first batch (the function is user code): one line naming it, exit 2, no checkpoint written."""
    out = tmp_path / "out"
    argv = ["--config", CPU_RECIPE, "--model_name_or_path", tiny_model_path, "--output_dir", str(out)]
    argv += ["--reward_funcs", f"{REWARDS}:string_reward", "--max_steps", "2"]
    assert cli(["train", *argv]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        "asym-trl train: error: reward function 'string_reward' returned a str reward ('1.0'); a reward function "
        "returns one number (or None: unscorable) per completion (at step 1)"
    )
    assert not list(out.glob("checkpoint-*"))


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["evaluate"], "asym-trl: error: argument command: invalid choice: 'evaluate'"),
        (
            ["eval", "--benchmarks", "math5000", "--backend", "transformers", "--model", "m"],
            "asym-trl eval: error: unknown benchmark 'math5000'",
        ),
        (
            ["eval", "--table", "missing/results.json"],
            "asym-trl eval: error: --table missing/results.json: not a results.json of asym-trl eval",
        ),
        (["eval", "--backend", "server"], "asym-trl eval: error: --server-url is required with --backend server"),
        (["plot", "missing-run"], "asym-trl plot: error: missing-run does not exist"),
        (["push", "missing-run"], "asym-trl push: error: missing-run is not an asym_trl run: recipe.yaml is missing"),
        (
            ["vllm-serve", "m", "--port", "0", "--weight-sync", "disk", "--device", "cpu"],
            "asym-trl vllm-serve: error: --port 0 is not a TCP port",
        ),
    ],  # fmt: skip
    ids=["unknown-command", "eval-benchmark", "eval-table", "eval-flags", "plot-run", "push-run", "serve-port"],
)
def test_other_commands_answer_mistakes_in_one_line(argv, expected, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(expected), err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_in_a_real_process_no_traceback_unless_debugging(tmp_path):
    """`asym-trl train` as a user runs it; ASYM_TRL_DEBUG=1 shows the traceback of the same mistake."""
    bad = _recipe(tmp_path, "model_name_or_path: [unclosed\n")
    cmd = [sys.executable, "-m", "asym_trl.cli", "train", "--config", bad]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert proc.stderr.startswith(f"asym-trl train: error: recipe {bad}: invalid YAML at line 2, column 1")
    debug = subprocess.run(cmd, env={**env, "ASYM_TRL_DEBUG": "1"}, capture_output=True, text=True, timeout=120)
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "RecipeError" in debug.stderr


@pytest.mark.slow
def test_the_cpu_recipe_on_a_fresh_clone_says_how_to_build_the_tiny_model(tmp_path):
    """The README's first command before the tiny model exists (no runs/ directory, no network): one line, exit 2,
    in the time the imports take (it used to be 30-40 s of Hub retries and an 80-line traceback)."""
    cmd = [sys.executable, "-m", "asym_trl.cli", "train", "--config", CPU_RECIPE]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_ENDPOINT": CLOSED_HUB, "OMP_NUM_THREADS": "1"}
    for extra in ([], ["--dry-run"]):
        start = time.monotonic()
        proc = subprocess.run(cmd + extra, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr  # no warning before it
        assert proc.stderr.strip().endswith(f"does not exist: build the tiny model first: {TINY_BUILD}")
        assert time.monotonic() - start < 60  # imports only (TRL, transformers): 5-15 s on 2 busy cores
    assert list(tmp_path.iterdir()) == []
