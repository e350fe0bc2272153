"""``disco``: DISCO (arXiv 2503.12897, the method of the FCIT benchmark) as MCITlib's centralised
port computes it (``DISCO/``: ``clitmoelora.py``, ``llava_arch.py``), on the expert-LoRA layer and
the task router.

* One LoRA of rank E·r, E subspaces of rank r = ``lora.r`` (E = ``disco.experts``, default one per
  task), on the language model's MLP projections (``disco.targets: mlp``, FCIT's choice; ``all``:
  every projection, as the centralised port); each subspace A ~ N(0, 0.01), B = 0, scale
  ``lora.alpha / lora.r``.
* Stage t trains subspace t alone, in every layer.
* A task's text prototype is the mean text feature of its training records (the router's anchor,
  text only: the CLIP text tower's pooled instruction, ``router.clip``).
* Deployed after stage t: every LoRA layer mixes the subspaces learned so far,
  h = Wx + s Σ_{i≤t} w_i B_i A_i x, w = softmax(cos(f_txt, prototype_i) / ``disco.temperature``)
  (0.05), per record.
"""

from __future__ import annotations

import torch

from ..._io import write_json
from ..config import RouterSettings
from ..experts import OneHot, Soft
from ..models import LLM_MLP
from ..steps import StageDir
from .routed import RoutedExperts


class Disco(RoutedExperts):
    settings = "disco"

    @property
    def projections(self):
        return LLM_MLP if self.knobs.targets == "mlp" else None

    def router_settings(self) -> RouterSettings:
        """Text only, at DISCO's temperature, with the run's CLIP folder (if any)."""
        return RouterSettings(clip=self.cfg.router.clip, temperature=self.knobs.temperature, modalities=["text"])

    def deploy(self, model, encoder, sd: StageDir) -> None:
        info = sd.path / "disco.json"
        if sd.router_pt.exists() and info.exists():
            return
        self.observe(sd)
        if self.run.rank == 0:
            torch.save(self.router.state_dict(), sd.router_pt)
            write_json(info, {"experts": self.experts, "expert_rank": self.layer.rank, "targets": self.knobs.targets,
                              "router": {"clip": self.cfg.router.clip, "modalities": ["text"],
                                         "temperature": self.knobs.temperature}})
        self.run.barrier()

    def use(self, model, sd: StageDir):
        self.run.load_adapter(model, sd)
        if sd.t == 0:  # nothing learned yet: the initial adapter seen through the first subspace
            self.layer.set(OneHot(0))
            return None
        self.load_router(sd.t)
        t, layer = sd.t, self.layer

        def route(records) -> None:
            layer.set(Soft(self.weights(records, t)))  # every layer: the same per-record mixture

        return route


__all__ = ["Disco"]
