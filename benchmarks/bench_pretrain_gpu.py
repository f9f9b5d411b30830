"""Training throughput on a CUDA GPU: grids/s and peak memory of a pretraining or detection step.

``--task pretrain`` (the default). Target (issue 5): ``swin_s`` at 160^3, batch 4, bf16
autocast, >= 30 grids/s per H100/H200 (the reference: about 3 grids/s per A100 in fp32).
Each timed step is exactly the engine's: ``accumulate_gradients`` (forward with bf16
autocast, masked loss, backward) then ``optimizer_step`` (clip 0.1, AdamW, one-cycle).

``--task detect``: the detection fine-tuning step of :mod:`model.tasks.detect` (without
its rotation/scaling augmentation): :class:`model.networks.detector.Detector` (the
preset's encoder, an FPN and FCOS head ``--fpn-channels`` wide) forward, ``assign_targets``
and ``fcos_losses`` against a few random yawed boxes per grid (voxel coordinates), backward
under the same autocast, then the same ``optimizer_step`` (lr 3e-4, fine-tuning's). Then
inference (:func:`model.detection.inference.detect`: forward, decoding, rotated NMS) is
timed one grid at a time; ``--inference-thresh 0`` (the default) lets every location be a
candidate, so NMS sees its largest input (``pre_nms_top_n`` per level), as a trained
proposal network's many proposals do.

The batch is synthetic and already on the device, so this measures the model and
optimiser, not the loader (see ``bench_loader.py`` for that).

    python benchmarks/bench_pretrain_gpu.py                      # on a CUDA machine
    python benchmarks/bench_pretrain_gpu.py --device cpu --preset tiny --resolution 32 --quick
    python benchmarks/bench_pretrain_gpu.py --task detect        # swin_s, FPN 256, 160^3
    python benchmarks/bench_pretrain_gpu.py --task detect --device cpu --preset tiny \
        --resolution 32 --fpn-channels 64 --quick

Without CUDA (and without ``--device cpu``) it says so, writes ``{"skipped": true}`` and
exits 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import statistics
import sys
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from model import build_mae, get_config  # noqa: E402
from model.detection.inference import detect  # noqa: E402
from model.detection.losses import LOSS_TERMS, fcos_losses  # noqa: E402
from model.detection.targets import (  # noqa: E402
    LevelLayout,
    assign_targets,
    level_layout,
    location_mask,
)
from model.networks.detector import Detector, DetectorConfig  # noqa: E402
from model.tasks.pretrain import accumulate_gradients  # noqa: E402
from model.training.steps import (  # noqa: E402
    accumulate_task_gradients,
    autocast,
    optimizer_step,
    resolve_amp_dtype,
)

logger = logging.getLogger("bench_pretrain_gpu")


def synthetic_batch(batch: int, size: int, device: torch.device, seed: int = 0) -> dict:
    """Padded grids like a real room: a ``(size, 7/8 size, 3/4 size)`` region with an opaque
    shell, zero padding at the high end.

    Returns ``{"rgba": (B, 4, S, S, S), "valid": (B, S, S, S)}`` on ``device``.
    """
    g = torch.Generator().manual_seed(seed)
    extent = (size, size * 7 // 8, size * 3 // 4)
    rgba = torch.zeros(batch, 4, size, size, size)
    valid = torch.zeros(batch, size, size, size, dtype=torch.bool)
    x, y, z = (slice(0, n) for n in extent)
    valid[:, x, y, z] = True
    rgba[:, :3, x, y, z] = torch.rand(batch, 3, *extent, generator=g)
    coords = torch.meshgrid(*[torch.linspace(-1, 1, n) for n in extent], indexing="ij")
    radius = torch.sqrt(sum(c.square() for c in coords))  # (X, Y, Z)
    rgba[:, 3, x, y, z] = (1.0 - (radius - 0.8).abs() * 8).clamp(0, 1)  # a shell of surface
    return {"rgba": rgba.to(device), "valid": valid.to(device)}


def synthetic_boxes(batch: int, size: int, count: int, seed: int = 0) -> list[torch.Tensor]:
    """``count`` random yawed boxes per grid inside ``synthetic_batch``'s real region, in
    voxel coordinates: extents ``size/12 .. size/4`` (heights ``size/16 .. size/5``), so they
    fall on several FPN levels, with the whole box inside the region.

    Returns one ``(count, 7)`` float32 ``(cx, cy, cz, w, l, h, yaw)`` tensor per grid (CPU).
    """
    g = torch.Generator().manual_seed(seed + 1)
    extent = torch.tensor([size, size * 7 // 8, size * 3 // 4], dtype=torch.float32)

    def uniform(n: int, low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, generator=g)

    out = []
    for _ in range(batch):
        w, length = uniform(count, size / 12, size / 4), uniform(count, size / 12, size / 4)
        h = uniform(count, size / 16, size / 5)
        yaw = uniform(count, -math.pi, math.pi)
        half = torch.stack([torch.hypot(w, length) / 2, torch.hypot(w, length) / 2, h / 2], 1)
        centre = half + torch.rand(count, 3, generator=g) * (extent - 2 * half).clamp(min=0)
        out.append(torch.cat([centre, torch.stack([w, length, h, yaw], 1)], 1))
    return out


def configure_backends(device: torch.device) -> None:
    """TF32 matmuls and cuDNN autotuning on CUDA, as the engine sets them."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True


