"""asym_trl.launch.model_card and asym-trl push without training: the card's training metrics and validation table,
a Hub id (never a local path) as base_model, a retry hint that repeats every option, a push --help that imports
nothing heavy.  (tests/test_train.py pushes a real 2-step run.)"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from asym_trl.launch import hub
from asym_trl.launch.model_card import final_training_metrics, resolve_base_model

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("restore_environ")  # write_model_card parses the recipe (its `env:` exported)


def _state(steps: int) -> dict:
    """A trainer_state.json of ``steps`` logged steps, then the end-of-training summary entry."""
    history = [
        {
            "step": s,
            "loss": 0.01,
            "reward": s / 100,
            "reward_std": 0.3,
            "entropy": 1.5 - s / 100,
            "groups/all_solved": 0.25,
            "groups/none_solved": 0.125,
            "entropy/correct": None,  # nothing correct in that interval: not a number, not shown
            "rewards/accuracy/mean": s / 100,
            "rollout_step": s / 2,
            "epoch": s / 40,
        }
        for s in range(1, steps + 1)
    ]
    history.append({"train_runtime": 754.0, "train_loss": 0.01, "epoch": steps / 40, "step": steps})
    return {"log_history": history, "max_steps": steps, "global_step": steps}


def _run_dir(tmp_path: Path, model: str = "Qwen/Qwen3-4B", dataset: str = "math", **more) -> Path:
    """A finished run directory as `asym-trl train` leaves it (no weights: the card reads only the records)."""
    out = tmp_path / "run"
    out.mkdir(parents=True)
    recipe = {
        "model_name_or_path": model,
        "dataset_name": dataset,
        "advantage_estimator": "asym",
        "beta_pos": 0.9,
        "beta_neg": 0.4,
        "use_cpu": True,
        "bf16": False,
        "output_dir": str(out),
        **more,
    }
    (out / "recipe.yaml").write_text(
        "# source: recipes/qwen3-4b/asym.yaml (+ command line)\n" + yaml.safe_dump(recipe)
    )
    return out


def _front_matter(card: str) -> dict:
    return yaml.safe_load(card.split("---\n")[1])


# ------------------------------------------------------------------------------------------------- the card
def test_card_carries_the_final_training_metrics_and_the_validation_table(tmp_path):
    out = _run_dir(tmp_path)
    (out / "trainer_state.json").write_text(json.dumps(_state(40)))
    records = [{"step": s, "val/math500": s / 2, "val/aime24": s / 10, "val/avg": s * 0.3} for s in range(2, 52, 2)]
    records[2]["val/math500"] = 99.0  # step 6: the best, off the thinned table's even spacing
    (out / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (out / "best").mkdir()
    best = {"select_on": "val/math500", "score": 99.0, **records[2]}
    (out / "best" / "best.json").write_text(json.dumps(best))
    card = hub.write_model_card(out).read_text()

    assert "## Training" in card and "(step 40 of 40, rollout step 20, epoch 1; 12.6 min of training)" in card
    for row in (
        "| mean reward | `reward` | 0.4 |",
        "| token entropy | `entropy` | 1.1 |",
        "| all-solved groups (share) | `groups/all_solved` | 0.25 |",
        "| none-solved groups (share) | `groups/none_solved` | 0.125 |",
        "| mean reward of accuracy | `rewards/accuracy/mean` | 0.4 |",
    ):
        assert row in card, card
    assert "entropy/correct" not in card
    assert "## Validation" in card and "| step | math500 | aime24 | avg |" in card
    assert "| 6 (best) | 99 | 0.6 | 1.8 |" in card  # kept when the table is thinned
    assert "(21 of 25 shown; `validation.jsonl` has every one)" in card
    assert "| 2 | 1 | 0.2 | 0.6 |" in card and "| 50 | 25 | 5 | 15 |" in card  # first and last
    assert "step 6 (val/math500 = 99)" in card and "the row marked (best) is the step selected on" in card
    assert "trainer_state.json" in hub.files_to_push(out)  # the training log goes with the model


def test_card_without_training_log_or_validation(tmp_path):
    out = _run_dir(tmp_path)
    card = hub.write_model_card(out).read_text()
    assert "No training log in the run directory" in card and "## Validation" not in card
    # a run with log_diagnostics off leaves trainer_state.json in its checkpoints only: the newest one is read
    for step in (10, 20):
        (out / f"checkpoint-{step}").mkdir()
        (out / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps(_state(step)))
    training = final_training_metrics(out)
    assert training["step"] == 20 and training["source"] == "checkpoint-20/trainer_state.json"


def test_base_model_is_a_hub_id_never_a_local_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_base_model("Qwen/Qwen3-4B") == ("Qwen/Qwen3-4B", None)
    plain = tmp_path / "runs" / "tiny-model"  # saved by transformers 5: no _name_or_path in config.json
    plain.mkdir(parents=True)
    (plain / "config.json").write_text(json.dumps({"model_type": "qwen3"}))
    assert resolve_base_model("runs/tiny-model") == (None, "runs/tiny-model")
    saved = tmp_path / "sft"  # saved by transformers 4 from a Hub model
    saved.mkdir()
    (saved / "config.json").write_text(json.dumps({"_name_or_path": "Qwen/Qwen3-0.6B"}))
    assert resolve_base_model(str(saved)) == ("Qwen/Qwen3-0.6B", str(saved))
    chained = tmp_path / "sft2"  # saved from the local model above
    chained.mkdir()
    (chained / "config.json").write_text(json.dumps({"_name_or_path": str(saved)}))
    assert resolve_base_model("./sft2") == ("Qwen/Qwen3-0.6B", "./sft2")
    adapter = tmp_path / "lora"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "Qwen/Qwen3-4B"}))
    assert resolve_base_model(str(adapter)) == ("Qwen/Qwen3-4B", str(adapter))
    snapshot = "/cache/huggingface/hub/models--Qwen--Qwen3-8B/snapshots/0123abcd"  # a Hub cache copy
    assert resolve_base_model(snapshot) == ("Qwen/Qwen3-8B", snapshot)
    assert resolve_base_model("/cache/hub/models--gpt2/snapshots/ab") == (
        "gpt2",
        "/cache/hub/models--gpt2/snapshots/ab",
    )
    assert resolve_base_model("./gone") == (None, "./gone")  # pushed from elsewhere: named, no base_model

    out = _run_dir(tmp_path, model="runs/tiny-model", dataset="data/train.jsonl")
    card = hub.write_model_card(out).read_text()
    front = _front_matter(card)
    assert "base_model" not in front and "datasets" not in front, front
    assert "The local model `runs/tiny-model` fine-tuned with `asym_trl`" in card
    card = hub.write_model_card(_run_dir(tmp_path / "b", model=str(saved))).read_text()
    assert _front_matter(card)["base_model"] == "Qwen/Qwen3-0.6B"
    assert f"The local model `{saved}` (from `Qwen/Qwen3-0.6B`)" in card
    card = hub.write_model_card(_run_dir(tmp_path / "c")).read_text()  # a Hub model and a registered dataset
    front = _front_matter(card)
    assert front["base_model"] == "Qwen/Qwen3-4B" and front["datasets"] == ["DigitalLearningGmbH/MATH-lighteval"]
    assert "`Qwen/Qwen3-4B` fine-tuned with `asym_trl`" in card


# ------------------------------------------------------------------------------------------------- push
def test_push_retry_hint_repeats_every_option(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = _run_dir(tmp_path)
    results = tmp_path / "my results.json"
    results.write_text(json.dumps({"math500": 80.0}))
    argv = [str(out), "--hub_model_id", "me/qwen-asym", "--eval_results", str(results), "--private"]
    assert hub.main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("asym-trl push: error: cannot push to me/qwen-asym: HF_HUB_OFFLINE is set"), err
    hint = err.split("retry with `")[1].rstrip("`")
    assert shlex.split(hint) == ["asym-trl", "push", *argv]
    assert "| math500 | 80 |" in (out / "README.md").read_text()
    assert "# qwen-asym" in (out / "README.md").read_text()  # the card is titled after the id pushed to
    # the recipe's hub_model_id when none is given, and a placeholder when there is none at all
    assert hub.main([str(_run_dir(tmp_path / "b", hub_model_id="org/from-recipe"))]) == 1
    assert (
        "retry with `asym-trl push " in (err := capsys.readouterr().err) and "--hub_model_id org/from-recipe`" in err
    )
    assert hub.main([str(out)]) == 1
    err = capsys.readouterr().err
    assert "hub_model_id is not set" in err and f"retry with `asym-trl push {out} --hub_model_id user/name`" in err


def test_push_run_default_hint_names_the_hub_id(tmp_path, monkeypatch):
    """What `asym-trl train` prints when its final push fails."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(hub.HubPushError, match=rf"retry with `asym-trl push {tmp_path} --hub_model_id me/x`$"):
        hub.push_run(tmp_path, "me/x")


def test_push_help_imports_nothing_heavy():
    code = (
        "import sys\n"
        "from asym_trl.cli import main\n"
        "try:\n    main(['push', '--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
        "heavy = [m for m in ('torch', 'transformers', 'trl', 'huggingface_hub', 'datasets') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr
    assert "usage: asym-trl push" in proc.stdout and "HEAVY []" in proc.stdout, proc.stdout
