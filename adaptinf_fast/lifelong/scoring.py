"""Task metrics of the benchmarks continual instruction tuning reports (``eval.metric``, per task).

Every metric maps a task's predictions and records to one score in [0, 1]:

* ``exact_match``: the normalised prediction equals the normalised reference (SQuAD-style
  normalisation: lower case, no punctuation or articles);
* ``first_word``: the first word of the prediction matches (one-word answers, trailing text ignored);
* ``vqa``: VQA soft accuracy, min(#annotator answers equal to the prediction / 3, 1), with the VQA
  evaluation's answer normalisation (punctuation, number words to digits, articles,
  contractions); the annotators' answers are the record's ``answers`` list (else its reference);
* ``multiple_choice``: the option letter of the prediction ("B", "(B)", "B.", "B) ...", "The answer
  is B") equals the reference's;
* ``anls``: Average Normalised Levenshtein Similarity (DocVQA / ST-VQA): per record the best over
  its answers of 1 − edit distance / max length, 0 below 0.5;
* ``caption``: the corpus-level COCO caption metrics from ``pycocoevalcap`` (the benchmarks'
  library; its PTB tokenizer and METEOR need Java): BLEU-1..4, METEOR, ROUGE-L and CIDEr, and their
  mean as the task's score (CIDEr can exceed 1: the mean is reported as computed);
* ``grounding``: accuracy at IoU > 0.5 between the box in the prediction and the reference box (the
  record's ``box`` [x1, y1, x2, y2], else the one in its reference text); boxes as "[x1, y1, x2, y2]"
  (LLaVA, normalised to [0, 1]) or "(x1,y1),(x2,y2)" (Qwen's 0..1000 grid, with or without
  ``<|box_start|>``); coordinates above 1 are read on the 0..1000 grid;
* ``grounding_pixels``: the same for absolute pixel coordinates (Qwen2.5-VL's ``{"bbox_2d": [x1, y1,
  x2, y2]}``), divided by the record's ``image_size`` [width, height] (the size of the image the model
  saw: for Qwen2.5-VL its processor's resized input), else by the record's image file's own size.
"""

from __future__ import annotations

import contextlib
import re
import string
from typing import Callable, Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation and articles, collapse whitespace (SQuAD-style)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


def first_word_match(prediction: str, reference: str) -> float:
    """For one-word answers: the first word of the prediction matches (ignores trailing text)."""
    words = normalize_answer(prediction).split()
    return float(bool(words) and words[0] == normalize_answer(reference))


# ---- VQA ---------------------------------------------------------------------------------------

_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
            "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_CONTRACTIONS = {"dont": "don't", "doesnt": "doesn't", "isnt": "isn't", "arent": "aren't", "cant": "can't",
                 "wont": "won't", "im": "i'm", "ive": "i've", "youre": "you're", "theyre": "they're", "whats": "what's",
                 "thats": "that's", "wasnt": "wasn't", "werent": "weren't", "couldnt": "couldn't", "shouldnt": "shouldn't",
                 "wouldnt": "wouldn't", "hasnt": "hasn't", "havent": "haven't", "didnt": "didn't", "lets": "let's"}
_VQA_PUNCT = re.compile(r"[;/\[\]\"{}()=+\\_\-><@`,?!*#%^&$~|]")


def vqa_normalize(text: str) -> str:
    """The VQA evaluation's answer normalisation, after its processPunctuation and
    processDigitArticle: lower case, commas inside numbers and periods outside them dropped, other
    punctuation to spaces, number words to digits, articles dropped, contractions restored."""
    text = text.replace("\n", " ").replace("\t", " ").strip().lower()
    text = re.sub(r"(?<=\d),(?=\d)", "", text)  # 1,000 -> 1000
    text = re.sub(r"(?<!\d)\.|\.(?!\d)", "", text)  # periods, except decimal points
    text = _VQA_PUNCT.sub(" ", text)
    words = []
    for w in text.split():
        w = _NUMBERS.get(w, w)
        if w in ("a", "an", "the"):
            continue
        words.append(_CONTRACTIONS.get(w, w))
    return " ".join(words)


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """min(#annotator answers matching the prediction / 3, 1)."""
    pred = vqa_normalize(prediction)
    return min(sum(vqa_normalize(a) == pred for a in answers) / 3.0, 1.0)


