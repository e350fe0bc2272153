"""The ``adaptinf-fast`` command: ``info`` tells the truth, ``demo-ops`` finds what was planted."""

from __future__ import annotations

import json
import subprocess
import sys

from adaptinf_fast import cli
from adaptinf_fast.backends import cuda_extension


def test_info_reports_extension_and_backends(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert ("_C            built" in out) == (cuda_extension() is not None)
    for op in ("project", "kmeans_assign", "cluster_max_similarity"):
        assert op in out
        assert f"{op:<23} cpu     any    -> torch: CPU tensors" in out  # what auto takes, and why


# What a bare image may lack (the GPU machine has no pydantic, datasets or faiss): `info` needs none of it.
OPTIONAL = ("pydantic", "pydantic_core", "annotated_types", "typing_inspection", "datasets", "faiss", "cupy",
            "sklearn", "tensorboard", "matplotlib")


def _cli_without(modules: tuple[str, ...], *argv: str) -> subprocess.CompletedProcess:
    """``adaptinf-fast ARGV`` in a fresh interpreter where ``modules`` are not installed, as far as
    Python can tell: ``sys.modules[name] = None`` makes ``import name`` (and its submodules) raise
    ModuleNotFoundError and ``importlib.util.find_spec(name)`` return None."""
    code = (f"import sys\nfor m in {modules!r}: sys.modules[m] = None\n"
            f"from adaptinf_fast.cli import main\nsys.exit(main({list(argv)!r}))")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)


def test_info_runs_without_the_optional_packages():
    res = _cli_without(OPTIONAL, "info")
    assert res.returncode == 0, res.stderr
    assert "op                      implemented" in res.stdout
    for op in ("project", "kmeans_assign", "cluster_max_similarity"):
        assert f"{op:<23} cpu     any    -> torch: CPU tensors" in res.stdout


def test_config_command_names_missing_pydantic(tmp_path):
    config = tmp_path / "stage.yaml"
    config.write_text("pool: pool\n")
    res = _cli_without(OPTIONAL, "stage", "--config", str(config))
    assert res.returncode == 2, res.stderr
    assert "pydantic is needed for the config schema" in res.stderr and "pip install pydantic" in res.stderr
    assert "Traceback" not in res.stderr


def test_ops_demo_small_run_finds_planted_duplicates(tmp_path, capsys):
    assert cli.main(["demo-ops", "--out", str(tmp_path), "--n", "300", "--duplicates", "60", "--in-dim", "2048",
                     "--out-dim", "256", "--clusters", "4", "--budget", "250"]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["pool_size"] == 360 and summary["budget_kept"] == 250
    caught, groups = map(int, summary["planted_groups_left_with_one_copy"].split("/"))
    assert groups > 0 and caught == groups
    assert "time per step" in capsys.readouterr().out


def test_demo_flags_left_out_take_the_demo_config_defaults(monkeypatch, tmp_path):
    from adaptinf_fast.demo import lifelong

    seen = []
    monkeypatch.setattr(lifelong, "run_demo", seen.append)
    assert cli.main(["demo"]) == 0
    assert cli.main(["demo", "--out", str(tmp_path), "--tasks", "colours", "--k", "3", "--no-progress"]) == 0
    assert seen == [lifelong.DemoConfig(),
                    lifelong.DemoConfig(out=tmp_path, tasks=("colours",), k=3, progress=False)]
