"""The expert-LoRA layer (lifelong/experts.py): a rank-E·r_e PEFT adapter read as E experts, mixed
per layer and per sample. One-hot = that expert's plain LoRA, Fused = (ΣB)(ΣA), Soft = per-row
mixtures under batched left-padded generate, exact per-sample gradients through the mixing."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from transformers import LlamaForCausalLM

import adaptinf_fast as af
from adaptinf_fast.lifelong.experts import ExpertLoRA, Fused, OneHot, Soft
from tiny_models import llama_config

E, RE = 3, 2
TARGETS = ["q_proj", "v_proj", "down_proj"]


def models(seed=0, layers=2):
    """(the E-expert model, a plain rank-r_e model on the same base, its scale the same: 2)."""
    torch.manual_seed(seed)
    base = LlamaForCausalLM(llama_config(layers))
    plain_base = copy.deepcopy(base)
    mixed = get_peft_model(base, LoraConfig(r=E * RE, lora_alpha=2 * E * RE, target_modules=TARGETS,
                                            lora_dropout=0.0, init_lora_weights=False))
    plain = get_peft_model(plain_base, LoraConfig(r=RE, lora_alpha=2 * RE, target_modules=TARGETS, lora_dropout=0.0))
    return mixed.eval(), plain.eval()


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def combined(state, experts_of, ex):
    """A plain rank-r_e state: Σ of the chosen experts' A and of their B (a sum of one: that expert)."""
    parts = [ex.expert_state(state, e) for e in experts_of]
    return {k: sum(p[k] for p in parts) for k in parts[0]}


IDS = torch.randint(3, 60, (2, 9), generator=torch.Generator().manual_seed(1))


def test_one_hot_is_that_experts_plain_lora():
    mixed, plain = models()
    ex = ExpertLoRA(mixed, E)
    state = get_peft_model_state_dict(mixed)
    for e in range(E):
        set_peft_model_state_dict(plain, ex.expert_state(state, e))
        with ex.mode(OneHot(e)):
            torch.testing.assert_close(logits(mixed, IDS), logits(plain, IDS), rtol=1e-5, atol=1e-5)
    set_peft_model_state_dict(plain, combined(state, [0], ex))
    assert not torch.allclose(logits(mixed, IDS), logits(plain, IDS))  # no mode: every expert at once


def test_fused_sums_the_first_experts_a_and_b_cross_terms_included():
    mixed, plain = models()
    ex = ExpertLoRA(mixed, E)
    state = get_peft_model_state_dict(mixed)
    for n in (1, 2, 3):
        set_peft_model_state_dict(plain, combined(state, range(n), ex))
        with ex.mode(Fused(n)):
            torch.testing.assert_close(logits(mixed, IDS), logits(plain, IDS), rtol=1e-5, atol=1e-5)


def test_soft_weights_mix_per_row_and_must_match_the_batch():
    mixed, _ = models()
    ex = ExpertLoRA(mixed, E)
    w = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.3, 0.7]])
    with ex.mode(Soft(w)):
        both = logits(mixed, IDS)
    with ex.mode(OneHot(0)):
        torch.testing.assert_close(both[:1], logits(mixed, IDS[:1]), rtol=1e-5, atol=1e-5)
    with ex.mode(Soft(w[1:])):
        torch.testing.assert_close(both[1:], logits(mixed, IDS[1:]), rtol=1e-5, atol=1e-5)
    with ex.mode(Soft(w[:1])), pytest.raises(ValueError, match="for a batch of 2 rows"):
        logits(mixed, IDS)


def test_specific_layers_take_their_own_mode():
    mixed, plain = models()
    ex = ExpertLoRA(mixed, E, specific_layers=(-1,))
    assert ex.specific == {1}
    state = get_peft_model_state_dict(mixed)
    want = combined(state, [0, 1], ex)  # general layers: Fused(2)
    last = ex.expert_state(state, 2)  # the last layer: expert 2 alone
    want.update({k: v for k, v in last.items() if ".layers.1." in k})
    set_peft_model_state_dict(plain, want)
    with ex.mode(Fused(2), OneHot(2)):
        torch.testing.assert_close(logits(mixed, IDS), logits(plain, IDS), rtol=1e-5, atol=1e-5)


