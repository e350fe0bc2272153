"""Image-text models of every supported family through their own processor (data/processor.py):
tiny random-weight models built offline from their configs (tiny_vlms.py). For each family the
per-sample gradient features of a mixed batch (an image, no image, two images) equal batch-1
autograd, a training step runs, batched left-padded generate equals one by one, and the default
LoRA targets are the language model's projections only."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import adaptinf_fast as af
from adaptinf_fast.data.encoder import Encoder, model_inputs
from adaptinf_fast.lifelong.config import LoraSettings, TrainConfig
from adaptinf_fast.lifelong.evaluate import greedy_answers
from adaptinf_fast.lifelong.models import LLM_PROJECTIONS, VISION_PARTS, base_loader, describe
from adaptinf_fast.lifelong.train import train_lora
from conftest import write_stage_files
from tiny_vlms import FAMILIES, build

OUT = 64


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("vlm-images")
    rng = np.random.default_rng(0)
    for i, size in enumerate(((32, 32), (40, 28), (28, 44))):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(root / f"im{i}.png")
    return root


def records(root):
    q = lambda text, n=1: "".join("<image>\n" for _ in range(n)) + text  # noqa: E731
    return [
        {"id": "one", "image": str(root / "im0.png"),
         "conversations": [{"from": "human", "value": q("what colour is the square ?")}, {"from": "gpt", "value": "red"}]},
        {"id": "text", "conversations": [{"from": "human", "value": "what number comes after four ?"},
                                         {"from": "gpt", "value": "five"}]},
        {"id": "two", "image": [str(root / "im1.png"), str(root / "im2.png")],
         "conversations": [{"from": "human", "value": q("are these the same digit ?", 2)}, {"from": "gpt", "value": "no"},
                           {"from": "human", "value": "how many circles ?"}, {"from": "gpt", "value": "three"}]},
    ]


@pytest.fixture(scope="module", params=FAMILIES)
def setup(request, tmp_path_factory):
    from peft import get_peft_model

    folder = build(request.param, tmp_path_factory.mktemp(request.param))
    model, tok, processor = base_loader({"base": str(folder), "device": "cpu"})()
    torch.manual_seed(0)
    lora = LoraSettings(r=4, alpha=8, dropout=0.0).peft_config(model)
    lora.init_lora_weights = False  # B random too, so A's gradient is not zero
    peft = get_peft_model(model, lora)
    return request.param, folder, peft, tok, processor


def test_default_lora_targets_are_the_language_models_projections(setup):
    from peft.tuners.lora import LoraLayer

    family, folder, model, _, _ = setup
    lora = [n for n, m in model.named_modules() if isinstance(m, LoraLayer)]
    assert lora and not any(v in n for n in lora for v in VISION_PARTS), family
    assert {n.split(".")[-1] for n in lora} <= set(LLM_PROJECTIONS)
    d = describe(folder)  # the same targets, counted on a meta-device copy of the bare model
    assert d["processor"] and d["lora_layers"] == len(lora) and d["vision_layers_targeted"] == 0
    # the image-token policy as probed through the processor: fixed for LLaVA-1.5 and Gemma 3 only
    assert ("the same for both probes" in d["image_tokens"]) == (family in ("llava", "gemma3")), d["image_tokens"]


def test_info_model_says_family_processor_and_lora_targets(setup, capsys):
    from adaptinf_fast import cli

    family, folder, model, _, processor = setup
    assert cli.main(["info", "--model", str(folder)]) == 0
    out = dict(line.split(None, 1) for line in capsys.readouterr().out.splitlines() if line.strip())
    assert out["family"].startswith(model.config.model_type) and out["processor"] == type(processor).__name__
    assert "in the vision tower" not in out["LoRA"], family


def batch1_feature(model, enc, rec):
    """(the record's feature by plain autograd on a batch of one: the flattened LoRA gradient of its
    mean answer-token loss, projected by the torch reference and normalised; that loss)."""
    params = [p for t in af.features.find_lora_targets(model, "all") for _, p in t.params]
    model.eval()
    batch = enc.collate([enc.encode(rec)])
    target = batch["labels"][0, 1:]
    resp = target != -100
    with torch.enable_grad():
        for p in params:
            p.requires_grad_(True)
        logits = model(**model_inputs(batch, model)).logits[0, :-1].float()
        loss = F.cross_entropy(logits[resp], target[resp])
        flat = torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)])
    return F.normalize(af.project(flat[None], OUT, backend="torch"), dim=1)[0], loss.detach()


def test_per_sample_features_of_a_mixed_batch_equal_batch_1_autograd(setup, images):
    family, _, model, tok, processor = setup
    recs = records(images)
    fz = af.GradientFeaturizer(model, layers="all", out_dim=OUT, tokenizer=tok, image_processor=processor,
                               scores=("ppl", "grand"))
    fs = fz.extract(recs, batch_size=3, progress=False)
    assert fs.ids == [r["id"] for r in recs], fs.skipped
    enc = Encoder.for_model(model, tok, image_processor=processor)
    for i, rec in enumerate(recs):
        want, loss = batch1_feature(model, enc, rec)
        torch.testing.assert_close(fs.features[i], want, rtol=1e-4, atol=3e-5, msg=f"{family} {rec['id']}")
        assert fs.scores["ppl"][i].item() == pytest.approx(float(loss.exp()), rel=1e-4)


def test_a_training_step_runs_and_moves_the_adapter(setup, images):
    family, _, model, tok, processor = setup
    enc = Encoder.for_model(model, tok, image_processor=processor)
    items = [enc.encode(r) for r in records(images)]
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    res = train_lora(model, items, TrainConfig(lr=1e-2, epochs=1, batch_size=3, log="none"), progress=False,
                     collate_fn=enc.collate)
    assert res["steps"] == 1 and np.isfinite(res["losses"]).all()
    moved = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert moved and all("lora_" in n for n in moved)


def test_batched_left_padded_generate_equals_one_by_one(setup, images):
    family, _, model, tok, processor = setup
    enc = Encoder.for_model(model, tok, image_processor=processor)
    recs = records(images)
    model.eval()
    together = greedy_answers(model, enc, recs, max_new_tokens=4)
    alone = [greedy_answers(model, enc, [r], max_new_tokens=4)[0] for r in recs]
    assert together == alone, family


@pytest.mark.slow
@pytest.mark.parametrize("family", [f for f in ("qwen2_5_vl", "llava_onevision", "idefics3", "gemma3") if f in FAMILIES])
def test_the_lifelong_loop_runs_from_a_run_config(family, tmp_path, capsys):
    """The README's `adaptinf-fast run --config`: two stages (a single-image task, then a two-image
    one) through features, clusters, selection, training, evaluation and pruning."""
    import json

    import yaml

    from adaptinf_fast import cli
    from adaptinf_fast.data.demo_tasks import make_tasks

    folder = build(family, tmp_path / family)
    data = make_tasks(tmp_path / "tasks", n_train=12, n_test=4, n_describe=0, extra=("pairs",))
    stages = write_stage_files(tmp_path, data, ("colours", "pairs"), tmp_path / "tasks")
    cfg = {"out": str(tmp_path / "run"), "model": {"base": str(folder), "device": "cpu"}, "stages": stages,
           "selection": {"k": 2, "budget": 8, "pool_budget": 14}, "features": {"out_dim": 32, "batch_size": 4},
           "lora": {"r": 4, "alpha": 8}, "train": {"lr": 1e-3, "epochs": 1, "batch_size": 4},
           "eval": {"max_new_tokens": 2, "batch_size": 4}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    assert cli.main(["run", "--config", str(tmp_path / "run.yaml"), "--no-progress"]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["tasks"] == ["colours", "pairs"] and len(summary["accuracy"]) == 3
    assert [s["trained_on"] for s in summary["stages"]] == [8, 8] and summary["final_pool"] <= 14
    assert "wrote" in capsys.readouterr().out


def _ppl(model, batch, mean_of_exp: bool = False) -> float:
    """exp(mean ℓ) over the answer tokens, or the release's mean exp(ℓ)."""
    target = batch["labels"][0, 1:]
    resp = target != -100
    with torch.no_grad():
        logits = model(**model_inputs(batch, model)).logits[0, :-1].float()
    nll = F.cross_entropy(logits[resp], target[resp], reduction="none")
    return float(nll.exp().mean() if mean_of_exp else nll.mean().exp())


