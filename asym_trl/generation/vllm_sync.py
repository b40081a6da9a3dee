"""Weight sync to a vLLM engine: the disk path for server mode, and the end-to-end check after every sync.

TRL 1.16 pushes the trainer's weights into a ``vllm serve`` server with ``VLLMGeneration.sync_weights``, which
streams them over vLLM's NCCL weight-transfer engine (``VLLMClient.update_named_params``): it needs CUDA on both
sides and raises ``NotImplementedError`` elsewhere.  ``vllm_weight_sync="disk"`` replaces the push:

1. every process walks TRL's own ``_iter_named_params()`` (it gathers ZeRO-3 / FSDP shards and merges PEFT adapters,
   so those gathers stay collective); the main process copies each full tensor to host memory;
2. the main process writes them as one safetensors file under ``vllm_weight_sync_dir``;
3. ``POST /collective_rpc`` calls the server's worker extension (``asym_trl.generation.vllm_worker``): every worker
   loads the file in place and re-processes the layers that compute with tied weights (see that module for why vLLM's
   own ``reload_weights`` is not enough); then ``POST /reset_prefix_cache`` drops KV blocks of the old weights.

The server needs ``VLLM_SERVER_DEV_MODE=1`` (for ``/collective_rpc``) and ``--worker-extension-cls
asym_trl.generation.vllm_worker.WeightSyncExtension`` but no ``--weight-transfer-config``; ``asym-trl vllm-serve
--weight-sync disk`` sets both. It must see ``vllm_weight_sync_dir`` at the same path (same node, or a shared file
system).

Whatever the sync (disk, TRL's NCCL push, colocate), ``GuardedVLLMGeneration`` then checks that the engine computes
with the trainer's weights (``vllm_sync_check``, ``asym_trl.generation.weight_check``).  Generation itself is TRL's,
unchanged.  The trainer side talks plain HTTP, so it does not need vLLM installed.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
import warnings
from pathlib import Path
from urllib.parse import urlparse

import requests
import torch
from trl.generation.vllm_client import VLLMClient

from ..trl_compat import VLLMGenerationHooks, swap_vllm_generation
from .vllm_worker import EXTENSION_CLS, RELOAD_METHOD, WEIGHT_SYNC_MODES
from .weight_check import SYNC_CHECK_MODES, WeightSyncCheck, model_logprobs, probe_token_ids

__all__ = [
    "WEIGHT_SYNC_MODES",
    "DiskSyncClient",
    "DiskSyncVLLMGeneration",
    "GuardedVLLMGeneration",
    "served_logprobs",
    "validate_weight_sync",
    "vllm_generation_class",
    "wait_for_server",
]

WEIGHTS_FILE = "model.safetensors"


def _cpu_only(config) -> bool:
    """True when this process trains on CPU, so a colocated vLLM engine would be vLLM's CPU backend."""
    return bool(config.use_cpu) or not torch.accelerator.is_available()


def validate_weight_sync(config) -> None:
    """Checks of ``vllm_weight_sync`` / ``vllm_weight_sync_dir`` / ``vllm_sync_check`` against TRL's vLLM settings."""
    if config.vllm_weight_sync not in WEIGHT_SYNC_MODES:
        raise ValueError(
            f"vllm_weight_sync={config.vllm_weight_sync!r} is unknown; choose one of {list(WEIGHT_SYNC_MODES)}"
        )
    if config.vllm_sync_check not in SYNC_CHECK_MODES:
        raise ValueError(
            f"vllm_sync_check={config.vllm_sync_check!r} is unknown; choose one of {list(SYNC_CHECK_MODES)}"
        )
    if config.vllm_weight_sync == "disk" and config.use_vllm and config.vllm_mode != "server":
        raise ValueError(
            f"vllm_weight_sync='disk' applies to vllm_mode='server' only (got vllm_mode={config.vllm_mode!r}): "
            "a colocated engine loads the weights in process"
        )
    if config.use_vllm and config.vllm_mode == "colocate" and _cpu_only(config):
        raise ValueError(
            "vllm_mode='colocate' on CPU is not supported: vLLM's CPU backend packs the linear weights for its GEMM "
            "kernels at load and drops the originals, so TRL's in-process load_weights cannot update them and the "
            "engine would keep sampling from the initial model. Use vllm_mode='server' with "
            "vllm_weight_sync='disk' (`asym-trl vllm-serve MODEL --device cpu --weight-sync disk`, docs/vllm.md)."
        )


