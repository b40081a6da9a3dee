"""Recipes: every YAML loads through the real parser, differs from its GRPO base only where its method does, and
the verl -> TRL batch arithmetic of the paper's two settings comes out right."""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import pytest
import torch
import yaml

from asym_trl.launch.recipes import RecipeError, batch_plan, describe_plan, load_recipe, parse_args, plan_for
from asym_trl.train import main

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
QWEN3 = RECIPES / "qwen3-4b"
QWEN25 = RECIPES / "qwen2.5-math-1.5b"
# Recipes of asynchronous generation (`asym-trl train-async`, TRL's AsyncGRPOConfig keys): checked on their own below.
ASYNC_RECIPES = [RECIPES / "cpu" / "asym-async.yaml", QWEN3 / "asym-async.yaml"]
ALL_RECIPES = sorted(
    p for p in RECIPES.rglob("*.yaml") if "accelerate_configs" not in p.parts and p not in ASYNC_RECIPES
)
IDENTITY = {"run_name", "output_dir", "hub_model_id"}  # every recipe names its own run

# recipe -> the keys it changes relative to its folder's grpo.yaml (App. E values for Table 1).
# Fig. 2 (d,h), the log-prob increment of correct rollouts: on in the runs of the sec. 3.1 study.
DISPLACEMENT = {"likelihood_displacement_rollout_steps": 1}
TABLE1 = {
    "reinforce.yaml": {"advantage_estimator": "reinforce", **DISPLACEMENT},
    "grpo-entropy-reg.yaml": {"entropy_coef": 0.001},
    "grpo-clip-higher.yaml": {"epsilon_high": 0.28},
    "grpo-entropy-adv.yaml": {"entropy_adv_alpha": 0.4, "entropy_adv_kappa": 2.0},
    "dr-grpo.yaml": {"advantage_estimator": "dr_grpo", "scale_rewards": "none"},  # token-level loss: App. C
    "pass-at-k.yaml": {"advantage_estimator": "pass_at_k", "pass_at_k": 5},
    "pos-only.yaml": {"advantage_estimator": "pos_only", **DISPLACEMENT},
    "neg-only.yaml": {"advantage_estimator": "neg_only", **DISPLACEMENT},
    "ent-increase.yaml": {"advantage_estimator": "ent_increase"},
    "ent-decrease.yaml": {"advantage_estimator": "ent_decrease"},
    "asym-symmetric.yaml": {"advantage_estimator": "asym", "beta_pos": 0.7, "beta_neg": 0.7},
    "asym.yaml": {"advantage_estimator": "asym", "beta_pos": 0.9, "beta_neg": 0.4},
    "asym-clip-higher.yaml": {"advantage_estimator": "asym", "beta_pos": 0.9, "beta_neg": 0.3, "epsilon_high": 0.28},
}
SECTION3 = {
    "reinforce.yaml": {"advantage_estimator": "reinforce", **DISPLACEMENT},
    "reinforce-entropy-reg.yaml": {"advantage_estimator": "reinforce", "entropy_coef": 0.001, **DISPLACEMENT},
    "pos-only.yaml": {"advantage_estimator": "pos_only", **DISPLACEMENT},
    "neg-only.yaml": {"advantage_estimator": "neg_only", **DISPLACEMENT},
    "neg-only-0.75.yaml": {"advantage_estimator": "asym", "beta_pos": 0.0, "beta_neg": 0.75, **DISPLACEMENT},
    "ent-increase.yaml": {"advantage_estimator": "ent_increase"},
    "ent-decrease.yaml": {"advantage_estimator": "ent_decrease"},
}
# The Qwen3-4B row of Fig. 2 (sec. 3.1) that Table 1 does not have.
FIG2_QWEN3 = {k: SECTION3[k] for k in ("reinforce-entropy-reg.yaml", "neg-only-0.75.yaml")}
# (beta_pos, beta_neg) the parsed config must end up with.
BETAS = {
    "grpo.yaml": (0.5, 0.5),
    "reinforce.yaml": (0.0, 0.0),
    "pos-only.yaml": (0.5, 0.0),
    "neg-only.yaml": (0.0, 0.5),
    "ent-increase.yaml": (0.5, 0.5),
    "ent-decrease.yaml": (0.5, 0.5),
    "asym-symmetric.yaml": (0.7, 0.7),
    "asym.yaml": (0.9, 0.4),
    "asym-clip-higher.yaml": (0.9, 0.3),
    "neg-only-0.75.yaml": (0.0, 0.75),
}


