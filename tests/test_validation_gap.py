"""benchmarks/bench_validation_gap.py: the validation gap read three ways, by hand."""

from __future__ import annotations

import json

import pytest
from benchmark_scripts import load_benchmark


def _run(init, seed, curve, ap50):
    return {"arm": "independent", "budget": 1, "seed": seed, "init": init, "ap50": ap50,
            "val_curve": [[50 * (i + 1), v] for i, v in enumerate(curve)]}  # fmt: skip


def test_best_last_and_late_mean_gaps_by_hand(tmp_path, capsys):
    bench = load_benchmark("bench_validation_gap")
    report = {"runs": [
        _run("scratch", 0, [0.10, 0.20, 0.20, 0.20], 0.30),
        # noisy: the best (0.40) is a spike the last evaluation does not keep
        _run("mae_p0", 0, [0.10, 0.20, 0.40, 0.10], 0.25),
        _run("mae_p0", 1, [0.10, 0.10, 0.10, 0.10], 0.20),  # no scratch partner: skipped
    ]}  # fmt: skip
    path = tmp_path / "transfer.json"
    path.write_text(json.dumps(report))
    result = bench.main([str(path), "--out", str(tmp_path / "gap.json")])
    [pair] = result["pairs"]
    assert pair["val_best_gap"] == pytest.approx(20.0)
    assert pair["val_last_gap"] == pytest.approx(-10.0)
    # second half: (0.40, 0.10) against (0.20, 0.20)
    assert pair["val_late_mean_gap"] == pytest.approx(5.0)
    assert pair["test_gap"] == pytest.approx(-5.0)
    assert pair["late_sd_pretrained"] == pytest.approx(15.0)
    assert pair["late_sd_scratch"] == pytest.approx(0.0)
    written = json.loads((tmp_path / "gap.json").read_text())
    assert written["mean"]["test_gap"] == pytest.approx(-5.0)
    assert "mean over 1 pairs" in capsys.readouterr().out
