"""The GPU check's report: results.json and results.md in the output folder, rewritten after every section
(benchmarks/gpu_check.py), so a run cut off still reports what it measured."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

START = time.monotonic()
PART_ROWS = ("generate", "rewards", "scoring", "rescore", "loss_forward", "backward", "optimizer", "other",
             "diagnostics", "step")  # fmt: skip


def _cell(value) -> str:
    return "—" if value is None else f"{value:.3f}"


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
        "Warm-up trainer discarded, then ABBA pairs (AsymGRPO, TRL; TRL, AsymGRPO; ...), each trainer's median step "
        "after its first:",
        "",
        "| run | pairs | GRPOTrainer step (s) | AsymGRPOTrainer step (s) | ratio per pair | ratio: median "
        "(target <= 1.03) | GRPOTrainer peak (GiB) | AsymGRPOTrainer peak (GiB) | peak ratio (target <= 1.02) "
        "| zero-signal share |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in ("full", "lora"):
        run = sections.get(name)
        if run is None:
            continue
        pairs = run.get("pairs", [])
        trl = [p["trl"]["step_time_s"] for p in pairs if "trl" in p]
        asym = [p["asym"]["step_time_s"] for p in pairs if "asym" in p]
        cells = [
            str(len(pairs)),
            ", ".join(f"{t:.3f}" for t in trl) or "—",
            ", ".join(f"{t:.3f}" for t in asym) or "—",
            ", ".join(f"{r:.3f}" for r in run.get("pair_ratios", [])) or "—",
            _cell(run.get("step_time_ratio")),
            _cell(pairs[0]["trl"].get("peak_memory_gib") if pairs and "trl" in pairs[0] else None),
            _cell(pairs[0]["asym"].get("peak_memory_gib") if pairs and "asym" in pairs[0] else None),
            _cell(run.get("peak_memory_ratio")),
            _cell(pairs[0]["asym"].get("zero_signal_share") if pairs and "asym" in pairs[0] else None),
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |" + (f" error: {run['error']}" if "error" in run else ""))
    full = sections.get("full", {})
    if "parts" in full:
        lines += ["", "The full run's step by part (s, median; timed apart, the device synchronised at each "
                  "boundary), and the host syncs per step torch reports (`set_sync_debug_mode`) by library:", "",
                  "| part | GRPOTrainer | AsymGRPOTrainer |", "|---|---|---|"]  # fmt: skip
        for part in PART_ROWS:
            cells = " | ".join(_cell(full["parts"][kind].get(part)) for kind in ("trl", "asym"))
            lines.append(f"| {part} | {cells} |")
        syncs = full.get("syncs", {})
        for name, label in (("host_reads", "host reads per step"), ("cuda_syncs", "CUDA syncs per step")):
            cells = [", ".join(f"{lib} {n:g}" for lib, n in (syncs.get(k, {}).get(name) or {}).items()) or "—"
                     for k in ("trl", "asym")]  # fmt: skip
            lines.append(f"| {label} | {cells[0]} | {cells[1]} |")
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
