"""What fine-tuning keeps of pretraining: how alike the encoder stages of MAEs, of the detectors
fine-tuned from them and of detectors trained from scratch are, on the same test rooms.

``bench_transfer.py`` says a pretrained detector scores like a scratch one; this says which of
two reasons holds. Each ``--pretrained`` fine-tuning run is paired with the ``--scratch`` run of
the same fine-tuning seed; the MAE is the checkpoint its config names. On every cell of the
test rooms that holds room (``model.probing.similarity``) it measures, per encoder stage, the
linear CKA of

- **kept**: the MAE and the detector fine-tuned from it;
- **reached from scratch**: the same MAE and the scratch detector of the same fine-tuning seed
  (what 2 labelled rooms make of any start that resembles the MAE). Kept well above it: the
  detector still computes the pretrained features; near it: fine-tuning overwrote them;
- **pretrained vs scratch detector** of the same seed, beside **scratch vs scratch** and
  **pretrained vs pretrained** of different seeds: whether the two starts end in different
  representations at all, against the spread between runs of one start;
- **random vs random**: two untrained networks, the floor any two networks of this
  architecture share;

and the relative weight change from each MAE to its detector, per part of the encoder.

    T=bench_out/t23b D=detect_independent_d0_b2_s
    .venv/bin/python benchmarks/bench_kept.py --store $T/rooms_independent_d0_64.zarr \\
        --split $T/split_d0.json --scratch $T/${D}{0,1,2,3}_scratch_f500 \\
        --pretrained $T/${D}{0,1,2,3}_opacity_only_decorrelated_r1024_p0_f500 \\
        --plot benchmarks/figures/kept.png

Writes ``--out`` (JSON: setup, every comparison's per-pair CKA per stage, weight changes) and
prints a table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from grid_store.dataset import GridDataset, collate_grids  # noqa: E402
from model.probing import EncoderSource, checkpoint_source, random_source  # noqa: E402
from model.probing.similarity import (  # noqa: E402
    CrossMoments,
    add_map_pair,
    encoder_parts,
    linear_recovery,
    room_cells,
    weight_change,
)

CHECKPOINT = "checkpoints/best.pt"
"""The checkpoint a fine-tuning run was tested with (its best on validation rooms)."""


@dataclass
class Comparison:
    """Two sources whose stages are compared, and the running sums per stage over the even
    and over the odd rooms (recovery is fitted on one, scored on the other; CKA reads both)."""

    kind: str
    a: str
    b: str
    moments: list[dict[str, CrossMoments]] = field(default_factory=list)


def run_config(run: Path) -> dict[str, Any]:
    """A fine-tuning run's configuration (its seed, and the pretraining checkpoint it started
    from: ``pretrained``, None for scratch)."""
    path = run / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not a fine-tuning run folder")
    return json.loads(path.read_text())["config"]


def plan(args: argparse.Namespace) -> tuple[dict[str, EncoderSource], list[Comparison],
                                            list[dict[str, Any]]]:  # fmt: skip
    """The sources (label -> source), the comparisons, and the (scratch, pretrained, MAE)
    runs each pair names."""
    if len(args.scratch) != len(args.pretrained):
        raise ValueError("--scratch and --pretrained: one scratch run per pretrained run")
    sources: dict[str, EncoderSource] = {}
    pairs = []
    for scratch, pretrained in zip(args.scratch, args.pretrained, strict=True):
        first, second = run_config(scratch), run_config(pretrained)
        seed, pseed, mae = first["seed"], second["seed"], second.get("pretrained")
        if first.get("pretrained") is not None or mae is None:
            raise ValueError(f"{scratch} must be a scratch run and {pretrained} a pretrained one")
        if seed != pseed:
            raise ValueError(f"{scratch} (seed {seed}) and {pretrained} (seed {pseed}) are not "
                             "a pair: give them in the same fine-tuning seed order")  # fmt: skip
        share = second.get("carried_share", 1.0)
        if share != 1.0:  # its start was not the MAE: "kept" would measure against the wrong one
            raise ValueError(f"{pretrained}: started at carried_share {share}, not from the MAE")
        for path in (scratch / CHECKPOINT, pretrained / CHECKPOINT, Path(mae)):
            if not path.is_file():
                raise FileNotFoundError(f"{path}: no such checkpoint")
        names = {"scratch": f"scratch s{seed}", "pretrained": f"pretrained s{seed}",
                 "mae": Path(mae).parent.parent.name}  # fmt: skip
        for key, path in (("scratch", scratch / CHECKPOINT),
                          ("pretrained", pretrained / CHECKPOINT), ("mae", Path(mae))):  # fmt: skip
            if names[key] not in sources:  # pairs share their MAE
                sources[names[key]] = checkpoint_source(path, names[key], args.resolution)
        pairs.append({"seed": seed, **names, "mae_path": mae,
                      "runs": {"scratch": str(scratch), "pretrained": str(pretrained)}})
    comparisons = []
    for p in pairs:
        comparisons += [Comparison("kept", p["mae"], p["pretrained"]),
                        Comparison("reached from scratch", p["mae"], p["scratch"]),
                        Comparison("pretrained vs scratch detector", p["pretrained"],
                                   p["scratch"])]  # fmt: skip
    # each seed with the next, cyclically; two seeds make one pair, one none
    following = pairs[1:] + pairs[:1] if len(pairs) > 2 else pairs[1:]
    for p, q in zip(pairs, following, strict=False):  # with 2 or 1 seeds, following is shorter
        comparisons += [Comparison("scratch vs scratch", p["scratch"], q["scratch"]),
                        Comparison("pretrained vs pretrained", p["pretrained"],
                                   q["pretrained"])]  # fmt: skip
    return sources, comparisons, pairs


def random_pair(reference: EncoderSource, seeds: tuple[int, int]
                ) -> tuple[dict[str, EncoderSource], Comparison]:  # fmt: skip
    """Two untrained networks of ``reference`` 's architecture, and their comparison."""
    sources = {f"random {s}": dataclasses.replace(
        random_source(reference.network.config, s, reference.alpha_step), name=f"random {s}")
        for s in seeds}  # fmt: skip
    return sources, Comparison("random vs random", *sources)


