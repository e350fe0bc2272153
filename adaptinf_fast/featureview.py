"""Per-sample features on disk, read through one memory-mapped view (pools of millions).

A ``FeatureView`` is an (N, D) matrix that is never loaded whole: its rows live in one or more
*segments* (``.npy`` files, or an uncompressed ``.npz`` member, memory-mapped), each with an
optional row selection (which of the file's rows, in the view's order). Reading ``view[a:b]`` or
``view[idx]`` copies only those rows, in the storage dtype (16-bit for the featurizer's shards:
float16, or bfloat16 kept as its raw 16-bit words); ``chunks`` walks the rows in order. A stage's
features are such a view over the featurizer's shards (or over an imported ``.npz``), so no step
holds a float32 copy of the whole pool: k-means streams the chunks, pruning gathers one cluster at
a time (``ops.dedup``), selection needs only the O(N) scores.

``describe`` / ``FeatureView.load`` write and read the view as JSON (segment paths relative to a
folder, row selections as ``.npy`` files beside it).
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

STORAGE = ("float16", "bfloat16", "float32")
_TORCH = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
_NUMPY = {"float16": np.float16, "bfloat16": np.int16, "float32": np.float32}  # bf16: its raw 16-bit words


def to_storage(x: torch.Tensor, dtype: str) -> np.ndarray:
    """``x`` (N, D) as the NumPy array stored for ``dtype`` (bfloat16: its bits as int16)."""
    if dtype not in STORAGE:
        raise ValueError(f"feature storage dtype is {dtype!r}; expected one of {STORAGE}")
    t = x.detach().to("cpu", _TORCH[dtype]).contiguous()
    return t.view(torch.int16).numpy() if dtype == "bfloat16" else t.numpy()


def _as_torch(a: np.ndarray, dtype: str) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(a))
    return t.view(torch.bfloat16) if dtype == "bfloat16" else t


def _npz_member(path: Path, name: str) -> np.ndarray:
    """A memory map of member ``name`` of an uncompressed ``.npz`` (``np.savez``): its bytes lie
    contiguous in the zip file. A compressed member raises (extract it first)."""
    with zipfile.ZipFile(path) as z:
        info = z.getinfo(name + ".npy")
        if info.compress_type != zipfile.ZIP_STORED:
            raise ValueError(f"{path}:{name} is compressed (np.savez_compressed); it cannot be memory-mapped")
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
        if local[:4] != b"PK\x03\x04":
            raise ValueError(f"{path}: bad zip local header for {name}")
        name_len, extra_len = int.from_bytes(local[26:28], "little"), int.from_bytes(local[28:30], "little")
        start = info.header_offset + 30 + name_len + extra_len
        f.seek(start)
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(f)
        offset = f.tell()
    if fortran:
        raise ValueError(f"{path}:{name} is stored in Fortran order; save it C-contiguous")
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)


def open_array(path: str | Path, member: str | None = None) -> np.ndarray:
    """A read-only memory map of a 2-D ``.npy`` file, or of member ``member`` of an uncompressed ``.npz``."""
    path = Path(path)
    arr = _npz_member(path, member) if member is not None else np.load(path, mmap_mode="r")
    if arr.ndim != 2:
        raise ValueError(f"{path}{':' + member if member else ''} has shape {arr.shape}; expected (N, D)")
    return arr


@dataclass
class Segment:
    """Rows of one file: ``array`` (memory-mapped, storage dtype), ``rows`` (int64 positions in the
    file, in view order; None: all rows in file order), and where the file lives (for ``describe``)."""

    array: np.ndarray
    dtype: str
    rows: np.ndarray | None = None
    path: Path | None = None
    member: str | None = None

    def __len__(self) -> int:
        return self.array.shape[0] if self.rows is None else self.rows.shape[0]

    def read(self, local: np.ndarray | slice, out: np.ndarray | None = None,
             dest: np.ndarray | None = None) -> np.ndarray:
        """Rows at view positions ``local`` (a slice or int64 positions within this segment), into
        ``out[dest]`` when given (else a new array). Rows are read in ascending file order, a block
        at a time: sequential page reads, and no temporary larger than a block."""
        if self.rows is None and isinstance(local, slice) and out is None:
            return np.array(self.array[local])
        if isinstance(local, slice):
            local = np.arange(*local.indices(len(self)))
        file_rows = self.rows[local] if self.rows is not None else np.asarray(local, dtype=np.int64)
        if out is None:
            out = np.empty((file_rows.size, self.array.shape[1]), self.array.dtype)
            dest = None
        order = np.argsort(file_rows, kind="stable")
        for b in range(0, order.size, _READ_BLOCK):
            sel = order[b : b + _READ_BLOCK]
            out[sel if dest is None else dest[sel]] = self.array[file_rows[sel]]
        return out


_READ_BLOCK = 8192  # rows per gathered block


class FeatureView:
    """(N, D) rows concatenated from ``segments``; see the module docstring.

    ``view[a:b]`` / ``view[idx]`` (int64 tensor or array) return CPU tensors in the storage dtype;
    ``chunks(rows)`` yields (start, tensor); ``sub(a, b)`` is the view of rows a..b-1 (no copy).
    Attributes: ``shape``, ``dtype`` (torch), ``storage`` (name), ``device`` (cpu), ``nbytes``.
    """

    def __init__(self, segments: Sequence[Segment]):
        segments = [s for s in segments if len(s)] or list(segments[:1])
        if not segments:
            raise ValueError("a feature view needs at least one segment")
        widths = {s.array.shape[1] for s in segments}
        kinds = {s.dtype for s in segments}
        if len(widths) != 1 or len(kinds) != 1:
            raise ValueError(f"segments differ in width {sorted(widths)} or dtype {sorted(kinds)}")
        self.segments = list(segments)
        self.storage = kinds.pop()
        self.dtype = _TORCH[self.storage]
        self.device = torch.device("cpu")
        self._ends = np.cumsum([len(s) for s in self.segments])
        self.shape = (int(self._ends[-1]), widths.pop())

    # -- building ---------------------------------------------------------------------------------
    @classmethod
    def from_arrays(cls, arrays: Sequence[np.ndarray], dtype: str | None = None) -> "FeatureView":
        """A view over in-memory or memory-mapped arrays (float16/float32; int16 = bfloat16 words)."""
        segs = []
        for a in arrays:
            kind = dtype or {np.dtype(np.float16): "float16", np.dtype(np.float32): "float32",
                             np.dtype(np.int16): "bfloat16"}.get(a.dtype)
            if kind is None:
                raise TypeError(f"features of dtype {a.dtype}: expected float16, float32 or bfloat16 words")
            segs.append(Segment(a, kind))
        return cls(segs)

    def select(self, rows: np.ndarray | torch.Tensor) -> "FeatureView":
        """The view of rows ``rows`` (int64 positions of this view, any order; no copy of features)."""
        rows = np.asarray(torch.as_tensor(rows).cpu().numpy(), dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= self.shape[0]):
            raise IndexError(f"row selection outside 0..{self.shape[0] - 1}")
        seg_of = np.searchsorted(self._ends, rows, side="right")
        out = []
        # consecutive runs of one segment keep the selection's order
        cuts = np.flatnonzero(np.diff(seg_of)) + 1
        for run in np.split(np.arange(rows.size), cuts):
            if run.size == 0:
                continue
            s = int(seg_of[run[0]])
            local = rows[run] - (self._ends[s - 1] if s else 0)
            seg = self.segments[s]
            file_rows = seg.rows[local] if seg.rows is not None else local
            out.append(Segment(seg.array, seg.dtype, file_rows, seg.path, seg.member))
        return FeatureView(out or [Segment(self.segments[0].array, self.storage, np.zeros(0, np.int64),
                                           self.segments[0].path, self.segments[0].member)])

    def sub(self, start: int, stop: int) -> "FeatureView":
        return self.select(np.arange(start, stop, dtype=np.int64))

    # -- reading ----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.shape[0]

    def dim(self) -> int:
        return 2

    @property
    def nbytes(self) -> int:
        return self.shape[0] * self.shape[1] * torch.finfo(self.dtype).bits // 8

    def __getitem__(self, key: Any) -> torch.Tensor:
        if isinstance(key, slice):
            start, stop, step = key.indices(self.shape[0])
            if step != 1:
                return self[np.arange(start, stop, step)]
            parts = []
            for s, seg in enumerate(self.segments):
                lo = self._ends[s - 1] if s else 0
                a, b = max(start, lo), min(stop, self._ends[s])
                if a < b:
                    parts.append(seg.read(slice(int(a - lo), int(b - lo))))
            arr = np.concatenate(parts) if parts else np.zeros((0, self.shape[1]), _NUMPY[self.storage])
            return _as_torch(arr, self.storage)
        raw = np.asarray(torch.as_tensor(key).cpu().numpy())
        if raw.dtype == np.bool_:
            raise TypeError("a FeatureView takes row indices, not a boolean mask (use mask.nonzero())")
        idx = raw.astype(np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self.shape[0]):
            raise IndexError(f"row index out of 0..{self.shape[0] - 1} (negative indices are not taken)")
        if len(self.segments) == 1:
            return _as_torch(self.segments[0].read(idx), self.storage)
        out = np.empty((idx.size, self.shape[1]), _NUMPY[self.storage])
        seg_of = np.searchsorted(self._ends, idx, side="right")
        for s in np.unique(seg_of):
            where = np.flatnonzero(seg_of == s)
            self.segments[s].read(idx[where] - (self._ends[s - 1] if s else 0), out, where)
        return _as_torch(out, self.storage)

    def chunks(self, rows: int) -> Iterator[tuple[int, torch.Tensor]]:
        for start in range(0, self.shape[0], rows):
            yield start, self[start : start + rows]

    def to_tensor(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The whole matrix in memory (small views, tests)."""
        return self[0 : self.shape[0]].to(dtype)

    # -- persisting ---------------------------------------------------------------------------------
    def describe(self, folder: str | Path, name: str = "rows") -> list[dict]:
        """JSON-able segment list, paths relative to ``folder``; row selections are written there as
        ``<name>-<i>.npy``."""
        folder = Path(folder)
        out = []
        for i, seg in enumerate(self.segments):
            if seg.path is None:
                raise ValueError("a view over in-memory arrays cannot be described; save its rows first")
            entry = {"path": _relative(seg.path, folder), "member": seg.member, "dtype": seg.dtype, "rows": None,
                     "fingerprint": fingerprint(seg.path)}
            if seg.rows is not None:
                from ._io import atomic_write

                rows_file = folder / f"{name}-{i}.npy"
                atomic_write(rows_file, lambda f, r=seg.rows: np.save(f, r))
                entry["rows"] = rows_file.name
            out.append(entry)
        return out

    @classmethod
    def load(cls, entries: list[dict], folder: str | Path) -> "FeatureView":
        folder = Path(folder)
        segs = []
        for e in entries:
            path = Path(e["path"]) if Path(e["path"]).is_absolute() else folder / e["path"]
            if e.get("fingerprint") and fingerprint(path) != e["fingerprint"]:
                raise ValueError(f"{path} changed since its features were recorded (size or content); "
                                 "run the features step again (a file the pool maps must stay as it was)")
            rows = np.load(folder / e["rows"]) if e.get("rows") else None
            segs.append(Segment(open_array(path, e.get("member")), e["dtype"], rows, path, e.get("member")))
        return cls(segs)

    @classmethod
    def of_files(cls, paths: Sequence[str | Path], dtype: str) -> "FeatureView":
        return cls([Segment(open_array(p), dtype, None, Path(p)) for p in paths])


def fingerprint(path: str | Path, block: int = 1 << 20) -> str:
    """size + SHA-256 of a file's first and last MiB: cheap, and it changes when the file is rewritten."""
    import hashlib

    path = Path(path)
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(block))
        if size > block:
            f.seek(max(block, size - block))
            h.update(f.read(block))
    return f"{size}:{h.hexdigest()[:32]}"


def _relative(path: Path, folder: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(folder.resolve()))
    except ValueError:
        return str(Path(path).resolve())


__all__ = ["FeatureView", "Segment", "STORAGE", "open_array", "to_storage"]