def one_cycle_adamw(model: torch.nn.Module, lr: float, total_steps: int):
    """The trainers' optimiser: AdamW (weight decay 1e-3) under a one-cycle schedule."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-3)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=total_steps)
    return optimizer, scheduler


def pretrain_step(args: argparse.Namespace, batch: dict, device, amp_dtype):
    """The MAE and its engine training step on ``batch``: ``(model, step)``, where
    ``step()`` runs one step and returns its loss."""
    model = build_mae(args.preset, resolution=args.resolution).to(device).train()
    optimizer, scheduler = one_cycle_adamw(model, 1e-4, args.warmup + args.steps)
    mask_generator = torch.Generator(device=device).manual_seed(0)

    def step() -> float:
        terms = accumulate_gradients(model, [batch], mask_generator, device, amp_dtype)
        optimizer_step(model, optimizer, scheduler, clip_grad_norm=0.1)
        return float(terms[0])  # a host sync, so the step is finished

    return model, step


def detector_layout(model: Detector, device: torch.device) -> LevelLayout:
    """The locations of the detector's four FPN levels for its input size."""
    size = model.config.resolution
    shapes = [(size // s,) * 3 for s in model.strides]
    return level_layout(shapes, model.strides, device)


def detect_step(args: argparse.Namespace, batch: dict, device, amp_dtype):
    """The detector and the detection fine-tuning step on ``batch`` (which needs
    ``boxes``): ``(model, step)``, where ``step()`` runs one step and returns its loss."""
    config = get_config(args.preset, resolution=args.resolution)
    model = Detector(config, DetectorConfig(channels=args.fpn_channels)).to(device).train()
    optimizer, scheduler = one_cycle_adamw(model, 3e-4, args.warmup + args.steps)
    layout = detector_layout(model, device)
    c = model.detector

    def losses(model: torch.nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        output = model(batch["rgba"])
        targets = assign_targets(layout, batch["boxes"], batch["valid"], c.size_ranges,
                                 c.center_sampling_radius)  # fmt: skip
        return fcos_losses(output, layout, targets, batch["boxes"], c.focal_alpha,
                           c.focal_gamma, c.reg_loss_weight)  # fmt: skip

    def step() -> float:
        terms = accumulate_task_gradients(model, [batch], losses, LOSS_TERMS, device, amp_dtype)
        optimizer_step(model, optimizer, scheduler, clip_grad_norm=0.1)
        return float(terms[0])  # a host sync, so the step is finished

    return model, step


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device, prefix: str = "") -> dict:
    """``{prefix}peak_memory_allocated_gib`` / ``..._reserved_gib`` since the last reset
    (nothing off CUDA)."""
    if device.type != "cuda":
        return {}
    gib = 2.0**30
    return {
        f"{prefix}peak_memory_allocated_gib": torch.cuda.max_memory_allocated(device) / gib,
        f"{prefix}peak_memory_reserved_gib": torch.cuda.max_memory_reserved(device) / gib,
    }


def time_steps(step, warmup: int, steps: int, device: torch.device) -> tuple[list[float], float]:
    """``warmup`` untimed then ``steps`` timed calls of ``step``; peak memory counts from
    the first timed one. Returns ``(seconds of each timed step, last loss)``."""
    loss = math.nan
    for _ in range(warmup):
        loss = step()
    reset_peak_memory(device)
    seconds = []
    for _ in range(steps):
        tic = time.perf_counter()
        loss = step()
        seconds.append(time.perf_counter() - tic)
    return seconds, loss


def time_inference(model: Detector, batch: dict, args: argparse.Namespace, device,
                   amp_dtype) -> dict:  # fmt: skip
    """``detect`` one grid at a time (forward, decoding, NMS; the boxes brought to the host),
    one untimed pass over the batch then ``args.steps`` timed ones."""
    model.eval()
    layout = detector_layout(model, device)
    config = dataclasses.replace(model.detector, pre_nms_thresh=args.inference_thresh)

    def infer(i: int) -> int:
        rgba, valid = batch["rgba"][i : i + 1], batch["valid"][i]
        with torch.no_grad(), autocast(device, amp_dtype):
            output = model(rgba)
        found = detect(output, layout, location_mask(layout, valid)[None], config)[0]
        return len(found.boxes.cpu())  # a host sync, so the grid is finished

    grids = range(len(batch["rgba"]))
    for i in grids:
        infer(i)
    reset_peak_memory(device)
    seconds, kept = [], []
    for _ in range(args.steps):
        for i in grids:
            tic = time.perf_counter()
            kept.append(infer(i))
            seconds.append(time.perf_counter() - tic)
    median = statistics.median(seconds)
    return {
        "inference_thresh": args.inference_thresh,
        "inference_seconds_per_grid_median": median,
        "inference_seconds_per_grid_all": seconds,
        "inference_grids_per_s": 1.0 / median,
        "detections_per_grid_mean": sum(kept) / len(kept),
        **peak_memory(device, prefix="inference_"),
    }


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    amp_dtype = resolve_amp_dtype(args.amp, device)
    configure_backends(device)
    torch.manual_seed(0)
    batch = synthetic_batch(args.batch_size, args.resolution, device)
    if args.task == "detect":
        boxes = synthetic_boxes(args.batch_size, args.resolution, args.boxes_per_grid)
        batch["boxes"] = [b.to(device) for b in boxes]
        model, step = detect_step(args, batch, device, amp_dtype)
    else:
        model, step = pretrain_step(args, batch, device, amp_dtype)
    params = sum(p.numel() for p in model.parameters())
    seconds, loss = time_steps(step, args.warmup, args.steps, device)
    median = statistics.median(seconds)
    result = {
        "task": args.task,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "preset": args.preset,
        "resolution": args.resolution,
        "batch_size": args.batch_size,
        "amp": str(amp_dtype) if amp_dtype else "fp32",
        "parameters": params,
        "warmup_steps": args.warmup,
        "timed_steps": args.steps,
        "seconds_per_step_median": median,
        "seconds_per_step_all": seconds,
        "grids_per_s": args.batch_size / median,
        "grids_per_s_mean": args.batch_size * len(seconds) / sum(seconds),
        "final_loss": loss,
        "torch": torch.__version__,
        **peak_memory(device),
    }
    if args.task == "detect":
        result["fpn_channels"] = args.fpn_channels
        result["boxes_per_grid"] = args.boxes_per_grid
        result.update(time_inference(model, batch, args, device, amp_dtype))
    return result


def print_table(result: dict) -> None:
    rows = [
        ("task", result["task"]),
        ("device", result["device"]),
        ("preset / resolution", f"{result['preset']} / {result['resolution']}^3"),
        ("batch / precision", f"{result['batch_size']} / {result['amp']}"),
        ("parameters", f"{result['parameters']:,}"),
        ("s/step (median)", f"{result['seconds_per_step_median']:.4f}"),
        ("grids/s (median step)", f"{result['grids_per_s']:.2f}"),
        ("grids/s (mean)", f"{result['grids_per_s_mean']:.2f}"),
    ]
    if result["task"] == "detect":
        rows.insert(4, ("FPN channels / boxes per grid",
                        f"{result['fpn_channels']} / {result['boxes_per_grid']}"))  # fmt: skip
    if "peak_memory_allocated_gib" in result:
        rows.append(("peak allocated GiB", f"{result['peak_memory_allocated_gib']:.2f}"))
        rows.append(("peak reserved GiB", f"{result['peak_memory_reserved_gib']:.2f}"))
    if result["task"] == "detect":
        rows += [
            ("inference s/grid (median)", f"{result['inference_seconds_per_grid_median']:.4f}"),
            ("inference grids/s", f"{result['inference_grids_per_s']:.2f}"),
            ("detections/grid (thresh)",
             f"{result['detections_per_grid_mean']:.1f} ({result['inference_thresh']:g})"),
        ]  # fmt: skip
        if "inference_peak_memory_allocated_gib" in result:
            gib = result["inference_peak_memory_allocated_gib"]
            rows.append(("inference peak allocated GiB", f"{gib:.2f}"))
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=("pretrain", "detect"), default="pretrain",
                        help="the MAE's pretraining step, or the detector's fine-tuning step "
                        "and its inference")  # fmt: skip
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--preset", default="swin_s")
    parser.add_argument("--resolution", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--amp", choices=("auto", "bf16", "off"), default="auto",
                        help="auto: bf16 autocast on CUDA, fp32 on CPU")  # fmt: skip
    parser.add_argument("--fpn-channels", type=int, default=256,
                        help="detect: FPN and head width (the reference's 256)")  # fmt: skip
    parser.add_argument("--boxes-per-grid", type=int, default=6, help="detect: random boxes")
    parser.add_argument("--inference-thresh", type=float, default=0.0,
                        help="detect: pre-NMS objectness threshold of the timed inference "
                        "(0: every location a candidate, the most NMS work; the detector's "
                        "own default is 0.05)")  # fmt: skip
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="1 warm-up and 2 timed steps")
    parser.add_argument("--out", help="JSON result (default: bench_out/bench_pretrain_gpu.json; "
                        "detect: bench_out/bench_pretrain_gpu_detect.json)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.out is None:
        suffix = "_detect" if args.task == "detect" else ""
        args.out = f"bench_out/bench_pretrain_gpu{suffix}.json"
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.quick:
        args.warmup, args.steps = 1, 2
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        reason = "CUDA is not available on this machine"
        logger.warning("%s: skipping (the CPU smoke run: --device cpu --preset tiny "
                       "--resolution 32 --quick)", reason)  # fmt: skip
        out.write_text(json.dumps({"skipped": True, "reason": reason}, indent=2) + "\n")
        return 0
    result = run(args)
    print_table(result)
    out.write_text(json.dumps(result, indent=2) + "\n")
    logger.info("wrote %s", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