def test_training_one_expert_leaves_the_others_without_gradient():
    mixed, _ = models()
    ex = ExpertLoRA(mixed, E)
    mixed.train()
    with ex.mode(OneHot(1)):
        mixed(input_ids=IDS, labels=IDS).loss.backward()
    for _, layer in ex.layers:
        ga, gb = layer.lora_A["default"].weight.grad, layer.lora_B["default"].weight.grad
        for e in range(E):
            rows = slice(e * RE, (e + 1) * RE)
            assert (ga[rows].abs().sum() > 0) == (e == 1) and (gb[:, rows].abs().sum() > 0) == (e == 1)


def test_per_sample_features_are_exact_through_the_mixing(rng):
    """The featurizer captures A's own output (its hook runs before the mixing): features of a
    routed mixture equal one-sample-per-backward gradients of the mixed model."""
    mixed, _ = models(layers=2)
    ex = ExpertLoRA(mixed, E, specific_layers=(-1,))
    ids = torch.randint(3, 60, (4, 8), generator=rng)
    labels = ids.clone()
    labels[:, :3] = -100
    rows = [{"id": i, "input_ids": ids[i], "labels": labels[i], "w": torch.softmax(torch.randn(E, generator=rng), 0)}
            for i in range(4)]

    def route(items):
        ex.set(Fused(2), Soft(torch.stack([r["w"] for r in items])))

    fs = af.GradientFeaturizer(mixed, layers="all", out_dim=64).extract(rows, batch_size=2, progress=False,
                                                                         before_batch=route)
    params = [p for n, p in mixed.named_parameters() if "lora_" in n]
    for p in params:
        p.requires_grad_(True)
    for i, row in enumerate(rows):
        route([row])
        out = mixed(input_ids=row["input_ids"][None]).logits[0, :-1]
        resp = row["labels"][1:] != -100
        loss = F.cross_entropy(out[resp], row["labels"][1:][resp])
        flat = torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)])
        want = F.normalize(af.project(flat[None], 64, backend="torch"), dim=1)[0]
        torch.testing.assert_close(fs.features[i], want, rtol=1e-4, atol=2e-5)


def test_soft_mixture_under_batched_left_padded_generate():
    mixed, _ = models()
    ex = ExpertLoRA(mixed, E)
    prompts = [torch.tensor([5, 9, 11, 4, 7]), torch.tensor([8, 3, 12])]
    w = torch.tensor([[0.2, 0.8, 0.0], [0.0, 0.1, 0.9]])
    batch = torch.zeros(2, 5, dtype=torch.long)
    attn = torch.zeros(2, 5, dtype=torch.long)
    for i, p in enumerate(prompts):
        batch[i, 5 - len(p):], attn[i, 5 - len(p):] = p, 1
    kw = {"max_new_tokens": 4, "do_sample": False, "pad_token_id": 0}
    with ex.mode(Soft(w)):
        together = mixed.generate(input_ids=batch, attention_mask=attn, **kw)[:, 5:]
    for i, p in enumerate(prompts):
        with ex.mode(Soft(w[i : i + 1])):
            alone = mixed.generate(input_ids=p[None], attention_mask=torch.ones(1, len(p), dtype=torch.long), **kw)
        assert torch.equal(together[i], alone[0, len(p):])


def test_init_gives_each_expert_its_own_seeded_gaussian_a_and_zero_b():
    mixed, _ = models()
    ex = ExpertLoRA(mixed, E)
    ex.init_experts(seed=5)
    a = ex.layers[0][1].lora_A["default"].weight.detach().clone()
    for _, layer in ex.layers:
        assert torch.equal(layer.lora_B["default"].weight, torch.zeros_like(layer.lora_B["default"].weight))
    assert 0.005 < a.std() < 0.02 and not torch.equal(a[:RE], a[RE : 2 * RE])
    ex.init_experts(seed=5)
    assert torch.equal(ex.layers[0][1].lora_A["default"].weight, a)
    ex.init_experts(seed=6)
    assert not torch.equal(ex.layers[0][1].lora_A["default"].weight, a)


def test_rank_must_split_into_the_experts():
    mixed, _ = models()
    with pytest.raises(ValueError, match="not a multiple of 4 experts"):
        ExpertLoRA(mixed, 4)


def test_layer_index_counts_the_language_models_blocks_only():
    from adaptinf_fast.lifelong.experts import layer_of

    assert layer_of("base_model.model.model.language_model.layers.3.self_attn.q_proj") == 3
    assert layer_of("base_model.model.model.vision_tower.vision_model.encoder.layers.23.self_attn.q_proj") is None
    assert layer_of("base_model.model.model.visual.blocks.0.attn.qkv") is None and layer_of("lm_head") is None
