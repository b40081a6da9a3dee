"""In-training validation: best-step selection, the callback on crafted scores in a real run, a real greedy pass."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from asym_trl import AsymGRPOTrainer
from asym_trl.apps.tiny import toy_sum_dataset, toy_sum_reward
from asym_trl.diagnostics.validation import ValidationCallback, select_best
from asym_trl.task.data import load_benchmark

FIXTURES = Path(__file__).parent / "fixtures"


def test_select_best_on_a_crafted_sequence():
    history = [(10, 30.0), (20, 52.0), (30, 45.0), (40, 52.0), (50, 20.0), (60, math.nan)]
    assert select_best(history) == (20, 52.0)  # highest; the earlier of two ties
    assert select_best(history[:1]) == (10, 30.0)
    assert select_best([(10, math.nan)]) is None
    assert select_best([]) is None
    assert select_best([(10, 0.0), (20, 0.0), (30, 0.1)]) == (30, 0.1)


def _fixture_benchmarks():
    return {
        "math500": load_benchmark("math500", data_files=FIXTURES / "math500.jsonl", instruction=""),
        "aime25": load_benchmark("aime25", data_files=FIXTURES / "aime25.jsonl", instruction=""),
    }


def _trainer(tiny_model_path, cpu_config, **overrides):
    return AsymGRPOTrainer(  # trained on the toy task (its reward varies, so weights move); validated on math
        model=tiny_model_path,
        reward_funcs=toy_sum_reward,
        args=cpu_config(**overrides),
        train_dataset=toy_sum_dataset(64),
    )


@pytest.mark.slow
def test_callback_saves_the_checkpoint_best_on_math500(tiny_model_path, cpu_config, monkeypatch):
    """Crafted validation scores over a real training run: the saved model is the one of the best MATH-500 step,
    not of the best average, and every score reaches the trainer's logs."""
    trainer = _trainer(tiny_model_path, cpu_config, max_steps=8, learning_rate=5e-2)
    callback = ValidationCallback(trainer, _fixture_benchmarks(), eval_steps=2, select_on="math500")
    crafted = {2: (40.0, 0.0), 4: (70.0, 0.0), 6: (60.0, 100.0), 8: (70.0, 50.0)}  # step -> (math500, aime25)
    snapshots = {}

    def fake_evaluate():
        step = trainer.state.global_step
        snapshots[step] = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
        math500, aime25 = crafted[step]
        return {"math500": math500, "aime25": aime25}

    monkeypatch.setattr(callback, "_evaluate_benchmarks", fake_evaluate)
    trainer.add_callback(callback)
    trainer.train()

    assert sorted(snapshots) == [2, 4, 6, 8]
    assert callback.best == (4, 70.0)  # step 8 ties on MATH-500 (earliest wins); step 6 has the best average
    best_dir = Path(trainer.args.output_dir) / "best"
    summary = json.loads((best_dir / "best.json").read_text())
    assert (summary["step"], summary["score"], summary["select_on"]) == (4, 70.0, "val/math500")
    assert (trainer.state.best_global_step, trainer.state.best_metric) == (4, 70.0)
    saved = AutoModelForCausalLM.from_pretrained(best_dir).state_dict()
    step4, step8 = snapshots[4], snapshots[8]
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(step4[name], step8[name])  # training moved the weights after step 4
    for key, value in saved.items():
        torch.testing.assert_close(value, step4[key])

    logged = [h for h in trainer.state.log_history if "val/math500" in h]
    assert [(h["step"], h["val/math500"], h["val/aime25"], h["val/avg"]) for h in logged] == [
        (2, 40.0, 0.0, 20.0),
        (4, 70.0, 0.0, 35.0),
        (6, 60.0, 100.0, 80.0),
        (8, 70.0, 50.0, 60.0),
    ]
    lines = (Path(trainer.args.output_dir) / "validation.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [2, 4, 6, 8]


def test_callback_real_greedy_pass(tiny_model_path, cpu_config):
    """The real evaluation: greedy generation with the live model, scored, logged, best saved."""
    trainer = _trainer(tiny_model_path, cpu_config, max_steps=1, max_completion_length=4)
    benchmarks = _fixture_benchmarks()
    callback = ValidationCallback(trainer, benchmarks, eval_steps=1)
    trainer.add_callback(callback)
    trainer.train()
    assert len(callback.history) == 1
    record = callback.history[0]
    assert set(record) == {"step", "val/math500", "val/aime25", "val/avg"}
    # a 4-token greedy completion from a random tiny model holds no boxed answer: accuracy 0, and it must be so
    assert record["val/math500"] == 0.0 and record["val/aime25"] == 0.0
    assert (Path(trainer.args.output_dir) / "best" / "best.json").exists()
    assert trainer.model.training  # generation put the model back in training mode


def test_resumed_run_keeps_its_best(tiny_model_path, cpu_config, monkeypatch):
    """After a resume the best comes back from the trainer state: a worse later model does not replace best/."""
    trainer = _trainer(tiny_model_path, cpu_config, max_steps=2)
    callback = ValidationCallback(trainer, _fixture_benchmarks(), eval_steps=2)
    monkeypatch.setattr(callback, "_evaluate_benchmarks", lambda: {"math500": 50.0, "aime25": 0.0})
    state = trainer.state
    state.best_global_step, state.best_metric = 10, 80.0
    state.best_model_checkpoint = str(Path(trainer.args.output_dir) / "best")
    callback.on_train_begin(trainer.args, state, trainer.control)
    assert callback.best == (10, 80.0)
    state.global_step = 12
    callback.on_step_end(trainer.args, state, trainer.control)
    assert callback.best == (10, 80.0) and state.best_metric == 80.0
    assert not (Path(trainer.args.output_dir) / "best").exists()  # nothing saved over it
    monkeypatch.setattr(callback, "_evaluate_benchmarks", lambda: {"math500": 90.0, "aime25": 0.0})
    state.global_step = 14
    callback.on_step_end(trainer.args, state, trainer.control)
    assert callback.best == (14, 90.0) and (Path(trainer.args.output_dir) / "best" / "best.json").exists()


def test_callback_argument_errors(tiny_model_path, cpu_config):
    trainer = _trainer(tiny_model_path, cpu_config)
    benchmarks = _fixture_benchmarks()
    with pytest.raises(ValueError, match="select_on='olympiadbench' is not one of"):
        ValidationCallback(trainer, benchmarks, select_on="olympiadbench")
    with pytest.raises(ValueError, match="at least one"):
        ValidationCallback(trainer, {})
    with pytest.raises(ValueError, match="eval_steps must be >= 1"):
        ValidationCallback(trainer, benchmarks, eval_steps=0)


# Completions of the fixture problems, keyed by each problem's text: 2 of 3 right on MATH-500, 1 of 2 on AIME25.
ORACLE = {
    "Compute $\\sqrt{8}\\cdot\\sqrt{2}$.": "so \\boxed{4}",
    "Write $0.25$ as a fraction.": "\\boxed{\\frac{1}{4}}",
    "Find the interval where $x^2<1$.": "\\boxed{7}",
    "Find the sum of the digits of $2025$.": "\\boxed{9}",
    "Compute $7\\cdot 11\\cdot 13$.": "no idea",
}
SAMPLING_SETTINGS = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repetition_penalty",
    "max_completion_length",
    "logprobs",
    "structured_outputs_regex",
    "generation_kwargs",
)


