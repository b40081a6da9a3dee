"""Guard: the private TRL pieces asym_trl relies on, all used through asym_trl.trl_compat. If TRL changes any of
them, fail here, loudly; and no other module of the package may reach into TRL's privates."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import trl
from trl import GRPOTrainer
from trl.generation.vllm_generation import VLLMGeneration

from asym_trl import AsymGRPOTrainer, trl_compat
from asym_trl.trl_compat import GRPOHooks, VLLMGenerationHooks

PACKAGE = Path(trl_compat.__file__).parent
# Every private TRL name asym_trl uses (all of them inside trl_compat.py).
PRIVATE_METHODS = (
    "_calculate_rewards",
    "_generate_and_score_completions",
    "_compute_loss",
    "_get_per_token_logps_and_entropies",
    "_prepare_inputs",
)
PRIVATE_CALLED = ("_save_checkpoint",)  # Trainer methods called, not overridden
PRIVATE_ATTRIBUTES = (
    "_metrics",
    "_logs",
    "_entropy_bonus_enabled",
    "_step",
    "_buffered_inputs",
    "_last_loaded_step",
    "_dist",
)


def params(fn):
    return list(inspect.signature(fn).parameters)


def test_trl_version_is_the_pinned_one():
    assert trl.__version__ == trl_compat.TRL_VERSION == "1.16.0", "private TRL methods are used: re-check them"


def test_overridden_method_signatures():
    assert params(GRPOTrainer._calculate_rewards) == [
        "self",
        "inputs",
        "prompts",
        "completions",
        "completion_ids_list",
    ]
    assert params(GRPOTrainer._generate_and_score_completions) == ["self", "inputs"]
    assert params(GRPOTrainer._compute_loss) == ["self", "model", "inputs"]
    assert params(GRPOTrainer._prepare_inputs) == ["self", "generation_batch"]
    logps = params(GRPOTrainer._get_per_token_logps_and_entropies)
    assert logps[:5] == ["self", "model", "input_ids", "attention_mask", "logits_to_keep"]
    assert "compute_entropy" in logps


def test_only_the_hooks_class_overrides_private_methods():
    own = {name for name, value in vars(GRPOHooks).items() if callable(value) and hasattr(GRPOTrainer, name)}
    assert own == set(PRIVATE_METHODS)
    for name in own:
        assert f"``{name}``" in trl_compat.__doc__, f"{name} missing from trl_compat's list of overrides"
    mine = {name for name, value in vars(AsymGRPOTrainer).items() if callable(value) and hasattr(GRPOTrainer, name)}
    assert mine == {"__init__", "train"}  # public methods only


def test_private_attributes_exist_on_a_trl_trainer():
    src = inspect.getsource(GRPOTrainer)
    for name in PRIVATE_ATTRIBUTES:
        assert f"self.{name}" in src, f"GRPOTrainer no longer has {name}"
    assert 'self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}' in src
    assert '"advantages": deque(maxlen=args.generation_batch_size)' in src or "self._logs = {" in src


def test_loss_reads_entropies_before_advantages_and_only_there():
    """The entropy hook fills inputs['advantages'] during the logps call: that call must come first."""
    src = inspect.getsource(GRPOTrainer._compute_loss)
    assert src.index("compute_entropy=True") < src.index('inputs["advantages"]')
    assert "self._entropy_bonus_enabled" in src and "current_gradient_accumulation_steps" in src
    full = inspect.getsource(GRPOTrainer)
    assert full.count("compute_entropy=True") == 1, "entropies are now computed outside the loss too"
    for key in trl_compat.MODEL_INPUT_KEYS:
        assert f'"{key}"' in src, f"TRL's loss no longer forwards {key}"


def test_generate_and_score_facts_we_rely_on():
    src = inspect.getsource(GRPOTrainer._generate_and_score_completions)
    # rewards come gathered from _calculate_rewards; the parent slices by process and logs all advantages
    assert "self._calculate_rewards(inputs, prompts, completions, completion_ids_list)" in src
    assert "self.accelerator.process_index * len(prompts)" in src
    assert 'self._logs["advantages"].extend(all_process_advantages.tolist())' in src
    assert '"advantages": advantages' in src
    reward_src = inspect.getsource(GRPOTrainer._calculate_rewards)
    assert "rewards_per_func = gather(rewards_per_func)" in reward_src


def test_generation_step_counter_and_vllm_sync_tag():
    src = inspect.getsource(GRPOTrainer)
    assert "self._step % generate_every == 0" in src or "self._step += 1" in src
    assert "self._last_loaded_step = self.state.global_step" in src


def test_training_micro_batches_come_from_one_buffer_indexed_by_the_micro_step():
    """asym_trl.rollouts.zero_signal moves rows between the micro-batches of TRL's buffer right after TRL fills it."""
    src = inspect.getsource(GRPOTrainer._prepare_inputs)
    assert "generation_batches = split_tensor_dict(generation_batch, self.args.steps_per_generation)" in src
    assert "self._buffered_inputs = [" in src
    assert "inputs = self._buffered_inputs[self._step % self.args.steps_per_generation]" in src


