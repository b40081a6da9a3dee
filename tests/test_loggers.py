"""Where `asym-trl train` logs (asym_trl.launch.loggers): wandb offline under output_dir in project asym-trl, with the
diagnostics and rollout_step; tensorboard and trackio offline where installed; a logger whose package is missing is
one line naming the extra, exit 2, before anything loads (real run and --dry-run)."""

from __future__ import annotations

import importlib.util
import json
import os
import sqlite3
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from asym_trl.cli import main as cli
from asym_trl.launch.loggers import check_loggers, set_logger_defaults
from asym_trl.launch.recipes import RecipeError

ROOT = Path(__file__).resolve().parents[1]
CPU_RECIPE = str(ROOT / "tests" / "fixtures" / "cpu_toy.yaml")  # the CPU recipe on the tiny model and toy task
ASYNC_RECIPE = str(ROOT / "recipes" / "cpu" / "asym-async.yaml")
SHORT = ["--max_steps", "2", "--logging_steps", "1", "--save_strategy", "no"]
SHORT += ["--per_device_train_batch_size", "8", "--num_generations", "4"]
# logged by every step of an AsymGRPO run: TRL's, the diagnostics' (docs/diagnostics.md) and the rollout step
DIAGNOSTICS = ("reward", "entropy", "groups/all_solved", "groups/none_solved", "groups/p_0of4", "entropy/incorrect")
DIAGNOSTICS += ("advantages/incorrect_mean", "rollout_step")

pytestmark = pytest.mark.usefixtures("restore_environ")


def _train(model, out, *extra) -> int:
    argv = ["train", "--config", CPU_RECIPE, "--model_name_or_path", str(model), "--output_dir", str(out), *extra]
    try:
        return cli(argv)
    except SystemExit as e:
        return e.code


