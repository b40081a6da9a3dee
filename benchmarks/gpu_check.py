"""One short run that checks the GPU path; results go to OUT_DIR as it goes, so a run cut off still reports.

scripts/gpu_check.sh wraps it for an offline GPU box (docs/gpu.md has what each section measures, the first GPU run's
tables and how to run it); ``--tiny`` runs the same code on CPU in seconds (tests/test_gpu_check.py). Sections, each
written to results.json / results.md (benchmarks/gpu_report.py) as soon as it ends:

1. env: versions, device.
2. advantages: benchmarks/bench_advantages.py on the device, 1M rollouts (target <= 1 ms on a GPU).
3. full: a discarded warm-up trainer, then ``--pairs`` ABBA pairs of AsymGRPOTrainer and TRL's GRPOTrainer (same
   model, data, seed, config; ``--steps`` each, median after the first): the ratio of each pair, their median
   (target <= 1.03) and spread, peak memory (target <= 1.02); then one run of each timed by part and one counting
   the host syncs per step (benchmarks/step_parts.py; their own runs, the instruments cost time).
4. lora: the same pairs with a LoRA adapter (r 16, all linear layers).
5. deepspeed: AsymGRPOTrainer under ZeRO-2, then ZeRO-3 (one process each), then the disk weight sync into a
   stand-in server: step time, peak memory, whether the synced file holds every parameter at full shape.
6. async: benchmarks/bench_async.py with a vLLM server on the GPU ("skipped" unless vLLM and aiohttp import).
7. multinode: the 2-"node" rehearsal of asym_trl/apps/multinode.py: with two GPUs or more, one per node over NCCL;
   with one, the ranks on CPU tensors over gloo (the section says which, and why); ``--tiny``: the first phase only.

The model is the Qwen3 architecture at Qwen3-0.6B's shapes (random weights, no Hub), bf16, gradient checkpointing,
a word-level tokenizer built in memory, transformers generation; 4 groups of G = 8 per optimizer step. The reward is
planted: rollout j of prompt i succeeds when j < i mod 9 (every success count occurs; 2 groups in 9 carry no signal).

    python benchmarks/gpu_check.py OUT_DIR [--tiny] [--steps 5] [--pairs 3] [--completion-length 128] [--sections ...]
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import random
import statistics
import sys
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from gpu_launches import async_comparison, deepspeed, multinode  # noqa: E402
from gpu_report import Results  # noqa: E402
from step_parts import CudaSyncsPerStep, HostReadsPerStep, StepParts, median_parts  # noqa: E402

G = 8
QWEN3_06B = dict(  # Qwen3-0.6B's shapes: 0.6B parameters, 0.44B without the (tied) embedding
    vocab_size=151936,
    hidden_size=1024,
    intermediate_size=3072,
    num_hidden_layers=28,
    num_attention_heads=16,
    num_key_value_heads=8,
    head_dim=128,
)
SECTIONS = ("advantages", "full", "lora", "deepspeed", "async", "multinode")
TINY = dict(
    vocab_size=512,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=32,
)


def build_tokenizer(vocab_size: int):
    """Word-level: "t0" ... "t{V-3}", then pad and eos; prompts are words, and every id the model samples decodes."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(vocab_size - 2)} | {"<pad>": vocab_size - 2, "<eos>": vocab_size - 1}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="<eos>")


