"""AsymAsyncGRPOTrainer without a server: TRL's rollout loop scores groups with the registry's advantages, zero-signal
groups never reach the queue, the CPU tree attention equals a plain forward, and the trainer (TRL's async training
loop on CPU, fed by a fake rollout worker) never trains a sample older than max_staleness."""

from __future__ import annotations

import asyncio
import queue

import pytest
import torch
from trl.experimental.async_grpo.async_rollout_worker import RolloutGroup, RolloutSample, TrainingSequence

from asym_trl import ADVANTAGE_ESTIMATORS, compute_advantages
from asym_trl.apps.tiny import async_tokenizer, cpu_run_kwargs, toy_sum_dataset, toy_sum_reward
from asym_trl.async_trainer import (
    AsymAsyncGRPOConfig,
    AsymAsyncGRPOTrainer,
    AsymRolloutLoop,
    GroupScorer,
)
from asym_trl.method.adaptive import BetasFile
from asym_trl.method.advantages import agrae_advantages

G = 4
# Groups of rewards (None: the reward function could not score the rollout): mixed, all-/none-solved, unscorable.
GROUPS = [
    [1.0, 0.0, 0.0, 1.0],
    [1.0, 1.0, 1.0, 0.0],
    [0.0, 0.0, 0.0, 1.0],
    [1.0, 1.0, 1.0, 1.0],
    [0.0, 0.0, 0.0, 0.0],
    [1.0, None, 0.0, 0.0],
    [None, None, None, None],
]


def text_reward(completions, **kwargs):
    """The reward written in the completion: 'r=0.5' -> 0.5, 'r=None' -> None (module level: picklable)."""
    values = [c[-1]["content"].removeprefix("r=") for c in completions]
    return [None if v == "None" else float(v) for v in values]


def format_reward(completions, **kwargs):
    return [0.5] * len(completions)


def make_config(tmp_path, **overrides) -> AsymAsyncGRPOConfig:
    return AsymAsyncGRPOConfig(**cpu_run_kwargs(output_dir=str(tmp_path / "out"), num_generations=G, **overrides))


def make_loop(args, tokenizer, reward_funcs=(text_reward,)) -> AsymRolloutLoop:
    """TRL's rollout loop as the spawned child builds it (here in process, without a server)."""
    return AsymRolloutLoop(
        asym_scorer=GroupScorer.from_config(args),
        model_name="tiny",
        dataset=toy_sum_dataset(4),
        reward_funcs=list(reward_funcs),
        processing_class=tokenizer,
        eos_token_ids=[tokenizer.eos_token_id],
        rollout_buffer=queue.Queue(),
        model_version_value=None,
        heartbeat_value=None,
        failed_event=None,
        exception_info_queue=queue.Queue(),
        metrics_queue=queue.Queue(),
        num_generations=G,
    )


def make_group(rewards, group_id=0, version=0) -> RolloutGroup:
    completions = [[{"role": "assistant", "content": f"r={r}"}] for r in rewards]
    rows = [[TrainingSequence([1, 2, 3 + i], [0, 1, 1], [0.0, -1.0, -1.0], f"c{i}")] for i in range(len(rewards))]
    return RolloutGroup(
        prompts=[[{"role": "user", "content": "q"}]] * len(rewards),
        reward_kwargs={},
        completions=completions,
        completions_ids=[[3 + i] for i in range(len(rewards))],
        completions_sequences=rows,
        tool_call_counts=[0] * len(rewards),
        tool_failure_counts=[0] * len(rewards),
        model_version=version,
        group_id=group_id,
        env_rewards=[None] * len(rewards),
        rollout_rewards=[None] * len(rewards),
    )


def score(loop, rewards):
    return asyncio.run(loop._score_group(make_group(rewards)))


@pytest.fixture(scope="module")
def tokenizer(tiny_model_path):
    return async_tokenizer(tiny_model_path)


def _estimator_kwargs(name):
    return {"pass_at_k": 2} if name == "pass_at_k" else {}


