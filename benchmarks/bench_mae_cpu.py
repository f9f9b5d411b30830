"""Forward+backward time of a NeRF-MAE preset on CPU (batch 1, fp32 or bf16), one grid per size.

Each grid is a random RGBA volume of the given (non-cubic) extent, zero-padded at the high end to
the cubic resolution, as the loader does. Prints a table and writes JSON.

    .venv/bin/python benchmarks/bench_mae_cpu.py                 # swin_s at 64^3 and 96^3
    .venv/bin/python benchmarks/bench_mae_cpu.py --quick         # tiny preset, smoke run
    .venv/bin/python benchmarks/bench_mae_cpu.py --profile 64    # torch.profiler table at 64^3
    .venv/bin/python benchmarks/bench_mae_cpu.py --amp bf16      # the engine's amp="bf16" on CPU
    .venv/bin/python benchmarks/bench_mae_cpu.py --unfolded      # also time decoder1 unfolded
    .venv/bin/python benchmarks/bench_mae_cpu.py --group-norm    # also time the old norm kernel
    .venv/bin/python benchmarks/bench_mae_cpu.py --preset tiny --sizes 64 --head token \
        --decorrelation 0.2 --repeats 20    # also time structure_first_decorrelated's penalty
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model import build_mae  # noqa: E402
from model.networks.decoder import upsample_kernel_stride  # noqa: E402
from model.networks.instance_norm import InstanceNorm3dCL  # noqa: E402

# (extent of the real grid, padded cubic side); the two sizes.
SIZES = {64: (64, 56, 48), 96: (96, 84, 72)}
QUICK_SIZES = {32: (32, 28, 24)}


def padded_grid(extent: tuple[int, int, int], side: int, seed: int = 0):
    """``(1, 4, side^3)`` zero-padded RGBA and ``(1, side^3)`` validity."""
    g = torch.Generator().manual_seed(seed)
    rgba = torch.zeros(1, 4, side, side, side)
    valid = torch.zeros(1, side, side, side, dtype=torch.bool)
    x, y, z = extent
    rgba[:, :, :x, :y, :z] = torch.rand(1, 4, x, y, z, generator=g)
    valid[:, :x, :y, :z] = True
    return rgba, valid


def step(model, rgba, valid, seed: int, amp_dtype: torch.dtype | None = None) -> None:
    """One training step's compute, autocast as the engine does it (forward only)."""
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
        out = model(rgba, valid, generator=torch.Generator().manual_seed(seed))
    out.loss.backward()


def timed(run, repeats: int) -> list[float]:
    """Seconds of ``run(i)`` for ``i = 1..repeats``, after a warm-up ``run(0)``."""
    run(0)  # warm-up: allocator, oneDNN primitives, cached masks
    times = []
    for i in range(1, repeats + 1):
        start = time.perf_counter()
        run(i)
        times.append(time.perf_counter() - start)
    return times


def time_size(model, side: int, extent, repeats: int, amp_dtype=None) -> list[float]:
    rgba, valid = padded_grid(extent, side)
    return timed(lambda i: step(model, rgba, valid, i, amp_dtype), repeats)


def swap_forwards(variant: list) -> Callable[[bool], None]:
    """A switch between the modules as built (``True``) and ``variant`` (a list of
    ``(module, forward)`` put in place of those modules' ``forward``)."""

    def switch(built: bool) -> None:
        for module, forward in variant:
            if built:
                module.__dict__.pop("forward", None)
            else:
                module.forward = forward

    return switch


def decorrelation_weight(model, weight: float) -> Callable[[bool], None]:
    """A switch between the model as built and the same model with its decorrelation
    penalty at ``weight`` (``MAEConfig.decorrelation``; read at every forward)."""
    built_weight = model.config.decorrelation

    def switch(built: bool) -> None:
        model.config.decorrelation = built_weight if built else weight

    return switch


