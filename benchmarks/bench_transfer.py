"""What pretraining is worth: NeRF-MAE's label-efficiency experiment at this machine's scale.

Synthetic rooms, split by seed into three disjoint sets: a pretraining set (no labels
used), a labelled pool the fine-tuning runs draw their rooms from, and a test set. Grids
are the rooms' exact ground truth at ``--resolution`` after the empty-space rule extracted
grids follow (``RadianceGrid.with_empty_space(0.01)``), or any labelled store
(``--store``, its scenes split by hash). One ``tiny`` MAE is pretrained for a fixed
budget; then for every labelled budget (rooms) and seed, semantic labelling is fine-tuned
from that checkpoint and from scratch with identical networks, schedules and steps, and
scored on the test rooms (mIoU, mAcc, allAcc over the classes present). With
``--superres`` the same comparison is made for x2 super-resolution at the smallest budget
(inputs at half the resolution, the pretrained encoder's positional table re-sized). With
``--task detect`` the downstream task is oriented-box detection (NeRF-RPN's FCOS head on the
encoder alone; only ``encoder.*`` is loaded), scored by AP25/AP50 on the test rooms.

    .venv/bin/python benchmarks/bench_transfer.py                     # the BENCHMARKS.md table
    .venv/bin/python benchmarks/bench_transfer.py --budgets 4 --seeds 0 --finetune-steps 20
    .venv/bin/python benchmarks/bench_transfer.py --task detect \
        --out bench_out/bench_transfer_detect.json

Writes ``bench_out/bench_transfer.json`` (every run's summary) and, with ``--plot``, a PNG
of score against labelled rooms with both curves.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from grid_store import GridStore  # noqa: E402
from model.tasks import finetune, make_config  # noqa: E402
from model.tasks.pretrain import PretrainConfig, pretrain  # noqa: E402
from model.training.config import rank_by_hash  # noqa: E402

PRETRAIN_SEED0, POOL_SEED0, TEST_SEED0 = 10_000, 0, 5_000
METRICS = {
    "semantics": [("miou", "mIoU"), ("macc", "mAcc"), ("allacc", "allAcc")],
    "detect": [("ap25", "AP25"), ("ap50", "AP50"), ("recall50@300", "R50@300")],
}
"""Per task, the test-set scores reported (the first two are plotted; the headline is
the first for semantics, AP50 for detection)."""
HEADLINE = {"semantics": "miou", "detect": "ap50"}


def room_ids(first_seed: int, n: int) -> list[str]:
    return [f"room{first_seed + i:05d}" for i in range(n)]


def write_ground_truth(url: str, scene_ids: list[str], resolution: int) -> None:
    """Ground-truth grids of the rooms ``scene_ids`` (named by their seed), once."""
    from pipeline.synthetic.ground_truth import sample_ground_truth
    from pipeline.synthetic.room import make_room

    store = GridStore(url)
    have = set(store.list_scenes())
    for scene in scene_ids:
        if scene not in have:
            grid = sample_ground_truth(make_room(int(scene[4:])), resolution)
            store.write_grid(scene, grid.with_empty_space(0.01))


def split_store(url: str, n_pretrain: int, n_pool: int, n_test: int) -> dict[str, list[str]]:
    """A user's labelled store cut into the three sets by a fixed hash order."""
    ranked = rank_by_hash(GridStore(url, mode="r").list_scenes(), 7)
    if len(ranked) < n_pretrain + n_pool + n_test:
        raise ValueError(f"{url}: {len(ranked)} scenes, {n_pretrain + n_pool + n_test} needed")
    return {
        "pretrain": sorted(ranked[:n_pretrain]),
        "pool": ranked[n_pretrain : n_pretrain + n_pool],  # hash order: budgets nest
        "test": sorted(ranked[n_pretrain + n_pool : n_pretrain + n_pool + n_test]),
    }


def run_pretraining(args, store: str, scenes: list[str], out: Path) -> dict[str, Any]:
    done = out / "metrics.json"
    if done.is_file() and not args.fresh:
        return json.loads(done.read_text())
    held_out = scenes[:2]  # MAE validation: reconstruction of two unseen pretraining rooms
    steps_per_epoch = (len(scenes) - len(held_out)) // args.pretrain_batch
    config = PretrainConfig(
        store_url=store, out_dir=str(out), preset=args.preset, resolution=args.resolution,
        scenes=scenes, val_scenes=held_out, batch_size=args.pretrain_batch,
        epochs=max(1, math.ceil(args.pretrain_steps / steps_per_epoch)), lr=args.pretrain_lr,
        num_workers=0, log_every=20, eval_every=10**9, checkpoint_every=10**9, device="cpu",
        model_overrides={"mask_ratio": args.mask_ratio}, resume=out.exists(),
    )  # fmt: skip
    return pretrain(config)


