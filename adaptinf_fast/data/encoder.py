"""Turning pool items into model batches: pre-tokenised rows or LLaVA-style conversation records.

A row is either already tokenised (``input_ids``, ``labels`` with -100 on prompt tokens, optional
``pixel_values`` (3, H, W) or (n_images, 3, H, W)) or a LLaVA record ``{"id", "image"?,
"conversations": [{"from": "human", "value": "<image>\\n..."}, {"from": "gpt", "value": ...}, ...]}``
whose ``image`` is one path or a list of paths, one per ``<image>`` placeholder, in order. With the
model's own processor (``AutoProcessor`` in its folder; ``data/processor.py``) the processor renders
and encodes records — image-token expansion, resolution, tiling and extra inputs are its own;
without one (a LLaVA-1.5 folder with only a tokenizer, a text-only LM) ``<image>`` expands into the
tower's (image_size / patch)² tokens and images are resized to its square. Batches
(``Encoder.collate``) are right-padded, so a sample's positions do not depend on its batch; prompts
for generation are left-padded (``collate_prompts``). Problems with one item (no response,
unreadable or missing image, too long with ``on_overflow="error"``) are reported for that item and
the rest goes on.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .processor import ProcessorCodec, is_processor

log = logging.getLogger("adaptinf_fast")
IMAGE_PLACEHOLDER = "<image>"
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def config_image_token_id(cfg) -> int | None:
    """The model config's image token id (``image_token_id``, or ``image_token_index`` in older configs)."""
    image_id = getattr(cfg, "image_token_id", None)
    return getattr(cfg, "image_token_index", None) if image_id is None else image_id


def image_processor_for(folder: str | Path | None) -> Any:
    """The image processor saved with a model (``preprocessor_config.json``), or None."""
    if folder is None or not (Path(folder) / "preprocessor_config.json").exists():
        return None
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(str(folder), local_files_only=True)


class ItemError(ValueError):
    """A problem with one pool item; it is reported and skipped."""


