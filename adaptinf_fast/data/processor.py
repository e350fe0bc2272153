"""Encoding records with the model's own processor (``transformers.AutoProcessor``): any image-text
model whose folder has one — LLaVA-1.5 / NeXT / OneVision, Qwen2-VL / Qwen2.5-VL / Qwen3-VL,
Idefics3 / SmolVLM, Gemma 3, InternVL, ... — with its image-token expansion, dynamic resolution or
tiling and extra inputs (``image_grid_thw``, ``image_sizes``, ``pixel_attention_mask``,
``token_type_ids``) done by the processor, never by hand.

A record's turns become chat messages whose content is a list of parts (``{"type": "text"}``, and
``{"type": "image"}`` where its text had ``<image>``, in order), rendered with the processor's chat
template. The rendering is cut into segments at the assistant turns (growing prefixes of the
conversation, as for a tokenizer's template), each segment is run through the processor with the
images it holds, and the answers' tokens are the labels. An item keeps its tokens, labels and the
processor's image tensors per segment; ``collate`` merges items into one batch by how each of the
processor's outputs is indexed, which it learns once by probing the processor with one and two
images:

* per-token outputs (shape (1, T), e.g. ``token_type_ids``): padded like the tokens;
* per-image outputs (the first dimension grows with the images: ``pixel_values`` of LLaVA, Gemma 3,
  InternVL, Qwen's patch rows, ``image_grid_thw``, ``image_sizes``): concatenated over the batch's
  images, inner dimensions zero-padded to the largest (LLaVA-NeXT's patch stacks);
* per-sample outputs (first dimension 1 whatever the images: Idefics3 / SmolVLM's sub-image stacks
  and ``pixel_attention_mask``): padded along their image dimension and stacked, a sample without an
  image taking an all-zero image (which those models skip as padding); a per-sample count
  (LLaVA-OneVision's ``batch_num_images``) is summed over the sample's segments, 0 without images.

So a sample has the same tokens and image inputs alone and in any batch (tested per family).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

PER_TOKEN, PER_IMAGE, PER_SAMPLE = "token", "image", "sample"
_DROP = ("input_ids", "attention_mask")  # the batch's own


def is_processor(obj: Any) -> bool:
    """A multimodal processor (tokenizer + image processor behind one call), not a bare image processor."""
    return obj is not None and hasattr(obj, "tokenizer") and hasattr(obj, "image_processor") and callable(obj)


def _probe_image(size: int = 64, seed: int = 0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))


class ProcessorCodec:
    """Segments, tokens and image inputs of records through ``processor``; batches of them."""

    def __init__(self, processor):
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self._kinds: dict[str, str] | None = None

    # -- rendering --------------------------------------------------------------------------------
    def image_placeholder(self) -> str:
        return getattr(self.processor, "image_token", None) or "<image>"

    def render(self, messages: list[dict], generation_prompt: bool) -> str:
        return self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)

    def segments(self, messages: list[dict]) -> list[tuple[str, bool, int]] | None:
        """(text, is_answer, images in it) pieces of the rendered conversation, cut at the assistant
        turns; None when the template is not prefix-stable."""
        out: list[tuple[str, bool, int]] = []
        done, done_images = "", 0

        def images_in(msgs) -> int:
            return sum(1 for m in msgs for p in m["content"] if p.get("type") == "image")

        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            prompt = self.render(messages[:i], True)
            full = self.render(messages[: i + 1], False)
            if not (prompt.startswith(done) and full.startswith(prompt)):
                return None
            n = images_in(messages[:i])
            out += [(prompt[len(done):], False, n - done_images), (full[len(prompt):], True, 0)]
            done, done_images = full, n
        rest = self.render(messages, False)
        if not rest.startswith(done):
            return None
        if rest[len(done):]:
            out.append((rest[len(done):], False, images_in(messages) - done_images))
        return out

    # -- tokens and image inputs ----------------------------------------------------------------------
    def process(self, text: str, images: list) -> dict[str, torch.Tensor]:
        """The processor on one piece of text with its images (no special tokens added: the template
        writes them)."""
        kw = {"images": [images]} if images else {}
        out = self.processor(text=[text], return_tensors="pt", add_special_tokens=False, **kw)
        return {k: v for k, v in out.items() if torch.is_tensor(v)}

    def kinds(self) -> dict[str, str]:
        """How each processor output is indexed (per token / image / sample), probed once."""
        if self._kinds is None:
            ph = self.image_placeholder()
            one = self.process(f"{ph} a", [_probe_image()])
            two = self.process(f"{ph} {ph} a", [_probe_image(), _probe_image(48, 1)])
            kinds = {}
            for k, v in one.items():
                if k in _DROP:
                    continue
                if v.dim() == 2 and v.shape[0] == 1 and v.shape[1] == one["input_ids"].shape[1]:
                    kinds[k] = PER_TOKEN
                elif two[k].shape[0] > v.shape[0]:
                    kinds[k] = PER_IMAGE
                else:
                    kinds[k] = PER_SAMPLE
            self._kinds = kinds
        return self._kinds

    def encode(self, pieces: list[tuple[str, bool, list]]) -> dict:
        """An item from (text, is_answer, images) pieces: input_ids, labels, and the image inputs."""
        ids, labels, extra = [], [], []
        kinds = self.kinds()
        token_keys = {k: [] for k, kind in kinds.items() if kind == PER_TOKEN}
        for text, is_answer, images in pieces:
            if not text:
                continue
            out = self.process(text, images)
            piece = out["input_ids"][0]
            ids.append(piece)
            labels.append(piece if is_answer else torch.full_like(piece, -100))
            for k in token_keys:
                token_keys[k].append(out[k][0] if k in out else torch.zeros_like(piece))
            if images:
                extra.append({k: v for k, v in out.items() if kinds.get(k) in (PER_IMAGE, PER_SAMPLE)})
        item = {"input_ids": torch.cat(ids), "labels": torch.cat(labels), "_images": extra}
        item.update({k: torch.cat(v) for k, v in token_keys.items()})
        return item

    # -- batches ------------------------------------------------------------------------------------
    def collate(self, items: Sequence[dict], pad_token_id: int, left: bool = False) -> dict:
        """One batch: tokens (and per-token outputs) padded on the right, or on the left for
        generation, ``labels`` -100 on padding, ``attention_mask``, the image inputs merged."""
        kinds = self.kinds()
        n = max(it["input_ids"].numel() for it in items)
        b = len(items)
        batch = {"input_ids": torch.full((b, n), pad_token_id, dtype=torch.long),
                 "attention_mask": torch.zeros(b, n, dtype=torch.long)}
        if all("labels" in it for it in items):
            batch["labels"] = torch.full((b, n), -100, dtype=torch.long)
        for k, kind in kinds.items():
            if kind == PER_TOKEN:
                batch[k] = torch.zeros(b, n, dtype=items[0][k].dtype)
        for i, it in enumerate(items):
            k_len = it["input_ids"].numel()
            cols = slice(n - k_len, n) if left else slice(0, k_len)
            batch["input_ids"][i, cols] = it["input_ids"]
            batch["attention_mask"][i, cols] = 1
            if "labels" in batch:
                batch["labels"][i, cols] = it["labels"]
            for k, kind in kinds.items():
                if kind == PER_TOKEN:
                    batch[k][i, cols] = it[k]
        for k, kind in kinds.items():
            if kind == PER_IMAGE:
                parts = [seg[k] for it in items for seg in it["_images"] if k in seg]
                if parts:
                    batch[k] = _cat_padded(parts)
            elif kind == PER_SAMPLE:
                rows = []
                for it in items:
                    mine = [seg[k] for seg in it["_images"] if k in seg]
                    if not mine:
                        rows.append(None)
                    elif mine[0].dim() == 1:  # a per-sample count (OneVision's batch_num_images): summed
                        rows.append(torch.stack(mine).sum(0))
                    else:
                        rows.append(torch.cat(mine, dim=1))
                if any(r is not None for r in rows):
                    like = next(r for r in rows if r is not None)
                    empty = torch.zeros_like(like) if like.dim() == 1 else torch.zeros_like(like[:, :1])
                    rows = [r if r is not None else empty for r in rows]
                    batch[k] = torch.cat(rows) if like.dim() == 1 else _cat_padded(rows, pad_dims_from=1)
        return batch


def _cat_padded(parts: list[torch.Tensor], pad_dims_from: int = 1) -> torch.Tensor:
    """Concatenate along dim 0, zero-padding every dimension from ``pad_dims_from`` on to the largest."""
    shape = [max(p.shape[d] for p in parts) for d in range(parts[0].dim())]
    out = []
    for p in parts:
        if list(p.shape[pad_dims_from:]) != shape[pad_dims_from:]:
            padded = torch.zeros(p.shape[0], *shape[1:], dtype=p.dtype)
            padded[tuple(slice(0, s) for s in p.shape)] = p
            p = padded
        out.append(p)
    return torch.cat(out, dim=0)


__all__ = ["ProcessorCodec", "is_processor", "PER_TOKEN", "PER_IMAGE", "PER_SAMPLE"]
