"""Avg@k scoring, the Table 1 layout, the generation backends (transformers on the tiny model) and the CLI."""

from __future__ import annotations

import json
import sys
import threading
import types
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from asym_trl.cli import main as cli_main
from asym_trl.generation.backends import EvalSampling, OpenAIServerGenerator, TransformersGenerator, VLLMGenerator
from asym_trl.task.data import load_benchmark
from asym_trl.task.evaluation import PAPER_K, avg_at_k, evaluate, evaluate_benchmark, markdown_table
from asym_trl.task.rewards import MathVerifier

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def verifier():
    v = MathVerifier(timeout_s=30)
    yield v
    v.close()


class Scripted:
    """A generator that returns fixed completions and records how it was called."""

    def __init__(self, completions_by_problem):
        self.completions_by_problem, self.calls = completions_by_problem, []

    def __call__(self, prompts, n, sampling, desc=""):
        self.calls.append((len(prompts), n, sampling, desc))
        return [self.completions_by_problem.get(p[-1]["content"].split("\n\n")[0], ["none"] * n) for p in prompts]


def test_avg_at_k_by_hand():
    assert avg_at_k([[True, False], [True, True], [False, False]]) == pytest.approx(50.0)
    assert avg_at_k([[True, True, True, False]]) == pytest.approx(75.0)
    with pytest.raises(ValueError, match="at least one problem"):
        avg_at_k([])


def test_evaluate_benchmark_scores_and_counts(verifier):
    ds = load_benchmark("aime25", data_files=FIXTURES / "aime25.jsonl")  # golds 9 and 1001
    gen = Scripted(
        {
            ds[0]["problem"]: ["so \\boxed{9}", "\\boxed{8}", "I give up"],
            ds[1]["problem"]: ["\\boxed{1001}", "\\boxed{1001.0}", "\\boxed{9^{9^{9}}}"],
        }
    )
    sampling = EvalSampling(temperature=0.4, top_p=1.0, max_new_tokens=64)
    result = evaluate_benchmark(gen, ds, k=3, sampling=sampling, name="aime25", verifier=verifier)
    assert gen.calls == [(2, 3, sampling, "aime25")]
    assert result.avg_at_k == pytest.approx(100 * (1 / 3 + 2 / 3) / 2)
    assert (result.num_problems, result.unscorable, result.unverifiable, result.no_answer, result.k) == (2, 0, 1, 1, 3)
    assert [(s["index"], s["sample"], s["status"], s["reward"]) for s in result.samples] == [
        (0, 0, "correct", 1.0),
        (0, 1, "wrong", 0.0),
        (0, 2, "no_answer", 0.0),
        (1, 0, "correct", 1.0),
        (1, 1, "correct", 1.0),
        (1, 2, "refused:huge_power", 0.0),
    ]
    assert result.samples[0]["solution"] == "$9$" and result.samples[0]["problem"] == ds[0]["problem"]


def test_paper_defaults(verifier):
    assert PAPER_K == {"math500": 5, "olympiadbench": 5, "aime24": 10, "aime25": 10, "amc23": 10}
    assert (EvalSampling().temperature, EvalSampling().top_p) == (0.4, 1.0)
    gen = Scripted({})
    benchmarks = {name: load_benchmark(name, data_files=FIXTURES / f"{name}.jsonl") for name in ("math500", "amc23")}
    results = evaluate(gen, benchmarks, verifier=verifier)
    assert [call[1] for call in gen.calls] == [5, 10]
    assert results["math500"].avg_at_k == 0.0 and results["amc23"].no_answer == 20
    evaluate(gen, benchmarks, ks={"amc23": 2}, verifier=verifier)
    assert [call[1] for call in gen.calls[2:]] == [5, 2]


