"""Shared fixtures: a tiny offline Qwen3 model and a CPU config factory."""

from __future__ import annotations

import pytest

from asym_trl import AsymGRPOConfig
from asym_trl.apps.tiny import build_tiny_model, cpu_run_kwargs


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory):
    """Directory of a tiny Qwen3 model + tokenizer (built once per test session, offline)."""
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny-model")))


@pytest.fixture
def cpu_config(tmp_path):
    """Factory: AsymGRPOConfig for fast CPU runs on the tiny model; keyword overrides win."""

    def make(**overrides) -> AsymGRPOConfig:
        defaults = dict(
            output_dir=str(tmp_path / "out"),
            per_device_train_batch_size=8,
            num_generations=4,
            max_completion_length=8,
            max_steps=2,
            learning_rate=1e-3,
        )
        return AsymGRPOConfig(**cpu_run_kwargs(**{**defaults, **overrides}))

    return make
