"""Shared fixtures: a tiny offline Qwen3 model and a CPU config factory."""

from __future__ import annotations

import pytest

from asym_trl import AsymGRPOConfig
from asym_trl.tiny import build_tiny_model


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory):
    """Directory of a tiny Qwen3 model + tokenizer (built once per test session, offline)."""
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny-model")))


@pytest.fixture
def cpu_config(tmp_path):
    """Factory: AsymGRPOConfig for fast CPU runs on the tiny model; keyword overrides win."""

    def make(**overrides) -> AsymGRPOConfig:
        kwargs = dict(
            output_dir=str(tmp_path / "out"),
            use_cpu=True,
            bf16=False,
            gradient_checkpointing=False,
            per_device_train_batch_size=8,
            num_generations=4,
            max_completion_length=8,
            max_steps=2,
            learning_rate=1e-3,
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            seed=0,
        )
        kwargs.update(overrides)
        return AsymGRPOConfig(**kwargs)

    return make
