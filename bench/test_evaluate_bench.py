"""Evaluation throughput: greedy answers one record at a time (the old loop) against left-padded
batched ``generate`` (``evaluate(..., batch_size=B)``), on the same records and model.

CPU: a ~20M-parameter Llama config (fp32), 64 prompts of 24–64 words, 16 new tokens each. GPU: a
~1B-parameter config in bf16, 256 prompts. Rows report records/s; the answers of every batch size
are checked equal to the one-by-one answers before timing.
"""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from adaptinf_fast.data.demo_tasks import word_tokenizer
from adaptinf_fast.data.encoder import Encoder
from adaptinf_fast.lifelong.evaluate import evaluate
from conftest import CUDA, sync

DEVICE = "cuda" if CUDA else "cpu"
N_RECORDS, NEW_TOKENS = (256 if CUDA else 64), 16


@pytest.fixture(scope="module")
def setup():
    words = [f"w{i}" for i in range(2000)]
    tok = word_tokenizer(words)
    torch.manual_seed(0)
    if CUDA:
        cfg = LlamaConfig(vocab_size=len(tok), hidden_size=2048, intermediate_size=5632, num_hidden_layers=20,
                          num_attention_heads=16, num_key_value_heads=4, max_position_embeddings=1024)
    else:
        cfg = LlamaConfig(vocab_size=len(tok), hidden_size=512, intermediate_size=1376, num_hidden_layers=4,
                          num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=512)
    cfg.pad_token_id, cfg.bos_token_id, cfg.eos_token_id = tok.pad_token_id, tok.bos_token_id, tok.eos_token_id
    model = LlamaForCausalLM(cfg).to(DEVICE, torch.bfloat16 if CUDA else torch.float32).eval()
    gen = torch.Generator().manual_seed(0)
    records = []
    for i in range(N_RECORDS):
        n = int(torch.randint(24, 65, (1,), generator=gen))
        prompt = " ".join(words[j] for j in torch.randint(0, len(words), (n,), generator=gen).tolist())
        records.append({"id": i, "conversations": [{"from": "human", "value": prompt}, {"from": "gpt", "value": "w1"}]})
    return model, Encoder(tokenizer=tok, pad_token_id=tok.pad_token_id), records, sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("batch_size", [1, 16, 64])
def test_greedy_evaluation(benchmark, setup, batch_size):
    model, enc, records, n_params = setup
    if batch_size > 1:  # batching must not change the answers
        want = evaluate(model, enc, records[:32], max_new_tokens=NEW_TOKENS, batch_size=1)["answers"]
        assert evaluate(model, enc, records[:32], max_new_tokens=NEW_TOKENS, batch_size=batch_size)["answers"] == want

    def run():
        evaluate(model, enc, records, max_new_tokens=NEW_TOKENS, batch_size=batch_size)
        sync()

    benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info.update(method=f"evaluate, batch_size={batch_size}" + (" (one by one)" if batch_size == 1 else ""),
                                records_per_s=round(len(records) / benchmark.stats.stats.mean, 3), device=DEVICE,
                                model_params=n_params, records=len(records), new_tokens=NEW_TOKENS)