class StandInVLLMGeneration:
    """Stands in for TRL's ``VLLMGeneration`` (same ``generate``/``sync_weights`` interface and sampling attributes,
    set to a run's sampling settings): records calls, answers each rendered prompt from ``ORACLE``."""

    def __init__(self, tokenizer, rendered: dict[tuple, str]):
        self.tokenizer, self.rendered = tokenizer, rendered  # prompt token ids -> problem text
        self.temperature, self.top_p, self.top_k, self.min_p, self.repetition_penalty = 1.0, 0.95, 20, 0.05, 1.1
        self.max_completion_length, self.logprobs, self.structured_outputs_regex = 8, 0, "[0-9]+"
        self.generation_kwargs = {"stop": ["\\n"]}
        self.events = []

    def sync_weights(self):
        self.events.append(("sync",))

    def generate(self, prompts, images, num_generations, profiler=None):
        settings = {key: getattr(self, key) for key in SAMPLING_SETTINGS}
        self.events.append(("generate", [self.rendered[tuple(p)] for p in prompts], num_generations, images, settings))
        answers = [ORACLE[self.rendered[tuple(p)]] + self.tokenizer.eos_token for p in prompts]
        completion_ids = [self.tokenizer(a, add_special_tokens=False)["input_ids"] for a in answers]
        return prompts, completion_ids, None, None


