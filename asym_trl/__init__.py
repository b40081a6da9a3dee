"""asym_trl: AsymGRPO (bidirectional entropy modulation for RLVR) on Hugging Face TRL."""

from .advantages import ADVANTAGE_ESTIMATORS, BETA_PRESETS, compute_advantages
from .config import AsymGRPOConfig
from .trainer import AsymGRPOTrainer

__all__ = ["ADVANTAGE_ESTIMATORS", "BETA_PRESETS", "AsymGRPOConfig", "AsymGRPOTrainer", "compute_advantages"]
__version__ = "0.1.0"
