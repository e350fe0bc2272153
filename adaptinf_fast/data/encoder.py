"""Turning pool items into model batches: pre-tokenised rows or LLaVA-style conversation records.

A row is either already tokenised (``input_ids``, ``labels`` with -100 on prompt tokens, optional
``pixel_values`` for one image) or a LLaVA record ``{"id", "image"?, "conversations": [{"from":
"human", "value": "<image>\\n..."}, {"from": "gpt", "value": ...}, ...]}``, which needs a tokenizer
(and, for images, the vision tower's image size). Batches are right-padded, so a sample's positions
do not depend on its batch. Problems with one item (no response, unreadable image, too long with
``on_overflow="error"``) are reported for that item and the rest goes on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

log = logging.getLogger("adaptinf_fast")
IMAGE_PLACEHOLDER = "<image>"
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


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
    truncated: int = field(default=0, init=False)
    _warned: bool = field(default=False, init=False, repr=False)

    @classmethod
    def for_model(cls, model, tokenizer=None, *, image_root: str | Path | None = None, max_length: int | None = None,
                  on_overflow: str = "truncate", image_processor: Any = None) -> "Encoder":
        """The encoder matching ``model``'s config (a causal LM or LLaVA, PEFT-wrapped or not): its
        image token, how many tokens one image expands to, the vision tower's image size.
        ``image_processor``: the model's own (``image_processor_for(folder)``) — images then go
        through it (LLaVA-1.5: resize the shortest edge, center-crop, CLIP-normalise); without one,
        images are resized to the tower's square size and CLIP-normalised."""
        cfg = getattr(getattr(model, "base_model", model), "config", None) or getattr(model, "config", None)
        vision = getattr(cfg, "vision_config", None)
        image_tokens = 0
        if vision is not None:
            image_tokens = (vision.image_size // vision.patch_size) ** 2
            if getattr(cfg, "vision_feature_select_strategy", "default") == "full":
                image_tokens += 1
        pad = getattr(tokenizer, "pad_token_id", None)
        return cls(tokenizer=tokenizer, image_token_id=getattr(cfg, "image_token_id", None), image_tokens=image_tokens,
                   image_size=getattr(vision, "image_size", None), image_root=Path(image_root) if image_root else None,
                   max_length=max_length, on_overflow=on_overflow, pad_token_id=pad if pad is not None else 0,
                   image_processor=image_processor)

    def _tok(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _image(self, path: str) -> torch.Tensor:
        from PIL import Image

        full = Path(path) if self.image_root is None else self.image_root / path
        try:
            with Image.open(full) as im:
                im = im.convert("RGB")
                if self.image_processor is not None:
                    return torch.as_tensor(self.image_processor(images=im, return_tensors="pt")["pixel_values"][0])
                im = im.resize((self.image_size, self.image_size), Image.BICUBIC)
                arr = np.asarray(im, dtype=np.float32) / 255.0
        except Exception as exc:  # noqa: BLE001 - any unreadable image is this item's problem
            raise ItemError(f"image {full} could not be read: {exc}") from exc
        t = torch.from_numpy(arr).permute(2, 0, 1)
        return (t - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None]

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

    def encode_record(self, rec: dict) -> dict:
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
        if any(IMAGE_PLACEHOLDER in t["value"] for t in turns):
            if "image" not in rec:
                raise ItemError("record has <image> but no 'image' path")
            out["pixel_values"] = self._image(rec["image"])
        return out

    def encode_prompt(self, rec: dict) -> tuple[dict, str]:
        """The prompt for the record's last answer (everything before it, ending with the
        assistant's cue) and that answer: ({"input_ids", "pixel_values"?}, reference text)."""
        turns = rec.get("conversations")
        if not isinstance(turns, list) or len(turns) < 2 or ROLES.get(turns[-1].get("from")) != "assistant":
            raise ItemError("an evaluation record must end with a 'gpt' turn (the reference answer)")
        context = turns[:-1]
        if getattr(self.tokenizer, "chat_template", None):
            messages = [{"role": ROLES[t["from"]], "content": t["value"]} for t in context]
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:
            bos = getattr(self.tokenizer, "bos_token", None)
            text = (bos + " " if bos else "") + "".join(t for t, _ in self._segments_fixed(context)) + " ASSISTANT: "
        out = {"input_ids": torch.tensor(self._tok_with_images(text))}
        if any(IMAGE_PLACEHOLDER in t["value"] for t in context):
            out["pixel_values"] = self._image(rec["image"])
        return out, turns[-1]["value"]

    def encode(self, item: Any) -> dict:
        if not isinstance(item, dict):
            raise ItemError(f"pool items must be dicts; got {type(item).__name__}")
        if "input_ids" in item:
            out = {"input_ids": torch.as_tensor(item["input_ids"]).flatten(),
                   "labels": torch.as_tensor(item.get("labels", item["input_ids"])).flatten()}
            if item.get("pixel_values") is not None:
                out["pixel_values"] = torch.as_tensor(item["pixel_values"])
        else:
            out = self.encode_record(item)
        if out["input_ids"].shape != out["labels"].shape:
            raise ItemError("input_ids and labels have different lengths")
        if self.max_length is not None and out["input_ids"].numel() > self.max_length:
            if self.on_overflow == "error":
                raise ItemError(f"sequence of {out['input_ids'].numel()} tokens exceeds max_length={self.max_length}")
            if self.image_token_id is not None and (out["input_ids"][self.max_length:] == self.image_token_id).any():
                raise ItemError("truncation to max_length would cut the image tokens")
            out["input_ids"] = out["input_ids"][: self.max_length]
            out["labels"] = out["labels"][: self.max_length]
            self.truncated += 1
        if not (out["labels"][1:] != -100).any():
            raise ItemError("no response tokens (labels are all -100 after the first token)")
        return out


def collate(encoded: list[dict], pad_token_id: int) -> dict:
    """Right-pad a list of encoded items into a batch: ``input_ids``, ``labels`` (-100 on padding),
    ``attention_mask`` (B, T) int64, and ``pixel_values`` (n_images, 3, H, W) for the items that
    have an image, in batch order (text-only items may share the batch)."""
    n = max(e["input_ids"].numel() for e in encoded)
    b = len(encoded)
    ids = torch.full((b, n), pad_token_id, dtype=torch.long)
    labels = torch.full((b, n), -100, dtype=torch.long)
    attn = torch.zeros(b, n, dtype=torch.long)
    for i, e in enumerate(encoded):
        k = e["input_ids"].numel()
        ids[i, :k], labels[i, :k], attn[i, :k] = e["input_ids"], e["labels"], 1
    batch = {"input_ids": ids, "labels": labels, "attention_mask": attn}
    pix = [e["pixel_values"] for e in encoded if e.get("pixel_values") is not None]
    if pix:  # LLaVA's convention: one image per item that has one, in batch order (text-only items mix in)
        batch["pixel_values"] = torch.stack(pix)
    return batch


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
