"""The package's layering (imports run downward only), its one place for atomic writes, and
progress bars that stay out of log files."""

from __future__ import annotations

import ast
import io
from pathlib import Path

import adaptinf_fast
from adaptinf_fast._io import progress_bar

ROOT = Path(adaptinf_fast.__file__).parent
# a package may import only from the packages listed for it (and from itself)
# (featureview: the memory-mapped rows every layer reads; it imports only _io)
ALLOWED = {
    "ops": {"ops", "_io", "_validate", "backends", "_C", "featureview"},
    "data": {"data", "_io"},
    "features": {"features", "ops", "data", "_io", "_validate", "backends", "featureview"},
    "selection": {"selection", "ops", "_io", "_validate", "featureview"},
}


def imported_packages(path: Path) -> set[str]:
    """First-level adaptinf_fast packages a module imports (relative imports resolved)."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    here = list(parts[:-1]) if parts[-1] != "__init__" else list(parts[:-1])
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - (node.level - 1)] if node.level > 1 else here
                target = base + (node.module.split(".") if node.module else [])
                if not target:  # "from .. import x": x are top-level names
                    out |= {a.name for a in node.names}
                else:
                    out.add(target[0])
            elif node.module and node.module.startswith("adaptinf_fast."):
                out.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[1] for a in node.names if a.name.startswith("adaptinf_fast.")}
    return out


def test_imports_run_downward_only():
    bad = []
    for package, allowed in ALLOWED.items():
        for path in sorted((ROOT / package).rglob("*.py")):
            extra = imported_packages(path) - allowed
            if extra:
                bad.append(f"{path.relative_to(ROOT)} imports {sorted(extra)}")
    assert not bad, bad
    assert imported_packages(ROOT / "featureview.py") <= {"_io"}
    assert not (ROOT / "features" / "batching.py").exists() and (ROOT / "data" / "encoder.py").exists()


def test_the_checker_sees_an_upward_import(tmp_path, monkeypatch):
    (tmp_path / "ops").mkdir()
    (tmp_path / "ops" / "x.py").write_text("from ..selection.budget import split_budget\nfrom . import y\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    assert imported_packages(tmp_path / "ops" / "x.py") == {"selection", "ops"}


def test_files_are_renamed_into_place_only_by_io():
    users = [p.relative_to(ROOT) for p in ROOT.rglob("*.py")
             if p.name != "_io.py" and any(f in p.read_text() for f in ("os.replace(", "tmp.replace(", ".rename("))]
    assert not users, users


def test_progress_bars_draw_only_on_a_terminal():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    assert progress_bar(range(3), file=io.StringIO()).disable  # a log file or pipe: no bar
    assert not progress_bar(range(3), file=Tty()).disable
    assert progress_bar(range(3), file=Tty(), progress=False).disable


def test_the_extension_stub_lists_every_export():
    import re

    from adaptinf_fast.backends import cuda_extension

    source = (ROOT.parent / "csrc" / "module.cpp").read_text()
    define = source[source.index("void define(") : source.index("}  // namespace", source.index("void define("))]
    exported = set(re.findall(r'm\.def\("(\w+)"', define))
    stub = set(re.findall(r"^def (\w+)\(", (ROOT / "_C.pyi").read_text(), re.M))
    assert exported and exported == stub, exported ^ stub
    ext = cuda_extension()
    if ext is not None:  # CI builds it: the compiled module agrees with the source it came from
        assert {n for n in dir(ext) if not n.startswith("_")} == stub
