"""The estimator registry: its metadata drives the config, and a user's estimator is one decorated function."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from asym_trl import ADVANTAGE_ESTIMATORS, AsymGRPOConfig, register_estimator
from asym_trl.launch.recipes import make_parser
from asym_trl.method.advantages import BETA_PRESETS, SIGN_SCALE_PRESETS
from asym_trl.method.estimators import estimator_names, get_estimator

DOC = Path(__file__).resolve().parents[1] / "docs" / "estimators.md"


def test_the_papers_estimators_and_their_metadata():
    assert sorted(ADVANTAGE_ESTIMATORS) == sorted(
        [
            "asym",
            *BETA_PRESETS,
            *SIGN_SCALE_PRESETS,
            "ent_decrease",
            "ent_increase",
            "pass_at_k",
            "dr_grpo",
            "a_grae",
            "adaptive_beta",
        ]  # fmt: skip
    )
    for name, (pos, neg) in BETA_PRESETS.items():
        scales = {} if name == "grpo" else {"scale_pos": 1.0, "scale_neg": 1.0}  # grpo: TRL's, reads no scale
        assert ADVANTAGE_ESTIMATORS[name].fixed == {"beta_pos": pos, "beta_neg": neg, **scales}
    assert ADVANTAGE_ESTIMATORS["psr"].fixed == {"beta_pos": 0, "beta_neg": 0, "scale_pos": 1, "scale_neg": 0}
    assert ADVANTAGE_ESTIMATORS["nsr"].fixed == {"beta_pos": 0, "beta_neg": 0, "scale_pos": 0, "scale_neg": 1}
    assert ADVANTAGE_ESTIMATORS["w_reinforce"].fixed == {
        "beta_pos": 0,
        "beta_neg": 0,
        "scale_pos": 0.1,
        "scale_neg": 1,
    }
    assert ADVANTAGE_ESTIMATORS["asym"].defaults == {"beta_pos": 0.9, "beta_neg": 0.4, "scale_pos": 1, "scale_neg": 1}
    assert not ADVANTAGE_ESTIMATORS["pass_at_k"].uses_betas and not ADVANTAGE_ESTIMATORS["dr_grpo"].uses_success
    assert list(estimator_names()) == sorted(ADVANTAGE_ESTIMATORS)
    assert ADVANTAGE_ESTIMATORS["adaptive_beta"].adaptive and not ADVANTAGE_ESTIMATORS["asym"].adaptive
    assert ADVANTAGE_ESTIMATORS["a_grae"].context == ("batch_accuracy",) and ADVANTAGE_ESTIMATORS["asym"].context == ()


def test_the_docs_example_registers_an_estimator_a_config_accepts(capsys):
    code = re.search(r"```python\n(.*?)```", DOC.read_text(), re.S).group(1)
    try:
        exec(compile(code, str(DOC), "exec"), {})
        assert capsys.readouterr().out.strip() == "tensor([ 1., -1.,  0.,  1.])"
        assert "sign" in make_parser()._option_string_actions["--advantage_estimator"].choices  # CLI choices
        with pytest.raises(ValueError, match="beta_pos is not used by advantage_estimator='sign'"):
            AsymGRPOConfig(output_dir="out", advantage_estimator="sign", beta_pos=0.5, use_cpu=True, bf16=False)
    finally:
        from asym_trl.method import estimators

        estimators._REGISTRY.pop("sign", None)


def test_a_module_spec_names_a_registered_estimator(tmp_path, monkeypatch):
    (tmp_path / "my_estimators.py").write_text(
        "from asym_trl import register_estimator\n"
        "from asym_trl.method.advantages import asym_advantages\n"
        "half = register_estimator('half', params=('beta_pos', 'beta_neg', 'success_threshold'),\n"
        "                          fixed={'beta_pos': 0.5, 'beta_neg': 0.5})(asym_advantages)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        args = AsymGRPOConfig(output_dir="out", advantage_estimator="my_estimators:half", use_cpu=True, bf16=False)
        assert (args.beta_pos, args.beta_neg) == (0.5, 0.5)
        assert get_estimator("my_estimators:half").name == "half"
    finally:
        from asym_trl.method import estimators

        estimators._REGISTRY.pop("half", None)


def test_registration_checks_its_metadata():
    with pytest.raises(ValueError, match="unknown params"):
        register_estimator("bad", params=("temperature",))
    with pytest.raises(ValueError, match="not in params"):
        register_estimator("bad", params=("beta_pos",), defaults={"beta_neg": 1.0})
    assert "bad" not in ADVANTAGE_ESTIMATORS
