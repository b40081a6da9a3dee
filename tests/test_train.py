"""asym_trl.train end to end on the tiny model (one process, resume, LoRA, wandb offline, two CPU processes) and
asym_trl.launch.hub (model card, push failures leaving the run intact)."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from asym_trl.launch import hub
from asym_trl.train import main

ROOT = Path(__file__).resolve().parents[1]
CPU_RECIPE = str(ROOT / "tests" / "fixtures" / "cpu_toy.yaml")  # the CPU recipe on the tiny model and toy task
# REINFORCE gives +-1 to every rollout, even in all-wrong groups, so two steps always move the weights.
REINFORCE = ["--advantage_estimator", "reinforce", "--beta_pos", "none", "--beta_neg", "none"]


pytestmark = pytest.mark.usefixtures("restore_environ")  # recipes export `env:` (WANDB_PROJECT)


def _train(model, output_dir, *extra) -> int:
    return main(
        ["--config", CPU_RECIPE, "--model_name_or_path", str(model), "--output_dir", str(output_dir)]
        + ["--max_steps", "2", "--save_strategy", "no", "--logging_steps", "1", "--per_device_train_batch_size", "8"]
        + ["--num_generations", "4", *extra]
    )


def _weights(path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(path) / "model.safetensors"))


def _tree_digest(path: Path) -> dict[str, str]:
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() for p in path.rglob("*") if p.is_file()
    }


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """One 2-step REINFORCE run of the CPU recipe with push_to_hub on while offline (returns dir, status, stderr)."""
    from asym_trl.apps.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("run")
    model = build_tiny_model(root / "tiny")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        import contextlib
        import io

        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            status = _train(model, root / "out", *REINFORCE, "--push_to_hub", "true", "--hub_model_id", "me/tiny")
    finally:
        os.environ.pop("HF_HUB_OFFLINE")
    return model, root / "out", status, err.getvalue()


def test_cpu_recipe_trains_saves_and_reports_failed_push(trained_run):
    model, out, status, err = trained_run
    before, after = _weights(model), _weights(out)
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before), "training did not change the weights"
    # push_to_hub while offline: warned at the start, failed at the end with the reason, run left in place (exit 1).
    assert status == 1
    assert "warning: push_to_hub is set but HF_HUB_OFFLINE is set" in err
    assert "cannot push to me/tiny: HF_HUB_OFFLINE is set" in err and "is unchanged" in err
    recipe = (out / "recipe.yaml").read_text()
    assert recipe.startswith(f"# source: {CPU_RECIPE}") and "advantage_estimator: reinforce" in recipe
    card = (out / "README.md").read_text()
    assert "advantage estimator: `reinforce`" in card and "beta_pos = 0.0, beta_neg = 0.0" in card
    assert f"from `{CPU_RECIPE}`" in card and "No evaluation results yet" in card


def test_push_command_offline_fails_clearly_and_leaves_run_intact(trained_run, capsys, monkeypatch):
    _, out, _, _ = trained_run
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (out / "README.md").unlink()
    assert hub.main([str(out), "--card_only"]) == 0  # the card is rebuilt from recipe.yaml alone
    before = _tree_digest(out)
    assert hub.main([str(out)]) == 1
    assert "asym-trl push: error: cannot push to me/tiny: HF_HUB_OFFLINE is set" in capsys.readouterr().err
    assert _tree_digest(out) == before


def test_push_without_login_fails_before_any_network_call(trained_run, monkeypatch):
    import huggingface_hub

    _, out, _, _ = trained_run
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda *a, **k: pytest.fail("network call attempted"))
    before = _tree_digest(out)
    with pytest.raises(hub.HubPushError, match="not logged in to the Hugging Face Hub"):
        hub.push_run(out, "me/tiny")
    with pytest.raises(hub.HubPushError, match="hub_model_id is not set"):
        hub.push_run(out, None)
    assert _tree_digest(out) == before


def test_push_wraps_hub_errors(trained_run, monkeypatch):
    """A Hub-side failure (here: a rejected repo id, checked by huggingface_hub itself) becomes a HubPushError."""
    _, out, _, _ = trained_run
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    before = _tree_digest(out)
    with pytest.raises(hub.HubPushError, match=r"cannot push to not/a/valid/id: HFValidationError"):
        hub.push_run(out, "not/a/valid/id", token="hf_fake")
    assert _tree_digest(out) == before


def test_model_card_names_estimator_betas_recipe_and_eval_table(trained_run, tmp_path):
    _, out, _, _ = trained_run
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"math500": {"avg@5": 89.33}, "aime24": {"avg@10": 39.333}, "amc23": 81}))
    card = hub.write_model_card(out, results).read_text()
    assert "| benchmark | avg@10 | avg@5 | score |" in card
    assert (
        "| math500 |  | 89.33 |  |" in card and "| aime24 | 39.33 |  |  |" in card and "| amc23 |  |  | 81 |" in card
    )
    assert card.startswith("---\n") and "base_model" not in card.split("---")[1]  # never a local path
    assert f"The local model `{out.parent / 'tiny'}` fine-tuned" in card and "| mean reward | `reward` |" in card
    text = hub.render_model_card(
        model_name="m",
        base_model="Qwen/Qwen3-4B",
        estimator="asym",
        estimator_params={"beta_pos": 0.9, "beta_neg": 0.4, "scale_pos": 1.0, "scale_neg": 1.0},
        recipe_text="advantage_estimator: asym\n",
        recipe_source="recipes/qwen3-4b/asym.yaml",
        dataset="math",
    )
    assert "advantage estimator: `asym`" in text and "beta_pos = 0.9, beta_neg = 0.4" in text
    assert "from `recipes/qwen3-4b/asym.yaml`" in text and "```yaml\nadvantage_estimator: asym\n```" in text
    assert "scale_pos = 1.0, scale_neg = 1.0" in text  # the per-sign scales of Eq. 10 are stated too
    pass_at_k = hub.render_model_card(
        model_name="m", base_model=None, estimator="pass_at_k", estimator_params={"pass_at_k": 5}, recipe_text=""
    )
    assert "estimator parameters: pass_at_k = 5" in pass_at_k and "beta_pos" not in pass_at_k


def test_eval_results_file_checks(tmp_path):
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"math500": 89.3, "aime24": {"avg@10": 39}}))
    assert hub.load_eval_results(good) == {"math500": {"score": 89.3}, "aime24": {"avg@10": 39.0}}
    from_eval = tmp_path / "results.json"  # asym-trl eval's format
    from_eval.write_text(json.dumps({"label": "m", "benchmarks": {"aime24": {"k": 10, "avg_at_k": 39.33}}}))
    assert hub.load_eval_results(from_eval) == {"aime24": {"avg@10": 39.33}}
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"math500": "high"}))
    with pytest.raises(ValueError, match="score of math500/score must be a number"):
        hub.load_eval_results(bad)


def test_resume_continues_at_the_right_step(tiny_model_path, tmp_path, capsys):
    """A run interrupted after its step-2 checkpoint and restarted with the same command ends where an uninterrupted
    run ends: steps 3-4 only, the same final weights (optimizer, scheduler and RNG states restored)."""
    import shutil

    common = [*REINFORCE, "--save_strategy", "steps", "--save_steps", "2", "--max_steps", "4"]
    assert _train(tiny_model_path, tmp_path / "straight", *common) == 0
    shutil.copytree(tmp_path / "straight" / "checkpoint-2", tmp_path / "resumed" / "checkpoint-2")  # the "crash"
    capsys.readouterr()
    assert _train(tiny_model_path, tmp_path / "resumed", *common) == 0
    out = capsys.readouterr().out
    assert f"resuming from {tmp_path / 'resumed' / 'checkpoint-2'}" in out
    assert out.count("'loss':") == 2  # only steps 3 and 4 ran

    state = json.loads((tmp_path / "resumed" / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    assert [h["step"] for h in state["log_history"] if "loss" in h] == [1, 2, 3, 4]  # 1-2 restored, 3-4 trained
    straight, resumed = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], msg=name)
    first = json.loads((tmp_path / "straight" / "checkpoint-4" / "trainer_state.json").read_text())
    assert [h["loss"] for h in state["log_history"] if "loss" in h] == [
        h["loss"] for h in first["log_history"] if "loss" in h
    ]


def test_lora_via_model_config(tiny_model_path, tmp_path):
    out = tmp_path / "lora"
    assert _train(tiny_model_path, out, *REINFORCE, "--use_peft", "true", "--lora_r", "4",
                  "--lora_target_modules", "q_proj", "v_proj") == 0  # fmt: skip
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 4 and set(config["target_modules"]) == {"q_proj", "v_proj"}
    assert not (out / "model.safetensors").exists()  # only the adapter is saved


def test_wandb_offline(tiny_model_path, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    assert _train(tiny_model_path, tmp_path / "out", *REINFORCE, "--report_to", "wandb", "--max_steps", "1") == 0
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))


def test_world_size_must_match_the_recipe(tiny_model_path, tmp_path, capsys):
    assert _train(tiny_model_path, tmp_path / "out", "--num_processes", "4") == 2
    assert "num_processes=4 (the world size this recipe's batch arithmetic is written for)" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_fsdp_dropped_on_cpu_is_refused(tiny_model_path, tmp_path, capsys, monkeypatch):
    """accelerate silently trains DDP when an FSDP config meets use_cpu: stop before loading anything. (DeepSpeed is
    caught the same way where it is installed; without it transformers already stops on the missing package.)"""
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what `accelerate launch --config_file fsdp.yaml` exports
    assert _train(tiny_model_path, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "launched with a FSDP config, but this run is on CPU" in err and "cpu_multi.yaml" in err
    assert not (tmp_path / "out").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_cpu_accelerate_launch(tiny_model_path, tmp_path):
    """The CPU recipe under `accelerate launch` with recipes/accelerate_configs/cpu_multi.yaml: 2 gloo processes."""
    out = tmp_path / "out"
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(ROOT / "recipes" / "accelerate_configs" / "cpu_multi.yaml"),
        "--main_process_port", str(_free_port()),
        "-m", "asym_trl.train", "--config", CPU_RECIPE,
        "--model_name_or_path", tiny_model_path, "--output_dir", str(out),
        "--max_steps", "2", "--save_strategy", "no", "--per_device_train_batch_size", "8", "--num_generations", "4",
        "--num_processes", "2", *REINFORCE,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # 2 processes x 8 completions = 16 completions = 4 prompts of G=4 per rollout step; printed once (main process).
    assert proc.stdout.count("batch arithmetic for 2 training process(es)") == 1
    assert "prompts per rollout step:       4 " in proc.stdout
    before, after = _weights(tiny_model_path), _weights(out)
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_real_data_rewards_and_greedy_validation(tiny_model_path, tmp_path):
    """asym_trl.task.data + the accuracy reward + ValidationCallback as the GPU recipes use them, offline: a
    reasoning-gym training set and a local validation file; the best model lands in output_dir/best and is what gets
    pushed."""
    val = tmp_path / "val.jsonl"
    val.write_text(
        "".join(json.dumps({"problem": f"What is {a} + 1?", "answer": str(a + 1)}) + "\n" for a in range(6))
    )
    out = tmp_path / "out"
    extra = ["--dataset_name", "basic_arithmetic", "--reward_funcs", "accuracy", "format"]
    extra += ["--success_reward_func", "accuracy"]
    extra += ["--validation_benchmarks", str(val), "--validation_select_on", "val", "--validation_steps", "1"]
    assert _train(tiny_model_path, out, *REINFORCE, *extra, "--max_completion_length", "12") == 0
    records = [json.loads(line) for line in (out / "validation.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2] and all(0 <= r["val/val"] <= 100 for r in records)
    best = json.loads((out / "best" / "best.json").read_text())
    assert best["score"] == max(r["val/val"] for r in records)
    assert best["step"] == min(r["step"] for r in records if r["val/val"] == best["score"])  # earliest on ties
    assert f"step {best['step']} (val/val = " in (out / "README.md").read_text()
    files = hub.files_to_push(out)
    assert files["model.safetensors"] == out / "best" / "model.safetensors"
    assert files["recipe.yaml"] == out / "recipe.yaml" and files["validation.jsonl"] == out / "validation.jsonl"
    assert not any(name.startswith(("checkpoint-", "best/")) for name in files)


def test_registered_training_set_from_a_local_copy_with_system_prompt(tmp_path):
    """`dataset_name: math` + `dataset_data_files`: the GPU recipes' data on a machine without Hub access."""
    from asym_trl.launch.recipes import parse_args
    from asym_trl.train import load_datasets

    copy = tmp_path / "math-train.jsonl"
    rows = [{"problem": f"What is {a} + {a}?", "solution": f"So it is $\\boxed{{{2 * a}}}$."} for a in range(5)]
    copy.write_text("".join(json.dumps(row) + "\n" for row in rows))
    script_args = parse_args(
        ["--config", CPU_RECIPE, "--dataset_name", "math", "--dataset_data_files", str(copy)]
        + ["--dataset_system_prompt", "Be brief.", "--dataset_instruction", "Box it."]
    )[0]
    train, validation = load_datasets(script_args)
    assert len(train) == 5 and validation == {}
    assert train[3]["prompt"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 3 + 3?\n\nBox it."},
    ]
    assert train[3]["solution"] == "$6$"