def build_model(shapes: dict, tokenizer, dtype: torch.dtype, device: str):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(
        **shapes,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(0)  # the same weights for every trainer
    with torch.device(device):
        model = Qwen3ForCausalLM(config).to(dtype)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def planted_dataset(num_prompts: int, prompt_words: int):
    from datasets import Dataset

    rng = random.Random(0)
    rows = [
        {"prompt": " ".join(f"t{rng.randrange(1000)}" for _ in range(prompt_words)), "k": i % (G + 1)}
        for i in range(num_prompts)
    ]
    return Dataset.from_list(rows)


def planted_reward(completions, k, **kwargs) -> list[float]:
    """Rollout j of a prompt succeeds when j < k (one process: a group's G rollouts are consecutive here)."""
    return [float(j % G < kk) for j, kk in enumerate(k)]


class StandInServer:
    """Takes the vLLM server's place for the disk weight sync: the synced file is what is checked."""

    base_url = "file://synced-weights"

    def reload_weights(self, weights_path):
        return []

    def reset_prefix_cache(self):
        pass


def sync_to_disk(trainer, weights_dir: Path, shapes: dict) -> dict:
    """The library's disk weight sync (sync check off: no server) from the trained model; the file's shapes vs the
    model's own, unsharded."""
    from safetensors import safe_open

    from asym_trl.generation.vllm_sync import WEIGHTS_FILE, DiskSyncVLLMGeneration

    class StandInDiskSync(DiskSyncVLLMGeneration):
        def init_engine(self):
            self.vllm_client = StandInServer()
            self.weights_dir.mkdir(parents=True, exist_ok=True)

    sync = StandInDiskSync(
        trainer.model,
        trainer.accelerator,
        trainer.processing_class,
        mode="server",
        weights_dir=weights_dir,
        sync_check="off",
    )
    sync.sync_weights()  # every process: ZeRO-3's gathers inside are collective
    if not trainer.accelerator.is_main_process:
        return {}
    with safe_open(str(weights_dir / WEIGHTS_FILE), "pt") as f:
        synced = {name: list(f.get_slice(name).get_shape()) for name in f.keys()}
    expected = {name: shape for name, shape in shapes.items() if name != "lm_head.weight" or name in synced}  # tied
    return {"synced_tensors": len(synced), "synced_full_shapes": synced == expected}


def train(
    kind: str, opts, setup: dict, out_dir: Path, lora: bool, sync_dir: Path | None = None, instrument: str = ""
) -> dict:
    """One trainer's run. ``instrument``: ``"parts"`` (the step by part, device synchronised at each boundary) or
    ``"syncs"`` (host reads and, on CUDA, the syncs torch reports, per step); timed runs have none."""
    from trl import GRPOConfig, GRPOTrainer

    from asym_trl import AsymGRPOConfig, AsymGRPOTrainer

    cuda = setup["device"] == "cuda"
    config_cls, trainer_cls, extra = (
        (AsymGRPOConfig, AsymGRPOTrainer, dict(log_diagnostics=True, likelihood_displacement_rollout_steps=0))
        if kind == "asym"
        else (GRPOConfig, GRPOTrainer, {})
    )
    args = config_cls(
        output_dir=str(out_dir / f"run-{kind}{'-lora' if lora else ''}"),
        per_device_train_batch_size=G,
        gradient_accumulation_steps=4,
        num_generations=G,
        max_completion_length=opts.completion_length,
        max_steps=opts.steps,
        learning_rate=1e-6,
        bf16=cuda,
        use_cpu=not cuda,
        gradient_checkpointing=True,
        save_strategy="no",
        report_to="none",
        logging_steps=1,
        seed=0,
        **extra,
    )
    peft_config = None
    if lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
    model = build_model(setup["shapes"], setup["tokenizer"], setup["dtype"], setup["device"])
    parameters = sum(p.numel() for p in model.parameters())
    shapes = {name: list(p.shape) for name, p in model.named_parameters()}
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    start_memory = torch.cuda.memory_allocated() / 2**30 if cuda else None  # the model, plus any leftover
    trainer = trainer_cls(
        model,
        reward_funcs=planted_reward,
        args=args,
        train_dataset=setup["dataset"],
        processing_class=setup["tokenizer"],
        peft_config=peft_config,
    )
    parts = StepParts(trainer, setup["device"]) if instrument == "parts" else None
    reads = HostReadsPerStep(trainer) if instrument == "syncs" else None
    syncs = CudaSyncsPerStep(trainer) if instrument == "syncs" and cuda else None
    trainer.train()
    history = [h for h in trainer.state.log_history if "step_time" in h]
    step_times = [h["step_time"] for h in history]
    result = {
        "parameters": parameters,
        "step_times_s": step_times,
        "step_time_s": statistics.median(step_times[1:] or step_times),  # the first step warms up
        "start_memory_gib": start_memory,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "mean_completion_length": statistics.mean(h["completions/mean_length"] for h in history),
        "zero_signal_share": statistics.mean(h["frac_reward_zero_std"] for h in history),
    }
    if kind == "asym":  # the trainer's own count: all- plus none-solved groups
        result["all_or_none_solved"] = statistics.mean(
            h["groups/all_solved"] + h["groups/none_solved"] for h in history
        )
    if parts is not None:
        result["parts"] = median_parts(parts.history)
    for name, counter in (("host_reads", reads), ("cuda_syncs", syncs)):
        if counter is not None:  # median per step after the first, by library
            libraries = {lib for h in counter.history for lib in h}
            rows = counter.history[1:] or counter.history
            result[name] = {lib: statistics.median(h.get(lib, 0) for h in rows) for lib in sorted(libraries)}
    if sync_dir is not None:
        result |= sync_to_disk(trainer, sync_dir, shapes)
    del trainer, model
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return result


def compare(results: Results, name: str, opts, setup, out_dir, lora: bool) -> bool:
    """A discarded warm-up trainer, then ``opts.pairs`` ABBA pairs (AsymGRPO first in even pairs); the ratio of
    each pair's median steps, their median and spread; then, for the full run, one instrumented run of each by
    part and one counting the syncs (their own runs: the instruments cost time)."""
    run = {"pairs": []}
    try:
        run["warm_up_s"] = train("trl", opts, setup, out_dir / "warm-up", lora)["step_time_s"]
        results.add(name, run)
        for i in range(opts.pairs):
            pair = {}
            run["pairs"].append(pair)
            for kind in ("asym", "trl") if i % 2 == 0 else ("trl", "asym"):
                pair[kind] = train(kind, opts, setup, out_dir / f"pair{i}", lora)
            run["pair_ratios"] = [p["asym"]["step_time_s"] / p["trl"]["step_time_s"] for p in run["pairs"]]
            run["step_time_ratio"] = statistics.median(run["pair_ratios"])
            run["ratio_spread"] = [min(run["pair_ratios"]), max(run["pair_ratios"])]
            if setup["device"] == "cuda":
                peaks = {k: statistics.median(p[k]["peak_memory_gib"] for p in run["pairs"]) for k in ("trl", "asym")}
                run["peak_memory_ratio"] = peaks["asym"] / peaks["trl"]
            results.add(name, run)  # the pairs so far are kept even if a later one fails
        if not lora:
            run["parts"] = {k: train(k, opts, setup, out_dir / "parts", lora, instrument="parts")["parts"]
                            for k in ("trl", "asym")}  # fmt: skip
            counted = {k: train(k, opts, setup, out_dir / "syncs", lora, instrument="syncs") for k in ("trl", "asym")}
            run["syncs"] = {k: {"host_reads": c["host_reads"], "cuda_syncs": c.get("cuda_syncs")}
                            for k, c in counted.items()}  # fmt: skip
            results.add(name, run)
        return True
    except Exception as exc:
        run["error"] = f"{type(exc).__name__}: {exc}"
        results.add(name, run)
        traceback.print_exc()
        return False


def advantages(results: Results, opts, device: str) -> bool:
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_advantages import run as bench

    rollouts, repeats = (100_000, 3) if opts.tiny else (1_000_000, 20)
    section = {"device": device, "rollouts": rollouts, "repeats": repeats}
    try:
        section["ms"] = bench(rollouts, repeats, device)
        results.add("advantages", section)
        return True
    except Exception as exc:
        section["error"] = f"{type(exc).__name__}: {exc}"
        results.add("advantages", section)
        traceback.print_exc()
        return False


def deepspeed_worker(opts, setup: dict) -> None:
    """One ZeRO stage, under ``accelerate launch``: AsymGRPOTrainer, then the disk weight sync; JSON to OUT_DIR."""
    from accelerate import PartialState

    stage = opts.deepspeed_worker
    result = train(
        "asym", opts, setup, opts.out_dir / f"zero{stage}", lora=False, sync_dir=opts.out_dir / f"zero{stage}-sync"
    )
    result["distributed_type"] = str(PartialState().distributed_type)
    if PartialState().is_main_process:
        (opts.out_dir / f"zero{stage}.json").write_text(json.dumps(result))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--tiny", action="store_true", help="a tiny model on CPU, for tests")
    parser.add_argument("--steps", type=int, default=5, help="optimizer steps per trainer (the first warms up)")
    parser.add_argument("--pairs", type=int, default=3, help="ABBA pairs of the full and LoRA comparisons")
    parser.add_argument("--completion-length", type=int, default=None, help="default 128 (tiny: 16)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated, of " + ", ".join(SECTIONS))
    parser.add_argument("--deepspeed-worker", type=int, choices=(2, 3), help=argparse.SUPPRESS)
    opts = parser.parse_args()
    sections = opts.sections.split(",")
    opts.out_dir.mkdir(parents=True, exist_ok=True)
    if opts.completion_length is None:
        opts.completion_length = 16 if opts.tiny else 128
    device = "cuda" if torch.cuda.is_available() and not opts.tiny else "cpu"
    if not opts.tiny and device != "cuda":
        print("no CUDA device: run with --tiny on CPU", file=sys.stderr)
        return 2

    shapes = TINY if opts.tiny else QWEN3_06B
    tokenizer = build_tokenizer(shapes["vocab_size"])
    setup = {
        "shapes": shapes,
        "tokenizer": tokenizer,
        "dtype": torch.float32 if opts.tiny else torch.bfloat16,
        "device": device,
        "dataset": planted_dataset(64, 8 if opts.tiny else 64),
    }
    if opts.deepspeed_worker:
        deepspeed_worker(opts, setup)
        return 0

    import accelerate
    import peft
    import transformers
    import trl

    results = Results(opts.out_dir)
    results.add(
        "env",
        {
            "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "transformers": transformers.__version__,
            "trl": trl.__version__,
            "accelerate": accelerate.__version__,
            "peft": peft.__version__,
            "tiny": opts.tiny,
            "steps": opts.steps,
            "completion_length": opts.completion_length,
        },
    )
    ok = "advantages" not in sections or advantages(results, opts, device)
    if "full" in sections:
        ok &= compare(results, "full", opts, setup, opts.out_dir, lora=False)
    if "lora" in sections:
        ok &= compare(results, "lora", opts, setup, opts.out_dir, lora=True)
    if "deepspeed" in sections:
        ok &= deepspeed(results, opts)
    if "async" in sections:
        ok &= async_comparison(results, opts)
    if "multinode" in sections:
        ok &= multinode(results, opts)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
