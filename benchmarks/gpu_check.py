"""One short run that checks the GPU path; results go to OUT_DIR as it goes, so a run cut off still reports.

scripts/gpu_check.sh wraps it for an offline GPU box (docs/gpu.md); ``--tiny`` runs the same code on CPU in seconds
(tests/test_gpu_check.py). In order, each section written to results.json / results.md as soon as it ends:

1. env: versions, device.
2. advantages: benchmarks/bench_advantages.py on the device, 1M rollouts (target <= 1 ms on a GPU).
3. full: TRL's GRPOTrainer, then AsymGRPOTrainer, on the same model, data, seed and config: step time (TRL's logged
   ``step_time``, generation included, median after the first step), peak memory (``max_memory_allocated``), their
   ratios (targets <= 1.03 and <= 1.02) and the zero-signal share (groups whose rewards are all equal).
4. lora: the same with a LoRA adapter (r 16, all linear layers), AsymGRPOTrainer first this time.
5. deepspeed: AsymGRPOTrainer under DeepSpeed ZeRO-2, then ZeRO-3 (recipes/accelerate_configs/zero{2,3}.yaml, one
   process: ``accelerate launch --num_processes 1`` of this script with ``--deepspeed-worker STAGE``), 2 steps of at
   most 128 completion tokens, then the disk weight sync to vLLM into a stand-in server: step time, peak memory, and
   whether the synced file holds every parameter at its full shape (ZeRO-3 shards them). "skipped" without deepspeed.
6. async: benchmarks/bench_async.py on the GPU: a vLLM server (started here, on the same GPU, disk weight push) and
   the tiny model; wall time of TRL's GRPOTrainer, AsymGRPOTrainer, TRL's AsyncGRPOTrainer and AsymAsyncGRPOTrainer for
   the same trained rollouts (targets: async <= 0.75 x sync, AsymGRPO-async / TRL-async <= 1.05). "skipped" unless
   vLLM and aiohttp import (the offline image has neither: bring their wheels) -- and give it time
   (GPU_CHECK_TIMEOUT: the server starts in a minute or two).
7. multinode: the 2-"node" rehearsal of asym_trl/apps/multinode.py on this GPU: two ``accelerate launch
   --num_machines 2 --machine_rank 0/1 --main_process_ip 127.0.0.1`` of one process each sharing the GPU, FSDP2 in
   bf16 over gloo (NCCL refuses two ranks on one GPU), the tiny model, transformers generation (no vLLM on the box):
   3 steps with a checkpoint at 2; the resume of step 3 on one node; one node killed, the other's stop timed. With
   ``--tiny`` (CPU) only the first phase runs (tests/test_multinode.py runs them all on CPU).

The model is the Qwen3 architecture built from a config at Qwen3-0.6B's shapes (random weights, no Hub), bf16, with
gradient checkpointing; the tokenizer a word-level vocabulary "t0", "t1", ... built in memory. Generation is
transformers'; 4 groups of G = 8 rollouts per optimizer step (micro-batches of 8, 4 accumulation steps). AsymGRPO runs
with its defaults (asym, beta 0.9 / 0.4), diagnostics on, ``likelihood_displacement_rollout_steps=0``.

Random weights give every rollout of a group the same (random) quality, so the reward is planted: rollout j of prompt
i succeeds when j < k_i, with k_i = i mod 9. Every success count 0..8 occurs; 2 of 9 groups carry no signal.

    python benchmarks/gpu_check.py OUT_DIR [--tiny] [--steps 3] [--completion-length 512] [--sections deepspeed]
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

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


class Results:
    """results.json and results.md in ``out_dir``, rewritten after every section."""

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        self.data = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "sections": {}}

    def add(self, name: str, value: dict) -> None:
        self.data["sections"][name] = value
        self.data["elapsed_s"] = round(time.monotonic() - START, 1)
        tmp = self.out_dir / "results.json.partial"
        tmp.write_text(json.dumps(self.data, indent=2))
        os.replace(tmp, self.out_dir / "results.json")
        (self.out_dir / "results.md").write_text(markdown(self.data))
        print(f"[gpu_check {self.data['elapsed_s']:6.1f} s] {name}: {json.dumps(value)}", flush=True)


def markdown(data: dict) -> str:
    sections = data["sections"]
    lines = [f"GPU check of {data['started']} ({data['elapsed_s']} s)", ""]
    env = sections.get("env", {})
    if env:
        lines += [", ".join(f"{k}: {v}" for k, v in env.items()), ""]
    lines += [
        "| run | GRPOTrainer step (s) | AsymGRPOTrainer step (s) | ratio (target <= 1.03) "
        "| GRPOTrainer peak (GiB) | AsymGRPOTrainer peak (GiB) | ratio (target <= 1.02) | zero-signal share |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in ("full", "lora"):
        run = sections.get(name)
        if run is None:
            continue
        trl, asym = run.get("trl", {}), run.get("asym", {})
        cells = [
            trl.get("step_time_s"),
            asym.get("step_time_s"),
            run.get("step_time_ratio"),
            trl.get("peak_memory_gib"),
            asym.get("peak_memory_gib"),
            run.get("peak_memory_ratio"),
            asym.get("zero_signal_share"),
        ]
        row = " | ".join("—" if c is None else f"{c:.3f}" for c in cells)
        lines.append(f"| {name} | {row} |" + (f" error: {run['error']}" if "error" in run else ""))
    deepspeed = sections.get("deepspeed")
    if deepspeed:
        lines += ["", "AsymGRPOTrainer under DeepSpeed, 1 process, then the disk weight sync:", ""]
        if "skipped" in deepspeed:
            lines.append(f"skipped: {deepspeed['skipped']}")
        else:
            lines += ["| ZeRO stage | step (s) | peak (GiB) | synced file: full shapes |", "|---|---|---|---|"]
        for stage, run in deepspeed.get("stages", {}).items():
            cells = [run.get(k) for k in ("step_time_s", "peak_memory_gib")]
            row = " | ".join("—" if c is None else f"{c:.3f}" for c in cells)
            lines.append(f"| {stage} | {row} | {run.get('synced_full_shapes', '—')} |")
            if "error" in run:
                lines.append(f"error (ZeRO-{stage}): {run['error']}")
    asynchronous = sections.get("async")
    if asynchronous:
        lines += ["", "Asynchronous generation (benchmarks/bench_async.py, tiny model, vLLM server on the GPU):", ""]
        lines += [
            f"{key}: {value:.3f}" if isinstance(value, float) else f"{key}: {value}"
            for key, value in asynchronous.items()
        ]
    multi = sections.get("multinode")
    if multi:
        lines += ["", "Two nodes on loopback, 1 process each (asym_trl/apps/multinode.py):", ""]
        lines += [f"- {phase}: {json.dumps(value)}" for phase, value in multi.items()]
    adv = sections.get("advantages")
    if adv:
        lines += [
            "",
            f"Advantages of {adv.get('rollouts')} rollouts (G = 8) on {adv.get('device')}, best of "
            f"{adv.get('repeats')} (target <= 1 ms on a GPU):",
            "",
            "| estimator | ms |",
            "|---|---|",
        ]
        lines += [f"| {name} | {ms:.3f} |" for name, ms in adv.get("ms", {}).items()]
        if "error" in adv:
            lines.append(f"error: {adv['error']}")
    return "\n".join(lines) + "\n"


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


def train(kind: str, opts, setup: dict, out_dir: Path, lora: bool, sync_dir: Path | None = None) -> dict:
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
    if sync_dir is not None:
        result |= sync_to_disk(trainer, sync_dir, shapes)
    del trainer, model
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return result


def compare(results: Results, name: str, order: tuple[str, str], opts, setup, out_dir, lora: bool) -> bool:
    run = {}
    try:
        for kind in order:
            run[kind] = train(kind, opts, setup, out_dir, lora)
            if len(run) == 2:
                run["step_time_ratio"] = run["asym"]["step_time_s"] / run["trl"]["step_time_s"]
                if setup["device"] == "cuda":
                    run["peak_memory_ratio"] = run["asym"]["peak_memory_gib"] / run["trl"]["peak_memory_gib"]
            results.add(name, run)  # one trainer's numbers are kept even if the other fails
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


def deepspeed(results: Results, opts) -> bool:
    if importlib.util.find_spec("deepspeed") is None:
        results.add("deepspeed", {"skipped": "deepspeed not importable"})
        return True
    section, ok = {"stages": {}}, True
    for stage in (2, 3):
        run = section["stages"][stage] = {}
        config = Path(__file__).parents[1] / "recipes" / "accelerate_configs" / f"zero{stage}.yaml"
        cmd = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--config_file",
            str(config),
            "--num_processes",
            "1",
        ]
        cmd += ["--mixed_precision", "no" if opts.tiny else "bf16", __file__, str(opts.out_dir)]
        cmd += ["--deepspeed-worker", str(stage), "--steps", "2", "--completion-length"]
        cmd += [str(min(opts.completion_length, 128))] + ["--tiny"] * opts.tiny
        proc = subprocess.run(cmd, capture_output=True, text=True)
        print(proc.stdout + proc.stderr, flush=True)
        report = opts.out_dir / f"zero{stage}.json"
        if proc.returncode == 0 and report.exists():
            run.update(json.loads(report.read_text()))
        else:
            run["error"] = f"rc {proc.returncode}: " + (proc.stderr.strip().splitlines() or [""])[-1]
        ok &= "error" not in run and run.get("synced_full_shapes") is True
        results.add("deepspeed", section)
    return ok


def async_comparison(results: Results, opts) -> bool:
    missing = [name for name in ("vllm", "aiohttp") if importlib.util.find_spec(name) is None]
    if missing or opts.tiny:
        why = "--tiny" if opts.tiny else f"{' and '.join(missing)} not importable"
        results.add("async", {"skipped": why})
        return True
    report = opts.out_dir / "async.json"
    cmd = [sys.executable, str(Path(__file__).parent / "bench_async.py"), "--device", "cuda", "--python"]
    cmd += [sys.executable, "--steps", str(max(opts.steps, 6)), "--tokens", "64", "--json", str(report)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    print(proc.stdout + proc.stderr, flush=True)
    if proc.returncode != 0 or not report.exists():
        results.add("async", {"error": f"rc {proc.returncode}: " + (proc.stderr.strip().splitlines() or [""])[-1]})
        return False
    by = {r["trainer"]: r["train_s"] for r in json.loads(report.read_text())["results"]}
    section = {f"{name}_s": seconds for name, seconds in by.items()}
    section["async_over_sync"] = by["asym-async"] / by["asym"]
    section["trl_async_over_sync"] = by["trl-async"] / by["grpo"]
    section["asym_async_over_trl_async"] = by["asym-async"] / by["trl-async"]
    results.add("async", section)
    return True


def multinode(results: Results, opts) -> bool:
    """Section 6 (module doc): each phase's result is written as soon as it ends."""
    from asym_trl.apps.multinode import Rehearsal, compare_resume
    from asym_trl.apps.tiny import build_tiny_model

    section, ok = {}, False
    try:
        out = opts.out_dir / "multinode"
        cuda = not opts.tiny
        device, backend = ("cuda", "gloo") if cuda else ("cpu", None)
        rehearsal = Rehearsal(out, build_tiny_model(out / "model"), device=device, ddp_backend=backend)
        straight = rehearsal.straight()
        ranks = straight["records"]
        section["straight"] = {
            "exit_codes": straight["codes"],
            "seconds": round(straight["seconds"], 1),
            "world_sizes": [r.get("world_size") for r in ranks.values()],
            "distributed_type": ranks.get(0, {}).get("distributed_type"),
            "losses": [s["loss"] for s in ranks.get(0, {}).get("steps", [])],
            "checkpoint_files": straight["written"],
        }
        ok = straight["codes"] == [0, 0] and section["straight"]["world_sizes"] == [2, 2]
        if not ok:
            section["straight"]["log_tail"] = [log[-1500:] for log in straight["logs"]]
        results.add("multinode", section)
        if cuda and ok:
            resumed = rehearsal.resume(straight["checkpoint"])
            section["resume"] = {"exit_code": resumed["code"], "seconds": round(resumed["seconds"], 1)}
            if resumed["code"] == 0:
                section["resume"] |= compare_resume(straight, resumed)  # greedy, not seeded: completions may differ
            else:
                section["resume"]["log_tail"] = resumed["log"][-1500:]
            results.add("multinode", section)
            loss = rehearsal.node_loss()
            section["node_loss"] = {k: loss[k] for k in ("code", "stop_seconds", "bound")}
            section["node_loss"]["named_the_lost_node"] = "lost contact with node 1" in loss["log"]
            ok = resumed["code"] == 0 and loss["code"] not in (0, None) and loss["stop_seconds"] < loss["bound"]
    except Exception as exc:
        section["error"] = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
        ok = False
    results.add("multinode", section)
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--tiny", action="store_true", help="a tiny model on CPU, for tests")
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per trainer (the first warms up)")
    parser.add_argument("--completion-length", type=int, default=None, help="default 512 (tiny: 16)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated, of " + ", ".join(SECTIONS))
    parser.add_argument("--deepspeed-worker", type=int, choices=(2, 3), help=argparse.SUPPRESS)
    opts = parser.parse_args()
    sections = opts.sections.split(",")
    opts.out_dir.mkdir(parents=True, exist_ok=True)
    if opts.completion_length is None:
        opts.completion_length = 16 if opts.tiny else 512
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
        ok &= compare(results, "full", ("trl", "asym"), opts, setup, opts.out_dir, lora=False)
    if "lora" in sections:
        ok &= compare(results, "lora", ("asym", "trl"), opts, setup, opts.out_dir, lora=True)
    if "deepspeed" in sections:
        ok &= deepspeed(results, opts)
    if "async" in sections:
        ok &= async_comparison(results, opts)
    if "multinode" in sections:
        ok &= multinode(results, opts)
    return 0 if ok else 1


START = time.monotonic()

if __name__ == "__main__":
    sys.exit(main())
