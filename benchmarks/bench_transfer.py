"""What pretraining is worth: NeRF-MAE's label-efficiency experiment at this machine's scale.

Synthetic rooms, drawn from ``--data-seed``, in four disjoint sets: pretraining rooms (no
labels used), a labelled pool the fine-tuning runs take their rooms from, validation rooms
(the checkpoint of each fine-tuning run is the best on them) and test rooms (scored once,
with that checkpoint). Grids are the rooms' exact ground truth at ``--resolution`` after the
empty-space rule extracted grids follow. Room arms (``--arms``): ``independent`` (every
object's materials drawn independently of its class, so labels must be read from shape)
and ``by_class`` (each class its own material recipe); both with parts thickened to
``--min-part-size`` so that legs, poles and shelves survive the grid.

For each arm, objective (``--objectives``, :data:`model.tasks.objectives.OBJECTIVES`) and
pretraining seed one ``tiny`` MAE is pretrained (checkpoints every ``--probe-every`` steps
are kept for ``bench_probe.py``). For each labelled budget and fine-tuning seed (which also
picks the labelled rooms: seed ``s`` its ``s``-th window of the pool, ``--labelled-rooms``)
the task is fine-tuned from scratch and from every pretrained encoder, with one protocol for all
(``--finetune-lr`` for the new parts, ``--carried-lr-scale`` times that for the weights
pretraining sets, frozen for the first ``--frozen-warmup`` of the steps). Each pretrained
run is paired with the scratch run of the same fine-tuning seed; the gain is the mean
paired difference and its 95 % interval a bootstrap over test rooms (the same resampled
rooms for both runs of a pair).

    .venv/bin/python benchmarks/bench_transfer.py --task detect      # BENCHMARKS.md's protocol
    .venv/bin/python benchmarks/bench_transfer.py --task detect --budgets 2 --seeds 0 \\
        --pretrain-seeds 0 --objectives structure_first --pretrain-rooms 48 \\
        --finetune-steps 20 --eval-every 10        # a smoke run

Writes ``--out`` (every run's test figures, the paired table and ``summary``: for the
smallest budget of the first arm and objective, ``gain_<headline>`` and ``ci95_low``) and,
with ``--plot``, score against labelled rooms per arm. Finished runs in ``--work`` are
reused (``--fresh`` ignores them), so separate invocations share their pretraining and
their scratch runs; ``--pretrain-tag`` and ``--finetune-tag`` name the runs of other
pretraining or fine-tuning settings apart (a finished run whose recorded settings differ
from the invocation's is refused, not reused). Pretraining can run elsewhere: ``--stage
pretrain --pretrain-device cuda --pretrain-seconds S`` on a GPU machine
(``benchmarks/pretrain_on_gpu.sh`` draws the rooms, runs four MAEs at once and packs them
with ``pack_pretraining.py``); unpacked into ``--work`` here, they are fine-tuned as if
pretrained here.

The runs are ``transfer_runs.py``'s, the paired gain and its intervals
``transfer_stats.py``'s, the figures ``transfer_plots.py``'s.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TQDM_DISABLE", "1")  # one line per run instead of progress bars

import torch  # noqa: E402
import transfer_plots  # noqa: E402
from transfer_runs import (  # noqa: E402
    checkpoint_at,
    labelled_rooms,
    room_ids,
    run_finetuning,
    run_pretraining,
    validation_curve,
    write_rooms,
)
from transfer_stats import paired_gain, spread, validation_gap  # noqa: E402

SETS = {"pretrain": 10_000, "pool": 0, "val": 20_000, "test": 5_000}
"""First room seed of each set (``--data-seed N`` adds ``N * DATA_SEED_STRIDE``)."""
DATA_SEED_STRIDE = 100_000
SHUFFLED = "shuffled_control"
"""The control init: an MAE of the first objective pretrained on shuffled targets."""
METRICS = {
    "semantics": [("miou", "mIoU"), ("macc", "mAcc"), ("allacc", "allAcc")],
    "detect": [("ap50", "AP50"), ("ap25", "AP25"), ("recall50@300", "R50@300")],
}
"""Per task, the test-set figures reported; the first is the headline (paired, bootstrapped)."""


def report_pretraining(arm: str, objective: str, seed: int, mae: dict[str, Any]) -> None:
    print(f"pretrain {arm:<11} {objective:<24} seed {seed}: {mae['steps']} steps, "
          f"val PSNR {mae['val_psnr']:.2f} dB, alpha MSE {mae['val_alpha_mse']:.4f}, "
          f"{mae['seconds']:.0f} s", flush=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, default=Path("bench_out/transfer"))
    p.add_argument("--out", type=Path, default=Path("bench_out/bench_transfer.json"))
    p.add_argument("--plot", type=Path, help="PNG of score against labelled rooms")
    p.add_argument("--rooms-plot", type=Path,
                   help="PNG of each fine-tuning seed's score at the smallest budget, scratch "
                        "beside pretrained, against the rooms it labelled")
    p.add_argument("--curves", type=Path,
                   help="PNG of each fine-tuning run's validation score against its step")
    p.add_argument("--task", choices=tuple(METRICS), default="detect")
    p.add_argument("--arms", nargs="+", choices=("independent", "by_class"),
                   default=["independent", "by_class"], help="room texture policies")
    p.add_argument("--min-part-size", type=float, default=0.12,
                   help="rooms' thinnest part (metres; 0: the original thin parts)")
    p.add_argument("--data-seed", type=int, default=0, help="draws every room set")
    p.add_argument("--objectives", nargs="+",
                   default=["opacity_only_normalised_decorrelated", "paper"],
                   help="pretraining objectives (the first: the JSON summary's)")
    p.add_argument("--shuffled-control", action="store_true",
                   help="also pretrain on shuffled targets and fine-tune from it at the "
                        "smallest budget (the control: structure in the targets)")
    p.add_argument("--head", choices=("voxel", "token", "bottleneck"), default="token",
                   help="the MAE's prediction head (token: per-token linear, 4x faster here)")
    p.add_argument("--fpn-channels", type=int, default=64,
                   help="detect: FPN and head width (reference: 256)")
    p.add_argument("--stage-norm", choices=("none", "layer"), default="none",
                   help="detect: what the FPN reads (DetectorConfig.stage_norm)")
    p.add_argument("--semantic-network", choices=("skip", "encoder_path"), default="skip",
                   help="semantics: the body under the head (SemanticsConfig.network; "
                        "encoder_path has no full-resolution input skip)")
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--pretrain-rooms", type=int, default=1024,
                   help="unlabelled rooms the MAEs pretrain on (the first round: 48)")
    p.add_argument("--pool-rooms", type=int, default=16)
    p.add_argument("--val-rooms", type=int, default=8)
    p.add_argument("--test-rooms", type=int, default=48)
    p.add_argument("--budgets", type=int, nargs="+", default=[1, 2, 8],
                   help="labelled rooms per fine-tuning run (the smallest: the summary's)")
    p.add_argument("--labelled-rooms", choices=("by_seed", "first"), default="by_seed",
                   help="which pool rooms a fine-tuning seed labels: its own window of the "
                        "pool, or the pool's first for every seed (the first six rounds)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3],
                   help="fine-tuning seeds (each pairs a pretrained with a scratch run)")
    p.add_argument("--pretrain-seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--pretrain-steps", type=int, default=800)
    p.add_argument("--pretrain-batch", type=int, default=4)
    p.add_argument("--pretrain-lr", type=float, default=1e-3)
    p.add_argument("--pretrain-device", default="cpu",
                   help="where the MAEs pretrain (cuda: on a GPU; fine-tuning stays on the CPU)")
    p.add_argument("--pretrain-workers", type=int, default=0, help="pretraining loader workers")
    p.add_argument("--pretrain-seconds", type=float,
                   help="pretrain for as many steps as fit this long on --pretrain-device "
                        "(measured first; replaces --pretrain-steps, 4 checkpoints a run)")
    p.add_argument("--pretrain-tag", default="",
                   help="marks the pretraining runs (and the fine-tuning runs from them) of "
                        "settings other than this benchmark's, so that they share --work")
    p.add_argument("--stage", choices=("rooms", "pretrain", "all"), default="all",
                   help="stop after writing the rooms, or after pretraining (a GPU machine's "
                        "part; copy the pretraining folders back into --work to fine-tune)")
    p.add_argument("--room-workers", type=int, default=0, help="processes drawing rooms")
    p.add_argument("--mask-ratio", type=float, default=0.75)
    p.add_argument("--mask-block", type=int, default=2,
                   help="tokens a side of a masked block (2: 8 voxels, about the reference's "
                        "16-voxel blocks at 160^3 scaled to 64^3)")
    p.add_argument("--probe-every", type=int, default=200,
                   help="pretraining checkpoints kept for bench_probe.py")
    p.add_argument("--finetune-steps", type=int, default=1000,
                   help="near the plateau at 1 labelled room (batch 1): from 500 to 1000 steps "
                        "scratch gained 8.4 AP50 (BENCHMARKS.md, eighth round); 2 rooms "
                        "plateau by 500")
    p.add_argument("--finetune-batch", type=int, default=4)
    p.add_argument("--finetune-lr", type=float, default=1e-3)
    p.add_argument("--finetune-tag", default="",
                   help="marks the fine-tuning runs of another protocol (steps, rates) so that "
                        "they share --work with this benchmark's")
    p.add_argument("--carried-lr-scale", type=float, default=0.3)
    p.add_argument("--frozen-warmup", type=float, default=0.1)
    p.add_argument("--carried-stages", type=int, default=None,
                   help="encoder stages the pretrained runs carry (the patch embedding and the "
                        "first k; default all); scratch runs train the same split of rates")
    p.add_argument("--carried-share", type=float, default=1.0,
                   help="pretrained runs start their carried tensors at this share of the "
                        "pretrained value plus the rest of the scratch run's initialisation "
                        "(shrink and perturb; 1: the pretrained weights)")
    p.add_argument("--freeze-encoder", action="store_true",
                   help="keep every tensor pretraining sets frozen for the whole run, scratch "
                        "runs alike (theirs stay random): what the features alone are worth "
                        "to the parts trained on top; runs are named with _frozen")
    p.add_argument("--from-step", type=int, default=None,
                   help="fine-tune from each MAE's checkpoint of this pretraining step (kept "
                        "every --probe-every) instead of its last: the verdict along "
                        "pretraining; runs are named with _at<step>")
    p.add_argument("--eval-every", type=int, default=50,
                   help="fine-tuning steps between validations (best-checkpoint choices)")
    p.add_argument("--bootstrap", type=int, default=500, help="bootstrap draws")
    p.add_argument("--threads", type=int, default=2,
                   help="CPU threads (pretraining on a GPU uses them too)")
    p.add_argument("--fresh", action="store_true", help="ignore finished runs in --work")
    p.add_argument("--finished-only", action="store_true",
                   help="tabulate the finished fine-tuning runs of the settings given and start "
                        "none (pairs form where both runs of a seed exist)")
    return p


def name_parts(args: argparse.Namespace) -> tuple[str, str, str]:
    """What run folder names add for settings other than the benchmark's own: ``(head,
    protocol, start)``: the MAE's head and pretraining tag (pretraining and pretrained runs),
    the fine-tuning protocol (every fine-tuning run, scratch ones too), and where pretrained
    runs start (scratch runs do not depend on it, so they pair with all)."""
    head = ("" if args.head == "token" else f"_{args.head}") + (
        f"_{args.pretrain_tag}" if args.pretrain_tag else "")
    protocol = (f"_{args.finetune_tag}" if args.finetune_tag else "") + (
        "_frozen" if args.freeze_encoder else "") + (
        "_labelsfirst" if args.labelled_rooms == "first" else "")
    start = f"_share{args.carried_share:g}" if args.carried_share < 1 else ""
    start += f"_at{args.from_step}" if args.from_step is not None else ""
    return head, protocol, start


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    torch.set_num_threads(args.threads)
    from pipeline.synthetic.room import RoomConfig

    started = time.perf_counter()
    offset = args.data_seed * DATA_SEED_STRIDE
    counts = {"pretrain": args.pretrain_rooms, "pool": args.pool_rooms, "val": args.val_rooms,
              "test": args.test_rooms}  # fmt: skip
    sets = {name: room_ids(first + offset, counts[name]) for name, first in SETS.items()}
    if max(args.budgets) > len(sets["pool"]):
        raise SystemExit(f"--budgets: the pool holds {len(sets['pool'])} rooms")
    args.work.mkdir(parents=True, exist_ok=True)
    head, protocol, start = name_parts(args)
    seconds: dict[str, float] = {"rooms": 0.0, "pretrain": 0.0, "finetune": 0.0}
    stores, pretrained, pretraining = {}, {}, []
    for arm in args.arms:
        room_config = RoomConfig(texture_policy=arm, min_part_size=args.min_part_size)
        stores[arm] = str(args.work / f"rooms_{arm}_d{args.data_seed}_{args.resolution}.zarr")
        runs_to_pretrain = [
            (objective, seed, shuffle, args.work / (f"pretrain_{arm}_d{args.data_seed}_"
                                                    f"{objective}{head}_{label}s{seed}"))
            for objective, seed, shuffle, label in [
                *((o, s, False, "") for o in args.objectives for s in args.pretrain_seeds),
                *([(args.objectives[0], 0, True, "shuffled_")] if args.shuffled_control else []),
            ]
        ]  # fmt: skip
        if args.finished_only:  # a tabulation starts no MAE either
            runs_to_pretrain = [r for r in runs_to_pretrain if (r[-1] / "metrics.json").is_file()]
        # Pretraining rooms only where a pretraining run still needs them.
        needed = [] if args.stage == "pretrain" else [s for g in ("pool", "val", "test")
                                                      for s in sets[g]]  # fmt: skip
        if args.stage == "rooms" or any(not (out / "metrics.json").is_file() or args.fresh
                                        for *_, out in runs_to_pretrain):  # fmt: skip
            needed = sets["pretrain"] + needed
        seconds["rooms"] += write_rooms(stores[arm], needed, args.resolution, room_config,
                                        args.room_workers)  # fmt: skip
        if args.stage == "rooms":
            continue
        for objective, seed, shuffle, out in runs_to_pretrain:
            tic = time.perf_counter()
            mae = run_pretraining(args, stores[arm], sets["pretrain"], objective, seed, out,
                                  shuffle)  # fmt: skip
            seconds["pretrain"] += time.perf_counter() - tic
            init = SHUFFLED if shuffle else objective
            pretrained[arm, init, seed] = (mae["checkpoint"] if args.from_step is None
                                           else checkpoint_at(out, args.from_step))
            pretraining.append({"arm": arm, "objective": init, "seed": seed, **mae})
            report_pretraining(arm, init, seed, mae)
    if args.stage != "all":
        print(f"stage {args.stage} done: " + ", ".join(f"{k} {v:.0f} s"
                                                      for k, v in seconds.items() if v))
        return 0

    key, _ = METRICS[args.task][0]
    runs: list[dict[str, Any]] = []
    states: dict[tuple, dict] = {}
    for arm in args.arms:
        for budget in args.budgets:
            for seed in args.seeds:
                labelled = labelled_rooms(sets["pool"], budget, seed, args.labelled_rooms)
                inits = [("scratch", None, None)] + [
                    (objective, pseed, pretrained[arm, objective, pseed])
                    for objective in args.objectives for pseed in args.pretrain_seeds
                    if (arm, objective, pseed) in pretrained
                ]  # fmt: skip
                if (args.shuffled_control and budget == min(args.budgets)
                        and (arm, SHUFFLED, 0) in pretrained):  # fmt: skip
                    inits.append((SHUFFLED, 0, pretrained[arm, SHUFFLED, 0]))
                for init, pseed, checkpoint in inits:
                    name = init if pseed is None else f"{init}{head}_p{pseed}{start}"
                    out = (args.work / f"{args.task}_{arm}_d{args.data_seed}_b{budget}_s{seed}_"
                           f"{name}{protocol}")  # fmt: skip
                    if args.finished_only and not (out / "test.pt").is_file():
                        continue
                    result = run_finetuning(args, stores[arm], sets, labelled, seed,
                                            checkpoint, out)  # fmt: skip
                    seconds["finetune"] += result["seconds"]
                    test, summary = result["test"], result["summary"]
                    states[arm, budget, seed, init, pseed] = test["scene_states"]
                    runs.append({"arm": arm, "budget": budget, "seed": seed, "init": init,
                                 "pretrain_seed": pseed, "best_step": summary["best_step"],
                                 "seconds": result["seconds"], "run_dir": str(out),
                                 "val_curve": validation_curve(str(out), key),
                                 "labelled": labelled,
                                 **{f"val_{k}": summary.get(f"best_val_{k}")
                                    for k in (key,)},
                                 **{k: test.get(k) for k, _ in METRICS[args.task]}})  # fmt: skip
                    scores = "  ".join(f"{label} {100 * (test.get(k) or 0):5.1f}"
                                       for k, label in METRICS[args.task])  # fmt: skip
                    print(f"  {args.task} {arm:<11} {budget:>2} rooms seed {seed} {name:<26} "
                          f"{scores}  best step {summary['best_step']}  "
                          f"{result['seconds']:.0f} s", flush=True)

    table, paired = [], []
    tic = time.perf_counter()
    for arm in args.arms:
        for budget in args.budgets:
            for init in ["scratch", *args.objectives, SHUFFLED]:
                mine = [r for r in runs if r["arm"] == arm and r["budget"] == budget
                        and r["init"] == init]  # fmt: skip
                if not mine:
                    continue
                table.append({"arm": arm, "budget": budget, "init": init, "runs": len(mine),
                              **{k: spread([r[k] for r in mine])
                                 for k, _ in METRICS[args.task]}})  # fmt: skip
            for objective in [*args.objectives, SHUFFLED]:
                pairs = [(states[arm, budget, s, objective, p], states[arm, budget, s,
                                                                      "scratch", None])
                         for s in args.seeds for p in sorted({*args.pretrain_seeds, 0})
                         if (arm, budget, s, objective, p) in states]  # fmt: skip
                if not pairs:
                    continue
                paired.append({"arm": arm, "budget": budget, "objective": objective,
                               **paired_gain(args.task, pairs, sets["test"], args.bootstrap,
                                             args.data_seed)})  # fmt: skip
    seconds["bootstrap"] = time.perf_counter() - tic
    gaps = [{"arm": p["arm"], "budget": p["budget"], "objective": p["objective"],
             **gap} for p in paired if (gap := gap_along_finetuning(runs, p))]  # fmt: skip
    first = next((p for p in paired if p["arm"] == args.arms[0]
                  and p["budget"] == min(args.budgets)
                  and p["objective"] == args.objectives[0]), None)  # fmt: skip
    if first is None:
        raise SystemExit(f"{args.work}: no finished pair of {args.objectives[0]} and scratch "
                         f"runs at {min(args.budgets)} rooms ({args.arms[0]}): nothing to "
                         "summarise (run without --finished-only to make them)")
    summary = {"task": args.task, "arm": first["arm"], "budget": first["budget"],
               "objective": first["objective"], f"gain_{key}": first["gain"],
               "ci95_low": first["ci95_low"], "ci95_high": first["ci95_high"],
               "ci95_pairs_low": first["ci95_pairs_low"], "pairs": first["pairs"]}  # fmt: skip
    seconds["total"] = time.perf_counter() - started
    results = {
        "setup": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                  "stores": stores, "scenes": {k: len(v) for k, v in sets.items()},
                  "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
                  "torch": torch.__version__},
        "pretraining": pretraining, "runs": runs, "table": table, "paired": paired,
        "validation_gap": gaps, "summary": summary, "seconds": seconds,
    }  # fmt: skip

    labels = [label for _, label in METRICS[args.task]]
    print(f"\n{'arm':<11} {'rooms':>5} {'init':<24} " + " ".join(f"{x:>13}" for x in labels))
    for r in table:
        cells = [f"{100 * r[k]['mean']:5.1f} ± {100 * r[k]['std']:4.1f}"
                 for k, _ in METRICS[args.task]]  # fmt: skip
        print(f"{r['arm']:<11} {r['budget']:>5} {r['init']:<24} "
              + " ".join(f"{c:>13}" for c in cells))
    print(f"\npaired {labels[0]} gain, pretrained - scratch (95 % bootstrap over test rooms; "
          "over pairs and rooms):")
    for p in paired:
        print(f"{p['arm']:<11} {p['budget']:>2} rooms {p['objective']:<24} "
              f"{100 * p['gain']:+5.1f} [{100 * p['ci95_low']:+5.1f}, "
              f"{100 * p['ci95_high']:+5.1f}]; [{100 * p['ci95_pairs_low']:+5.1f}, "
              f"{100 * p['ci95_pairs_high']:+5.1f}]  ({p['pairs']} pairs: "
              + " ".join(f"{100 * g:+.1f}" for g in p["pair_gains"]) + ")")
    if gaps:
        print(f"\nvalidation {labels[0]} gap along fine-tuning, pretrained - scratch, best so "
              "far (mean [smallest, largest pair]):")
    for g in gaps:
        stride = -(-len(g["steps"]) // 10)  # at most 10 columns, the last step among them
        shown = range(len(g["steps"]) - 1, -1, -stride)[::-1]
        print(f"{g['arm']:<11} {g['budget']:>2} rooms {g['objective']:<24} ({g['pairs']} pairs; "
              f"lead until step {g['lead_until']})\n    "
              + "  ".join(f"{g['steps'][i]}: {100 * g['gain'][i]:+.1f} [{100 * g['min'][i]:+.1f}, "
                          f"{100 * g['max'][i]:+.1f}]" for i in shown))  # fmt: skip
    print("seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    figures = [(args.plot, transfer_plots.plot_budgets), (args.curves, transfer_plots.plot_curves),
               (args.rooms_plot, transfer_plots.plot_rooms)]  # fmt: skip
    for path, draw in figures:
        if path:
            draw(results, path, METRICS[args.task][0], ["scratch", *args.objectives, SHUFFLED])
            print(f"figure: {path}")
    return 0


def gap_along_finetuning(runs: list[dict[str, Any]], paired: dict[str, Any]
                         ) -> dict[str, Any] | None:  # fmt: skip
    """The validation gap along fine-tuning (``transfer_stats.validation_gap``) of the pairs
    behind ``paired`` (one arm, budget and objective), from their runs' ``val_curve``;
    ``None`` where a run kept no validation curve."""
    where = (paired["arm"], paired["budget"])
    cold = {r["seed"]: r["val_curve"] for r in runs
            if (r["arm"], r["budget"]) == where and r["init"] == "scratch"}  # fmt: skip
    curves = [(r["val_curve"], cold[r["seed"]]) for r in runs
              if (r["arm"], r["budget"]) == where
              and r["init"] == paired["objective"] and r["seed"] in cold]  # fmt: skip
    if not curves or not all(warm and scratch for warm, scratch in curves):
        return None
    return validation_gap(curves)


if __name__ == "__main__":
    sys.exit(main())
