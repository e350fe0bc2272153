"""Finding the LoRA modules to featurise, in the documented order.

Order (it fixes which rows of R each parameter uses): decoder layers of the language model in
increasing index; inside a layer, modules in ``model.named_modules()`` order; for each module
``lora_A.weight`` then ``lora_B.weight``, each flattened out-major like its ``.grad``. The vision
tower and projector are never featurised.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import torch

_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")
_SKIP = ("vision_tower", "vision_model", "multi_modal_projector")


@dataclass
class LoraTarget:
    name: str  # the LoRA-wrapped module, e.g. base_model.model.model.layers.3.self_attn.q_proj
    layer: int
    lora_a: torch.nn.Linear
    lora_b: torch.nn.Linear

    @property
    def params(self) -> list[tuple[str, torch.nn.Parameter]]:
        return [(f"{self.name}.lora_A.weight", self.lora_a.weight), (f"{self.name}.lora_B.weight", self.lora_b.weight)]


def find_lora_targets(model: torch.nn.Module, layers: str | Sequence[int] = "last") -> list[LoraTarget]:
    """LoRA modules of the chosen language-model decoder layers (``"last"``, ``"all"`` or indices)."""
    found: list[LoraTarget] = []
    for name, module in model.named_modules():
        lora_a, lora_b = getattr(module, "lora_A", None), getattr(module, "lora_B", None)
        if not isinstance(lora_a, torch.nn.ModuleDict) or not isinstance(lora_b, torch.nn.ModuleDict):
            continue
        if any(s in name for s in _SKIP):
            continue
        match = _LAYER.search(name)
        if match is None:
            continue
        adapter = getattr(module, "active_adapters", None) or list(lora_a.keys())
        adapter = adapter[0] if isinstance(adapter, (list, tuple)) else adapter
        if adapter not in lora_a:
            continue
        if getattr(module, "use_dora", {}).get(adapter, False):
            raise ValueError(f"{name} uses DoRA; only plain LoRA layers can be featurised")
        a, b = lora_a[adapter], lora_b[adapter]
        if not isinstance(a, torch.nn.Linear) or not isinstance(b, torch.nn.Linear):
            raise ValueError(f"{name}: LoRA A/B must be nn.Linear (got {type(a).__name__}, {type(b).__name__})")
        found.append(LoraTarget(name, int(match.group(1)), a, b))
    if not found:
        raise ValueError("the model has no LoRA layers in its language-model decoder layers; wrap it with peft "
                         "(LoraConfig with target_modules on the decoder's linear layers) first")
    available = sorted({t.layer for t in found})
    if layers == "all":
        chosen = set(available)
    elif layers == "last":
        chosen = {available[-1]}
    else:
        chosen = {int(i) if int(i) >= 0 else available[-1] + 1 + int(i) for i in layers}
        missing = sorted(chosen - set(available))
        if missing:
            raise ValueError(f"layers {missing} have no LoRA modules (layers with LoRA: {available})")
    order = {id(t): k for k, t in enumerate(found)}
    return sorted((t for t in found if t.layer in chosen), key=lambda t: (t.layer, order[id(t)]))