def measure(sources: dict[str, EncoderSource], comparisons: list[Comparison], store: str,
            scenes: list[str], resolution: int, batch: int) -> None:  # fmt: skip
    """Every comparison's per-stage moments over every room cell of ``scenes``."""
    conventions = {s.alpha_step for s in sources.values()}
    datasets = {step: GridDataset(store, scenes, size=resolution, alpha_step=step)
                for step in conventions}  # fmt: skip
    for start in range(0, len(scenes), batch):
        indices = list(range(start, min(start + batch, len(scenes))))
        grids = {step: collate_grids(d.__getitems__(indices)) for step, d in datasets.items()}
        valid = next(iter(grids.values()))["valid"]
        maps = {name: s.maps(grids[s.alpha_step]["rgba"], grids[s.alpha_step]["valid"])
                for name, s in sources.items()}  # fmt: skip
        shapes = [m.shape[2:] for m in next(iter(maps.values()))]
        cells = [room_cells(valid, shape) for shape in shapes]
        for c in comparisons:
            if not c.moments:
                c.moments = [{k: CrossMoments() for k in ("even", "odd")} for _ in shapes]
            for stage, moments in enumerate(c.moments):
                for room, index in enumerate(indices):
                    add_map_pair(moments[("even", "odd")[index % 2]], maps[c.a][stage][room],
                                 maps[c.b][stage][room], cells[stage][room])  # fmt: skip
        logging.info("rooms %d-%d of %d", indices[0], indices[-1], len(scenes))


def recovery(moments: dict[str, CrossMoments], ridge: float) -> float:
    """Recovery of the first source from the second, fitted on each half of the rooms and
    scored on the other, averaged (NaN where a half holds fewer than 2 cells)."""
    if min(moments["even"].count, moments["odd"].count) < 2:
        return math.nan
    return statistics.fmean([linear_recovery(moments["even"], moments["odd"], ridge),
                             linear_recovery(moments["odd"], moments["even"], ridge)])  # fmt: skip


def summarise(comparisons: list[Comparison], ridge: float) -> list[dict[str, Any]]:
    """Per kind of comparison: every pair's CKA and recovery per stage, means and spreads."""
    kinds = list(dict.fromkeys(c.kind for c in comparisons))
    rows = []
    for kind in kinds:
        mine = [c for c in comparisons if c.kind == kind]
        row: dict[str, Any] = {"kind": kind, "pairs": [[c.a, c.b] for c in mine]}
        for name, measure_of in (("cka", lambda m: (m["even"] + m["odd"]).linear_cka()),
                                 ("recovery", lambda m: recovery(m, ridge))):  # fmt: skip
            each = [[measure_of(m) for m in c.moments] for c in mine]
            stages = list(zip(*each, strict=True))
            row[name] = {"each": each, "mean": [statistics.fmean(s) for s in stages],
                         "sd": [statistics.stdev(s) if len(s) > 1 else 0.0 for s in stages]}
        rows.append(row)
    return rows