def test_vllm_generation_is_built_in_init_and_syncs_through_one_method():
    """asym_trl.generation.vllm_sync swaps the VLLMGeneration class GRPOTrainer.__init__ builds (disk weight sync)."""
    import trl.trainer.grpo_trainer as grpo_module

    assert "VLLMGeneration(" in inspect.getsource(GRPOTrainer.__init__)
    assert grpo_module.VLLMGeneration is VLLMGeneration
    assert callable(getattr(grpo_module.VLLMGeneration, "sync_weights", None))
    assert params(VLLMGeneration._init_vllm) == ["self"] and params(VLLMGeneration._iter_named_params) == ["self"]
    assert "self._init_vllm()" in inspect.getsource(VLLMGeneration.__init__)
    assert set(vars(VLLMGenerationHooks)) >= {"_init_vllm", "init_engine", "iter_named_params"}
    generate = inspect.getsource(VLLMGeneration)
    for attribute in trl_compat._VLLM_SAMPLING_ATTRIBUTES:
        assert f"self.{attribute}" in generate, f"VLLMGeneration no longer reads {attribute}"


def test_no_private_trl_access_outside_trl_compat():
    """A grep: outside trl_compat.py, no module names a private TRL method/attribute or TRL's VLLMGeneration."""
    names = (
        *PRIVATE_METHODS,
        *PRIVATE_CALLED,
        *PRIVATE_ATTRIBUTES,
        "_init_vllm",
        "_iter_named_params",
        *ASYNC_PRIVATE_NAMES,
    )
    pattern = re.compile(r"\.(" + "|".join(re.escape(n) for n in names) + r")\b|trl\.generation\.vllm_generation")
    found = []
    paths = sorted(PACKAGE.rglob("*.py"))
    assert len(paths) > 40 and PACKAGE / "rollouts" / "zero_signal.py" in paths  # the sub-packages are read too
    for path in paths:
        if path == PACKAGE / "trl_compat.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if pattern.search(code) and "``" not in code:  # docstrings quote names in ``...``
                found.append(f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}")
    assert not found, "private TRL access outside asym_trl/trl_compat.py:\n" + "\n".join(found)


def test_vllm_generation_attributes_the_sync_check_reads():
    """GuardedVLLMGeneration reads these attributes of TRL's VLLMGeneration and calls TRL's colocate weight path."""
    from trl.generation.vllm_client import VLLMClient
    from trl.generation.vllm_generation import VLLMGeneration

    init = inspect.getsource(VLLMGeneration.__init__)
    for attribute in ("model", "accelerator", "processing_class", "mode", "enable_sleep_mode", "server_base_url"):
        assert f"self.{attribute} = " in init, attribute
    for attribute in ("server_host", "server_port", "server_timeout"):
        assert f"self.{attribute} = " in init, attribute
    sync = inspect.getsource(VLLMGeneration.sync_weights)
    assert "self._iter_named_params()" in sync
    client_init = inspect.getsource(VLLMClient.__init__)
    assert all(f"self.{name} = " in client_init for name in ("base_url", "session", "model"))


def test_the_loss_is_always_compute_loss_even_with_liger():
    """The loss-side diagnostics and the estimator's per-token hooks live in ``_compute_loss``: TRL 1.16 has no
    Liger loss path (Liger is layer kernels only; its fused linear cross-entropy is refused)."""
    body = inspect.getsource(GRPOTrainer.compute_loss)
    assert "return self._compute_loss(model, inputs)" in body and "liger" not in body.lower()
    init = inspect.getsource(GRPOTrainer.__init__)
    assert '"fused_linear_cross_entropy": False' in init
    assert "liger_grpo_loss" not in inspect.getsource(GRPOTrainer).lower()


def test_loss_normalisers_the_zero_signal_skip_relies_on():
    """asym_trl.rollouts.zero_signal rescales TRL's loss of the kept rows by trl_compat.loss_normaliser's kind."""
    src = inspect.getsource(GRPOTrainer._compute_loss)
    assert "((per_token_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()" in src  # rows: grpo, sapo
    assert "(per_token_loss * mask).sum() / mask.sum().clamp(min=1.0)" in src  # tokens: bnpo
    assert "(per_token_loss.size(0) * self.max_completion_length)" in src  # rows: dr_grpo
    assert "(per_token_loss * mask).sum(-1).mean()" in src  # rows: luspo
    assert 'normalizer = inputs["num_items_in_batch"].clamp(min=1.0)' in src  # global: dapo, cispo, vespo
    for kind, types in (("rows", "grpo sapo dr_grpo luspo"), ("tokens", "bnpo"), ("global", "dapo cispo vespo")):
        assert all(trl_compat.loss_normaliser(t) == kind for t in types.split())