# ------------------------------------------------------------------------------------------------- wandb
def read_wandb_records(path: Path) -> list:
    """The records of an offline ``.wandb`` file (a LevelDB-style log of protobuf ``Record``s: 7-byte file header,
    32 KiB blocks of chunks each with a 7-byte header: CRC32C, length, type 1 full / 2 first / 3 middle / 4 last)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:7]
    block, pos, records, buffer = 32768, 7, [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # the rest of a block is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 0:
            continue
        buffer = chunk if kind in (1, 2) else buffer + chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(buffer)
            records.append(record)
    return records


def test_wandb_offline_run_lands_in_output_dir_with_project_and_diagnostics(tiny_model_path, tmp_path, monkeypatch):
    """In a process of its own, as `asym-trl train` runs (wandb keeps process-wide settings from a process's first
    run, and its run is finished at the process's exit: transformers' callback leaves it open)."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_DIR", raising=False)
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    out = tmp_path / "out"
    argv = ["train", "--config", CPU_RECIPE, "--model_name_or_path", str(tiny_model_path), "--output_dir", str(out)]
    command = [sys.executable, "-m", "asym_trl.cli", *argv, *SHORT, "--report_to", "wandb"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert list(cwd.iterdir()) == []  # nothing in the current directory
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list(out.rglob("*"))
    records = read_wandb_records(next(runs[0].glob("*.wandb")))
    assert [r.run.project for r in records if r.WhichOneof("record_type") == "run"] == ["asym-trl"]
    history = [
        {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
        for r in records
        if r.WhichOneof("record_type") == "history"
    ]
    steps = [h for h in history if "train/reward" in h]
    assert len(steps) == 2
    for step in steps:
        assert {f"train/{name}" for name in DIAGNOSTICS} <= step.keys(), sorted(step)
    assert [h["train/rollout_step"] for h in steps] == [1, 2]
    # trainer_state.json has the same rollout steps
    state = json.loads((out / "trainer_state.json").read_text())
    assert [e["rollout_step"] for e in state["log_history"] if "reward" in e] == [1, 2]


def test_logger_defaults_respect_what_the_user_set(tmp_path):
    from types import SimpleNamespace

    args = SimpleNamespace(project="huggingface", report_to=["wandb"], output_dir=str(tmp_path / "run"))
    environ = {}
    assert set_logger_defaults(args, environ) == {"WANDB_DIR": str(tmp_path / "run"), "WANDB_PROJECT": "asym-trl"}
    assert args.project == "asym-trl"  # trackio's project too
    mine = {"WANDB_DIR": "/somewhere", "WANDB_PROJECT": "mine"}
    assert set_logger_defaults(SimpleNamespace(**{**vars(args), "project": "exp"}), mine) == {}
    assert mine == {"WANDB_DIR": "/somewhere", "WANDB_PROJECT": "mine"}
    named = SimpleNamespace(project="exp", report_to=["wandb"], output_dir="rel")
    environ = {}
    set_logger_defaults(named, environ)  # the recipe's `project` names the wandb project too
    assert environ == {"WANDB_DIR": str(Path("rel").absolute()), "WANDB_PROJECT": "exp"}
    quiet = {}
    assert set_logger_defaults(SimpleNamespace(project="huggingface", report_to=[], output_dir="x"), quiet) == {}


# ------------------------------------------------------------------------------------------- tensorboard, trackio
def test_tensorboard_offline(tiny_model_path, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "out"
    assert _train(tiny_model_path, out, *SHORT, "--report_to", "tensorboard") == 0
    events = list((out / "runs").rglob("events.out.tfevents.*"))
    assert len(events) == 1
    tags = EventAccumulator(str(events[0].parent)).Reload().Tags()["scalars"]
    assert {f"train/{name}" for name in DIAGNOSTICS} <= set(tags), tags


def test_trackio_offline(tiny_model_path, tmp_path):
    """In a process of its own: trackio reads TRACKIO_DIR (its local store) when imported."""
    if importlib.util.find_spec("trackio") is None:
        pytest.skip('trackio is not installed (pip install "asym_trl[trackio]")')
    out, store = tmp_path / "out", tmp_path / "trackio"
    cmd = [sys.executable, "-m", "asym_trl.cli", "train", "--config", CPU_RECIPE]
    cmd += ["--model_name_or_path", tiny_model_path, "--output_dir", str(out), *SHORT, "--report_to", "trackio"]
    pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": pythonpath, "TRACKIO_DIR": str(store), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with sqlite3.connect(store / "asym-trl.db") as db:  # project asym-trl
        logged = [json.loads(m) for (m,) in db.execute("select metrics from metrics")]
    steps = [m for m in logged if "train/reward" in m]
    assert len(steps) == 2 and {f"train/{name}" for name in DIAGNOSTICS} <= steps[-1].keys()
    assert [m["train/rollout_step"] for m in steps] == [1, 2]


# ------------------------------------------------------------------------------------------- missing and unknown
MISSING = [("trackio", ("trackio",)), ("tensorboard", ("tensorboard", "tensorboardX")), ("wandb", ("wandb",))]


@pytest.mark.parametrize("dry_run", [False, True], ids=["run", "dry-run"])
@pytest.mark.parametrize("logger, modules", MISSING, ids=[m[0] for m in MISSING])
def test_a_missing_logger_is_one_line_naming_the_extra(
    logger, modules, dry_run, tiny_model_path, tmp_path, capsys, monkeypatch
):
    import asym_trl.train

    for module in modules:
        monkeypatch.setitem(sys.modules, module, None)  # importlib.util.find_spec -> None: not installed
    monkeypatch.setattr(asym_trl.train, "load_datasets", lambda *a: pytest.fail("loaded data before the check"))
    out = tmp_path / "out"
    extra = ["--report_to", logger, *(["--dry-run"] if dry_run else [])]
    assert _train(tiny_model_path, out, *extra) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    assert lines[0] == (
        f'asym-trl train: error: report_to: {logger} is not installed: pip install "asym_trl[{logger}]" '
        f"(or pip install {modules[0]}), or log elsewhere with --report_to none"
    )
    assert not out.exists()


def test_train_async_checks_the_loggers_too(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "trackio", None)
    argv = ["train-async", "--config", ASYNC_RECIPE, "--output_dir", str(tmp_path / "out"), "--report_to", "trackio"]
    assert cli([*argv, "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith('asym-trl train-async: error: report_to: trackio is not installed: pip install "asym_trl[')


def test_unknown_and_other_loggers(monkeypatch):
    with pytest.raises(
        RecipeError, match=r"unknown logger 'wandbb'; did you mean 'wandb'\? choose from .*tensorboard"
    ):
        check_loggers(["wandbb"])
    check_loggers("none")
    check_loggers(["all"])  # transformers takes whatever is installed
    check_loggers([])
    monkeypatch.setitem(sys.modules, "mlflow", None)  # another transformers integration, not installed
    with pytest.raises(RecipeError, match="report_to: mlflow is not installed"):
        check_loggers(["mlflow"])