pytestmark = pytest.mark.usefixtures("restore_environ")  # recipes export `env:` (WANDB_PROJECT)


def _parse(path, *extra):
    return parse_args(["--config", str(path), "--dry-run", *extra])


def test_every_method_has_a_recipe():
    assert {p.name for p in QWEN3.glob("*.yaml")} == {"grpo.yaml", *TABLE1, *FIG2_QWEN3, "asym-async.yaml"}
    assert {p.name for p in QWEN25.glob("*.yaml")} == {"grpo.yaml", *SECTION3}
    assert (RECIPES / "cpu" / "quickstart.yaml").is_file()


@pytest.mark.parametrize("path", ALL_RECIPES, ids=lambda p: str(p.relative_to(RECIPES)))
def test_recipe_parses_and_round_trips(path, tmp_path):
    script_args, training_args, model_args, resolved = _parse(path)
    assert model_args.model_name_or_path
    if path.name in BETAS:
        assert (training_args.beta_pos, training_args.beta_neg) == BETAS[path.name]
    # The resolved recipe written to output_dir reloads to the same settings.
    copy = tmp_path / "recipe.yaml"
    copy.write_text(yaml.safe_dump(resolved))
    assert _parse(copy)[3] == resolved


@pytest.mark.parametrize(
    "folder, expected", [(QWEN3, {**TABLE1, **FIG2_QWEN3}), (QWEN25, SECTION3)], ids=["qwen3-4b", "qwen2.5"]
)
def test_method_recipes_differ_from_grpo_only_in_method_keys(folder, expected):
    grpo = load_recipe(folder / "grpo.yaml")
    for name, changes in expected.items():
        recipe = load_recipe(folder / name)
        diff = {k: v for k, v in recipe.items() if grpo.get(k, "<absent>") != v and k not in IDENTITY}
        assert diff == changes, name
        assert set(grpo) - set(recipe) == set(), name
        assert len({recipe[k] for k in IDENTITY} | {grpo[k] for k in IDENTITY}) == 2 * len(IDENTITY), name


SYNC_GPU_RECIPES = sorted(p for p in [*QWEN3.glob("*.yaml"), *QWEN25.glob("*.yaml")] if p not in ASYNC_RECIPES)


@pytest.mark.parametrize("path", SYNC_GPU_RECIPES, ids=lambda p: p.name)
def test_gpu_recipes_follow_the_paper_and_launch_setup(path):
    script_args, args, model_args, resolved = _parse(path)
    assert args.learning_rate == 2e-6 and args.num_generations == 8 and args.beta == 0.0
    assert args.loss_type == "dapo"  # App. C: token-level aggregation "for all settings", Dr.GRPO included
    assert args.use_vllm and args.vllm_mode == "server"
    assert args.vllm_importance_sampling_correction is False  # verl ran without it: per-rollout |A| is beta's
    assert args.delta == 3.0 and (args.epsilon_high or args.epsilon) <= 2  # verl dual-clip c = 3: exact while eps <= 2
    assert args.report_to == ["wandb"] and os.environ["WANDB_PROJECT"] == "asym-trl"
    assert args.push_to_hub and args.hub_model_id.endswith(path.stem)
    assert args.bf16 and model_args.dtype == "bfloat16"
    assert script_args.dataset_name == "math" and script_args.reward_funcs == ["accuracy"]
    five = [
        "math500",
        "aime24",
        "aime25",
        "amc23",
        "olympiadbench",
    ]  # App. C: Avg. Val Acc; App. E: select on MATH-500
    assert script_args.validation_benchmarks == five and script_args.validation_select_on == "math500"
    # Validation every 10 verl steps = 10 rollout steps, whatever TRL's optimizer steps per rollout are.
    plan = plan_for(args, resolved, script_args.num_processes)
    assert script_args.validation_steps == args.save_steps == 10 * plan.optimizer_steps_per_generation
    assert args.cov_window_rollout_steps == 40  # App. B: the first 40 training (rollout) steps
    if "qwen3-4b" in path.parts:
        assert model_args.model_name_or_path == "Qwen/Qwen3-4B"
        assert args.chat_template_kwargs == {"enable_thinking": False}  # non-thinking mode
        assert args.max_completion_length == 4096
    else:
        assert model_args.model_name_or_path == "Qwen/Qwen2.5-Math-1.5B"
        assert args.chat_template_kwargs is None and args.max_completion_length == 2560


