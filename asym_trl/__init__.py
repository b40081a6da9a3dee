"""asym_trl: AsymGRPO (bidirectional entropy modulation for RLVR) on Hugging Face TRL.

The public names load lazily, so that ``asym_trl.generation.vllm_worker`` (imported by a vLLM server, whose
environment may have no TRL) does not pull in the trainer.
"""

import importlib

_EXPORTS = {
    "ADVANTAGE_ESTIMATORS": ".method.estimators",
    "BETA_PRESETS": ".method.advantages",
    "compute_advantages": ".method.estimators",
    "register_estimator": ".method.estimators",
    "AsymGRPOConfig": ".config",
    "AsymGRPOTrainer": ".trainer",
    "AsymAsyncGRPOConfig": ".async_trainer",
    "AsymAsyncGRPOTrainer": ".async_trainer",
}
__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
