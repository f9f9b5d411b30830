"""nerfstudio's nerfacto and our NeRF trainer, side by side, for the same CPU time budget.

For a synthetic room (and Blender lego_200 when ``../shared/data`` has it), both methods
train on the same pixels, cameras and training views for the same training seconds on
the same number of CPU threads, and are scored on the same held-out views:

- **ours**: :class:`nerf_training.trainer.NerfTrainer` with ``time_budget_s``, RGB only
  (nerfacto has no depth supervision; the room's depth maps are not used by either).
- **nerfacto**: nerfstudio's own ``Trainer``, configured by the same tyro parse of the
  same flags as ``ns-train nerfacto ...`` and run through ns-train's own steps, in a child
  process (nerfstudio's writers and the LPIPS stand-in are process-wide); ns-train has no
  time budget, so a training callback sets nerfstudio's ``stop_training`` once the budget
  is spent, and its trainer ends as any run ends, saving its checkpoint. Its clock starts
  when its ray-sampling worker has the first batch ready (the worker's start-up is set-up,
  as our trainer's image loading is). Its CPU flags are those of the nerfstudio tests
  (torch hash grid, fewer samples and levels) with ``--rays`` rays per step: 1024 by
  default, which trained the most rays per second on the room (one thread, 20 s runs:
  256 rays ~2.1k rays/s, 1024 ~2.6k, 4096 ~1.8k; 4096, nerfacto's GPU default, would also
  leave a 300 s budget only a few hundred steps). Evaluation during training is off (its
  seconds would count against the budget); the rest is nerfacto's default (its
  learning-rate schedules, its pose refinement of the training cameras, its one
  ray-sampling worker process).

nerfacto trains on a nerfstudio-format copy of what our scene reader read
(``<work>/<scene>_nerfstudio/``): the same images (RGBA composited onto white, as
nerfstudio's own Blender reader does; nerfacto then renders on white), the same cameras,
and our trainer's held-out views as its ``val``/``test`` lists. Held-out PSNR is the mean
over those views of both renders against the same targets (RGBA composited onto white),
nerfacto rendering with its own model (``get_outputs_for_camera``) from our cameras mapped
into its frame (``dataparser_transforms.json``). For the room, both fields are extracted
the same way (:func:`pipeline.extract.extract_grid`: the capture's box, the same
resolution, colour averaged towards the same training cameras; nerfacto's from its run's
``config.yml``) and compared with the room's ground truth (:func:`pipeline.fidelity.
grid_fidelity`), beside the room's analytic field extracted the same way (the ceiling).

Prints a table, writes JSON (``--out``) and a PNG beside it (a held-out view per scene;
the room's grids in one slice).

    .venv-nerfstudio/bin/python benchmarks/bench_nerfstudio.py [--budget 300] \\
        [--scenes room lego] [--resolution 64] [--threads N] [--rays 1024] \\
        [--work DIR] [--out bench_out/bench_nerfstudio.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from grid_store import RadianceGrid
from nerf_training.images import composite_onto
from nerf_training.scene import Scene, load_scene
from nerf_training.trainer import NerfTrainer, TrainerConfig, psnr
from pipeline.extract import extract_grid
from pipeline.fidelity import alpha_on_step, grid_fidelity
from pipeline.nerfstudio.ns_train import CPU_MODEL_FLAGS
from pipeline.synthetic import generate_scene, make_room

LEGO = (
    Path(__file__).resolve().parents[1].parent / "shared" / "data" / "nerf_synthetic" / "lego_200"
)
WHITE = (1.0, 1.0, 1.0)
# The tests' CPU nerfacto: nerfstudio's torch hash grid and MLPs (no tiny-cuda-nn on a CPU),
# a smaller hash table, fewer levels and samples per ray.
NERFACTO_CPU_FLAGS = [
    "--machine.device-type", "cpu", "--vis", "tensorboard",
    "--pipeline.model.implementation", "torch",
    *CPU_MODEL_FLAGS,
    # the budget ends training, not a step count; no evaluation inside the budget
    "--max-num-iterations", "100000000",
    "--steps-per-eval-batch", "0", "--steps-per-eval-image", "0",
    "--steps-per-eval-all-images", "0",
]  # fmt: skip


# ---------------------------------------------------------------- captures


def nerfstudio_capture(scene: Scene, folder: Path) -> Path:
    """``scene`` (as our reader read it) written as a nerfstudio capture at ``folder``: its
    images (RGBA composited onto white), per-frame intrinsics and poses (the world frame
    as stored), its box, and its held-out views as nerfstudio's split lists (so nerfacto
    trains on our trainer's training views)."""
    cameras = scene.cameras
    if cameras.distortion.abs().max() > 0:
        raise ValueError(f"{scene.root}: distorted cameras are not copied (none of the "
                         "benchmark's scenes has any)")  # fmt: skip
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "images").mkdir(parents=True)
    frames = []
    for i, image in enumerate(scene.images.numpy()):
        name = f"images/frame_{i:05d}.png"  # zero-padded: nerfstudio sorts frames by name
        Image.fromarray(composite_onto(image, WHITE) if scene.has_alpha else image).save(
            folder / name
        )
        frames.append({
            "file_path": name,
            "transform_matrix": cameras.c2w[i].double().tolist(),
            "fl_x": float(cameras.fx[i]), "fl_y": float(cameras.fy[i]),
            "cx": float(cameras.cx[i]), "cy": float(cameras.cy[i]),
            "w": cameras.width, "h": cameras.height,
        })  # fmt: skip
    held = [frames[i]["file_path"] for i in scene.holdout_idx.tolist()]
    meta = {
        "camera_model": "PINHOLE",
        "aabb": scene.aabb.double().tolist(),
        "frames": frames,
        "train_filenames": [frames[i]["file_path"] for i in scene.train_idx.tolist()],
        "val_filenames": held,
        "test_filenames": held,
    }
    (folder / "transforms.json").write_text(json.dumps(meta, indent=1))
    return folder


