"""The lifelong loop: persisted pool store and the per-stage runner (DESIGN §2)."""

from .pool import STATUSES, PoolStore
from .stage import STEPS, Stage, StageConfig, load_config, run_stage

__all__ = ["PoolStore", "STATUSES", "STEPS", "Stage", "StageConfig", "load_config", "run_stage"]
