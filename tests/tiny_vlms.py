"""Tiny random-weight vision-language models of several Hugging Face families, built offline.

``build(family, folder)`` writes a folder that ``AutoProcessor.from_pretrained(folder)`` and
``AutoModelForImageTextToText.from_pretrained(folder)`` load without any download: the model (config
and safetensors weights, float32), a word-level ``PreTrainedTokenizerFast`` holding every special token
the family's processor and model use, the image processor (and the video processor where the processor
class needs one) sized for 28x28 images, and one chat template shared by the processor and tokenizer.

Every model has a 2-layer language model (hidden 64, a vocabulary of about 100 tokens: exactly the
tokenizer's, so every id decodes) and a 1-layer vision tower on 7x7 patches (28x28 per image or tile);
a forward and backward pass of a batch of 4 takes about 10 ms on one CPU thread.

The chat template is the same for every family:

    <s>SYSTEM: ... USER: <placeholder> question ASSISTANT: answer </s> USER: ... ASSISTANT: 

It takes ``content`` as a string or as a list of ``{"type": "text", "text": ...}`` /
``{"type": "image"}`` parts, an image part rendering as ``image_token(family)`` (the text the processor
expands for one image). It is prefix-stable: rendering the first k messages gives a prefix of the
whole, and with ``add_generation_prompt=True`` before an assistant turn it ends exactly where that
turn's content starts. Assistant turns end with the eos token.

Notes for callers (checked with transformers 5.25):
- Pass images nested per sample (``images=[[im], [], [im, im]]``, an empty list for a text-only
  sample). SmolVLM and Gemma 3 refuse a flat list when the samples' image counts differ; LLaVA-
  OneVision takes a flat list as one image per sample (any-res on each), nested as true multi-image.
- InternVL's processor pads on the left by default; pass ``padding_side="right"`` to get right padding.
- Gemma 3: ``processor.image_token``/``image_token_id`` are the begin-of-image token (the text
  placeholder), the model's ``config.image_token_index`` is the image soft token the processor expands.
- Every config answers ``config.image_token_id`` (an alias where the field is ``image_token_index``).
- SmolVLM's processor needs ``num2words``; without it the family is left out of ``FAMILIES``.
- The image processors are built as the PIL classes, but ``AutoProcessor`` loads the torchvision ones
  when torchvision is installed (same settings); the video processors always need torchvision.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import transformers

HIDDEN = 64  # language model width
VISION_HIDDEN = 32
IMAGE_SIZE = 28  # vision tower input (per tile / sub-image)
PATCH = 7  # 28 / 7 = 4x4 patches per image or tile
PINPOINTS = [[28, 28], [28, 56], [56, 28], [56, 56]]  # LLaVA-NeXT / OneVision any-res grid

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"

WORDS = (
    "what digit is shown ? colour square how many circles describe the image red green blue one two "
    "three four five six seven eight nine zero USER ASSISTANT SYSTEM : . , a an the of and are is it "
    "this that there here picture photo number numbers comes after before yellow black white circle "
    "circles squares shape shapes count digits colours color left right top bottom yes no you helpful "
    "assistant answer question please in on with 0 1 2 3 4 5 6 7 8 9"
).split()


@dataclass(frozen=True)
class Family:
    """One family: its model class, the text placeholder for one image, the tokenizer's special tokens
    (in id order; ``named`` sets the attributes processors read, such as ``tokenizer.image_token``),
    the LoRA regex, the config field of the image token id and the extra inputs its forward takes."""

    name: str
    model_class: str
    placeholder: str  # rendered by the chat template for one image part
    specials: tuple[str, ...]
    named: dict[str, str] = field(default_factory=dict)
    lora_regex: str = ""  # LoRA target_modules regex: the language model's projections only
    image_token_attr: str = "image_token_id"
    extra_inputs: tuple[str, ...] = ()


_PROJ = r"(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
_LM_REGEX = r".*\.language_model\..*\." + _PROJ
_TEXT_MODEL_REGEX = r".*\.text_model\..*\." + _PROJ
_ROW_COL = tuple(f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6))
_QWEN = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
_QWEN_NAMED = {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
               "vision_start_token": "<|vision_start|>", "vision_end_token": "<|vision_end|>"}
_IDEFICS = ("<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>") + _ROW_COL

_FAMILIES: dict[str, Family] = {
    "llava": Family("llava", "LlavaForConditionalGeneration", "<image>", ("<image>",),
                    {"image_token": "<image>"}, _LM_REGEX, "image_token_index"),
    "llava_next": Family("llava_next", "LlavaNextForConditionalGeneration", "<image>", ("<image>",),
                         {"image_token": "<image>"}, _LM_REGEX, "image_token_index", ("image_sizes",)),
    "llava_onevision": Family("llava_onevision", "LlavaOnevisionForConditionalGeneration", "<image>",
                              ("<image>", "<video>"), {"image_token": "<image>", "video_token": "<video>"},
                              _LM_REGEX, "image_token_index", ("image_sizes", "batch_num_images")),
    "qwen2_vl": Family("qwen2_vl", "Qwen2VLForConditionalGeneration",
                       "<|vision_start|><|image_pad|><|vision_end|>", _QWEN, _QWEN_NAMED, _LM_REGEX,
                       "image_token_id", ("image_grid_thw", "mm_token_type_ids")),
    "qwen2_5_vl": Family("qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration",
                         "<|vision_start|><|image_pad|><|vision_end|>", _QWEN, _QWEN_NAMED, _LM_REGEX,
                         "image_token_id", ("image_grid_thw", "mm_token_type_ids")),
    "qwen3_vl": Family("qwen3_vl", "Qwen3VLForConditionalGeneration",
                       "<|vision_start|><|image_pad|><|vision_end|>", _QWEN, _QWEN_NAMED, _LM_REGEX,
                       "image_token_id", ("image_grid_thw", "mm_token_type_ids")),
    "idefics3": Family("idefics3", "Idefics3ForConditionalGeneration", "<image>", _IDEFICS, {},
                       _TEXT_MODEL_REGEX, "image_token_id", ("pixel_attention_mask",)),
    "smolvlm": Family("smolvlm", "SmolVLMForConditionalGeneration", "<image>", _IDEFICS + ("<video>",),
                      {"image_token": "<image>", "fake_image_token": "<fake_token_around_image>",
                       "global_image_token": "<global-img>", "end_of_utterance_token": "<end_of_utterance>",
                       "video_token": "<video>"},
                      _TEXT_MODEL_REGEX, "image_token_id", ("pixel_attention_mask",)),
    "gemma3": Family("gemma3", "Gemma3ForConditionalGeneration", "<start_of_image>",
                     ("<start_of_image>", "<end_of_image>", "<image_soft_token>"),
                     {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                      "image_token": "<image_soft_token>"},
                     _LM_REGEX, "image_token_index", ("token_type_ids",)),
    "internvl": Family("internvl", "InternVLForConditionalGeneration", "<IMG_CONTEXT>",
                       ("<img>", "</img>", "<IMG_CONTEXT>", "<video>"),
                       {"start_image_token": "<img>", "end_image_token": "</img>",
                        "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"},
                       _LM_REGEX, "image_token_id"),
}


def _available(name: str) -> bool:
    fam = _FAMILIES[name]
    if not hasattr(transformers, fam.model_class):
        return False
    if name == "smolvlm":  # SmolVLMProcessor refuses to start without num2words
        return importlib.util.find_spec("num2words") is not None
    return True


FAMILIES: tuple[str, ...] = tuple(name for name in _FAMILIES if _available(name))


def family(name: str) -> Family:
    if name not in _FAMILIES:
        raise ValueError(f"unknown family {name!r}; known: {', '.join(_FAMILIES)}")
    return _FAMILIES[name]


def image_token(name: str) -> str:
    """The text one image part renders as (and the processor expands): it holds the processor's
    ``image_token`` once (Qwen: wrapped in vision start/end; Gemma 3: the begin-of-image token)."""
    return family(name).placeholder


def describe(name: str) -> dict:
    """The facts a caller needs about a family: model class, the image placeholder, the config field
    holding the image token id, the LoRA regex and the extra inputs (beyond ids, mask, pixels)."""
    fam = family(name)
    return {"model_class": fam.model_class, "placeholder": fam.placeholder, "image_token_attr": fam.image_token_attr,
            "lora_regex": fam.lora_regex, "extra_inputs": fam.extra_inputs}


def lora_target_regex(name: str) -> str:
    """A PEFT ``target_modules`` regex selecting only the language model's q/k/v/o/gate/up/down."""
    return family(name).lora_regex


