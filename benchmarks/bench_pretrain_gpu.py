"""Pretraining throughput on a CUDA GPU: grids/s and peak memory of the engine's training step.

Target (issue 5): ``swin_s`` at 160^3, batch 4, bf16 autocast, >= 30 grids/s per H100/H200
(the reference: about 3 grids/s per A100 in fp32). Each timed step is exactly the
engine's: ``accumulate_gradients`` (forward with bf16 autocast, masked loss, backward)
then ``optimizer_step`` (clip 0.1, AdamW, one-cycle). The batch is synthetic and already
on the GPU, so this measures the model and optimiser, not the loader (see
``bench_loader.py`` for that).

    python benchmarks/bench_pretrain_gpu.py                      # on a CUDA machine
    python benchmarks/bench_pretrain_gpu.py --device cpu --preset tiny --resolution 32 --quick

Without CUDA (and without ``--device cpu``) it says so, writes ``{"skipped": true}`` and
exits 0.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from model import build_mae  # noqa: E402
from model.engine import accumulate_gradients, optimizer_step, resolve_amp_dtype  # noqa: E402

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


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    amp_dtype = resolve_amp_dtype(args.amp, device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True  # as the engine does
    torch.manual_seed(0)
    model = build_mae(args.preset, resolution=args.resolution).to(device).train()
    params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-3)
    total = args.warmup + args.steps
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-4, total_steps=total)
    mask_generator = torch.Generator(device=device).manual_seed(0)
    batch = synthetic_batch(args.batch_size, args.resolution, device)

    def step() -> float:
        terms = accumulate_gradients(model, [batch], mask_generator, device, amp_dtype)
        optimizer_step(model, optimizer, scheduler, clip_grad_norm=0.1)
        return float(terms[0])  # a host sync, so the step is finished

    for _ in range(args.warmup):
        loss = step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    seconds = []
    for _ in range(args.steps):
        tic = time.perf_counter()
        loss = step()
        seconds.append(time.perf_counter() - tic)
    median = statistics.median(seconds)
    result = {
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
    }
    if device.type == "cuda":
        gib = 2.0**30
        result["peak_memory_allocated_gib"] = torch.cuda.max_memory_allocated(device) / gib
        result["peak_memory_reserved_gib"] = torch.cuda.max_memory_reserved(device) / gib
    return result


def print_table(result: dict) -> None:
    rows = [
        ("device", result["device"]),
        ("preset / resolution", f"{result['preset']} / {result['resolution']}^3"),
        ("batch / precision", f"{result['batch_size']} / {result['amp']}"),
        ("parameters", f"{result['parameters']:,}"),
        ("s/step (median)", f"{result['seconds_per_step_median']:.4f}"),
        ("grids/s (median step)", f"{result['grids_per_s']:.2f}"),
        ("grids/s (mean)", f"{result['grids_per_s_mean']:.2f}"),
    ]
    if "peak_memory_allocated_gib" in result:
        rows.append(("peak allocated GiB", f"{result['peak_memory_allocated_gib']:.2f}"))
        rows.append(("peak reserved GiB", f"{result['peak_memory_reserved_gib']:.2f}"))
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--preset", default="swin_s")
    parser.add_argument("--resolution", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--amp", choices=("auto", "bf16", "off"), default="auto",
                        help="auto: bf16 autocast on CUDA, fp32 on CPU")  # fmt: skip
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="1 warm-up and 2 timed steps")
    parser.add_argument("--out", default="bench_out/bench_pretrain_gpu.json")
    args = parser.parse_args(argv)
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