def test_validation_generates_through_the_runs_vllm(tiny_model_path, cpu_config, monkeypatch):
    """With ``use_vllm`` validation syncs the current weights once, then generates greedily through
    ``trainer.vllm_generation`` with the chat-templated prompts, restores the rollout settings, and logs the accuracies
    the transformers path logs on the same completions."""
    from transformers import AutoTokenizer

    from asym_trl.diagnostics import validation

    trainer = _trainer(tiny_model_path, cpu_config, max_completion_length=6)
    benchmarks = _fixture_benchmarks()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    rendered = {}
    for dataset in benchmarks.values():
        for prompt in dataset["prompt"]:  # the template's own tokenization, non-thinking (the validation default)
            ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, enable_thinking=False)
            ids = ids["input_ids"] if hasattr(ids, "keys") else ids
            rendered[tuple(ids)] = prompt[-1]["content"]
    assert len(rendered) == 5

    generation = StandInVLLMGeneration(tokenizer, rendered)
    rollout_settings = {key: getattr(generation, key) for key in SAMPLING_SETTINGS}
    trainer.use_vllm, trainer.vllm_generation, trainer._last_loaded_step = True, generation, 0
    callback = ValidationCallback(trainer, benchmarks, eval_steps=1, save_best=False)
    trainer.state.global_step = 1  # after the first optimizer step; the engine still has the step-0 weights
    callback.on_step_end(trainer.args, trainer.state, trainer.control)

    greedy = {**rollout_settings, "temperature": 0.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0}
    greedy |= {"repetition_penalty": 1.0, "max_completion_length": 6, "logprobs": None}
    greedy |= {"structured_outputs_regex": None, "generation_kwargs": {}}
    # the sync first, once for both benchmarks; then one greedy call per benchmark with all its problems
    assert generation.events == [
        ("sync",),
        ("generate", list(ORACLE)[:3], 1, None, greedy),
        ("generate", list(ORACLE)[3:], 1, None, greedy),
    ]
    assert trainer._last_loaded_step == 1  # the rollout of the next step does not push the same weights again
    assert {key: getattr(generation, key) for key in SAMPLING_SETTINGS} == rollout_settings  # put back
    expected = {"step": 1, "val/math500": 200 / 3, "val/aime25": 50.0, "val/avg": (200 / 3 + 50) / 2}
    assert callback.history == [pytest.approx(expected)]
    assert trainer._metrics["train"]["val/math500"] == [pytest.approx(200 / 3)]

    # Already synced at this step: no second push. An error in generation still restores the rollout settings.
    generation.events.clear()
    monkeypatch.setattr(generation, "generate", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("server down")))
    with pytest.raises(RuntimeError, match="server down"):
        callback.on_step_end(trainer.args, trainer.state, trainer.control)
    assert generation.events == []
    assert {key: getattr(generation, key) for key in SAMPLING_SETTINGS} == rollout_settings

    # The transformers path on the same completions logs the same numbers.
    class Oracle:
        def __init__(self, model, tokenizer, **kwargs):
            pass

        def __call__(self, prompts, n, sampling, desc=""):
            assert sampling.temperature == 0 and sampling.max_new_tokens == 6
            return [[ORACLE[p[-1]["content"]]] * n for p in prompts]

    monkeypatch.setattr(validation, "TransformersGenerator", Oracle)
    trainer.use_vllm = False
    plain = ValidationCallback(trainer, benchmarks, eval_steps=1, save_best=False)
    plain.on_step_end(trainer.args, trainer.state, trainer.control)
    assert plain.history == callback.history


