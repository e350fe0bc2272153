"""Gradient features and per-sample scores from PEFT models (DESIGN §2 step 1, §4.4)."""

from .featureset import FeatureSet
from .featurizer import GradientFeaturizer
from .lora import LoraTarget, find_lora_targets
from .scores import SCORES

__all__ = ["FeatureSet", "GradientFeaturizer", "LoraTarget", "SCORES", "find_lora_targets"]