def time_alternating(model, side: int, extent, repeats: int, switch, amp_dtype=None):
    """Seconds per step of the model as built and as ``switch(False)`` makes it (see
    :func:`swap_forwards`), alternating step by step so that the VM's drift hits both
    alike."""
    rgba, valid = padded_grid(extent, side)

    def run(i: int, built: bool) -> float:
        switch(built)
        start = time.perf_counter()
        step(model, rgba, valid, i, amp_dtype)
        return time.perf_counter() - start

    run(0, True), run(0, False)  # warm-up both paths
    pairs = [(run(i, True), run(i, False)) for i in range(1, repeats + 1)]
    run(0, True)
    return [a for a, _ in pairs], [b for _, b in pairs]


def unfolded_decoder1(model) -> list:
    """``decoder1``'s upsampling and first conv as two layers (same weights, same numbers up
    to rounding) instead of the fold of ``model.networks.decoder.upsample_then_conv``."""
    up_block = model.decoder.decoder1

    def two_layers(x, skip=None):
        return up_block.block(upsample_kernel_stride(x, up_block.up.weight, up_block.up.bias))

    return [(up_block, two_layers)]


def group_norm_instance_norms(model) -> list:
    """Every instance norm computed by ``F.group_norm`` on channels_last_3d (the kernel used
    before issue 22: as fast, but off by 1e-3-1e-2 against float64 at 128^3-160^3)."""
    return [(m, lambda x, m=m: F.group_norm(x, x.shape[1], eps=m.eps))
            for m in model.modules() if isinstance(m, InstanceNorm3dCL)]  # fmt: skip


def full_res_convs(side: int, repeats: int, amp_dtype=None) -> float:
    """Median fwd+bwd seconds of the decoder's two full-resolution 48->48 3^3 convolutions alone.

    The FLOP floor of the architecture on a CPU: 6 x 2 x 27 x 48^2 x side^3 FLOP (forward,
    input and weight gradients of both), in oneDNN's fastest (channels-last) layout.
    """
    cl = torch.channels_last_3d
    x = torch.randn(1, 48, side, side, side).to(memory_format=cl).requires_grad_()
    convs = [torch.nn.Conv3d(48, 48, 3, padding=1).to(memory_format=cl) for _ in range(2)]

    def run(_: int) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp_dtype is not None):
            y = convs[1](torch.nn.functional.leaky_relu(convs[0](x)))
        y.float().sum().backward()

    return statistics.median(timed(run, repeats))


