"""Data loaders on local fixture files laid out like the Hub datasets, reasoning-gym tasks, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from asym_trl.task import data
from asym_trl.task.data import (
    BENCHMARKS,
    DEFAULT_INSTRUCTION,
    TRAIN_DATASETS,
    load_benchmark,
    load_train_dataset,
    make_prompt,
)
from asym_trl.task.rewards import MathVerifier, score_completions

FIXTURES = Path(__file__).parent / "fixtures"

# benchmark -> (fixture file, expected gold answers in the `solution` column)
BENCHMARK_FIXTURES = {
    "math500": ("math500.jsonl", ["$4$", "$\\frac{1}{4}$", "$(-1,1)$"]),
    "aime24": ("aime24.jsonl", ["$24$", "$9$"]),
    "aime25": ("aime25.jsonl", ["$9$", "$1001$"]),
    "amc23": ("amc23.jsonl", ["$21$", "$0.25$"]),
    "olympiadbench": ("olympiadbench.jsonl", ["$2, -2$", "$6$"]),
}


@pytest.fixture(scope="module")
def verifier():
    v = MathVerifier(timeout_s=30)
    yield v
    v.close()


def test_make_prompt():
    assert make_prompt("What is 1+1? ") == [{"role": "user", "content": f"What is 1+1?\n\n{DEFAULT_INSTRUCTION}"}]
    assert make_prompt("Q", instruction="") == [{"role": "user", "content": "Q"}]
    assert make_prompt("Q", instruction="Box it.", system_prompt="Be brief.") == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Q\n\nBox it."},
    ]
    assert "\\boxed{}" in DEFAULT_INSTRUCTION


@pytest.mark.parametrize("name", sorted(BENCHMARK_FIXTURES))
def test_benchmarks_from_local_copies(name, verifier):
    file_name, golds = BENCHMARK_FIXTURES[name]
    ds = load_benchmark(name, data_files=FIXTURES / file_name)
    assert ds.column_names == ["prompt", "problem", "solution"]
    assert ds["solution"] == golds
    assert ds[0]["prompt"][0]["role"] == "user" and ds[0]["prompt"][0]["content"].endswith(DEFAULT_INSTRUCTION)
    assert ds[0]["prompt"][0]["content"].startswith(ds[0]["problem"])
    # the gold column is judged by the reward: its own answer boxed is correct
    boxed = [f"\\boxed{{{gold.strip('$')}}}" for gold in ds["solution"]]
    assert score_completions(boxed, ds["solution"], verifier)[0] == [1.0] * len(ds)


def test_math_train_extracts_boxed_answer_from_worked_solution():
    ds = load_train_dataset("math", data_files=FIXTURES / "math_train.jsonl", instruction="Box it.")
    assert ds["solution"] == ["$7$", "$\\frac{3}{4}$", "$5$"]
    assert ds[1]["prompt"] == [{"role": "user", "content": "Simplify $\\frac{6}{8}$.\n\nBox it."}]


def test_registered_names_request_their_hub_ids(monkeypatch):
    """Without network the Hub path is exercised through a stand-in loader that records what was asked."""
    from datasets import load_dataset

    requested = []
    local = {
        "DigitalLearningGmbH/MATH-lighteval": "math_train.jsonl",
        **{BENCHMARKS[name].hub_id: file_name for name, (file_name, _) in BENCHMARK_FIXTURES.items()},
    }

    def fake_hub(source, split):
        requested.append((source.hub_id, source.config, split))
        return load_dataset("json", data_files=str(FIXTURES / local[source.hub_id]), split="train")

    monkeypatch.setattr(data, "_load_hub", fake_hub)
    assert len(load_train_dataset("math")) == 3
    for name in BENCHMARKS:
        load_benchmark(name)
    assert requested == [
        ("DigitalLearningGmbH/MATH-lighteval", "default", "train"),
        ("HuggingFaceH4/MATH-500", None, "test"),
        ("HuggingFaceH4/aime_2024", None, "train"),
        ("yentinglin/aime_2025", None, "train"),
        ("math-ai/amc23", None, "test"),
        ("math-ai/olympiadbench", None, "test"),
    ]
    assert list(TRAIN_DATASETS) == ["math"]


def test_local_file_with_column_mapping_json_and_parquet(tmp_path):
    ds = load_train_dataset(str(FIXTURES / "custom.jsonl"), columns={"problem": "q", "solution": "gold"})
    assert ds["solution"] == ["$6$", "$6$"] and ds["problem"][0] == "What is $2\\times 3$?"
    parquet = tmp_path / "custom.parquet"
    from datasets import load_dataset

    load_dataset("json", data_files=str(FIXTURES / "custom.jsonl"), split="train").to_parquet(str(parquet))
    from_parquet = load_benchmark(str(parquet), columns={"problem": "q", "solution": "gold"}, limit=1)
    assert from_parquet["solution"] == ["$6$"]
    # column names guessed when they are the usual ones
    assert load_benchmark(str(FIXTURES / "aime25.jsonl"))["solution"] == ["$9$", "$1001$"]


@pytest.mark.parametrize("task", ["gsm_symbolic", "basic_arithmetic", "simple_equations", "fraction_simplification"])
def test_reasoning_gym_tasks_offline(task, verifier):
    train = load_train_dataset(task, size=6, seed=3)
    test = load_train_dataset(task, split="test", size=6, seed=3)
    assert len(train) == 6 and train.column_names == ["prompt", "problem", "solution"]
    assert train["problem"] != test["problem"]  # the test split uses another seed
    assert load_train_dataset(task, size=6, seed=3)["problem"] == train["problem"]  # deterministic
    assert all(s.startswith("$") and s.endswith("$") for s in train["solution"])
    boxed = [f"\\boxed{{{s.strip('$')}}}" for s in train["solution"]]
    assert score_completions(boxed, train["solution"], verifier)[0] == [1.0] * 6  # golds parse and self-verify
    wrong = [f"\\boxed{{{s.strip('$')} + 1}}" for s in train["solution"]]
    assert score_completions(wrong, train["solution"], verifier)[0] == [0.0] * 6


def test_reasoning_gym_benchmark_is_the_test_split():
    bench = load_benchmark("gsm_symbolic", size=4, seed=3)
    assert bench["problem"] == load_train_dataset("gsm_symbolic", split="test", size=4, seed=3)["problem"]
    assert bench["problem"] != load_train_dataset("gsm_symbolic", size=4, seed=3)["problem"]


def test_any_reasoning_gym_task_by_prefix():
    assert len(load_train_dataset("reasoning_gym:chain_sum", size=3)) == 3


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown benchmark 'gsm9k'.*math500"):
        load_benchmark("gsm9k")
    with pytest.raises(ValueError, match="unknown training dataset 'nope'.*gsm_symbolic"):
        load_train_dataset("nope")
    with pytest.raises(ValueError, match="unknown reasoning-gym task 'no_such_task'"):
        load_train_dataset("reasoning_gym:no_such_task")
    with pytest.raises(ValueError, match="no problem column among \\['q', 'gold', 'extra'\\]"):
        load_benchmark(str(FIXTURES / "custom.jsonl"))
    with pytest.raises(ValueError, match="no solution column among"):
        load_benchmark(str(FIXTURES / "custom.jsonl"), columns={"problem": "q"})
    with pytest.raises(ValueError, match="column 'missing' \\(for 'problem'\\) not found"):
        load_benchmark(str(FIXTURES / "custom.jsonl"), columns={"problem": "missing", "solution": "gold"})
    with pytest.raises(ValueError, match="amc23: no problem column|column 'question'"):
        load_benchmark("amc23", data_files=FIXTURES / "aime25.jsonl")  # a local copy with the wrong layout
    with pytest.raises(ValueError, match="unknown keys \\['answer'\\]"):
        load_benchmark(str(FIXTURES / "custom.jsonl"), columns={"answer": "gold"})
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty.jsonl' is empty or unreadable"):
        load_benchmark(str(empty), columns={"problem": "q", "solution": "a"})
    no_rows = tmp_path / "no_rows.parquet"
    from datasets import Dataset

    Dataset.from_dict({"q": [], "gold": []}).to_parquet(str(no_rows))
    with pytest.raises(ValueError, match="no_rows.parquet' is empty or unreadable"):
        load_benchmark(str(no_rows), columns={"problem": "q", "solution": "gold"})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_benchmark(str(tmp_path / "missing.jsonl"))
    with pytest.raises(ValueError, match="unsupported data file"):
        load_benchmark("math500", data_files=tmp_path)
    with pytest.raises(ValueError, match="splits 'train' and 'test'"):
        load_train_dataset("gsm_symbolic", split="validation", size=2)
    with pytest.raises(ValueError, match="limit must be >= 1"):
        load_benchmark("aime25", data_files=FIXTURES / "aime25.jsonl", limit=0)
