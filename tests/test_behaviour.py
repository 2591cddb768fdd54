"""Behaviour kept across refactors: every registered method, on fixed seeds, draws the samples
the 0.1.0 release drew (bit for bit where the arithmetic order is unchanged, else within 1e-6
relative; 1e-3 for float32 cases, whose rounding differs between CPUs).  The reference set was
written by ``benchmarks/behaviour_snapshot.py write`` on the release's code; see that script for
the cases."""

import importlib.util
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("behaviour_snapshot", ROOT / "benchmarks" / "behaviour_snapshot.py")
snap = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(snap)
REF = torch.load(ROOT / "tests" / "data" / "behaviour_0.1.0.pt", weights_only=True)
CASES = snap.cases()
CHANGED = snap.CHANGED


@pytest.mark.parametrize("name", sorted(set(REF) - CHANGED))
def test_samples_equal_the_release(name):
    a, b = CASES[name](), REF[name]
    assert a.shape == b.shape
    rel = float((a - b).abs().max() / b.abs().max())
    assert rel <= snap.tolerance(name), f"{name}: max relative difference {rel:.3g} from the 0.1.0 samples"
