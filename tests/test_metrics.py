"""Continual-learning metrics (DESIGN §4.8) on hand-made matrices."""

from __future__ import annotations

import json

import numpy as np
import pytest

from adaptinf_fast.lifelong.metrics import cl_metrics, plot_matrix, relative_gain, save_matrix

A = [[0.1, 0.2, 0.3],  # before any stage
     [0.8, 0.25, 0.35],  # after stage 1 (task 1)
     [0.6, 0.9, 0.4],
     [0.5, 0.7, 0.95]]


def test_hand_computed():
    m = cl_metrics(A)
    assert m["MFT"] == pytest.approx((0.8 + 0.9 + 0.95) / 3)
    assert m["MFN"] == pytest.approx((0.5 + 0.7 + 0.95) / 3)
    assert m["MAA"] == pytest.approx((0.8 + 0.75 + (0.5 + 0.7 + 0.95) / 3) / 3)
    assert m["BWT"] == pytest.approx(-0.25)  # (0.5 - 0.8 + 0.7 - 0.9) / 2
    assert m["forgetting"] == pytest.approx(0.25)  # (0.8 - 0.5 + 0.9 - 0.7) / 2
    assert m["FWT"] == pytest.approx(0.075)  # (0.25 - 0.2 + 0.4 - 0.3) / 2


def test_no_forgetting_and_single_task():
    perfect = np.array([[0, 0], [1, 0], [1, 1]], dtype=float)
    m = cl_metrics(perfect)
    assert m["BWT"] == 0 and m["forgetting"] == 0 and m["MFN"] == 1
    one = cl_metrics([[0.2], [0.7]])
    assert one == {"MFT": 0.7, "MFN": 0.7, "MAA": 0.7}


def test_relative_gain_and_files(tmp_path):
    base = np.array(A) / 2
    assert relative_gain(A, base) == pytest.approx(200.0)
    assert relative_gain(A, A) == pytest.approx(100.0)
    doc = save_matrix(tmp_path / "m.json", A, ["digits", "colours", "count"], {"random": base})
    assert json.loads((tmp_path / "m.json").read_text()) == doc and doc["relative_gain"]["random"] == pytest.approx(200)
    assert plot_matrix(tmp_path / "m.png", A, ["digits", "colours", "count"]).stat().st_size > 1000


def test_bad_matrices():
    with pytest.raises(ValueError, match="expected \\(T \\+ 1, T\\)"):
        cl_metrics([[0.1, 0.2], [0.3, 0.4]])
    with pytest.raises(ValueError, match="NaN"):
        cl_metrics([[0.1], [float("nan")]])
    with pytest.raises(ValueError, match="undefined"):
        relative_gain(A, np.zeros((4, 3)))
