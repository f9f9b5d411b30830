"""The transfer benchmark's figures (``bench_transfer.py --plot``, ``--curves``,
``--rooms-plot``), drawn from its results JSON: score against labelled rooms, validation
curves, and each fine-tuning seed's pair at the smallest budget against the rooms it
labelled."""

from __future__ import annotations

from pathlib import Path
from typing import Any

COLOURS = ["tab:gray", "tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:red"]


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def init_colours(inits: list[str]) -> dict[str, str]:
    """One colour per init, scratch first (grey)."""
    return dict(zip(inits, COLOURS, strict=False))


def save(fig, path: Path) -> None:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def plot_budgets(results: dict[str, Any], path: Path, headline: tuple[str, str],
                 inits: list[str]) -> None:  # fmt: skip
    """Test headline against labelled rooms, one panel per arm, one line per init: mean and
    min-max over fine-tuning runs."""
    plt = pyplot()
    from matplotlib import ticker

    setup = results["setup"]
    key, label = headline
    arms = setup["arms"]
    fig, axes = plt.subplots(1, len(arms), figsize=(max(8, 6 * len(arms)), 4.5), squeeze=False)
    colours = init_colours(inits)
    for ax, arm in zip(axes[0], arms, strict=True):
        for k, init in enumerate(inits):
            rows = [r for r in results["table"] if r["arm"] == arm and r["init"] == init]
            if not rows:
                continue
            x = [r["budget"] * (1 + 0.04 * (k - 1)) for r in rows]  # side by side
            mean = [100 * r[key]["mean"] for r in rows]
            err = [[100 * (r[key]["mean"] - r[key]["min"]) for r in rows],
                   [100 * (r[key]["max"] - r[key]["mean"]) for r in rows]]  # fmt: skip
            ax.errorbar(x, mean, yerr=err, marker="o", capsize=4, color=colours[init],
                        label=f"pretrained: {init}" if init != "scratch" else "scratch")
        ax.set_xscale("log", base=2)
        ax.set_xticks(setup["budgets"])
        ax.get_xaxis().set_major_formatter(ticker.ScalarFormatter())
        ax.set_xlabel("labelled rooms")
        ax.set_ylabel(f"test {label} (%)")
        ax.set_title(f"rooms: textures {arm.replace('_', ' ')}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=9)
    task = {"semantics": "semantic voxel labelling", "detect": "oriented-box detection"}
    fig.suptitle(f"{task[setup['task']]}, {setup['preset']} at {setup['resolution']}^3, "
                 f"{setup['scenes']['test']} test rooms: mean and min-max over runs",
                 fontsize=11)  # fmt: skip
    save(fig, path)
    plt.close(fig)


def plot_curves(results: dict[str, Any], path: Path, headline: tuple[str, str],
                inits: list[str]) -> None:  # fmt: skip
    """Validation headline against fine-tuning step, one panel per arm and budget, one line
    per run (colour by init): where each run's best checkpoint came from, and whether the
    schedule ended before the score stopped rising. Below each, the paired gap of the best
    validation scores so far (``results["validation_gap"]``): mean over pairs, and the band
    between the smallest and largest pair."""
    plt = pyplot()
    setup = results["setup"]
    key, label = headline
    panels = sorted({(r["arm"], r["budget"]) for r in results["runs"]})
    gaps = results.get("validation_gap", [])
    rows = 2 if gaps else 1
    fig, axes = plt.subplots(rows, len(panels), figsize=(6.5 * len(panels), 4.5 * rows),
                             squeeze=False, sharex="col")  # fmt: skip
    colours = init_colours(inits)
    for column, (arm, budget) in enumerate(panels):
        ax = axes[0, column]
        labelled = set()
        for run in (r for r in results["runs"] if (r["arm"], r["budget"]) == (arm, budget)):
            curve = run["val_curve"]
            if not curve:
                continue
            steps, values = zip(*curve, strict=True)
            name = run["init"] if run["init"] == "scratch" else f"pretrained: {run['init']}"
            ax.plot(steps, [100 * v for v in values], color=colours[run["init"]], alpha=0.8,
                    marker=".", label=None if name in labelled else name)  # fmt: skip
            labelled.add(name)
            ax.plot(run["best_step"], 100 * run[f"val_{key}"], marker="*", markersize=11,
                    color=colours[run["init"]])  # fmt: skip
        ax.set_ylabel(f"validation {label} (%)")
        ax.set_title(f"textures {arm.replace('_', ' ')}, {budget} labelled rooms")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=9)
        if rows == 2:
            ax = axes[1, column]
            for gap in (g for g in gaps if (g["arm"], g["budget"]) == (arm, budget)):
                colour = colours[gap["objective"]]
                ax.plot(gap["steps"], [100 * v for v in gap["gain"]], color=colour, marker=".",
                        label=f"{gap['objective']}, mean of {gap['pairs']} pairs")  # fmt: skip
                low, high = ([100 * v for v in gap[k]] for k in ("min", "max"))
                ax.fill_between(gap["steps"], low, high, color=colour, alpha=0.15)
            ax.axhline(0, color="black", linewidth=0.8)
            ax.set_ylabel(f"best {label} so far, pretrained - scratch")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=9)
        axes[-1, column].set_xlabel("fine-tuning step")
    fig.suptitle(f"validation {label} along fine-tuning (star: the checkpoint scored on the "
                 f"{setup['scenes']['test']} test rooms)", fontsize=11)  # fmt: skip
    save(fig, path)
    plt.close(fig)