DISTRIBUTED_SCRIPT = """
import json, os, sys
from pathlib import Path
from asym_trl import AsymGRPOConfig, AsymGRPOTrainer
from asym_trl.diagnostics import validation
from asym_trl.task.data import load_benchmark
from asym_trl.apps.tiny import toy_sum_dataset, toy_sum_reward

out_dir, model_dir, bench_file, backend = sys.argv[1:5]
world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
RIGHT = {"p0": "0", "p1": "1", "p3": "3"}  # of five problems p0..p4 (gold = the digit): 60% when counted right
seen = []


class Oracle:
    def __init__(self, model, tokenizer, **kwargs):
        pass

    def __call__(self, prompts, n, sampling, desc=""):
        seen.append([p[-1]["content"] for p in prompts])
        return [["\\\\boxed{" + RIGHT.get(p[-1]["content"], "9") + "}"] * n for p in prompts]


validation.TransformersGenerator = Oracle
args = AsymGRPOConfig(
    output_dir=str(Path(out_dir) / "run"), use_cpu=True, bf16=False, gradient_checkpointing=False,
    per_device_train_batch_size=8 // world, num_generations=4, max_completion_length=4, max_steps=2,
    logging_steps=1, save_strategy="no", report_to="none", seed=0,
)
trainer = AsymGRPOTrainer(model=model_dir, reward_funcs=toy_sum_reward, args=args, train_dataset=toy_sum_dataset(32))
bench = load_benchmark(bench_file, columns={"problem": "q", "solution": "a"}, instruction="")
callback = validation.ValidationCallback(trainer, {"math500": bench}, eval_steps=2)
if backend == "transformers":
    trainer.add_callback(callback)
    trainer.train()
    logged = [h["val/math500"] for h in trainer.state.log_history if "val/math500" in h]
else:  # TRL's own server-mode VLLMGeneration.generate (gather, one request, broadcast, slice) with a stand-in client
    import re
    from trl.generation.vllm_generation import VLLMGeneration

    tok, synced = trainer.processing_class, []

    class Client:
        def generate(self, prompts, features=None, **sampling):
            problems = [re.search(r"p\\d", tok.decode(ids)).group() for ids in prompts]
            seen.append({"problems": problems, **{k: sampling[k] for k in ("n", "temperature", "max_tokens")}})
            texts = ["\\\\boxed{" + RIGHT.get(p, "9") + "}" + tok.eos_token for p in problems]
            ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
            return {"prompt_ids": prompts, "completion_ids": ids, "logprobs": None, "logprob_token_ids": None}

    gen = object.__new__(VLLMGeneration)
    gen.accelerator, gen.mode, gen.vllm_client = trainer.accelerator, "server", Client() if rank == 0 else None
    gen.temperature, gen.top_p, gen.top_k, gen.min_p, gen.repetition_penalty = 1.0, 1.0, 0, 0.0, 1.0
    gen.max_completion_length, gen.logprobs, gen.structured_outputs_regex, gen.generation_kwargs = 4, 0, None, {}
    gen.enable_sleep_mode, gen.sync_weights = False, lambda: synced.append(trainer.state.global_step)
    trainer.use_vllm, trainer.vllm_generation, trainer._last_loaded_step = True, gen, 1
    trainer.state.global_step = 2  # after step 2; the engine holds the step-1 weights
    callback.on_step_end(args, trainer.state, trainer.control)
    logged = trainer._metrics["train"]["val/math500"]
    seen = {"requests": seen, "synced": synced}
record = {"world": world, "history": callback.history, "seen": seen, "logged": logged}
(Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(record))
"""


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["transformers", "vllm"])
def test_two_processes_share_the_problems_and_log_global_accuracy(tiny_model_path, tmp_path, backend):
    """Under torchrun (gloo), each process evaluates an equal share (5 problems -> 3 + 3 with one padding row that
    is not counted) and every process logs the same global accuracy. With vLLM (server mode) every process syncs
    and the main process sends both shares in one greedy request."""
    import os
    import subprocess
    import sys

    bench = tmp_path / "bench.jsonl"
    bench.write_text("".join(json.dumps({"q": f"p{i}", "a": str(i)}) + "\n" for i in range(5)))
    script = tmp_path / "run_validation.py"
    script.write_text(DISTRIBUTED_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    proc = subprocess.run(
        [*cmd, str(script), str(tmp_path), tiny_model_path, str(bench), backend],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world"] for r in ranks] == [2, 2]
    if backend == "transformers":
        assert ranks[0]["seen"] == [["p0", "p2", "p4"]] and ranks[1]["seen"] == [["p1", "p3", "p0"]]  # p0: padding
    else:
        request = {"problems": ["p0", "p2", "p4", "p1", "p3", "p0"], "n": 1, "temperature": 0.0, "max_tokens": 4}
        assert ranks[0]["seen"] == {"requests": [request], "synced": [2]}
        assert ranks[1]["seen"] == {"requests": [], "synced": [2]}
    for r in ranks:
        assert r["history"] == [{"step": 2, "val/math500": 60.0, "val/avg": 60.0}]
        assert r["logged"] == [60.0]
    assert (tmp_path / "run" / "best" / "best.json").exists()
