"""GradientFeaturizer against the release-style reference: one sample per backward, flatten the
LoRA gradients of the chosen layers, project with the reference; scores from direct formulas."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

import adaptinf_fast as af
from tiny_models import IMAGE_TOKEN, random_rows, tiny_llama, tiny_llava, word_tokenizer

OUT = 96


def lora_params(model, layers):
    """LoRA weights of the chosen layers in named_parameters order (an independent derivation of
    the documented order: layer, module, A then B)."""
    found = []
    for name, p in model.named_parameters():
        m = re.search(r"language_model\.layers\.(\d+)\.|model\.layers\.(\d+)\.", name)
        if "lora_" in name and m and "vision" not in name:
            layer = int(m.group(1) or m.group(2))
            if layers == "all" or layer in layers:
                found.append((layer, name, p))
    return [p for _, _, p in sorted(found, key=lambda t: t[0])]  # stable: keeps module order in a layer


def reference(model, row, layers, out_dim=OUT, seed=0, with_image=True):
    model.eval()
    params = lora_params(model, layers)
    for p in params:
        p.requires_grad_(True)
    ids, labels = row["input_ids"][None], row["labels"][None]
    kw = {"pixel_values": row["pixel_values"][None]} if with_image and "pixel_values" in row else {}
    logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), **kw).logits[0, :-1].float()
    target = labels[0, 1:]
    resp = target != -100
    loss = F.cross_entropy(logits[resp], target[resp])
    flat = torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)])
    feat = F.normalize(af.project(flat[None], out_dim, seed=seed, backend="torch"), dim=1)[0]
    p = logits[resp].softmax(-1)
    onehot = F.one_hot(target[resp], p.shape[-1]).float()
    scores = {"ppl": loss.exp(), "el2n": (onehot - p).norm(dim=-1).mean(),
              "entropy": -(p * p.log()).sum(-1).mean(), "grand": flat.norm()}
    return feat.detach(), {k: float(v.detach()) for k, v in scores.items()}


@torch.no_grad()
def ppl_without_image(model, row):
    keep = row["input_ids"] != IMAGE_TOKEN
    ids, labels = row["input_ids"][keep][None], row["labels"][keep]
    logits = model(input_ids=ids).logits[0, :-1]
    resp = labels[1:] != -100
    return float(F.cross_entropy(logits[resp], labels[1:][resp]).exp())


@pytest.mark.parametrize("layers", ["all", [0], [-1]], ids=["all", "first", "last"])
def test_llama_features_and_scores_equal_the_per_sample_reference(layers, rng):
    model = tiny_llama()
    rows = random_rows(7, rng)
    fs = af.GradientFeaturizer(model, layers=layers, out_dim=OUT).extract(rows, batch_size=3, progress=False)
    assert fs.ids == [r["id"] for r in rows] and fs.features.dtype == torch.float32
    chosen = "all" if layers == "all" else [x % 3 for x in layers]
    for i, row in enumerate(rows):
        feat, scores = reference(model, row, chosen)
        torch.testing.assert_close(fs.features[i], feat, rtol=1e-4, atol=2e-5)
        for name, value in scores.items():
            assert fs.scores[name][i].item() == pytest.approx(value, rel=1e-4), name
        assert fs.scores["ig"][i] == 1.0  # text-only


def test_llava_features_scores_and_image_grounding(rng):
    model = tiny_llava()
    rows = random_rows(4, rng, image_tokens=16)
    text_only = random_rows(3, rng)  # mixed into the same batches as the image rows
    rows = [rows[0], text_only[0], rows[1], rows[2], text_only[1], text_only[2], rows[3]]
    fs = af.GradientFeaturizer(model, layers="all", out_dim=OUT).extract(rows, batch_size=3, progress=False)
    for i, row in enumerate(rows):
        feat, scores = reference(model, row, "all")
        torch.testing.assert_close(fs.features[i], feat, rtol=1e-4, atol=2e-5)
        assert fs.scores["ppl"][i].item() == pytest.approx(scores["ppl"], rel=1e-4)
        assert fs.scores["grand"][i].item() == pytest.approx(scores["grand"], rel=1e-4)
        want_ig = ppl_without_image(model, row) / scores["ppl"] if "pixel_values" in row else 1.0
        assert fs.scores["ig"][i].item() == pytest.approx(want_ig, rel=1e-4)


def test_before_batch_sees_each_batch_and_then_the_image_grounding_rows(rng):
    model = tiny_llava()
    images, text_only = random_rows(3, rng, image_tokens=16), random_rows(2, rng)
    text_only = [{**r, "id": f"text-{i}"} for i, r in enumerate(text_only)]
    rows = [images[0], text_only[0], images[1], text_only[1], images[2]]
    calls = []
    af.GradientFeaturizer(model, layers="all", out_dim=OUT).extract(
        rows, batch_size=3, progress=False, before_batch=lambda items: calls.append([r["id"] for r in items]))
    ids = [r["id"] for r in rows]
    # batch 1, its image rows (for the pass without the image), batch 2, its image row
    assert calls == [ids[:3], [ids[0], ids[2]], ids[3:], [ids[4]]]


def test_same_sample_same_feature_in_any_batch_or_padding(rng):
    model = tiny_llama()
    rows = random_rows(6, rng)
    fz = af.GradientFeaturizer(model, layers="all", out_dim=OUT)
    a = fz.extract(rows, batch_size=6, progress=False)
    b = fz.extract(rows[::-1], batch_size=4, progress=False)
    torch.testing.assert_close(a.features, b.features.flip(0), rtol=1e-4, atol=2e-5)


def test_model_state_is_left_untouched(rng):
    model = tiny_llama()
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    lora = [p for n, p in model.named_parameters() if "lora_A" in n]
    lora[0].grad = torch.full_like(lora[0], 3.0)
    af.GradientFeaturizer(model, layers="all", out_dim=OUT).extract(random_rows(3, rng), progress=False)
    assert model.training
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert torch.equal(lora[0].grad, torch.full_like(lora[0], 3.0))
    assert all(p.grad is None for p in lora[1:])


def test_adam_preconditioning_matches_reference(rng):
    model = tiny_llama()
    params = lora_params(model, [2])
    opt = torch.optim.AdamW(params, lr=1e-3, betas=(0.8, 0.95), eps=1e-6)
    (sum(p.pow(2).sum() for p in params)).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    rows = random_rows(3, rng)
    fs = af.GradientFeaturizer(model, layers=[2], out_dim=OUT, optimizer_state=opt).extract(rows, progress=False)
    model.eval()
    for i, row in enumerate(rows):
        ids, labels = row["input_ids"][None], row["labels"][None]
        logits = model(input_ids=ids).logits[0, :-1]
        resp = labels[0, 1:] != -100
        loss = F.cross_entropy(logits[resp], labels[0, 1:][resp])
        pieces = []
        for p, g in zip(params, torch.autograd.grad(loss, params)):
            s = opt.state[p]
            m = 0.8 * s["exp_avg"] + 0.2 * g
            v = 0.95 * s["exp_avg_sq"] + 0.05 * g * g
            pieces.append((m / (v.sqrt() + 1e-6)).flatten())
        want = F.normalize(af.project(torch.cat(pieces)[None], OUT), dim=1)[0]
        torch.testing.assert_close(fs.features[i], want.detach(), rtol=1e-4, atol=2e-5)


def test_factored_mode_runs_and_differs_from_dense(rng):
    model = tiny_llama()
    rows = random_rows(3, rng)
    fact = af.GradientFeaturizer(model, layers="all", out_dim=OUT, mode="factored").extract(rows, progress=False)
    dense = af.GradientFeaturizer(model, layers="all", out_dim=OUT).extract(rows, progress=False)
    torch.testing.assert_close(fact.scores["grand"], dense.scores["grand"], rtol=1e-4, atol=1e-6)
    assert not torch.allclose(fact.features, dense.features)
    torch.testing.assert_close(fact.features.norm(dim=1), torch.ones(3), rtol=1e-5, atol=1e-5)


def test_shards_on_disk_resume_without_recomputing(rng, tmp_path, monkeypatch):
    model = tiny_llama()
    rows = random_rows(10, rng)
    fz = af.GradientFeaturizer(model, layers="all", out_dim=OUT)
    full = fz.extract(rows, batch_size=2, out_dir=tmp_path, shard_size=4, progress=False)
    assert sorted(p.name for p in tmp_path.glob("*.json")) == ["shard-00000.json", "shard-00001.json", "shard-00002.json"]
    torch.testing.assert_close(full.features, fz.extract(rows, batch_size=2, progress=False).features, atol=1e-3, rtol=0)
    (tmp_path / "shard-00001.json").unlink()  # as if killed while writing shard 1
    calls = []
    real = fz._pass  # one forward+backward per batch
    monkeypatch.setattr(fz, "_pass", lambda b, buf: calls.append(b["input_ids"].shape[0]) or real(b, buf))
    again = fz.extract(rows, batch_size=2, out_dir=tmp_path, shard_size=4, progress=False)
    assert calls == [2, 2]  # only shard 1's two batches
    assert again.ids == full.ids and torch.equal(again.features, full.features)
    other = af.GradientFeaturizer(model, layers=[0], out_dim=OUT)
    with pytest.raises(ValueError, match="different featurizer configuration"):
        other.extract(rows, batch_size=2, out_dir=tmp_path, shard_size=4, progress=False)


def test_dataloader_input(rng):
    from adaptinf_fast.data.encoder import collate

    model = tiny_llama()
    rows = random_rows(5, rng)
    loader = torch.utils.data.DataLoader(rows, batch_size=2, collate_fn=lambda items: collate(items, 0))
    fz = af.GradientFeaturizer(model, layers="all", out_dim=OUT)
    a = fz.extract(loader, progress=False)
    b = fz.extract(rows, batch_size=5, progress=False)
    assert a.ids == list(range(5))
    torch.testing.assert_close(a.features, b.features, rtol=1e-4, atol=2e-5)


def test_records_with_tokenizer_bad_items_are_reported_and_skipped(tmp_path, caplog):
    from PIL import Image

    Image.new("RGB", (10, 10), (255, 0, 0)).save(tmp_path / "red.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    model = tiny_llava()
    q = {"from": "human", "value": "<image>\nwhat colour is shown ?"}
    records = [
        {"id": "ok", "image": "red.png", "conversations": [q, {"from": "gpt", "value": "red"}]},
        {"id": "missing", "image": "nope.png", "conversations": [q, {"from": "gpt", "value": "red"}]},
        {"id": "broken", "image": "broken.png", "conversations": [q, {"from": "gpt", "value": "red"}]},
        {"id": "noresp", "image": "red.png", "conversations": [q]},
        {"id": "ok2", "image": "red.png", "conversations": [q, {"from": "gpt", "value": "blue"}]},
    ]
    fz = af.GradientFeaturizer(model, layers="all", out_dim=OUT, tokenizer=word_tokenizer(), image_root=tmp_path)
    with caplog.at_level("WARNING", logger="adaptinf_fast"):
        fs = fz.extract(records, batch_size=2, progress=False)
    assert fs.ids == ["ok", "ok2"]
    assert {i for i, _ in fs.skipped} == {"missing", "broken", "noresp"}
    assert "could not be read" in dict(fs.skipped)["missing"] and "no response" in dict(fs.skipped)["noresp"]
    assert "skipped 'broken'" in caplog.text
    assert (fs.scores["ig"] != 1).all() and torch.isfinite(fs.features).all()


def test_overlong_sequences_truncate_with_count_or_error(rng, caplog):
    model = tiny_llama()
    rows = random_rows(4, rng, min_len=12, max_len=14, max_prompt=5)
    with caplog.at_level("WARNING", logger="adaptinf_fast"):
        fs = af.GradientFeaturizer(model, out_dim=OUT, max_length=10).extract(rows, progress=False)
    assert len(fs) == 4 and "truncated 4 sequence" in caplog.text
    strict = af.GradientFeaturizer(model, out_dim=OUT, max_length=10, on_overflow="error").extract(rows, progress=False)
    assert len(strict) == 0 and all("exceeds max_length" in why for _, why in strict.skipped)


def test_configuration_errors():
    model = tiny_llama()
    with pytest.raises(ValueError, match="factored"):
        af.GradientFeaturizer(model, mode="factored", optimizer_state={})
    with pytest.raises(ValueError, match="no LoRA modules"):
        af.GradientFeaturizer(model, layers=[7])
    with pytest.raises(ValueError, match="no LoRA layers"):
        af.GradientFeaturizer(torch.nn.Linear(3, 3))
    with pytest.raises(ValueError, match="unknown scores"):
        af.GradientFeaturizer(model, scores=("ppl", "loss"))


def test_huggingface_dataset_input(rng):
    datasets = pytest.importorskip("datasets")  # in the test extra
    model = tiny_llama()
    rows = random_rows(5, rng)
    ds = datasets.Dataset.from_list([{"id": r["id"], "input_ids": r["input_ids"].tolist(),
                                      "labels": r["labels"].tolist()} for r in rows])
    fz = af.GradientFeaturizer(model, layers="all", out_dim=OUT)
    a, b = fz.extract(ds, batch_size=2, progress=False), fz.extract(rows, batch_size=2, progress=False)
    assert a.ids == b.ids
    torch.testing.assert_close(a.features, b.features, rtol=1e-5, atol=1e-6)


def test_buffered_projection_equals_per_batch_and_launches_whole_buffers(rng, monkeypatch):
    from adaptinf_fast.features import gradbuffer

    model = tiny_llama()
    rows = random_rows(20, rng)
    per_batch = af.GradientFeaturizer(model, layers="all", out_dim=OUT, project_samples=1).extract(rows, batch_size=3, progress=False)
    launches = []
    real = gradbuffer.GradientBuffer.project
    monkeypatch.setattr(gradbuffer.GradientBuffer, "project", lambda self: launches.append(self.fill) or real(self))
    fz = af.GradientFeaturizer(model, layers="all", out_dim=OUT, project_samples=8)
    buffered = fz.extract(rows, batch_size=3, shard_size=12, progress=False)
    assert launches == [6, 6, 6, 2]  # whole batches per launch; shard boundaries (after 12, 20) flush
    assert buffered.ids == per_batch.ids
    torch.testing.assert_close(buffered.features, per_batch.features, rtol=1e-5, atol=1e-6)
    for name in per_batch.scores:
        torch.testing.assert_close(buffered.scores[name], per_batch.scores[name], rtol=1e-6, atol=0, equal_nan=True)


def test_buffer_memory_cap_falls_back_to_per_batch_projection(rng, monkeypatch, caplog):
    from adaptinf_fast.features import gradbuffer

    model = tiny_llama()
    rows = random_rows(6, rng)
    made = []
    monkeypatch.setattr(gradbuffer.GradientBuffer, "__init__", lambda self, *a, **k: made.append(1) or None)
    fz = af.GradientFeaturizer(model, layers="all", out_dim=OUT, project_memory=1000)  # < one batch of rows
    with caplog.at_level("INFO", logger="adaptinf_fast"):
        fs = fz.extract(rows, batch_size=3, progress=False)
    assert not made and "projecting batch by batch" in caplog.text
    want = af.GradientFeaturizer(model, layers="all", out_dim=OUT, project_samples=1).extract(rows, batch_size=3, progress=False)
    assert torch.equal(fs.features, want.features)


def random_adam_state(model, rng):
    """(featurizer of the last layer, a random Adam state dict for its LoRA parameters)."""
    fz = af.GradientFeaturizer(model, layers=[-1], out_dim=OUT)
    return fz, {n: {"exp_avg": torch.randn(p.shape, generator=rng) * 1e-3,
                    "exp_avg_sq": torch.rand(p.shape, generator=rng) * 1e-6} for n, p in zip(fz.param_names, fz.params)}


def test_buffered_adam_preconditioning_equals_per_batch(rng):
    model = tiny_llama()
    rows = random_rows(7, rng)
    fz, state = random_adam_state(model, rng)
    a = af.GradientFeaturizer(model, layers=[-1], out_dim=OUT, optimizer_state=state).extract(rows, batch_size=2, progress=False)
    b = af.GradientFeaturizer(model, layers=[-1], out_dim=OUT, optimizer_state=state, project_samples=1).extract(
        rows, batch_size=2, progress=False)
    torch.testing.assert_close(a.features, b.features, rtol=1e-5, atol=1e-6)


def release_scores(model, row, layers, pre=None):
    """The release's score formulas on one sample alone (no padding): entropy over every position
    of the unshifted logits with ln(p + 1e-10), ppl = mean exp(ℓ), ig with zeroed pixels."""
    model.eval()
    params = lora_params(model, layers)
    ids, labels = row["input_ids"][None], row["labels"][None]
    kw = {"pixel_values": row["pixel_values"][None]} if "pixel_values" in row else {}
    logits = model(input_ids=ids, **kw).logits[0].float()
    p = logits.softmax(-1)
    target = labels[0, 1:]
    resp = target != -100
    tok = F.cross_entropy(logits[:-1][resp], target[resp], reduction="none")
    grads = torch.autograd.grad(tok.mean(), params)
    flat = torch.cat([(g if pre is None else pre(q, g)).flatten() for q, g in zip(params, grads)])
    out = {"entropy": (-(p * (p + 1e-10).log()).sum(-1).mean()).item(), "ppl": tok.exp().mean().item(),
           "grand": flat.norm().item()}
    if kw:
        with torch.no_grad():
            zero = model(input_ids=ids, pixel_values=torch.zeros_like(kw["pixel_values"])).logits[0, :-1].float()
        out["ig"] = float(F.cross_entropy(zero[resp], target[resp]).exp()) / out["ppl"]
    return out


def test_release_score_rules_equal_the_release_formulas(rng):
    model = tiny_llava()
    rows = random_rows(3, rng, image_tokens=16)
    text_only = random_rows(2, rng)
    rows = [rows[0], text_only[0], rows[1], text_only[1], rows[2]]  # padded batches, mixed
    ours = af.GradientFeaturizer(model, layers="all", out_dim=OUT).extract(rows, batch_size=3, progress=False)
    rel = af.GradientFeaturizer(model, layers="all", out_dim=OUT, rules="release").extract(rows, batch_size=3, progress=False)
    assert torch.equal(ours.features, rel.features)  # the rules change the scores only
    for i, row in enumerate(rows):
        want = release_scores(model, row, "all")
        for name, value in want.items():
            assert rel.scores[name][i].item() == pytest.approx(value, rel=1e-4), (i, name)
        if "ig" not in want:
            assert rel.scores["ig"][i] == 1.0
    assert not torch.allclose(ours.scores["entropy"], rel.scores["entropy"])
    assert not torch.allclose(ours.scores["ig"], rel.scores["ig"])


def test_release_grand_is_the_norm_of_the_preconditioned_gradient(rng):
    model = tiny_llama()
    rows = random_rows(4, rng)
    fz, state = random_adam_state(model, rng)
    by_param = {id(p): state[n] for n, p in zip(fz.param_names, fz.params)}

    def pre(p, g):
        s = by_param[id(p)]
        return (0.9 * s["exp_avg"] + 0.1 * g) / ((0.999 * s["exp_avg_sq"] + 0.001 * g * g).sqrt() + 1e-8)

    for samples in (256, 1):  # the buffered and the per-batch paths
        rel = af.GradientFeaturizer(model, layers=[-1], out_dim=OUT, optimizer_state=state, rules="release",
                                    project_samples=samples).extract(rows, batch_size=2, progress=False)
        for i, row in enumerate(rows):
            want = release_scores(model, row, [2], pre=pre)["grand"]
            assert rel.scores["grand"][i].item() == pytest.approx(want, rel=1e-4)