def plot_rooms(results: dict[str, Any], path: Path, headline: tuple[str, str],
               inits: list[str]) -> None:  # fmt: skip
    """At the smallest budget of each arm, one column per fine-tuning seed (labelled by the
    rooms it labelled): the scratch run's score and every pretrained run's beside it, so the
    spread between labelled rooms and the gain within each pair read apart."""
    plt = pyplot()
    key, label = headline
    arms = results["setup"]["arms"]
    fig, axes = plt.subplots(len(arms), 1, figsize=(10, 4.2 * len(arms)), squeeze=False)
    colours = init_colours(inits)
    markers = ["o", "s", "^", "D"]
    for ax, arm in zip(axes[:, 0], arms, strict=True):
        mine = [r for r in results["runs"] if r["arm"] == arm]
        if not mine:
            continue
        budget = min(r["budget"] for r in mine)
        mine = [r for r in mine if r["budget"] == budget]
        seeds = sorted({r["seed"] for r in mine})
        for run in mine:
            x = seeds.index(run["seed"])
            pretrained = run["init"] != "scratch"
            offset = 0.15 * (1 + (run["pretrain_seed"] or 0)) if pretrained else 0.0
            name = (f"pretrained: {run['init']} p{run['pretrain_seed']}" if pretrained
                    else "scratch")  # fmt: skip
            ax.plot(x + offset, 100 * run[key], linestyle="none", color=colours[run["init"]],
                    marker=markers[(run["pretrain_seed"] or 0) % len(markers)] if pretrained
                    else "_", markersize=9 if pretrained else 22, label=name)  # fmt: skip
        handles, names = ax.get_legend_handles_labels()
        unique = dict(zip(names, handles, strict=True))
        ax.legend(unique.values(), unique.keys(), fontsize=9)
        labelled = {r["seed"]: r.get("labelled") or [] for r in mine}  # one set per seed
        ax.set_xticks(range(len(seeds)))
        ax.set_xticklabels([f"seed {s}\n" + ", ".join(labelled[s]) for s in seeds],
                           fontsize=8)  # fmt: skip
        ax.set_ylabel(f"test {label} (%)")
        ax.set_title(f"textures {arm.replace('_', ' ')}, {budget} labelled room(s) per seed: "
                     "scratch (bar) and pretrained")  # fmt: skip
        ax.grid(alpha=0.3, axis="y")
    save(fig, path)
    plt.close(fig)