def wait_for_server(base_url: str, timeout: float, poll_interval: float = 1.0) -> None:
    """Poll ``GET {base_url}/health`` until it answers 200; raise ``ConnectionError`` once ``timeout`` s have passed.

    Each probe has its own short timeout, so an address that drops packets cannot hold the caller past ``timeout``.
    """
    deadline = time.monotonic() + timeout
    last = "no answer"
    while True:
        remaining = deadline - time.monotonic()
        try:
            response = requests.get(f"{base_url}/health", timeout=max(0.1, min(5.0, remaining)))
            if response.status_code == 200:
                return
            last = f"HTTP {response.status_code}"
        except requests.RequestException as exc:
            last = f"{type(exc).__name__}: {exc}"
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ConnectionError(
                f"No vLLM server answered at {base_url}/health within {timeout:g} s (last attempt: {last}). Start "
                "one first, e.g. `asym-trl vllm-serve MODEL --weight-sync disk` (see docs/vllm.md), check "
                "vllm_server_base_url / vllm_server_host / vllm_server_port, or raise vllm_server_timeout."
            )
        time.sleep(min(poll_interval, remaining))


def served_logprobs(
    base_url: str, token_ids: list[int], timeout: float = 60.0, session=requests, model: str | None = None
) -> torch.Tensor:
    """Log-probs the server assigns to ``token_ids[1:]`` given their prefixes (``prompt_logprobs``), as a 1-D tensor.

    Plain OpenAI-compatible ``/v1/completions``: works against any ``vllm serve``, whatever its weight sync.
    ``model``: the served model's id (asked from ``/v1/models`` when not given).
    """
    if model is None:
        model = session.get(f"{base_url}/v1/models", timeout=timeout).json()["data"][0]["id"]
    response = session.post(
        f"{base_url}/v1/completions",
        json={"model": model, "prompt": token_ids, "max_tokens": 1, "temperature": 1.0, "prompt_logprobs": 0},
        timeout=timeout,
    )
    response.raise_for_status()
    positions = response.json()["choices"][0]["prompt_logprobs"][1:]  # the first token has no prefix
    return torch.tensor([entry[str(tok)]["logprob"] for entry, tok in zip(positions, token_ids[1:], strict=True)])


def colocated_logprobs(llm, token_ids: list[int]) -> torch.Tensor:
    """``served_logprobs`` for an in-process ``vllm.LLM`` (colocate mode)."""
    from vllm import SamplingParams

    params = SamplingParams(max_tokens=1, temperature=1.0, prompt_logprobs=0)
    output = llm.generate([{"prompt_token_ids": token_ids}], params, use_tqdm=False)[0]
    positions = output.prompt_logprobs[1:]
    return torch.tensor([entry[tok].logprob for entry, tok in zip(positions, token_ids[1:], strict=True)])


