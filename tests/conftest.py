"""Shared fixtures: a tiny offline Qwen3 model, a CPU config factory, and the vLLM CPU server of the session."""

from __future__ import annotations

import contextlib
import os
import re
import time
from pathlib import Path

import pytest

from asym_trl import AsymGRPOConfig
from asym_trl.apps.tiny import build_tiny_model, cpu_run_kwargs


@pytest.fixture
def restore_environ():
    """``os.environ`` as it was before the test (recipes export their ``env:`` mapping)."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


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


# ----------------------------------------------------------------------------------------- the vLLM CPU server
VLLM_PYTHON = os.environ.get("ASYM_TRL_VLLM_PYTHON", str(Path(__file__).parents[1] / ".venv-vllm" / "bin" / "python"))
SERVER_START_TIMEOUT = 600  # s; ~1 min on an idle 2-core machine, several under load
GEMM_PATH = re.compile(r"CPU unquantized GEMM dispatch: ([^\n]*)")
# The server's bf16 GEMM ("" = what vLLM picks for this CPU), or the paths of hosts without AMX:
# ASYM_TRL_TEST_VLLM_GEMM=onednn (oneDNN at this host's ISA) or onednn-avx2 (oneDNN capped at AVX2, where vLLM
# falls back to torch's linear for bf16).
GEMM_CHOICES = {
    "": {},
    "onednn": {"ASYM_TRL_TEST_NO_AMX": "1"},
    "onednn-avx2": {"ASYM_TRL_TEST_NO_AMX": "1", "ONEDNN_MAX_CPU_ISA": "AVX2"},
}


def _server_env() -> dict:
    """Extra environment of a test server: DEBUG logging (vLLM then names its GEMM kernels) and the GEMM choice."""
    choice = os.environ.get("ASYM_TRL_TEST_VLLM_GEMM", "")
    if choice not in GEMM_CHOICES:
        raise pytest.UsageError(f"ASYM_TRL_TEST_VLLM_GEMM={choice!r}: choose one of {sorted(GEMM_CHOICES)}")
    env = {"VLLM_LOGGING_LEVEL": "DEBUG", **GEMM_CHOICES[choice]}
    if choice:
        repo = Path(__file__).parents[1]
        env["PYTHONPATH"] = os.pathsep.join([str(repo / "tests" / "vllm_gemm_shim"), str(repo)])
    return env


def gemm_paths(log_path: Path) -> list[str]:
    """The CPU GEMM kernels vLLM picked (oneDNN, sgl-kernel packed, torch fallback: it depends on the CPU's ISA)."""
    return sorted(set(GEMM_PATH.findall(log_path.read_text())))


@contextlib.contextmanager
def _serve(model_dir: Path, log_path: Path, dtype: str = "bfloat16"):
    """``asym_trl.generation.vllm_serve.cpu_server`` for tests: fails (or skips, with ASYM_TRL_SKIP_VLLM_SERVER=1)
    without the vLLM venv; DEBUG logging, so that vLLM names the GEMM kernels, which are printed."""
    from asym_trl.generation.vllm_serve import ServerStartError, cpu_server

    if not Path(VLLM_PYTHON).exists():
        message = f"no vLLM interpreter at {VLLM_PYTHON}: run scripts/setup_vllm_cpu.sh (make test does)"
        if os.environ.get("ASYM_TRL_SKIP_VLLM_SERVER") == "1":
            pytest.skip(message)
        pytest.fail(message)
    start = time.monotonic()
    try:
        with cpu_server(model_dir, log_path, VLLM_PYTHON, dtype, _server_env(), SERVER_START_TIMEOUT) as url:
            took = time.monotonic() - start
            print(f"\n[vllm] {model_dir.name} ({dtype}) healthy after {took:.1f} s; GEMM: {gemm_paths(log_path)}")
            yield url
    except ServerStartError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def serve_vllm():
    """``serve_vllm(model_dir, log_path, dtype)``: a context manager running a CPU vLLM server; yields its URL."""
    return _serve


@pytest.fixture(scope="session")
def vllm_server(tmp_path_factory):
    """One server for the whole session (tests/test_vllm_server.py, tests/test_multinode.py): the tiny model (tied
    output head, like Qwen3-4B) in bfloat16; yields (url, model dir, log path). Tests that need it at the checkpoint
    reload it first: others may have synced other weights into it."""
    from asym_trl.apps.tiny import build_tiny_model

    workdir = tmp_path_factory.mktemp("vllm")
    model_dir = build_tiny_model(workdir / "model")
    with _serve(model_dir, workdir / "server.log") as url:
        yield url, model_dir, workdir / "server.log"
