"""CPU evaluation throughput of the transformers backend on the tiny model, against bare ``model.generate``.

    PYTHONPATH=. python benchmarks/bench_eval.py [--problems 16] [--k 5] [--max-new-tokens 64]

Runs the full Avg@k harness (chat template, batched sampling at T=0.4, scoring with the accuracy reward) on
reasoning-gym problems and, in the same run, a bare ``model.generate`` loop producing the same number of tokens with
the same batches; prints completions/s, generated tokens/s and the harness/bare ratio for two batch sizes.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch


def bare_generate(model, tokenizer, prompts, k, max_new_tokens, batch_size) -> int:
    """Reference: template + tokenize + generate + decode, nothing else; returns the number of generated tokens."""
    tokens = 0
    for start in range(0, len(prompts), batch_size):
        texts = [
            tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
            for p in prompts[start : start + batch_size]
        ]
        inputs = tokenizer(texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(
                **inputs,
                do_sample=True,
                temperature=0.4,
                top_p=1.0,
                top_k=0,
                num_return_sequences=k,
                max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
            )
        new = out[:, inputs["input_ids"].shape[1] :]
        tokenizer.batch_decode(new, skip_special_tokens=True)
        tokens += int((new != tokenizer.pad_token_id).sum())
    return tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=16)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats; the best time of each is kept")
    opts = parser.parse_args()

    from asym_trl.apps.tiny import build_tiny_model
    from asym_trl.generation.backends import EvalSampling, TransformersGenerator
    from asym_trl.task.data import load_train_dataset
    from asym_trl.task.evaluation import evaluate_benchmark
    from asym_trl.task.rewards import get_verifier

    torch.set_num_threads(1)
    model_dir = build_tiny_model(tempfile.mkdtemp(prefix="bench-eval-"))
    dataset = load_train_dataset("basic_arithmetic", split="test", size=opts.problems)
    sampling = EvalSampling(temperature=0.4, max_new_tokens=opts.max_new_tokens)
    get_verifier().check("$1$", "1")  # start the reward worker outside the timing
    print(f"tiny Qwen3, {opts.problems} problems x k={opts.k}, up to {opts.max_new_tokens} new tokens, 1 torch thread")
    print(
        f"{'batch':>5} | {'harness compl/s':>15} | {'harness tok/s':>13} | {'bare compl/s':>12} | ratio (harness/bare)"
    )
    for batch_size in (1, 8):
        generate = TransformersGenerator(str(model_dir), batch_size=batch_size)
        n = opts.problems * opts.k
        harness_s = bare_s = float("inf")
        for _ in range(opts.repeats):  # interleaved, best of: the machine is shared, noise only slows things down
            start = time.perf_counter()
            result = evaluate_benchmark(generate, dataset, k=opts.k, sampling=sampling, name="bench")
            harness_s = min(harness_s, time.perf_counter() - start)
            start = time.perf_counter()
            bare_generate(
                generate.model, generate.tokenizer, dataset["prompt"], opts.k, opts.max_new_tokens, batch_size
            )
            bare_s = min(bare_s, time.perf_counter() - start)
        tokens = sum(len(generate.tokenizer(s["completion"])["input_ids"]) for s in result.samples)
        harness = f"{n / harness_s:>15.1f} | {tokens / harness_s:>13.0f}"
        print(f"{batch_size:>5} | {harness} | {n / bare_s:>12.1f} | {bare_s / harness_s:.2f}")


if __name__ == "__main__":
    main()
