"""In-training validation: best-step selection, the callback on crafted scores in a real run, a real greedy pass."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from asym_trl import AsymGRPOTrainer
from asym_trl.data import load_benchmark
from asym_trl.tiny import toy_sum_dataset, toy_sum_reward
from asym_trl.validation import ValidationCallback, select_best

FIXTURES = Path(__file__).parent / "fixtures"


def test_select_best_on_a_crafted_sequence():
    history = [(10, 30.0), (20, 52.0), (30, 45.0), (40, 52.0), (50, 20.0), (60, math.nan)]
    assert select_best(history) == (20, 52.0)  # highest; the earlier of two ties
    assert select_best(history[:1]) == (10, 30.0)
    assert select_best([(10, math.nan)]) is None
    assert select_best([]) is None
    assert select_best([(10, 0.0), (20, 0.0), (30, 0.1)]) == (30, 0.1)


def _fixture_benchmarks():
    return {
        "math500": load_benchmark("math500", data_files=FIXTURES / "math500.jsonl", instruction=""),
        "aime25": load_benchmark("aime25", data_files=FIXTURES / "aime25.jsonl", instruction=""),
    }


def _trainer(tiny_model_path, cpu_config, **overrides):
    return AsymGRPOTrainer(  # trained on the toy task (its reward varies, so weights move); validated on math
        model=tiny_model_path,
        reward_funcs=toy_sum_reward,
        args=cpu_config(**overrides),
        train_dataset=toy_sum_dataset(64),
    )


@pytest.mark.slow
def test_callback_saves_the_checkpoint_best_on_math500(tiny_model_path, cpu_config, monkeypatch):
    """Crafted validation scores over a real training run: the saved model is the one of the best MATH-500 step,
    not of the best average, and every score reaches the trainer's logs."""
    trainer = _trainer(tiny_model_path, cpu_config, max_steps=8, learning_rate=5e-2)
    callback = ValidationCallback(trainer, _fixture_benchmarks(), eval_steps=2, select_on="math500")
    crafted = {2: (40.0, 0.0), 4: (70.0, 0.0), 6: (60.0, 100.0), 8: (70.0, 50.0)}  # step -> (math500, aime25)
    snapshots = {}

    def fake_evaluate():
        step = trainer.state.global_step
        snapshots[step] = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
        math500, aime25 = crafted[step]
        return {"math500": math500, "aime25": aime25}

    monkeypatch.setattr(callback, "_evaluate_benchmarks", fake_evaluate)
    trainer.add_callback(callback)
    trainer.train()

    assert sorted(snapshots) == [2, 4, 6, 8]
    assert callback.best == (4, 70.0)  # step 8 ties on MATH-500 (earliest wins); step 6 has the best average
    best_dir = Path(trainer.args.output_dir) / "best"
    summary = json.loads((best_dir / "best.json").read_text())
    assert (summary["step"], summary["score"], summary["select_on"]) == (4, 70.0, "val/math500")
    assert (trainer.state.best_global_step, trainer.state.best_metric) == (4, 70.0)
    saved = AutoModelForCausalLM.from_pretrained(best_dir).state_dict()
    step4, step8 = snapshots[4], snapshots[8]
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(step4[name], step8[name])  # training moved the weights after step 4
    for key, value in saved.items():
        torch.testing.assert_close(value, step4[key])

    logged = [h for h in trainer.state.log_history if "val/math500" in h]
    assert [(h["step"], h["val/math500"], h["val/aime25"], h["val/avg"]) for h in logged] == [
        (2, 40.0, 0.0, 20.0),
        (4, 70.0, 0.0, 35.0),
        (6, 60.0, 100.0, 80.0),
        (8, 70.0, 50.0, 60.0),
    ]
    lines = (Path(trainer.args.output_dir) / "validation.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [2, 4, 6, 8]


def test_callback_real_greedy_pass(tiny_model_path, cpu_config):
    """The real evaluation: greedy generation with the live model, scored, logged, best saved."""
    trainer = _trainer(tiny_model_path, cpu_config, max_steps=1, max_completion_length=4)
    benchmarks = _fixture_benchmarks()
    callback = ValidationCallback(trainer, benchmarks, eval_steps=1)
    trainer.add_callback(callback)
    trainer.train()
    assert len(callback.history) == 1
    record = callback.history[0]
    assert set(record) == {"step", "val/math500", "val/aime25", "val/avg"}
    # a 4-token greedy completion from a random tiny model holds no boxed answer: accuracy 0, and it must be so
    assert record["val/math500"] == 0.0 and record["val/aime25"] == 0.0
    assert (Path(trainer.args.output_dir) / "best" / "best.json").exists()
    assert trainer.model.training  # generation put the model back in training mode


def test_callback_argument_errors(tiny_model_path, cpu_config):
    trainer = _trainer(tiny_model_path, cpu_config)
    benchmarks = _fixture_benchmarks()
    with pytest.raises(ValueError, match="select_on='olympiadbench' is not one of"):
        ValidationCallback(trainer, benchmarks, select_on="olympiadbench")
    with pytest.raises(ValueError, match="at least one"):
        ValidationCallback(trainer, {})
    with pytest.raises(ValueError, match="eval_steps must be >= 1"):
        ValidationCallback(trainer, benchmarks, eval_steps=0)
