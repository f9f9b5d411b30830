"""The transfer benchmark's runs (``bench_transfer.py``): its rooms, the MAEs it pretrains
and the fine-tuning runs it pairs, each reused from ``--work`` when a finished run there was
made with the same settings.

Rooms are named by the seed that draws them (``room000123``) and written as their exact
ground-truth grids; a fine-tuning run keeps the checkpoint best on the validation rooms and
scores it once on the test rooms, keeping each test room's metric state for the bootstrap
(``transfer_stats.py``).
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch

from grid_store import GridStore
from model.tasks import finetune, make_config
from model.tasks.evaluation import evaluate_checkpoint
from model.tasks.pretrain import PretrainConfig, pretrain


def room_ids(first_seed: int, n: int) -> list[str]:
    return [f"room{first_seed + i:06d}" for i in range(n)]


def write_room(scene: str, url: str, resolution: int, room_config) -> None:
    """Write the ground-truth grid of room ``scene`` (named by its seed) into the store."""
    from pipeline.synthetic.ground_truth import sample_ground_truth
    from pipeline.synthetic.room import make_room

    grid = sample_ground_truth(make_room(int(scene[4:]), room_config), resolution)
    GridStore(url).write_grid(scene, grid.with_empty_space(0.01))


def write_rooms(url: str, scene_ids: list[str], resolution: int, room_config,
                workers: int = 0) -> float:  # fmt: skip
    """Ground-truth grids of the rooms ``scene_ids`` not yet in the store, by ``workers``
    processes (each room its own group, so they write side by side); seconds."""
    tic = time.perf_counter()
    have = set(GridStore(url).list_scenes())
    todo = [scene for scene in scene_ids if scene not in have]
    if todo:  # the first alone: it creates the store's groups
        write_room(todo.pop(0), url, resolution, room_config)
    if not workers:
        for scene in todo:
            write_room(scene, url, resolution, room_config)
        return time.perf_counter() - tic
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from functools import partial

    write = partial(write_room, url=url, resolution=resolution, room_config=room_config)
    # spawn: a forked child inherits zarr's event-loop thread stopped, and hangs on it
    spawn = multiprocessing.get_context("spawn")
    # one thread each: a worker's default threads oversubscribe the cores many times over
    with ProcessPoolExecutor(workers, mp_context=spawn, initializer=torch.set_num_threads,
                             initargs=(1,)) as pool:  # fmt: skip
        list(pool.map(write, todo, chunksize=8))
    return time.perf_counter() - tic


NEWER_SETTINGS = {"carried_stages": None, "network": "skip", "carried_share": 1.0}
"""Fine-tuning settings younger than some runs in a work folder: a run whose config lacks
one ran with this value."""


def check_reuse(out: Path, wanted: dict[str, Any]) -> None:
    """Refuse to reuse the finished run ``out`` if its recorded config differs from ``wanted``
    (a run name says arm, seeds and tags, not every setting): name the setting and the way
    out."""
    recorded = json.loads((out / "config.json").read_text())["config"]
    for key, value in wanted.items():
        if key not in recorded and key not in NEWER_SETTINGS:
            continue
        ran = recorded.get(key, NEWER_SETTINGS.get(key))
        if ran != value:
            raise SystemExit(f"{out}: finished with {key}={ran!r}, this invocation asks "
                             f"{value!r}: name these runs apart with --pretrain-tag / "
                             "--finetune-tag, or redo them with --fresh")  # fmt: skip


def calibrate_steps(args, store: str, scenes: list[str], seconds: float) -> int:
    """Pretraining steps that fit ``seconds`` on ``--pretrain-device``: the slower of the
    MAE's step (forward, backward, AdamW; timed on a real batch after a warm-up) and the
    loading of a batch (timed here, shared by ``--pretrain-workers``), 15 % kept for worker
    restarts, checkpoints and validation. Processes sharing a GPU should calibrate together,
    as they will train."""
    from grid_store.dataset import GridDataset, collate_grids
    from model import build_mae

    device = torch.device(args.pretrain_device)
    model = build_mae(args.preset, resolution=args.resolution, mask_ratio=args.mask_ratio,
                      mask_block=args.mask_block, head=args.head).to(device)  # fmt: skip
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-4)
    data = GridDataset(store, scenes, size=args.resolution, crop="random", augment=True)
    tic, loads = time.perf_counter(), 4
    for i in range(loads):
        first = i * args.pretrain_batch
        batch = collate_grids(data.__getitems__(
            [(first + j) % len(data) for j in range(args.pretrain_batch)]))  # fmt: skip
    per_load = (time.perf_counter() - tic) / loads / max(1, args.pretrain_workers)
    rgba, valid = batch["rgba"].to(device).float(), batch["valid"].to(device)

    def step() -> None:
        optimiser.zero_grad(set_to_none=True)
        model(rgba, valid).loss.backward()
        optimiser.step()

    for _ in range(5):
        step()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    tic, n = time.perf_counter(), 20
    for _ in range(n):
        step()
    sync()
    per_step = max((time.perf_counter() - tic) / n, per_load)
    return max(1, int(0.85 * seconds / per_step))


def run_pretraining(args, store: str, scenes: list[str], objective: str, seed: int,
                    out: Path, shuffle_targets: bool = False) -> dict[str, Any]:  # fmt: skip
    done = out / "metrics.json"
    if done.is_file() and not args.fresh:
        wanted = {"scenes": scenes, "lr": args.pretrain_lr, "objective": objective,
                  "shuffle_targets": shuffle_targets}  # fmt: skip
        if not args.pretrain_seconds:  # calibrated runs have their own step counts
            wanted |= {"max_steps": args.pretrain_steps, "batch_size": args.pretrain_batch}
        check_reuse(out, wanted)
        metrics = json.loads(done.read_text())
        # A run made elsewhere (a GPU machine): its checkpoint is the one beside this file.
        metrics["checkpoint"] = str(out / "checkpoints" / Path(metrics["checkpoint"]).name)
        return metrics
    held_out = scenes[:2]  # MAE validation: reconstruction of two unseen pretraining rooms
    steps, probe_every = args.pretrain_steps, args.probe_every
    if args.pretrain_seconds:
        steps = calibrate_steps(args, store, scenes[2:], args.pretrain_seconds)
        probe_every = max(1, steps // 4)
        logging.getLogger(__name__).warning("%s seed %d: %d steps fit %.0f s on %s", objective,
                                            seed, steps, args.pretrain_seconds,
                                            args.pretrain_device)  # fmt: skip
    steps_per_epoch = (len(scenes) - len(held_out)) // args.pretrain_batch
    config = PretrainConfig(
        store_url=store, out_dir=str(out), preset=args.preset, resolution=args.resolution,
        scenes=scenes, val_scenes=held_out, batch_size=args.pretrain_batch,
        epochs=max(1, math.ceil(steps / steps_per_epoch)),
        max_steps=steps, lr=args.pretrain_lr, num_workers=args.pretrain_workers,
        log_every=20, eval_every=10**9, checkpoint_every=probe_every, keep_checkpoints=0,
        device=args.pretrain_device, objective=objective, seed=seed, resume=out.exists(),
        shuffle_targets=shuffle_targets,
        model_overrides={"mask_ratio": args.mask_ratio, "mask_block": args.mask_block,
                         "head": args.head},
    )  # fmt: skip
    return pretrain(config)


def labelled_rooms(pool: list[str], budget: int, seed: int, policy: str) -> list[str]:
    """The rooms one fine-tuning run learns from. ``first``: the pool's first ``budget`` for
    every seed, so at one labelled room every pair reads the same room and the interval
    over pairs says nothing about the choice of room. ``by_seed``: seed ``s`` reads the
    ``s``-th window of ``budget`` rooms (wrapping round the pool), so pairs of different
    seeds read different labels and the interval over pairs spans them; seed 0 reads what
    ``first`` reads."""
    if policy == "first":
        return pool[:budget]
    return [pool[(seed * budget + i) % len(pool)] for i in range(budget)]


def run_finetuning(args, store: str, sets: dict[str, list[str]], labelled: list[str],
                   seed: int, pretrained: str | None, out: Path) -> dict[str, Any]:  # fmt: skip
    """One fine-tuning run, its best checkpoint on the validation rooms scored on the test
    rooms (with each test room's metric state, for the bootstrap)."""
    done = out / "test.pt"
    budget = len(labelled)
    batch = min(args.finetune_batch, budget)
    # the settings a finished run must share with this invocation to be reused
    protocol = {"max_steps": args.finetune_steps, "lr": args.finetune_lr,
                "carried_lr_scale": args.carried_lr_scale, "frozen_warmup": args.frozen_warmup,
                "eval_every": args.eval_every, "carried_stages": args.carried_stages,
                "train_scenes": labelled, "batch_size": batch, "seed": seed,
                "carried_share": args.carried_share if pretrained else 1.0,
                "freeze_pretrained": args.freeze_encoder,
                **({"network": args.semantic_network} if args.task == "semantics" else {})}
    if done.is_file() and not args.fresh:
        check_reuse(out, protocol)
        return torch.load(done, weights_only=False)
    extra = ({"detector_overrides": {"channels": args.fpn_channels,
                                     "stage_norm": args.stage_norm}}
             if args.task == "detect" else {})  # fmt: skip
    config = make_config(
        args.task, store_url=store, out_dir=str(out), preset=args.preset,
        resolution=args.resolution, scenes=labelled + sets["val"], val_scenes=sets["val"],
        epochs=math.ceil(args.finetune_steps / (budget // batch)), augment=True,
        num_workers=0, log_every=10, checkpoint_every=10**9, keep_checkpoints=1, device="cpu",
        **({"pretrained": pretrained} if pretrained else {"scratch": True}), **protocol, **extra,
    )  # fmt: skip
    if out.exists():  # an interrupted run: start it again
        import shutil

        shutil.rmtree(out)
    tic = time.perf_counter()
    summary = finetune(config)
    test = evaluate_checkpoint(summary["best_checkpoint"], sets["test"], per_scene=True)
    result = {"summary": summary, "test": test, "seconds": time.perf_counter() - tic}
    torch.save(result, done)
    return result


def checkpoint_at(run: Path, step: int) -> str:
    """The checkpoint a pretraining run kept at ``step`` (one every ``--probe-every``)."""
    path = run / "checkpoints" / f"step_{step:06d}.pt"
    if not path.is_file():
        kept = sorted(p.name for p in (run / "checkpoints").glob("step_*.pt"))
        raise SystemExit(f"--from-step {step}: {run} kept no checkpoint there (it has {kept})")
    return str(path)


def validation_curve(run_dir: str, key: str) -> list[tuple[int, float]]:
    """``(step, value)`` of the run's ``val/<key>`` (its TensorBoard scalars)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(Path(run_dir) / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    tag = f"val/{key}"
    if tag not in events.Tags()["scalars"]:
        return []
    return [(e.step, e.value) for e in events.Scalars(tag)]
