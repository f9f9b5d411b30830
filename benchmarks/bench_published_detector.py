"""CPU inference time of NeRF-MAE's published Front3D detector per 160^3 grid.

The detector of ``front3d_obb_finetuned.pt`` (Swin-S encoder at 160^3, FPN of 256 channels,
FCOS towers of 4 convs, one objectness class, 8-channel OBB regression) with random weights
of its published shapes: the network is built, written in the published layout (``nerfmae
checkpoint export``), read back with ``model.load_model`` as a user's download would be, and
run on a room-like grid (a 160x140x120 region zero-padded to 160^3): the network's forward,
then decoding and rotated NMS (``pre_nms_thresh`` 0, the reference's evaluation setting:
every location of the real region is a candidate). Prints a table and writes JSON.

    .venv/bin/python benchmarks/bench_published_detector.py [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model import get_config, load_model  # noqa: E402
from model.checkpoints.export import export_reference  # noqa: E402
from model.detection.inference import detect  # noqa: E402
from model.detection.targets import level_layout, location_mask  # noqa: E402
from model.networks.detector import Detector, DetectorConfig  # noqa: E402
from model.training.checkpointing import (  # noqa: E402
    DataPosition,
    make_checkpoint,
    save_checkpoint,
)

EXTENT = (160, 140, 120)


def published_detector_file(root: Path) -> Path:
    """A detector of the published shapes (random weights) in the published layout."""
    config = get_config("swin_s")
    detector = Detector(config, DetectorConfig(channels=256, num_convs=4, pre_nms_thresh=0.0))
    optimizer = torch.optim.AdamW(detector.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    model_config = {**dataclasses.asdict(config), "network": "detect",
                    "detector": dataclasses.asdict(detector.detector)}  # fmt: skip
    checkpoint = make_checkpoint(detector, optimizer, scheduler, DataPosition(0, 0, 0), [], {},
                                 model_config, task="detect")  # fmt: skip
    ours = save_checkpoint(checkpoint, root / "ours")
    return export_reference(ours, root / "front3d_obb_finetuned.pt")[0]


@torch.no_grad()
def infer(model: Detector, rgba: torch.Tensor, valid: torch.Tensor) -> tuple[float, float, int]:
    """``(forward seconds, decode + NMS seconds, detections)`` of one grid."""
    start = time.perf_counter()
    output = model(rgba)
    forward = time.perf_counter() - start
    layout = level_layout([tuple(m.shape[-3:]) for m in output.logits], model.strides)
    found = detect(output, layout, location_mask(layout, valid[0])[None], model.detector)[0]
    return forward, time.perf_counter() - start - forward, len(found.boxes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench_out/bench_published_detector.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = published_detector_file(Path(tmp))
        size_mb = path.stat().st_size / 2**20
        load_start = time.perf_counter()
        model = load_model(path)
        load_s = time.perf_counter() - load_start
    rgba = torch.zeros(1, 4, 160, 160, 160)
    valid = torch.zeros(1, 160, 160, 160, dtype=torch.bool)
    x, y, z = EXTENT
    rgba[:, :, :x, :y, :z] = torch.rand(1, 4, x, y, z)
    valid[:, :x, :y, :z] = True
    infer(model, rgba, valid)  # warm-up: oneDNN primitives, cached attention masks
    runs = [infer(model, rgba, valid) for _ in range(args.repeats)]
    totals = [f + d for f, d, _ in runs]
    row = {
        "file_mb": size_mb, "load_s": load_s,
        "forward_s": statistics.median(f for f, _, _ in runs),
        "decode_nms_s": statistics.median(d for _, d, _ in runs),
        "total_s_per_grid": statistics.median(totals), "detections": runs[-1][2],
        "parameters": sum(p.numel() for p in model.parameters()),
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "threads": args.threads, "repeats": args.repeats, "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
    }  # fmt: skip
    print(f"{'file MB':>8} {'load s':>7} {'forward s':>9} {'decode+NMS s':>12} "
          f"{'total s/grid':>12} {'detections':>10} {'params':>11} "
          f"{'peak RSS GiB':>12}")  # fmt: skip
    print(f"{row['file_mb']:8.0f} {row['load_s']:7.2f} {row['forward_s']:9.2f} "
          f"{row['decode_nms_s']:12.2f} {row['total_s_per_grid']:12.2f} {row['detections']:10d} "
          f"{row['parameters']:11,d} {row['peak_rss_gib']:12.2f}")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(row, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
