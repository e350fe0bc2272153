"""Atomic files and folders, JSON/JSONL helpers, folder locks and progress bars: the one place the
package writes to disk from.

Every artifact is written through a temporary sibling, fsynced and renamed, so a reader (or a
resumed run) never sees half a file or half a folder. ``FolderLock`` takes an exclusive ``fcntl``
lock on ``<folder>/.lock`` for as long as a run or pool step works there, so a second process on the
same folder stops at once with a clear error instead of interleaving commits.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from tqdm.auto import tqdm


def atomic_write(path: Path, write: Callable) -> None:
    """Write through a temp file in the same folder, fsync, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_dir(path: Path, fill: Callable[[Path], None]) -> None:
    """Fill a temp sibling folder with ``fill(tmp)``, then rename it to ``path``: the folder appears
    complete or not at all (an existing ``path`` is replaced)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    fill(tmp)
    if path.exists():
        shutil.rmtree(path)
    tmp.replace(path)


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=1, sort_keys=True).encode()))


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    """One JSON object per line (keys sorted), written atomically in blocks of lines: no string of the
    whole file is built (manifests of millions of rows)."""
    def write(f) -> None:
        block: list[str] = []
        for r in rows:
            block.append(json.dumps(r, sort_keys=True))
            if len(block) == 8192:
                f.write(("\n".join(block) + "\n").encode())
                block.clear()
        if block:
            f.write(("\n".join(block) + "\n").encode())

    atomic_write(path, write)


def iter_jsonl(path: Path) -> Iterator[dict]:
    """The objects of a JSON-lines file, one at a time (blank lines skipped)."""
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None


def read_jsonl(path: Path) -> list[dict]:
    return list(iter_jsonl(path))


class FolderBusyError(RuntimeError):
    """Another process holds the folder's lock."""


class FolderLock:
    """An exclusive, non-blocking ``fcntl`` lock on ``folder/.lock`` (a context manager).

    The lock belongs to the open file: it is released when the holder exits, even by SIGKILL, so a
    killed run never leaves a stale lock behind. Re-entrant within one process."""

    _held: dict[str, list] = {}

    def __init__(self, folder: str | Path, what: str = "folder"):
        self.path = Path(folder) / ".lock"
        self.what = what

    def __enter__(self) -> "FolderLock":
        import fcntl

        key = str(self.path.resolve())
        if key in FolderLock._held:
            FolderLock._held[key][1] += 1
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise FolderBusyError(f"{self.path.parent} is in use by {holder}: one process per {self.what} at a time "
                                  f"(wait for it to finish, or use another folder)") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}\n")
        f.flush()
        FolderLock._held[key] = [f, 1]
        return self

    def __exit__(self, *exc) -> None:
        key = str(self.path.resolve())
        entry = FolderLock._held[key]
        entry[1] -= 1
        if entry[1] == 0:
            entry[0].close()  # closing the file releases the lock
            del FolderLock._held[key]


def fault_point(point: str) -> None:
    """Fault injection for tests: ``ADAPTINF_FAULT=<point>`` kills this process (SIGKILL) there."""
    if os.environ.get("ADAPTINF_FAULT") == point:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def progress_bar(iterable: Any = None, *, progress: bool = True, **kwargs) -> tqdm:
    """A tqdm bar that draws only on a terminal (``disable=None``): logs and pipes get no
    carriage-return lines. ``progress=False`` turns it off everywhere."""
    return tqdm(iterable, disable=None if progress else True, **kwargs)
