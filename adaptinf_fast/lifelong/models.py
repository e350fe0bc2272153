"""Loading base models, tokenizers and saved PEFT adapters from local folders only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from ..data.encoder import image_processor_for

LLM_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def load_peft_model(adapter_dir: str | Path, tokenizer_dir: str | Path | None = None):
    """(PeftModel, tokenizer or None, image processor or None) from ``adapter_dir`` (``PeftModel.save_pretrained`` output);
    the base model is read from the adapter's ``base_model_name_or_path`` (a local folder: nothing
    is downloaded). LLaVA bases load as ``LlavaForConditionalGeneration``, others as causal LMs."""
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlavaForConditionalGeneration

    adapter_dir = Path(adapter_dir)
    cfg_file = adapter_dir / "adapter_config.json"
    if not cfg_file.exists():
        raise FileNotFoundError(f"{adapter_dir} has no adapter_config.json (save it with PeftModel.save_pretrained)")
    base = json.loads(cfg_file.read_text()).get("base_model_name_or_path")
    if not base or not Path(base).exists():
        raise FileNotFoundError(f"the adapter's base model {base!r} is not a local folder")
    config = AutoConfig.from_pretrained(base, local_files_only=True)
    cls = LlavaForConditionalGeneration if config.model_type == "llava" else AutoModelForCausalLM
    model = PeftModel.from_pretrained(cls.from_pretrained(base, local_files_only=True), adapter_dir)
    tokenizer = None
    for folder in [tokenizer_dir, adapter_dir, base]:
        if folder is not None and any((Path(folder) / f).exists() for f in ("tokenizer.json", "tokenizer_config.json")):
            tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            break
    return model, tokenizer, image_processor_for(base)


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
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlavaForConditionalGeneration

        device = pick_device(model.get("device", "auto"))
        dtype = getattr(torch, model.get("dtype") or ("bfloat16" if device.type == "cuda" else "float32"))
        config = AutoConfig.from_pretrained(model["base"], local_files_only=True)
        cls = LlavaForConditionalGeneration if config.model_type == "llava" else AutoModelForCausalLM
        net = cls.from_pretrained(model["base"], local_files_only=True, dtype=dtype).to(device)
        tokenizer = AutoTokenizer.from_pretrained(model.get("tokenizer") or model["base"], local_files_only=True)
        return net, tokenizer, image_processor_for(model["base"])

    return load