@pytest.mark.parametrize("rules", ["adaptinf", "release"])
def test_image_grounding_score_follows_its_definition(setup, images, rules):
    """ig = ppl without the image / ppl with it, per sample of a mixed batch, with the processor's
    extra inputs carried (ours drops the image tokens; the release zeroes the pixels); 1 for a
    text-only sample; the image must change the answer's likelihood (it reaches the LM). The
    release divides exp(mean ℓ) without the image by its own ppl with it, mean exp(ℓ)."""
    family, _, model, tok, processor = setup
    recs = records(images)
    fz = af.GradientFeaturizer(model, layers="last", out_dim=OUT, tokenizer=tok, image_processor=processor,
                               scores=("ppl", "ig"), rules=rules)
    fs = fz.extract(recs, batch_size=3, progress=False)
    assert fs.ids == [r["id"] for r in recs], fs.skipped
    enc = Encoder.for_model(model, tok, image_processor=processor)
    model.eval()
    for i, rec in enumerate(recs):
        batch = enc.collate([enc.encode(rec)])
        with_image = _ppl(model, batch, mean_of_exp=rules == "release")
        if "image" not in rec:
            want = 1.0
        elif rules == "release":
            blank = torch.zeros_like(batch["pixel_values"])
            if family in ("idefics3", "smolvlm"):  # an all-zero image is batch padding to these models
                blank += torch.finfo(blank.dtype).tiny
            want = _ppl(model, {**batch, "pixel_values": blank}) / with_image
        else:
            keep = batch["input_ids"][0] != enc.image_token_id
            want = _ppl(model, {"input_ids": batch["input_ids"][:, keep], "labels": batch["labels"][:, keep],
                                "attention_mask": batch["attention_mask"][:, keep]}) / with_image
        got = fs.scores["ig"][i].item()
        assert got == pytest.approx(want, rel=1e-4), (family, rules, rec["id"])
        assert ("image" not in rec) or abs(got - 1) > 1e-6, (family, rules, rec["id"])


