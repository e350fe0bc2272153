"""Loading a saved PEFT adapter (and its base model and tokenizer) from local folders only."""

from __future__ import annotations

import json
from pathlib import Path


def load_peft_model(adapter_dir: str | Path, tokenizer_dir: str | Path | None = None):
    """(PeftModel, tokenizer or None) from ``adapter_dir`` (``PeftModel.save_pretrained`` output);
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
    return model, tokenizer