def holdout_targets(scene: Scene) -> list[torch.Tensor]:
    """The held-out views as our trainer scores them: ``(H, W, 3)`` float in [0, 1], RGBA
    composited onto white (not rounded to 8 bits)."""
    targets = []
    for cam in scene.holdout_idx.tolist():
        p = scene.images[cam].float() / 255.0
        targets.append(p[..., :3] * p[..., 3:] + (1 - p[..., 3:]) if scene.has_alpha else p)
    return targets


# ---------------------------------------------------------------- nerfacto


def train_nerfacto(flags: list[str], budget_s: float, threads: int, log_path: str,
                   result_path: str) -> None:  # fmt: skip
    """Child process: ``ns-train <flags>`` stopped after ``budget_s`` training seconds.

    ns-train's own steps for one device (nerfstudio.scripts.train ``main`` and
    ``train_loop``), with one training callback that sets the trainer's ``stop_training``
    once the budget is spent: the loop then ends and nerfstudio saves its checkpoint as at
    the end of any run. Writes the steps, the seconds and the run's ``config.yml`` to
    ``result_path``; nerfstudio's console output goes to ``log_path``."""
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    torch.set_num_threads(threads)
    from pipeline.nerfstudio.lpips_stand_in import alexnet_weights_cached, install_lpips_stand_in

    if not alexnet_weights_cached():
        install_lpips_stand_in()  # as pipeline.nerfstudio.ns_train: LPIPS scores nan offline
    import tyro
    from nerfstudio.configs.method_configs import AnnotatedBaseConfigUnion
    from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackLocation
    from nerfstudio.scripts.train import _set_random_seed

    config = tyro.cli(AnnotatedBaseConfigUnion, args=flags)
    if config.data:
        config.pipeline.datamanager.data = config.data
    config.set_timestamp()
    config.print_to_terminal()
    config.save_config()
    _set_random_seed(config.machine.seed)
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    clock = {"steps": 0, "seconds": 0.0}

    def stop_at_budget(step: int) -> None:
        clock["steps"] += 1
        clock["seconds"] = time.perf_counter() - start
        if clock["seconds"] >= budget_s:
            trainer.stop_training = True

    trainer.callbacks.append(
        TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION], stop_at_budget)
    )
    # nerfstudio's ray-sampling worker starts a fresh interpreter and caches the images
    # while the first step waits for its batch: set-up, as our trainer's image loading is
    queue = getattr(trainer.pipeline.datamanager, "data_queue", None)
    waited = time.perf_counter()
    while queue is not None and queue.empty():
        time.sleep(0.01)
    clock["worker_start_s"] = time.perf_counter() - waited
    start = time.perf_counter()
    trainer.train()
    result = {**clock, "config": str(config.get_base_dir() / "config.yml")}
    Path(result_path).write_text(json.dumps(result))