@pytest.mark.parametrize("name", sorted(ADVANTAGE_ESTIMATORS))
def test_advantages_equal_the_registry_for_every_estimator(name, tokenizer, tmp_path):
    args = make_config(tmp_path, advantage_estimator=name, drop_zero_signal=False, **_estimator_kwargs(name))
    loop = make_loop(args, tokenizer)
    recent = []  # A-GRAE's batch: the groups of one optimizer step, this one included (scorer.batch_groups)
    for rewards in GROUPS:
        samples = score(loop, rewards)
        values = torch.tensor([float("nan") if r is None else r for r in rewards])
        expected = compute_advantages(values, G, name, **args.estimator_params)
        if name == "a_grae":
            scored = [r for r in rewards if r is not None]
            recent += [sum(scored) / len(scored)] if len(scored) >= 2 else []
            recent = recent[-loop.scorer.batch_groups :]
            expected = agrae_advantages(values.view(1, -1), batch_accuracy=sum(recent) / len(recent)).view(-1)
        assert [s.advantage for s in samples] == pytest.approx(expected.tolist(), abs=0, rel=1e-6), rewards
        assert [s.metrics["reward"] for s in samples] == pytest.approx(
            [float("nan") if r is None else r for r in rewards], nan_ok=True
        )  # TRL's own metrics are left as they were


def test_a_grae_batch_is_the_last_optimizer_steps_groups(tokenizer, tmp_path):
    args = make_config(tmp_path, advantage_estimator="a_grae", per_device_train_batch_size=12)
    loop = make_loop(args, tokenizer)
    assert loop.scorer.batch_groups == 3  # 12 rollouts a step / G 4
    for rewards in ([1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0], [0.0, 1.0, 1.0, 1.0]):
        score(loop, rewards)
    assert list(loop.recent_accuracy) == [0.75, 0.5, 0.75]  # the first group left the window


def test_adaptive_beta_scores_with_the_betas_the_trainer_publishes(tokenizer, tmp_path):
    args = make_config(tmp_path, advantage_estimator="adaptive_beta", drop_zero_signal=False)
    loop = make_loop(args, tokenizer)
    rewards = [1.0, 0.0, 0.0, 0.0]
    tensor = torch.tensor(rewards)
    assert [s.advantage for s in score(loop, rewards)] == pytest.approx(
        compute_advantages(tensor, G, "asym", beta_pos=0.9, beta_neg=0.4).tolist()  # nothing published: the start
    )
    BetasFile(loop.scorer.betas_file).write({"beta_pos": 0.3, "beta_neg": 1.2})
    assert [s.advantage for s in score(loop, rewards)] == pytest.approx(
        compute_advantages(tensor, G, "asym", beta_pos=0.3, beta_neg=1.2).tolist()
    )


@pytest.mark.parametrize("threshold", [0.5, 0.8])
def test_success_threshold_and_partial_credit(threshold, tokenizer, tmp_path):
    args = make_config(tmp_path, success_threshold=threshold, drop_zero_signal=False)
    loop = make_loop(args, tokenizer)
    rewards = [0.7, 0.2, 0.5, 1.0]
    expected = compute_advantages(torch.tensor(rewards), G, "asym", **args.estimator_params)
    assert [s.advantage for s in score(loop, rewards)] == pytest.approx(expected.tolist(), rel=1e-6)


def test_non_binary_rewards_without_a_rule_stop(tokenizer, tmp_path):
    loop = make_loop(make_config(tmp_path), tokenizer)
    with pytest.raises(ValueError, match=r"needs binary successes.*values \{0.2, 0.7, 1\}"):
        score(loop, [0.7, 0.2, 0.7, 1.0])


def test_success_reward_func_decides_with_several_rewards(tokenizer, tmp_path):
    with pytest.raises(ValueError, match="2 reward functions: set success_reward_func"):
        AsymAsyncGRPOTrainer("unused", [text_reward, format_reward], args=make_config(tmp_path))
    args = make_config(tmp_path, success_reward_func="text_reward", drop_zero_signal=False)
    loop = make_loop(args, tokenizer, reward_funcs=(text_reward, format_reward))
    rewards = [1.0, 0.0, 0.0, 0.0]  # the format bonus (0.5 each) must not count
    expected = compute_advantages(torch.tensor(rewards), G, "asym", **args.estimator_params)
    assert [s.advantage for s in score(loop, rewards)] == pytest.approx(expected.tolist(), rel=1e-6)