def run_finetuning(
    args, store: str, scenes: dict[str, list[str]], budget: int, seed: int, init: str,
    checkpoint: str, out: Path, task: str = "semantics", **extra: Any,
) -> dict[str, Any]:  # fmt: skip
    done = out / "metrics.json"
    if done.is_file() and not args.fresh:
        return json.loads(done.read_text())
    labelled = scenes["pool"][:budget]
    batch = min(args.finetune_batch, budget)
    steps_per_epoch = budget // batch
    if args.finetune_steps % steps_per_epoch:
        raise ValueError(
            f"--finetune-steps {args.finetune_steps} is not a whole number of epochs of "
            f"{steps_per_epoch} steps ({budget} rooms, batch {batch})"
        )
    config = make_config(
        task, store_url=store, out_dir=str(out), preset=args.preset,
        resolution=extra.pop("resolution", args.resolution), scenes=labelled + scenes["test"],
        val_scenes=scenes["test"], train_scenes=labelled,
        epochs=args.finetune_steps // steps_per_epoch, batch_size=batch, lr=args.finetune_lr,
        augment=args.augment, freeze_pretrained=args.freeze_pretrained, num_workers=0,
        log_every=10, eval_every=10**9, checkpoint_every=10**9, seed=seed, device="cpu",
        **({"pretrained": checkpoint} if init == "pretrained" else {"scratch": True}),
        **extra,
    )  # fmt: skip
    if out.exists():  # an interrupted run: start it again
        import shutil

        shutil.rmtree(out)
    return finetune(config)


