"""Forward hooks that keep each LoRA A/B module's input and (graph-attached) output."""

from __future__ import annotations

from contextlib import contextmanager

import torch

from .lora import LoraTarget


class Capture:
    def __init__(self, targets: list[LoraTarget]):
        self.targets = targets
        self.inputs: dict[int, torch.Tensor] = {}
        self.outputs: dict[int, torch.Tensor] = {}

    def _hook(self, key: int):
        def hook(module, args, output):
            if key in self.outputs:
                raise RuntimeError("a LoRA module ran twice in one forward; per-sample capture needs one call")
            self.inputs[key] = args[0].detach()
            self.outputs[key] = output

        return hook

    @contextmanager
    def active(self):
        handles = []
        for i, t in enumerate(self.targets):
            # first among A's hooks: A's own output, before a mixing hook (lifelong/experts.py) replaces it
            handles.append(t.lora_a.register_forward_hook(self._hook(2 * i), prepend=True))
            handles.append(t.lora_b.register_forward_hook(self._hook(2 * i + 1)))
        try:
            yield self
        finally:
            for h in handles:
                h.remove()

    def modules(self):
        """(weight shape, input (B, T, d_in), output tensor) per featurised weight, in order."""
        for i, t in enumerate(self.targets):
            for key, lin in ((2 * i, t.lora_a), (2 * i + 1, t.lora_b)):
                if key not in self.outputs:
                    raise RuntimeError(f"{t.name}: LoRA module did not run in the forward pass")
                yield lin.weight.shape, self.inputs[key], self.outputs[key]


@contextmanager
def grads_enabled_on(params: list[torch.nn.Parameter]):
    """Temporarily mark params trainable so the LoRA outputs carry a graph; restore afterwards."""
    before = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
    try:
        yield
    finally:
        for p, r in zip(params, before):
            p.requires_grad_(r)
