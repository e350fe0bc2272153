"""Tiny randomly initialised Llama / LLaVA models with LoRA, and a word-level tokenizer, all offline."""

from __future__ import annotations

import torch
from peft import LoraConfig, get_peft_model
from transformers import CLIPVisionConfig, LlamaConfig, LlamaForCausalLM, LlavaConfig, LlavaForConditionalGeneration

VOCAB = 64
IMAGE_TOKEN = 63


def llama_config(layers: int = 3) -> LlamaConfig:
    return LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=layers,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                       pad_token_id=0, bos_token_id=1, eos_token_id=2)


def lora(model, targets=("q_proj", "v_proj", "down_proj"), r=4):
    # init_lora_weights=False: B is random too, so A's gradient is not identically zero
    cfg = LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(targets), lora_dropout=0.3, init_lora_weights=False)
    return get_peft_model(model, cfg)


def tiny_llama(seed: int = 0, layers: int = 3):
    torch.manual_seed(seed)
    return lora(LlamaForCausalLM(llama_config(layers)))


def tiny_llava(seed: int = 0):
    torch.manual_seed(seed)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4,
                              image_size=28, patch_size=7, projection_dim=32)
    cfg = LlavaConfig(vision_config=vision, text_config=llama_config(2), image_token_index=IMAGE_TOKEN,
                      vision_feature_select_strategy="default", vision_feature_layer=-1)
    model = LlavaForConditionalGeneration(cfg)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=r".*language_model.*\.(q_proj|v_proj|up_proj)",
                     lora_dropout=0.2, init_lora_weights=False)
    return get_peft_model(model, cfg)


def random_rows(n: int, gen: torch.Generator, min_len: int = 5, max_len: int = 14, image_tokens: int = 0,
                max_prompt: int | None = None):
    """Pre-tokenised rows: a prompt (labels -100) then a response; optional image tokens and pixels."""
    rows = []
    for i in range(n):
        length = int(torch.randint(min_len, max_len + 1, (1,), generator=gen))
        prompt = int(torch.randint(1, min(length - 1, max_prompt or length), (1,), generator=gen))
        ids = torch.randint(3, IMAGE_TOKEN, (length,), generator=gen)
        if image_tokens:
            ids = torch.cat([ids[:1], torch.full((image_tokens,), IMAGE_TOKEN), ids[1:]])
            prompt += image_tokens
        labels = ids.clone()
        labels[:prompt] = -100
        row = {"id": f"s{i}", "input_ids": ids, "labels": labels}
        if image_tokens:
            row["pixel_values"] = torch.randn(3, 28, 28, generator=gen)
        rows.append(row)
    return rows


def word_tokenizer():
    """The package's offline word-level tokenizer over a fixed word list (no download)."""
    from adaptinf_fast.data.demo_tasks import word_tokenizer as build

    return build(["what", "is", "the", "digit", "colour", "shown", "red", "green", "blue", "one", "two",
                  "three", "a", "square", "circle", "count"])