def test_labels_are_the_answers_only(setup, images):
    """Answer-only labels from the rendered template: the labelled tokens decode to every assistant
    turn's answer followed by the end of turn, nothing of the prompt or the images."""
    family, _, model, tok, processor = setup
    enc = Encoder.for_model(model, tok, image_processor=processor)
    for rec in records(images):
        labels = enc.encode(rec)["labels"]
        answers = [t["value"] for t in rec["conversations"] if t["from"] == "gpt"]
        got = tok.decode(labels[labels != -100].tolist()).split()
        assert got == " </s> ".join(answers + [""]).split(), (family, rec["id"], got)


@pytest.mark.skipif("qwen2_5_vl" not in FAMILIES, reason="needs torchvision")
def test_a_processor_that_does_not_load_is_an_error_not_a_silent_fallback(tmp_path):
    from adaptinf_fast.lifelong.models import processor_for

    folder = build("qwen2_5_vl", tmp_path / "m")
    assert processor_for(folder) is not None
    for name in ("processor_config.json", "preprocessor_config.json"):
        if (folder / name).exists():
            (folder / name).write_text("{ broken")
    with pytest.raises(ValueError, match="processor does not load"):
        processor_for(folder)


@pytest.fixture(scope="module")
def text_lm(tmp_path_factory):
    """A tiny Llama causal LM folder (config, weights, word-level tokenizer with the chat template)."""
    from peft import get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from tiny_vlms import tokenizer

    folder = tmp_path_factory.mktemp("llama")
    tok = tokenizer("llava")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, pad_token_id=tok.pad_token_id,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    model, tok, processor = base_loader({"base": str(folder), "device": "cpu"})()
    assert processor is None
    lora = LoraSettings(r=4, alpha=8, dropout=0.0).peft_config(model)
    lora.init_lora_weights = False
    return folder, get_peft_model(model, lora), tok


def test_a_text_only_causal_lm_is_a_family_too(text_lm, images, capsys):
    """The four per-model checks on a plain causal LM (text records only): default LoRA targets are
    every projection, features = batch-1 autograd, a training step moves the adapter only, batched
    left-padded generate = one by one; `info --model` says text only."""
    from peft.tuners.lora import LoraLayer

    from adaptinf_fast import cli

    folder, model, tok = text_lm
    lora = {n.split(".")[-1] for n, m in model.named_modules() if isinstance(m, LoraLayer)}
    assert lora == set(LLM_PROJECTIONS)
    assert cli.main(["info", "--model", str(folder)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^image tokens +text only$", out, re.M) and re.search(r"^processor +none$", out, re.M), out
    recs = [r for r in records(images) if "image" not in r] + [
        {"id": "turns", "conversations": [{"from": "human", "value": "how many circles ?"}, {"from": "gpt", "value": "two"},
                                          {"from": "human", "value": "what colour is it ?"}, {"from": "gpt", "value": "red"}]}]
    fz = af.GradientFeaturizer(model, layers="all", out_dim=OUT, tokenizer=tok, scores=("ppl",))
    fs = fz.extract(recs, batch_size=2, progress=False)
    enc = Encoder.for_model(model, tok)
    for i, rec in enumerate(recs):
        torch.testing.assert_close(fs.features[i], batch1_feature(model, enc, rec)[0], rtol=1e-4, atol=3e-5,
                                   msg=rec["id"])
    assert greedy_answers(model, enc, recs, max_new_tokens=4) == [greedy_answers(model, enc, [r], max_new_tokens=4)[0]
                                                                  for r in recs]
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    res = train_lora(model, [enc.encode(r) for r in recs], TrainConfig(lr=1e-2, epochs=1, batch_size=2, log="none"),
                     progress=False, collate_fn=enc.collate)
    assert np.isfinite(res["losses"]).all()
    moved = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert moved and all("lora_" in n for n in moved)