def spread(values: list[float]) -> dict[str, float]:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return {"mean": math.nan, "std": math.nan, "min": math.nan, "max": math.nan}
    return {
        "mean": statistics.fmean(finite),
        "std": statistics.stdev(finite) if len(finite) > 1 else 0.0,
        "min": min(finite),
        "max": max(finite),
    }


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    task = results["setup"]["task"]
    metrics = METRICS[task][:2]
    fig, axes = plt.subplots(1, len(metrics), figsize=(10, 4))
    for ax, (key, label) in zip(axes, metrics, strict=True):
        for init, colour in (("pretrained", "tab:blue"), ("scratch", "tab:orange")):
            rows = [r for r in results["table"] if r["init"] == init]
            x = [r["budget"] for r in rows]
            mean = [100 * r[key]["mean"] for r in rows]
            lo = [100 * (r[key]["mean"] - r[key]["min"]) for r in rows]
            hi = [100 * (r[key]["max"] - r[key]["mean"]) for r in rows]
            ax.errorbar(x, mean, yerr=[lo, hi], marker="o", capsize=4, color=colour, label=init)
            for run in results["runs"]:
                if run["init"] == init and run["task"] == task:
                    ax.scatter(run["budget"], 100 * run[f"val_{key}"], color=colour, s=8,
                               alpha=0.4)  # fmt: skip
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({r["budget"] for r in results["table"]}))
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_xlabel("labelled rooms")
        ax.set_ylabel(f"test {label} (%)")
        ax.grid(alpha=0.3)
        ax.legend()
    title = {"semantics": "semantic voxel labelling", "detect": "oriented-box detection"}[task]
    fig.suptitle(f"{title}, {results['setup']['preset']} at "
                 f"{results['setup']['resolution']}^3: mean and min-max over seeds")  # fmt: skip
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("bench_out/transfer"))
    parser.add_argument("--out", type=Path, default=Path("bench_out/bench_transfer.json"))
    parser.add_argument("--plot", type=Path, help="PNG of score against labelled rooms")
    parser.add_argument("--store", help="a labelled grid store instead of ground-truth rooms")
    parser.add_argument("--task", choices=tuple(METRICS), default="semantics",
                        help="the downstream task compared (default semantics)")  # fmt: skip
    parser.add_argument("--fpn-channels", type=int, default=64,
                        help="detect: FPN and head width (reference: 256)")  # fmt: skip
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--pretrain-rooms", type=int, default=48)
    parser.add_argument("--pool-rooms", type=int, default=16)
    parser.add_argument("--test-rooms", type=int, default=16)
    parser.add_argument("--budgets", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--pretrain-steps", type=int, default=600)
    parser.add_argument("--pretrain-batch", type=int, default=4)
    parser.add_argument("--pretrain-lr", type=float, default=1e-3)
    parser.add_argument("--mask-ratio", type=float, default=0.75)
    parser.add_argument("--finetune-steps", type=int, default=64)
    parser.add_argument("--finetune-batch", type=int, default=4)
    parser.add_argument("--finetune-lr", type=float, default=1e-3)
    parser.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--freeze-pretrained", action="store_true",
                        help="probe: train only the new parts on frozen encoders")  # fmt: skip
    parser.add_argument("--superres", action="store_true", help="also x2 super-resolution")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--fresh", action="store_true", help="ignore finished runs in --work")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    args.work.mkdir(parents=True, exist_ok=True)
    if args.store:
        store = args.store
        scenes = split_store(store, args.pretrain_rooms, args.pool_rooms, args.test_rooms)
    else:
        store = str(args.work / f"ground_truth_{args.resolution}.zarr")
        scenes = {
            "pretrain": room_ids(PRETRAIN_SEED0, args.pretrain_rooms),
            "pool": room_ids(POOL_SEED0, args.pool_rooms),
            "test": room_ids(TEST_SEED0, args.test_rooms),
        }
        write_ground_truth(store, [s for group in scenes.values() for s in group],
                           args.resolution)  # fmt: skip
    if max(args.budgets) > len(scenes["pool"]):
        parser.error(f"--budgets: the pool holds {len(scenes['pool'])} rooms")
    prepared = time.perf_counter() - started

    tic = time.perf_counter()
    mae = run_pretraining(args, store, scenes["pretrain"], args.work / "pretrain")
    pretrain_s = time.perf_counter() - tic
    print(f"pretraining: {mae['steps']} steps, val PSNR {mae['val_psnr']:.2f} dB, "
          f"alpha MSE {mae['val_alpha_mse']:.4f}, {mae['seconds']:.0f} s", flush=True)  # fmt: skip

    task = args.task
    extra = {"detector_overrides": {"channels": args.fpn_channels}} if task == "detect" else {}
    runs: list[dict[str, Any]] = []
    for budget in args.budgets:
        for seed in args.seeds:
            for init in ("pretrained", "scratch"):
                out = args.work / f"{task}_b{budget}_s{seed}_{init}"
                summary = run_finetuning(args, store, scenes, budget, seed, init,
                                         mae["checkpoint"], out, task=task, **extra)  # fmt: skip
                runs.append({"task": task, "budget": budget, "seed": seed, "init": init,
                             **summary})  # fmt: skip
                scores = "  ".join(f"{label} {100 * (summary[f'val_{key}'] or 0):5.1f}"
                                   for key, label in METRICS[task])  # fmt: skip
                print(f"  {task} {budget:>2} rooms seed {seed} {init:<10}  {scores}  "
                      f"{summary['seconds']:.0f} s", flush=True)
    if args.superres:
        low = str(args.work / f"ground_truth_{args.resolution // 2}.zarr")
        write_ground_truth(low, scenes["pool"] + scenes["test"], args.resolution // 2)
        for seed in args.seeds:
            for init in ("pretrained", "scratch"):
                out = args.work / f"superres_b{args.budgets[0]}_s{seed}_{init}"
                summary = run_finetuning(
                    args, low, scenes, args.budgets[0], seed, init, mae["checkpoint"], out,
                    task="superres", target_store_url=store, resolution=args.resolution // 2,
                    allow_resolution_change=True,
                )  # fmt: skip
                runs.append({"task": "superres", "budget": args.budgets[0], "seed": seed,
                             "init": init, **summary})  # fmt: skip
                print(f"  superres  {args.budgets[0]:>2} rooms seed {seed} {init:<10}  PSNR "
                      f"{summary['val_psnr']:.2f} dB  {summary['seconds']:.0f} s", flush=True)

    table = []
    for budget in args.budgets:
        for init in ("pretrained", "scratch"):
            mine = [r for r in runs if r["task"] == task and r["budget"] == budget
                    and r["init"] == init]  # fmt: skip
            table.append({"budget": budget, "init": init,
                          **{k: spread([r[f"val_{k}"] for r in mine])
                             for k, _ in METRICS[task]}})  # fmt: skip
    superres = {
        init: spread([r["val_psnr"] for r in runs if r["task"] == "superres" and r["init"] == init])
        for init in ("pretrained", "scratch")
    }
    results = {
        "setup": {
            **{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "store": store,
            "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
            "torch": torch.__version__,
            "scenes": {k: len(v) for k, v in scenes.items()},
        },
        "pretraining": mae,
        "runs": runs,
        "table": table,
        "superres": superres if args.superres else None,
        "seconds": {"prepare": prepared, "pretrain": pretrain_s,
                    "total": time.perf_counter() - started},  # fmt: skip
    }
    header = " ".join(f"{label:>13}" for _, label in METRICS[task])
    print(f"\n{'rooms':>5} {'init':<10} {header}")
    for r in table:
        cells = [f"{100 * r[k]['mean']:5.1f} ± {100 * r[k]['std']:4.1f}"
                 for k, _ in METRICS[task]]  # fmt: skip
        print(f"{r['budget']:>5} {r['init']:<10} " + " ".join(f"{c:>13}" for c in cells))
    for budget in args.budgets:
        warm, cold = (next(r for r in table if r["budget"] == budget and r["init"] == i)
                      for i in ("pretrained", "scratch"))  # fmt: skip
        key = HEADLINE[task]
        gain = 100 * (warm[key]["mean"] - cold[key]["mean"])
        worst = 100 * (warm[key]["min"] - cold[key]["max"])
        print(f"{budget:>5} rooms: pretrained - scratch = {gain:+.1f} {key} points "
              f"(worst pretrained seed - best scratch seed {worst:+.1f})")
    if args.superres:
        for init, s in superres.items():
            print(f"superres x2 ({args.budgets[0]} rooms) {init:<10}: PSNR {s['mean']:.2f} ± "
                  f"{s['std']:.2f} dB")  # fmt: skip
    print(f"total {results['seconds']['total']:.0f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    if args.plot:
        plot(results, args.plot)
        print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
