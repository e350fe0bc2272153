"""Model-side strategies on the lifelong loop (lifelong/strategies/): merging (average, TIES,
CoPA) and HiDe runs finish two stages, resume after a kill to the same files and deploy what
their definitions say; HiDe trains one expert per stage, fuses the general layers, routes the
specific one, and reports routing accuracy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from adaptinf_fast.lifelong import run as run_module
from adaptinf_fast.lifelong.config import RunConfig
from adaptinf_fast.lifelong.run import LifelongRun
from adaptinf_fast.ops.merge import lora_pairs, merge_lora
from test_lifelong_run import loader, state, two_tasks


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    root = tmp_path_factory.mktemp("strategies")
    _, tasks, base = two_tasks(root, layers=2)
    return root, tasks, base


def config(strategy: str) -> RunConfig:
    return RunConfig.model_validate({
        "strategy": strategy, "selection": {"k": 3, "budget": 12, "pool_budget": 20},
        "features": {"layers": "last", "out_dim": 32, "batch_size": 8}, "lora": {"r": 4, "alpha": 8},
        "train": {"lr": 1e-3, "epochs": 1, "batch_size": 4}, "eval": {"max_new_tokens": 3, "batch_size": 4},
        "hide": {"probe": 8}, "merge": {"density": 0.5}})


def adapters(out: Path, *stages: tuple[int, str]):
    from peft.utils import load_peft_weights

    return [load_peft_weights(str(out / "pool" / "stages" / f"stage-{t:03d}" / d)) for t, d in stages]


def check_definition(strategy: str, whole: Path, res: dict, base: Path) -> None:
    stage2 = whole / "pool" / "stages" / "stage-002"
    if strategy.startswith("merge:"):
        [a1, a2, deployed] = adapters(whole, (1, "adapter"), (2, "adapter"), (2, "deployed"))
        want = merge_lora([a1, a2], 2.0, strategy.split(":")[1], density=0.5)
        for bk, ak in lora_pairs(a1).values():
            torch.testing.assert_close(deployed[bk], want[bk])
            torch.testing.assert_close(deployed[ak], want[ak])
        return
    [a0, a1, a2] = adapters(whole, (0, "adapter"), (1, "adapter"), (2, "adapter"))
    if strategy == "modalprompt":
        assert all(torch.equal(a0[k], a1[k]) and torch.equal(a0[k], a2[k]) for k in a0)  # the model stays frozen
        from adaptinf_fast.lifelong.strategies.modalprompt import PromptBank

        s1, s2 = (torch.load(whole / "pool" / "stages" / f"stage-{t:03d}" / "modalprompt.pt") for t in (1, 2))
        emb = loader(base)()[0].get_input_embeddings()
        init = PromptBank(emb, 32, 10, 2, seed=0).state_dict()  # the seeded initialisation
        for k in s1:  # stage 1 trained task 1's prompts and MLP only; stage 2 task 2's only
            first = k.startswith(("prompts.0", "mlps.0."))
            assert torch.equal(s1[k], s2[k]) if first else torch.equal(init[k], s1[k]), k
        assert not torch.equal(init["prompts.0"], s1["prompts.0"]) and not torch.equal(s1["prompts.1"], s2["prompts.1"])
        info = json.loads((stage2 / "modalprompt.json").read_text())
        assert info["length"] == 10 and info["top_k"] == 3 and info["tasks"] == 2
        assert set(res["routing"][2]) == {"colours", "successor"}
        return
    if strategy == "disco":  # LoRA on the MLP projections only, split into one subspace per task
        assert a0 and all(any(p in k for p in ("gate_proj", "up_proj", "down_proj")) for k in a0)
        info = json.loads((stage2 / "disco.json").read_text())
        assert info["experts"] == 2 and info["expert_rank"] == 4 and info["router"]["temperature"] == 0.05
    else:
        info = json.loads((stage2 / "hide.json").read_text())
        assert info["experts"] == 2 and info["expert_rank"] == 4 and info["specific_layers"] == [1] and len(info["cka"]) == 2
    for k in a0:  # one adapter of rank 2 x 4; stage 1 trained expert 1 only, stage 2 expert 2 only
        expert = (lambda a, e: a[k][4 * e : 4 * e + 4]) if ".lora_A." in k else (lambda a, e: a[k][:, 4 * e : 4 * e + 4])
        assert torch.equal(expert(a1, 1), expert(a0, 1)) and torch.equal(expert(a2, 0), expert(a1, 0))
        assert not torch.equal(expert(a1, 0), expert(a0, 0))
        if ".lora_B." in k:
            assert torch.equal(a0[k], torch.zeros_like(a0[k]))  # every expert starts with B = 0
    assert set(res["routing"][2]) == {"colours", "successor"} and all(0 <= v <= 1 for v in res["routing"][2].values())
    assert res["routing"][1]["colours"] == 1.0  # one task: every prompt to its expert


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["merge:average", "merge:ties", "merge:copa", "hide", "disco", "modalprompt"])
def test_strategy_runs_resumes_after_a_kill_and_deploys_its_definition(setting, strategy, monkeypatch):
    root, tasks, base = setting
    cfg = config(strategy)
    whole = root / f"whole-{strategy.replace(':', '-')}"
    res = LifelongRun(whole, tasks, cfg, loader(base), progress=False, say=lambda s: None).run()
    assert res["strategy"] == strategy and len(res["accuracy"]) == 3
    check_definition(strategy, whole, res, base)

    real_eval, real_train = run_module.evaluate, run_module.train_lora
    out = root / f"resumed-{strategy.replace(':', '-')}"
    crashed, train_crashed = [], []
    marker = "deployed" if strategy.startswith("merge:") else "router.pt"

    def crashing_train(*args, **kwargs):  # dies after the first optimizer step of stage 2's training
        if not train_crashed and kwargs["ckpt_dir"].parent.name == "stage-002":
            train_crashed.append(1)
            kwargs["_stop_after_step"] = 1
        return real_train(*args, **kwargs)

    def crashing_eval(*args, **kwargs):  # dies in stage 2's evaluation, after its model was deployed
        if not crashed and (out / "pool" / "stages" / "stage-002" / marker).exists():
            crashed.append(1)
            raise KeyboardInterrupt("killed")
        return real_eval(*args, **kwargs)

    monkeypatch.setattr(run_module, "evaluate", crashing_eval)
    monkeypatch.setattr(run_module, "train_lora", crashing_train)
    for _ in range(2):  # killed inside stage 2's training, then in its evaluation after the deploy
        with pytest.raises(KeyboardInterrupt):
            LifelongRun(out, tasks, cfg, loader(base), progress=False, say=lambda s: None).run()
    again = LifelongRun(out, tasks, cfg, loader(base), progress=False, say=lambda s: None).run()
    assert crashed and train_crashed and state(out) == state(whole)
    assert again["accuracy"] == res["accuracy"]


@pytest.mark.slow
def test_merge_command_reapplies_a_merge_to_a_finished_run(setting, capsys):
    from adaptinf_fast import cli

    root, tasks, base = setting
    run = root / "for-reapply"
    res = LifelongRun(run, tasks, config("merge:copa"), loader(base), progress=False, say=lambda s: None,
                      model_info={"base": str(base)}).run()
    assert cli.main(["merge", str(run), "--method", "copa", "--no-progress"]) == 0
    again = json.loads((run / "merge-copa" / "summary.json").read_text())
    assert again["accuracy"] == res["accuracy"]  # the run's own merges, rebuilt from its stage adapters
    assert again["merge"]["keep"] == 0.2 and "stage 2" in capsys.readouterr().out
    assert cli.main(["merge", str(run), "--method", "ties", "--density", "0.5", "--base", str(base),
                     "--no-progress"]) == 0
    assert (run / "merge-ties" / "accuracy.json").exists()
    capsys.readouterr()
    with pytest.raises(SystemExit):
        cli.main(["merge", str(run), "--method", "fisher"])


def test_unknown_strategies_and_weight_decay_under_hide_are_refused():
    with pytest.raises(ValueError, match="expected one of"):
        config("merge:fisher")
    with pytest.raises(ValueError, match="weight decay would shrink the other experts"):
        RunConfig.model_validate({"strategy": "hide", "train": {"weight_decay": 0.01}})
    with pytest.raises(ValueError, match="expected a local CLIP model folder"):
        RunConfig.model_validate({"strategy": "hide", "router": {"clip": "/nonexistent"}})


def _stub_run(strategy: str, tasks: int, records: list[dict], **sections):
    """What a strategy reads of its LifelongRun, without one: config, tasks, records, rank 0."""
    from types import SimpleNamespace

    cfg = RunConfig.model_validate({"strategy": strategy, "lora": {"r": 2, "alpha": 4}, **sections})
    task_records = records if callable(records) else (lambda t: records)
    return SimpleNamespace(cfg=cfg, tasks=list(range(tasks)), task_records=task_records, rank=0,
                           barrier=lambda: None, load_adapter=lambda model, sd: None, pool=None)


def _text_model(experts: int):
    from peft import get_peft_model
    from transformers import LlamaForCausalLM

    from adaptinf_fast.data.encoder import Encoder
    from adaptinf_fast.lifelong.config import LoraSettings
    from tiny_models import llama_config, word_tokenizer

    torch.manual_seed(0)
    base = LlamaForCausalLM(llama_config(2))
    cfg = LoraSettings(r=2, alpha=4, dropout=0.0).peft_config(base, experts=experts)
    cfg.init_lora_weights = False  # B random too: every expert changes the output
    model = get_peft_model(base, cfg).eval()
    tok = word_tokenizer()
    return model, Encoder.for_model(model, tok), tok


QUESTIONS = [("what is the colour ?", "red"), ("what is the number ?", "two"), ("what is it ?", "blue")]
RECORDS = [{"id": f"q{i}", "conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]}
           for i, (q, a) in enumerate(QUESTIONS)]


def test_disco_with_one_hot_weights_is_that_tasks_subspace_alone():
    from adaptinf_fast.data.encoder import model_inputs
    from adaptinf_fast.lifelong.experts import OneHot
    from types import SimpleNamespace

    from adaptinf_fast.lifelong.strategies.disco import Disco

    model, encoder, _ = _text_model(experts=3)
    disco = Disco(_stub_run("disco", 3, RECORDS, disco={"temperature": 1e-4}), "disco")
    disco.setup(model, encoder, fresh=False)
    feats = disco.router.features(RECORDS)["text"]
    for i in range(3):  # each record's own feature as its task's prototype: softmax at 1e-4 is one-hot
        disco.router.set_anchor(i, {"text": feats[i]})
    disco.load_router = lambda t: None
    route = disco.use(model, SimpleNamespace(t=3))  # after stage 3 (its router: the anchors set above)
    batch = model_inputs(encoder.collate([encoder.encode(r) for r in RECORDS]), model)
    route(RECORDS)
    with torch.no_grad():
        routed = model(**batch).logits
    for i in range(3):
        with disco.layer.mode(OneHot(i)), torch.no_grad():
            alone = model(**batch).logits[i]
        torch.testing.assert_close(routed[i], alone, rtol=0, atol=0)
    with disco.layer.mode(OneHot(1)), torch.no_grad():
        assert not torch.allclose(model(**batch).logits[0], routed[0])  # the subspaces differ


def test_modalprompt_per_row_prompts_in_a_batch_equal_one_by_one_generation():
    from adaptinf_fast.data.encoder import model_inputs
    from adaptinf_fast.lifelong.evaluate import greedy_answers
    from adaptinf_fast.lifelong.strategies.modalprompt import ModalPrompt

    model, encoder, _ = _text_model(experts=1)
    mp = ModalPrompt(_stub_run("modalprompt", 3, RECORDS, modalprompt={"length": 3, "top_k": 2}), "modalprompt")
    mp.setup(model, encoder, fresh=True)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in mp.bank.prompts:  # distinct prompts, so the choice shows in the answers
            p.copy_(torch.randn(p.shape, generator=gen) * 3)
    encoder.prompt_slots = 2 * 3
    orders = [[0, 1], [2, 0], [1, 2]]
    mp.orders = orders
    together = greedy_answers(model, encoder, RECORDS, max_new_tokens=4)
    alone = []
    for rec, order in zip(RECORDS, orders):
        mp.orders = [order]
        alone.append(greedy_answers(model, encoder, [rec], max_new_tokens=4)[0])
    assert together == alone
    mp.orders = [[1, 0], [0, 2], [2, 1]]  # other prompts, other first-step logits
    prompts = [encoder.encode_prompt(r)[0] for r in RECORDS]
    with torch.no_grad():
        swapped = model(**model_inputs(encoder.collate_prompts(prompts), model)).logits[:, -1]
        mp.orders = orders
        again = model(**model_inputs(encoder.collate_prompts(prompts), model)).logits[:, -1]
    assert not torch.allclose(swapped, again)


def test_modalprompt_orders_follow_the_official_rules():
    from adaptinf_fast.lifelong.strategies.modalprompt import ModalPrompt

    mp = ModalPrompt.__new__(ModalPrompt)
    mp.knobs = RunConfig.model_validate({"strategy": "modalprompt"}).modalprompt  # K = 3
    c = torch.tensor([[0.1, 0.9, 0.5, 0.2], [0.8, 0.1, 0.3, 0.9]])
    assert mp.train_orders(c, 2) == [[0, 1], [0, 1]]  # t < K: every prompt so far, in task order
    assert mp.train_orders(c, 4) == [[2, 1, 3], [2, 0, 3]]  # the 2 best earlier tasks, ascending, then its own
    assert mp.infer_orders(c, 4) == [[3, 2, 1], [2, 0, 3]]  # top-min(t, K) by c, best last
    assert mp.infer_orders(c, 2) == [[0, 1], [1, 0]]


@pytest.mark.slow
def test_modalprompt_prototypes_trained_by_its_loss_pick_the_right_task(tmp_path):
    """The demo's tiny CLIP as the router: each task's prompts and MLP trained on its own records by
    ModalPrompt's feature loss alone; the best-scoring prompt on test records is their task's."""
    from adaptinf_fast.data.demo_tasks import make_tasks, vocabulary
    from adaptinf_fast.demo.clip import pretrained_clip
    from adaptinf_fast.lifelong.strategies.modalprompt import ModalPrompt

    data = make_tasks(tmp_path / "tasks", n_train=40, n_test=12, n_describe=60)
    absolute = lambda recs: [{**r, "image": str(tmp_path / "tasks" / r["image"])} if r.get("image") else r  # noqa: E731
                             for r in recs]
    clip = pretrained_clip(tmp_path, absolute(data["describe"]["train"]), vocabulary(data), say=lambda s: None)
    names = ("colours", "counting", "successor")
    model, encoder, _ = _text_model(experts=1)
    mp = ModalPrompt(_stub_run("modalprompt", 3, lambda t: absolute(data[names[t - 1]]["train"]),
                               router={"clip": str(clip)}), "modalprompt")
    mp.setup(model, encoder, fresh=True)
    for t, name in enumerate(names, 1):
        recs = absolute(data[name]["train"])
        mp.bank.trainable(t - 1)
        hooked, extra = mp.train_hooks(t, recs, collate=lambda items: None)
        opt = torch.optim.Adam([p for p in mp.bank.parameters() if p.requires_grad], lr=1e-2)
        for _ in range(60):
            hooked([{"_id": r["id"]} for r in recs])
            loss = extra() / len(recs)
            opt.zero_grad()
            loss.backward()
            opt.step()
        assert float(loss) < 1.0  # 1 - cos per modality, summed: the prototype moved towards the task
    mp.bank.trainable(None)
    for i, name in enumerate(names):
        test = absolute(data[name]["test"])
        picks = mp.scores(mp.router.features(test), 3).argmax(1)
        assert (picks == i).float().mean() >= 0.9, name


def test_prompt_slots_survive_a_routers_own_batches_and_a_foreign_batch_is_refused():
    from adaptinf_fast.data.encoder import model_inputs
    from adaptinf_fast.lifelong.strategies.modalprompt import ModalPrompt

    model, encoder, _ = _text_model(experts=1)
    mp = ModalPrompt(_stub_run("modalprompt", 2, RECORDS, modalprompt={"length": 2, "top_k": 1}), "modalprompt")
    mp.setup(model, encoder, fresh=True)
    encoder.prompt_slots, mp.orders = 2, [[0], [1], [0]]
    batch = encoder.collate([encoder.encode(r) for r in RECORDS])
    with encoder.no_slots():  # e.g. the model's own routing features: one record at a time
        other = encoder.collate_prompts([encoder.encode_prompt(RECORDS[0])[0]])
        assert "input_ids" in other and encoder.prompt_slots == 0
    assert encoder.slot_mask is not None and encoder.slot_mask.sum() == 3 * 2
    with torch.no_grad():
        model(**model_inputs(batch, model))  # the batch the slots were reserved for: filled
        foreign = dict(batch, input_ids=batch["input_ids"].roll(1, dims=1))
        with pytest.raises(RuntimeError, match="not of the batch"):
            model(**model_inputs(foreign, model))
