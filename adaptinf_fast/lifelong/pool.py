"""The persisted data pool (DESIGN §2): a directory that survives crashes and never loses a sample.

Layout::

    pool.json                    state: current manifest file, stage, finished steps (the commit point)
    manifest-<stage>-<step>.jsonl one row per sample that ever entered: id, source, stage_added,
                                 status ("pool" | "selected" | "pruned"), status_stage, reason, times_selected
    data/<source>-<stage>.jsonl  the records as added
    stages/stage-<t>/            artifacts of each step (``steps.StageDir``: features .npy, labels,
                                 selection, adapter, evaluation, pruning, record)

A step writes its artifacts and, if the manifest changes, a new manifest file (each atomically:
temp file, fsync, rename), then commits by atomically replacing ``pool.json``. A run killed at
any point leaves the last committed state intact and resumes at the first unfinished step; a
re-run step overwrites its own artifacts with identical content (all randomness is seeded).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from .._io import iter_jsonl, write_json, write_jsonl

STATUSES = ("pool", "selected", "pruned")


@dataclass
class PoolState:
    stage: int = 0
    manifest: str | None = None
    done: dict[str, list[str]] = field(default_factory=dict)  # stage -> finished steps

    def finished(self, stage: int, step: str) -> bool:
        return step in self.done.get(str(stage), [])


def read_manifest(path: Path) -> list[dict]:
    """The manifest's rows, with their keys and repeated values (source, status, reason) interned:
    ~350 bytes a row in memory instead of ~2 KB (pools of millions)."""
    import sys

    intern = sys.intern
    return [{intern(k): (intern(v) if k != "id" and v.__class__ is str else v) for k, v in row.items()}
            for row in iter_jsonl(path)]


class PoolStore:
    """Open (or create) a pool directory."""

    def __init__(self, root: str | Path, create: bool = False):
        self.root = Path(root)
        state_file = self.root / "pool.json"
        if not state_file.exists():
            if not create:
                raise FileNotFoundError(f"{self.root} is not a pool (no pool.json); create it with `adaptinf-fast add`")
            self.root.mkdir(parents=True, exist_ok=True)
            write_json(state_file, {"version": 1, **PoolState().__dict__})
        self.reload()

    def reload(self) -> None:
        """Re-read the committed state (another process may have committed since)."""
        state_file = self.root / "pool.json"
        doc = json.loads(state_file.read_text())
        if doc.get("version") != 1:
            raise ValueError(f"{state_file}: unsupported pool version {doc.get('version')}")
        self.state = PoolState(doc["stage"], doc["manifest"], doc["done"])
        self.rows: list[dict] = read_manifest(self.root / self.state.manifest) if self.state.manifest else []

    # -- reading --------------------------------------------------------------------------------
    def stage_dir(self, stage: int) -> Path:
        return self.root / "stages" / f"stage-{stage:03d}"

    def ids(self, status: Iterable[str] = ("pool", "selected")) -> list:
        wanted = set(status)
        return [r["id"] for r in self.rows if r["status"] in wanted]

    def records(self, ids: Iterable) -> list[dict]:
        """The stored records for the given ids, in that order."""
        wanted = {i: None for i in ids}
        for path in sorted((self.root / "data").glob("*.jsonl")):
            for rec in iter_jsonl(path):  # streamed: only the wanted records are kept
                if rec["id"] in wanted:
                    wanted[rec["id"]] = rec
        missing = [i for i, r in wanted.items() if r is None]
        if missing:
            raise RuntimeError(f"{len(missing)} id(s) in the manifest have no stored record (first: {missing[:3]})")
        return list(wanted.values())

    def counts(self) -> dict:
        out: dict[str, int] = {s: 0 for s in STATUSES}
        for r in self.rows:
            out[r["status"]] += 1
        return out

    # -- committing ----------------------------------------------------------------------------
    def commit(self, stage: int, step: str, rows: list[dict] | None = None) -> None:
        """Mark ``step`` of ``stage`` finished; with ``rows``, also switch to a new manifest."""
        manifest = self.state.manifest
        if rows is not None:
            self.check_rows(rows)
            manifest = f"manifest-{stage:03d}-{step}.jsonl"
            write_jsonl(self.root / manifest, rows)
        done = {k: list(v) for k, v in self.state.done.items()}
        done.setdefault(str(stage), [])
        if step not in done[str(stage)]:
            done[str(stage)].append(step)
        new = PoolState(stage, manifest, done)
        write_json(self.root / "pool.json", {"version": 1, **new.__dict__})  # the commit point
        old = self.state.manifest
        self.state = new
        if rows is not None:
            self.rows = rows
            if old and old != manifest and (self.root / old).exists():
                (self.root / old).unlink()

    @staticmethod
    def check_rows(rows: list[dict]) -> None:
        seen = set()
        for r in rows:
            if r["id"] in seen:
                raise AssertionError(f"id {r['id']!r} appears twice in the manifest")
            if r["status"] not in STATUSES:
                raise AssertionError(f"id {r['id']!r} has unknown status {r['status']!r}")
            seen.add(r["id"])
