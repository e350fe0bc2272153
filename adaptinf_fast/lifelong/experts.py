"""Several low-rank experts in every LoRA layer, mixed per sample (DESIGN §8's expert-LoRA layer).

A PEFT LoRA adapter of rank E·r_e is read as E experts of rank r_e: expert e of a layer is rows
[e r_e, (e + 1) r_e) of its A (E r_e, d_in) and the same columns of its B (d_out, E r_e), so the
experts save, load, train under accelerate / DDP and feed the featurizer as one ordinary adapter.
Between A and B each layer mixes the rank slots, y = A x → y' = M y → B y', by its mode:

* ``OneHot(e)``: expert e alone, h = W x + s B_e A_e x (training expert e: the others contribute
  nothing and get exactly zero gradient);
* ``Soft(w)``: h = W x + s Σ_e w[b, e] B_e A_e x with per-sample weights ``w`` (B, E), set for one
  batch (a hard choice is a one-hot row); the batch's rows must match the inputs' (left-padded
  ``generate`` keeps them across decoding steps);
* ``Fused(n)``: h = W x + s (Σ_{e<n} B_e)(Σ_{e<n} A_e) x, the sums of the first n experts, cross
  terms included (HiDe-LLaVA's task-general layers);
* no mode: the plain adapter, Σ_e B_e A_e x.

Modes are set per layer class: ``general`` for every layer, ``specific`` for the decoder layers in
``specific_layers`` (negative indices count from the last). The mixing is a forward hook on each
layer's ``lora_A`` that replaces its output; a featurizer's capture hook registered before it
(``prepend=True``) sees A's own output, so per-sample gradients stay exact (autograd runs through
the mixing).
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass

import torch

_LAYER = re.compile(r"\.layers\.(\d+)\.")


def layer_of(name: str) -> int | None:
    """Decoder-layer index of a module or weight name: None outside a ``layers.N`` block and on the
    vision side of a VLM (its tower's blocks are numbered too, but the depth is the language model's)."""
    from .models import VISION_PARTS

    m = _LAYER.search(name)
    if m is None or any(part in name for part in VISION_PARTS):
        return None
    return int(m.group(1))


@dataclass(frozen=True)
class OneHot:
    expert: int

    def apply(self, y: torch.Tensor, experts: int) -> torch.Tensor:
        r = y.shape[-1] // experts
        mask = torch.zeros(y.shape[-1], dtype=y.dtype, device=y.device)
        mask[self.expert * r : (self.expert + 1) * r] = 1
        return y * mask


@dataclass(frozen=True, eq=False)
class Soft:
    weights: torch.Tensor  # (B, E) per-sample mixture weights

    def apply(self, y: torch.Tensor, experts: int) -> torch.Tensor:
        w = self.weights
        if w.shape != (y.shape[0], experts):
            raise ValueError(f"expert weights of shape {tuple(w.shape)} for a batch of {y.shape[0]} rows and "
                             f"{experts} experts; set them for this batch")
        scale = w.to(y.device, y.dtype).repeat_interleave(y.shape[-1] // experts, dim=1)
        return y * scale.view(y.shape[0], *([1] * (y.dim() - 2)), y.shape[-1])


@dataclass(frozen=True)
class Fused:
    n: int  # experts 0 .. n - 1

    def apply(self, y: torch.Tensor, experts: int) -> torch.Tensor:
        r = y.shape[-1] // experts
        slots = y.reshape(*y.shape[:-1], experts, r)
        total = slots[..., : self.n, :].sum(-2, keepdim=True)
        rest = torch.zeros_like(slots[..., self.n :, :])
        return torch.cat([total.expand(*slots.shape[:-2], self.n, r), rest], dim=-2).reshape(y.shape)


Mode = OneHot | Soft | Fused | None


class ExpertLoRA:
    """``experts`` experts in every LoRA layer of a PEFT ``model`` (its rank a multiple of them).

    Args:
        model: a PeftModel with one LoRA adapter ("default") of rank E·r_e.
        experts: E.
        specific_layers: decoder-layer indices whose LoRA layers take the ``specific`` mode.
    """

    def __init__(self, model, experts: int, specific_layers: tuple[int, ...] = ()):
        from peft.tuners.lora import LoraLayer

        self.experts = experts
        self.layers = [(name, m) for name, m in model.named_modules() if isinstance(m, LoraLayer) and "default" in m.lora_A]
        if not self.layers:
            raise ValueError("the model has no LoRA layers (a PeftModel with a 'default' LoRA adapter)")
        rank = self.layers[0][1].r["default"]
        if experts < 1 or rank % experts:
            raise ValueError(f"LoRA rank {rank} is not a multiple of {experts} experts")
        self.rank = rank // experts
        indices = [layer_of(n) for n, _ in self.layers if layer_of(n) is not None]
        depth = max(indices) + 1 if indices else 0
        self.specific = {i % depth if depth else i for i in specific_layers}
        self.general_mode: Mode = None
        self.specific_mode: Mode = None
        self._handles = [m.lora_A["default"].register_forward_hook(self._hook(name)) for name, m in self.layers]

    def _hook(self, name: str):
        specific = layer_of(name) in self.specific

        def hook(module, args, out):
            mode = self.specific_mode if specific else self.general_mode
            return None if mode is None else mode.apply(out, self.experts)

        return hook

    def set(self, general: Mode, specific: Mode | str = "same") -> None:
        """Modes for the general layers and the specific ones (default: the same)."""
        self.general_mode = general
        self.specific_mode = general if isinstance(specific, str) else specific

    @contextmanager
    def mode(self, general: Mode, specific: Mode | str = "same"):
        before = (self.general_mode, self.specific_mode)
        self.set(general, specific)
        try:
            yield self
        finally:
            self.general_mode, self.specific_mode = before

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    @torch.no_grad()
    def init_experts(self, seed: int, std: float = 0.01) -> None:
        """HiDe-LLaVA's initialisation, each expert its own: A_e ~ N(0, std) from a generator seeded by
        (seed, e) over the layers in order, B_e = 0."""
        gens = [torch.Generator().manual_seed(seed * 100_003 + e) for e in range(self.experts)]
        for _, m in self.layers:
            a, b = m.lora_A["default"].weight, m.lora_B["default"].weight
            for e, g in enumerate(gens):
                rows = slice(e * self.rank, (e + 1) * self.rank)
                a[rows] = (torch.randn(self.rank, a.shape[1], generator=g) * std).to(a.device, a.dtype)
            b.zero_()

    def expert_state(self, state: dict[str, torch.Tensor], expert: int) -> dict[str, torch.Tensor]:
        """Expert ``expert`` of an adapter state dict as a plain rank-r_e LoRA state."""
        rows = slice(expert * self.rank, (expert + 1) * self.rank)
        out = {}
        for k, v in state.items():
            if ".lora_A." in k:
                out[k] = v[rows].clone()
            elif ".lora_B." in k:
                out[k] = v[:, rows].clone()
            else:
                out[k] = v
        return out
