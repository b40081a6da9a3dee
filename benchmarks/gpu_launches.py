"""The GPU check's sections that launch processes (benchmarks/gpu_check.py): DeepSpeed (one ``accelerate launch`` per
ZeRO stage of gpu_check.py itself), asynchronous generation (benchmarks/bench_async.py and its vLLM server) and the
multi-node rehearsal (asym_trl/apps/multinode.py). Each writes its section to the report as its phases end."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import traceback
from pathlib import Path

import torch
from gpu_report import Results

GPU_CHECK = Path(__file__).parent / "gpu_check.py"


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
        cmd += ["--mixed_precision", "no" if opts.tiny else "bf16", str(GPU_CHECK), str(opts.out_dir)]
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
        full = not opts.tiny  # --tiny: the first phase only
        gpus = torch.cuda.device_count() if full else 0
        if gpus >= 2:  # one GPU per node, NCCL, as a real cluster
            device, backend, gpu_per_node = "cuda", "nccl", True
            section["ranks"] = "one GPU per node (CUDA_VISIBLE_DEVICES), NCCL, bf16"
        else:
            device, backend, gpu_per_node = "cpu", None, False
            section["ranks"] = (
                "CPU tensors over gloo, float32: one GPU cannot hold two NCCL ranks, and two ranks sharing it over "
                "gloo with CUDA tensors died with SIGSEGV at FSDP2's first checkpoint (2026-12-04)"
                if gpus == 1
                else "CPU tensors over gloo, float32 (no GPU)"
            )
        rehearsal = Rehearsal(
            out, build_tiny_model(out / "model"), device=device, ddp_backend=backend, gpu_per_node=gpu_per_node
        )
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
        if full and ok:
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