class DiskSyncClient(VLLMClient):
    """TRL's ``VLLMClient`` (generation, ``reset_prefix_cache``, ``get_server_info``) without the NCCL communicator.

    Its constructor only needs ``requests``: it neither imports vLLM nor opens a weight-transfer group.
    """

    def __init__(self, base_url: str, connection_timeout: float = 0.0):
        from requests.adapters import HTTPAdapter
        from urllib3.util.retry import Retry

        self.session = requests.Session()
        # Ride out transient refusals and 5xx answers during a long run, as TRL's client does.
        retry = Retry(
            total=5,
            connect=5,
            read=0,
            status=3,
            status_forcelist=[500, 502, 503],
            backoff_factor=2,
            allowed_methods=["GET", "POST"],
        )
        self.session.mount("http://", HTTPAdapter(max_retries=retry, pool_maxsize=64))
        self.session.mount("https://", HTTPAdapter(max_retries=retry, pool_maxsize=64))
        self.base_url = base_url.rstrip("/")
        self.host = urlparse(self.base_url).hostname
        self.communicator = None
        self._updating_weights = False
        wait_for_server(self.base_url, connection_timeout)
        self.model = self._get(f"{self.base_url}/v1/models")["data"][0]["id"]

    def init_communicator(self, device=0):
        raise RuntimeError("vllm_weight_sync='disk' does not use a weight-transfer group; call reload_weights()")

    def reload_weights(self, weights_path: str | os.PathLike) -> list:
        """Make every server worker load the safetensors files in ``weights_path``
        (``asym_trl.generation.vllm_worker``).

        Returns the workers' answers (the tied layers each refreshed).
        """
        response = requests.post(  # no retries: a half-applied reload must not be repeated blindly
            f"{self.base_url}/collective_rpc",
            json={"method": RELOAD_METHOD, "kwargs": {"weights_path": str(weights_path)}},
            timeout=600,
        )
        if response.status_code == 404:
            raise RuntimeError(
                f"The vLLM server at {self.base_url} has no /collective_rpc endpoint, which vllm_weight_sync='disk' "
                "uses. Restart it with VLLM_SERVER_DEV_MODE=1 in its environment (`asym-trl vllm-serve` sets it)."
            )
        if response.status_code != 200:
            if RELOAD_METHOD in response.text:
                raise RuntimeError(
                    f"The vLLM server at {self.base_url} was started without asym_trl's weight-sync extension "
                    f"(`--worker-extension-cls {EXTENSION_CLS}`), so it cannot reload weights correctly. Restart it "
                    "with `asym-trl vllm-serve MODEL --weight-sync disk`, in an environment where asym_trl is "
                    "installed (`pip install --no-deps asym_trl` suffices there). Server answer: "
                    f"{response.text[:500]}"
                )
            raise RuntimeError(
                f"reload of the weights in {weights_path} failed: HTTP {response.status_code}, {response.text[:2000]}"
            )
        return response.json().get("results", [])


class GuardedVLLMGeneration(VLLMGenerationHooks):
    """TRL's ``VLLMGeneration`` whose ``sync_weights`` is followed by the end-to-end check of ``vllm_sync_check``.

    Colocated engines keep TRL's in-process ``load_weights``: on CUDA unquantized layers compute with their live
    weights (nothing to refresh), and colocate on CPU, where packed copies would go stale, is refused.
    """

    def __init__(self, *args, sync_check: str = "error", **kwargs):
        self.sync_check = WeightSyncCheck(mode=sync_check)
        self.last_sync_seconds = None  # wall time of the latest push, main process
        self.last_check_seconds = None  # wall time of the latest check
        self.current_step = lambda: -1  # the trainer points this at its global step
        super().__init__(*args, **kwargs)
        self._probe = None

    def _push_weights(self):
        super().sync_weights()

    def sync_weights(self):
        start = time.perf_counter()
        self._push_weights()
        self.last_sync_seconds = time.perf_counter() - start
        if self.sync_check.mode != "off":
            start = time.perf_counter()
            self.check_served_weights()
            self.last_check_seconds = time.perf_counter() - start

    def check_served_weights(self, step: int | None = None) -> dict | None:
        """Compare the probe's log-probs under the trainer and under the engine
        (``asym_trl.generation.weight_check``)."""
        if self.mode == "colocate" and self.enable_sleep_mode:
            if not getattr(self, "_warned_sleep", False):
                warnings.warn(
                    "vllm_sync_check is skipped with vllm_enable_sleep_mode=True: probing the colocated engine would "
                    "need its KV cache awake between the sync and TRL's generation. Nothing checks that the engine "
                    "serves the trainer's weights.",
                    RuntimeWarning,
                    stacklevel=2,
                )
                self._warned_sleep = True
            return None
        model = self.model
        if self._probe is None:
            self._probe = probe_token_ids(self.processing_class, model.config.vocab_size)
        trainer, scale = model_logprobs(model, self._probe, with_scale=True)  # every process (sharded forwards)
        engine = torch.full_like(trainer, float("nan"))
        if self.mode == "colocate":
            engine = colocated_logprobs(self.llm, self._probe)
        elif self.accelerator.is_main_process:
            client = self.vllm_client  # TRL's client (or ours) knows the model id and holds a session with retries
            engine = served_logprobs(client.base_url, self._probe, session=client.session, model=client.model)
        if self.accelerator.num_processes > 1:  # the worst engine decides, identically on every process
            rows = self.accelerator.gather(engine.to(self.accelerator.device)[None]).cpu()
            answered = rows[~rows.isnan().any(dim=1)]  # server mode: the main process's row
            engine = answered[(answered - trainer).abs().amax(dim=1).argmax()] if len(answered) else rows[0]
        where = "the colocated engine" if self.mode == "colocate" else f"the vLLM server at {self.vllm_client_url}"
        step = self.current_step() if step is None else step
        return self.sync_check.observe(trainer, engine, scale, step=step, where=where)

    @property
    def vllm_client_url(self) -> str:
        return self.server_base_url or f"http://{self.server_host}:{self.server_port}"


