"""Guard: the private TRL pieces AsymGRPOTrainer relies on. If TRL changes them, fail here, loudly."""

from __future__ import annotations

import inspect

import trl
from trl import GRPOTrainer

from asym_trl import AsymGRPOTrainer


def params(fn):
    return list(inspect.signature(fn).parameters)


def test_trl_version_is_the_pinned_one():
    assert trl.__version__ == "1.16.0", "asym_trl overrides private GRPOTrainer methods of trl 1.16.0; re-check them"


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
    logps = params(GRPOTrainer._get_per_token_logps_and_entropies)
    assert logps[:5] == ["self", "model", "input_ids", "attention_mask", "logits_to_keep"]
    assert "compute_entropy" in logps


def test_trainer_overrides_only_the_documented_methods():
    own = {name for name, value in vars(AsymGRPOTrainer).items() if callable(value) and hasattr(GRPOTrainer, name)}
    assert own == {
        "__init__",
        "_calculate_rewards",
        "_generate_and_score_completions",
        "_compute_loss",
        "_get_per_token_logps_and_entropies",
    }
    for name in own - {"__init__"}:
        assert f"``{name}``" in AsymGRPOTrainer.__doc__, f"{name} missing from the docstring's list of overrides"


def test_loss_reads_entropies_before_advantages_and_only_there():
    """The entropy hook fills inputs['advantages'] during the logps call: that call must come first."""
    src = inspect.getsource(GRPOTrainer._compute_loss)
    assert src.index("compute_entropy=True") < src.index('inputs["advantages"]')
    assert "self._entropy_bonus_enabled" in src and "current_gradient_accumulation_steps" in src
    full = inspect.getsource(GRPOTrainer)
    assert full.count("compute_entropy=True") == 1, "entropies are now computed outside the loss too"


def test_generate_and_score_facts_we_rely_on():
    src = inspect.getsource(GRPOTrainer._generate_and_score_completions)
    # rewards come gathered from _calculate_rewards; the parent slices by process and logs all advantages
    assert "self._calculate_rewards(inputs, prompts, completions, completion_ids_list)" in src
    assert "self.accelerator.process_index * len(prompts)" in src
    assert 'self._logs["advantages"].extend(all_process_advantages.tolist())' in src
    assert '"advantages": advantages' in src
    reward_src = inspect.getsource(GRPOTrainer._calculate_rewards)
    assert "rewards_per_func = gather(rewards_per_func)" in reward_src


def test_vllm_generation_is_built_in_init_and_syncs_through_one_method():
    """asym_trl.vllm_sync swaps the VLLMGeneration class GRPOTrainer.__init__ builds (disk weight sync)."""
    import trl.trainer.grpo_trainer as grpo_module

    assert "VLLMGeneration(" in inspect.getsource(GRPOTrainer.__init__)
    assert callable(getattr(grpo_module.VLLMGeneration, "sync_weights", None))


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
    assert "self.llm.llm_engine.model_executor.driver_worker.model_runner.model.load_weights" in sync
    assert "self.base_url = " in inspect.getsource(VLLMClient.__init__)
    assert callable(VLLMGeneration._init_vllm) and callable(VLLMGeneration._iter_named_params)
