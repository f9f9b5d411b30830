"""Does a pretrained run's lead on the validation rooms carry to the test rooms?

``bench_transfer.py`` keeps each fine-tuning run's validation curve (``runs[].val_curve``:
AP50 every ``--eval-every`` steps on the validation rooms) and picks its checkpoint by the
best of them. Several rounds (BENCHMARKS.md) saw the pretrained runs' best-so-far validation
score lead scratch by 3-7 AP50 mid-run while the test rooms showed no gain. This reads the
finished JSONs and, for every pair (a pretrained run and the scratch run of the same arm,
budget and fine-tuning seed), compares the gap three ways with the test gap:

- **best**: the best validation score of each run (what checkpoint choice maximises, so the
  noisier curve gains most from it);
- **last**: the last evaluation of each run;
- **late mean**: the mean over the second half of each run's evaluations;

beside each run's spread over that second half (standard deviation, AP50 points).

    .venv/bin/python benchmarks/bench_validation_gap.py \\
        bench_out/bench_transfer_normalised_b1_f1000.json bench_out/bench_transfer_d1_b1_f1000.json

Writes ``--out`` (JSON: every pair and the means) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any


def curve_stats(curve: list[list[float]]) -> dict[str, float]:
    """Best, last, and second-half mean and spread of a ``[[step, ap50], ...]`` curve, in
    AP50 points."""
    scores = [100.0 * score for _, score in curve]
    late = scores[len(scores) // 2:]
    return {"best": max(scores), "last": scores[-1], "late_mean": statistics.fmean(late),
            "late_sd": statistics.pstdev(late)}  # fmt: skip


def pairs_of(report: dict[str, Any], source: str) -> list[dict[str, Any]]:
    """Every (pretrained, scratch) pair of one ``bench_transfer.py`` JSON that has both
    validation curves."""
    runs = [r for r in report["runs"] if r.get("val_curve")]
    scratch = {(r["arm"], r["budget"], r["seed"]): r for r in runs if r["init"] == "scratch"}
    pairs = []
    for run in runs:
        partner = scratch.get((run["arm"], run["budget"], run["seed"]))
        if run["init"] == "scratch" or partner is None:
            continue
        mine, theirs = curve_stats(run["val_curve"]), curve_stats(partner["val_curve"])
        pairs.append({
            "source": source, "arm": run["arm"], "budget": run["budget"], "seed": run["seed"],
            "init": run["init"],
            **{f"val_{k}_gap": mine[k] - theirs[k] for k in ("best", "last", "late_mean")},
            "test_gap": 100.0 * (run["ap50"] - partner["ap50"]),
            "late_sd_pretrained": mine["late_sd"], "late_sd_scratch": theirs["late_sd"],
        })  # fmt: skip
    return pairs


COLUMNS = ("val_best_gap", "val_last_gap", "val_late_mean_gap", "test_gap",
           "late_sd_pretrained", "late_sd_scratch")  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reports", nargs="+", type=Path, help="bench_transfer.py JSON files")
    parser.add_argument("--out", type=Path, default=Path("bench_out/bench_validation_gap.json"))
    args = parser.parse_args(argv)

    pairs = [p for path in args.reports for p in pairs_of(json.loads(path.read_text()), str(path))]
    if not pairs:
        raise SystemExit(f"no pair with validation curves in {[str(p) for p in args.reports]}")
    means = {c: statistics.fmean(p[c] for p in pairs) for c in COLUMNS}
    print(f"{'report':38s} {'init':38s} seed   best   last  late mean   test   sd p / s")
    for p in pairs:
        print(f"{Path(p['source']).name[:38]:38s} {p['init'][:38]:38s} {p['seed']:4d} "
              f"{p['val_best_gap']:+6.1f} {p['val_last_gap']:+6.1f} "
              f"{p['val_late_mean_gap']:+10.1f} {p['test_gap']:+6.1f}   "
              f"{p['late_sd_pretrained']:.1f} / {p['late_sd_scratch']:.1f}")  # fmt: skip
    print(f"{'mean over ' + str(len(pairs)) + ' pairs':82s} {means['val_best_gap']:+6.1f} "
          f"{means['val_last_gap']:+6.1f} {means['val_late_mean_gap']:+10.1f} "
          f"{means['test_gap']:+6.1f}   {means['late_sd_pretrained']:.1f} / "
          f"{means['late_sd_scratch']:.1f}")  # fmt: skip
    result = {"reports": [str(p) for p in args.reports], "pairs": pairs, "mean": means}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