@dataclass
class Encoder:
    """Encodes items for one model: tokenizer, image geometry and the sequence-length policy."""

    tokenizer: Any = None
    image_token_id: int | None = None
    image_tokens: int = 0  # image tokens one <image> expands to
    image_size: int | None = None
    image_root: Path | None = None
    max_length: int | None = None
    on_overflow: str = "truncate"  # or "error"
    pad_token_id: int = 0
    image_processor: Any = None  # the model's own (e.g. LLaVA-1.5's CLIPImageProcessor); None: ours
    codec: ProcessorCodec | None = None  # the model's multimodal processor, when its folder has one
    # positions reserved right after BOS in every collated batch, filled at the input-embedding layer
    # by a prompt strategy (lifelong/strategies/modalprompt.py); ``slot_mask`` marks them in the last batch
    prompt_slots: int = 0
    slot_mask: torch.Tensor | None = field(default=None, init=False, repr=False)
    slot_ids: torch.Tensor | None = field(default=None, init=False, repr=False)  # the batch slot_mask belongs to
    truncated: int = field(default=0, init=False)
    _warned: bool = field(default=False, init=False, repr=False)

    @classmethod
    def for_model(cls, model, tokenizer=None, *, image_root: str | Path | None = None, max_length: int | None = None,
                  on_overflow: str = "truncate", image_processor: Any = None) -> "Encoder":
        """The encoder matching ``model``'s config (a causal LM or LLaVA, PEFT-wrapped or not): its
        image token, how many tokens one image expands to, the vision tower's image size.
        ``image_processor``: the model's own multimodal processor (``processor_for(folder)``), which
        then renders and encodes every record; or a bare image processor (``image_processor_for``:
        images go through it, LLaVA-1.5: resize the shortest edge, center-crop, CLIP-normalise);
        without either, images are resized to the tower's square size and CLIP-normalised."""
        cfg = getattr(getattr(model, "base_model", model), "config", None) or getattr(model, "config", None)
        if is_processor(image_processor):
            tok = tokenizer if tokenizer is not None else image_processor.tokenizer
            pad = getattr(tok, "pad_token_id", None)
            return cls(tokenizer=tok, image_token_id=config_image_token_id(cfg), image_root=Path(image_root) if image_root else None,
                       max_length=max_length, on_overflow=on_overflow, pad_token_id=pad if pad is not None else 0,
                       codec=ProcessorCodec(image_processor))
        vision = getattr(cfg, "vision_config", None)
        image_tokens = 0
        if vision is not None:
            image_tokens = (vision.image_size // vision.patch_size) ** 2
            if getattr(cfg, "vision_feature_select_strategy", "default") == "full":
                image_tokens += 1
        pad = getattr(tokenizer, "pad_token_id", None)
        return cls(tokenizer=tokenizer, image_token_id=config_image_token_id(cfg), image_tokens=image_tokens,
                   image_size=getattr(vision, "image_size", None), image_root=Path(image_root) if image_root else None,
                   max_length=max_length, on_overflow=on_overflow, pad_token_id=pad if pad is not None else 0,
                   image_processor=image_processor)

    def _tok(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _path(self, path: str) -> Path:
        return Path(path) if self.image_root is None else self.image_root / path

    def _pil(self, path: str):
        from PIL import Image

        full = self._path(path)
        try:
            with Image.open(full) as im:
                return im.convert("RGB")
        except Exception as exc:  # noqa: BLE001 - any unreadable image is this item's problem
            raise ItemError(f"image {full} could not be read: {exc}") from exc

    def _image(self, path: str) -> torch.Tensor:
        im = self._pil(path)
        if self.image_processor is not None:
            return torch.as_tensor(self.image_processor(images=im, return_tensors="pt")["pixel_values"][0])
        from PIL import Image

        arr = np.asarray(im.resize((self.image_size, self.image_size), Image.BICUBIC), dtype=np.float32) / 255.0
        t = torch.from_numpy(arr).permute(2, 0, 1)
        return (t - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None]

    def _images(self, rec: dict, turns: list[dict]) -> list[str]:
        """The record's image paths, one per <image> placeholder of ``turns`` (checked)."""
        n = sum(t["value"].count(IMAGE_PLACEHOLDER) for t in turns)
        if n == 0:
            return []
        paths = rec.get("image")
        paths = [paths] if isinstance(paths, str) else paths
        if not isinstance(paths, list) or not all(isinstance(x, str) for x in paths):
            raise ItemError("record has <image> but no 'image' path (or list of paths)")
        if len(paths) < n:
            raise ItemError(f"record has {n} <image> placeholders but {len(paths)} image path(s)")
        total = sum(str(t.get("value", "")).count(IMAGE_PLACEHOLDER) for t in rec.get("conversations") or turns)
        if len(paths) > max(n, total):  # ``turns`` may be a prefix (a prompt): its images come first
            raise ItemError(f"record has {len(paths)} image paths but {max(n, total)} <image> placeholder(s)")
        return paths[:n]

    def _pixels(self, paths: list[str]) -> torch.Tensor:
        return torch.stack([self._image(p) for p in paths])  # (n_images, 3, H, W)

    def _tok_with_images(self, text: str) -> list[int]:
        chunks = text.split(IMAGE_PLACEHOLDER)
        ids = self._tok(chunks[0]) if chunks[0] else []
        for chunk in chunks[1:]:
            if self.image_token_id is None:
                raise ItemError("record has <image> but the model has no image token")
            ids += [self.image_token_id] * self.image_tokens + (self._tok(chunk) if chunk else [])
        return ids

    def _segments_from_template(self, turns: list[dict]) -> list[tuple[str, bool]] | None:
        """(text, is_answer) pieces from the tokenizer's chat template, found by rendering growing
        prefixes of the conversation; None when the template is not prefix-stable."""
        tok = self.tokenizer
        messages = [{"role": ROLES[t["from"]], "content": t["value"]} for t in turns]
        segments, done = [], ""
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            prompt = tok.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
            full = tok.apply_chat_template(messages[: i + 1], tokenize=False)
            if not (prompt.startswith(done) and full.startswith(prompt)):
                return None
            segments += [(prompt[len(done):], False), (full[len(prompt):], True)]
            done = full
        rest = tok.apply_chat_template(messages, tokenize=False)
        if not rest.startswith(done):
            return None
        return segments + ([(rest[len(done):], False)] if rest[len(done):] else [])

    def _segments_fixed(self, turns: list[dict]) -> list[tuple[str, bool]]:
        """LLaVA-1.5 (vicuna_v1) layout: "USER: ... ASSISTANT: answer</s>"."""
        eos = getattr(self.tokenizer, "eos_token", None) or ""
        segments = []
        for t in turns:
            if ROLES[t["from"]] == "assistant":
                segments += [(" ASSISTANT: ", False), (t["value"] + (" " + eos if eos else ""), True)]
            else:
                segments.append(("USER: " + t["value"] + " ", False))
        return segments

    def _check_turns(self, rec: dict) -> list[dict]:
        turns = rec.get("conversations")
        if not isinstance(turns, list) or not turns:
            raise ItemError("record has no 'conversations' list")
        for turn in turns:
            if not isinstance(turn, dict) or not isinstance(turn.get("value"), str) or turn.get("from") not in ROLES:
                raise ItemError(f"malformed turn {turn!r}")
        if not any(ROLES[t["from"]] == "assistant" and t["value"].strip() for t in turns):
            raise ItemError("record has no response (no non-empty 'gpt' turn)")
        if self.tokenizer is None:
            raise ItemError("a conversation record needs a tokenizer (GradientFeaturizer(tokenizer=...))")
        return turns

    @staticmethod
    def messages(turns: list[dict]) -> list[dict]:
        """Chat messages with content parts: text, and an image part for every <image>, in order."""
        out = []
        for t in turns:
            parts = []
            for k, piece in enumerate(t["value"].split(IMAGE_PLACEHOLDER)):
                if k:
                    parts.append({"type": "image"})
                if piece.strip():
                    parts.append({"type": "text", "text": piece.strip()})
            out.append({"role": ROLES[t["from"]], "content": parts})
        return out

    def _processor_item(self, turns: list[dict], paths: list[str], generation: bool = False) -> dict:
        """Through the model's processor: the whole conversation with answer labels, or (``generation``)
        its prompt for the next turn."""
        codec = self.codec
        messages = self.messages(turns)
        images = [self._pil(p) for p in paths]
        if generation:
            return codec.encode([(codec.render(messages, True), False, images)])
        segments = codec.segments(messages)
        if segments is None:
            raise ItemError("the processor's chat template is not prefix-stable: answers cannot be located")
        pieces, used = [], 0
        for text, is_answer, n in segments:
            pieces.append((text, is_answer, images[used : used + n]))
            used += n
        return codec.encode(pieces)

    def encode_record(self, rec: dict) -> dict:
        turns = self._check_turns(rec)
        paths = self._images(rec, turns)
        if self.codec is not None:
            return self._processor_item(turns, paths)
        segments = None
        if getattr(self.tokenizer, "chat_template", None):
            segments = self._segments_from_template(turns)
            if segments is None and not self._warned:
                log.warning("the tokenizer's chat template is not prefix-stable; using the USER:/ASSISTANT: layout")
                self._warned = True
        if segments is None:
            segments = self._segments_fixed(turns)
            bos = getattr(self.tokenizer, "bos_token", None)
            if bos:
                segments.insert(0, (bos + " ", False))
        ids: list[int] = []
        labels: list[int] = []
        for text, is_answer in segments:
            piece = self._tok(text) if is_answer else self._tok_with_images(text)
            ids += piece
            labels += piece if is_answer else [-100] * len(piece)
        out = {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels)}
        if paths:
            out["pixel_values"] = self._pixels(paths)
        return out

    def encode_prompt(self, rec: dict) -> tuple[dict, str]:
        """The prompt for the record's last answer (everything before it, ending with the
        assistant's cue) and that answer: (an item for ``collate_prompts``, reference text)."""
        turns = rec.get("conversations")
        if not isinstance(turns, list) or len(turns) < 2 or ROLES.get(turns[-1].get("from")) != "assistant":
            raise ItemError("an evaluation record must end with a 'gpt' turn (the reference answer)")
        context = turns[:-1]
        paths = self._images(rec, context)
        if self.codec is not None:
            return self._processor_item(context, paths, generation=True), turns[-1]["value"]
        if getattr(self.tokenizer, "chat_template", None):
            messages = [{"role": ROLES[t["from"]], "content": t["value"]} for t in context]
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:
            bos = getattr(self.tokenizer, "bos_token", None)
            text = (bos + " " if bos else "") + "".join(t for t, _ in self._segments_fixed(context)) + " ASSISTANT: "
        out = {"input_ids": torch.tensor(self._tok_with_images(text))}
        if paths:
            out["pixel_values"] = self._pixels(paths)
        return out, turns[-1]["value"]

    def encode(self, item: Any) -> dict:
        if not isinstance(item, dict):
            raise ItemError(f"pool items must be dicts; got {type(item).__name__}")
        if "input_ids" in item:
            out = {"input_ids": torch.as_tensor(item["input_ids"]).flatten(),
                   "labels": torch.as_tensor(item.get("labels", item["input_ids"])).flatten()}
            if item.get("pixel_values") is not None:
                pix = torch.as_tensor(item["pixel_values"])
                out["pixel_values"] = pix[None] if pix.dim() == 3 else pix  # (n_images, 3, H, W)
        else:
            out = self.encode_record(item)
        if out["input_ids"].shape != out["labels"].shape:
            raise ItemError("input_ids and labels have different lengths")
        if self.max_length is not None and out["input_ids"].numel() > self.max_length:
            if self.on_overflow == "error":
                raise ItemError(f"sequence of {out['input_ids'].numel()} tokens exceeds max_length={self.max_length}")
            if out.get("_images") or (self.image_token_id is not None
                                      and (out["input_ids"][self.max_length:] == self.image_token_id).any()):
                raise ItemError("truncation to max_length would cut the image tokens")
            n = out["input_ids"].numel()
            for k, v in list(out.items()):
                if torch.is_tensor(v) and v.dim() == 1 and v.numel() == n:
                    out[k] = v[: self.max_length]  # the tokens and what runs along them
            self.truncated += 1
        if not (out["labels"][1:] != -100).any():
            raise ItemError("no response tokens (labels are all -100 after the first token)")
        return out

    def collate(self, items: list[dict]) -> dict:
        """A right-padded training / feature batch of encoded items (see ``collate``)."""
        return self._collate(items, left=False)

    def collate_prompts(self, prompts: list[dict]) -> dict:
        """A left-padded generation batch of ``encode_prompt`` items (generation continues every
        row at the same column)."""
        return self._collate(prompts, left=True)

    def _collate(self, items: list[dict], left: bool) -> dict:
        items, at = self._with_slots(items)
        if self.codec is not None and any("_images" in it for it in items):
            batch = self.codec.collate(items, self.pad_token_id, left=left)
        else:
            batch = collate(items, self.pad_token_id, left=left)
        mask = None
        if at is not None:  # where the reserved positions landed in the padded batch
            b, width = batch["input_ids"].shape
            mask = torch.zeros(b, width, dtype=torch.bool)
            for i, (it, a) in enumerate(zip(items, at)):
                off = width - it["input_ids"].numel() if left else 0
                mask[i, off + a : off + a + self.prompt_slots] = True
        self.set_slots(mask, batch["input_ids"])
        return batch

    def set_slots(self, mask: torch.Tensor | None, input_ids: torch.Tensor) -> None:
        """Record the reserved positions ``mask`` of the batch ``input_ids`` (None: no slots)."""
        self.slot_mask, self.slot_ids = mask, (input_ids if mask is not None else None)

    @contextmanager
    def no_slots(self):
        """Collate without reserved positions inside the block, and leave the last batch's slots as
        they were (e.g. a router's own single-record batches between a batch and its forward)."""
        saved = (self.prompt_slots, self.slot_mask, self.slot_ids)
        self.prompt_slots = 0
        try:
            yield self
        finally:
            self.prompt_slots, self.slot_mask, self.slot_ids = saved

    def _with_slots(self, items: list[dict]) -> tuple[list[dict], list[int] | None]:
        """Items with ``prompt_slots`` positions inserted right after BOS (at the start without one):
        pad ids in ``input_ids``, -100 in ``labels``, 0 in every other per-token tensor."""
        n = self.prompt_slots
        if not n:
            return items, None
        bos = getattr(self.tokenizer, "bos_token_id", None)
        out, at = [], []
        for it in items:
            ids = it["input_ids"]
            length = ids.numel()
            a = 1 if bos is not None and length and int(ids[0]) == bos else 0
            new = dict(it)
            for k, v in it.items():
                if torch.is_tensor(v) and v.dim() == 1 and v.numel() == length:
                    fill = self.pad_token_id if k == "input_ids" else (-100 if k == "labels" else 0)
                    new[k] = torch.cat([v[:a], torch.full((n,), fill, dtype=v.dtype), v[a:]])
            out.append(new)
            at.append(a)
        return out, at


def collate(encoded: list[dict], pad_token_id: int, left: bool = False) -> dict:
    """Pad a list of encoded items into a batch (on the right; ``left`` for generation prompts):
    ``input_ids``, ``labels`` (-100 on padding, when the items have them), ``attention_mask`` (B, T)
    int64, and ``pixel_values`` (n_images, 3, H, W): every item's images in batch order (text-only
    items may share the batch)."""
    n = max(e["input_ids"].numel() for e in encoded)
    b = len(encoded)
    ids = torch.full((b, n), pad_token_id, dtype=torch.long)
    labels = torch.full((b, n), -100, dtype=torch.long)
    attn = torch.zeros(b, n, dtype=torch.long)
    for i, e in enumerate(encoded):
        k = e["input_ids"].numel()
        cols = slice(n - k, n) if left else slice(0, k)
        ids[i, cols], attn[i, cols] = e["input_ids"], 1
        if "labels" in e:
            labels[i, cols] = e["labels"]
    batch = {"input_ids": ids, "attention_mask": attn}
    if all("labels" in e for e in encoded):
        batch["labels"] = labels
    pix = [e["pixel_values"] for e in encoded if e.get("pixel_values") is not None]
    if pix:  # LLaVA's convention: the images of every item, in batch order (text-only items mix in)
        batch["pixel_values"] = torch.cat([p[None] if p.dim() == 3 else p for p in pix])
    return batch


def model_inputs(batch: dict, model) -> dict:
    """A batch's model inputs (all but ``labels``) on the model's device, image tensors in its dtype."""
    param = next(model.parameters())
    out = {}
    for k, v in batch.items():
        if k == "labels" or not torch.is_tensor(v):
            continue
        out[k] = v.to(param.device, param.dtype) if v.is_floating_point() else v.to(param.device)
    return out


def encode_many(items: list[tuple[Any, Any]], encoder: Encoder, report: Callable[[Any, str], None]):
    """Encode (id, item) pairs; items that fail are reported and left out. Returns (ids, encoded)."""
    ids, encoded = [], []
    for item_id, item in items:
        try:
            encoded.append(encoder.encode(item))
            ids.append(item_id)
        except ItemError as exc:
            report(item_id, str(exc))
    return ids, encoded
