"""Feature extraction throughput: GradientFeaturizer vs the release-style loop (batch 1, full LoRA
gradients, then TRAK's BasicProjector) and vs a plain forward+backward over the same batches.

CPU: a ~20M-parameter Llama config, LoRA r=16 on all linear layers, 256 tokens, batch 16, k=8192,
8 batches (128 samples). GPU: a ~1B-parameter config in bf16 (same LoRA), batch 16, 16 batches (256
samples: one full gradient buffer). The featurizer runs with its gradient buffer (several batches
per projection launch, the default) and with ``project_samples=16`` (one launch per batch). Rows
report samples/s; on GPU also the peak memory (CPU peak memory is not measured).
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

import adaptinf_fast as af
from conftest import CUDA, sync

DEVICE = "cuda" if CUDA else "cpu"
BATCH, TOKENS, K = 16, 256, 8192
N_BATCHES = 16 if CUDA else 8


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    if CUDA:  # ~1.1B parameters
        cfg = LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=20,
                          num_attention_heads=16, num_key_value_heads=4, max_position_embeddings=1024)
    else:  # ~20M parameters
        cfg = LlamaConfig(vocab_size=8000, hidden_size=512, intermediate_size=1376, num_hidden_layers=4,
                          num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=512)
    model = LlamaForCausalLM(cfg).to(DEVICE, torch.bfloat16 if CUDA else torch.float32)
    lora = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", lora_dropout=0.0, init_lora_weights=False)
    model = get_peft_model(model, lora)
    n_params = sum(p.numel() for p in model.parameters())
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, cfg.vocab_size, (BATCH * N_BATCHES, TOKENS), generator=gen)
    labels = ids.clone()
    labels[:, : TOKENS // 2] = -100  # the first half is the prompt
    rows = [{"id": i, "input_ids": ids[i], "labels": labels[i]} for i in range(len(ids))]
    return model, rows, n_params


def _record(benchmark, samples: int, method: str, n_params: int, **extra):
    benchmark.extra_info.update(method=method, samples_per_s=round(samples / benchmark.stats.stats.mean, 4),
                                device=DEVICE, model_params=n_params, batch=BATCH, tokens=TOKENS, out_dim=K, **extra)
    if CUDA:
        benchmark.extra_info["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)


def _reset_peak():
    if CUDA:
        torch.cuda.reset_peak_memory_stats()


def test_plain_forward_backward(benchmark, setup):
    model, rows, n_params = setup
    model.eval()

    def run():
        for b in range(N_BATCHES):
            chunk = rows[b * BATCH : (b + 1) * BATCH]
            ids = torch.stack([r["input_ids"] for r in chunk]).to(DEVICE)
            labels = torch.stack([r["labels"] for r in chunk]).to(DEVICE)
            model(input_ids=ids, labels=labels).loss.backward()
        model.zero_grad(set_to_none=True)
        sync()

    _reset_peak()
    benchmark.pedantic(run, rounds=2, iterations=1, warmup_rounds=1 if CUDA else 0)
    _record(benchmark, BATCH * N_BATCHES, "plain forward+backward (the floor)", n_params)


@pytest.mark.parametrize("layers,mode,per_launch", [("last", "dense", 256), ("last", "dense", BATCH), ("last", "factored", 0),
                                                   ("all", "factored", 0), ("all", "dense", 256), ("all", "dense", BATCH)])
def test_gradient_featurizer(benchmark, setup, layers, mode, per_launch):
    model, rows, n_params = setup
    fz = af.GradientFeaturizer(model, layers=layers, out_dim=K, mode=mode, project_samples=max(per_launch, 1))
    _reset_peak()
    benchmark.pedantic(lambda: fz.extract(rows, batch_size=BATCH, progress=False), rounds=1, iterations=1)
    how = f", {per_launch} samples per projection launch" if mode == "dense" else ""
    _record(benchmark, len(rows), f"adaptinf_fast GradientFeaturizer({layers}, {mode}{how})", n_params,
            featurised_params=sum(p.numel() for p in fz.params))


@pytest.mark.parametrize("layers", ["last", "all"])
def test_release_style_loop(benchmark, setup, layers):
    """One sample per backward, full LoRA gradient copied, BasicProjector (what the release does)."""
    if importlib.util.find_spec("trak") is None:
        pytest.skip("traker not installed")
    from trak.projectors import BasicProjector

    model, rows, n_params = setup
    params = [p for t in af.features.find_lora_targets(model, layers) for _, p in t.params]
    grad_dim = sum(p.numel() for p in params)
    proj = BasicProjector(grad_dim, K, 0, "rademacher", DEVICE, block_size=100)
    samples = rows[: 2 if not CUDA else BATCH]
    model.eval()

    def run():
        for r in samples:
            out = model(input_ids=r["input_ids"][None].to(DEVICE))
            resp = r["labels"][1:] != -100
            loss = F.cross_entropy(out.logits[0, :-1][resp.to(DEVICE)].float(), r["labels"][1:][resp].to(DEVICE))
            grads = torch.autograd.grad(loss, params)
            flat = torch.cat([g.flatten() for g in grads]).float()[None]
            proj.project(flat, model_id=0)
        sync()

    _reset_peak()
    benchmark.pedantic(run, rounds=1, iterations=1)
    _record(benchmark, len(samples), f"release-style loop ({layers} LoRA layers, batch 1, BasicProjector)", n_params,
            featurised_params=grad_dim)
