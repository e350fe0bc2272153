"""The demo's tiny CLIP for the task router (``lifelong/routing.py``): built from ``transformers``
configs, trained contrastively on the stage-0 captions' (image, caption) pairs in seconds, saved as
a CLIP model folder (model, word-level tokenizer, image processor) that ``router.clip`` names.
HiDe-LLaVA routes with a pre-trained CLIP ViT-L/14-336; this stands in for it offline."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import torch

from ..data.demo_tasks import IMAGE_SIZE, word_tokenizer
from ..data.encoder import CLIP_MEAN, CLIP_STD
from ..lifelong.routing import clip_tokens
from .model import PATCH

# EOS away from id 2: transformers' CLIP pools the highest token id when eos_token_id is 2 (old checkpoints)
CLIP_SPECIALS = ("<pad>", "<unk>", "<s>", "<image>", "</s>")


def tiny_clip(tokenizer, *, hidden: int = 32, seed: int = 0):
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig

    text = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                          num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
                          pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                          eos_token_id=tokenizer.eos_token_id, projection_dim=hidden)
    vision = CLIPVisionConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                              num_attention_heads=4, image_size=IMAGE_SIZE, patch_size=PATCH, projection_dim=hidden)
    torch.manual_seed(seed)
    return CLIPModel(CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=hidden))


def image_processor():
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                              image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD))


def pretrained_clip(out: Path, captions: list[dict], words: list[str], *, epochs: int = 30, seed: int = 0,
                    say: Callable[[str], None] = print) -> Path:
    """Train (once; reused when ``out/clip`` exists) the tiny CLIP on the caption records and save it."""
    folder = out / "clip"
    if (folder / "config.json").exists():
        return folder
    from PIL import Image

    from .._io import atomic_dir

    t0 = time.perf_counter()
    tok = word_tokenizer(words, specials=CLIP_SPECIALS)
    model, proc = tiny_clip(tok, seed=seed), image_processor()
    images = []
    for rec in captions:
        with Image.open(rec["image"]) as im:
            images.append(im.convert("RGB"))
    pixels = proc(images=images, return_tensors="pt")["pixel_values"]
    ids, mask = clip_tokens(tok, [r["conversations"][-1]["value"] for r in captions], tok.eos_token_id)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    losses = []
    for _ in range(epochs):
        for batch in torch.randperm(len(captions), generator=gen).split(64):
            loss = model(input_ids=ids[batch], attention_mask=mask[batch], pixel_values=pixels[batch], return_loss=True).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))

    def save(target: Path) -> None:
        model.save_pretrained(target)
        tok.save_pretrained(target)
        proc.save_pretrained(target)

    atomic_dir(folder, save)
    say(f"router: trained a tiny CLIP ({sum(p.numel() for p in model.parameters()):,} weights) on {len(captions)} "
        f"caption pairs, contrastive loss {losses[0]:.2f} → {losses[-1]:.2f} ({time.perf_counter() - t0:.1f} s)")
    return folder
