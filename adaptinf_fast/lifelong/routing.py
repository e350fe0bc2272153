"""The task router (DESIGN §8): per-record routing features, per-task anchors, soft weights.

Features per modality (``image``, ``text``) come from a CLIP model folder when one is given — as
HiDe-LLaVA's code computes them: the image part is ``CLIPVisionModelWithProjection``'s
``image_embeds`` (projected), the text part ``CLIPTextModel``'s ``pooler_output`` (the EOS token's
hidden state, unprojected) of the record's first instruction (the first human turn without its
``<image>``), at most 77 tokens; a record without an image takes the features of an all-zero pixel
tensor, as that code's training does, and a multi-image record the mean of its images' (HiDe's
records hold one image). Without a CLIP folder the model's own features stand in
(our deviation, for models without a CLIP beside them): the prompt's input embeddings mean-pooled,
and the mean projected image feature of a LLaVA model (zeros without an image); both are centred
on the anchors' mean before comparing, since prompts share most of their tokens.

A task's anchor is the running mean of its training records' features (sums and counts kept, so
``observe`` can be called batch by batch). For a batch of records the similarity to task i is
sim_i = mean over modalities of cos(f_m, a_{i,m}), all tasks at once in one GEMM of the
per-modality-normalised, concatenated features against the anchors, and the weights are
softmax(sim / temperature). ``state_dict`` / ``load_state_dict`` save and restore the anchors (a
run keeps them per stage and rebuilds them on resume).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from ..data.encoder import IMAGE_PLACEHOLDER, ROLES, model_inputs

MODALITIES = ("image", "text")
CLIP_TEXT_TOKENS = 77


def clip_tokens(tokenizer, texts: Sequence[str], eos: int | None, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) of ``texts`` for a CLIP text tower: at most 77 tokens, each row
    ending in one EOS (its pooled token) where the tokenizer adds none, right-padded."""
    rows = []
    for text in texts:
        ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])[:CLIP_TEXT_TOKENS]
        if eos is not None and eos not in ids:
            ids = ids[: CLIP_TEXT_TOKENS - 1] + [eos]
        rows.append(ids)
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = torch.tensor(r, dtype=torch.long), 1
    return ids.to(device), mask.to(device)


def instruction(rec: dict) -> str:
    """The record's first instruction: its first human turn without the image placeholder."""
    for turn in rec.get("conversations", []):
        if ROLES.get(turn.get("from")) == "user":
            return turn["value"].replace(IMAGE_PLACEHOLDER, " ").strip()
    return ""


