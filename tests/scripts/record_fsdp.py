"""2 AsymGRPO steps under any launcher; per process, what tests/test_fsdp.py compares across 1 process, DDP and FSDP2.

Records the gathered rewards and local advantages (as record_advantages.py), how each parameter is held (a DTensor
and its placements under FSDP2), the first step's loss and grad-norm, this process's local piece of every parameter
after training, and the weights the disk weight sync to vLLM writes (through a stand-in for the server). The stand-in
"serves" the synced file: the library's end-to-end sync check compares it with the sharded model's own forward.
Usage: record_fsdp.py OUT_DIR MODEL_DIR
"""

import sys
from pathlib import Path

import torch
from record_advantages import Recording, build_trainer, write_rank_json
from safetensors.torch import save_file
from torch.distributed.tensor import DTensor

import asym_trl.generation.vllm_sync
from asym_trl.apps.multinode_node import FSDPOnCPU as CPUFSDP
from asym_trl.generation.vllm_sync import DiskSyncVLLMGeneration
from asym_trl.generation.weight_check import model_logprobs

GLOBAL_BATCH = 12  # 3 groups of 4 per step; under 2 processes the middle group spans both


class FileServer:
    """Stands in for the vLLM server: it "reloads" the synced file into an unsharded float32 copy of the model, whose
    log-probs it serves to the sync check (main process only, as a real server)."""

    base_url, model, session = "file://synced-weights", "tiny", None

    def __init__(self, model_dir):
        self.model_dir, self.model = model_dir, None

    def reload_weights(self, weights_path):
        from safetensors.torch import load_file
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(self.model_dir)
        missing, unexpected = self.model.load_state_dict(
            load_file(str(Path(weights_path) / "model.safetensors")), strict=False
        )
        assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)  # a tied head
        return []

    def reset_prefix_cache(self):
        pass

    def logprobs(self, url, token_ids, **kwargs):
        return model_logprobs(self.model, token_ids)


class OfflineDiskSync(DiskSyncVLLMGeneration):
    def init_engine(self):
        self.vllm_client = FileServer(self.model_dir)
        asym_trl.generation.vllm_sync.served_logprobs = self.vllm_client.logprobs
        self.weights_dir.mkdir(parents=True, exist_ok=True)


class FSDPOnCPU(CPUFSDP, Recording):
    """Recording, under FSDP2 on CPU processes (gloo)."""


def local_piece(param: torch.Tensor) -> torch.Tensor:
    return param.to_local() if isinstance(param, DTensor) else param


def main():
    out_dir, model_dir = Path(sys.argv[1]), sys.argv[2]
    trainer = build_trainer(out_dir, model_dir, "asym", GLOBAL_BATCH, trainer_cls=FSDPOnCPU)
    trainer.train()
    first = next(h for h in trainer.state.log_history if "loss" in h)
    named = list(trainer.model.named_parameters())
    params = {
        name: {
            "type": type(p).__name__,
            "placements": [str(x) for x in p.placements] if isinstance(p, DTensor) else [],
            "shape": list(p.shape),
            "local_shape": list(local_piece(p).shape),
        }
        for name, p in named
    }
    rank = trainer.accelerator.process_index
    pieces = {name: local_piece(p).detach().cpu().contiguous() for name, p in named}
    save_file(pieces, str(out_dir / f"pieces{rank}.safetensors"))

    OfflineDiskSync.model_dir = model_dir
    sync = OfflineDiskSync(
        trainer.model, trainer.accelerator, trainer.processing_class, mode="server", weights_dir=out_dir / "sync"
    )
    sync.sync_weights()  # every process: the FSDP gathers and the check's forward inside are collective
    write_rank_json(
        out_dir,
        distributed_type=str(trainer.accelerator.distributed_type),
        records=trainer.records,
        loss=first["loss"],
        grad_norm=first["grad_norm"],
        params=params,
        sync_check=sync.sync_check.history,
    )


if __name__ == "__main__":
    main()