def test_markdown_table_layout():
    table = markdown_table(
        {
            "GRPO": {"olympiadbench": 50.0, "math500": 80.0, "aime24": 20.0, "aime25": 10.0, "amc23": 60.0},
            "partial": {"math500": 81.234},
        }
    )
    assert table.splitlines() == [
        "| Method | MATH-500 | AIME24 | AIME25 | AMC23 | Olympiad | Avg. |",
        "|---|---|---|---|---|---|---|",
        "| GRPO | 80.00 | 20.00 | 10.00 | 60.00 | 50.00 | 44.00 |",
        "| partial | 81.23 | – | – | – | – | – |",
    ]


def test_sampling_validation():
    with pytest.raises(ValueError, match="invalid sampling"):
        EvalSampling(top_p=0)
    with pytest.raises(ValueError, match="k must be >= 1"):
        evaluate_benchmark(
            Scripted({}), load_benchmark("aime25", data_files=FIXTURES / "aime25.jsonl"), k=0, sampling=EvalSampling()
        )


def test_transformers_backend_avg_at_k_on_tiny_model(tiny_model_path, verifier):
    ds = load_benchmark("math500", data_files=FIXTURES / "math500.jsonl", instruction="")
    gen = TransformersGenerator(tiny_model_path, batch_size=2)
    sampling = EvalSampling(temperature=0.4, max_new_tokens=6, seed=1)
    result = evaluate_benchmark(gen, ds, k=3, sampling=sampling, name="math500", verifier=verifier)
    completions = [[s["completion"] for s in result.samples if s["index"] == i] for i in range(3)]
    assert [len(c) for c in completions] == [3, 3, 3]
    assert all(isinstance(c, str) for per in completions for c in per)
    assert any(len(set(per)) > 1 for per in completions)  # sampled, not greedy
    # Avg@k agrees with the per-sample verdicts it reports
    correct = [[s["reward"] == 1.0 for s in result.samples if s["index"] == i] for i in range(3)]
    assert result.avg_at_k == pytest.approx(avg_at_k(correct))
    # seeded: the same completions again
    assert gen(ds["prompt"], 3, sampling) == completions
    import torch

    rng_before = torch.get_rng_state()
    greedy = gen(ds["prompt"], 2, EvalSampling(temperature=0, max_new_tokens=6))
    gen(ds["prompt"], 2, sampling)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's (trainer's) random stream is untouched
    assert all(a == b for a, b in greedy)
    assert not gen.model.training


def test_openai_server_backend_against_a_local_stub(verifier):
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _reply(self, payload):
            body = json.dumps(payload).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            assert self.path == "/v1/models"
            self._reply({"data": [{"id": "served-model"}]})

        def do_POST(self):
            assert self.path == "/v1/chat/completions"
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append(request)
            answer = "9" if "digits" in request["messages"][-1]["content"] else "7"
            choices = [{"index": i, "message": {"content": f"\\boxed{{{answer}}}"}} for i in range(request["n"])]
            self._reply({"choices": choices[::-1]})

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        gen = OpenAIServerGenerator(f"http://127.0.0.1:{server.server_port}/v1", max_concurrency=2)
        assert gen.model == "served-model"
        ds = load_benchmark("aime25", data_files=FIXTURES / "aime25.jsonl")
        result = evaluate_benchmark(gen, ds, k=4, sampling=EvalSampling(max_new_tokens=32), verifier=verifier)
    finally:
        server.shutdown()
    assert result.avg_at_k == pytest.approx(50.0)  # "9" is right for problem 0, "7" wrong for problem 1
    assert len(seen) == 2
    assert {k: seen[0][k] for k in ("model", "n", "temperature", "top_p", "max_tokens")} == {
        "model": "served-model",
        "n": 4,
        "temperature": 0.4,
        "top_p": 1.0,
        "max_tokens": 32,
    }
    assert seen[0]["chat_template_kwargs"] == {"enable_thinking": False}