class ClipFeatures:
    """Image and text features of records from a CLIP model folder (transformers' CLIP classes)."""

    centred = False

    def __init__(self, folder: str | Path, device: torch.device | str = "cpu", image_root: str | Path | None = None):
        from transformers import AutoImageProcessor, AutoTokenizer, CLIPTextModel, CLIPVisionModelWithProjection

        folder = str(folder)
        if not (Path(folder) / "config.json").exists():
            raise FileNotFoundError(f"router.clip is {folder!r}; expected a local CLIP model folder with a config.json")
        self.device = torch.device(device)
        self.vision = CLIPVisionModelWithProjection.from_pretrained(folder, local_files_only=True).to(self.device).eval()
        self.text = CLIPTextModel.from_pretrained(folder, local_files_only=True).to(self.device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        self.images = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
        self.image_root = Path(image_root) if image_root else None
        self.eos = self.text.config.eos_token_id

    def _text(self, records: Sequence[dict]) -> torch.Tensor:
        ids, mask = clip_tokens(self.tokenizer, [instruction(r) for r in records], self.eos, self.device)
        return self.text(input_ids=ids, attention_mask=mask).pooler_output.float()

    def _image(self, records: Sequence[dict]) -> torch.Tensor:
        """(N, D) ``image_embeds``: of the record's image; the mean over a multi-image record's images
        (HiDe's records hold one); of all-zero pixels for a record without one."""
        from PIL import Image

        pixels, owner = [], []
        for i, rec in enumerate(records):
            paths = rec.get("image") or []
            for p in [paths] if isinstance(paths, str) else paths:
                path = Path(p)
                path = self.image_root / path if self.image_root is not None and not path.is_absolute() else path
                with Image.open(path) as im:
                    pixels.append(im.convert("RGB"))
                owner.append(i)
        size = self.vision.config.image_size
        seen = set(owner)
        blank = [i for i in range(len(records)) if i not in seen]
        batch = torch.zeros(len(pixels) + len(blank), 3, size, size)  # no image: all-zero pixels
        if pixels:
            batch[: len(pixels)] = self.images(images=pixels, return_tensors="pt")["pixel_values"].float()
        embeds = self.vision(pixel_values=batch.to(self.device, self.vision.dtype)).image_embeds.float()
        index = torch.tensor(owner + blank, device=embeds.device)
        sums = torch.zeros(len(records), embeds.shape[1], device=embeds.device).index_add_(0, index, embeds)
        counts = torch.zeros(len(records), device=embeds.device).index_add_(0, index, torch.ones_like(index, dtype=torch.float32))
        return sums / counts[:, None]

    @torch.no_grad()
    def __call__(self, records: Sequence[dict], modalities: Sequence[str]) -> dict[str, torch.Tensor]:
        return {m: (self._image(records) if m == "image" else self._text(records)) for m in modalities}


class ModelFeatures:
    """The model's own routing features (no CLIP folder): prompt input embeddings mean-pooled, and
    a LLaVA model's mean projected image feature (zeros for a record without an image)."""

    centred = True

    def __init__(self, model, encoder):
        self.model, self.encoder = model, encoder

    def _image(self, prompt: dict) -> torch.Tensor | None:
        """The mean image feature of a prompt's images through the model's ``get_image_features``
        (with whatever image inputs the encoder gives, e.g. ``image_grid_thw``), or None."""
        fn = getattr(self.model, "get_image_features", None)
        if fn is None:
            return None
        with self.encoder.no_slots():  # its own one-record batch: the caller's batch keeps its prompt slots
            batch = model_inputs(self.encoder.collate_prompts([prompt]), self.model)
        image_inputs = {k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask", "token_type_ids",
                                                                     "mm_token_type_ids")}
        if not image_inputs:
            return None
        try:
            out = fn(**image_inputs)
        except TypeError:  # a model whose image features need more than its image inputs: text alone
            return None
        feats = getattr(out, "pooler_output", None)
        if feats is None:
            feats = out[0] if isinstance(out, tuple) and not torch.is_tensor(out) else out
        if isinstance(feats, (list, tuple)):
            feats = torch.cat([f.reshape(-1, f.shape[-1]) for f in feats])
        return feats.reshape(-1, feats.shape[-1]).float().mean(0)

    @torch.no_grad()
    def __call__(self, records: Sequence[dict], modalities: Sequence[str]) -> dict[str, torch.Tensor]:
        emb = self.model.get_input_embeddings()
        texts, images = [], []
        for rec in records:
            prompt, _ = self.encoder.encode_prompt(rec)
            ids = torch.as_tensor(prompt["input_ids"], device=emb.weight.device).reshape(-1)
            ids = ids[ids < emb.num_embeddings]  # image placeholders of a LLaVA prompt have no text row
            texts.append(emb(ids).float().mean(0))
            img = self._image(prompt) if "image" in modalities and ("pixel_values" in prompt or prompt.get("_images")) else None
            images.append(img)
        out = {}
        if "text" in modalities:
            out["text"] = torch.stack(texts)
        if "image" in modalities:
            width = next((i.shape[0] for i in images if i is not None), emb.embedding_dim)
            out["image"] = torch.stack([i if i is not None else torch.zeros(width, device=emb.weight.device)
                                        for i in images])
        return out


