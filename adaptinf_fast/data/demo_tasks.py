"""Built-in tasks for the offline demo: small multimodal tasks generated on the spot, written as
LLaVA records with PNG images, plus a word-level tokenizer over their vocabulary (no download).

Tasks (each with train and test splits, answers balanced over the classes):
``digits`` (sklearn's 8×8 digits: "what digit is shown ?" → zero..nine), ``colours`` (a coloured
square: "what colour is the square ?"), ``counting`` (1–4 circles: "how many circles ?"),
``successor`` (text only: "what number comes after four ?" → five), and ``describe`` (generic captions of fresh
images of the three image kinds, used to pre-train the whole model at stage 0; train split only).
Two more on request (``extra``, generated after the others, so the default tasks do not change):
``pairs`` (two images in one record: "are these the same digit ?" → yes / no) and ``captions``
(a caption task scored by the corpus-level caption metric: "caption the picture ." with two
reference phrasings per image in ``answers``), ``rephrased`` (large and redundant: 2·n_train
yes/no questions about a square's colour, each asked in three phrasings, so 6·n_train training
records; its test split asks each once).
Digit images for training and captions come from the first 1300 of sklearn's 1797 digits, test
images from the rest, so no test image is seen in training.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
COLOURS = {"red": (220, 30, 30), "green": (30, 170, 60), "blue": (40, 70, 220), "yellow": (230, 200, 20)}
TASKS = ("digits", "colours", "counting", "successor")
EXTRA_TASKS = ("pairs", "captions", "rephrased")
TASK_METRICS = {"captions": "caption"}  # the rest: exact match
IMAGE_SIZE = 28
DIGITS_TRAIN = 1300  # sklearn digits below this index feed train/captions, the rest test


def _record(rid: str, question: str, answer: str, image: str | list[str] | None) -> dict:
    paths = [image] if isinstance(image, str) else list(image or [])
    q = "".join("<image>\n" for _ in paths) + question
    rec = {"id": rid, "conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": answer}]}
    if paths:
        rec["image"] = paths[0] if isinstance(image, str) else paths
    return rec


def _save(img, root: Path, name: str) -> str:
    (root / "images").mkdir(parents=True, exist_ok=True)
    img.save(root / "images" / name)
    return f"images/{name}"


def make_tasks(root: str | Path, n_train: int = 120, n_test: int = 40, seed: int = 0,
               n_describe: int | None = None, extra: tuple[str, ...] = ()) -> dict[str, dict[str, list]]:
    """{task: {"train": records, "test": records}} with images under ``root/images``;
    ``describe`` has ``n_describe`` (default ``2 * n_train``) captions per image kind; ``extra``:
    any of ``EXTRA_TASKS``."""
    unknown = set(extra) - set(EXTRA_TASKS)
    if unknown:
        raise ValueError(f"extra tasks must be among {EXTRA_TASKS}; got {sorted(unknown)}")
    from PIL import Image, ImageDraw
    from sklearn.datasets import load_digits

    root = Path(root)
    rng = np.random.default_rng(seed)
    digits = load_digits()
    n_describe = 2 * n_train if n_describe is None else n_describe

    def digit(name: str, i: int, test: bool) -> tuple[str, str]:
        label = i % 10
        choices = np.flatnonzero(digits.target == label)
        choices = choices[choices >= DIGITS_TRAIN] if test else choices[choices < DIGITS_TRAIN]
        pix = digits.images[rng.choice(choices)] / 16.0
        img = Image.fromarray((255 * (1 - pix)).astype(np.uint8)).resize((IMAGE_SIZE, IMAGE_SIZE), Image.NEAREST).convert("RGB")
        return NUMBERS[label], _save(img, root, f"{name}.png")

    def colour(name: str, i: int, test: bool) -> tuple[str, str]:
        label = list(COLOURS)[i % len(COLOURS)]
        img = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), "white")
        s = int(rng.integers(8, 16))
        x, y = (int(v) for v in rng.integers(0, IMAGE_SIZE - s, 2))
        ImageDraw.Draw(img).rectangle([x, y, x + s, y + s], fill=COLOURS[label])
        return label, _save(img, root, f"{name}.png")

    def count(name: str, i: int, test: bool) -> tuple[str, str]:
        n = i % 4 + 1
        img = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), "white")
        draw = ImageDraw.Draw(img)
        for k in range(n):  # one circle per quadrant, jittered
            cx = (k % 2) * 14 + 7 + int(rng.integers(-2, 3))
            cy = (k // 2) * 14 + 7 + int(rng.integers(-2, 3))
            draw.ellipse([cx - 4, cy - 4, cx + 4, cy + 4], fill=(0, 0, 0))
        return NUMBERS[n], _save(img, root, f"{name}.png")

    images = {"digits": (digit, "what digit is shown ?", "digit {}"),
              "colours": (colour, "what colour is the square ?", "a {} square"),
              "counting": (count, "how many circles ?", "{} circles")}
    out: dict[str, dict[str, list]] = {}
    for task, (make, question, _) in images.items():
        recs = []
        for i in range(n_train + n_test):
            answer, path = make(f"{task}-{i}", i, i >= n_train)
            recs.append(_record(f"{task}-{i}", question, answer, path))
        out[task] = {"train": recs[:n_train], "test": recs[n_train:]}
    recs = [_record(f"successor-{i}", f"what number comes after {NUMBERS[i % 9]} ?", NUMBERS[i % 9 + 1], None)
            for i in range(n_train + n_test)]
    out["successor"] = {"train": recs[:n_train], "test": recs[n_train:]}
    captions = []
    for task, (make, _, caption) in images.items():
        for i in range(n_describe):
            answer, path = make(f"describe-{task}-{i}", i, False)
            captions.append(_record(f"describe-{task}-{i}", "describe the image .", caption.format(answer), path))
    out["describe"] = {"train": captions, "test": []}
    if "pairs" in extra:  # two images per record
        recs = []
        for i in range(n_train + n_test):
            a, pa = digit(f"pairs-{i}-a", i, i >= n_train)
            same = i % 2 == 0
            b, pb = digit(f"pairs-{i}-b", i if same else i + 1 + i % 9, i >= n_train)
            recs.append(_record(f"pairs-{i}", "are these the same digit ?", "yes" if same else "no", [pa, pb]))
        out["pairs"] = {"train": recs[:n_train], "test": recs[n_train:]}
    if "rephrased" in extra:  # large and redundant: each (square, question) in three phrasings
        recs = []
        phrasings = ("is the square {} ?", "is this square {} ?", "does the picture show a {} square ?")
        names = list(COLOURS)
        for i in range(2 * n_train + n_test):
            answer, path = colour(f"rephrased-{i}", i, i >= 2 * n_train)
            asked = answer if i % 2 == 0 else names[(names.index(answer) + 1 + i % 3) % len(names)]
            reply = "yes" if asked == answer else "no"
            if i < 2 * n_train:
                recs += [_record(f"rephrased-{i}-{j}", q.format(asked), reply, path) for j, q in enumerate(phrasings)]
            else:
                recs.append(_record(f"rephrased-{i}", phrasings[i % 3].format(asked), reply, path))
        out["rephrased"] = {"train": recs[: 6 * n_train], "test": recs[6 * n_train :]}
    if "captions" in extra:  # references in two phrasings, for the corpus-level caption metric
        recs = []
        for i in range(n_train + n_test):
            if i % 2:
                answer, path = colour(f"captions-{i}", i // 2, i >= n_train)
                refs = [f"a {answer} square", f"a {answer} square on white"]
            else:
                answer, path = count(f"captions-{i}", i // 2, i >= n_train)
                refs = [f"{answer} circles", f"{answer} black circles"]
            rec = _record(f"captions-{i}", "caption the picture .", refs[0], path)
            rec["answers"] = refs
            recs.append(rec)
        out["captions"] = {"train": recs[:n_train], "test": recs[n_train:]}
    return out


def vocabulary(tasks: dict[str, dict[str, list]]) -> list[str]:
    words = set()
    for splits in tasks.values():
        for recs in splits.values():
            for rec in recs:
                for turn in rec["conversations"]:
                    words.update(turn["value"].replace("<image>", " ").split())
                for answer in rec.get("answers", []):
                    words.update(answer.split())
    return sorted(words)


SPECIALS = ("<pad>", "<s>", "</s>", "<unk>", "<image>")


def word_tokenizer(words: list[str], specials: tuple[str, ...] = SPECIALS):
    """A PreTrainedTokenizerFast over ``words`` plus ``specials`` (their order sets their ids) and the
    demo's prompt words; no download."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = list(specials)
    base = ["USER", "ASSISTANT", ":", "?", ".", ","]
    vocab = {w: i for i, w in enumerate(dict.fromkeys(specials + base + list(words)))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", additional_special_tokens=["<image>"])
