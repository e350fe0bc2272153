"""GradientFeaturizer: per-sample projected LoRA gradients and scores in one batched pass (DESIGN §2.1)."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

from .._io import progress_bar
from ..data.encoder import Encoder, collate, encode_many, model_inputs
from ..ops.projection import project
from ..ops.projection.linear_grads import project_linear_grads
from .capture import Capture, grads_enabled_on
from .featureset import FeatureSet
from .gradbuffer import DEFAULT_SAMPLES, GradientBuffer, default_capacity
from .lora import find_lora_targets
from .scores import RULES, SCORES, mean_over_response, sample_scores, token_stats

log = logging.getLogger("adaptinf_fast")


def _dist():
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist
    return None


def blank_images(kwargs: dict) -> torch.Tensor:
    """The release's image ablation: every pixel 0 (after normalisation: the mean colour). Idefics3 /
    SmolVLM (the models given a ``pixel_attention_mask``) take an all-zero image for batch padding and
    drop it, so there a real image's pixels become the smallest normal float instead: the same blank
    image to the vision tower's arithmetic, still counted as an image."""
    pv = kwargs["pixel_values"]
    blank = torch.zeros_like(pv)
    if "pixel_attention_mask" in kwargs and pv.dim() >= 4:
        real = pv.flatten(-3).ne(0).any(-1)  # (B, images): the padding images stay all zero
        blank[real] = torch.finfo(pv.dtype).tiny
    return blank