def test_save_checkpoint_writes_a_full_checkpoint_of_the_current_step():
    """asym_trl.lifecycle.checkpoints' crash checkpoint calls the Trainer's own checkpoint writer, then the on_save
    callbacks."""
    from transformers import Trainer

    assert params(Trainer._save_checkpoint) == params(GRPOTrainer._save_checkpoint) == ["self", "model", "trial"]
    src = inspect.getsource(Trainer._save_checkpoint)
    assert 'checkpoint_folder = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"' in src
    for part in ("self.save_model(output_dir", "self._save_optimizer_and_scheduler(output_dir)",
                 "self._save_rng_state(output_dir)", "self.state.save_to_json("):  # fmt: skip
        assert part in src, part
    assert "callback_handler.on_save" not in src  # the caller runs the on_save callbacks
    assert "self._save_checkpoint(model, trial)" in inspect.getsource(Trainer._maybe_log_save_evaluate)


# ------------------------------------------------------------------------------------ async GRPO (experimental)
ASYNC_PRIVATE_NAMES = ("_AsyncRolloutLoop", "_score_group", "_push_metrics", "_loop_cls", "_loop_kwargs")


def test_async_rollout_loop_hooks():
    """asym_trl.async_trainer rescores each group after TRL's _score_group, in a loop class the worker spawns."""
    import trl.experimental.async_grpo.async_rollout_worker as worker_module
    from trl.experimental.async_grpo.async_rollout_worker import AsyncRolloutWorker, _AsyncRolloutLoop

    assert inspect.iscoroutinefunction(_AsyncRolloutLoop._score_group)
    assert params(_AsyncRolloutLoop._score_group) == ["self", "group"]
    assert params(_AsyncRolloutLoop._push_metrics) == ["self", "values"]
    score = inspect.getsource(_AsyncRolloutLoop._score_group)
    # one advantage per conversation, stamped with its per-function rewards on every row, sharing its completion
    assert 'f"rewards/{name}": float(func_reward)' in score and "completion=completion," in score
    assert "advantage=float(advantage)," in score and "rewards = np.nansum(arr, axis=0)" in score
    assert "await self._score_group(group)" in inspect.getsource(_AsyncRolloutLoop._score_loop)
    assert "reward_func_names" in inspect.getsource(_AsyncRolloutLoop.__init__)
    assert AsyncRolloutWorker._loop_cls is _AsyncRolloutLoop
    assert "self._loop_kwargs = loop_kwargs" in inspect.getsource(AsyncRolloutWorker.__init__)
    assert "self._loop_cls," in inspect.getsource(AsyncRolloutWorker.start)
    assert "loop_cls(\n        **loop_kwargs," in inspect.getsource(worker_module._child_main)
    hooks = trl_compat.async_loop_hooks()
    assert set(vars(hooks)) >= {"_score_group", "rescore_group", "push_metrics"}


def test_async_trainer_cpu_obstacles_and_what_we_rely_on():
    """The two GPU assumptions of AsyncGRPOTrainer.__init__ that trl_compat.async_trainer_shims answers, the packed
    attention asym_trl.generation.async_cpu replaces, and the loss / staleness lines the async trainer reads."""
    from trl.experimental.async_grpo import AsyncGRPOTrainer, packing
    from trl.experimental.async_grpo import async_grpo_trainer as trainer_module
    from trl.experimental.async_grpo.async_rollout_worker import AsyncRolloutWorker

    from asym_trl.async_trainer import AsymAsyncGRPOTrainer
    from asym_trl.generation.async_cpu import sdpa_tree_attention

    init = inspect.getsource(AsyncGRPOTrainer.__init__)
    assert "get_peak_flops_per_device(self.accelerator, dtype)" in init
    assert hasattr(trainer_module, "get_peak_flops_per_device")
    assert "torch.cuda.get_device_name" in inspect.getsource(trainer_module.get_peak_flops_per_device)
    assert "if not is_vllm_available():" in inspect.getsource(AsyncRolloutWorker.__init__)
    assert "register_tree_attention()" in init and "attn_implementation=TREE_ATTENTION" in init
    assert packing.TREE_ATTENTION == "tree_fa3"
    theirs = inspect.signature(packing.tree_attention).parameters
    ours = inspect.signature(sdpa_tree_attention).parameters
    assert list(theirs)[:5] == list(ours)[:5] and {n for n, p in theirs.items() if p.kind == p.KEYWORD_ONLY} <= set(
        ours
    )
    loss = inspect.getsource(AsyncGRPOTrainer.compute_loss)
    assert 'selected = inputs["token_index"] >= 0' in loss and "outputs.entropy.flatten()[token_index]" in loss
    assert 'self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}' in inspect.getsource(
        AsyncGRPOTrainer
    )
    staleness = inspect.getsource(trainer_module.RolloutQueueDataset.__iter__)
    assert (
        "staleness = version - sample.model_version" in staleness and "if staleness > self.max_staleness:" in staleness
    )
    mine = {n for n, v in vars(AsymAsyncGRPOTrainer).items() if callable(v) and hasattr(AsyncGRPOTrainer, n)}
    assert mine == {"__init__", "compute_loss", "train"}  # public methods only (train: the controller's state)