def weight_changes(sources: dict[str, EncoderSource], pairs: list[dict[str, Any]]
                   ) -> list[dict[str, Any]]:  # fmt: skip
    """Each MAE -> its detector: relative change of the encoder's weights per part."""
    out = []
    for p in pairs:
        start = sources[p["mae"]].network.encoder.state_dict()
        end = sources[p["pretrained"]].network.encoder.state_dict()
        parts = encoder_parts(len(sources[p["mae"]].network.encoder.stages))
        out.append({"seed": p["seed"], "mae": p["mae"], "change": weight_change(start, end, parts)})
    return out


MEASURES = (("cka", "linear CKA"),
            ("recovery", "first recovered from second (held-out R²)"))  # fmt: skip


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4), sharex=True)
    stages = list(range(1, len(rows[0]["cka"]["mean"]) + 1))
    for ax, (key, label) in zip(axes, MEASURES, strict=True):
        for row in rows:
            ax.errorbar(stages, row[key]["mean"], yerr=row[key]["sd"], marker="o", capsize=3,
                        label=f"{row['kind']} ({len(row['pairs'])})")  # fmt: skip
        ax.set_xticks(stages)
        ax.set_xlabel("encoder stage")
        ax.set_ylabel(label)
        ax.set_ylim(min(0.0, *(min(r[key]["mean"]) for r in rows)) - 0.02, 1.02)
    axes[0].set_title("What fine-tuning keeps of the MAE (mean ± sd over pairs)", fontsize=10)
    axes[1].set_title("Recovery of the first network's features from the second's", fontsize=10)
    axes[0].legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", required=True, help="the grid store the runs were tested on")
    parser.add_argument("--split", required=True, help='JSON file {"test": [...], ...}')
    parser.add_argument("--rooms", type=int, default=48, help="the first N test rooms")
    parser.add_argument("--scratch", type=Path, nargs="+", required=True,
                        help="scratch fine-tuning runs")  # fmt: skip
    parser.add_argument("--pretrained", type=Path, nargs="+", required=True,
                        help="pretrained fine-tuning runs, the same seeds in the same order")
    parser.add_argument("--random-seeds", type=int, nargs=2, default=(0, 1))
    parser.add_argument("--ridge", type=float, default=0.1,
                        help="recovery's ridge, relative to the mean feature variance")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=4, help="rooms per forward pass")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("bench_out/bench_kept.json"))
    parser.add_argument("--plot", type=Path, help="PNG of CKA against encoder stage")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    try:
        scenes = json.loads(Path(args.split).read_text())["test"][: args.rooms]
        sources, comparisons, pairs = plan(args)
    except (ValueError, FileNotFoundError, KeyError) as error:
        parser.error(str(error))
    randoms, comparison = random_pair(sources[pairs[0]["mae"]], tuple(args.random_seeds))
    sources.update(randoms)
    comparisons.append(comparison)
    measure(sources, comparisons, args.store, scenes, args.resolution, args.batch_size)
    rows = summarise(comparisons, args.ridge)
    changes = weight_changes(sources, pairs)

    stages = len(rows[0]["cka"]["mean"])
    for key, label in MEASURES:
        print(f"{label} per encoder stage, {len(scenes)} test rooms (mean ± sd over pairs)")
        print(f"{'comparison':<32} {'pairs':>5} "
              + " ".join(f"{f'stage {i + 1}':>14}" for i in range(stages)))  # fmt: skip
        for row in rows:
            print(f"{row['kind']:<32} {len(row['pairs']):>5} "
                  + " ".join(f"{m:7.3f} ± {s:.3f}" for m, s in zip(
                      row[key]["mean"], row[key]["sd"], strict=True)))  # fmt: skip
        print()
    print("relative weight change, MAE -> its detector (||W_ft - W_mae|| / ||W_mae||)")
    parts = list(changes[0]["change"])
    print(f"{'seed':>4} {'MAE':<58} " + " ".join(f"{p:>8}" for p in parts))
    for c in changes:
        print(f"{c['seed']:>4} {c['mae']:<58} "
              + " ".join(f"{c['change'][p]:8.3f}" for p in parts))  # fmt: skip

    results = {
        "setup": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                  "scratch": [str(p) for p in args.scratch],
                  "pretrained": [str(p) for p in args.pretrained],
                  "test_scenes": scenes, "checkpoint": CHECKPOINT,
                  "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
                  "torch": torch.__version__},  # fmt: skip
        "pairs": pairs,
        "comparisons": rows,
        "weight_change": changes,
        "seconds": time.perf_counter() - started,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    if args.plot:
        plot(rows, args.plot)
    print(f"\n{time.perf_counter() - started:.0f} s; wrote {args.out}"
          + (f" and {args.plot}" if args.plot else ""))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
