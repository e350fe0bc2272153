"""The built-in demo tasks: valid LLaVA records, real images, balanced answers, an offline tokenizer."""

from __future__ import annotations

from collections import Counter

import numpy as np
from PIL import Image

from adaptinf_fast.data import validate_records
from adaptinf_fast.data.demo_tasks import TASKS, make_tasks, vocabulary, word_tokenizer
from adaptinf_fast.data.encoder import Encoder


def test_tasks_are_valid_balanced_and_deterministic(tmp_path):
    tasks = make_tasks(tmp_path, n_train=40, n_test=20, seed=1)
    assert set(tasks) == set(TASKS) | {"describe"}
    for name in TASKS:
        for split in ("train", "test"):
            kept, report = validate_records(tasks[name][split], tmp_path)
            assert report.kept == len(tasks[name][split]) and not report.skipped
        answers = Counter(r["conversations"][1]["value"] for r in tasks[name]["train"])
        assert max(answers.values()) - min(answers.values()) <= 1, answers  # balanced classes
    again = make_tasks(tmp_path / "again", n_train=40, n_test=20, seed=1)
    a = np.asarray(Image.open(tmp_path / tasks["colours"]["train"][3]["image"]))
    b = np.asarray(Image.open(tmp_path / "again" / again["colours"]["train"][3]["image"]))
    assert np.array_equal(a, b)
    red = a.reshape(-1, 3)
    assert ((red[:, 0] > 200) & (red[:, 1] < 60)).any() == (tasks["colours"]["train"][3]["conversations"][1]["value"] == "red")


def test_tokenizer_covers_every_word(tmp_path):
    tasks = make_tasks(tmp_path, n_train=12, n_test=4)
    tok = word_tokenizer(vocabulary(tasks))
    enc = Encoder(tokenizer=tok, image_token_id=tok.convert_tokens_to_ids("<image>"), image_tokens=4,
                  image_size=28, image_root=tmp_path)
    for name in TASKS:
        item = enc.encode(tasks[name]["train"][0])
        assert tok.unk_token_id not in item["input_ids"].tolist()
        answer = [t for t in item["labels"].tolist() if t != -100]
        assert tok.decode(answer, skip_special_tokens=True) == tasks[name]["train"][0]["conversations"][1]["value"]
