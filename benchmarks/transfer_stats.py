"""The transfer benchmark's arithmetic (``bench_transfer.py``): a run's headline score
pooled over test rooms, the paired gain of pretrained over scratch runs with its bootstrap
intervals, and the spread of a group of runs."""

from __future__ import annotations

import math
import statistics
from typing import Any

import numpy as np

from model.metrics.detection import DetectionEvaluator
from model.metrics.semantic import scores_from_confusion


def headline_score(task: str, states: list[tuple[str, dict]]) -> float:
    """The headline figure of the scene states ``(scene id, state)`` taken together (a scene
    drawn twice counts twice)."""
    if task == "detect":
        first = states[0][1]
        merged = {"config": first["config"], "labelled": first["labelled"],
                  "scenes": {f"{sid}#{i}": next(iter(s["scenes"].values()))
                             for i, (sid, s) in enumerate(states)}}  # fmt: skip
        return DetectionEvaluator.from_state_dict(merged).compute()["ap50"]
    confusion = sum(s["confusion"] for _, s in states)
    return scores_from_confusion(confusion)["miou"]


def paired_gain(task: str, pairs: list[tuple[dict, dict]], test: list[str], draws: int,
                seed: int) -> dict[str, float]:  # fmt: skip
    """Mean over pairs of (pretrained - scratch) headline on the test rooms, each pair's own
    difference, and two 95 % bootstrap intervals: over test rooms (each draw resamples the
    rooms once for all pairs), and over pairs and rooms together (each draw also resamples
    the pairs), which also counts how much one fine-tuning run differs from the next."""

    def pair_gains(rooms: list[str]) -> np.ndarray:
        return np.array([headline_score(task, [(r, warm[r]) for r in rooms])
                         - headline_score(task, [(r, cold[r]) for r in rooms])
                         for warm, cold in pairs])  # fmt: skip

    rng = np.random.default_rng(seed)
    over_rooms, over_pairs = [], []
    for _ in range(draws):
        gains = pair_gains([test[i] for i in rng.integers(0, len(test), len(test))])
        over_rooms.append(gains.mean())
        over_pairs.append(gains[rng.integers(0, len(pairs), len(pairs))].mean())
    low, high = np.percentile(over_rooms, [2.5, 97.5])
    pairs_low, pairs_high = np.percentile(over_pairs, [2.5, 97.5])
    each = pair_gains(test)
    return {"gain": float(each.mean()), "ci95_low": float(low), "ci95_high": float(high),
            "ci95_pairs_low": float(pairs_low), "ci95_pairs_high": float(pairs_high),
            "pair_gains": each.tolist(), "pairs": len(pairs), "draws": draws}  # fmt: skip


def spread(values: list[float]) -> dict[str, float]:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return {"mean": math.nan, "std": math.nan, "min": math.nan, "max": math.nan}
    return {"mean": statistics.fmean(finite),
            "std": statistics.stdev(finite) if len(finite) > 1 else 0.0,
            "min": min(finite), "max": max(finite)}  # fmt: skip


def validation_gap(pairs: list[tuple[list[tuple[int, float]], list[tuple[int, float]]]]
                   ) -> dict[str, Any]:  # fmt: skip
    """How the gain develops along fine-tuning, from each pair's validation curves
    ``[(step, value)]`` (pretrained, scratch): at every step both runs of every pair were
    validated, the gap between their best validation scores so far (the checkpoint a run
    stopped there would keep), its mean over pairs and its smallest and largest pair, and
    ``lead_until``: the last step of a positive mean gap that stays at or below 0 from the
    next step to the end (``None`` when the mean gap ends positive or never was)."""
    common = set.intersection(*({s for s, _ in warm} & {s for s, _ in cold}
                                for warm, cold in pairs))  # fmt: skip
    steps = sorted(common)

    def best_so_far(curve: list[tuple[int, float]]) -> np.ndarray:
        values = dict(curve)
        return np.maximum.accumulate(np.array([values[s] for s in steps]))

    gaps = np.stack([best_so_far(warm) - best_so_far(cold) for warm, cold in pairs])
    mean = gaps.mean(axis=0)
    lead_until = None
    if len(steps) and mean[-1] <= 0 and (mean > 0).any():
        last_positive = int(np.flatnonzero(mean > 0)[-1])
        lead_until = steps[last_positive]
    return {"steps": steps, "gain": mean.tolist(), "min": gaps.min(axis=0).tolist(),
            "max": gaps.max(axis=0).tolist(), "pairs": len(pairs),
            "lead_until": lead_until}  # fmt: skip