class TaskRouter:
    """Per-task anchors over routing features and the soft weights of a batch.

    Args:
        source: a ``ClipFeatures`` or ``ModelFeatures``.
        modalities: the parts compared (``image``, ``text``), equally weighted.
        temperature: of the softmax over the tasks' similarities (HiDe-LLaVA: 0.1).
    """

    def __init__(self, source, modalities: Sequence[str] = MODALITIES, temperature: float = 0.1):
        bad = set(modalities) - set(MODALITIES)
        if bad or not modalities:
            raise ValueError(f"router modalities must be a non-empty subset of {MODALITIES}; got {list(modalities)}")
        self.source, self.modalities, self.temperature = source, tuple(modalities), temperature
        self.sums: list[dict[str, torch.Tensor]] = []
        self.counts: list[int] = []

    @property
    def tasks(self) -> int:
        return len(self.counts)

    def features(self, records: Sequence[dict], batch_size: int = 64) -> dict[str, torch.Tensor]:
        """{modality: (N, D_m) float32} on the source's device (the model's, or the CLIP's)."""
        parts = [self.source(records[i : i + batch_size], self.modalities) for i in range(0, len(records), batch_size)]
        return {m: torch.cat([p[m] for p in parts]).float() for m in self.modalities}

    def observe(self, task: int, records: Sequence[dict]) -> None:
        """Adds ``records`` (of task ``task``: 0, 1, ... in order) to that task's running mean."""
        if task > self.tasks:
            raise ValueError(f"task {task} observed before task {self.tasks}")
        if not records:
            return
        feats = self.features(records)
        if task == self.tasks:
            self.sums.append({m: torch.zeros(feats[m].shape[1]) for m in self.modalities})
            self.counts.append(0)
        for m in self.modalities:
            self.sums[task][m] += feats[m].sum(0).cpu()  # anchors live on the CPU (saved with the stage)
        self.counts[task] += len(records)

    def set_anchor(self, task: int, anchor: dict[str, torch.Tensor]) -> None:
        """Sets task ``task``'s anchor (a new task appends) to given (D_m,) vectors per modality, for
        strategies whose anchors are learned prototypes rather than running means (ModalPrompt)."""
        if task > self.tasks:
            raise ValueError(f"task {task} set before task {self.tasks}")
        if set(anchor) != set(self.modalities):
            raise ValueError(f"an anchor needs {list(self.modalities)}; got {sorted(anchor)}")
        state = {m: anchor[m].detach().float().cpu().reshape(-1) for m in self.modalities}
        if task == self.tasks:
            self.sums.append(state)
            self.counts.append(1)
        else:
            self.sums[task], self.counts[task] = state, 1

    def anchors(self) -> dict[str, torch.Tensor]:
        """(tasks, D_m) running means per modality."""
        if not self.tasks:
            raise ValueError("the router has no task anchors yet")
        return {m: torch.stack([s[m] / c for s, c in zip(self.sums, self.counts)]) for m in self.modalities}

    def similarity(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        """(N, tasks): the mean over modalities of cos(feature, anchor), in one GEMM on the features'
        device."""
        anchors = self.anchors()
        rows, cols = [], []
        for m in self.modalities:
            f = feats[m].float()
            a = anchors[m].to(f.device, torch.float32)
            if self.source.centred:
                centre = a.mean(0)
                f, a = f - centre, a - centre
            rows.append(torch.nn.functional.normalize(f, dim=1))
            cols.append(torch.nn.functional.normalize(a, dim=1))
        return torch.cat(rows, 1) @ torch.cat(cols, 1).T / len(self.modalities)

    def weights(self, records: Sequence[dict]) -> torch.Tensor:
        """(N, tasks) softmax(similarity / temperature) float32, on the features' device."""
        return torch.softmax(self.similarity(self.features(records)) / self.temperature, dim=1)

    def state_dict(self) -> dict:
        return {"modalities": list(self.modalities), "sums": self.sums, "counts": self.counts}

    def load_state_dict(self, state: dict) -> None:
        if tuple(state["modalities"]) != self.modalities:
            raise ValueError(f"saved anchors are for {state['modalities']}, the router compares {list(self.modalities)}")
        self.sums, self.counts = [dict(s) for s in state["sums"]], list(state["counts"])


def build_router(settings, *, model=None, encoder=None, device=None) -> TaskRouter:
    """The router of a run's ``router`` settings (``RouterSettings``): CLIP when ``settings.clip``
    names a folder, else the model's own features."""
    if settings.clip:
        device = device if device is not None else next(model.parameters()).device if model is not None else "cpu"
        source = ClipFeatures(settings.clip, device)
        modalities = tuple(settings.modalities)
    else:
        if model is None or encoder is None:
            raise ValueError("a router without a CLIP folder needs the model and its encoder")
        source = ModelFeatures(model, encoder)
        # a text-only model has no image features of its own: its prompts route by text
        modalities = tuple(m for m in settings.modalities if m == "text" or hasattr(model, "get_image_features"))
        if not modalities:
            raise ValueError("router.modalities is [image] but the model has no image features and no router.clip is given")
    return TaskRouter(source, modalities, settings.temperature)
