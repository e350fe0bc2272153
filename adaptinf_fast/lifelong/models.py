"""Loading base models, tokenizers, processors and saved PEFT adapters from local folders only.

Any ``transformers`` causal LM (``AutoModelForCausalLM``) or image-text-to-text model
(``AutoModelForImageTextToText``: LLaVA-1.5 / NeXT / OneVision, Qwen2-VL / 2.5-VL / 3-VL,
Idefics3 / SmolVLM, Gemma 3, InternVL, ...). A folder with a multimodal processor gets it
(``processor_for``), and the encoder then goes through it; LLaVA-1.5 folders with only a tokenizer
keep the built-in expansion. LoRA targets default to the language model's projections, never the
vision tower or the projector (``default_lora_targets``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from ..data.encoder import config_image_token_id, image_processor_for
from ..data.processor import is_processor

LLM_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# module-name parts of the vision side of a VLM (tower, projector, merger): LoRA stays off them
VISION_PARTS = ("vision", "visual", "image_newline", "multi_modal_projector", "mm_projector", "connector", "merger",
                "patch_embed")
CONVERT_LLAVA = ("this folder is an original LLaVA checkpoint (the Adapt-∞ release's format, liuhaotian/llava-v1.5-*), "
                 "which transformers does not load. The released bases exist converted: llava-hf/llava-1.5-7b-hf, "
                 "llava-hf/llava-1.5-13b-hf. Convert any other (e.g. a fine-tuned stage) with transformers' own script, "
                 "which is in its source tree, not in the pip package: from a clone of github.com/huggingface/transformers "
                 "at your installed version, `python src/transformers/models/llava/convert_llava_weights_to_hf.py "
                 "--text_model_id lmsys/vicuna-7b-v1.5 --vision_model_id openai/clip-vit-large-patch14-336 "
                 "--old_state_dict_id <this checkpoint's Hub id> --output_hub_path <your-org/new-name>` (it reads from and "
                 "writes to the Hugging Face Hub); download the result to a folder and point the config at it")


def check_loadable(folder: str | Path) -> None:
    """Refuse an original (non-transformers) LLaVA checkpoint with how to convert it."""
    cfg = Path(folder) / "config.json"
    if not cfg.exists():
        return
    doc = json.loads(cfg.read_text())
    archs = doc.get("architectures") or []
    if "mm_vision_tower" in doc or any(a in ("LlavaLlamaForCausalLM", "LlavaMistralForCausalLM", "LlavaMptForCausalLM")
                                       for a in archs):
        raise ValueError(f"{folder}: {CONVERT_LLAVA}")


def is_multimodal(config) -> bool:
    return getattr(config, "vision_config", None) is not None


def model_class(config):
    """The transformers class of a config: image-text-to-text for a VLM, else a causal LM."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    return AutoModelForImageTextToText if is_multimodal(config) else AutoModelForCausalLM


def processor_for(folder: str | Path) -> Any:
    """The folder's multimodal processor (``AutoProcessor``), or None (text-only, or a LLaVA-1.5
    folder with only a tokenizer and maybe an image processor)."""
    folder = Path(folder)
    if not any((folder / f).exists() for f in ("processor_config.json", "preprocessor_config.json")):
        return None
    from transformers import AutoProcessor

    try:
        proc = AutoProcessor.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, TypeError, KeyError, ImportError) as exc:
        model_type = _model_type(folder)
        if model_type in (None, "llava"):  # LLaVA-1.5 with a bare image processor: the built-in expansion
            return None
        raise ValueError(f"{folder}: the {model_type} model's processor does not load ({type(exc).__name__}: {exc}); "
                         "its images cannot be encoded without it (Qwen2-VL-style processors need torchvision, "
                         "SmolVLM's num2words: pip install torchvision num2words)") from exc
    return proc if is_processor(proc) else None


def _model_type(folder: Path) -> str | None:
    cfg = folder / "config.json"
    return json.loads(cfg.read_text()).get("model_type") if cfg.exists() else None


LLM_MLP = ("gate_proj", "up_proj", "down_proj")


def default_lora_targets(model, projections: tuple[str, ...] = LLM_PROJECTIONS) -> Any:
    """The language model's ``projections`` (default q/k/v/o, gate/up/down; ``LLM_MLP`` for the MLP
    only): a list of names for a text-only model, a regex excluding the vision side for a VLM
    (``VISION_PARTS``)."""
    cfg = getattr(model, "config", None)
    names = "|".join(projections)
    if getattr(cfg, "model_type", "") == "llava":  # the form earlier adapters were saved with
        return rf".*language_model.*\.({names})"
    if cfg is not None and is_multimodal(cfg):
        return rf"(?!.*({'|'.join(VISION_PARTS)})).*\.({names})"
    return list(projections)


