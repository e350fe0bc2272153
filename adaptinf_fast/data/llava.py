"""Reading LLaVA-style conversation data: ``[{"id", "image"?, "conversations": [{"from": "human",
"value": "<image>\\n..."}, {"from": "gpt", "value": ...}, ...]}, ...]`` plus an image folder;
``image`` is one path or a list of paths, one per ``<image>`` placeholder (multi-image records).

Malformed records, records without an answer, duplicate ids and records whose image is missing are
reported (with a reason) and skipped; the report counts them, nothing stops the read.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from .encoder import ROLES

log = logging.getLogger("adaptinf_fast")


@dataclass
class ReadReport:
    total: int = 0
    kept: int = 0
    skipped: list[tuple[Any, str]] = field(default_factory=list)  # (id or index, reason)

    @property
    def reasons(self) -> dict[str, int]:
        return dict(Counter(why.split(":")[0] for _, why in self.skipped))

    def __str__(self) -> str:
        return f"read {self.total} records: kept {self.kept}, skipped {len(self.skipped)} {self.reasons or ''}".rstrip()


def _problem(rec: Any, image_root: Path | None) -> str | None:
    if not isinstance(rec, dict):
        return f"malformed: not an object ({type(rec).__name__})"
    if "id" not in rec:
        return "malformed: no 'id'"
    turns = rec.get("conversations")
    if not isinstance(turns, list) or not turns:
        return "malformed: no 'conversations' list"
    for t in turns:
        if not isinstance(t, dict) or t.get("from") not in ROLES or not isinstance(t.get("value"), str):
            return f"malformed: bad turn {str(t)[:60]}"
    if not any(ROLES[t["from"]] == "assistant" and t["value"].strip() for t in turns):
        return "no answer: no non-empty 'gpt' turn"
    n = sum(t["value"].count("<image>") for t in turns)
    if n:
        paths = rec.get("image")
        paths = [paths] if isinstance(paths, str) else paths
        if not isinstance(paths, list) or not paths or not all(isinstance(x, str) for x in paths):
            return "missing image: '<image>' in the text but no 'image' path (or list of paths)"
        if len(paths) != n:
            return f"image count: {n} '<image>' placeholder(s) but {len(paths)} image path(s)"
        for x in paths:
            path = Path(x) if image_root is None else image_root / x
            if not path.is_file():
                return f"missing image: {path} does not exist"
    return None


def validate_records(records: Iterable[Any], image_root: str | Path | None = None) -> tuple[list[dict], ReadReport]:
    """Keep the well-formed records (in order); report the rest."""
    root = Path(image_root) if image_root is not None else None
    kept, report, seen = [], ReadReport(), set()
    for i, rec in enumerate(records):
        report.total += 1
        why = _problem(rec, root)
        if why is None and rec["id"] in seen:
            why = "duplicate id"
        if why is not None:
            key = rec.get("id", i) if isinstance(rec, dict) else i
            report.skipped.append((key, why))
            log.warning("skipped record %r: %s", key, why)
            continue
        seen.add(rec["id"])
        kept.append(rec)
    report.kept = len(kept)
    return kept, report


def read_llava_json(path: str | Path, image_folder: str | Path | None = None) -> tuple[list[dict], ReadReport]:
    """Records of a LLaVA JSON list (or JSON Lines) file, validated against ``image_folder``."""
    p = Path(path)
    text = p.read_text()
    if p.suffix == ".jsonl":
        records = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    records.append(f"line {lineno}: {exc.msg}")  # reported as malformed
    else:
        records = json.loads(text)
        if not isinstance(records, list):
            raise ValueError(f"{p}: expected a JSON list of records")
    return validate_records(records, image_folder)
