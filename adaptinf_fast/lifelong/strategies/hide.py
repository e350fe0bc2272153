"""``hide``: HiDe-LLaVA (arXiv 2503.12941) as its official code computes it (``HiDeMOELoraLinear``,
``prepare_inputs_labels_for_multimodal``), on the expert-LoRA layer and the task router.

* One LoRA of rank E·r on the language model's projections, E experts of rank r = ``lora.r``
  (E = ``hide.experts``, default: the run's number of tasks), scale ``lora.alpha / lora.r`` per
  expert (the official alpha is twice the full rank: the same scale 2 at our default 16 / 8).
  Each expert starts as A ~ N(0, 0.01) from its own seeded generator, B = 0.
* Stage t trains expert t alone, in every layer (the others get no gradient and no weight decay).
* Deployed after stage t: the task-general layers sum the trained experts, h = Wx + s (Σ_{i≤t} B_i)
  (Σ_{i≤t} A_i) x; the task-specific layers (``hide.specific_layers``, default the last decoder
  layer, all its projections) mix them, h = Wx + s Σ_i w_i B_i A_i x with w = softmax(sim / 0.1)
  from the router: sim_i = ½ [cos(f_img, a_i^img) + cos(f_txt, a_i^txt)] against per-task anchors,
  the running means of each task's training records' CLIP features (``router.clip``).
* Gradient features for stage t+1 come from that deployed model, routed per batch (stage 1: the
  initial adapter's view, expert 1 alone). A CKA report per stage (linear CKA of each layer's
  prompt-pooled hidden states with the new expert against the previous, on ``hide.probe``
  training prompts; the analysis that motivates the split, not used to choose it) goes to
  ``hide.json``; routing accuracy to ``eval.json``.
"""

from __future__ import annotations

import torch

from ..._io import write_json
from ...data.encoder import model_inputs
from ...ops.cka import linear_cka
from ..experts import Fused, OneHot, Soft
from ..steps import StageDir
from .routed import RoutedExperts


@torch.no_grad()
def layer_means(model, encoder, records: list[dict]) -> list[torch.Tensor]:
    """Per decoder layer, (N, H) float32 prompt-pooled hidden states (CKA's inputs)."""
    per_layer: list[list[torch.Tensor]] = []
    was = model.training
    model.eval()
    try:
        for rec in records:
            prompt, _ = encoder.encode_prompt(rec)
            with encoder.no_slots():
                kw = model_inputs(encoder.collate_prompts([prompt]), model)
            hidden = model(**kw, output_hidden_states=True).hidden_states[1:]
            if not per_layer:
                per_layer = [[] for _ in hidden]
            for i, h in enumerate(hidden):
                per_layer[i].append(h[0].float().mean(0).cpu())
    finally:
        model.train(was)
    return [torch.stack(rows) for rows in per_layer]


def layer_cka(a: list[torch.Tensor], b: list[torch.Tensor]) -> list[float]:
    """Linear CKA of matching layers of two models' hidden states (ops.cka, diagonal pairs)."""
    return [float(v) for v in linear_cka([(a, b)], pairs="diagonal")]


class Hide(RoutedExperts):
    settings = "hide"

    def specific_layers(self) -> tuple[int, ...]:
        return tuple(self.knobs.specific_layers)

    def deploy(self, model, encoder, sd: StageDir) -> None:
        if sd.router_pt.exists() and sd.hide_json.exists():
            return
        run, t = self.run, sd.t
        self.observe(sd)  # the anchor: the mean of the task's training records
        cka: list[float] = []
        if t > 1:  # the report: hidden states with the new expert against the previous one
            run.load_adapter(model, sd)
            probe = run.task_records(t)[: self.knobs.probe]
            with self.layer.mode(OneHot(t - 1)):
                new = layer_means(model, encoder, probe)
            with self.layer.mode(OneHot(t - 2)):
                old = layer_means(model, encoder, probe)
            cka = layer_cka(new, old)
        if run.rank == 0:
            torch.save(self.router.state_dict(), sd.router_pt)
            write_json(sd.hide_json, {"experts": self.experts, "expert_rank": self.layer.rank,
                                      "specific_layers": sorted(self.layer.specific),
                                      "router": {"clip": self.cfg.router.clip, "modalities": list(self.router.modalities),
                                                 "temperature": self.router.temperature},
                                      "cka": [round(v, 4) for v in cka]})
        run.barrier()

    def use(self, model, sd: StageDir):
        self.run.load_adapter(model, sd)
        if sd.t == 0:  # no expert trained yet: the initial adapter seen through the first expert
            self.layer.set(OneHot(0))
            return None
        self.load_router(sd.t)
        t, layer = sd.t, self.layer

        def route(records) -> None:
            layer.set(Fused(t), Soft(self.weights(records, t)))

        return route
