"""PILoRA (arXiv 2401.02094; ``Ghy0501/PILoRA``, ``PILoRA-cifar``): federated class-incremental
image classification on a frozen ViT with one LoRA per task on q and v of its first block and
learnable class prototypes, classified by the nearest prototype.

* Model: transformers' ``ViTModel`` (the demo's: tiny, from config, seeded, frozen); feature = the
  final CLS state (pre-logits). LoRA of rank r per task on block 0's query and value projections,
  added without scaling (q += B_q A_q x, v += B_v A_v x); A Kaiming-uniform (a = √5), B = 0.
  Task t's clients train slot t (and the current task's class prototypes) alone.
* Distance d_k(x) = sqrt((‖f‖² + ‖c_k‖² − 2 f·c_k) / D) to every class prototype c_k (init 0.1·randn).
* Loss (``CPN.py``, ``update.py``): CE(−d, y) over all classes + ``pull``·mean d_y + ``l1``·Σ_{q,v}
  ‖A_t‖₁ + ``ortho``·Σ_{j<t} Σ_{q,v} Σ|A_j A_tᵀ| (earlier tasks' A as the server holds them).
  Adam, prototypes at ``lr_centres``, LoRA at ``lr_lora``, weight decay 1e-5; the learning rates
  follow base·½(1 + cos(π·round/rounds)) over a task's rounds.
* A client also reports, per class it holds, the mean of its features over all local epochs.
* Server: each current class's prototype = Σ_k softmax(s'_k / 0.2) c_k over the clients holding it
  (``aggregate.pilora_centres``); the LoRA slots by FedAvg on data size.
* The global model (evaluation after each task): composition ``sum`` uses (B_0 + B_t)(A_0 + A_t)
  (what the official ``global_server`` writes for t > 0); ``first`` keeps task 0's LoRA alone (what
  that code does in effect: it matches a key the global model lacks, so t > 0 never lands). Test
  images of every task are classified among the prototypes of the classes seen so far.

Where we differ: the split is per class Dirichlet(β) over the clients through ``split.dirichlet_split``
(seeded, every image once; the official one redraws a fresh partition inside its per-client loop);
the official code's learning rates are the defaults, the demo raises the LoRA's for a tiny ViT
trained from scratch; a class no client holds keeps its prototype (the official weights 10
clients 0.1 each).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Callable, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from .._io import atomic_write, write_json
from ..lifelong.config import Strict
from ..lifelong.metrics import cl_metrics, save_matrix
from .aggregate import pilora_centres, weighted_mean
from .split import dirichlet_split, sample_clients


class PiloraSettings(Strict):
    """Official defaults where they exist (``train_d.sh``, ``options.py``): 30 clients, 10 per round,
    30 rounds per task, 10 local epochs, batch 64, r = 4, lr 2e-3 (prototypes) / 1e-5 (LoRA), β 0.5."""

    seed: int = 2023
    classes_per_task: int = Field(2, ge=1)
    clients: int = Field(30, ge=1)
    per_round: int = Field(10, ge=1)
    rounds_per_task: int = Field(30, ge=1)
    local_epochs: int = Field(10, ge=1)
    beta: float = Field(0.5, gt=0)
    batch_size: int = Field(64, ge=1)
    rank: int = Field(4, ge=1)
    lr_centres: float = Field(2e-3, gt=0)
    lr_lora: float = Field(1e-5, gt=0)
    weight_decay: float = Field(1e-5, ge=0)
    pull: float = Field(0.001, ge=0)
    l1: float = Field(0.01, ge=0)
    ortho: float = Field(0.5, ge=0)
    temperature: float = Field(0.2, gt=0)
    composition: Literal["sum", "first"] = "sum"
    pretrain_epochs: int = Field(30, ge=0)  # the stand-in backbone's pre-training on held-out images
    hidden: int = Field(32, ge=4)  # the tiny ViT (image 16x16, patch 4, 2 layers)
    layers: int = Field(2, ge=1)


# -- the model -------------------------------------------------------------------------------------

class TaskLoRA(torch.nn.Module):
    """A frozen Linear plus one rank-r LoRA per task; ``active``: the slot in use, or a pair of
    (A, B) weights set from outside (the global model's composition)."""

    def __init__(self, base: torch.nn.Linear, tasks: int, rank: int, gen: torch.Generator):
        super().__init__()
        self.base = base
        self.A = torch.nn.ParameterList()
        self.B = torch.nn.ParameterList()
        for _ in range(tasks):
            a = torch.empty(rank, base.in_features)
            bound = 1 / math.sqrt(base.in_features)  # kaiming_uniform_(a=√5) on a (rank, in) weight
            a.uniform_(-bound, bound, generator=gen)
            self.A.append(torch.nn.Parameter(a))
            self.B.append(torch.nn.Parameter(torch.zeros(base.out_features, rank)))
        self.active: int | tuple = 0

    def forward(self, x):
        a, b = (self.A[self.active], self.B[self.active]) if isinstance(self.active, int) else self.active
        return self.base(x) + (x @ a.T) @ b.T


class PiloraNet(torch.nn.Module):
    def __init__(self, s: PiloraSettings, classes: int, tasks: int, channels: int = 1, image: int = 16):
        super().__init__()
        from transformers import ViTConfig, ViTModel

        torch.manual_seed(s.seed)
        cfg = ViTConfig(hidden_size=s.hidden, num_hidden_layers=s.layers, num_attention_heads=4,
                        intermediate_size=2 * s.hidden, image_size=image, patch_size=4, num_channels=channels)
        self.vit = ViTModel(cfg, add_pooling_layer=False)
        for p in self.vit.parameters():
            p.requires_grad_(False)
        gen = torch.Generator().manual_seed(s.seed)
        att, names = _first_attention(self.vit)
        self.q = TaskLoRA(getattr(att, names[0]), tasks, s.rank, gen)
        self.v = TaskLoRA(getattr(att, names[1]), tasks, s.rank, gen)
        setattr(att, names[0], self.q)
        setattr(att, names[1], self.v)
        self.centres = torch.nn.Parameter(0.1 * torch.randn(classes, s.hidden, generator=gen))
        self.dim = s.hidden

    def features(self, x):
        return self.vit(pixel_values=x).last_hidden_state[:, 0]

    def distances(self, f):
        c = self.centres
        d2 = (f.pow(2).sum(1, keepdim=True) + c.pow(2).sum(1)[None] - 2 * f @ c.T) / self.dim
        return d2.clamp_min(1e-12).sqrt()

    def use(self, slot) -> None:
        self.q.active = slot if isinstance(slot, int) else slot[0]
        self.v.active = slot if isinstance(slot, int) else slot[1]

    def lora_state(self) -> dict[str, torch.Tensor]:
        return {f"{n}.{w}.{i}": p.detach().clone() for n, m in (("q", self.q), ("v", self.v))
                for w in ("A", "B") for i, p in enumerate(getattr(m, w))}

    def load(self, arrays: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for k, v in self.lora_state().items():
                n, w, i = k.split(".")
                getattr(getattr(self, n), w)[int(i)].copy_(arrays[k])
            self.centres.copy_(arrays["centres"])


def _first_attention(vit) -> tuple[torch.nn.Module, tuple[str, str]]:
    """Block 0's attention module and the names of its query and value projections (transformers
    4.x: ``encoder.layer.0.attention.attention.{query,value}``; 5.x: ``layers.0.attention.{q,v}_proj``)."""
    for name, module in vit.named_modules():
        for q, v in (("query", "value"), ("q_proj", "v_proj")):
            if name.split(".")[:2] in (["encoder", "layer"], ["layers", "0"]) and ".0." in f".{name}." \
                    and isinstance(getattr(module, q, None), torch.nn.Linear) and isinstance(getattr(module, v, None), torch.nn.Linear):
                return module, (q, v)
    raise ValueError("no query/value projections found in the ViT's first block")


def pilora_loss(net: PiloraNet, x, y, t: int, s: PiloraSettings, past_a: dict[str, list[torch.Tensor]]):
    """(loss, features) of one batch at task ``t`` (slot t active); ``past_a``: {"q"/"v": [A_j, j < t]}."""
    f = net.features(x)
    d = net.distances(f)
    loss = F.cross_entropy(-d, y) + s.pull * d.gather(1, y[:, None]).mean()
    for name, m in (("q", net.q), ("v", net.v)):
        a_t = m.A[t]
        loss = loss + s.l1 * a_t.abs().sum()
        for a_j in past_a[name]:
            loss = loss + s.ortho * (a_j @ a_t.T).abs().sum()
    return loss, f


# -- data -----------------------------------------------------------------------------------------

def digit_stream(pretrain: int = 300) -> dict:
    """sklearn's 8×8 digits upsampled to 16×16, one channel in [-1, 1]: the first ``pretrain`` images
    pre-train the backbone (PILoRA's ViT is pre-trained; ours stands in for it), the next ones up to
    1300 are the class stream's training images, the rest its test images."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 8.0 - 1.0
    x = F.interpolate(x, size=16, mode="nearest")
    y = torch.tensor(d.target, dtype=torch.int64)
    return {"pre_x": x[:pretrain], "pre_y": y[:pretrain], "train_x": x[pretrain:1300], "train_y": y[pretrain:1300],
            "test_x": x[1300:], "test_y": y[1300:]}


def pretrain_backbone(net: "PiloraNet", x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int) -> float:
    """Supervised pre-training of the whole ViT (LoRA off: B = 0) with a linear head on held-out
    images, then frozen again; returns the final training accuracy."""
    if epochs == 0 or len(x) == 0:
        return float("nan")
    head = torch.nn.Linear(net.dim, int(y.max()) + 1)
    params = [p for n, p in net.vit.named_parameters() if ".A." not in n and ".B." not in n]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params + list(head.parameters()), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    net.use(0)
    for _ in range(epochs):
        for batch in torch.randperm(len(x), generator=gen).split(32):
            loss = F.cross_entropy(head(net.features(x[batch])), y[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
    for p in net.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        return float((head(net.features(x)).argmax(1) == y).float().mean())


class PiloraRun:
    """The server of a federated class-incremental run: the class stream in tasks of
    ``classes_per_task`` classes, per task its rounds (sample, dispatch, aggregate, save), then the
    global model's accuracy on every task's test images. Resumable after every round."""

    def __init__(self, out: str | Path, s: PiloraSettings, say: Callable[[str], None] = print, data: dict | None = None):
        self.out, self.s, self.say = Path(out), s, say
        self.data = data
        self.state_file = self.out / "server" / "state.pt"

    def prepare(self) -> None:
        if (self.out / "run.json").exists():
            if json.loads((self.out / "run.json").read_text())["settings"] != self.s.model_dump():
                raise ValueError(f"{self.out} holds a PILoRA run with other settings; resume it with the same ones")
            return
        data = self.data or digit_stream()
        classes = int(data["train_y"].max()) + 1
        tasks = math.ceil(classes / self.s.classes_per_task)
        shards: dict[int, list[int]] = {c: [] for c in range(self.s.clients)}
        for k in range(classes):  # per class Dirichlet(β) over the clients
            idx = torch.nonzero(data["train_y"] == k).flatten().numpy()
            for c, part in enumerate(dirichlet_split(len(idx), self.s.clients, self.s.beta, 0, seed=self.s.seed + k)):
                shards[c] += idx[part].tolist()
        net = PiloraNet(self.s, classes, tasks)
        acc = pretrain_backbone(net, data.get("pre_x", torch.empty(0)), data.get("pre_y", torch.empty(0)),
                                self.s.pretrain_epochs, self.s.seed)
        atomic_write(self.out / "backbone.pt", lambda f: torch.save(net.vit.state_dict(), f))
        self.say(f"pilora: backbone pre-trained on {len(data.get('pre_x', []))} held-out images (train accuracy {acc:.2f})")
        atomic_write(self.out / "data.pt", lambda f: torch.save(data, f))
        write_json(self.out / "run.json", {"kind": "pilora", "settings": self.s.model_dump(), "classes": classes,
                                           "tasks": tasks, "shards": {str(c): sorted(v) for c, v in shards.items()}})

    def run(self, dispatch=None, stop_after: tuple[int, int] | None = None) -> dict:
        dispatch = dispatch or (lambda jobs, arrays: [fit(j, arrays) for j in jobs])
        self.out.mkdir(parents=True, exist_ok=True)
        self.prepare()
        doc = json.loads((self.out / "run.json").read_text())
        s, tasks, classes = self.s, doc["tasks"], doc["classes"]
        net = _net(self.out)
        if self.state_file.exists():
            state = torch.load(self.state_file, weights_only=False)
        else:  # saved before any client trains: a retry starts from it, not from a process's model
            state = {"arrays": {**net.lora_state(), "centres": net.centres.detach().clone()}, "next": [1, 0],
                     "history": [], "accuracy": [self._evaluate(net, None, 0, tasks, classes)]}
            atomic_write(self.state_file, lambda f: torch.save(state, f))
        for t in range(1, tasks + 1):
            for r in range(s.rounds_per_task):
                if [t, r] < state["next"]:
                    continue
                t0 = time.perf_counter()
                clients = sample_clients(t, r, s.clients, s.per_round, s.seed)
                jobs = [{"kind": "pilora", "out": str(self.out.resolve()), "client": c, "stage": t, "round": r}
                        for c in clients]
                replies = sorted(dispatch(jobs, state["arrays"]), key=lambda rep: rep[0]["client"])
                state["arrays"] = self._aggregate(state["arrays"], replies, t)
                state["next"] = [t, r + 1] if r + 1 < s.rounds_per_task else [t + 1, 0]
                state["history"].append({"stage": t, "round": r, "clients": clients,
                                         "n": [m["n"] for m, _ in replies], "loss": round(float(np.nanmean(
                                             [m["loss"] for m, _ in replies] + [np.nan])), 4), "seconds": round(time.perf_counter() - t0, 2)})
                if r + 1 == s.rounds_per_task:
                    state["accuracy"].append(self._evaluate(net, state["arrays"], t, tasks, classes))
                atomic_write(self.state_file, lambda f: torch.save(state, f))
                self.say(f"pilora task {t} round {r}: clients {clients}, loss {state['history'][-1]['loss']}")
                if stop_after == (t, r):
                    return {}
        a = np.array(state["accuracy"])
        save_matrix(self.out / "accuracy.json", a, [f"classes {self._classes(t, classes)}" for t in range(1, tasks + 1)])
        summary = {"method": "pilora", "tasks": [f"task {t}" for t in range(1, tasks + 1)], "accuracy": a.tolist(),
                   "metrics": cl_metrics(a), "chance": {f"task {t}": 1.0 / len(self._classes(t, classes))
                                                        for t in range(1, tasks + 1)}, "rounds": state["history"]}
        write_json(self.out / "summary.json", summary)
        return summary

    def _classes(self, t: int, classes: int) -> list[int]:
        k = self.s.classes_per_task
        return list(range((t - 1) * k, min(t * k, classes)))

    def _aggregate(self, arrays: dict, replies: list, t: int) -> dict:
        n = [m["n"] for m, _ in replies]
        if sum(n) == 0:  # no sampled client holds the task's classes: nothing to average
            return arrays
        new = weighted_mean([{k: v for k, v in a.items() if k != "centres" and not k.startswith("stat")}
                             for _, a in replies], n)
        centres = arrays["centres"].clone()
        for k in self._classes(t, len(centres)):
            holds = torch.tensor([a["stat_count"][k] > 0 for _, a in replies])
            c = pilora_centres(torch.stack([a["centres"][k] for _, a in replies]),
                               torch.stack([a["stat_sum"][k] / a["stat_count"][k].clamp_min(1) for _, a in replies]),
                               holds, self.s.temperature)
            if c is not None:
                centres[k] = c
        return {**new, "centres": centres}

    @torch.no_grad()
    def _evaluate(self, net: "PiloraNet", arrays: dict | None, t: int, tasks: int, classes: int) -> list[float]:
        """Accuracy on each task's test images among the classes seen after task t (row t)."""
        data = torch.load(self.out / "data.pt", weights_only=False)
        if arrays is not None:
            net.load(arrays)
        net.use(global_lora(net, t, self.s.composition) if t > 0 else 0)
        seen = self._classes(t, classes)[-1] + 1 if t > 0 else classes
        logits = -net.distances(net.features(data["test_x"]))[:, :seen]
        pred = logits.argmax(1)
        row = []
        for j in range(1, tasks + 1):
            mask = torch.isin(data["test_y"], torch.tensor(self._classes(j, classes)))
            row.append(float((pred[mask] == data["test_y"][mask]).float().mean()))
        return row


def global_lora(net: PiloraNet, t: int, composition: str) -> tuple:
    """The global model's (A, B) pairs for q and v after task t (1-based): (A_0 + A_{t-1}, B_0 +
    B_{t-1}) (``sum``; task 1: A_0, B_0), or task 1's alone (``first``)."""
    out = []
    for m in (net.q, net.v):
        a, b = m.A[0], m.B[0]
        if composition == "sum" and t > 1:
            a, b = a + m.A[t - 1], b + m.B[t - 1]
        out.append((a, b))
    return tuple(out)


_NETS: dict[str, PiloraNet] = {}


def _net(out: Path) -> PiloraNet:
    key = str(Path(out).resolve())
    if key not in _NETS:
        doc = json.loads((Path(out) / "run.json").read_text())
        net = PiloraNet(PiloraSettings.model_validate(doc["settings"]), doc["classes"], doc["tasks"])
        net.vit.load_state_dict(torch.load(Path(out) / "backbone.pt", weights_only=True))
        _NETS[key] = net
    return _NETS[key]


def fit(job: dict, arrays: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """One PILoRA client's round at task ``stage`` (1-based): slot t-1 and the task's prototypes
    trained on its images of the task's classes; replies its LoRA, prototypes, data size and per-class
    feature sums / counts over all local epochs."""
    out, c, t, r = Path(job["out"]), int(job["client"]), int(job["stage"]), int(job["round"])
    doc = json.loads((out / "run.json").read_text())
    s = PiloraSettings.model_validate(doc["settings"])
    net = _net(out)
    net.load(arrays)
    data = torch.load(out / "data.pt", weights_only=False)
    k = s.classes_per_task
    idx = torch.tensor(doc["shards"][str(c)], dtype=torch.int64)
    if len(idx):
        idx = idx[(data["train_y"][idx] >= (t - 1) * k) & (data["train_y"][idx] < t * k)]
    classes = doc["classes"]
    stat_sum, stat_count = torch.zeros(classes, s.hidden), torch.zeros(classes)
    meta = {"client": c, "stage": t, "round": r, "n": int(len(idx)), "loss": float("nan")}
    slot = t - 1
    net.use(slot)
    params = [net.q.A[slot], net.q.B[slot], net.v.A[slot], net.v.B[slot]]
    for p in net.parameters():
        p.requires_grad_(False)
    for p in params + [net.centres]:
        p.requires_grad_(True)
    factor = 0.5 * (1 + math.cos(math.pi * r / s.rounds_per_task))
    opt = torch.optim.Adam([{"params": [net.centres], "lr": s.lr_centres * factor},
                            {"params": params, "lr": s.lr_lora * factor}], weight_decay=s.weight_decay)
    current = torch.zeros(classes, dtype=torch.bool)
    current[(t - 1) * k: t * k] = True
    past = {"q": [net.q.A[j].detach() for j in range(slot)], "v": [net.v.A[j].detach() for j in range(slot)]}
    gen = torch.Generator().manual_seed(int(np.random.SeedSequence([s.seed, t, r, c]).generate_state(1)[0]))
    frozen = net.centres.detach()[~current].clone()  # earlier and later classes' prototypes stay (weight decay too)
    losses = []
    for _ in range(s.local_epochs if len(idx) else 0):
        for batch in torch.randperm(len(idx), generator=gen).split(s.batch_size):
            x, y = data["train_x"][idx[batch]], data["train_y"][idx[batch]]
            loss, f = pilora_loss(net, x, y, slot, s, past)
            opt.zero_grad()
            loss.backward()
            net.centres.grad[~current] = 0  # only the current task's prototypes learn
            opt.step()
            with torch.no_grad():
                net.centres[~current] = frozen
            losses.append(float(loss.detach()))
            stat_sum.index_add_(0, y, f.detach())
            stat_count += torch.bincount(y, minlength=classes)
    for p in net.parameters():
        p.requires_grad_(False)
    meta["loss"] = float(np.mean(losses)) if losses else float("nan")
    return meta, {**net.lora_state(), "centres": net.centres.detach().clone(), "stat_sum": stat_sum,
                  "stat_count": stat_count}


__all__ = ["PiloraNet", "PiloraRun", "PiloraSettings", "TaskLoRA", "digit_stream", "fit", "global_lora", "pilora_loss"]