def test_zero_signal_groups_never_reach_the_queue_and_their_share_is_logged(tokenizer, tmp_path):
    loop = make_loop(make_config(tmp_path), tokenizer)
    kept = {str(rewards): len(score(loop, rewards)) for rewards in GROUPS}
    # asym (beta > 0): all-solved, none-solved and unscorable groups have every advantage 0
    assert kept == {str(r): 0 if r in (GROUPS[3], GROUPS[4], GROUPS[6]) else G for r in GROUPS}
    pushed = []
    while not loop._metrics_queue.empty():
        pushed.append(loop._metrics_queue.get())
    shares = [m["groups/zero_signal"] for m in pushed if "groups/zero_signal" in m]
    assert shares == [(0.0, 1.0), (0.0, 1.0), (0.0, 1.0), (1.0, 1.0), (1.0, 1.0), (0.0, 1.0), (1.0, 1.0)]
    all_solved = [m["groups/all_solved"] for m in pushed if "groups/all_solved" in m]
    assert all_solved[3] == (1.0, 1.0) and all_solved[6] == (0.0, 0.0)  # the unscorable group is not counted
    hist = [m["groups/p_2of4"] for m in pushed if "groups/p_2of4" in m]
    assert hist[0] == (1.0, 1.0) and hist[1] == (0.0, 1.0)
    correct = [m["advantages/correct_mean"] for m in pushed if "advantages/correct_mean" in m]
    assert correct[0][1] == 2.0 and correct[0][0] == pytest.approx(2 * 1.0)  # p = 1/2: ((1-p)/p)^0.9 = 1


def test_reinforce_keeps_degenerate_groups(tokenizer, tmp_path):
    """REINFORCE gives +-1 in all-solved / none-solved groups: they carry signal and are kept."""
    loop = make_loop(make_config(tmp_path, advantage_estimator="reinforce"), tokenizer)
    assert [s.advantage for s in score(loop, GROUPS[3])] == [1.0] * G
    assert score(loop, GROUPS[6]) == []  # nothing scorable: dropped


def test_config_checks(tmp_path):
    with pytest.raises(ValueError, match="scale_rewards='batch' does not apply"):
        make_config(tmp_path, advantage_estimator="grpo", scale_rewards="batch")
    with pytest.raises(ValueError, match="beta_pos=0.9 conflicts with advantage_estimator='grpo'"):
        make_config(tmp_path, advantage_estimator="grpo", beta_pos=0.9)
    with pytest.raises(ValueError, match="pass_at_k=5 must satisfy"):
        make_config(tmp_path, advantage_estimator="pass_at_k")
    with pytest.raises(ValueError, match="vllm_weight_sync='rdma'"):
        make_config(tmp_path, vllm_weight_sync="rdma")
    with pytest.raises(TypeError, match="needs an AsyncGRPOConfig, got dict"):
        AsymAsyncGRPOTrainer("unused", text_reward, args={})


def test_args_none_is_tls_default_and_a_trl_config_is_promoted(tiny_model_path, tmp_path):
    """One line changes for a TRL user: args=None behaves as TRL's (here on CPU: its default config wants bf16, and
    both say so alike), and TRL's AsyncGRPOConfig is promoted with the paper's defaults (one warning line) and
    trains, on the fake rollout worker."""
    from trl.experimental.async_grpo import AsyncGRPOConfig, AsyncGRPOTrainer

    errors = []
    for trainer_cls in (AsyncGRPOTrainer, AsymAsyncGRPOTrainer):
        with pytest.raises(ValueError) as error:
            trainer_cls("org/tiny", text_reward, args=None)
        errors.append(str(error.value))
    assert errors[0] == errors[1] and "bf16" in errors[0]
    args = AsyncGRPOConfig(
        **cpu_run_kwargs(output_dir=str(tmp_path / "out"), num_generations=G),
        max_steps=2, per_device_train_batch_size=4, token_budget=0,
    )  # fmt: skip
    worker = LaggingWorker(async_tokenizer(tiny_model_path), max_lag=0)
    with pytest.warns(UserWarning, match="promoted to AsymAsyncGRPOConfig"):
        trainer = fake_worker_trainer(tiny_model_path, args, worker)
    assert isinstance(trainer.args, AsymAsyncGRPOConfig) and trainer.scorer.estimator == "asym"
    assert trainer.args.vllm_weight_sync == "nccl" and trainer.args.max_steps == 2  # TRL's values and our defaults
    trainer.train()
    assert trainer.state.global_step == 2


