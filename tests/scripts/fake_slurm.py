"""Stand-ins for srun, scontrol, curl, accelerate, asym-trl: a Slurm script run on one machine (tests/test_slurm.py).

    fake_slurm.py TOOL ARGS...        (tests/test_slurm.py puts one wrapper per tool on PATH)

Every call appends a JSON line to $FAKE_SLURM_LOG: the tool, its arguments, the node it runs on and the Slurm
variables it got. ``srun`` runs its command once per task, one task per node of ``--nodelist`` (or the first
``--nodes`` of the allocation, $FAKE_NODES), with the variables Slurm sets for a task; an option srun does not have
fails the step. ``accelerate launch`` arguments go through accelerate's own parser (a misspelt flag fails). With
$FAKE_DRY_RUN=1, the training command of task 0 runs with ``--dry-run`` (the recipe's keys and batch arithmetic
checked, nothing loaded) and ``asym-trl vllm-serve`` with ``--dry-run`` (prints the server command). ``curl``
answers as $FAKE_CURL_OK says (1, the default: healthy).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

# srun's long options (man srun) a launch script may use: those taking a value, and flags
SRUN_VALUES = (
    "nodes ntasks nodelist exclude ntasks-per-node cpus-per-task gres gpus gpus-per-node gpus-per-task mem "
    "mem-per-cpu time job-name output error export chdir distribution cpu-bind mpi het-group signal wait"
).split()
SRUN_FLAGS = "overlap exclusive exact label unbuffered no-kill".split()
SRUN_OPTIONAL = ["kill-on-bad-exit"]  # --kill-on-bad-exit[=0|1]


def record(tool: str, argv: list[str], **extra) -> None:
    env = {k: v for k, v in os.environ.items() if k.startswith("SLURM")}
    entry = {"tool": tool, "argv": argv, "node": os.environ.get("SLURMD_NODENAME"), "env": env, **extra}
    with open(os.environ["FAKE_SLURM_LOG"], "a") as log:
        log.write(json.dumps(entry) + "\n")


def srun(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="srun", allow_abbrev=False)
    for name in SRUN_VALUES:
        parser.add_argument(f"--{name}")
    for name in SRUN_FLAGS:
        parser.add_argument(f"--{name}", action="store_true")
    for name in SRUN_OPTIONAL:
        parser.add_argument(f"--{name}", nargs="?", const="1")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    opts = parser.parse_args(argv)
    allocation = os.environ["FAKE_NODES"].split()
    nodes = opts.nodelist.split(",") if opts.nodelist else allocation[: int(opts.nodes or len(allocation))]
    unknown = sorted(set(nodes) - set(allocation))
    if unknown:
        print(f"srun: error: nodes {unknown} are not in the allocation {allocation}", file=sys.stderr)
        return 1
    ntasks = int(opts.ntasks or len(nodes))
    record("srun", argv, step_nodes=nodes, ntasks=ntasks)
    status = 0
    for task in range(ntasks):
        node = nodes[task * len(nodes) // ntasks]  # block distribution
        env = {
            **os.environ,
            "SLURM_PROCID": str(task),
            "SLURM_NODEID": str(nodes.index(node)),
            "SLURM_LOCALID": "0",
            "SLURMD_NODENAME": node,
            "SLURM_STEP_NODELIST": ",".join(nodes),
            "SLURM_STEP_NUM_NODES": str(len(nodes)),
            "SLURM_NTASKS": str(ntasks),
        }
        status = max(status, subprocess.run(opts.command, env=env, timeout=300).returncode)
    return status


def accelerate(argv: list[str]) -> int:
    from accelerate.commands.launch import launch_command_parser

    if argv[:1] != ["launch"]:
        print(f"fake accelerate: only `accelerate launch` is staged, got {argv}", file=sys.stderr)
        return 2
    args = launch_command_parser().parse_args(argv[1:])  # exits 2 on an unknown flag
    keys = ("config_file", "num_machines", "num_processes", "machine_rank", "main_process_ip", "main_process_port")
    launch = {key: getattr(args, key) for key in keys} | {"module": args.module, "script": args.training_script}
    dry_run = None
    if os.environ.get("FAKE_DRY_RUN") == "1" and os.environ.get("SLURM_PROCID") == "0":
        command = [sys.executable, *(["-m"] if args.module else []), args.training_script]
        proc = subprocess.run(
            [*command, *args.training_script_args, "--dry-run"], capture_output=True, text=True, timeout=300
        )
        dry_run = {"returncode": proc.returncode, "output": proc.stdout + proc.stderr}
    record("accelerate", argv, launch=launch, script_args=args.training_script_args, dry_run=dry_run)
    return 0 if dry_run is None else dry_run["returncode"]


def asym_trl(argv: list[str]) -> int:
    if os.environ.get("FAKE_DRY_RUN") != "1":
        record("asym-trl", argv, dry_run=None)
        return 0
    proc = subprocess.run(
        [sys.executable, "-m", "asym_trl.cli", *argv[:1], "--dry-run", *argv[1:]],
        capture_output=True,
        text=True,
        timeout=300,
    )
    record("asym-trl", argv, dry_run={"returncode": proc.returncode, "output": proc.stdout + proc.stderr})
    return proc.returncode


def scontrol(argv: list[str]) -> int:
    record("scontrol", argv)
    if argv[:2] == ["show", "hostnames"]:
        print("\n".join(os.environ["FAKE_NODES"].split()))
    return 0


def curl(argv: list[str]) -> int:
    record("curl", argv)
    return 0 if os.environ.get("FAKE_CURL_OK", "1") == "1" else 7  # 7: failed to connect


TOOLS = {"srun": srun, "accelerate": accelerate, "asym-trl": asym_trl, "scontrol": scontrol, "curl": curl}

if __name__ == "__main__":
    sys.exit(TOOLS[sys.argv[1]](sys.argv[2:]))
