"""Rotated NMS on a trained detector's own candidates: the greedy pass that computes only the
IoUs it reads (``model.detection.geometry.rotated_nms``) against the full-matrix pass it
replaced, which built every near pair's IoU before reading one row per kept box.

A detection run validates every ``eval_every`` steps and is scored once on the test rooms;
each room's candidates (~500 from a trained detector, 1400-2500 early in training) go
through NMS, which took 32 s of a 38 s validation pass over 8 rooms in the profile of an
early 1-room run. The checkpoint is evaluated on ``--rooms`` rooms of ``--store`` with the
candidates each room's NMS receives recorded; both passes then run on the same candidates
(best of ``--repeats``) and must keep the same boxes.

    .venv/bin/python benchmarks/bench_nms.py \\
        --checkpoint bench_out/t23b/detect_independent_d0_b1_s0_scratch_f500/checkpoints/best.pt \\
        --store bench_out/t23b/rooms_independent_d0_64.zarr --rooms 6

Prints a table per room and writes ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import model.detection.inference as detection_inference  # noqa: E402
from grid_store import GridStore  # noqa: E402
from model.detection.geometry import pairwise_rotated_iou, rotated_nms  # noqa: E402
from model.tasks.evaluation import evaluate_checkpoint  # noqa: E402


def full_matrix_nms(boxes: torch.Tensor, scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """The pass ``rotated_nms`` replaced: the whole near-pair IoU matrix first, then each box
    in score order drops the later ones it overlaps above ``threshold``."""
    order = torch.sort(scores, descending=True, stable=True).indices
    iou = pairwise_rotated_iou(boxes[order], boxes[order]).numpy()
    dropped, keep = np.zeros(len(order), dtype=bool), []
    for i in range(len(order)):
        if not dropped[i]:
            keep.append(i)
            dropped |= iou[i] > threshold
    return order[torch.as_tensor(keep, dtype=torch.long)]


def recorded_candidates(checkpoint: str, store: str, scenes: list[str]) -> list[tuple]:
    """``(boxes, scores, threshold)`` of every NMS call while ``checkpoint`` detects in
    ``scenes`` (one per room)."""
    calls = []
    original = detection_inference.rotated_nms

    def recording(boxes, scores, threshold):
        calls.append((boxes.clone(), scores.clone(), threshold))
        return original(boxes, scores, threshold)

    detection_inference.rotated_nms = recording
    try:
        evaluate_checkpoint(checkpoint, scenes, store_url=store)
    finally:
        detection_inference.rotated_nms = original
    return calls


def best_time(fn, repeats: int) -> tuple[float, torch.Tensor]:
    times, result = [], None
    for _ in range(repeats):
        tic = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - tic)
    return min(times), result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="a detection run's checkpoint")
    p.add_argument("--store", required=True, help="grid store holding the rooms")
    p.add_argument("--rooms", type=int, default=6, help="the store's last N rooms")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("bench_out/bench_nms.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    scenes = GridStore(args.store, mode="r").list_scenes()[-args.rooms :]
    rows = []
    print(f"{'room':<12} {'candidates':>10} {'kept':>5} {'matrix s':>9} {'greedy s':>9} "
          f"{'speed-up':>8} same")  # fmt: skip
    for scene, (boxes, scores, threshold) in zip(
        scenes, recorded_candidates(args.checkpoint, args.store, scenes), strict=True
    ):
        matrix_s, reference = best_time(
            lambda b=boxes, s=scores, t=threshold: full_matrix_nms(b, s, t), args.repeats)
        greedy_s, kept = best_time(
            lambda b=boxes, s=scores, t=threshold: rotated_nms(b, s, t), args.repeats)
        rows.append({"scene": scene, "candidates": len(boxes), "kept": len(kept),
                     "matrix_s": matrix_s, "greedy_s": greedy_s,
                     "same": torch.equal(kept, reference)})  # fmt: skip
        r = rows[-1]
        print(f"{scene:<12} {r['candidates']:>10} {r['kept']:>5} {matrix_s:>9.3f} "
              f"{greedy_s:>9.3f} {matrix_s / greedy_s:>7.1f}x {r['same']}")  # fmt: skip
    total = {k: sum(r[k] for r in rows) for k in ("matrix_s", "greedy_s")}
    print(f"total: matrix {total['matrix_s']:.2f} s, greedy {total['greedy_s']:.2f} s, "
          f"{total['matrix_s'] / total['greedy_s']:.1f}x; median per room "
          f"{statistics.median(r['matrix_s'] / r['greedy_s'] for r in rows):.1f}x; "
          f"same boxes kept in {sum(r['same'] for r in rows)} of {len(rows)} rooms")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "setup": {**{k: str(v) for k, v in vars(args).items()},
                  "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
                  "torch": torch.__version__},
        "rooms": rows, "total": total}, indent=2) + "\n")  # fmt: skip
    return 0 if all(r["same"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
