"""Wall time of asynchronous vs synchronous GRPO for the same number of trained rollouts, through a vLLM server.

Four trainers train the same steps (same model, data, reward, samples per optimizer step) against one server:

* ``grpo``        TRL's ``GRPOTrainer``, ``vllm_mode="server"``: generate, then train, then push (synchronous);
* ``asym``        ``AsymGRPOTrainer``, the same mode;
* ``trl-async``   TRL's ``AsyncGRPOTrainer``: a rollout worker generates while the trainer trains;
* ``asym-async``  ``AsymAsyncGRPOTrainer``.

The weight push is the disk one everywhere (``DiskSyncVLLMGeneration`` swapped into both synchronous trainers,
``DiskWeightTransfer`` for both async ones; the after-sync check off), so what differs is generation overlapping
training, and for each pair asym_trl's own cost. The AsymGRPO trainers run ``--estimator`` (default ``reinforce``:
no zero-signal group, so every trainer trains exactly the rollouts it generated; ``asym`` drops zero-signal groups,
which makes the async trainer generate more for the same trained rollouts). asym_trl's own cost is measured best
with ``--estimator grpo --keep-zero-signal``: the advantages of TRL's async worker (population std), the same
groups trained, so the same training dynamics (completion lengths decide the generation time). Reported per
trainer: ``train()`` wall time, and the steady step time (median of the step-end intervals after ``--warmup``
steps: the start-up -- the rollout worker's spawn, the first reload -- is a fixed cost a long run does not pay per
step).

    python benchmarks/bench_async.py --url http://127.0.0.1:8000 --model ./runs/tiny-model   # a running server
    python benchmarks/bench_async.py                      # starts one (.venv-vllm, scripts/setup_vllm_cpu.sh)

The server must serve ``--model`` with ``--weight-sync disk`` (``asym-trl vllm-serve``); it is reset to that
checkpoint between trainers.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from transformers import TrainerCallback

from asym_trl.apps.tiny import async_tokenizer, build_tiny_model, cpu_run_kwargs, toy_sum_dataset, toy_sum_reward

REPO = Path(__file__).resolve().parents[1]
TRAINERS = ("grpo", "asym", "trl-async", "asym-async")


class StepClock(TrainerCallback):
    def __init__(self):
        self.ends = []

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(time.monotonic())


def common(opts, out_dir: str) -> dict:
    return cpu_run_kwargs(
        use_cpu=opts.device == "cpu",  # the tiny model trains in float32 on either device
        output_dir=out_dir,
        num_generations=opts.group,
        per_device_train_batch_size=opts.batch,
        max_completion_length=opts.tokens,
        max_steps=opts.steps,
        learning_rate=1e-3,
        logging_steps=1,
    )


def build(name: str, opts, url: str, out_dir: str):
    dataset = toy_sum_dataset(512)
    if name in ("grpo", "asym"):
        server = dict(use_vllm=True, vllm_mode="server", vllm_server_base_url=url, vllm_server_timeout=60)
        if name == "asym":
            from asym_trl import AsymGRPOConfig, AsymGRPOTrainer

            args = AsymGRPOConfig(
                **common(opts, out_dir),
                **server,
                advantage_estimator=opts.estimator,
                vllm_weight_sync="disk",
                vllm_sync_check="off",
            )
            return AsymGRPOTrainer(opts.model, toy_sum_reward, args=args, train_dataset=dataset)
        from trl import GRPOConfig, GRPOTrainer

        from asym_trl.generation.vllm_sync import DiskSyncVLLMGeneration
        from asym_trl.trl_compat import swap_vllm_generation

        disk = functools.partial(DiskSyncVLLMGeneration, weights_dir=f"{out_dir}/sync", sync_check="off")
        with swap_vllm_generation(disk):  # TRL's push is NCCL only: the disk push, as AsymGRPOTrainer's
            return GRPOTrainer(
                opts.model, toy_sum_reward, args=GRPOConfig(**common(opts, out_dir), **server), train_dataset=dataset
            )
    from asym_trl.async_trainer import AsymAsyncGRPOConfig, AsymAsyncGRPOTrainer, DiskWeightTransfer

    # token_budget 0: exactly --batch samples per optimizer step (TRL's default packs by the server's max_model_len)
    queue = dict(max_staleness=opts.max_staleness, queue_maxsize=opts.max_staleness * opts.batch, token_budget=0)
    # TRL's FA3 packed attention is a Hub download: both async trainers use asym_trl's SDPA one, on either device
    from asym_trl.generation.async_cpu import use_sdpa_tree_attention

    tokenizer = async_tokenizer(opts.model)
    if name == "asym-async":
        args = AsymAsyncGRPOConfig(
            **common(opts, out_dir),
            **queue,
            advantage_estimator=opts.estimator,
            vllm_server_base_url=url,
            vllm_weight_sync="disk",
            vllm_weight_sync_dir=f"{out_dir}/sync",
            vllm_sync_check="off",
            tree_attention="sdpa",
            drop_zero_signal=not opts.keep_zero_signal,
        )
        return AsymAsyncGRPOTrainer(
            opts.model, toy_sum_reward, args=args, train_dataset=dataset, processing_class=tokenizer
        )
    import importlib.util

    from trl.experimental.async_grpo import AsyncGRPOConfig, AsyncGRPOTrainer

    from asym_trl.trl_compat import async_trainer_shims

    args = AsyncGRPOConfig(**common(opts, out_dir), **queue, vllm_server_base_url=url)
    transfer = DiskWeightTransfer(url, f"{out_dir}/sync", sync_check="off")
    no_vllm = importlib.util.find_spec("vllm") is None
    with async_trainer_shims(no_cuda=opts.device == "cpu", no_vllm=no_vllm):  # as AsymAsyncGRPOTrainer does
        trainer = AsyncGRPOTrainer(
            opts.model,
            toy_sum_reward,
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            weight_transfer=transfer,
        )
    use_sdpa_tree_attention()
    return trainer


def run(name: str, opts, url: str, out_dir: str) -> dict:
    from asym_trl.generation.vllm_sync import DiskSyncClient

    DiskSyncClient(url).reload_weights(opts.model)  # every trainer starts against the checkpoint
    trainer = build(name, opts, url, out_dir)
    clock = StepClock()
    trainer.add_callback(clock)
    start = time.monotonic()
    trainer.train()
    wall = time.monotonic() - start
    steps = [b - a for a, b in zip(clock.ends[opts.warmup :], clock.ends[opts.warmup + 1 :], strict=False)]
    logs = [h for h in trainer.state.log_history if "sample/staleness_mean" in h]
    return {
        "trainer": name,
        "wall_s": wall,
        "train_s": clock.ends[-1] - start,  # to the last step's end: without the rollout worker's stop
        "steady_step_s": statistics.median(steps) if steps else float("nan"),
        "staleness_mean": statistics.mean(h["sample/staleness_mean"] for h in logs) if logs else None,
        "dropped_stale": sum(h.get("sample/dropped_stale_total", 0) for h in logs) if logs else None,
    }


@contextlib.contextmanager
def server(model: str, python: str, log_path: str, device: str):
    port = 18000 + os.getpid() % 1000
    command = [sys.executable, "-m", "asym_trl.cli", "vllm-serve", model, "--host", "127.0.0.1", "--port", str(port)]
    command += ["--device", "cpu" if device == "cpu" else "auto", "--weight-sync", "disk", "--python", python]
    command += ["--", "--dtype", "bfloat16", "--enforce-eager", "--max-model-len", "256"]
    # the server shares the machine (CPU) or the one GPU with the trainer
    command += ["--kv-cache-memory-bytes", "256M"] if device == "cpu" else ["--gpu-memory-utilization", "0.3"]
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        from asym_trl.generation.vllm_sync import wait_for_server

        wait_for_server(url, timeout=900)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=60)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", help="a running `asym-trl vllm-serve MODEL --weight-sync disk` (else one is started)")
    parser.add_argument("--model", help="the served model directory (default: a tiny model built here)")
    parser.add_argument("--python", default=str(REPO / ".venv-vllm" / "bin" / "python"), help="vLLM interpreter")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the trainers and server run")
    parser.add_argument("--trainers", nargs="+", default=list(TRAINERS), choices=TRAINERS)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16, help="rollouts trained per optimizer step")
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--max-staleness", type=int, default=1)
    parser.add_argument("--estimator", default="reinforce")
    parser.add_argument(
        "--keep-zero-signal", action="store_true", help="asym-async trains zero-signal groups too (as TRL does)"
    )
    parser.add_argument("--rounds", type=int, default=1, help="rounds, the order reversed every other round")
    parser.add_argument("--json", help="write the results here")
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        opts.model = opts.model or str(build_tiny_model(f"{tmp}/model"))
        url = opts.url or stack.enter_context(server(opts.model, opts.python, f"{tmp}/server.log", opts.device))
        runs = []
        for round_ in range(opts.rounds):  # reversed every other round: cancels drift of a shared machine
            order = opts.trainers if round_ % 2 == 0 else opts.trainers[::-1]
            runs += [run(name, opts, url, f"{tmp}/{name}-{round_}") for name in order]
    results = [  # per trainer: the median over rounds
        {
            "trainer": name,
            **{
                key: statistics.median(r[key] for r in runs if r["trainer"] == name)
                for key in ("wall_s", "train_s", "steady_step_s")
            },
            "staleness_mean": next(r["staleness_mean"] for r in runs if r["trainer"] == name),
            "rounds": [r for r in runs if r["trainer"] == name],
        }
        for name in opts.trainers
    ]
    print(
        f"\n{opts.rounds} round(s), medians: {opts.steps} steps x {opts.batch} rollouts (G {opts.group}, "
        f"{opts.tokens} tokens), estimator "
        f"{opts.estimator}, max_staleness {opts.max_staleness}, {opts.device}, {os.cpu_count()} CPUs"
    )
    print(f"{'trainer':12} {'train() s':>10} {'to last step s':>15} {'steady step s':>14} {'staleness':>10}")
    for r in results:
        lag = "" if r["staleness_mean"] is None else f"{r['staleness_mean']:.2f}"
        print(f"{r['trainer']:12} {r['wall_s']:10.1f} {r['train_s']:15.1f} {r['steady_step_s']:14.3f} {lag:>10}")
    by = {r["trainer"]: r for r in results}
    for a, b in (("asym-async", "asym"), ("trl-async", "grpo"), ("asym-async", "trl-async"), ("asym", "grpo")):
        if a in by and b in by:
            ratio = by[a]["train_s"] / by[b]["train_s"]
            steady = by[a]["steady_step_s"] / by[b]["steady_step_s"]
            print(f"{a} / {b}: {ratio:.3f} (to last step), {steady:.3f} (steady step)")
    if opts.json:
        Path(opts.json).write_text(json.dumps({"options": vars(opts), "results": results}, indent=1))


if __name__ == "__main__":  # TRL's rollout worker is a spawned process: it re-imports __main__
    main()