# ---- multiple choice, ANLS ---------------------------------------------------------------------------

_LETTER = re.compile(r"^\s*\(?([A-Ha-h])[\).:,]?(\s|$)")
_LETTER_ANYWHERE = re.compile(r"\b(?:answer|option)(?:\s+is)?\s*:?\s*\(?([A-Ha-h])\b", re.IGNORECASE)


def choice_letter(text: str) -> str | None:
    """The option letter a text gives: leading ("B", "(B)", "B.", "B) cat") or "answer is B"."""
    m = _LETTER.match(text) or _LETTER_ANYWHERE.search(text)
    return m.group(1).upper() if m else None


def multiple_choice(prediction: str, reference: str) -> float:
    want = choice_letter(reference)
    return float(want is not None and choice_letter(prediction) == want)


def _levenshtein(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def anls(prediction: str, answers: Sequence[str], threshold: float = 0.5) -> float:
    """Best over the answers of 1 − NL (normalised Levenshtein distance), 0 when NL > threshold."""
    pred = " ".join(prediction.strip().lower().split())
    best = 0.0
    for a in answers:
        a = " ".join(a.strip().lower().split())
        nl = _levenshtein(pred, a) / max(len(pred), len(a), 1)
        best = max(best, 1.0 - nl if nl < threshold else 0.0)
    return best


# ---- grounding -----------------------------------------------------------------------------------

_NUM = r"-?\d+(?:\.\d+)?"
_BOX_LIST = re.compile(rf"\[\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*\]")
_BOX_PAIRS = re.compile(rf"\(\s*({_NUM})\s*,\s*({_NUM})\s*\)\s*,?\s*\(\s*({_NUM})\s*,\s*({_NUM})\s*\)")


def parse_box(text: str, size: Sequence[float] | None = None) -> tuple[float, float, float, float] | None:
    """The first box in a text, normalised to [0, 1]: divided by ``size`` (width, height) when given
    (absolute pixels), else read as normalised, or on the 0..1000 grid when a value exceeds 1."""
    m = _BOX_LIST.search(text) or _BOX_PAIRS.search(text)
    if not m:
        return None
    box = [float(v) for v in m.groups()]
    if size is not None:
        w, h = (float(v) for v in size)
        box = [box[0] / w, box[1] / h, box[2] / w, box[3] / h]
    elif max(box) > 1.0:
        box = [v / 1000.0 for v in box]
    x1, y1, x2, y2 = box
    return (min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2))


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def grounding(prediction: str, reference_box: Sequence[float] | None, size: Sequence[float] | None = None) -> float:
    """1 when the prediction's box (``parse_box(prediction, size)``) overlaps the normalised reference at IoU > 0.5."""
    pred = parse_box(prediction, size)
    return float(pred is not None and reference_box is not None and iou(pred, reference_box) > 0.5)


def image_size(rec: dict) -> tuple[float, float]:
    """(width, height) of the image a grounding record's pixel coordinates refer to: its ``image_size``,
    else its (first) image file's size."""
    size = rec.get("image_size")
    if isinstance(size, (list, tuple)) and len(size) == 2 and all(float(v) > 0 for v in size):
        return float(size[0]), float(size[1])
    path = rec.get("image")
    path = path[0] if isinstance(path, (list, tuple)) and path else path
    if not path:
        raise ValueError(f"record {rec.get('id')!r}: grounding_pixels needs its `image_size` [width, height] or an image")
    from PIL import Image

    with Image.open(path) as im:  # reads the header only
        return float(im.width), float(im.height)


# ---- captions (corpus level) -------------------------------------------------------------------------