class GradientFeaturizer:
    """Per-sample gradient features of a PEFT LoRA model, plus the per-sample scores of DESIGN §4.4.

    Each sample's loss is the mean NLL over its own response tokens (labels != -100); its exact
    gradient w.r.t. the LoRA A and B weights of the chosen decoder layers — laid end to end in the
    order ``features.lora`` documents, each flattened like its ``.grad`` — is projected to ``out_dim``
    with ``project`` semantics (dense mode: exactly ``project`` of the concatenated gradient) and
    L2-normalised. One forward+backward per batch; dropout is off during the pass; the model's
    weights, ``.grad`` and ``requires_grad`` flags are left as they were.

    Args:
        model: a ``peft`` ``PeftModel`` (or task subclass) over a causal LM or ``LlavaForConditionalGeneration``.
        layers: ``"last"``, ``"all"`` or a list of decoder-layer indices (negative counts from the end).
        out_dim: projection width k. seed: seed of R.
        mode: ``"dense"`` or ``"factored"`` (Kronecker sketch, see ``project_linear_grads``).
        normalize: L2-normalise the features.
        scores: subset of ``("ppl", "el2n", "entropy", "grand", "ig")``.
        optimizer_state: LESS-style Adam preconditioning m'/(sqrt(v')+eps) of each per-sample
            gradient: a ``torch.optim.Adam/AdamW`` over the LoRA parameters, or a dict mapping
            parameter names (``model.named_parameters()``) to ``{"exp_avg", "exp_avg_sq"}`` (optional
            keys ``"betas"``, ``"eps"``). Needs the dense mode.
        tokenizer: for LLaVA-style conversation records (HF tokenizer). image_root: folder of images.
        image_processor: the model's image processor (see ``Encoder.for_model``); default our resize.
        max_length: longest sequence; longer ones are truncated (counted in the log) or, with
            ``on_overflow="error"``, reported and skipped.
        backend: projection backend.
        project_samples: dense mode, ``extract``: per-sample gradients of this many samples (several
            batches) are kept on the model's device and projected in one launch, so each generated
            tile of R serves them all (a 16-sample batch alone leaves the kernel bound by generating
            R). Features equal the per-batch projection up to float32 summation order.
        project_memory: bytes that buffer may take (float32 rows × samples); default a quarter of
            the GPU's free memory, 2 GiB on CPU. When not even one batch fits, each batch is
            projected tile by tile as it comes (no buffer).
        rules: ``"adaptinf"`` (DESIGN §4.4) or ``"release"``: the release's score formulas — ppl =
            mean exp(ℓ), entropy over every attended position, ig with the image's pixels zeroed
            (its tokens kept) and ppl_without = exp(mean ℓ), grand the norm of the (Adam-
            preconditioned, when configured) gradient that is projected. Features are unchanged.
    """

    def __init__(self, model, *, layers: str | Sequence[int] = "last", out_dim: int = 8192, seed: int = 0,
                 mode: str = "dense", normalize: bool = True, scores: Sequence[str] = SCORES,
                 optimizer_state: Any = None, kind: str = "rademacher", tokenizer: Any = None,
                 image_root: str | Path | None = None, max_length: int | None = None,
                 on_overflow: str = "truncate", backend: str = "auto", project_samples: int = DEFAULT_SAMPLES,
                 project_memory: int | None = None, rules: str = "adaptinf", image_processor: Any = None,
                 encoder: Encoder | None = None):
        if rules not in RULES:
            raise ValueError(f"rules is {rules!r}; expected one of {RULES}")
        self.rules = rules
        if mode not in ("dense", "factored"):
            raise ValueError(f"mode is {mode!r}; expected 'dense' or 'factored'")
        unknown = set(scores) - set(SCORES)
        if unknown:
            raise ValueError(f"unknown scores {sorted(unknown)}; expected a subset of {SCORES}")
        if optimizer_state is not None and mode == "factored":
            raise ValueError("Adam preconditioning (optimizer_state) is elementwise on the full per-sample "
                             "gradient, which the factored sketch never forms: use mode='dense'")
        if on_overflow not in ("truncate", "error"):
            raise ValueError(f"on_overflow is {on_overflow!r}; expected 'truncate' or 'error'")
        if isinstance(project_samples, bool) or not isinstance(project_samples, int) or project_samples < 1:
            raise ValueError(f"project_samples is {project_samples!r}; expected a positive int")
        self.project_samples, self.project_memory = project_samples, project_memory
        self._routing = None  # (before_batch, the batch's items) while extract runs a batch
        self.model, self.out_dim, self.seed, self.mode, self.kind = model, out_dim, seed, mode, kind
        self.normalize, self.scores, self.backend = normalize, tuple(scores), backend
        self.targets = find_lora_targets(model, layers)
        self.params = [p for t in self.targets for _, p in t.params]
        names = {id(p): n for n, p in model.named_parameters()}
        self.param_names = [names.get(id(p), f"{t.name}.{which}") for t in self.targets
                            for which, p in zip(("lora_A.weight", "lora_B.weight"), (t.lora_a.weight, t.lora_b.weight))]
        self.offsets, offset = [], 0
        for p in self.params:
            self.offsets.append(offset)
            offset += p.numel() if mode == "dense" else sum(p.shape)
        self.total_rows = offset
        self._adam = self._adam_state(optimizer_state) if optimizer_state is not None else None
        # ``encoder``: a caller's own (e.g. the lifelong run's, whose prompt slots a strategy fills)
        self.encoder = encoder if encoder is not None else Encoder.for_model(
            model, tokenizer, image_root=image_root, max_length=max_length, on_overflow=on_overflow,
            image_processor=image_processor)

    # -- configuration ---------------------------------------------------------------------------
    @property
    def meta(self) -> dict:
        return {"out_dim": self.out_dim, "seed": self.seed, "mode": self.mode, "kind": self.kind,
                "normalize": self.normalize, "scores": list(self.scores), "params": self.param_names,
                "preconditioned": self._adam is not None, "rules": self.rules}

    def _adam_state(self, state: Any) -> list[tuple[torch.Tensor, torch.Tensor, float, float, float]]:
        out = []
        if isinstance(state, torch.optim.Optimizer):
            group_of = {id(p): g for g in state.param_groups for p in g["params"]}
            for name, p in zip(self.param_names, self.params):
                s = state.state.get(p)
                if not s or "exp_avg" not in s:
                    raise ValueError(f"optimizer has no Adam state for {name} (run a step first)")
                b1, b2 = group_of[id(p)]["betas"]
                out.append((s["exp_avg"], s["exp_avg_sq"], b1, b2, group_of[id(p)]["eps"]))
            return out
        if not isinstance(state, dict):
            raise TypeError("optimizer_state must be a torch.optim.Optimizer or a dict name -> {exp_avg, exp_avg_sq}")
        for name in self.param_names:
            if name not in state:
                raise ValueError(f"optimizer_state has no entry for {name}")
            s = state[name]
            b1, b2 = s.get("betas", (0.9, 0.999))
            out.append((s["exp_avg"], s["exp_avg_sq"], b1, b2, s.get("eps", 1e-8)))
        return out

    # -- one batch -----------------------------------------------------------------------------
    def featurize_batch(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """Features (B, k) float32, scores name -> (B,) float32, valid (B,) bool (samples with a
        response). Invalid samples get zero features and NaN scores."""
        feats, scores, valid = self._pass(batch, None)
        return self._finish(feats, valid), scores, valid

    def _finish(self, feats: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        if self.normalize:
            feats = torch.nn.functional.normalize(feats, dim=1)
        feats[~valid.to(feats.device)] = 0
        return feats.cpu()

    def _pass(self, batch: dict, buffer: GradientBuffer | None):
        """One forward+backward: (unnormalised projections (B, k), or None when the per-sample
        gradients went to ``buffer``; scores; valid)."""
        model = self.model
        device = next(model.parameters()).device
        kwargs = model_inputs(batch, model)  # the processor's extra inputs (image_grid_thw, ...) too
        ids = kwargs["input_ids"]
        labels = batch["labels"].to(device)
        attn = kwargs.setdefault("attention_mask", torch.ones_like(ids))
        was_training = model.training
        model.eval()  # dropout off
        capture = Capture(self.targets)
        try:
            with grads_enabled_on(self.params), capture.active(), torch.enable_grad():
                out = model(**kwargs, use_cache=False)
                nll, resp, logp = token_stats(out.logits, labels)
                n_resp = resp.sum(1)
                valid = n_resp > 0
                loss = (nll.sum(1) / n_resp.clamp_min(1))[valid].sum()
                outputs = [o for _, _, o in capture.modules()]
                grads = torch.autograd.grad(loss, outputs, allow_unused=True) if valid.any() else [None] * len(outputs)
            scores = sample_scores(nll.detach(), resp, logp.detach(), rules=self.rules,
                                   last_logits=out.logits[:, -1].detach(), attn=attn)
            del out, logp
            if buffer is None:
                feats, sq = self._project(capture, grads, attn.bool())
            else:
                feats, sq = None, self._to_buffer(capture, grads, attn.bool(), buffer)
            if "ig" in self.scores:
                scores["ig"] = self._image_grounding(kwargs, labels, scores["ppl"])
        finally:
            model.train(was_training)
        scores["grand"] = sq.sqrt()
        scores = {k: torch.where(valid, v.float(), torch.full_like(v.float(), float("nan"))).cpu()
                  for k, v in scores.items() if k in self.scores}
        return feats, scores, valid.cpu()

    def _sample_grads(self, capture: Capture, grads, mask: torch.Tensor):
        """(parameter index, exact per-sample gradient (B, numel) float32, flattened like ``.grad``,
        Adam-preconditioned when configured) for every featurised parameter."""
        keep = mask.unsqueeze(-1)
        zero = torch.zeros((), device=mask.device)
        for k, ((shape, x, out), g) in enumerate(zip(capture.modules(), grads)):
            g = torch.zeros_like(out) if g is None else g.detach()
            # `where`, not a product: NaN in padding stays out
            w = torch.einsum("bto,bti->boi", torch.where(keep, g.float(), zero), torch.where(keep, x.float(), zero))
            yield k, w.reshape(w.shape[0], -1)

    def _to_buffer(self, capture: Capture, grads, mask: torch.Tensor, buffer: GradientBuffer) -> torch.Tensor:
        """Write the batch's per-sample gradients into ``buffer``; returns squared norms (B,)."""
        b = mask.shape[0]
        sq = torch.zeros(b, dtype=torch.float64, device=mask.device)
        for k, w in self._sample_grads(capture, grads, mask):
            pre = self._precondition(k, w) if self._adam is not None else w
            # grand: ours of the raw gradient (DESIGN §4.4), the release's of the vector it projects
            sq += (pre if self.rules == "release" else w).double().pow(2).sum(1)
            buffer.block(b, self.offsets[k], w.shape[1]).copy_(pre)
        bad = ~torch.isfinite(sq)
        if bad.any():
            raise ValueError(f"{int(bad.sum())} sample(s) have NaN/Inf gradients (first: {bad.nonzero().flatten()[:5].tolist()})")
        buffer.commit(b)
        return sq.float()

    def _precondition(self, k: int, w: torch.Tensor) -> torch.Tensor:
        m, v, b1, b2, eps = self._adam[k]
        m_new = b1 * m.float().to(w.device).reshape(1, -1) + (1 - b1) * w
        v_new = b2 * v.float().to(w.device).reshape(1, -1) + (1 - b2) * w.pow(2)
        return m_new / (v_new.sqrt() + eps)

    def _project(self, capture: Capture, grads, mask: torch.Tensor):
        """Project each batch on its own (``featurize_batch``, factored mode, or no room for a buffer)."""
        b = mask.shape[0]
        device = mask.device
        acc = torch.zeros(b, self.out_dim, device=device)
        sq = torch.zeros(b, device=device)
        if self._adam is not None:
            for k, w in self._sample_grads(capture, grads, mask):
                w_pre = self._precondition(k, w)
                sq += (w_pre if self.rules == "release" else w).double().pow(2).sum(1).float()
                project(w_pre, self.out_dim, seed=self.seed, kind=self.kind,
                        row_offset=self.offsets[k], out=acc, backend=self.backend)
            return acc, sq
        for k, ((shape, x, out), g) in enumerate(zip(capture.modules(), grads)):
            g = torch.zeros_like(out) if g is None else g.detach()
            _, s = project_linear_grads(x, g, self.out_dim, seed=self.seed, kind=self.kind, row_offset=self.offsets[k],
                                        mask=mask, out=acc, mode=self.mode, backend=self.backend)
            sq += s
        return acc, sq

    @torch.no_grad()
    def _image_grounding(self, kwargs: dict, labels, ppl_with) -> torch.Tensor:
        """ppl without the image / ppl with it; text-only samples get 1 (DESIGN §4.4). Ours removes
        the image tokens; the release's (``rules="release"``) keeps them and zeroes the pixels (the
        processor's other inputs, e.g. ``image_grid_thw``, ``pixel_attention_mask``, unchanged)."""
        ids, attn, pixel_values = kwargs["input_ids"], kwargs["attention_mask"], kwargs.get("pixel_values")
        ig = torch.ones_like(ppl_with)
        image_id = self.encoder.image_token_id
        if pixel_values is None or image_id is None:
            return ig
        has_image = (ids == image_id).any(1)
        if not has_image.any():
            return ig
        if self.rules == "release":
            out = self.model(**{**kwargs, "pixel_values": blank_images(kwargs)}, use_cache=False)
            nll, resp, _ = token_stats(out.logits, labels)
            ppl_without = mean_over_response(nll, resp).exp()
            ig[has_image] = ppl_without[has_image] / ppl_with[has_image]
            return ig
        rows = has_image.nonzero().flatten().tolist()
        routing = self._routing
        if routing is not None:  # the same samples' input-dependent state, for these rows only
            routing[0]([routing[1][r] for r in rows])
        stripped = []
        for r in rows:
            keep = (ids[r] != image_id) & attn[r].bool()
            stripped.append({"input_ids": ids[r][keep].cpu(), "labels": labels[r][keep].cpu()})
        batch = collate(stripped, self.encoder.pad_token_id)
        enc = self.encoder
        if enc.slot_mask is not None:  # reserved prompt positions precede the image: same columns, these rows
            old, width = enc.slot_mask[rows], batch["input_ids"].shape[1]
            mask = torch.zeros(len(rows), width, dtype=torch.bool)
            mask[:, : min(width, old.shape[1])] = old[:, : min(width, old.shape[1])]
            enc.set_slots(mask, batch["input_ids"])
        out = self.model(input_ids=batch["input_ids"].to(ids.device), attention_mask=batch["attention_mask"].to(ids.device), use_cache=False)
        nll, resp, _ = token_stats(out.logits, batch["labels"].to(ids.device))
        ppl_without = ((nll.sum(1) / resp.sum(1).clamp_min(1))).exp()
        ig[has_image] = ppl_without / ppl_with[has_image]
        return ig

    # -- a whole pool --------------------------------------------------------------------------
    def _batches(self, data: Any, batch_size: int, skip: set[int], shard_batches: int) -> Iterator:
        """(shard index, ids, batch or None, skipped [(id, reason)], the batch's items or None) for
        every batch not in a skipped shard."""
        if isinstance(data, torch.utils.data.DataLoader):
            offset = 0
            for k, batch in enumerate(data):
                n = batch["input_ids"].shape[0]
                ids = list(batch["ids"]) if "ids" in batch else list(range(offset, offset + n))
                offset += n
                if k // shard_batches not in skip:
                    yield k // shard_batches, ids, batch, [], None
            return
        n = len(data)
        for k, start in enumerate(range(0, n, batch_size)):
            if k // shard_batches in skip:
                continue
            items = [data[i] for i in range(start, min(n, start + batch_size))]
            names = [item.get("id", start + j) if isinstance(item, dict) else start + j for j, item in enumerate(items)]
            skipped: list[tuple[Any, str]] = []
            # encoded by position, so the kept items stay known (ids need not be unique)
            kept, encoded = encode_many(list(enumerate(items)), self.encoder,
                                        lambda j, why: skipped.append((names[j], why)))
            batch = self.encoder.collate(encoded) if encoded else None
            yield k // shard_batches, [names[j] for j in kept], batch, skipped, [items[j] for j in kept]

    def extract(self, data: Any, batch_size: int = 8, *, out_dir: str | Path | None = None, shard_size: int = 4096,
                disk_dtype: str = "float16", progress: bool = True, lazy: bool = False,
                before_batch: Callable[[list], None] | None = None) -> FeatureSet:
        """Features and scores for every item of ``data`` (a ``datasets.Dataset`` or any sequence of
        row dicts / LLaVA records, or a DataLoader of batches), in data order.

        With ``out_dir``, results are written in shards of ``shard_size`` samples (features as
        ``disk_dtype``: float16, bfloat16 or float32) and finished shards are not recomputed when
        the call is repeated after an interruption; with ``lazy`` as well, the result's features
        are a memory-mapped ``FeatureView`` over the shards (nothing of them is loaded: pools of
        millions), else a float32 tensor. Under ``torch.distributed`` each rank computes every world_size-th shard and
        the result, on every rank, is in data order. ``before_batch(items)`` is called with each
        batch's items (those that encoded, in row order) before its forward, and again with the
        rows of the image-grounding pass (the samples with an image) before that one: a model whose
        layers depend on the input (a routed mixture of experts, ``lifelong/experts.py``) is set there.
        """
        if batch_size < 1 or shard_size < 1:
            raise ValueError("batch_size and shard_size must be >= 1")
        if before_batch is not None and isinstance(data, torch.utils.data.DataLoader):
            raise ValueError("before_batch needs the items of each batch: pass a sequence of records, not a DataLoader")
        dist = _dist()
        rank, world = (dist.get_rank(), dist.get_world_size()) if dist else (0, 1)
        shard_batches = max(1, math.ceil(shard_size / batch_size))
        n_batches = len(data) if isinstance(data, torch.utils.data.DataLoader) else math.ceil(len(data) / batch_size)
        n_shards = max(1, math.ceil(n_batches / shard_batches))
        out_path = Path(out_dir) if out_dir is not None else None
        done = set()
        if out_path is not None:
            for s in range(n_shards):
                meta_file = out_path / f"shard-{s:05d}.json"
                if meta_file.exists():
                    if FeatureSet.shard_meta(meta_file.with_suffix("")) != self.meta:
                        raise ValueError(f"{out_path} holds shards from a different featurizer configuration; "
                                         "use a fresh out_dir")
                    done.add(s)
        mine = {s for s in range(n_shards) if s % world == rank}
        skip = done | (set(range(n_shards)) - mine)
        shards: dict[int, FeatureSet] = {}
        truncated_before = self.encoder.truncated
        todo = sorted(mine - done)
        bar = progress_bar(total=sum(min(shard_batches, n_batches - s * shard_batches) for s in todo),
                   desc=f"features[{rank}]" if world > 1 else "features", unit="batch", progress=progress)

        def finish(s: int, entry) -> None:
            fs = self._shard(entry)
            for item_id, why in fs.skipped:
                log.warning("skipped %r: %s", item_id, why)
            if out_path is not None:  # written as soon as it is complete: an interruption keeps it
                fs.save_shard(out_path / f"shard-{s:05d}", disk_dtype)
            else:
                shards[s] = fs

        buffered: list[tuple[list, torch.Tensor, torch.Tensor]] = []  # (entry, keep, valid) per buffered batch
        buffer, decided = None, False  # the buffer is sized once, on the first batch

        def flush() -> None:  # project the buffered batches in one launch, in batch order
            if not buffered:
                return
            feats = buffer.project()
            pos = 0
            for e, keep, valid in buffered:
                f = self._finish(feats[pos : pos + len(valid)], valid)
                e[1].append(f[keep])
                pos += len(valid)
            buffered.clear()

        current, entry = None, None
        for s, ids, batch, skipped, items in self._batches(data, batch_size, skip, shard_batches):
            if s != current:
                if current is not None:
                    flush()
                    finish(current, entry)
                current, entry = s, [[], [], {}, []]
            entry[3].extend(skipped)
            if batch is not None:
                self._routing = (before_batch, items) if before_batch is not None else None
                if before_batch is not None:
                    before_batch(items)
                b = batch["input_ids"].shape[0]
                if not decided:
                    buffer, decided = self._buffer(b), True
                use = buffer is not None and buffer.capacity >= b  # a larger (DataLoader) batch goes alone
                if not use or buffer.room() < b:
                    flush()  # keeps features in batch order
                feats, scores, valid = self._pass(batch, buffer) if use else self.featurize_batch(batch)
                entry[3].extend((i, "no response tokens") for i, ok in zip(ids, valid.tolist()) if not ok)
                keep = valid.nonzero().flatten()
                entry[0].extend(ids[j] for j in keep.tolist())
                if use:
                    buffered.append((entry, keep, valid))
                else:
                    entry[1].append(feats[keep])
                for name, v in scores.items():
                    entry[2].setdefault(name, []).append(v[keep])
            bar.update(1)
        if current is not None:
            flush()
            finish(current, entry)
        bar.close()
        self._routing = None
        for s in todo:  # shards with no batch at all (empty data)
            if out_path is None and s not in shards:
                shards[s] = self._shard([[], [], {}, []])
            elif out_path is not None and not (out_path / f"shard-{s:05d}.json").exists():
                finish(s, [[], [], {}, []])
        if self.encoder.truncated > truncated_before:
            log.warning("truncated %d sequence(s) to max_length=%s", self.encoder.truncated - truncated_before,
                        self.encoder.max_length)
        if out_path is not None:
            if dist:
                dist.barrier()
            ordered = [FeatureSet.load_shard(out_path / f"shard-{s:05d}", lazy=lazy) for s in range(n_shards)]
        else:
            if dist:
                gathered: list = [None] * world
                dist.all_gather_object(gathered, shards)
                shards = {s: fs for g in gathered for s, fs in g.items()}
            ordered = [shards[s] for s in range(n_shards)]
        return FeatureSet.concat(ordered, self.meta, self.out_dim)

    def _buffer(self, batch: int) -> GradientBuffer | None:
        """The gradient buffer for ``extract`` (dense mode), or None to project batch by batch."""
        if self.mode != "dense":
            return None
        device = next(self.model.parameters()).device
        capacity = default_capacity(self.total_rows, device, max(self.project_samples, batch), self.project_memory)
        if capacity < batch or self.project_samples <= batch:
            if self.project_samples > batch:
                log.info("features: %d samples of %d gradient entries do not fit in the buffer's memory; "
                         "projecting batch by batch", batch, self.total_rows)
            return None
        capacity -= capacity % batch  # whole batches
        return GradientBuffer(self.total_rows, capacity, self.out_dim, seed=self.seed, kind=self.kind,
                              backend=self.backend, device=device)

    def _shard(self, entry) -> FeatureSet:
        ids, feats, scores, skipped = entry
        f = torch.cat(feats) if feats else torch.zeros(0, self.out_dim)
        sc = {k: torch.cat(v) for k, v in scores.items()} if scores else {k: torch.zeros(0) for k in self.scores}
        return FeatureSet(ids, f, sc, skipped, self.meta)