def chat_template(placeholder: str) -> str:
    """The Jinja chat template (see the module docstring), with ``placeholder`` for image parts."""
    ph = placeholder.replace("\\", "\\\\").replace("'", "\\'")
    return (
        "{{- bos_token -}}"
        "{%- for message in messages -%}"
        "{%- if message['role'] == 'system' -%}{{- 'SYSTEM: ' -}}"
        "{%- elif message['role'] == 'user' -%}{{- 'USER: ' -}}"
        "{%- elif message['role'] == 'assistant' -%}{{- 'ASSISTANT: ' -}}"
        "{%- else -%}{{- raise_exception('unknown role ' + message['role']) -}}{%- endif -%}"
        "{%- if message['content'] is string -%}{{- message['content'] -}}"
        "{%- else -%}{%- for part in message['content'] -%}"
        "{%- if not loop.first -%}{{- ' ' -}}{%- endif -%}"
        "{%- if part['type'] == 'image' -%}{{- '" + ph + "' -}}"
        "{%- elif part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
        "{%- endfor -%}{%- endif -%}"
        "{%- if message['role'] == 'assistant' -%}{{- ' ' + eos_token -}}{%- endif -%}"
        "{{- ' ' -}}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{- 'ASSISTANT: ' -}}{%- endif -%}"
    )