def run_nerfacto(capture: Path, name: str, work: Path, budget: float, threads: int,
                 rays: int, background: str | None, scale_factor: float) -> dict:  # fmt: skip
    """nerfacto on ``capture`` for ``budget`` seconds in a child process: its steps,
    seconds and run ``config.yml``."""
    flags = ["nerfacto", *NERFACTO_CPU_FLAGS,
             "--pipeline.datamanager.train-num-rays-per-batch", str(rays),
             "--output-dir", str(work / "outputs"), "--experiment-name", name,
             "--data", str(capture)]  # fmt: skip
    if background is not None:
        flags += ["--pipeline.model.background-color", background]
    # as build-dataset's nerfstudio backend trains (flows.nerfstudio_backend): auto-scaling
    # alone leaves a room's walls in nerfacto's contracted region
    flags += ["nerfstudio-data", "--scale-factor", f"{scale_factor:g}"]
    log_path, result_path = work / f"{name}_nerfacto.log", work / f"{name}_nerfacto.json"
    result_path.unlink(missing_ok=True)
    # spawn: a fresh interpreter (fork would copy this process's torch state); nerfstudio's
    # ray-sampling worker and its own threads read OMP_NUM_THREADS
    os.environ["OMP_NUM_THREADS"] = str(threads)
    child = multiprocessing.get_context("spawn").Process(
        target=train_nerfacto, args=(flags, budget, threads, str(log_path), str(result_path))
    )
    child.start()
    child.join()
    if child.exitcode != 0 or not result_path.is_file():
        tail = log_path.read_text(errors="replace")[-3000:] if log_path.is_file() else ""
        raise RuntimeError(f"nerfacto on {capture} failed (exit {child.exitcode}); the end "
                           f"of {log_path}:\n{tail}")  # fmt: skip
    return {**json.loads(result_path.read_text()), "rays_per_step": rays, "log": str(log_path)}


def render_nerfacto(config_yml: Path, scene: Scene) -> list[torch.Tensor]:
    """nerfacto's renders of ``scene``'s held-out views, ``(H, W, 3)`` each: nerfstudio's
    model (``get_outputs_for_camera``, the average appearance embedding) at our cameras
    mapped into the run's frame (rotation part rotated, centre mapped)."""
    from nerfstudio.cameras.cameras import Cameras, CameraType

    from pipeline.nerfstudio.source import load_world_run

    world = load_world_run(config_yml)
    model, frame = world.field.field.model, world.field.frame
    views = scene.holdout_idx
    c2w = scene.cameras.c2w[views].double().numpy()  # (V, 4, 4) world frame
    poses = np.concatenate([
        np.einsum("ij,vjk->vik", frame.rotation, c2w[:, :3, :3]),
        frame.to_nerfstudio(c2w[:, :3, 3])[:, :, None],
    ], axis=2)  # fmt: skip
    cameras = Cameras(
        camera_to_worlds=torch.as_tensor(poses, dtype=torch.float32),
        fx=scene.cameras.fx[views, None], fy=scene.cameras.fy[views, None],
        cx=scene.cameras.cx[views, None], cy=scene.cameras.cy[views, None],
        width=scene.cameras.width, height=scene.cameras.height,
        camera_type=CameraType.PERSPECTIVE,
    )  # fmt: skip
    return [model.get_outputs_for_camera(cameras[i : i + 1])["rgb"].cpu().clamp(0, 1)
            for i in range(len(views))]  # fmt: skip


# ---------------------------------------------------------------- one scene


