"""asym_trl: AsymGRPO (bidirectional entropy modulation for RLVR) on Hugging Face TRL."""

from .advantages import BETA_PRESETS
from .config import AsymGRPOConfig
from .estimators import ADVANTAGE_ESTIMATORS, compute_advantages, register_estimator
from .trainer import AsymGRPOTrainer

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "BETA_PRESETS",
    "AsymGRPOConfig",
    "AsymGRPOTrainer",
    "compute_advantages",
    "register_estimator",
]
__version__ = "0.1.0"
