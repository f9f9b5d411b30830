"""Did pretraining teach the encoder anything? Linear probes of frozen encoder features along
pretraining runs, against controls that hold no learned knowledge.

Every checkpoint of each ``--runs`` folder (``RUN/checkpoints/step_*.pt``, thinned with
``--every``), every ``--checkpoints LABEL=PATH`` and every ``--controls`` source (``random``:
the same architecture untrained; ``coords``: the voxel's position only; ``colour``: the input
RGBA at the voxel) goes through the same two probes (``model.probing``), fitted on the
training rooms and scored on the test rooms of a labelled store:

- semantic: a linear reader of the concatenated stage features at a voxel, scored densely on
  every labelled voxel of the test rooms: mIoU over the classes present, and over the
  furniture classes alone;
- token: the voxel's class from the features of the token containing it, one linear map per
  position in the token's patch (``model.probing.tokens``), scored the same way;
- objects: a linear reader of the features averaged over each stored box: class accuracy, and
  R^2 of the box's log extents.

Each source that is a whole MAE (a pretraining checkpoint, the random control) is also asked
to fill in masked blocks of the test rooms (``model.probing.reconstruction``, ``--draws``
masks per room): its alpha error on free, shell and furniture voxels beside a per-voxel prior
of the training rooms, printed as a second table. A loss that falls while the furniture
error stays the prior's says the MAE learned the room, not its objects.

    .venv/bin/python benchmarks/bench_probe.py --store bench_out/transfer/ground_truth_64.zarr \\
        --train-first 16 --test-first 48 --runs bench_out/transfer/pretrain --every 2 \\
        --checkpoints shuffled=runs/shuffled/checkpoints/latest.pt \\
        --plot benchmarks/figures/probe_curve.png

Rooms are named as ``bench_transfer.py`` names them (``room00000..`` the labelled pool,
``room05000..`` the test rooms); ``--split FILE`` reads ``{"pool": [...], "test": [...]}``.
Writes ``--out`` (JSON: setup and every probe's scores) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from model.checkpoints.reading import read_checkpoint  # noqa: E402
from model.networks.mae import MAEConfig, NeRFMAE  # noqa: E402
from model.networks.presets import get_config, replace_config  # noqa: E402
from model.probing import (  # noqa: E402
    ColourSource,
    CoordinateSource,
    ProbeConfig,
    ProbeRooms,
    SamplingConfig,
    checkpoint_source,
    load_rooms,
    probe_source,
    random_source,
    run_checkpoints,
)
from model.probing.reconstruction import (  # noqa: E402
    CATEGORIES,
    masked_reconstruction,
    position_prior,
)
from pipeline.synthetic.furniture import FURNITURE_CLASSES  # noqa: E402

POOL_SEED0, TEST_SEED0 = 0, 5_000
CONTROLS = ("random", "coords", "colour")
PLOTTED = (("semantic", "miou", "semantic mIoU"), ("semantic", "furniture_miou", "furniture mIoU"),
           ("semantic_token", "miou", "token-probe semantic mIoU"),
           ("objects", "accuracy", "object class accuracy"))  # fmt: skip


def room_ids(first_seed: int, n: int) -> list[str]:
    return [f"room{first_seed + i:05d}" for i in range(n)]


def scene_split(args: argparse.Namespace) -> dict[str, list[str]]:
    """The training and test rooms the arguments name (each split named exactly one way)."""
    from_file = json.loads(Path(args.split).read_text()) if args.split else {}
    if args.split and not {"pool", "test"} <= set(from_file):
        raise ValueError(f"{args.split}: expected {{'pool': [...], 'test': [...]}}")
    split = {}
    for name, explicit, first, seed0, key in (
        ("train", args.train_scenes, args.train_first, POOL_SEED0, "pool"),
        ("test", args.test_scenes, args.test_first, TEST_SEED0, "test"),
    ):
        given = [g for g in (explicit, first, from_file.get(key)) if g is not None]
        if len(given) != 1:
            raise ValueError(f"name the {name} rooms one way: --{name}-scenes, --{name}-first "
                             "or --split")  # fmt: skip
        split[name] = room_ids(seed0, first) if first is not None else list(given[0])
    overlap = sorted(set(split["train"]) & set(split["test"]))
    if overlap:
        raise ValueError(f"rooms in both the training and the test split: {overlap[:4]}")
    return split


def checkpoint_jobs(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every checkpoint to probe: ``{"label", "kind", "run", "step", "path"}``."""
    jobs = []
    for run in args.runs:
        found = run_checkpoints(run)
        kept = found[:: args.every]
        if kept[-1] != found[-1]:
            kept.append(found[-1])  # the curve always reaches the run's last checkpoint
        name = Path(run).resolve().name
        jobs += [{"label": f"{name}@{step}", "kind": "run", "run": name, "step": step,
                  "path": str(path)} for step, path in kept]  # fmt: skip
    for item in args.checkpoints:
        label, sep, path = item.partition("=")
        if not sep or not label or not path:
            raise ValueError(f"--checkpoints {item!r}: expected LABEL=PATH")
        jobs.append({"label": label, "kind": "checkpoint", "run": None, "step": None,
                     "path": path})  # fmt: skip
    return jobs