def tokenizer(name: str):
    """The family's word-level ``PreTrainedTokenizerFast``: <pad>=0, <s>=1, </s>=2, <unk>=3, then the
    family's special tokens, then ``WORDS``; the chat template set."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    fam = family(name)
    specials = [PAD, BOS, EOS, UNK, *fam.specials]
    vocab = {w: i for i, w in enumerate(dict.fromkeys(specials + list(WORDS)))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    extra = [s for s in fam.specials if s not in fam.named.values()]
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, bos_token=BOS, eos_token=EOS, unk_token=UNK,
                                   extra_special_tokens=extra or None,
                                   model_specific_special_tokens=dict(fam.named) or None,
                                   chat_template=chat_template(fam.placeholder))


def _ids(tok, *tokens: str) -> list[int]:
    ids = tok.convert_tokens_to_ids(list(tokens))
    assert tok.unk_token_id not in ids, tokens
    return ids


def _vocab_size(tok) -> int:
    return len(tok)


def _special_ids(tok) -> dict[str, int]:
    return {"pad_token_id": tok.pad_token_id, "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id}


def _llama(tok, **kw):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=_vocab_size(tok), hidden_size=HIDDEN, intermediate_size=2 * HIDDEN,
                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                       **_special_ids(tok), **kw)


def _qwen2(tok, **kw):
    from transformers import Qwen2Config

    return Qwen2Config(vocab_size=_vocab_size(tok), hidden_size=HIDDEN, intermediate_size=2 * HIDDEN,
                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                       **_special_ids(tok), **kw)


def _clip_vision():
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(hidden_size=VISION_HIDDEN, intermediate_size=2 * VISION_HIDDEN, num_hidden_layers=1,
                            num_attention_heads=2, image_size=IMAGE_SIZE, patch_size=PATCH,
                            projection_dim=VISION_HIDDEN)


def _siglip_vision():
    from transformers import SiglipVisionConfig

    return SiglipVisionConfig(hidden_size=VISION_HIDDEN, intermediate_size=2 * VISION_HIDDEN, num_hidden_layers=1,
                              num_attention_heads=2, image_size=IMAGE_SIZE, patch_size=PATCH)


def _tokens_per_image() -> int:
    return (IMAGE_SIZE // PATCH) ** 2  # 16 patches per image / tile


# --- per family: (config, processor) -------------------------------------------------------------

def _llava(tok):
    from transformers import CLIPImageProcessorPil, LlavaConfig, LlavaProcessor

    cfg = LlavaConfig(vision_config=_clip_vision(), text_config=_llama(tok), image_token_index=_ids(tok, "<image>")[0],
                      vision_feature_select_strategy="default", vision_feature_layer=-1)
    ip = CLIPImageProcessorPil(size={"shortest_edge": IMAGE_SIZE},
                               crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    proc = LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=PATCH, vision_feature_select_strategy="default",
                          num_additional_image_tokens=1, chat_template=tok.chat_template)
    return cfg, proc


def _llava_next(tok):
    from transformers import LlavaNextConfig, LlavaNextImageProcessorPil, LlavaNextProcessor

    cfg = LlavaNextConfig(vision_config=_clip_vision(), text_config=_llama(tok),
                          image_token_index=_ids(tok, "<image>")[0],
                          vision_feature_select_strategy="default", vision_feature_layer=-1,
                          image_grid_pinpoints=PINPOINTS, image_seq_length=_tokens_per_image())
    ip = LlavaNextImageProcessorPil(size={"shortest_edge": IMAGE_SIZE},
                                    crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                                    image_grid_pinpoints=PINPOINTS)
    proc = LlavaNextProcessor(image_processor=ip, tokenizer=tok, patch_size=PATCH,
                              vision_feature_select_strategy="default", num_additional_image_tokens=1,
                              chat_template=tok.chat_template)
    return cfg, proc


def _llava_onevision(tok):
    from transformers import (LlavaOnevisionConfig, LlavaOnevisionImageProcessorPil, LlavaOnevisionProcessor,
                              LlavaOnevisionVideoProcessor)

    image_id, video_id = _ids(tok, "<image>", "<video>")
    cfg = LlavaOnevisionConfig(vision_config=_siglip_vision(), text_config=_qwen2(tok), image_token_index=image_id,
                               video_token_index=video_id, vision_feature_select_strategy="full",
                               vision_feature_layer=-1, image_grid_pinpoints=PINPOINTS)
    size = {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    ip = LlavaOnevisionImageProcessorPil(size=size, image_grid_pinpoints=PINPOINTS)
    vp = LlavaOnevisionVideoProcessor(size=size)
    proc = LlavaOnevisionProcessor(image_processor=ip, tokenizer=tok, video_processor=vp,
                                   num_image_tokens=_tokens_per_image(), vision_feature_select_strategy="full",
                                   chat_template=tok.chat_template)
    return cfg, proc


_MERGE = 2  # Qwen: 2x2 patches merge into one token; a 28x28 image is 4x4 patches -> 4 tokens
# images are resized to multiples of 14 with 28*28 <= h*w <= 56*56 pixels: 4 to 16 tokens per image
_QWEN_PIXELS = {"shortest_edge": (2 * PATCH * _MERGE) ** 2, "longest_edge": (4 * PATCH * _MERGE) ** 2}


def _qwen_rope(interleaved: bool | None = None) -> dict:
    head_dim = HIDDEN // 4
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}  # sums to head_dim / 2
    assert sum(rope["mrope_section"]) == head_dim // 2
    if interleaved is not None:
        rope["mrope_interleaved"] = interleaved
    return rope


def _qwen_ids(tok) -> dict:
    image, video, start, end = _ids(tok, "<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")
    return {"image_token_id": image, "video_token_id": video, "vision_start_token_id": start,
            "vision_end_token_id": end}


def _qwen_processors(tok, video_cls: str):
    from transformers import Qwen2VLImageProcessorPil

    geometry = {"patch_size": PATCH, "merge_size": _MERGE, "temporal_patch_size": 2}
    ip = Qwen2VLImageProcessorPil(size=dict(_QWEN_PIXELS), **geometry)
    vp = getattr(transformers, video_cls)(size=dict(_QWEN_PIXELS), **geometry)
    return ip, vp


def _qwen_text(cls_name: str, tok, **kw):
    return getattr(transformers, cls_name)(
        vocab_size=_vocab_size(tok), hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, **_special_ids(tok), **kw)


def _qwen2_vl(tok):
    from transformers import Qwen2VLConfig, Qwen2VLProcessor, Qwen2VLVisionConfig

    vision = Qwen2VLVisionConfig(depth=1, embed_dim=VISION_HIDDEN, hidden_size=HIDDEN, num_heads=2, mlp_ratio=2,
                                 patch_size=PATCH, spatial_merge_size=_MERGE, temporal_patch_size=2)
    text = _qwen_text("Qwen2VLTextConfig", tok, rope_parameters=_qwen_rope())
    cfg = Qwen2VLConfig(vision_config=vision, text_config=text, **_qwen_ids(tok))
    ip, vp = _qwen_processors(tok, "Qwen2VLVideoProcessor")
    return cfg, Qwen2VLProcessor(image_processor=ip, tokenizer=tok, video_processor=vp, chat_template=tok.chat_template)


def _qwen2_5_vl(tok):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLProcessor, Qwen2_5_VLVisionConfig

    vision = Qwen2_5_VLVisionConfig(depth=1, hidden_size=VISION_HIDDEN, intermediate_size=2 * VISION_HIDDEN,
                                    num_heads=2, out_hidden_size=HIDDEN, patch_size=PATCH, spatial_merge_size=_MERGE,
                                    temporal_patch_size=2, window_size=2 * PATCH * _MERGE, fullatt_block_indexes=[0])
    text = _qwen_text("Qwen2_5_VLTextConfig", tok, rope_parameters=_qwen_rope())
    cfg = Qwen2_5_VLConfig(vision_config=vision, text_config=text, **_qwen_ids(tok))
    ip, vp = _qwen_processors(tok, "Qwen2VLVideoProcessor")
    return cfg, Qwen2_5_VLProcessor(image_processor=ip, tokenizer=tok, video_processor=vp,
                                    chat_template=tok.chat_template)


def _qwen3_vl(tok):
    from transformers import Qwen3VLConfig, Qwen3VLProcessor, Qwen3VLVisionConfig

    vision = Qwen3VLVisionConfig(depth=1, hidden_size=VISION_HIDDEN, intermediate_size=2 * VISION_HIDDEN, num_heads=2,
                                 out_hidden_size=HIDDEN, patch_size=PATCH, spatial_merge_size=_MERGE,
                                 temporal_patch_size=2, num_position_embeddings=64, deepstack_visual_indexes=[0])
    text = _qwen_text("Qwen3VLTextConfig", tok, head_dim=HIDDEN // 4, rope_parameters=_qwen_rope(interleaved=True))
    cfg = Qwen3VLConfig(vision_config=vision, text_config=text, **_qwen_ids(tok))
    ip, vp = _qwen_processors(tok, "Qwen3VLVideoProcessor")
    return cfg, Qwen3VLProcessor(image_processor=ip, tokenizer=tok, video_processor=vp, chat_template=tok.chat_template)


_IDEFICS_SIZE = {"longest_edge": 2 * IMAGE_SIZE}  # images resized to 56 on the long side -> 2x2 tiles + global
_IDEFICS_SEQ = _tokens_per_image() // 4  # pixel shuffle with scale factor 2: 16 patches -> 4 tokens


def _idefics3(tok):
    from transformers import Idefics3Config, Idefics3ImageProcessorPil, Idefics3Processor, Idefics3VisionConfig

    vision = Idefics3VisionConfig(hidden_size=VISION_HIDDEN, intermediate_size=2 * VISION_HIDDEN, num_hidden_layers=1,
                                  num_attention_heads=2, image_size=IMAGE_SIZE, patch_size=PATCH)
    cfg = Idefics3Config(vision_config=vision, text_config=_llama(tok), image_token_id=_ids(tok, "<image>")[0],
                         scale_factor=2, **_special_ids(tok))
    ip = Idefics3ImageProcessorPil(size=dict(_IDEFICS_SIZE), max_image_size={"longest_edge": IMAGE_SIZE})
    proc = Idefics3Processor(image_processor=ip, tokenizer=tok, image_seq_len=_IDEFICS_SEQ,
                             chat_template=tok.chat_template)
    return cfg, proc


def _smolvlm(tok):
    from transformers import (SmolVLMConfig, SmolVLMImageProcessorPil, SmolVLMProcessor, SmolVLMVideoProcessor,
                              SmolVLMVisionConfig)

    vision = SmolVLMVisionConfig(hidden_size=VISION_HIDDEN, intermediate_size=2 * VISION_HIDDEN, num_hidden_layers=1,
                                 num_attention_heads=2, image_size=IMAGE_SIZE, patch_size=PATCH)
    cfg = SmolVLMConfig(vision_config=vision, text_config=_llama(tok), image_token_id=_ids(tok, "<image>")[0],
                        scale_factor=2, **_special_ids(tok))
    ip = SmolVLMImageProcessorPil(size=dict(_IDEFICS_SIZE), max_image_size={"longest_edge": IMAGE_SIZE})
    vp = SmolVLMVideoProcessor(size=dict(_IDEFICS_SIZE), max_image_size={"longest_edge": IMAGE_SIZE})
    proc = SmolVLMProcessor(image_processor=ip, tokenizer=tok, video_processor=vp, image_seq_len=_IDEFICS_SEQ,
                            chat_template=tok.chat_template)
    return cfg, proc


_GEMMA_TOKENS = 4  # 4x4 patches average-pooled to 2x2 soft tokens


def _gemma3(tok):
    from transformers import Gemma3Config, Gemma3ImageProcessorPil, Gemma3Processor, Gemma3TextConfig

    boi, eoi, soft = _ids(tok, "<start_of_image>", "<end_of_image>", "<image_soft_token>")
    text = Gemma3TextConfig(vocab_size=_vocab_size(tok), hidden_size=HIDDEN, intermediate_size=2 * HIDDEN,
                            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=HIDDEN // 4,
                            query_pre_attn_scalar=HIDDEN // 4, sliding_window=64,
                            layer_types=["sliding_attention", "full_attention"], max_position_embeddings=512,
                            **_special_ids(tok))
    cfg = Gemma3Config(vision_config=_siglip_vision(), text_config=text, mm_tokens_per_image=_GEMMA_TOKENS,
                       boi_token_index=boi, eoi_token_index=eoi, image_token_index=soft)
    ip = Gemma3ImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    proc = Gemma3Processor(image_processor=ip, tokenizer=tok, image_seq_length=_GEMMA_TOKENS,
                           chat_template=tok.chat_template)
    return cfg, proc


_INTERNVL_SEQ = _tokens_per_image() // 4  # pixel shuffle with downsample ratio 0.5: 16 patches -> 4 tokens per tile


def _internvl(tok):
    from transformers import (GotOcr2ImageProcessorPil, InternVLConfig, InternVLProcessor, InternVLVideoProcessor,
                              InternVLVisionConfig)

    vision = InternVLVisionConfig(hidden_size=VISION_HIDDEN, intermediate_size=2 * VISION_HIDDEN, num_hidden_layers=1,
                                  num_attention_heads=2, image_size=[IMAGE_SIZE, IMAGE_SIZE], patch_size=[PATCH, PATCH])
    cfg = InternVLConfig(vision_config=vision, text_config=_qwen2(tok), image_token_id=_ids(tok, "<IMG_CONTEXT>")[0],
                         image_seq_length=_INTERNVL_SEQ, downsample_ratio=0.5, vision_feature_layer=-1)
    size = {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    ip = GotOcr2ImageProcessorPil(size=size, crop_to_patches=True, min_patches=1, max_patches=4)
    vp = InternVLVideoProcessor(size=size)
    proc = InternVLProcessor(image_processor=ip, tokenizer=tok, video_processor=vp, image_seq_length=_INTERNVL_SEQ,
                             chat_template=tok.chat_template)
    return cfg, proc


_BUILDERS: dict[str, Callable[[Any], tuple[Any, Any]]] = {
    "llava": _llava, "llava_next": _llava_next, "llava_onevision": _llava_onevision, "qwen2_vl": _qwen2_vl,
    "qwen2_5_vl": _qwen2_5_vl, "qwen3_vl": _qwen3_vl, "idefics3": _idefics3, "smolvlm": _smolvlm, "gemma3": _gemma3,
    "internvl": _internvl,
}


def build(name: str, folder: str | Path, seed: int = 0) -> Path:
    """Write the tiny ``name`` model, its processor (tokenizer, image/video processor, chat template)
    to ``folder`` and return it. Same ``seed``, same weights."""
    import torch

    if name not in FAMILIES:
        raise ValueError(f"family {name!r} is not available here; available: {', '.join(FAMILIES)}")
    fam = family(name)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = tokenizer(name)
    cfg, proc = _BUILDERS[name](tok)
    torch.manual_seed(seed)
    model = getattr(transformers, fam.model_class)(cfg).float()
    with torch.no_grad():  # Gemma 3 initialises its image projection to zeros: the image would never reach the LM
        for pname, p in model.named_parameters():
            if pname.endswith("mm_input_projection_weight"):
                p.normal_(0.0, p.shape[0] ** -0.5)
    gen = model.generation_config
    gen.pad_token_id, gen.bos_token_id, gen.eos_token_id = tok.pad_token_id, tok.bos_token_id, tok.eos_token_id
    model.save_pretrained(folder)
    proc.save_pretrained(folder)
    return folder
