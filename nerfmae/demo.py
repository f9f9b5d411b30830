"""``make demo``: the main job end to end on the CPU, small enough for a laptop.

Runs the Prefect flow ``nerfmae-pipeline`` (:mod:`flows.end_to_end`) on a few small
synthetic scenes: generate scenes -> train a NeRF per scene (a short time budget each)
-> extract grids (with the rooms' semantic labels) -> a local Zarr store -> a short
``tiny`` MAE pretraining -> semantic voxel labelling and oriented-box detection, each
fine-tuned from its checkpoint -> the boxes of one held-out room (``boxes.json`` and a
picture), then prints a summary table. Rerunning it reuses what is already there (scenes,
store entries).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

QUIET_RUN = {
    "num_workers": 0,
    "device": "cpu",
    "val_fraction": 0.25,
    "log_every": 5,
    "eval_every": 1000,
    "checkpoint_every": 1000,
}
"""Options of the demo's pretraining and fine-tuning: the CPU, few logs, one validation."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", type=Path, default=Path("data/demo"))
    parser.add_argument("--store", default="data/grids.zarr")
    parser.add_argument("--scenes", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=48)
    parser.add_argument("--views", type=int, default=30)
    parser.add_argument(
        "--nerf-seconds", type=float, default=30.0, help="NeRF time budget per scene"
    )
    parser.add_argument(
        "--resolution", type=int, default=48, help="grid samples on the longest side"
    )
    parser.add_argument("--epochs", type=int, default=150, help="MAE pretraining epochs")
    parser.add_argument(
        "--finetune-epochs", type=int, default=60, help="semantic fine-tuning epochs"
    )
    parser.add_argument("--detect-epochs", type=int, default=80, help="detection epochs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per Prefect API call
    # No telemetry from a demo (Prefect reads this when imported, which happens below).
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

    from flows.build_dataset import NoSceneStored
    from flows.end_to_end import nerfmae_pipeline
    from flows.local_server import patient_server_start

    t0 = time.perf_counter()
    try:
        with patient_server_start():
            summary = run_pipeline(nerfmae_pipeline, args)
        detector = next((t for t in summary["finetune"] if t["task"] == "detect"), None)
        summary["boxes"] = detector and detect_held_out_room(detector, args.store)
    except NoSceneStored as exc:
        summary = {"scenes": exc.reports, "pretrain": None, "finetune": [],
                   "store": args.store, "work_dir": str(args.work_dir)}  # fmt: skip
        print_summary(summary, time.perf_counter() - t0)
        print(f"\nNeRF-MAE demo: {exc}", file=sys.stderr)
        return 1
    print_summary(summary, time.perf_counter() - t0)
    return 1 if any(r["status"] == "failed" for r in summary["scenes"]) else 0


def run_pipeline(nerfmae_pipeline, args: argparse.Namespace) -> dict[str, Any]:
    """The ``nerfmae-pipeline`` flow with the demo's small settings."""
    return nerfmae_pipeline(
        store=args.store,
        work_dir=str(args.work_dir),
        synthetic_scenes=args.scenes,
        synthetic_views=args.views,
        synthetic_image_size=args.image_size,
        # Fewer samples per ray and per batch than the CPU defaults: more steps in a short
        # budget, and a held-out evaluation that takes seconds, not a minute. A coarse hash
        # grid suits a few small images of a room (see TrainerConfig.finest_resolution).
        nerf={
            "finest_resolution": 64,
            "time_budget_s": args.nerf_seconds,
            "max_steps": None,
            "device": "cpu",
            "target_samples": 1 << 14,
            "samples_per_diagonal": 128,
        },
        resolution=args.resolution,
        max_parallel=1,  # two cores: one NeRF at a time trains fastest
        pretraining={
            "preset": "tiny",
            "epochs": args.epochs,
            "batch_size": 2,
            "resolution": 32,
            "options": QUIET_RUN,
        },
        finetuning=[
            {
                "task": "semantics",
                "preset": "tiny",
                "epochs": args.finetune_epochs,
                "batch_size": 2,
                "resolution": 32,
                "options": {
                    **QUIET_RUN,
                    "augment": True,  # two labelled rooms: rotations and flips are free data
                },
            },
            {
                "task": "detect",
                "preset": "tiny",
                "epochs": args.detect_epochs,
                "batch_size": 2,
                "resolution": 32,
                "fpn_channels": 32,
                # box labels are indices into the rooms' 11 semantic classes
                "options": {**QUIET_RUN, "augment": True, "num_classes": 11},
            },
        ],
    )


def detect_held_out_room(tuned: dict[str, Any], store: str) -> dict[str, Any] | None:
    """``nerfmae detect`` on the detection run's first validation room, with its best
    checkpoint: ``boxes.json`` and a picture in the run folder."""
    from model.inference.detection import detect_scenes, draw_scene, load_detector
    from pipeline.export_3d import write_boxes_json

    checkpoint = tuned.get("best_checkpoint") or tuned.get("checkpoint")
    detector = load_detector(checkpoint)
    if not detector.val_scenes:
        return None
    scene = detector.val_scenes[0]
    found = next(detect_scenes(detector, store, [scene]))
    run = Path(tuned["run_dir"])
    boxes_json = write_boxes_json(run / "demo_boxes.json", scene, found.world_boxes,
                                  found.scores, found.labels, detector.class_names)  # fmt: skip
    names = detector.class_names or []
    top = [f"{names[k] if names else 'box'} {s:.2f}"
           for k, s in zip(found.labels[:5], found.scores[:5], strict=True)]  # fmt: skip
    return {
        "scene": scene, "checkpoint": checkpoint, "boxes_json": str(boxes_json),
        "picture": str(draw_scene(run / "demo_boxes.png", found, detector)),
        "detections": len(found.boxes), "top": top,
        "stored": 0 if found.gt_boxes is None else len(found.gt_boxes),
    }  # fmt: skip


def print_summary(summary: dict[str, Any], seconds: float) -> None:
    """The table a person reads at the end of ``make demo``."""
    print(f"\nNeRF-MAE demo: done in {seconds:.0f} s")
    print(
        f"\n{'scene':<12} {'status':<9} {'NeRF PSNR':>9} {'seconds':>8} {'grid':>12} {'MB':>6}"
        f" {'IoU':>6} {'haze':>6}"
    )
    for r in summary["scenes"]:
        shape = "x".join(map(str, r["grid_shape"])) if r["grid_shape"] else "-"
        psnr = f"{r['psnr']:.2f}" if r["psnr"] is not None else "-"
        secs = f"{r['seconds']:.0f}" if r["seconds"] is not None else "-"
        mb = f"{r['grid_mb']:.2f}" if r["grid_mb"] is not None else "-"
        scores = _fidelity(summary, r)
        iou = f"{scores['iou']:.2f}" if scores else "-"
        haze = f"{100 * scores['haze']:.0f}%" if scores else "-"
        print(
            f"{r['scene_id']:<12} {r['status']:<9} {psnr:>9} {secs:>8} {shape:>12} {mb:>6}"
            f" {iou:>6} {haze:>6}"
        )
        if r["reason"]:
            print(f"    {r['reason']}")
    print(
        "  IoU, haze: the stored grid against the room's exact ground truth (occupancy IoU at "
        "alpha > 0.5;\n  haze: share of the room's empty voxels the grid fills), see "
        "benchmarks/bench_grid_fidelity.py"
    )
    mae = summary.get("pretrain")
    if mae:
        print(
            f"\nMAE pretraining ({mae['preset']}, {mae['steps']} steps, {mae['seconds']:.0f} s): "
            f"train loss {_num(mae['train_loss'])}, val loss {_num(mae['val_loss'])}, "
            f"val PSNR {_num(mae['val_psnr'])} dB"
        )
        note = (
            "val PSNR: the colour of the held-out grid's occupied voxels (alpha > 0.01) as the "
            f"MAE reconstructs it. {mae['steps']} steps of the tiny preset on "
            f"{mae['train_scenes']} training grid(s) show that the chain runs end to end, not "
            "what pretraining learns (the paper trains swin_s for 2000 epochs on thousands "
            "of scenes)."
        )
        print(textwrap.fill(note, width=92, initial_indent="  ", subsequent_indent="  "))
    tuned = next((t for t in summary["finetune"] if t["task"] == "semantics"), None)
    detector = next((t for t in summary["finetune"] if t["task"] == "detect"), None)
    boxes = summary.get("boxes")
    if tuned:
        print(
            f"\nSemantic fine-tuning ({tuned['preset']}, {tuned['steps']} steps from the MAE "
            f"checkpoint, {tuned['seconds']:.0f} s): val mIoU {_pct(tuned['val_miou'])}, mAcc "
            f"{_pct(tuned['val_macc'])}, allAcc {_pct(tuned['val_allacc'])}"
        )
        note = (
            f"on {tuned['val_scenes']} held-out room(s), over the classes present "
            f"({', '.join(tuned.get('val_classes_present') or []) or 'none'}); "
            f"{tuned['labelled_scenes']} labelled training room(s). What pretraining is worth "
            "at a larger scale: benchmarks/bench_transfer.py and BENCHMARKS.md."
        )
        print(textwrap.fill(note, width=92, initial_indent="  ", subsequent_indent="  "))
    if detector:
        print(
            f"\nBox detection ({detector['preset']}, {detector['steps']} steps from the MAE "
            f"checkpoint, {detector['seconds']:.0f} s): val AP25 {_pct(detector['val_ap25'])}, "
            f"AP50 {_pct(detector['val_ap50'])} over {detector['val_num_gt']} stored boxes "
            f"(best checkpoint: step {detector.get('best_step')}, AP50 "
            f"{_pct(detector.get('best_val_ap50'))})"
        )
    if boxes:
        print(
            f"  nerfmae detect on held-out room {boxes['scene']}: {boxes['detections']} boxes "
            f"({boxes['stored']} stored); best: {', '.join(boxes['top']) or 'none'}"
        )
        note = (
            "Three rooms and a short run show the chain end to end, not what the detector "
            "can learn: benchmarks/bench_transfer.py and BENCHMARKS.md measure that."
        )
        print(textwrap.fill(note, width=92, initial_indent="  ", subsequent_indent="  "))
    work = Path(summary["work_dir"])
    print("\nOutputs:")
    print(f"  scenes            {work / 'scenes'}")
    print(f"  NeRF runs         {work / 'nerf_runs'}  (renders/, metrics.json per scene)")
    print(f"  grid store        {summary['store']}  (nerfmae store ls {summary['store']})")
    if mae:
        print(f"  MAE run           {mae['run_dir']}  (TensorBoard: {mae['tensorboard_dir']})")
        print(f"  reconstructions   {mae['recon_png'] or 'none'}")
    if tuned:
        print(f"  fine-tuning run   {tuned['run_dir']}  (metrics.json, per-class IoU)")
        print(f"  label slices      {tuned['labels_png'] or 'none'}")
    if detector:
        print(f"  detection run     {detector['run_dir']}  (metrics.json, per-class AP)")
    if boxes:
        print(f"  boxes             {boxes['boxes_json']}  (world units, classes)")
        print(f"  box picture       {boxes['picture']}")
        print(f"  3D view           nerfmae export-3d --store {summary['store']} --scene-id "
              f"{boxes['scene']} --out {Path(detector['run_dir']) / 'ply'} --boxes "
              f"{boxes['boxes_json']}")


def _fidelity(summary: dict[str, Any], report: dict[str, Any]) -> dict[str, Any] | None:
    """Grid fidelity of a stored synthetic scene against its ground truth (None otherwise)."""
    truth_path = Path(summary["work_dir"]) / "scenes" / report["scene_id"] / "ground_truth"
    if report["status"] not in ("written", "cached") or not (truth_path / "grid.npz").is_file():
        return None
    from grid_store import GridStore, RadianceGrid
    from pipeline.fidelity import grid_fidelity

    grid = GridStore(summary["store"], mode="r").read_grid(report["scene_id"])
    return grid_fidelity(grid, RadianceGrid.load_npz(truth_path / "grid.npz"))


def _pct(value: Any) -> str:
    return f"{100 * value:.1f} %" if isinstance(value, (int, float)) else "-"


def _num(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) else "-"


if __name__ == "__main__":
    sys.exit(main())