# ------------------------------------------------------------------------------------- the CPU tree attention
def test_sdpa_tree_attention_equals_a_plain_forward(tiny_model_path):
    """Three samples sharing a prompt, packed by TRL's TreeRow into one trie row: the log-probs of every trained
    token under the packed SDPA attention equal those of each sample's own ordinary forward."""
    from transformers import AutoModelForCausalLM
    from trl.experimental.async_grpo.packing import TREE_ATTENTION, TreeRow

    from asym_trl.generation.async_cpu import use_sdpa_tree_attention

    use_sdpa_tree_attention()
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_path, attn_implementation="sdpa").eval()
    packed_model = AutoModelForCausalLM.from_pretrained(tiny_model_path, attn_implementation=TREE_ATTENTION).eval()
    prompt = [5, 9, 17, 23, 42]
    samples = [prompt + [7, 8, 9], prompt + [7, 30], prompt + [61, 62, 63, 64]]
    row = TreeRow()
    for i, ids in enumerate(samples):
        mask = [0] * len(prompt) + [1] * (len(ids) - len(prompt))
        row.add(
            {
                "input_ids": torch.tensor(ids),
                "completion_mask": torch.tensor(mask),
                "old_log_probs": torch.zeros(len(ids)),
                "advantage": float(i),
                "group_id": 0,
            }
        )
    packed = row.pack()
    assert len(packed["input_ids"]) < sum(map(len, samples))  # the prompt is forwarded once
    with torch.no_grad():
        logits = packed_model(
            input_ids=packed["input_ids"][None],
            position_ids=packed["position_ids"][None],
            tree_kv_index=packed["tree_kv_index"],
            tree_cu_seqlens_q=packed["tree_cu_seqlens_q"],
            tree_cu_seqlens_k=packed["tree_cu_seqlens_k"],
            tree_max_seqlen_q=int(packed["tree_max_seqlens"][0]),
            tree_max_seqlen_k=int(packed["tree_max_seqlens"][1]),
        ).logits[0]
        got = torch.log_softmax(logits, -1)[packed["token_index"], packed["shift_labels"][packed["token_index"]]]
        expected = []
        for ids in samples:
            lp = torch.log_softmax(plain(torch.tensor([ids])).logits[0], -1)
            expected += [lp[p - 1, ids[p]] for p in range(len(prompt), len(ids))]
    torch.testing.assert_close(got, torch.stack(expected), atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------ the trainer, with a fake rollout worker
class LaggingWorker:
    """TRL's RolloutWorkerProtocol: hands out samples whose policy lag cycles over 0..max_lag (tagged in their
    advantage as 1 + lag), the way a real worker's stale samples look to the trainer."""

    def __init__(self, tokenizer, max_lag: int):
        self.version, self.max_lag, self.handed = 0, max_lag, []
        self.rollout_buffer = self  # the trainer only calls get() and qsize()
        self.metrics_queue = queue.Queue()
        self.tokenizer = tokenizer

    def get(self, timeout=None):
        n = len(self.handed)
        lag = n % (self.max_lag + 1)
        self.handed.append(lag)
        ids = torch.tensor([5, 9, 17, 23, 42, 7 + n % 50, 8, 9]).numpy()
        return RolloutSample(
            prompt=[{"role": "user", "content": "q"}],
            completion=[{"role": "assistant", "content": "a"}],
            input_ids=ids,
            completion_mask=torch.tensor([0, 0, 0, 0, 0, 1, 1, 1]).numpy(),
            old_log_probs=torch.full((8,), -5.0).numpy(),
            advantage=1.0 + lag,
            model_version=self.version - lag,
            group_id=n // G,
            metrics={"reward": 1.0},
        )

    def qsize(self):
        return 0

    def start(self):
        pass

    def stop(self):
        pass

    def update_model_version(self, version):
        self.version = version

    def check_health(self, stale_after_s):
        pass


class NoWeightPush:
    def init_weight_transfer(self):
        pass

    def pause(self):
        pass

    def send_weights(self, iterator):
        for _ in iterator:
            pass

    def resume(self):
        pass

    def destroy(self):
        pass


def fake_worker_trainer(model_path, args, worker) -> AsymAsyncGRPOTrainer:
    """The trainer on TRL's async training loop, fed by ``worker`` (no server), with no weight push."""
    return AsymAsyncGRPOTrainer(
        model_path,
        toy_sum_reward,
        args=args,
        train_dataset=toy_sum_dataset(8),
        processing_class=worker.tokenizer,
        rollout_worker=worker,
        weight_transfer=NoWeightPush(),
    )


def test_adaptive_beta_publishes_its_betas_to_the_scorer_and_checkpoints_them(tiny_model_path, tmp_path):
    """The controller is fed the trained tokens' entropy at every step, writes the betas the rollout worker's scorer
    reads, and keeps its state in checkpoints."""
    args = make_config(
        tmp_path,
        advantage_estimator="adaptive_beta",
        adaptive_beta_step=0.3,
        max_steps=2,
        per_device_train_batch_size=4,
        token_budget=0,
        logging_steps=1,
        save_strategy="steps",
        save_steps=2,
    )
    worker = LaggingWorker(async_tokenizer(tiny_model_path), max_lag=0)
    trainer = fake_worker_trainer(tiny_model_path, args, worker)
    betas = BetasFile(trainer.scorer.betas_file)
    assert betas.read() == {"beta_pos": 0.9, "beta_neg": 0.4}  # published before the worker starts
    trainer.train()
    logged = [h for h in trainer.state.log_history if "adaptive/beta_pos" in h]
    assert len(logged) == 2 and logged[0]["adaptive/entropy"] > 0
    assert betas.read() == pytest.approx(trainer.adaptive_beta.controller.betas())
    assert betas.read()["beta_pos"] == pytest.approx(logged[-1]["adaptive/beta_pos"]) != 0.9
    state = (tmp_path / "out" / "checkpoint-2" / "adaptive_beta.json").read_text()
    assert '"updates": 2' in state


def test_a_sample_older_than_max_staleness_never_trains(tiny_model_path, tmp_path):
    max_staleness = 2
    args = make_config(
        tmp_path,
        max_steps=4,
        per_device_train_batch_size=4,
        token_budget=0,  # a fixed number of samples per micro-batch (no server to ask for max_model_len)
        max_staleness=max_staleness,
        learning_rate=1e-2,
        logging_steps=1,
    )
    worker = LaggingWorker(async_tokenizer(tiny_model_path), max_lag=max_staleness + 2)
    trainer = fake_worker_trainer(tiny_model_path, args, worker)
    trained = set()
    compute_loss = trainer.compute_loss

    def spy(model, inputs, *rest, **kw):
        trained.update(inputs["advantages"][inputs["token_index"] >= 0].tolist())
        return compute_loss(model, inputs, *rest, **kw)

    trainer.compute_loss = spy
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()

    assert trainer.state.global_step == 4
    assert trained == {1.0 + lag for lag in range(max_staleness + 1)}  # every lag up to the bound, none beyond
    logs = [h for h in trainer.state.log_history if "sample/staleness_max" in h]
    assert max(h["sample/staleness_max"] for h in logs) == max_staleness
    assert sum(h.get("sample/dropped_stale_total", 0) for h in logs) > 0
    assert all("entropy/positive_advantage" in h for h in logs)  # every trained advantage here is > 0
    moved = max((trainer.model.state_dict()[k] - v).abs().max().item() for k, v in before.items())
    assert moved > 0, "TRL's async training loop on CPU did not change the weights"
