"""Avg@k evaluation on the paper's math benchmarks (§4.3, App. E) and the ``asym-trl eval`` command.

Avg@k of a benchmark = mean over its problems of the fraction of ``k`` sampled completions whose last ``\\boxed{}``
answer math-verify judges equal to the gold answer, in percent (paper: k=5 for MATH-500 and OlympiadBench, k=10 for
AIME24/AIME25/AMC23, temperature 0.4, top-p 1.0).  A completion that cannot be scored (see
:mod:`asym_trl.task.rewards`) counts as wrong and is reported in ``unscorable`` (gold does not parse) or
``unverifiable`` (answer refused or verification timed out: :func:`asym_trl.task.verifier.is_unverifiable`).  ``Avg.``
is the unweighted mean of the benchmark scores, as in the paper's Table 1.

Generation backends (vLLM, an OpenAI-compatible server, transformers) are in :mod:`asym_trl.generation.backends`.

Scoring: the math verifier by default, or any TRL-signature ``reward_func`` (a reward >= 1 is a success).
:func:`evaluate_policy` is the held-out report of a policy on such a task: greedy and sampled accuracy, the shares of
all-/none-solved prompts and the token entropy overall / on correct / on incorrect samples.

Outputs of :func:`main`: ``results.json``, ``results.md`` (Table 1 layout) and ``samples/<benchmark>.jsonl`` (every
completion with its verdict) under ``--output-dir``.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from ..errors import OneLineParser, UsageError, one_line_errors
from ..generation.backends import (
    EvalSampling,
    Generator,
    OpenAIServerGenerator,
    TransformersGenerator,
    VLLMGenerator,
)
from .data import BENCHMARKS, benchmark_source, load_benchmark
from .hub_access import hub_problem, looks_local
from .rewards import MathVerifier, score_completions
from .verifier import NO_ANSWER, is_unverifiable

__all__ = [
    "PAPER_K",
    "avg_at_k",
    "evaluate",
    "evaluate_benchmark",
    "evaluate_policy",
    "main",
    "markdown_table",
    "policy_report",
]

PAPER_K = {"math500": 5, "aime24": 10, "aime25": 10, "amc23": 10, "olympiadbench": 5}


# ----------------------------------------------------------------------------------------------------------------
# Scoring
# ----------------------------------------------------------------------------------------------------------------


def avg_at_k(correct: Sequence[Sequence[bool]]) -> float:
    """Avg@k in percent: mean over problems of the fraction of their ``k`` samples that are correct."""
    if not correct:
        raise ValueError("avg_at_k needs at least one problem")
    return 100.0 * sum(sum(c) / len(c) for c in correct) / len(correct)


@dataclass
class BenchmarkResult:
    name: str
    k: int
    avg_at_k: float
    num_problems: int
    unscorable: int  # samples whose gold answer does not parse (counted as wrong)
    unverifiable: int  # answers refused by a pre-check or whose verification timed out / failed (wrong)
    no_answer: int  # samples without a boxed answer
    samples: list[dict] = field(default_factory=list, repr=False)
    correct: list[list[bool]] = field(default_factory=list, repr=False)  # per problem, per sample

    def summary(self) -> dict:
        return {key: value for key, value in asdict(self).items() if key not in ("samples", "correct")}


def evaluate_benchmark(
    generate: Generator,
    dataset,
    *,
    k: int,
    sampling: EvalSampling,
    name: str = "benchmark",
    verifier: MathVerifier | None = None,
    reward_func: Callable | None = None,
) -> BenchmarkResult:
    """Generate ``k`` completions per problem of ``dataset`` (``prompt``/``solution``, optionally ``problem``) and
    score them with the math verifier, or with ``reward_func`` (TRL signature; a reward >= 1 is a success)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if len(dataset) == 0:
        raise ValueError(f"benchmark {name!r} is empty")
    prompts, solutions = dataset["prompt"], dataset["solution"]
    problems = dataset["problem"] if "problem" in dataset.column_names else [None] * len(prompts)
    completions = generate(prompts, k, sampling, desc=name)
    if len(completions) != len(prompts) or any(len(c) != k for c in completions):
        raise RuntimeError(f"the generator returned {[len(c) for c in completions]} completions, expected {k} each")
    flat = [c for per_prompt in completions for c in per_prompt]
    flat_solutions = [s for s in solutions for _ in range(k)]
    if reward_func is None:
        rewards, statuses = score_completions(flat, flat_solutions, verifier)
    else:
        rewards = reward_func(flat, solution=flat_solutions)
        statuses = ["scored" if r is not None else "unscorable" for r in rewards]
    samples = [
        {
            "index": i // k,
            "sample": i % k,
            "problem": problems[i // k],
            "solution": solutions[i // k],
            "completion": completion,
            "status": status,
            "reward": reward,
            **(
                {"entropy": completion.entropy, "num_tokens": completion.num_tokens}
                if hasattr(completion, "entropy")
                else {}
            ),
        }
        for i, (completion, status, reward) in enumerate(zip(flat, statuses, rewards, strict=True))
    ]
    success = [r is not None and r >= 1 for r in rewards]
    correct = [success[i * k : (i + 1) * k] for i in range(len(prompts))]
    return BenchmarkResult(
        name=name,
        k=k,
        avg_at_k=avg_at_k(correct),
        num_problems=len(prompts),
        unscorable=sum(r is None for r in rewards),
        unverifiable=sum(map(is_unverifiable, statuses)),
        no_answer=statuses.count(NO_ANSWER),
        samples=samples,
        correct=correct,
    )


def evaluate_policy(generate: Generator, dataset, *, k: int, sampling: EvalSampling, reward_func: Callable) -> dict:
    """Held-out report of a policy on ``dataset`` (``prompt``/``solution``) scored by ``reward_func``.

    ``greedy_accuracy``; over ``k`` samples per prompt with ``sampling``: ``sampled_accuracy``, ``all_solved`` /
    ``none_solved`` (share of prompts with p = 1 / 0), ``entropy`` (mean token entropy along the samples; needs a
    generator that returns :class:`Completion` objects) and the same mean over ``entropy_correct`` /
    ``entropy_incorrect`` samples only.
    """
    return policy_report(generate, dataset, k=k, sampling=sampling, reward_func=reward_func)[0]


def policy_report(
    generate: Generator, dataset, *, k: int, sampling: EvalSampling, reward_func: Callable
) -> tuple[dict, BenchmarkResult]:
    """:func:`evaluate_policy`'s report and the sampled :class:`BenchmarkResult` it came from (for further metrics)."""
    import torch

    greedy = evaluate_benchmark(
        generate, dataset, k=1, sampling=replace(sampling, temperature=0.0), reward_func=reward_func
    )
    greedy_ok = [c[0] for c in greedy.correct]
    sampled = evaluate_benchmark(generate, dataset, k=k, sampling=sampling, reward_func=reward_func)
    correct = torch.tensor([c for per_prompt in sampled.correct for c in per_prompt])
    rollout_entropy = torch.tensor([s["entropy"] for s in sampled.samples])
    rollout_tokens = torch.tensor([s["num_tokens"] for s in sampled.samples])
    p = correct.view(-1, k).float().mean(1)

    def mean_entropy(select):
        return float(rollout_entropy[select].sum() / rollout_tokens[select].sum().clamp(min=1))

    report = {
        "greedy_accuracy": sum(greedy_ok) / len(greedy_ok),
        "sampled_accuracy": float(correct.float().mean()),
        "all_solved": float((p == 1).float().mean()),
        "none_solved": float((p == 0).float().mean()),
        "entropy": mean_entropy(torch.ones_like(correct)),
        "entropy_correct": mean_entropy(correct) if correct.any() else float("nan"),
        "entropy_incorrect": mean_entropy(~correct) if (~correct).any() else float("nan"),
    }
    return report, sampled


def evaluate(
    generate: Generator,
    benchmarks: Mapping[str, object],
    *,
    ks: Mapping[str, int] | None = None,
    sampling: EvalSampling | None = None,
    verifier: MathVerifier | None = None,
) -> dict[str, BenchmarkResult]:
    """Evaluate every ``{name: dataset}``; ``ks`` defaults to :data:`PAPER_K` (k=1 for benchmarks it lacks)."""
    sampling = sampling or EvalSampling()
    ks = {**PAPER_K, **(ks or {})}
    return {
        name: evaluate_benchmark(generate, dataset, k=ks.get(name, 1), sampling=sampling, name=name, verifier=verifier)
        for name, dataset in benchmarks.items()
    }


def markdown_table(rows: Mapping[str, Mapping[str, float]]) -> str:
    """``{label: {benchmark: score}}`` as the paper's Table 1: benchmarks in its order, then the mean (``Avg.``)."""
    names = [b for b in BENCHMARKS if any(b in scores for scores in rows.values())]
    names += sorted({b for scores in rows.values() for b in scores} - set(names))
    titles = [BENCHMARKS[b].title if b in BENCHMARKS else b for b in names]
    lines = ["| Method | " + " | ".join([*titles, "Avg."]) + " |", "|---" * (len(names) + 2) + "|"]
    for label, scores in rows.items():
        cells = [f"{scores[b]:.2f}" if b in scores else "–" for b in names]
        present = [scores[b] for b in names if b in scores]
        average = f"{sum(present) / len(present):.2f}" if len(present) == len(names) else "–"
        lines.append(f"| {label} | " + " | ".join([*cells, average]) + " |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------------------
# CLI: asym-trl eval
# ----------------------------------------------------------------------------------------------------------------


def _parse_args(argv):
    parser = OneLineParser(
        prog="asym-trl eval",
        description="Avg@k on MATH-500, AIME24, AIME25, AMC23 and OlympiadBench (paper defaults), or combine results.",
    )
    parser.add_argument("--model", help="model path or hub id (for --backend transformers/vllm)")
    parser.add_argument("--backend", choices=["vllm", "server", "transformers"], default="vllm")
    parser.add_argument("--server-url", help="OpenAI-compatible server, e.g. http://localhost:8000 (--backend server)")
    parser.add_argument("--benchmarks", default=",".join(BENCHMARKS), help="comma-separated names")
    parser.add_argument("--data-dir", help="directory of local copies named <benchmark>.{jsonl,json,parquet}")
    parser.add_argument("--data-files", action="append", default=[], metavar="NAME=PATH", help="a local copy")
    parser.add_argument("--k", type=int, help="samples per problem for every benchmark (default: the paper's)")
    parser.add_argument("--temperature", type=float, default=0.4)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--max-new-tokens", type=int, default=4096)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, help="first N problems of each benchmark (smoke tests)")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per generate call (transformers)")
    parser.add_argument("--instruction", help="instruction appended to each problem (default: boxed-answer prompt)")
    parser.add_argument("--enable-thinking", action="store_true", help="Qwen3 thinking mode (default: non-thinking)")
    parser.add_argument("--tensor-parallel-size", type=int, default=1, help="vLLM offline engine")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9, help="vLLM offline engine")
    parser.add_argument("--max-model-len", type=int, help="vLLM offline engine (default: the model's)")
    parser.add_argument("--label", help="row label in the table (default: the model name)")
    parser.add_argument("--output-dir", default="eval_results")
    parser.add_argument("--table", nargs="+", metavar="RESULTS_JSON", help="only print a table of earlier results")
    args = parser.parse_args(argv)
    if not args.table and args.backend != "server" and not args.model:
        parser.error(f"--model is required with --backend {args.backend}")
    if args.backend == "server" and not args.table and not args.server_url:
        parser.error("--server-url is required with --backend server")
    return args


def _read_results(path: str) -> dict:
    try:
        result = json.loads(Path(path).read_text())
        return {"label": result["label"], "benchmarks": result["benchmarks"]}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UsageError(f"--table {path}: not a results.json of asym-trl eval ({type(e).__name__}: {e})") from e


def _local_copy(name: str, args) -> Path | None:
    explicit = dict(item.split("=", 1) for item in args.data_files)
    if name in explicit:
        return Path(explicit[name])
    if args.data_dir:
        for suffix in (".jsonl", ".json", ".parquet"):
            if (path := Path(args.data_dir) / f"{name}{suffix}").exists():
                return path
    return None


def _check_backend(args) -> None:
    """The default backend needs vLLM: say so in one line, with the backends that do not, before anything loads."""
    if args.backend == "vllm" and "vllm" not in sys.modules and importlib.util.find_spec("vllm") is None:
        raise UsageError(
            "--backend vllm (the default) needs vLLM, which is not installed here: use --backend transformers (any "
            "device, slower), --backend server --server-url URL (a running server), or pip install 'asym_trl[vllm]'"
        )


def _check_benchmarks(names: list[str], args) -> None:
    """Every benchmark name is known, and those read from the Hub can come from it (or the local cache)."""
    for name in names:
        try:
            from_hub = benchmark_source(name) == "hub" and _local_copy(name, args) is None
        except ValueError as e:  # an unknown benchmark
            raise UsageError(str(e)) from e
        if from_hub:
            what, hub_id = f"--benchmarks {name} ({BENCHMARKS[name].hub_id})", BENCHMARKS[name].hub_id
            alternative = "local copies: --data-dir DIR (files <benchmark>.jsonl) or --data-files NAME=PATH"
            if (problem := hub_problem(what, hub_id, repo_type="dataset", alternative=alternative)) is not None:
                raise UsageError(problem)


def _check_model(args) -> None:
    """``--model`` can be loaded here: a local path exists, a Hub id can come from the Hub (or the local cache)."""
    if args.backend == "server" or Path(args.model).expanduser().exists():
        return
    if looks_local(args.model):
        raise UsageError(f"--model {args.model}: {Path(args.model).expanduser().absolute()} does not exist")
    what = f"--model {args.model} (no such local directory here, so a Hub id)"
    if (problem := hub_problem(what, args.model, alternative="a local model directory")) is not None:
        raise UsageError(problem)


@one_line_errors("eval")
def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.table:
        rows = {}
        for path in args.table:
            result = _read_results(path)
            rows[result["label"]] = {b: r["avg_at_k"] for b, r in result["benchmarks"].items()}
        print(markdown_table(rows), end="")
        return 0

    names = [n.strip() for n in args.benchmarks.split(",") if n.strip()]
    _check_backend(args)  # before anything is loaded: the backend, the benchmarks, the model
    _check_benchmarks(names, args)
    _check_model(args)
    benchmarks = {}
    for name in names:
        common = dict(instruction=args.instruction, limit=args.limit)
        try:
            if name in BENCHMARKS:
                benchmarks[name] = load_benchmark(name, data_files=_local_copy(name, args), **common)
            else:  # a local file in the usual layout, named by its stem
                benchmarks[Path(name).stem] = load_benchmark(name, **common)
        except (ValueError, FileNotFoundError) as e:  # a missing or empty local copy
            raise UsageError(str(e)) from e
    template_kwargs = {"enable_thinking": args.enable_thinking}
    if args.backend == "server":
        generate = OpenAIServerGenerator(args.server_url, model=args.model, chat_template_kwargs=template_kwargs)
    elif args.backend == "vllm":
        engine = dict(
            tensor_parallel_size=args.tensor_parallel_size, gpu_memory_utilization=args.gpu_memory_utilization
        )
        if args.max_model_len:
            engine["max_model_len"] = args.max_model_len
        generate = VLLMGenerator(args.model, chat_template_kwargs=template_kwargs, seed=args.seed, **engine)
    else:
        generate = TransformersGenerator(args.model, batch_size=args.batch_size, chat_template_kwargs=template_kwargs)
    sampling = EvalSampling(args.temperature, args.top_p, args.max_new_tokens, args.seed)
    ks = {name: args.k for name in benchmarks} if args.k else None
    results = evaluate(generate, benchmarks, ks=ks, sampling=sampling)

    label = args.label or Path(str(args.model or getattr(generate, "model", "model"))).name
    output_dir = Path(args.output_dir)
    (output_dir / "samples").mkdir(parents=True, exist_ok=True)
    for name, result in results.items():
        with open(output_dir / "samples" / f"{name}.jsonl", "w") as f:
            for sample in result.samples:
                f.write(json.dumps(sample) + "\n")
    scores = {name: r.avg_at_k for name, r in results.items()}
    summary = {
        "label": label,
        "model": args.model,
        "backend": args.backend,
        "sampling": asdict(sampling),
        "benchmarks": {name: r.summary() for name, r in results.items()},
        "average": sum(scores.values()) / len(scores),
    }
    (output_dir / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    table = markdown_table({label: scores})
    (output_dir / "results.md").write_text(table)
    print(table, end="")
    print(f"results, table and per-sample outputs in {output_dir}/")
    return 0
