"""Server-mode weight sync through the file system: the trainer saves, the vLLM server reloads. No NCCL.

TRL 1.16 pushes the trainer's weights into a ``vllm serve`` server with ``VLLMGeneration.sync_weights``, which
streams them over vLLM's NCCL weight-transfer engine (``VLLMClient.update_named_params``): it needs CUDA on both
sides and raises ``NotImplementedError`` elsewhere.  ``vllm_weight_sync="disk"`` replaces that one method:

1. every process walks TRL's own ``_iter_named_params()`` (it gathers ZeRO-3 / FSDP shards and merges PEFT adapters,
   so those gathers stay collective); the main process copies each full tensor to host memory;
2. the main process writes them as one safetensors file under ``vllm_weight_sync_dir``;
3. ``POST /collective_rpc`` ``{"method": "reload_weights", "kwargs": {"weights_path": dir}}`` makes every server worker
   reload its weights in place from that directory (vLLM's ``reload_weights``), then ``POST /reset_prefix_cache``
   drops KV blocks computed with the old weights -- as TRL does after its own sync.

The server needs ``VLLM_SERVER_DEV_MODE=1`` (for ``/collective_rpc``) but no ``--weight-transfer-config``, and it must
see ``vllm_weight_sync_dir`` at the same path (same node, or a shared file system).  Generation is TRL's, unchanged.
The trainer side talks plain HTTP, so it does not need vLLM installed.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from urllib.parse import urlparse

import requests
import torch
from trl.generation.vllm_client import VLLMClient

from .trl_compat import VLLMGenerationHooks, swap_vllm_generation

__all__ = [
    "WEIGHT_SYNC_MODES",
    "DiskSyncClient",
    "DiskSyncVLLMGeneration",
    "disk_weight_sync",
    "served_logprobs",
    "validate_weight_sync",
    "wait_for_server",
]

WEIGHT_SYNC_MODES = ("nccl", "disk")
WEIGHTS_FILE = "model.safetensors"


def validate_weight_sync(config) -> None:
    """Checks of ``vllm_weight_sync`` / ``vllm_weight_sync_dir`` against TRL's vLLM settings."""
    if config.vllm_weight_sync not in WEIGHT_SYNC_MODES:
        raise ValueError(
            f"vllm_weight_sync={config.vllm_weight_sync!r} is unknown; choose one of {list(WEIGHT_SYNC_MODES)}"
        )
    if config.vllm_weight_sync == "disk" and config.use_vllm and config.vllm_mode != "server":
        raise ValueError(
            f"vllm_weight_sync='disk' applies to vllm_mode='server' only (got vllm_mode={config.vllm_mode!r}): "
            "a colocated engine loads the weights in process"
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

    def reload_weights(self, weights_path: str | os.PathLike) -> None:
        """Ask every server worker to reload its weights in place from the safetensors files in ``weights_path``."""
        response = self.session.post(
            f"{self.base_url}/collective_rpc",
            json={"method": "reload_weights", "kwargs": {"weights_path": str(weights_path)}},
        )
        if response.status_code == 404:
            raise RuntimeError(
                f"The vLLM server at {self.base_url} has no /collective_rpc endpoint, which vllm_weight_sync='disk' "
                "uses. Restart it with VLLM_SERVER_DEV_MODE=1 in its environment (`asym-trl vllm-serve` sets it)."
            )
        if response.status_code != 200:
            raise RuntimeError(
                f"reload_weights from {weights_path} failed: HTTP {response.status_code}, {response.text}"
            )


class DiskSyncVLLMGeneration(VLLMGenerationHooks):
    """TRL's server-mode ``VLLMGeneration`` whose ``sync_weights`` goes through ``weights_dir`` (see module doc)."""

    def __init__(self, *args, weights_dir: str | os.PathLike, **kwargs):
        self.weights_dir = Path(weights_dir).resolve()
        self.last_sync_seconds = None  # wall time of the latest sync, main process
        super().__init__(*args, **kwargs)

    def init_engine(self):
        if self.mode != "server":
            raise ValueError(f"vllm_weight_sync='disk' needs vllm_mode='server', got {self.mode!r}")
        if self.accelerator.is_main_process:
            base_url = self.server_base_url or f"http://{self.server_host}:{self.server_port}"
            self.vllm_client = DiskSyncClient(base_url, connection_timeout=self.server_timeout)
            self.weights_dir.mkdir(parents=True, exist_ok=True)
        self.accelerator.wait_for_everyone()

    def sync_weights(self):
        from safetensors.torch import save_file

        start = time.perf_counter()
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
            self.vllm_client.reload_weights(self.weights_dir)
            self.vllm_client.reset_prefix_cache()
            self.last_sync_seconds = time.perf_counter() - start


@contextlib.contextmanager
def disk_weight_sync(config):
    """While TRL's ``GRPOTrainer.__init__`` runs, make it build a ``DiskSyncVLLMGeneration`` when ``config`` asks.

    TRL constructs ``VLLMGeneration`` inline in its ``__init__`` (and the constructor already opens the NCCL group), so
    the class it looks up is swapped for the duration of that call. A no-op unless ``use_vllm``, server mode and
    ``vllm_weight_sync="disk"``.
    """
    if not (
        getattr(config, "use_vllm", False)
        and config.vllm_mode == "server"
        and getattr(config, "vllm_weight_sync", "nccl") == "disk"
    ):
        yield
        return
    import functools

    weights_dir = config.vllm_weight_sync_dir or os.path.join(config.output_dir, "vllm-weights")
    with swap_vllm_generation(functools.partial(DiskSyncVLLMGeneration, weights_dir=weights_dir)):
        yield


def served_logprobs(base_url: str, token_ids: list[int], timeout: float = 60.0) -> torch.Tensor:
    """Log-probs the server assigns to ``token_ids[1:]`` given their prefixes (``prompt_logprobs``), as a 1-D tensor.

    A cheap way to see which weights a server holds: compare with the trainer's own log-probs of the same tokens.
    """
    model = requests.get(f"{base_url}/v1/models", timeout=timeout).json()["data"][0]["id"]
    response = requests.post(
        f"{base_url}/v1/completions",
        json={"model": model, "prompt": token_ids, "max_tokens": 1, "temperature": 1.0, "prompt_logprobs": 0},
        timeout=timeout,
    )
    response.raise_for_status()
    positions = response.json()["choices"][0]["prompt_logprobs"][1:]  # the first token has no prefix
    return torch.tensor([entry[str(tok)]["logprob"] for entry, tok in zip(positions, token_ids[1:], strict=True)])
