"""`asym-trl --help` and every `asym-trl <command> --help` answer at once: each runs in a fresh interpreter, and the
heavy libraries must not have been imported when the help is printed (deterministic, unlike a timing alone)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from asym_trl.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "trl", "datasets", "vllm", "accelerate", "peft")
HELP_PROBE = f"""
import contextlib, io, json, sys, time
start = time.perf_counter()
from asym_trl.cli import main
out = io.StringIO()
with contextlib.redirect_stdout(out):
    try:
        code = main(sys.argv[1:])
    except SystemExit as e:
        code = e.code
heavy = sorted(m for m in {HEAVY!r} if m in sys.modules)
print(json.dumps({{"code": code or 0, "help": out.getvalue(), "heavy": heavy, "s": time.perf_counter() - start}}))
"""
# the heavy modules that a command's --help still imports, owned elsewhere (asym_trl/launch/hub.py imports the recipes)


def _help(*argv: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", HELP_PROBE, *argv], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "wall": time.monotonic() - start}


@pytest.mark.parametrize("command", ["", *COMMANDS], ids=["asym-trl", *COMMANDS])
def test_help_is_fast_plain_and_starts_with_usage(command):
    result = _help(*([command] if command else []), "--help")
    assert result["code"] == 0
    text = result["help"]
    assert text.startswith(f"usage: asym-trl {command}".rstrip()), text[:300]
    assert "**" not in text and "``" not in text, "raw markup in the help"
    assert result["heavy"] == [], f"asym-trl {command} --help imported {result['heavy']}"
    assert result["wall"] < 20, result  # a fresh interpreter; ~0.1 s idle, a heavy import takes 5-15 s


def test_the_command_list_is_one_command_per_line():
    text = _help("--help")["help"]
    for name, (_, summary) in COMMANDS.items():
        assert re.search(rf"^  {re.escape(name)} +{re.escape(summary)}$", text, re.MULTILINE), name


def test_train_help_is_a_short_usage_that_points_to_every_option():
    text = _help("train", "--help")["help"]
    assert len(text.splitlines()) < 30
    for shown in (
        "--config RECIPE",
        "--dry-run",
        "--KEY VALUE",
        "accelerate launch",
        "-m asym_trl.train",
        "--help-all",
    ):
        assert shown in text, shown


def test_help_all_lists_every_option(capsys):
    from asym_trl.cli import main

    assert main(["train", "--help-all"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: asym-trl train --config RECIPE")
    assert "--learning_rate" in text and "--advantage_estimator" in text and "--dry_run" in text
    assert main(["train-async", "--help-all"]) == 0
    assert "--max_staleness" in capsys.readouterr().out