def random_config(args: argparse.Namespace, jobs: list[dict[str, Any]]) -> tuple[MAEConfig, Any]:
    """The random control's architecture and alpha convention: the first checkpoint's, else
    ``--preset`` with the stored alpha."""
    if not jobs:
        return get_config(args.preset, resolution=args.resolution), None
    checkpoint = read_checkpoint(jobs[0]["path"])
    # the plain alpha head: a patch-normalised one would report with the truth's patch means
    config = replace_config(MAEConfig(**checkpoint.mae_config), resolution=args.resolution,
                            alpha_target="alpha")  # fmt: skip
    return config, checkpoint.alpha_step


def furniture_ids(rooms: ProbeRooms) -> tuple[int, ...]:
    """The ids of the synthetic rooms' furniture classes in the store's own naming."""
    if rooms.class_names is None:
        return ProbeConfig().furniture_classes
    return tuple(rooms.class_names.index(c) for c in FURNITURE_CLASSES if c in rooms.class_names)


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PLOTTED), figsize=(20, 4.2))
    runs = sorted({r["run"] for r in rows if r["kind"] == "run"})
    flat = [r for r in rows if r["kind"] != "run"]
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (probe, key, label) in zip(axes, PLOTTED, strict=True):
        for i, run in enumerate(runs):
            mine = sorted((r for r in rows if r["run"] == run), key=lambda r: r["step"])
            ax.plot([r["step"] for r in mine], [100 * r[probe][key] for r in mine], marker="o",
                    color=colours[i % len(colours)], label=run)  # fmt: skip
        for j, r in enumerate(flat):
            ax.axhline(100 * r[probe][key], linestyle="--", linewidth=1.2,
                       color=colours[(len(runs) + j) % len(colours)], label=r["label"])  # fmt: skip
        ax.set_xlabel("pretraining step")
        ax.set_ylabel(f"test {label} (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def print_reconstruction(rows: list[dict[str, Any]]) -> None:
    """The masked-reconstruction table: per voxel category, alpha MSE of the network, of the
    visible-neighbourhood mean and of the position prior, and the network's share of voxels
    on the right side of 0.5 beside the neighbourhood mean's. A network trained on
    patch-normalised alpha reports through the truth's patch means: its row adds the
    patch-mean predictor's MSE and share, its fair floor."""
    rows = [r for r in rows if r.get("reconstruction")]
    if not rows:
        return
    print(
        "\nmasked blocks of the test rooms: alpha MSE, network / visible neighbourhood / "
        "position prior (right side of 0.5, network / neighbourhood)"
    )
    print(f"{'source':<24} {'step':>7} " + " ".join(f"{c:>30}" for c in CATEGORIES))
    for row in rows:
        cells = []
        for c in CATEGORIES:
            got = row["reconstruction"].get(c)
            cells.append("-" if got is None else
                         f"{got['network']['mse']:.3f}/{got['nearby']['mse']:.3f}/"
                         f"{got['prior']['mse']:.3f} ({100 * got['network']['correct']:.0f}/"
                         f"{100 * got['nearby']['correct']:.0f} %)")  # fmt: skip
        step = "" if row["step"] is None else str(row["step"])
        print(f"{row['label']:<24} {step:>7} " + " ".join(f"{c:>30}" for c in cells))
        if row.get("alpha_target", "alpha") != "alpha":
            floor = []
            for c in CATEGORIES:
                got = row["reconstruction"].get(c, {}).get("patch_mean")
                floor.append("-" if got is None else
                             f"{got['mse']:.3f} ({100 * got['correct']:.0f} %)")  # fmt: skip
            print(f"{'  patch-mean floor':<32} " + " ".join(f"{c:>30}" for c in floor))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", required=True, help="a grid store with semantic labels, boxes")
    parser.add_argument("--train-scenes", nargs="+", help="the rooms the probes are fitted on")
    parser.add_argument("--test-scenes", nargs="+", help="the rooms the probes are scored on")
    parser.add_argument("--train-first", type=int, help="training rooms room00000.. (N of them)")
    parser.add_argument("--test-first", type=int, help="test rooms room05000.. (N of them)")
    parser.add_argument("--split", help='JSON file {"pool": [...], "test": [...]}')
    parser.add_argument("--runs", nargs="+", default=[], help="pretraining run folders")
    parser.add_argument("--every", type=int, default=1, help="probe every Nth step checkpoint")
    parser.add_argument("--checkpoints", nargs="+", default=[], metavar="LABEL=PATH")
    parser.add_argument("--controls", nargs="*", choices=CONTROLS, default=list(CONTROLS))
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--preset", default="tiny", help="random control without a checkpoint")
    parser.add_argument("--seed", type=int, default=0, help="voxel sampling, random init")
    parser.add_argument("--per-class", type=int, default=SamplingConfig().per_class,
                        help="semantic training voxels per class and room")  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=ProbeConfig().batch_size)
    parser.add_argument(
        "--draws",
        type=int,
        default=2,
        help="masks per test room for the reconstruction table (0: none)",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("bench_out/bench_probe.json"))
    parser.add_argument("--plot", type=Path, help="PNG of probe scores against pretraining step")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    torch.set_num_threads(args.threads)
    if args.every < 1:
        parser.error("--every must be >= 1")
    try:
        split = scene_split(args)
        jobs = checkpoint_jobs(args)
    except (ValueError, FileNotFoundError) as error:
        parser.error(str(error))
    if not jobs and not args.controls:
        parser.error("nothing to probe: give --runs, --checkpoints or --controls")
    started = time.perf_counter()

    sampling = SamplingConfig(per_class=args.per_class, seed=args.seed)
    loaded: dict[Any, tuple[ProbeRooms, ProbeRooms]] = {}

    def rooms(alpha_step: float | None) -> tuple[ProbeRooms, ProbeRooms]:
        """The training and test rooms read for one alpha convention (read once)."""
        if alpha_step not in loaded:
            loaded[alpha_step] = tuple(
                load_rooms(args.store, split[s], args.resolution, alpha_step, sampling)
                for s in ("train", "test")
            )
        return loaded[alpha_step]

    random_arch, control_alpha = random_config(args, jobs)
    try:
        train, _ = rooms(control_alpha)
    except (ValueError, FileNotFoundError, KeyError) as error:  # no store, scene, labels
        parser.error(str(error))
    config = ProbeConfig(furniture_classes=furniture_ids(train), batch_size=args.batch_size)
    prepared = time.perf_counter() - started
    controls = {
        "random": lambda: random_source(random_arch, args.seed, control_alpha),
        "coords": CoordinateSource,
        "colour": ColourSource,
    }
    plan = [({"label": name, "kind": "control", "run": None, "step": None, "path": None},
             controls[name]) for name in args.controls]  # fmt: skip
    plan += [(job, lambda job=job: checkpoint_source(job["path"], job["label"], args.resolution))
             for job in jobs]  # fmt: skip

    rows = []
    print(f"{'source':<24} {'step':>7} {'sem mIoU':>9} {'furn mIoU':>9} {'tok mIoU':>9} "
          f"{'tok furn':>9} {'obj acc':>8} "
          f"{'size R2':>8} {'eff. rank per stage':>22} {'feature scale':>22} "
          f"{'attention entropy':>22} {'s':>6}",
          flush=True)  # fmt: skip
    for job, make in plan:
        tic = time.perf_counter()
        source = make()
        alpha_step = getattr(source, "alpha_step", control_alpha)
        result = probe_source(source, *rooms(alpha_step), config)
        network = getattr(source, "network", None)
        if isinstance(network, NeRFMAE) and args.draws:
            fitted, scored = rooms(alpha_step)
            result["reconstruction"] = masked_reconstruction(
                network, scored, position_prior(fitted), config.furniture_classes,
                draws=args.draws, seed=args.seed)  # fmt: skip
            result["alpha_target"] = network.config.alpha_target
        row = {**job, **result, "seconds_with_loading": time.perf_counter() - tic}
        rows.append(row)
        step = "" if job["step"] is None else str(job["step"])
        print(f"{job['label']:<24} {step:>7} {100 * row['semantic']['miou']:9.1f} "
              f"{100 * row['semantic']['furniture_miou']:9.1f} "
              f"{100 * row['semantic_token']['miou']:9.1f} "
              f"{100 * row['semantic_token']['furniture_miou']:9.1f} "
              f"{100 * row['objects']['accuracy']:8.1f} {row['objects']['size_r2']:8.3f} "
              f"{' / '.join(f'{r:.1f}' for r in row['effective_rank']):>22} "
              f"{' / '.join(f'{r:.2f}' for r in row['feature_scale']):>22} "
              f"{' / '.join(f'{r:.2f}' for r in row['attention_entropy'] or []) or '-':>22} "
              f"{row['seconds_with_loading']:6.1f}", flush=True)  # fmt: skip

    print_reconstruction(rows)
    test = rooms(control_alpha)[1]
    results = {
        "setup": {
            **{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
            "torch": torch.__version__,
            "train_scenes": split["train"],
            "test_scenes": split["test"],
            "class_names": train.class_names,
            "furniture_classes": list(config.furniture_classes),
            "train_boxes": sum(len(b) for b in train.boxes),
            "test_boxes": sum(len(b) for b in test.boxes),
            "probe_config": {k: getattr(config, k) for k in config.__dataclass_fields__},
        },
        "rows": rows,
        "seconds": {"prepare": prepared, "total": time.perf_counter() - started},
    }
    print(f"total {results['seconds']['total']:.0f} s ({len(split['train'])} training rooms, "
          f"{len(split['test'])} test rooms, {args.threads} thread(s))")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    if args.plot:
        title = (f"linear probes of frozen features, {len(split['train'])} training / "
                 f"{len(split['test'])} test rooms at {args.resolution}^3")  # fmt: skip
        plot(rows, args.plot, title)
        print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