def compare(name: str, scene_dir: Path, args, threads: int, truth: RadianceGrid | None,
            background: str | None) -> dict:  # fmt: skip
    """Both methods on one scene: their rows, and what the picture shows."""
    scene = load_scene(scene_dir)
    capture = nerfstudio_capture(scene, args.work / f"{name}_nerfstudio")
    targets = holdout_targets(scene)
    origins = scene.camera_origins(scene.train_idx).numpy()
    box = {"bbox_min": tuple(scene.aabb[0].tolist()), "bbox_max": tuple(scene.aabb[1].tolist())}

    def scored(renders: list[torch.Tensor]) -> float:
        return float(np.mean([psnr(r, t) for r, t in zip(renders, targets, strict=True)]))

    load = os.getloadavg()
    nerfacto = run_nerfacto(capture, name, args.work, args.budget, threads, args.rays,
                            background, args.scale_factor)  # fmt: skip
    config_yml = Path(nerfacto["config"])
    ns_renders = render_nerfacto(config_yml, scene)
    rows = [{
        "scene": name, "method": "nerfacto", "steps": nerfacto["steps"],
        "seconds": nerfacto["seconds"], "rays_per_step": nerfacto["rays_per_step"],
        "psnr_holdout": scored(ns_renders), "worker_start_s": nerfacto["worker_start_s"],
        "run": str(config_yml.parent),
        "load_before": load, "load_after": os.getloadavg(),
    }]  # fmt: skip

    load = os.getloadavg()
    trainer = NerfTrainer(scene, TrainerConfig(
        max_steps=None, time_budget_s=args.budget, use_depth=False, num_threads=threads,
        progress=False,
    ))  # fmt: skip
    trainer.train()
    trainer.field.eval()
    ours_renders = [trainer.render_view_with_depth(cam)[0].cpu()
                    for cam in scene.holdout_idx.tolist()]  # fmt: skip
    rows.append({
        "scene": name, "method": "ours", "steps": trainer.step, "seconds": trainer.elapsed_s,
        "rays_per_step": trainer.n_rays, "psnr_holdout": scored(ours_renders),
        "load_before": load, "load_after": os.getloadavg(),
    })  # fmt: skip
    shown = {"view": (targets[0], ours_renders[0], ns_renders[0])}

    if truth is not None:
        grids = {
            "ours": extract_grid(trainer.field, args.resolution, camera_origins=origins, **box),
            "nerfacto": extract_grid(config_yml, args.resolution, camera_origins=origins, **box),
        }
        for row in rows:
            row.update(grid_fidelity(grids[row["method"]], truth))
        ceiling = extract_grid(make_room(args.seed), args.resolution, camera_origins=origins,
                               **box)  # fmt: skip
        rows.append({"scene": name, "method": "analytic field", **grid_fidelity(ceiling, truth)})
        shown["grids"] = {"ground truth": truth, **grids}
    for row in rows:
        print_row(row)
    return {"rows": rows, "shown": shown, "held_out_views": scene.holdout_idx.tolist()}


# ---------------------------------------------------------------- report


COLUMNS = (
    ("scene", "scene", "<7", None), ("method", "method", "<14", None),
    ("steps", "steps", ">6", "d"), ("s", "seconds", ">5", ".0f"),
    ("rays", "rays_per_step", ">5", "d"), ("PSNR", "psnr_holdout", ">6", ".2f"),
    ("IoU", "iou", ">6", ".3f"), ("surf F", "surface_fscore", ">6", ".3f"),
    ("prec", "surface_precision", ">6", ".3f"), ("recall", "surface_recall", ">6", ".3f"),
    ("haze%", "haze", ">6", "pct"), ("colour", "colour_psnr", ">6", ".2f"),
)  # fmt: skip


def print_row(row: dict | None) -> None:
    """One row of the table (``None``: the header)."""
    cells = []
    for title, key, align, fmt in COLUMNS:
        if row is None:
            cells.append(format(title, align))
            continue
        value = row.get(key)
        if fmt is None:
            text = str(value)
        elif not isinstance(value, (int, float)) or value != value:
            text = "-"
        else:
            text = format(100 * value, ".1f") if fmt == "pct" else format(value, fmt)
        cells.append(format(text, align))
    print(" ".join(cells), flush=True)


