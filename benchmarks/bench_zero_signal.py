"""Training phase of a step with the zero-signal skip vs without, and vs TRL's GRPOTrainer (issue 13).

A reward makes the first ``share`` of each generation batch's groups all-solved (advantage 0 for every rollout) and
the others half solved. For each share, three trainers (TRL's GRPOTrainer, AsymGRPOTrainer without and with
``skip_zero_signal``) score the same generation batch once; then each round times ``--steps`` optimizer steps of
the training phase (loss forward/backward over the ``gradient_accumulation_steps`` micro-batches, optimizer step),
trainers in ABBA order, and one generation (the rest of a whole step, reported beside it). Medians over rounds.
The optimizer step and each forward's fixed overhead are costs the skip cannot reduce, so the loss forward/backward
ratio is reported beside the training-phase one.
Targets: skip / no-skip <= (1 - share) x 1.1 at 50 % and 75 %, <= 1.02 at 0 %.

    python benchmarks/bench_zero_signal.py [--rounds 6] [--steps 3] [--hidden 128] [--tokens 32]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from trl import GRPOConfig, GRPOTrainer
from trl.trainer.utils import shuffle_sequence_dict, split_tensor_dict

from asym_trl import AsymGRPOConfig, AsymGRPOTrainer
from asym_trl.apps.tiny import build_tiny_model, cpu_run_kwargs, toy_sum_dataset

G, PER_DEVICE, ACCUM = 8, 16, 4  # 64 rollouts = 8 groups = 1 optimizer step of 4 micro-batches
SHARES = (0.0, 0.25, 0.5, 0.75)


def share_reward(share: float):
    n_groups = PER_DEVICE * ACCUM // G
    all_solved = round(share * n_groups)

    def reward(completions, **kwargs):
        return [float(i // G < all_solved or i % G < G // 2) for i in range(len(completions))]

    return reward


def build(kind: str, share: float, model_dir: str, out_dir: str, tokens: int):
    common = dict(
        **cpu_run_kwargs(),
        output_dir=out_dir,
        per_device_train_batch_size=PER_DEVICE,
        gradient_accumulation_steps=ACCUM,
        num_generations=G,
        max_completion_length=tokens,
        max_steps=1,
    )
    if kind == "trl":
        args, cls = GRPOConfig(**common), GRPOTrainer
    else:
        args = AsymGRPOConfig(**common, log_diagnostics=False, skip_zero_signal=kind == "skip")
        cls = AsymGRPOTrainer
    trainer = cls(model_dir, reward_funcs=share_reward(share), args=args, train_dataset=toy_sum_dataset(64))
    trainer.model.train()
    trainer.create_optimizer()
    trainer.current_gradient_accumulation_steps = ACCUM
    return trainer


def generate(trainer):
    """One generation batch (the same for every trainer: same seed, same weights), split into micro-batches as
    ``_prepare_inputs`` does (and, for AsymGRPO, arranged: the skip's regrouping is part of its cost)."""
    torch.manual_seed(0)
    rows = [row for row in toy_sum_dataset(PER_DEVICE * ACCUM // G) for _ in range(G)]
    start = time.perf_counter()
    batch = trainer._generate_and_score_completions(rows)
    micro_batches = split_tensor_dict(shuffle_sequence_dict(batch), ACCUM)
    if isinstance(trainer, AsymGRPOTrainer):
        micro_batches = trainer.arrange_micro_batches(micro_batches)
    return micro_batches, time.perf_counter() - start


def training_phase(trainer, micro_batches) -> tuple[float, float]:
    """(loss forward/backward, whole training phase) seconds of one optimizer step."""
    sync = trainer.accelerator.gradient_state
    start = time.perf_counter()
    for i, inputs in enumerate(micro_batches):
        sync._set_sync_gradients(i == len(micro_batches) - 1)  # as the Trainer's accumulation loop does
        trainer.accelerator.backward(trainer.compute_loss(trainer.model, inputs))
    loss_done = time.perf_counter()
    trainer.optimizer.step()
    trainer.optimizer.zero_grad()
    return loss_done - start, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--shares", type=float, nargs="+", default=SHARES)
    opts = parser.parse_args()
    torch.set_num_threads(1)
    kinds = ("trl", "noskip", "skip")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = str(
            build_tiny_model(f"{tmp}/model", hidden_size=opts.hidden, num_hidden_layers=4, num_attention_heads=4)
        )
        for share in opts.shares:
            trainers = {kind: build(kind, share, model_dir, f"{tmp}/{kind}", opts.tokens) for kind in kinds}
            batches = {kind: generate(trainer)[0] for kind, trainer in trainers.items()}
            train, gen = {k: [] for k in kinds}, {k: [] for k in kinds}
            ratios = {"skip": [], "loss": [], "trl": []}
            for round_ in range(opts.rounds):
                order = kinds if round_ % 2 == 0 else kinds[::-1]  # ABBA
                this = {}
                for kind in order:
                    times = [training_phase(trainers[kind], batches[kind]) for _ in range(opts.steps)]
                    this[kind] = tuple(statistics.median(t) for t in zip(*times, strict=True))
                    gen[kind].append(generate(trainers[kind])[1])
                    train[kind].append(this[kind][1])
                ratios["skip"].append(this["skip"][1] / this["noskip"][1])
                ratios["loss"].append(this["skip"][0] / this["noskip"][0])
                ratios["trl"].append(this["noskip"][1] / this["trl"][1])
            med = {k: statistics.median(v) for k, v in train.items()}
            whole = {k: med[k] + statistics.median(gen[k]) for k in kinds}
            target = 1.02 if share == 0 else (1 - share) * 1.1
            rows.append((share, med, whole, {k: statistics.median(v) for k, v in ratios.items()}, target, ratios))
    print(f"hidden={opts.hidden}, completion tokens={opts.tokens}, G={G}, {PER_DEVICE}x{ACCUM} rollouts per step, ")
    print(f"{opts.rounds} rounds (ABBA) x {opts.steps} steps; times in ms (training phase | whole step)")
    print("skip/no-skip: training phase (target) and loss forward/backward only (the optimizer step is not skipped)")
    head = "TRL         | no skip     | skip        | skip/no-skip | target       | loss only | no-skip/TRL"
    print(f"share | {head} | rounds")
    for share, med, whole, ratio, target, per_round in rows:
        cells = " | ".join(f"{med[k] * 1e3:5.0f} {whole[k] * 1e3:5.0f}" for k in kinds)
        ok = "ok" if ratio["skip"] <= target else "MISS"
        rounds = ", ".join(f"{r:.2f}" for r in per_round["skip"])
        print(
            f"{share:5.0%} | {cells} | {ratio['skip']:12.3f} | <={target:.3f} {ok:4} | {ratio['loss']:9.3f} | "
            f"{ratio['trl']:11.3f} | {rounds}"
        )


if __name__ == "__main__":
    main()
