"""``modalprompt``: ModalPrompt (arXiv 2410.05849) as its official code computes it
(``ModalPrompt.py``, ``llava_arch.py``, ``llava_trainer.py``), on the task router.

* The model is frozen; the run's LoRA adapter stays at its initial state (B = 0: the identity) and
  is not trained. What trains, per task t: ``modalprompt.length`` (L, default 10) prompt vectors
  P_t (L × d, initialised as copies of random rows of the input embedding) and an MLP
  g_t: d → d, SiLU, d → D into the router's feature space (D: the CLIP features' width).
  Stage t trains P_t and g_t only; the other tasks' are not parameters of the optimiser at all.
  (The official code adds L tokens per task to the vocabulary, trains the whole embedding table and
  restores every other row before each step; a separate parameter gives the same training without
  touching other rows, and without that code's quirks: the last task's rows restored at every step,
  the final step's update kept in every other row.)
* Prototype of task i: p_i = mean over its L vectors of g_i(P_i[l]). A record's score for task i:
  c_i = ½ cos(f_img, p_i) + ½ cos(f_txt, p_i) with the router's CLIP features (image_embeds, the
  text tower's pooled instruction; ``router.clip``); uncentred.
* Prompts are fused by concatenation right after BOS at the input layer (positions the encoder
  reserves, ``Encoder.prompt_slots``): training task t uses the prompts of tasks 1..t in task order
  while t < K, else the top-(K−1) earlier tasks by c (ascending, so the best is next to P_t) and
  P_t; inference uses the top-min(t, K) tasks by c, ascending (the best next to the text). K =
  ``modalprompt.top_k`` (3, the official code's; MCITlib uses 1). The choice is per record, so a
  left-padded batch under ``generate`` answers as one by one.
* Loss: the LM loss + (1 − cos(f_img, p_t)) + (1 − cos(f_txt, p_t)), batch means; with Adapt-∞
  selection a stage also replays earlier tasks' records, and the feature terms apply to task t's
  own records only (in the official setting a stage trains on task t's data alone).
* After stage t the prompts and MLPs of tasks 1..t are saved with the stage (``modalprompt.pt``, at
  the end of training); the router's anchors are set to the prototypes (``router.pt``).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Sequence

import torch
from torch import nn

from ..._io import atomic_write, write_json
from ..routing import build_router
from ..steps import StageDir
from .base import Strategy, routing_accuracy


class PromptBank(nn.Module):
    """Per task: prompt vectors (L, d) and an MLP d → d → D; all tasks built (seeded) at once."""

    def __init__(self, embeddings: nn.Module, out_dim: int, length: int, tasks: int, seed: int):
        super().__init__()
        vocab, d = embeddings.weight.shape
        prompts, mlps = [], []
        for t in range(tasks):
            gen = torch.Generator().manual_seed(seed * 7_919 + t)
            rows = torch.randint(vocab, (length,), generator=gen)
            with torch.no_grad():  # through the module: a model that scales its embeddings (Gemma 3) is matched
                start = embeddings(rows.to(embeddings.weight.device))
            prompts.append(nn.Parameter(start.float().cpu().clone()))
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed * 7_919 + t)
                mlps.append(nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, out_dim)))
        self.prompts = nn.ParameterList(prompts)
        self.mlps = nn.ModuleList(mlps)

    def prototypes(self, upto: int) -> torch.Tensor:
        """(upto, D): p_i = mean_l g_i(P_i[l]) for the first ``upto`` tasks."""
        return torch.stack([self.mlps[i](self.prompts[i]).mean(0) for i in range(upto)])

    def trainable(self, task: int | None) -> None:
        """Only task ``task``'s prompts and MLP train (None: nothing)."""
        for i, (p, mlp) in enumerate(zip(self.prompts, self.mlps)):
            p.requires_grad_(i == task)
            mlp.requires_grad_(i == task)


