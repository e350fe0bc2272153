"""The lifelong loop: persisted pool store, one stage as a list of steps, the run over tasks (DESIGN §2).

Names load on first use, so ``adaptinf_fast.lifelong.evaluate`` or ``.pool`` import without the
config schema's pydantic.
"""

from importlib import import_module

_WHERE = {"RunConfig": "config", "StageConfig": "config", "load_run_config": "config", "load_stage_config": "config",
          "PoolStore": "pool", "STATUSES": "pool", "POOL_STEPS": "steps", "STEPS": "steps", "Context": "steps",
          "StageDir": "steps", "run_stage": "steps", "run_steps": "steps"}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
