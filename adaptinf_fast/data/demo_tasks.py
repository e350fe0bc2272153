"""Built-in tasks for the offline demo: small multimodal tasks generated on the spot, written as
LLaVA records with PNG images, plus a word-level tokenizer over their vocabulary (no download).

Tasks (each with train and test splits, answers balanced over the classes):
``digits`` (sklearn's 8×8 digits: "what digit is shown ?" → zero..nine), ``colours`` (a coloured
square: "what colour is the square ?"), ``counting`` (1–4 circles: "how many circles ?"),
``arithmetic`` (text only: "what is two plus one ?"), and ``describe`` (a generic caption of any of
the images, used to pre-train the whole model at stage 0).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
COLOURS = {"red": (220, 30, 30), "green": (30, 170, 60), "blue": (40, 70, 220), "yellow": (230, 200, 20)}
TASKS = ("digits", "colours", "counting", "arithmetic")
IMAGE_SIZE = 28


def _record(rid: str, question: str, answer: str, image: str | None) -> dict:
    q = ("<image>\n" + question) if image else question
    rec = {"id": rid, "conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": answer}]}
    if image:
        rec["image"] = image
    return rec


def _save(img, root: Path, name: str) -> str:
    (root / "images").mkdir(parents=True, exist_ok=True)
    img.save(root / "images" / name)
    return f"images/{name}"


def make_tasks(root: str | Path, n_train: int = 120, n_test: int = 40, seed: int = 0) -> dict[str, dict[str, list]]:
    """{task: {"train": records, "test": records}} with images under ``root/images``."""
    from PIL import Image, ImageDraw
    from sklearn.datasets import load_digits

    root = Path(root)
    rng = np.random.default_rng(seed)
    digits = load_digits()
    out: dict[str, dict[str, list]] = {}

    def split(task: str, make_one) -> None:
        recs = [make_one(i) for i in range(n_train + n_test)]
        out[task] = {"train": recs[:n_train], "test": recs[n_train:]}

    def digit(i: int) -> dict:
        label = i % 10
        choices = np.flatnonzero(digits.target == label)
        pix = digits.images[rng.choice(choices)] / 16.0
        img = Image.fromarray((255 * (1 - pix)).astype(np.uint8)).resize((IMAGE_SIZE, IMAGE_SIZE), Image.NEAREST).convert("RGB")
        return _record(f"digits-{i}", "what digit is shown ?", NUMBERS[label], _save(img, root, f"digits-{i}.png"))

    def colour(i: int) -> dict:
        name = list(COLOURS)[i % len(COLOURS)]
        img = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), "white")
        s = int(rng.integers(8, 16))
        x, y = (int(v) for v in rng.integers(0, IMAGE_SIZE - s, 2))
        ImageDraw.Draw(img).rectangle([x, y, x + s, y + s], fill=COLOURS[name])
        return _record(f"colours-{i}", "what colour is the square ?", name, _save(img, root, f"colours-{i}.png"))

    def count(i: int) -> dict:
        n = i % 4 + 1
        img = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), "white")
        draw = ImageDraw.Draw(img)
        for k in range(n):  # one circle per quadrant, jittered
            cx = (k % 2) * 14 + 7 + int(rng.integers(-2, 3))
            cy = (k // 2) * 14 + 7 + int(rng.integers(-2, 3))
            draw.ellipse([cx - 4, cy - 4, cx + 4, cy + 4], fill=(0, 0, 0))
        return _record(f"counting-{i}", "how many circles ?", NUMBERS[n], _save(img, root, f"counting-{i}.png"))

    def arithmetic(i: int) -> dict:
        a, b = int(rng.integers(0, 5)), int(rng.integers(0, 5))
        return _record(f"arithmetic-{i}", f"what is {NUMBERS[a]} plus {NUMBERS[b]} ?", NUMBERS[a + b], None)

    for task, fn in (("digits", digit), ("colours", colour), ("counting", count), ("arithmetic", arithmetic)):
        split(task, fn)
    captions = []
    for task in ("digits", "colours", "counting"):
        for rec in out[task]["train"]:
            answer = rec["conversations"][1]["value"]
            text = {"digits": f"digit {answer}", "colours": f"a {answer} square", "counting": f"{answer} circles"}[task]
            captions.append(_record(f"describe-{rec['id']}", "describe the image .", text, rec["image"]))
    out["describe"] = {"train": captions, "test": []}
    return out


def vocabulary(tasks: dict[str, dict[str, list]]) -> list[str]:
    words = set()
    for splits in tasks.values():
        for recs in splits.values():
            for rec in recs:
                for turn in rec["conversations"]:
                    words.update(turn["value"].replace("<image>", " ").split())
    return sorted(words)


def word_tokenizer(words: list[str]):
    """A PreTrainedTokenizerFast over ``words`` plus specials and the demo's prompt words; no download."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>", "<image>"]
    base = ["USER", "ASSISTANT", ":", "?", ".", ","]
    vocab = {w: i for i, w in enumerate(dict.fromkeys(specials + base + list(words)))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", additional_special_tokens=["<image>"])
