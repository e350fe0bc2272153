"""The demo's tiny LLaVA-style model, built from ``transformers`` configs with random weights.

A CLIP vision tower (28×28 images, 7×7 patches → 16 image tokens), LLaVA's two-layer projector and
a small Llama, sized so that stage-0 pre-training and every LoRA stage take seconds on two CPU
cores. Nothing is downloaded: the tokenizer is the word-level one of ``data.demo_tasks``.
"""

from __future__ import annotations

import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

from ..data.demo_tasks import IMAGE_SIZE

PATCH = 7


def tiny_llava(tokenizer, *, hidden: int = 64, layers: int = 2, vision_layers: int = 2,
               seed: int = 0) -> LlavaForConditionalGeneration:
    """A randomly initialised ``LlavaForConditionalGeneration`` for ``tokenizer``'s vocabulary
    (which must hold ``<image>``); float32, all parameters trainable."""
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    if image_id is None or image_id == tokenizer.unk_token_id:
        raise ValueError("the tokenizer has no <image> token")
    vision = CLIPVisionConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=vision_layers,
                              num_attention_heads=4, image_size=IMAGE_SIZE, patch_size=PATCH, projection_dim=hidden)
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                       num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                       max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    cfg = LlavaConfig(vision_config=vision, text_config=text, image_token_index=image_id,
                      vision_feature_select_strategy="default", vision_feature_layer=-1)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(cfg)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model
