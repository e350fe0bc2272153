"""``adaptinf-fast run --config stages.yaml``: a real lifelong run described in one YAML/TOML file.

Top-level keys (every one but ``model`` and ``stages`` optional)::

    out:       folder the run writes (default ./adaptinf-run)
    seed:      0
    model:     {base: local folder, tokenizer: folder (default base), adapter: starting PEFT adapter,
                dtype: float32|bfloat16|float16 (default bfloat16 on GPU, float32 on CPU), device: auto|cpu|cuda}
    lora:      {r, alpha, dropout, target_modules}            (LoraSettings)
    train:     {lr, epochs, batch_size, grad_accum, warmup_ratio, weight_decay, max_grad_norm, save_every}
    features:  {layers, out_dim, batch_size, max_length}
    selection: {method, k, budget, pool_budget, prune, eps, scores, rules: adaptinf|release}
    eval:      {scorer, max_new_tokens, limit}
    stages:    [{name, train: LLaVA JSON/JSONL, test: LLaVA JSON/JSONL, images: folder,
                 and per-stage k / budget / pool_budget / eps / method}, ...]

Everything is checked before any work starts; nothing is downloaded (all paths are local).
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any, Callable

from .run import LoraSettings, RunConfig, Task
from .stage import read_config
from .train import TrainConfig

SECTIONS = {
    "features": {"layers": "layers", "out_dim": "out_dim", "batch_size": "feature_batch_size", "max_length": "max_length"},
    "selection": {k: k for k in ("method", "k", "budget", "pool_budget", "prune", "eps", "scores", "rules")},
    "eval": {"scorer": "scorer", "max_new_tokens": "max_new_tokens", "limit": "eval_limit"},
}
MODEL_KEYS = ("base", "tokenizer", "adapter", "dtype", "device")
STAGE_KEYS = ("name", "train", "test", "images")
STAGE_OVERRIDES = ("k", "budget", "pool_budget", "eps", "method", "prune")


def _table(doc: dict, key: str, allowed, errors: list[str]) -> dict:
    part = doc.get(key) or {}
    if not isinstance(part, dict):
        errors.append(f"'{key}' must be a mapping")
        return {}
    unknown = set(part) - set(allowed)
    if unknown:
        errors.append(f"'{key}': unknown keys {sorted(unknown)} (known: {sorted(allowed)})")
    return {k: v for k, v in part.items() if k in allowed}


def load_run_config(path: str | Path) -> tuple[Path, list[Task], RunConfig, dict]:
    """(out folder, tasks, RunConfig, model settings) from a config file, all errors reported at once."""
    doc = read_config(path)
    errors: list[str] = []
    unknown = set(doc) - {"out", "seed", "model", "lora", "train", "stages", *SECTIONS}
    if unknown:
        errors.append(f"unknown top-level keys {sorted(unknown)}")
    model = _table(doc, "model", MODEL_KEYS, errors)
    base = model.get("base")
    if not base or not (Path(base) / "config.json").exists():
        errors.append(f"model.base is {base!r}; expected a local model folder with a config.json")
    for key in ("tokenizer", "adapter"):
        if model.get(key) is not None and not Path(model[key]).is_dir():
            errors.append(f"model.{key} {model[key]!r} is not a folder")
    if model.get("dtype", "float32") not in ("float32", "bfloat16", "float16"):
        errors.append(f"model.dtype is {model['dtype']!r}; expected float32, bfloat16 or float16")
    if model.get("device", "auto") not in ("auto", "cpu", "cuda"):
        errors.append(f"model.device is {model['device']!r}; expected auto, cpu or cuda")
    lora = LoraSettings(**_table(doc, "lora", [f.name for f in fields(LoraSettings)], errors))
    seed = doc.get("seed", 0)
    train_keys = [f.name for f in fields(TrainConfig) if f.name not in ("seed", "pad_token_id")]
    train = TrainConfig(**_table(doc, "train", train_keys, errors), seed=seed)
    flat: dict[str, Any] = {}
    for section, mapping in SECTIONS.items():
        flat.update({mapping[k]: v for k, v in _table(doc, section, mapping, errors).items()})
    tasks = []
    stages = doc.get("stages")
    if not isinstance(stages, list) or not stages:
        errors.append("'stages' must be a non-empty list")
        stages = []
    for i, s in enumerate(stages, 1):
        if not isinstance(s, dict):
            errors.append(f"stage {i}: expected a mapping")
            continue
        bad = set(s) - set(STAGE_KEYS) - set(STAGE_OVERRIDES)
        if bad:
            errors.append(f"stage {i}: unknown keys {sorted(bad)}")
        for key in ("name", "train", "test"):
            if not s.get(key):
                errors.append(f"stage {i}: '{key}' is required")
        for key in ("train", "test"):
            if s.get(key) and not Path(s[key]).is_file():
                errors.append(f"stage {i}: {key} file {s[key]} does not exist")
        if s.get("images") and not Path(s["images"]).is_dir():
            errors.append(f"stage {i}: images folder {s['images']} does not exist")
        tasks.append(Task(s.get("name", f"stage{i}"), s.get("train"), s.get("test"), s.get("images"),
                          {k: s[k] for k in STAGE_OVERRIDES if k in s}))
    cfg = RunConfig(**flat, lora=lora, train=train, seed=seed)
    if not errors:
        try:
            cfg.validate()
            for t, task in enumerate(tasks, 1):
                cfg.stage_config(t, task, task.train).validate()
        except ValueError as exc:
            errors.append(str(exc))
    if errors:
        raise ValueError(f"invalid run config {path}:\n  - " + "\n  - ".join(errors))
    return Path(doc.get("out", "adaptinf-run")), tasks, cfg, model


def base_loader(model: dict) -> Callable[[], tuple[Any, Any]]:
    """A loader of the base model (LLaVA or causal LM) and its tokenizer from local folders."""

    def load():
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlavaForConditionalGeneration

        device = model.get("device", "auto")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = getattr(torch, model.get("dtype") or ("bfloat16" if device == "cuda" else "float32"))
        config = AutoConfig.from_pretrained(model["base"], local_files_only=True)
        cls = LlavaForConditionalGeneration if config.model_type == "llava" else AutoModelForCausalLM
        net = cls.from_pretrained(model["base"], local_files_only=True, dtype=dtype).to(device)
        tokenizer = AutoTokenizer.from_pretrained(model.get("tokenizer") or model["base"], local_files_only=True)
        return net, tokenizer

    return load