class DiskSyncVLLMGeneration(GuardedVLLMGeneration):
    """Server mode whose weight push goes through ``weights_dir`` (see module doc)."""

    def __init__(self, *args, weights_dir: str | os.PathLike, **kwargs):
        self.weights_dir = Path(weights_dir).resolve()
        self.refreshed_layers = None  # what the server's workers answered to the latest reload
        super().__init__(*args, **kwargs)

    def init_engine(self):
        if self.mode != "server":
            raise ValueError(f"vllm_weight_sync='disk' needs vllm_mode='server', got {self.mode!r}")
        if self.accelerator.is_main_process:
            self.vllm_client = DiskSyncClient(self.vllm_client_url, connection_timeout=self.server_timeout)
            self.weights_dir.mkdir(parents=True, exist_ok=True)
        self.accelerator.wait_for_everyone()

    def _push_weights(self):
        from safetensors.torch import save_file

        is_main = self.accelerator.is_main_process
        state = {}
        for name, tensor in self.iter_named_params():  # every process: the gathers inside are collective
            if is_main:
                state[name] = tensor.detach().to("cpu", copy=True).contiguous()
        if is_main:
            # The loader reads every *.safetensors file in the directory; the temporary name does not match.
            tmp = self.weights_dir / f"{WEIGHTS_FILE}.partial"
            save_file(state, str(tmp), metadata={"format": "pt"})
            os.replace(tmp, self.weights_dir / WEIGHTS_FILE)
            del state
            self.refreshed_layers = self.vllm_client.reload_weights(self.weights_dir)
            self.vllm_client.reset_prefix_cache()


@contextlib.contextmanager
def vllm_generation_class(config):
    """While TRL's ``GRPOTrainer.__init__`` runs, make it build our ``VLLMGeneration`` subclass when ``config`` asks.

    TRL constructs ``VLLMGeneration`` inline in its ``__init__`` (and the constructor already opens the NCCL group), so
    the class it looks up is swapped for the duration of that call: ``DiskSyncVLLMGeneration`` for
    ``vllm_weight_sync="disk"``, else ``GuardedVLLMGeneration`` unless ``vllm_sync_check="off"``. A no-op without vLLM.
    """
    disk = config.vllm_mode == "server" and config.vllm_weight_sync == "disk"
    if not getattr(config, "use_vllm", False) or (config.vllm_sync_check == "off" and not disk):
        yield
        return
    if disk:
        weights_dir = config.vllm_weight_sync_dir or os.path.join(config.output_dir, "vllm-weights")
        cls = functools.partial(DiskSyncVLLMGeneration, weights_dir=weights_dir, sync_check=config.vllm_sync_check)
    else:
        cls = functools.partial(GuardedVLLMGeneration, sync_check=config.vllm_sync_check)
    with swap_vllm_generation(cls):
        yield
