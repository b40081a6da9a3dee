"""A multi-node launch rehearsed on one host: two training "nodes" and a vLLM server "node", on loopback.

    python -m asym_trl.apps.multinode OUT_DIR [--vllm-python .venv-vllm/bin/python | --server-url URL]

Each training node is one ``accelerate launch --num_machines 2 --machine_rank R --main_process_ip 127.0.0.1`` of one
process, FSDP2 over gloo (``recipes/accelerate_configs/fsdp.yaml`` with its device keys set for CPU, as
tests/test_fsdp.py runs it), started in a working directory of its own that stands for the node's local disk
(``output_dir`` is relative to it). They train the tiny model for a few steps on a reward that depends only on a
rollout's prompt and position (so runs on different process counts see the same rewards), generating on the vLLM
server reached by URL, with ``vllm_weight_sync: disk`` through a directory both nodes and the server see (the shared
file system) and the sync check on. The server samples with a fixed seed, so two runs from the same weights get the
same completions. Three phases, each a function that returns what it saw (tests/test_multinode.py asserts on them):

1. :meth:`Rehearsal.straight`: 3 steps on 2 nodes, a checkpoint at step 2;
2. :meth:`Rehearsal.node_loss`: the same launch, every process of one node killed during training; the other must
   stop with an error naming the lost node, within ``ddp_timeout`` plus the launcher's teardown;
3. :meth:`Rehearsal.resume`: one node, one process, resumes from the straight run's checkpoint and trains step 3.

The training processes run this module with ``--worker``
(:func:`asym_trl.apps.multinode_node.worker`). See docs/distributed.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import yaml
from safetensors.torch import load_file

from ..generation.vllm_serve import cpu_server
from .multinode_node import worker
from .tiny import build_tiny_model

REPO = Path(__file__).resolve().parents[2]
FSDP_CONFIG = REPO / "recipes" / "accelerate_configs" / "fsdp.yaml"
DDP_TIMEOUT = 30  # s: the bound on a wait for a peer that stopped answering (asym_trl.lifecycle.distributed)


# -------------------------------------------------------------------------------------------- the launcher side
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_fsdp_config(path: Path, num_processes: int = 2) -> Path:
    """fsdp.yaml with the keys a CPU machine needs: float32, every process loads the weights, ``use_cpu`` (which
    makes accelerate pick gloo; FSDPOnCPU then keeps FSDP from turning into DDP)."""
    config = yaml.safe_load(FSDP_CONFIG.read_text())
    config.update(use_cpu=True, num_processes=num_processes, mixed_precision="no")
    config["fsdp_config"]["fsdp_cpu_ram_efficient_loading"] = False
    path.write_text(yaml.safe_dump(config))
    return path


def kill_tree(process: subprocess.Popen) -> None:
    """SIGKILL a launcher and everything under it. torchrun starts its workers in sessions of their own, so killing
    the launcher's process group would leave them running (and their peers training on)."""
    try:
        root = psutil.Process(process.pid)
        members = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        members = []
    for member in members:
        try:
            member.kill()
        except psutil.NoSuchProcess:
            pass
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass


@dataclass
class Launch:
    """The nodes of one launch: their launchers, logs and records."""

    name: str
    dir: Path
    nodes: list[subprocess.Popen] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def log(self, node: int) -> str:
        path = self.dir / f"node{node}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def records(self) -> dict[int, dict]:
        out = {}
        for path in sorted((self.dir / "records").glob("rank*.json")):
            out[int(path.stem[4:])] = json.loads(path.read_text())
        return out

    def wait(self, timeout: float) -> list[int | None]:
        """Each node's exit code; a node still running after ``timeout`` s (in all) is killed and reads None."""
        deadline = time.monotonic() + timeout
        codes = []
        for node in self.nodes:
            try:
                codes.append(node.wait(timeout=max(0.1, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                kill_tree(node)
                codes.append(None)
        return codes

    def kill(self) -> None:
        for node in self.nodes:
            if node.poll() is None:
                kill_tree(node)


@dataclass
class Rehearsal:
    """The phases of the rehearsal (module doc), under ``out``; ``server_url`` None generates with transformers."""

    out: Path
    model_dir: Path
    server_url: str | None = None
    device: str = "cpu"
    ddp_backend: str | None = None
    gpu_per_node: bool = False  # node R sees GPU R only (CUDA_VISIBLE_DEVICES=R): NCCL needs one GPU per rank
    ddp_timeout: int = DDP_TIMEOUT
    launch_timeout: float = 400.0

    def __post_init__(self):
        self.out = Path(self.out).resolve()
        self.out.mkdir(parents=True, exist_ok=True)

    def config(self, num_processes: int) -> Path:
        if self.device == "cpu":
            return cpu_fsdp_config(self.out / f"fsdp_cpu_{num_processes}.yaml", num_processes)
        return FSDP_CONFIG

    def launch(self, name: str, nodes: int, max_steps: int, save_steps: int = 0, resume: Path | None = None):
        """``nodes`` accelerate launchers of one process each, node R in ``out/name/nodeR`` (its local disk)."""
        run = Launch(name, self.out / name)
        (run.dir / "records").mkdir(parents=True)
        port = free_port()
        worker_args = ["--worker", str(run.dir / "records"), "--model", str(self.model_dir), "--device", self.device]
        worker_args += ["--max-steps", str(max_steps), "--save-steps", str(save_steps)]
        worker_args += ["--ddp-timeout", str(self.ddp_timeout)]
        if self.ddp_backend:
            worker_args += ["--ddp-backend", self.ddp_backend]
        if self.server_url:
            worker_args += ["--server-url", self.server_url, "--sync-dir", str(self.out / "shared" / "vllm-weights")]
        if resume is not None:
            worker_args += ["--resume", str(resume)]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        try:
            for rank in range(nodes):
                cwd = run.dir / f"node{rank}"
                cwd.mkdir()
                cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(self.config(nodes))]
                cmd += ["--num_machines", str(nodes), "--machine_rank", str(rank), "--num_processes", str(nodes)]
                cmd += ["--main_process_ip", "127.0.0.1", "--main_process_port", str(port)]
                cmd += ["-m", "asym_trl.apps.multinode", *worker_args]
                node_env = env | ({"CUDA_VISIBLE_DEVICES": str(rank)} if self.gpu_per_node else {})
                with open(run.dir / f"node{rank}.log", "w") as log:
                    node = subprocess.Popen(
                        cmd, cwd=cwd, env=node_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                    )
                run.nodes.append(node)
        except BaseException:
            run.kill()
            raise
        return run

    def straight(self, steps: int = 3, save_steps: int = 2) -> dict:
        """2 nodes train ``steps`` steps and save at ``save_steps``."""
        run = self.launch("straight", 2, steps, save_steps)
        try:
            codes = run.wait(self.launch_timeout)
        finally:
            run.kill()
        checkpoint = f"run/checkpoint-{save_steps}"
        return {
            "codes": codes,
            "seconds": time.monotonic() - run.started,
            "records": run.records(),
            "logs": [run.log(r) for r in range(2)],
            "checkpoint": str(run.dir / "node0" / checkpoint),
            # what each node's disk holds: rank 0 writes the model, optimizer and trainer state; every rank its RNG
            "written": {r: _listing(run.dir / f"node{r}" / checkpoint) for r in range(2)},
            "final_weights": str(run.dir / "node0" / "run" / "model.safetensors"),
        }

    def node_loss(self, lost: int = 1, after_step: int = 1) -> dict:
        """2 nodes train; once both logged ``after_step``, every process of node ``lost`` is killed. The survivor
        must stop by itself: how long it took, its exit code and its log."""
        run = self.launch("node_loss", 2, max_steps=1000)
        try:
            deadline = time.monotonic() + self.launch_timeout
            while not all(len(r.get("steps", [])) >= after_step for r in run.records().values()) or (
                len(run.records()) < 2
            ):
                if time.monotonic() > deadline or any(node.poll() is not None for node in run.nodes):
                    raise RuntimeError(f"node_loss: the launch did not reach step {after_step}:\n{run.log(0)[-3000:]}")
                time.sleep(0.5)
            kill_tree(run.nodes[lost])
            killed = time.monotonic()
            survivor = run.nodes[1 - lost]
            try:
                code = survivor.wait(timeout=self.stop_bound() + 60)
            except subprocess.TimeoutExpired:
                code = None  # still running: a hang
            stopped = time.monotonic() - killed
        finally:
            run.kill()
        return {
            "lost": lost,
            "code": code,
            "stop_seconds": stopped,
            "bound": self.stop_bound(),
            "log": run.log(1 - lost),
        }

    def stop_bound(self) -> float:
        """The longest a survivor may take to stop: the process-group timeout, then torchrun's teardown of its
        workers (measured here: ~10 s) with room for a loaded machine."""
        return self.ddp_timeout + 30.0

    def resume(self, checkpoint: Path, steps: int = 3) -> dict:
        """1 node of 1 process resumes from ``checkpoint`` (written by 2 processes) and trains up to ``steps``."""
        run = self.launch("resume", 1, steps, resume=Path(checkpoint))
        try:
            (code,) = run.wait(self.launch_timeout)
        finally:
            run.kill()
        return {
            "code": code,
            "seconds": time.monotonic() - run.started,
            "records": run.records(),
            "log": run.log(0),
            "final_weights": str(run.dir / "node0" / "run" / "model.safetensors"),
        }


def _listing(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir()) if path.is_dir() else []


def compare_resume(straight: dict, resumed: dict) -> dict:
    """The straight run's step after the checkpoint against the one-node resume's (same prompts, same completions
    from the seeded server, so the same loss up to float summation order across 2 shards vs 1)."""
    one = resumed["records"][0]["records"][0]  # the one step the resumed run trained
    step = one["step"]
    ranks = [r["records"][step - 1] for _, r in sorted(straight["records"].items())]
    logged = [next(s for s in run["records"][0]["steps"] if s["step"] == step) for run in (straight, resumed)]
    # 2 FSDP2 processes save a tied output head as a tensor of its own (a copy of the embeddings); 1 does not
    a, b = load_file(straight["final_weights"]), load_file(resumed["final_weights"])
    tied = {"lm_head.weight"} & (set(a) ^ set(b))
    a, b = ({k: v for k, v in w.items() if k not in tied} for w in (a, b))
    return {
        "step": step,
        "same_prompts": sum((r["answers"] for r in ranks), []) == one["answers"],
        "same_completions": sum((r["completions"] for r in ranks), []) == one["completions"],
        "same_rewards": all(r["rewards"] == one["rewards"] for r in ranks),
        "advantages": (sum((r["advantages"] for r in ranks), []), one["advantages"]),
        "loss": tuple(s["loss"] for s in logged),
        "grad_norm": tuple(s["grad_norm"] for s in logged),
        "max_weight_diff": max((a[k] - b[k]).abs().max().item() for k in a),
        "same_tensors": sorted(a) == sorted(b) and all(a[k].shape == b[k].shape for k in a),
    }


# -------------------------------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out_dir", type=Path, nargs="?")
    parser.add_argument("--server-url", help="a running `asym-trl vllm-serve MODEL --weight-sync disk` server")
    parser.add_argument("--vllm-python", help="start a CPU vLLM server with this interpreter (.venv-vllm/bin/python)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--ddp-backend", default=None, help="e.g. gloo: 2 processes on 1 GPU (NCCL refuses that)")
    parser.add_argument("--ddp-timeout", type=int, default=DDP_TIMEOUT)
    # the worker's options
    parser.add_argument("--worker", metavar="RECORD_DIR", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--max-steps", type=int, default=3, help=argparse.SUPPRESS)
    parser.add_argument("--save-steps", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--sync-dir", help=argparse.SUPPRESS)
    parser.add_argument("--resume", help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    if opts.worker:
        opts.record_dir = opts.worker
        worker(opts)
        return 0
    if opts.out_dir is None:
        parser.error("OUT_DIR is required")
    return rehearse(opts)


def rehearse(opts) -> int:
    """All three phases, with timings, into ``out_dir/results.json``; a server started here when asked."""

    out = opts.out_dir.resolve()
    model_dir = build_tiny_model(out / "model")
    with contextlib.ExitStack() as stack:
        url = opts.server_url
        if url is None and opts.vllm_python:
            url = stack.enter_context(cpu_server(model_dir, out / "server.log", opts.vllm_python))
        rehearsal = Rehearsal(out, model_dir, url, opts.device, opts.ddp_backend, opts.ddp_timeout)
        straight = rehearsal.straight()
        print(f"[multinode] straight: exit codes {straight['codes']}, {straight['seconds']:.1f} s", flush=True)
        resumed = rehearsal.resume(Path(straight["checkpoint"]))
        print(f"[multinode] resume on one node: exit code {resumed['code']}, {resumed['seconds']:.1f} s", flush=True)
        comparison = compare_resume(straight, resumed) if resumed["code"] == 0 and straight["codes"] == [0, 0] else {}
        loss = rehearsal.node_loss()
        print(
            f"[multinode] node loss: survivor exit code {loss['code']} after {loss['stop_seconds']:.1f} s", flush=True
        )
    results = {
        "straight": {k: straight[k] for k in ("codes", "seconds", "written")},
        "resume": {"code": resumed["code"], "seconds": resumed["seconds"], **comparison},
        "node_loss": {k: loss[k] for k in ("code", "stop_seconds", "bound")},
    }
    (out / "results.json").write_text(json.dumps(results, indent=2))
    if comparison:
        merged, single = comparison["advantages"]
        print(
            f"[multinode] resumed step {comparison['step']}: advantages equal {merged == single}, same completions "
            f"{comparison['same_completions']}, loss {comparison['loss']}, "
            f"weights {comparison['max_weight_diff']:.1e} apart"
        )
    print(f"[multinode] results in {out / 'results.json'}")
    ok = straight["codes"] == [0, 0] and resumed["code"] == 0 and loss["code"] not in (0, None)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