@pytest.mark.parametrize(
    "path, prompts, completions, optimizer_steps",
    [(QWEN3 / "asym.yaml", 128, 512, 2), (QWEN25 / "grpo.yaml", 512, 1024, 4)],
    ids=["qwen3-4b: 128/64", "qwen2.5-math-1.5b: 512/128"],
)
def test_paper_batch_arithmetic(path, prompts, completions, optimizer_steps, capsys):
    """App. C: verl batch B prompts x G=8 per rollout step, mini-batch M prompts per optimizer step: B/M steps."""
    script_args, args, _, resolved = _parse(path)
    assert script_args.num_processes == 4
    plan = plan_for(args, resolved, 4)
    assert plan.prompts_per_rollout_step == prompts
    assert plan.completions_per_optimizer_step == completions
    assert plan.prompts_per_optimizer_step == completions // 8
    assert plan.optimizer_steps_per_generation == optimizer_steps

    assert main(["--config", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "batch arithmetic for 4 training process(es)" in out
    assert f"prompts per rollout step:       {prompts} " in out
    assert f"completions per optimizer step: {completions} " in out
    assert f"optimizer steps per generation: {optimizer_steps} " in out
    assert yaml.safe_load(out.split("# advantage estimator")[0]) == resolved  # the printed recipe is the resolved one


def test_batch_plan_matches_trls_own_derivation(cpu_config):
    """For the world size actually running (1 here), the plan equals what GRPOConfig derives itself."""
    for kwargs in (
        dict(per_device_train_batch_size=8, gradient_accumulation_steps=3, num_generations=4),
        dict(
            per_device_train_batch_size=8, gradient_accumulation_steps=2, num_generations=4, generation_batch_size=48
        ),
        dict(per_device_train_batch_size=4, gradient_accumulation_steps=2, num_generations=4, steps_per_generation=6),
    ):
        args = cpu_config(**kwargs)
        plan = batch_plan(num_processes=1, **kwargs)
        assert (plan.generation_batch_size, plan.steps_per_generation) == (
            args.generation_batch_size,
            args.steps_per_generation,
        )


def test_batch_plan_hand_computed_and_errors():
    plan = batch_plan(
        per_device_train_batch_size=2,
        gradient_accumulation_steps=4,
        num_generations=4,
        num_processes=3,
        steps_per_generation=6,
        num_iterations=2,
    )
    # 2 x 3 x 6 = 36 completions = 9 prompts per rollout; 2 x 3 x 4 = 24 per optimizer step; 6 x 2 / 4 = 3 steps.
    assert (plan.generation_batch_size, plan.prompts_per_rollout_step) == (36, 9)
    assert plan.completions_per_optimizer_step == 24 and plan.prompts_per_optimizer_step == 6
    assert plan.optimizer_steps_per_generation == 3
    odd = batch_plan(per_device_train_batch_size=4, gradient_accumulation_steps=4, num_generations=4, num_processes=1,
                     steps_per_generation=6)  # fmt: skip
    assert odd.optimizer_steps_per_generation == Fraction(3, 2)
    with pytest.raises(RecipeError, match="generation_batch_size=100 must be divisible"):
        batch_plan(per_device_train_batch_size=8, gradient_accumulation_steps=1, num_generations=4, num_processes=4,
                   generation_batch_size=100)  # fmt: skip
    with pytest.raises(RecipeError, match="divisible by num_generations=8"):
        batch_plan(per_device_train_batch_size=4, gradient_accumulation_steps=1, num_generations=8, num_processes=1)
    with pytest.raises(RecipeError, match="not both"):
        batch_plan(per_device_train_batch_size=4, gradient_accumulation_steps=1, num_generations=4, num_processes=1,
                   generation_batch_size=8, steps_per_generation=2)  # fmt: skip


def test_describe_plan_flags_partial_optimizer_steps(cpu_config):
    plan = batch_plan(per_device_train_batch_size=8, gradient_accumulation_steps=2, num_generations=4,
                      num_processes=1, steps_per_generation=3)  # fmt: skip
    assert "3/2" in describe_plan(plan, cpu_config(gradient_accumulation_steps=2)) and "warning" in describe_plan(
        plan, cpu_config(gradient_accumulation_steps=2)
    )


# ------------------------------------------------------------------------------------------------ base chain
def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_base_chain_overrides_and_merges_env(tmp_path):
    _write(tmp_path / "a.yaml", {"learning_rate": 1e-3, "seed": 1, "env": {"X": "a", "Y": "a"}})
    (tmp_path / "sub").mkdir()
    _write(tmp_path / "sub" / "b.yaml", {"base": "../a.yaml", "seed": 2, "env": {"Y": "b"}})
    _write(tmp_path / "sub" / "c.yaml", {"base": "b.yaml", "beta_pos": 0.7})
    assert load_recipe(tmp_path / "sub" / "c.yaml") == {
        "learning_rate": 1e-3,
        "seed": 2,
        "beta_pos": 0.7,
        "env": {"X": "a", "Y": "b"},
    }


def test_base_chain_errors(tmp_path):
    _write(tmp_path / "loop1.yaml", {"base": "loop2.yaml"})
    _write(tmp_path / "loop2.yaml", {"base": "loop1.yaml"})
    with pytest.raises(RecipeError, match="loops"):
        load_recipe(tmp_path / "loop1.yaml")
    _write(tmp_path / "orphan.yaml", {"base": "missing.yaml"})
    with pytest.raises(RecipeError, match=r"missing.yaml does not exist \(base of"):
        load_recipe(tmp_path / "orphan.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(RecipeError, match="must be a YAML mapping"):
        load_recipe(tmp_path / "list.yaml")
    _write(tmp_path / "badenv.yaml", {"env": ["X"]})
    with pytest.raises(RecipeError, match="'env' must be a mapping"):
        load_recipe(tmp_path / "badenv.yaml")


# ----------------------------------------------------------------------------------- unknown keys, bad values
@pytest.mark.parametrize(
    "key, value, message",
    [
        ("beta_poss", 0.9, "unknown recipe key 'beta_poss'; did you mean 'beta_pos'"),
        ("not_a_setting", 1, "unknown recipe key 'not_a_setting'"),
        ("num_generations", 8.5, "recipe key 'num_generations' has an invalid value 8.5"),
        ("learning_rate", "fast", "recipe key 'learning_rate' has an invalid value 'fast'"),
        ("use_vllm", "maybe", "recipe key 'use_vllm' has an invalid value 'maybe'"),
        ("advantage_estimator", "ppo", "recipe key 'advantage_estimator' has an invalid value 'ppo'; choose one of"),
        ("dtype", "fp8", "recipe key 'dtype' has an invalid value 'fp8'"),
        ("beta_pos", -1.0, "beta_pos=-1.0 is invalid"),
        ("pass_at_k", 9, "pass_at_k=9 must satisfy"),
        ("dataset_streaming", True, "dataset_streaming is not used by asym_trl.train"),
        ("validation_steps", 0, "validation_steps=0 must be >= 1"),
    ],
)
def test_bad_recipe_fails_before_model_load_naming_the_key(tmp_path, capsys, key, value, message):
    recipe = load_recipe(RECIPES / "cpu" / "quickstart.yaml")
    recipe.update({key: value, "model_name_or_path": str(tmp_path / "no-model-here")})
    if key == "pass_at_k":
        recipe["advantage_estimator"] = "pass_at_k"
        recipe.pop("beta_pos"), recipe.pop("beta_neg")
    path = _write(tmp_path / "bad.yaml", recipe)
    assert main(["--config", str(path), "--output_dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert not (tmp_path / "out").exists()  # nothing was built


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"model_name_or_path": None}, "model_name_or_path is not set"),
        ({"push_to_hub": True}, "push_to_hub is set but hub_model_id is not"),
        ({"dataset_name": "asym_trl.apps.tiny:no_such_factory"}, "dataset_name: cannot import dataset factory"),
        (
            {"reward_funcs": ["asym_trl.apps.tiny:toy_sum_reward", "nope:f"]},
            "reward_funcs: cannot import reward function",
        ),
        ({"reward_funcs": ["accuracy", "format"]}, "2 reward functions: set success_reward_func"),
    ],
)
def test_missing_pieces_fail_before_model_load(tmp_path, capsys, changes, message):
    recipe = _write(tmp_path / "r.yaml", {"base": str(RECIPES / "cpu" / "quickstart.yaml"), **changes})
    out = tmp_path / "out"
    assert main(["--config", str(recipe), "--output_dir", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_bad_command_line_value_names_the_flag(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--config", str(RECIPES / "cpu" / "quickstart.yaml"), "--num_generations", "eight"])
    assert "--num_generations" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ accelerate configs
@pytest.mark.parametrize("name", ["ddp", "zero2", "zero3", "fsdp", "cpu_multi"])
def test_accelerate_configs_load(name):
    from accelerate.commands.config.config_args import ClusterConfig

    config = ClusterConfig.from_yaml_file(RECIPES / "accelerate_configs" / f"{name}.yaml")
    expected = {
        "ddp": ("MULTI_GPU", 4),
        "zero2": ("DEEPSPEED", 4),
        "zero3": ("DEEPSPEED", 4),
        "fsdp": ("FSDP", 4),
        "cpu_multi": ("MULTI_GPU", 2),
    }[name]
    assert (str(config.distributed_type).split(".")[-1], config.num_processes) == expected
    assert config.use_cpu == (name == "cpu_multi")
    if name.startswith("zero"):
        assert config.deepspeed_config["zero_stage"] == int(name[-1])


def test_cli_dispatches_train_and_push(capsys):
    from asym_trl.cli import main as cli

    assert cli(["train", "--config", str(RECIPES / "qwen3-4b" / "asym.yaml"), "--dry-run"]) == 0
    assert "prompts per rollout step:       128 " in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli(["push", "--help"])
    assert "--hub_model_id" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------ QLoRA
def test_qlora_recipe_resolves_to_a_4bit_base_and_lora_adapters(capsys):
    from peft import LoraConfig
    from transformers import BitsAndBytesConfig
    from trl import get_peft_config, get_quantization_config

    path = RECIPES / "qlora" / "qwen3-4b-asym.yaml"
    _, args, model_args, resolved = _parse(path)
    quant, lora = get_quantization_config(model_args), get_peft_config(model_args)
    assert isinstance(quant, BitsAndBytesConfig) and quant.load_in_4bit and quant.bnb_4bit_quant_type == "nf4"
    assert quant.bnb_4bit_use_double_quant and quant.bnb_4bit_compute_dtype == torch.bfloat16
    assert isinstance(lora, LoraConfig) and (lora.r, lora.lora_alpha, lora.target_modules) == (64, 128, "all-linear")
    assert (args.advantage_estimator, args.beta_pos, args.beta_neg) == ("asym", 0.9, 0.4)  # asym.yaml's, unchanged
    assert main(["--config", str(path), "--dry-run", "--num_processes", "4"]) == 0
    out = capsys.readouterr().out
    assert "# model: 4-bit nf4 (BitsAndBytesConfig, compute dtype torch.bfloat16, double quant True)" in out
    assert "+ LoRA r=64 alpha=128 dropout=0.05 targets=all-linear (QLoRA)" in out


@pytest.mark.parametrize(
    "flags, bnb_installed, message",
    [
        (("--use_peft", "true"), False, "load_in_4bit needs bitsandbytes, which is not installed: `pip install"),
        (("--use_peft", "true"), True, "load_in_4bit needs a CUDA GPU (bitsandbytes' quantized kernels)"),
        ((), True, "load_in_4bit needs use_peft: true (QLoRA"),
    ],
    ids=["no-bitsandbytes", "no-cuda", "no-peft"],
)
def test_qlora_where_bitsandbytes_cannot_run_stops_before_model_load(
    tmp_path, capsys, monkeypatch, flags, bnb_installed, message
):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(  # the machine without / with bitsandbytes, whatever this one has
        importlib.util, "find_spec", lambda name, *a: (object() if bnb_installed else None) if name == "bitsandbytes"
        else find_spec(name, *a)
    )  # fmt: skip
    recipe = _write(tmp_path / "r.yaml", {"base": str(RECIPES / "cpu" / "quickstart.yaml"), "load_in_4bit": True})
    out = tmp_path / "out"
    argv = ["--config", str(recipe), "--output_dir", str(out), "--model_name_or_path", str(tmp_path / "no-model")]
    assert main([*argv, *flags]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()  # nothing was built or loaded


@pytest.mark.parametrize("path", ASYNC_RECIPES, ids=lambda p: str(p.relative_to(RECIPES)))
def test_async_recipes_parse_and_round_trip(path, tmp_path):
    from asym_trl.train_async import parse_args as parse_async

    script_args, args, resolved = parse_async(["--config", str(path), "--dry-run"])
    assert (args.advantage_estimator, args.beta_pos, args.beta_neg) == ("asym", 0.9, 0.4) and args.drop_zero_signal
    samples_per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps
    on_gpu = "qwen3-4b" in path.parts
    processes = 4 if on_gpu else 1
    assert args.queue_maxsize == args.max_staleness * samples_per_step * processes  # DESIGN.md sec. 3: not deeper
    assert args.vllm_weight_sync == ("nccl" if on_gpu else "disk")
    if on_gpu:  # the paper's settings, as in asym.yaml
        sync = _parse(QWEN3 / "asym.yaml")[1]
        for key in ("learning_rate", "num_generations", "max_completion_length", "chat_template_kwargs", "epsilon"):
            assert getattr(args, key) == getattr(sync, key), key
        assert samples_per_step * processes == 512  # 64 prompts x G 8 per optimizer step (App. C)
    else:
        assert script_args.response_template == "qwen3" and args.use_cpu
    copy = tmp_path / "recipe.yaml"
    copy.write_text(yaml.safe_dump(resolved))
    assert parse_async(["--config", str(copy), "--dry-run"])[2] == resolved


def test_train_async_builds_the_run_and_waits_for_its_server(tiny_model_path, tmp_path, capsys):
    """`asym-trl train-async` with the CPU recipe: model, data, rewards, tokenizer and trainer are built, the resolved
    recipe is written, and training stops at the first weight push when no server answers, naming the address."""
    from asym_trl.train_async import main as train_async

    out, port = tmp_path / "run", 9  # discard port: nothing listens
    argv = ["--config", str(ASYNC_RECIPES[0]), "--model_name_or_path", tiny_model_path, "--output_dir", str(out)]
    argv += ["--vllm_server_base_url", f"http://127.0.0.1:{port}", "--vllm_server_timeout", "1"]
    with pytest.raises(ConnectionError, match=rf"127\.0\.0\.1:{port}/health within 1 s"):
        train_async(argv)
    assert yaml.safe_load((out / "recipe.yaml").read_text())["model_name_or_path"] == tiny_model_path
    assert train_async(["--config", str(ASYNC_RECIPES[0]), "--dataset_name", "nope:nothing"]) == 2
    assert "cannot import dataset factory 'nope:nothing'" in capsys.readouterr().err