def _cos(feats: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(feats.float(), dim=1) @ torch.nn.functional.normalize(protos.float(), dim=1).T


class ModalPrompt(Strategy):
    def __init__(self, run, name: str = "modalprompt"):
        super().__init__(run, name)
        self.knobs = self.cfg.modalprompt
        self.bank: PromptBank | None = None
        self.orders: list[list[int]] | None = None  # per row of the current batch: the tasks whose prompts fill it

    # -- set-up ------------------------------------------------------------------------------------
    def setup(self, model, encoder, fresh: bool) -> None:
        self.model, self.encoder = model, encoder
        self.router = build_router(self.cfg.router, model=model, encoder=encoder)
        feats = self.router.features(self.run.task_records(1)[:1])
        widths = {m: f.shape[1] for m, f in feats.items()}
        if len(set(widths.values())) != 1:
            raise ValueError(f"modalprompt compares one prototype with every modality: the router's features have "
                             f"widths {widths}; use a CLIP whose image and text features match (e.g. ViT-L/14: 768)")
        emb = model.get_input_embeddings()
        self.bank = PromptBank(emb, next(iter(widths.values())), self.knobs.length, len(self.run.tasks),
                               self.cfg.seed).to(emb.weight.device)
        self.bank.trainable(None)
        model.add_module("modalprompt_bank", self.bank)  # its parameters train with the model's (and under DDP)
        self._initial = {k: v.detach().clone() for k, v in self.bank.state_dict().items()}
        emb.register_forward_hook(self._fill)

    def _fill(self, module, args, out):
        """The input embeddings with the reserved positions filled by each row's chosen prompts."""
        enc, ids = self.encoder, args[0] if args else None
        mask = enc.slot_mask
        if self.orders is None or mask is None or ids is None or tuple(ids.shape) != tuple(mask.shape):
            return None  # not a prompted batch, a later generation step (one new token), a model's own lookup
        saved = enc.slot_ids.to(ids.device)
        same = ids == saved
        if enc.image_token_id is not None:  # a VLM may embed its image positions under another id
            same |= saved == enc.image_token_id
        if not bool(same.all()):
            raise RuntimeError("modalprompt: the input embeddings are not of the batch whose prompt positions the "
                               "encoder reserved (a batch collated in between without Encoder.no_slots?)")
        if len(self.orders) != mask.shape[0]:
            raise RuntimeError(f"modalprompt: prompt choices for {len(self.orders)} rows, a batch of {mask.shape[0]}")
        rows = torch.cat([self.bank.prompts[i] for order in self.orders for i in order])
        return out.masked_scatter(mask.to(out.device)[..., None], rows.to(out.dtype))

    def _load_bank(self, t: int) -> None:
        """The prompts and MLPs after stage ``t`` (stage 0: as initialised)."""
        state = self._initial if t == 0 else torch.load(self._bank_file(t), weights_only=True)
        self.bank.load_state_dict(state)

    def _bank_file(self, t: int):
        return StageDir(self.run.pool, t).path / "modalprompt.pt"

    # -- choosing prompts --------------------------------------------------------------------------
    def scores(self, feats: dict[str, torch.Tensor], upto: int) -> torch.Tensor:
        """(N, upto): c_i = mean over the router's modalities of cos(f_m, p_i)."""
        with torch.no_grad():
            protos = self.bank.prototypes(upto)
        return torch.stack([_cos(f, protos.to(f.device)) for f in feats.values()]).mean(0).cpu()

    def train_orders(self, c: torch.Tensor, t: int) -> list[list[int]]:
        """Training task t (1-based): tasks 1..t in order while t < K, else the top-(K−1) earlier ones by c
        (ascending) and t itself."""
        k = self.knobs.top_k
        if t < k:
            return [list(range(t)) for _ in range(c.shape[0])]
        if k == 1:
            return [[t - 1] for _ in range(c.shape[0])]
        top = torch.topk(c[:, : t - 1], k - 1, dim=1).indices.flip(1)  # ascending: best next to P_t
        return [row + [t - 1] for row in top.tolist()]

    def infer_orders(self, c: torch.Tensor, t: int) -> list[list[int]]:
        """Inference after stage t: the top-min(t, K) tasks by c, ascending (the best next to the text)."""
        return torch.topk(c[:, :t], min(t, self.knobs.top_k), dim=1).indices.flip(1).tolist()

    # -- training ----------------------------------------------------------------------------------
    @contextmanager
    def training(self, t: int):
        from peft.tuners.lora import LoraLayer

        self._load_bank(t - 1)
        lora = [p for m in self.model.modules() if isinstance(m, LoraLayer) for p in m.parameters() if p.requires_grad]
        for p in lora:  # the model, its LoRA adapter included, is frozen
            p.requires_grad_(False)
        self.bank.trainable(t - 1)
        self.encoder.prompt_slots = min(t, self.knobs.top_k) * self.knobs.length
        try:
            yield self
            if self.run.rank == 0:  # P_t and g_t trained: saved with the stage before it commits
                state = {k: v.detach().cpu() for k, v in self.bank.state_dict().items()}
                atomic_write(self._bank_file(t), lambda f: torch.save(state, f))
            self.run.barrier()
        finally:
            self.bank.trainable(None)
            for p in lora:
                p.requires_grad_(True)
            self.orders, self.encoder.prompt_slots = None, 0

    def train_hooks(self, t: int, records: Sequence[dict], collate: Callable):
        ids = [r["id"] for r in records]
        feats = self.router.features(list(records))  # frozen CLIP features of the stage's training records
        row_of = {i: k for k, i in enumerate(ids)}
        own = {r["id"] for r in self.run.task_records(t)}
        mine = torch.tensor([i in own for i in ids])  # the feature loss pulls p_t towards task t's records only
        c = self.scores(feats, t)
        orders = self.train_orders(c, t)
        current: dict[str, torch.Tensor] = {}

        def hooked(items: list[dict]) -> dict:
            rows = torch.tensor([row_of[it["_id"]] for it in items])
            self.orders = [orders[r] for r in rows.tolist()]
            keep = rows[mine[rows]]
            current.clear()
            current.update({m: f[keep.to(f.device)] for m, f in feats.items()})
            return collate(items)

        def extra_loss() -> torch.Tensor:
            """Σ over the batch's rows of task t of Σ_m (1 − cos(f_m, p_t)) (replayed rows add 0)."""
            proto = self.bank.mlps[t - 1](self.bank.prompts[t - 1]).mean(0)
            return sum((1.0 - _cos(f.to(proto.device), proto[None])[:, 0]).sum() for f in current.values())

        return hooked, extra_loss

    # -- after a stage ----------------------------------------------------------------------------
    def deploy(self, model, encoder, sd: StageDir) -> None:
        info = sd.path / "modalprompt.json"
        if sd.router_pt.exists() and info.exists():
            return
        self._load_bank(sd.t)
        with torch.no_grad():
            protos = self.bank.prototypes(sd.t).cpu()
        for i in range(sd.t):  # the router's anchors: the prototypes (for reports and re-use)
            self.router.set_anchor(i, {m: protos[i] for m in self.router.modalities})
        if self.run.rank == 0:
            torch.save(self.router.state_dict(), sd.router_pt)
            write_json(info, {"length": self.knobs.length, "top_k": self.knobs.top_k, "tasks": sd.t,
                              "prompt_dim": int(self.bank.prompts[0].shape[1]),
                              "feature_dim": int(protos.shape[1]),
                              "router": {"clip": self.cfg.router.clip, "modalities": list(self.router.modalities)}})
        self.run.barrier()

    def use(self, model, sd: StageDir):
        self.run.load_adapter(model, sd)
        self._load_bank(sd.t)
        if sd.t == 0:
            self.orders, self.encoder.prompt_slots = None, 0
            return None
        t = sd.t
        self.encoder.prompt_slots = min(t, self.knobs.top_k) * self.knobs.length

        def route(records) -> None:
            self.orders = self.infer_orders(self.scores(self.router.features(list(records)), t), t)

        return route

    def report(self, sd: StageDir, tests: dict[str, list]) -> dict:
        if sd.t == 0:
            return {}
        self._load_bank(sd.t)  # the best-matching prompt: the task's own?
        return {"routing": routing_accuracy(tests, sd.t, lambda recs: self.scores(self.router.features(recs), sd.t))}


__all__ = ["ModalPrompt", "PromptBank"]