def profile_size(model, side: int, extent, rows: int) -> str:
    from torch.profiler import ProfilerActivity, profile

    rgba, valid = padded_grid(extent, side)
    step(model, rgba, valid, 0)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step(model, rgba, valid, 1)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--preset", default=None, help="model preset (default swin_s; tiny with --quick)"
    )
    parser.add_argument("--sizes", type=int, nargs="*", default=None, help="padded sides to time")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="tiny preset at 32^3, one repeat")
    parser.add_argument(
        "--unfolded",
        action="store_true",
        help="also time the same model with decoder1's upsampling and first conv unfolded",
    )
    parser.add_argument(
        "--group-norm",
        action="store_true",
        help="also time the same model with its instance norms by F.group_norm (the old kernel)",
    )
    parser.add_argument(
        "--decorrelation",
        type=float,
        default=None,
        metavar="WEIGHT",
        help="also time the same model with the decorrelation penalty at this weight "
        "(MAEConfig.decorrelation, structure_first_decorrelated's is 0.2)",
    )
    parser.add_argument(
        "--head",
        choices=("voxel", "token", "bottleneck"),
        default="voxel",
        help="the MAE's prediction head (MAEConfig.head; bench_transfer pretrains with token)",
    )
    parser.add_argument(
        "--amp",
        choices=("off", "bf16"),
        default="off",
        help="off: fp32 (the issue's measure); bf16: autocast as the engine's amp='bf16'",
    )
    parser.add_argument(
        "--profile",
        type=int,
        default=None,
        metavar="SIDE",
        help="print a torch.profiler table for one step at this side and exit",
    )
    parser.add_argument("--out", type=Path, default=Path("bench_out/bench_mae_cpu.json"))
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    preset = args.preset or ("tiny" if args.quick else "swin_s")
    table = QUICK_SIZES if args.quick else SIZES
    sizes = args.sizes or list(table)
    repeats = 1 if args.quick else args.repeats
    amp_dtype = torch.bfloat16 if args.amp == "bf16" else None

    if args.profile is not None:
        side = args.profile
        model = build_mae(preset, resolution=side).train()
        extent = SIZES.get(side, QUICK_SIZES.get(side, (side,) * 3))
        print(profile_size(model, side, extent, rows=40))
        return 0

    results = []
    print(
        f"{'preset':8s} {'size':>5s} {'extent':>12s} {'median s':>9s} {'min s':>7s} "
        f"{'params':>11s} {'trainable':>11s} {'2 full-res convs s':>18s} {'unfolded s':>10s} "
        f"{'group-norm s':>12s} {'decorrelated s':>14s}"
    )
    for side in sizes:
        extent = table.get(side, (side,) * 3)
        model = build_mae(preset, resolution=side, head=args.head).train()
        total = sum(p.numel() for p in model.parameters())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        load_before = os.getloadavg()
        unfolded = group_norm = decorrelated = None
        if args.unfolded:
            times, unfolded = time_alternating(model, side, extent, repeats,
                                               swap_forwards(unfolded_decoder1(model)),
                                               amp_dtype)  # fmt: skip
        elif args.group_norm:
            old_norms = swap_forwards(group_norm_instance_norms(model))
            times, group_norm = time_alternating(model, side, extent, repeats, old_norms,
                                                 amp_dtype)  # fmt: skip
        elif args.decorrelation is not None:
            penalised = decorrelation_weight(model, args.decorrelation)
            times, decorrelated = time_alternating(model, side, extent, repeats, penalised,
                                                   amp_dtype)  # fmt: skip
        else:
            times = time_size(model, side, extent, repeats, amp_dtype)
        convs_s = full_res_convs(side, repeats, amp_dtype)
        row = {
            "preset": preset,
            "side": side,
            "extent": list(extent),
            "median_s": statistics.median(times),
            "min_s": min(times),
            "times_s": times,
            "params_total": total,
            "params_trainable": trainable,
            "unfolded_decoder1_median_s": statistics.median(unfolded) if unfolded else None,
            "group_norm_median_s": statistics.median(group_norm) if group_norm else None,
            "head": args.head,
            "decorrelation": args.decorrelation,
            "decorrelated_median_s": statistics.median(decorrelated) if decorrelated else None,
            "full_res_convs_median_s": convs_s,
            "full_res_convs_gflop": 6 * 2 * 27 * 48**2 * side**3 / 1e9,
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
        }
        results.append(row)
        print(
            f"{preset:8s} {side:5d} {'x'.join(map(str, extent)):>12s} {row['median_s']:9.3f} "
            f"{row['min_s']:7.3f} {total:11,d} {trainable:11,d} {convs_s:18.3f} "
            f"{row['unfolded_decoder1_median_s'] or float('nan'):10.3f} "
            f"{row['group_norm_median_s'] or float('nan'):12.3f} "
            f"{row['decorrelated_median_s'] or float('nan'):14.3f}"
        )
        del model

    report = {
        "benchmark": "mae_forward_backward_cpu",
        "batch": 1,
        "dtype": "float32" if amp_dtype is None else "bf16 autocast",
        "threads": args.threads,
        "repeats": repeats,
        "warmup": 1,
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "results": results,
    }
    if args.amp == "bf16" and args.out == parser.get_default("out"):
        args.out = args.out.with_name("bench_mae_cpu_bf16.json")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