def test_vllm_backend_call_contract(monkeypatch):
    """vLLM is not installed here: a stand-in module checks how the offline engine is driven."""

    class FakeSamplingParams:
        def __init__(self, **kwargs):
            self.kwargs = kwargs

    class FakeLLM:
        def chat(self, messages, params, use_tqdm, chat_template_kwargs):
            self.args = (messages, params.kwargs, chat_template_kwargs)
            out = types.SimpleNamespace
            return [
                out(outputs=[out(text=f"{i}-{j}") for j in range(params.kwargs["n"])]) for i in range(len(messages))
            ]

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(SamplingParams=FakeSamplingParams))
    llm = FakeLLM()
    gen = VLLMGenerator(llm)
    out = gen([[{"role": "user", "content": "a"}], [{"role": "user", "content": "b"}]], 2, EvalSampling(seed=3))
    assert out == [["0-0", "0-1"], ["1-0", "1-1"]]
    assert llm.args[1] == {"n": 2, "temperature": 0.4, "top_p": 1.0, "max_tokens": 4096, "seed": 3}
    assert llm.args[2] == {"enable_thinking": False}


def test_vllm_backend_without_vllm_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(ImportError, match="asym_trl\\[vllm\\]"):
        VLLMGenerator("some/model")


def test_cli_eval_writes_results_table_and_samples(tiny_model_path, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["eval", "--model", tiny_model_path, "--backend", "transformers", "--benchmarks", "math500,aime25"]
    args += ["--data-dir", str(FIXTURES), "--k", "2", "--max-new-tokens", "4", "--output-dir", str(out)]
    assert cli_main([*args, "--label", "tiny"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["label"] == "tiny" and results["sampling"]["temperature"] == 0.4
    assert {name: r["k"] for name, r in results["benchmarks"].items()} == {"math500": 2, "aime25": 2}
    samples = [json.loads(line) for line in (out / "samples" / "aime25.jsonl").read_text().splitlines()]
    assert len(samples) == 4 and {"completion", "status", "reward", "solution"} <= set(samples[0])
    assert (out / "results.md").read_text().startswith("| Method | MATH-500 | AIME25 | Avg. |")
    capsys.readouterr()
    assert cli_main(["eval", "--table", str(out / "results.json"), str(out / "results.json")]) == 0
    assert capsys.readouterr().out.count("| tiny |") == 1  # same label: one row
    with pytest.raises(SystemExit):
        cli_main(["eval", "--backend", "server"])  # no --server-url


def test_cli_vllm_backend_builds_the_engine(monkeypatch, tmp_path):
    """`asym-trl eval --backend vllm` with a stand-in vllm module: engine options, sampling, results."""
    engines = []

    class FakeLLM:
        def __init__(self, model, **kwargs):
            engines.append((model, kwargs))

        def chat(self, messages, params, use_tqdm, chat_template_kwargs):
            out = types.SimpleNamespace
            return [out(outputs=[out(text="\\boxed{9}")] * params.kwargs["n"]) for _ in messages]

    class FakeSamplingParams:
        def __init__(self, **kwargs):
            self.kwargs = kwargs

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=FakeLLM, SamplingParams=FakeSamplingParams))
    monkeypatch.setattr("asym_trl.task.evaluation.hub_problem", lambda *a, **k: None)  # as if the Hub answered
    out = tmp_path / "run"
    args = [
        "eval",
        "--model",
        "Qwen/Qwen3-4B",
        "--benchmarks",
        "aime25",
        "--data-files",
        f"aime25={FIXTURES}/aime25.jsonl",
    ]
    assert cli_main([*args, "--tensor-parallel-size", "2", "--max-model-len", "5120", "--output-dir", str(out)]) == 0
    assert engines == [
        ("Qwen/Qwen3-4B", {"seed": 0, "tensor_parallel_size": 2, "gpu_memory_utilization": 0.9, "max_model_len": 5120})
    ]
    results = json.loads((out / "results.json").read_text())
    assert results["label"] == "Qwen3-4B" and results["benchmarks"]["aime25"]["k"] == 10
    assert results["benchmarks"]["aime25"]["avg_at_k"] == pytest.approx(50.0)  # gold 9 right, gold 1001 wrong