def load_peft_model(adapter_dir: str | Path, tokenizer_dir: str | Path | None = None):
    """(PeftModel, tokenizer or None, image processor or None) from ``adapter_dir`` (``PeftModel.save_pretrained`` output);
    the base model is read from the adapter's ``base_model_name_or_path`` (a local folder: nothing
    is downloaded). LLaVA bases load as ``LlavaForConditionalGeneration``, others as causal LMs."""
    from peft import PeftModel
    from transformers import AutoConfig, AutoTokenizer

    adapter_dir = Path(adapter_dir)
    cfg_file = adapter_dir / "adapter_config.json"
    if not cfg_file.exists():
        raise FileNotFoundError(f"{adapter_dir} has no adapter_config.json (save it with PeftModel.save_pretrained)")
    base = json.loads(cfg_file.read_text()).get("base_model_name_or_path")
    if not base or not Path(base).exists():
        raise FileNotFoundError(f"the adapter's base model {base!r} is not a local folder")
    check_loadable(base)
    config = AutoConfig.from_pretrained(base, local_files_only=True)
    model = PeftModel.from_pretrained(model_class(config).from_pretrained(base, local_files_only=True), adapter_dir)
    tokenizer = None
    for folder in [tokenizer_dir, adapter_dir, base]:
        if folder is not None and any((Path(folder) / f).exists() for f in ("tokenizer.json", "tokenizer_config.json")):
            tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            break
    processor = processor_for(base) if is_multimodal(config) else None
    return model, tokenizer, processor if processor is not None else image_processor_for(base)


def pick_device(setting: str = "auto"):
    """The torch device of a ``device`` setting: "auto" takes the GPU when one is visible; "cuda"
    means this process's GPU under torchrun / accelerate launch (``LOCAL_RANK``), made current."""
    import os

    import torch

    if setting == "auto":
        setting = "cuda" if torch.cuda.is_available() else "cpu"
    if setting == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
        return device
    return torch.device(setting)


def base_loader(model: dict) -> Callable[[], tuple[Any, Any]]:
    """A loader of (base model (LLaVA or causal LM), tokenizer, image processor or None) from
    ``ModelSettings`` (as a dict)."""

    def load():
        import torch
        from transformers import AutoConfig, AutoTokenizer

        check_loadable(model["base"])
        device = pick_device(model.get("device", "auto"))
        dtype = getattr(torch, model.get("dtype") or ("bfloat16" if device.type == "cuda" else "float32"))
        config = AutoConfig.from_pretrained(model["base"], local_files_only=True)
        net = model_class(config).from_pretrained(model["base"], local_files_only=True, dtype=dtype).to(device)
        processor = processor_for(model["base"]) if is_multimodal(config) else None
        if model.get("tokenizer") or processor is None:
            tokenizer = AutoTokenizer.from_pretrained(model.get("tokenizer") or model["base"], local_files_only=True)
        else:
            tokenizer = processor.tokenizer
        return net, tokenizer, processor if processor is not None else image_processor_for(model["base"])

    return load


def _probe_image_tokens(processor, config) -> str:
    """How many image tokens the processor gives a square and a wide image: 'the same for both
    probes' or 'per image size', with the counts."""
    from ..data.processor import ProcessorCodec, _probe_image

    image_id = config_image_token_id(config)
    codec = ProcessorCodec(processor)
    sizes = ((28, 28), (112, 28))  # (width, height): a square and a wide image
    try:
        counts = [int((codec.process(codec.image_placeholder(), [_probe_image(28).resize(wh)])["input_ids"]
                       == image_id).sum()) for wh in sizes]
    except Exception as exc:  # a report line, never a failure of `info`
        return f"token count not probed: {type(exc).__name__}"
    kind = "the same for both probes" if counts[0] == counts[1] else "per image size"
    return f"{kind}: a 28x28 image -> {counts[0]} tokens, 112x28 -> {counts[1]}"


def describe(folder: str | Path) -> dict:
    """What ``adaptinf-fast info --model`` reports for a model folder: family, class, processor,
    the image-token policy and the default LoRA targets (counted on a meta-device copy)."""
    import re

    import torch
    from transformers import AutoConfig

    check_loadable(folder)
    config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    cls = model_class(config)
    with torch.device("meta"):
        net = cls.from_config(config)
    targets = default_lora_targets(net)
    linear = [n for n, m in net.named_modules() if isinstance(m, torch.nn.Linear)]
    if isinstance(targets, str):
        hit = [n for n in linear if re.fullmatch(targets, n)]
    else:
        hit = [n for n in linear if n.split(".")[-1] in targets]
    processor = processor_for(folder) if is_multimodal(config) else None
    if processor is not None:
        policy = (f"{type(processor).__name__}: renders with its chat template and expands each image itself "
                  f"(placeholder {getattr(processor, 'image_token', '<image>')!r}; "
                  f"{_probe_image_tokens(processor, config)})")
    elif is_multimodal(config):
        vision = config.vision_config
        policy = (f"no processor: <image> expands to (image_size / patch_size)^2 = "
                  f"{(vision.image_size // vision.patch_size) ** 2} tokens, images resized to {vision.image_size}^2")
    else:
        policy = "text only"
    return {"family": config.model_type, "class": cls.__name__ if hasattr(cls, "__name__") else str(cls),
            "model": type(net).__name__, "processor": type(processor).__name__ if processor is not None else None,
            "image_tokens": policy, "lora_targets": targets, "lora_layers": len(hit),
            "lora_examples": hit[:3], "vision_layers_targeted": sum(any(v in n for v in VISION_PARTS) for n in hit)}