@contextlib.contextmanager
def _quiet_fds():
    """Silence the process's stdout and stderr (file descriptors, so child processes too)."""
    import os
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, null):
            os.close(fd)


CAPTION_PARTS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr")


def caption_scores(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """pycocoevalcap's corpus-level BLEU-1..4, METEOR, ROUGE-L, CIDEr (PTB-tokenised) and their mean."""
    try:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.meteor.meteor import Meteor
        from pycocoevalcap.rouge.rouge import Rouge
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
    except ImportError as exc:
        raise ImportError("the caption metric needs pycocoevalcap (pip install adaptinf-fast[captions]) and Java") from exc
    gts = {i: [{"caption": r} for r in refs] for i, refs in enumerate(references)}
    res = {i: [{"caption": p if p.strip() else "-"}] for i, p in enumerate(predictions)}
    with _quiet_fds():  # the Java tokenizer reports its speed on the process's stderr
        tok = PTBTokenizer()
        gts, res = tok.tokenize(gts), tok.tokenize(res)
    out: dict[str, float] = {}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    out.update({f"Bleu_{n}": float(v) for n, v in enumerate(bleu, 1)})
    meteor = Meteor()
    out["METEOR"] = float(meteor.compute_score(gts, res)[0])
    del meteor  # its Java process
    out["ROUGE_L"] = float(Rouge().compute_score(gts, res)[0])
    out["CIDEr"] = float(Cider().compute_score(gts, res)[0])
    out["mean"] = sum(out[k] for k in CAPTION_PARTS) / len(CAPTION_PARTS)
    return out


# ---- the registry ------------------------------------------------------------------------------------

def _answers(rec: dict, reference: str) -> list[str]:
    a = rec.get("answers")
    return [str(x) for x in a] if isinstance(a, list) and a else [reference]


def _box(rec: dict, reference: str, size: Sequence[float] | None = None):
    """The record's reference box, normalised: its ``box`` (normalised), else the box in its reference text."""
    box = rec.get("box")
    return tuple(float(v) for v in box) if isinstance(box, (list, tuple)) and len(box) == 4 else parse_box(reference, size)


def _grounding_pixels(prediction: str, reference: str, rec: dict) -> float:
    size = image_size(rec)  # the reference text's box, when it is the reference, is in the same pixels
    return grounding(prediction, _box(rec, reference, size), size)


PER_RECORD: dict[str, Callable[[str, str, dict], float]] = {
    "exact_match": lambda p, ref, rec: exact_match(p, ref),
    "first_word": lambda p, ref, rec: first_word_match(p, ref),
    "vqa": lambda p, ref, rec: vqa_accuracy(p, _answers(rec, ref)),
    "multiple_choice": lambda p, ref, rec: multiple_choice(p, ref),
    "anls": lambda p, ref, rec: anls(p, _answers(rec, ref)),
    "grounding": lambda p, ref, rec: grounding(p, _box(rec, ref)),
    "grounding_pixels": lambda p, ref, rec: _grounding_pixels(p, ref, rec),
}
CORPUS = ("caption",)
METRICS = tuple(PER_RECORD) + CORPUS


def score_task(metric: str | Callable[[str, str], float], predictions: Sequence[str], references: Sequence[str],
               records: Sequence[dict]) -> tuple[float, list[float] | None, dict]:
    """(the task's score, per-record scores or None for a corpus-level metric, details)."""
    if callable(metric):
        per = [float(metric(p, r)) for p, r in zip(predictions, references)]
        return (sum(per) / len(per) if per else float("nan")), per, {}
    if metric == "caption":
        scores = caption_scores(predictions, [_answers(rec, ref) for rec, ref in zip(records, references)])
        return scores["mean"], None, scores
    if metric not in PER_RECORD:
        raise ValueError(f"metric is {metric!r}; expected one of {METRICS}")
    fn = PER_RECORD[metric]
    per = [fn(p, ref, rec) for p, ref, rec in zip(predictions, references, records)]
    return (sum(per) / len(per) if per else float("nan")), per, {}
