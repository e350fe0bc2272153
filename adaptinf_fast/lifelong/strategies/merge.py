"""``merge:average`` / ``merge:ties`` / ``merge:copa``: task adapters from the initial adapter, the
model after stage t their training-free merge (``ops.merge``, batched by layer shape on the
model's device). CoPA-Merging follows RobustMerge's official merge (``ops/merge/reference.py``)."""

from __future__ import annotations

import torch

from ..._io import atomic_dir
from ...ops.merge import merge_lora
from ..steps import StageDir
from .base import Strategy


def merge_adapters(adapters: list[dict[str, torch.Tensor]], method: str, settings, scale: float,
                   device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
    """The ``method`` merge (average, ties, copa) of task adapters with a run's ``merge`` settings,
    computed on ``device`` (the model's: batched kernels on its GPU)."""
    if device is not None:
        adapters = [{k: v.to(device) for k, v in a.items()} for a in adapters]
    return merge_lora(adapters, scale, method, density=settings.density, lam=settings.lam, keep=settings.keep,
                      clamp=settings.clamp)


class Merge(Strategy):
    def __init__(self, run, name: str):
        super().__init__(run, name)
        self.method = name.split(":", 1)[1]

    def train_from(self, t: int) -> int:
        return 0  # every task adapter starts from the run's initial one

    def deploy(self, model, encoder, sd: StageDir) -> None:
        if sd.deployed.exists():
            return
        run = self.run
        state = merge_adapters(run.task_adapters(sd), self.method, self.cfg.merge, run.scale(model),
                               next(model.parameters()).device)
        run.load_state(model, state, sd.deployed)
        if run.rank == 0:
            atomic_dir(sd.deployed, model.save_pretrained)
        run.barrier()

    def use(self, model, sd: StageDir):
        if sd.t > 0 and sd.deployed.exists():
            from peft.utils import load_peft_weights

            self.run.load_state(model, load_peft_weights(str(sd.deployed)), sd.deployed)
        else:
            self.run.load_adapter(model, sd)
        return None