def draw(shown: dict[str, dict], path: Path) -> Path:
    """Per scene, a held-out view (truth, ours, nerfacto); for the room, the opacity of the
    ground truth's and both grids (on the ground truth's step) at a third of its height."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    for name, what in shown.items():
        truth_view, ours, nerfacto = what["view"]
        panels.append([(f"{name} held out", truth_view), ("ours", ours), ("nerfacto", nerfacto)])
        if "grids" in what:
            truth = what["grids"]["ground truth"]
            row = []
            for title, grid in what["grids"].items():
                alpha = alpha_on_step(grid.alpha.astype(np.float64), grid.delta, truth.delta)
                k = int(round((grid.shape[2] - 1) / 3))
                z = grid.bbox_min[2] + k * grid.voxel_size
                row.append((f"{title}\nopacity at z = {z:.2f}", alpha[:, :, k].T))
            panels.append(row)
    fig, axes = plt.subplots(len(panels), 3, figsize=(8.4, 2.9 * len(panels)), squeeze=False)
    for axes_row, row in zip(axes, panels, strict=True):
        for ax, (title, image) in zip(axes_row, row, strict=True):
            image = np.asarray(image)
            if image.ndim == 2:
                ax.imshow(image, origin="lower", cmap="gray", vmin=0, vmax=1)
            else:
                ax.imshow(image)
            ax.set_title(title, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=300.0,
                        help="training seconds of each method on each scene")  # fmt: skip
    parser.add_argument("--scenes", nargs="+", default=["room", "lego"], choices=("room", "lego"))
    parser.add_argument("--resolution", type=int, default=64, help="grid samples, longest side")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads of both methods (default: torch's, which follows "
                             "OMP_NUM_THREADS)")  # fmt: skip
    parser.add_argument("--rays", type=int, default=1024, help="nerfacto's rays per step")
    parser.add_argument("--scale-factor", type=float, default=0.5,
                        help="nerfstudio-data's --scale-factor (build-dataset's default)")
    parser.add_argument("--seed", type=int, default=0, help="the synthetic room")
    parser.add_argument("--views", type=int, default=50)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--truth-resolution", type=int, default=160,
                        help="the room's ground-truth grid samples, longest side")  # fmt: skip
    parser.add_argument("--lego", type=Path, default=LEGO)
    parser.add_argument("--work", type=Path, default=None, help="keep captures and runs here")
    parser.add_argument("--out", type=Path, default=Path("bench_out/bench_nerfstudio.json"))
    args = parser.parse_args()
    args.work = (args.work or Path(tempfile.mkdtemp(prefix="nerfstudio-bench-"))).resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)  # extraction and rendering too

    print_row(None)
    results, shown, skipped = {}, {}, {}
    for name in args.scenes:
        if name == "room":
            scene_dir = generate_scene(
                args.work / f"room_{args.seed}", seed=args.seed, n_views=args.views,
                image_size=args.image_size, grid_resolution=args.truth_resolution,
            )  # fmt: skip
            truth = RadianceGrid.load_npz(scene_dir / "ground_truth" / "grid.npz")
            results[name] = compare(name, scene_dir, args, threads, truth, background=None)
        elif (args.lego / "transforms_train.json").is_file():
            results[name] = compare(name, args.lego, args, threads, None, background="white")
        else:
            skipped[name] = f"{args.lego}: no transforms_train.json (see ../shared/data/README.md)"
            print(f"lego skipped: {skipped[name]}")
            continue
        shown[name] = results[name].pop("shown")

    print()
    print_row(None)
    for result in results.values():
        for row in result["rows"]:
            print_row(row)
    report = {
        "benchmark": "nerfstudio",
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "threads": threads,
        "nerfacto_flags": NERFACTO_CPU_FLAGS,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "scenes": results,
        "skipped": skipped,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=float) + "\n")
    written = [str(args.out)]
    if shown:
        written.append(str(draw(shown, args.out.with_suffix(".png"))))
    print(f"\nthreads {threads}; wrote {' and '.join(written)}; runs in {args.work}")


if __name__ == "__main__":
    main()
