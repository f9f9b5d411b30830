"""One nerfstudio training run with a time budget and our ``metrics.json``:
``python -m pipeline.nerfstudio.train_run --metrics RUN/metrics.json [--time-budget S]
[--device auto] [--no-eval] -- nerfacto <ns-train arguments>`` (in the nerfstudio
environment, ``make nerfstudio``; the ``build-dataset`` flow's nerfstudio backend runs it).

Everything after ``--`` is parsed by nerfstudio's own ``ns-train`` parser, and training is
nerfstudio's ``Trainer``, as ``ns-train`` runs it in one process; what this adds:

- a **time budget**: ``ns-train`` has only a step budget (``--max-num-iterations``); here
  training also stops once its steps have taken ``--time-budget`` seconds, and the last
  checkpoint is written as at a normal end (killing ``ns-train`` would leave none before
  its first ``steps_per_save``);
- the **device**: ``auto`` is CUDA where this environment sees it, else the CPU, with
  nerfstudio's torch modules there (tiny-cuda-nn runs on CUDA only);
- **held-out metrics**: after training, nerfstudio's own evaluation over its eval split
  (PSNR, SSIM; LPIPS is ``None`` where its AlexNet weights are stood in, see
  :mod:`.lpips_stand_in`), written with the step count and seconds into ``--metrics`` in
  the fields our own runs' ``metrics.json`` uses (:mod:`nerf_training.run`);
- **progress** as log lines (step, loss, seconds) instead of nerfstudio's local writer,
  whose table redraws itself with terminal escapes that a log cannot show.

The run folder is nerfstudio's (``output_dir/experiment_name/method/timestamp``, from the
arguments), so ``nerfmae extract RUN/config.yml`` and nerfstudio's own tools read it.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 10.0
"""Seconds between progress lines (and one at the first step and the last)."""
NOISY_WARNING = "Using a non-tuple sequence for multidimensional indexing"
BOX_LIMIT = 1.0
"""nerfacto's scene contraction leaves points with max-norm up to 1 as they are and squeezes
the rest (coarser hash-grid resolution there): a room's box should fit inside."""


def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """``[ours..., "--", ns-train's...]`` -> the two lists; ns-train's are required."""
    if "--" not in argv:
        raise SystemExit(
            "usage: python -m pipeline.nerfstudio.train_run --metrics FILE [options] -- "
            "METHOD [ns-train arguments]"
        )
    cut = argv.index("--")
    return argv[:cut], argv[cut + 1 :]


def arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.nerfstudio.train_run",
        description=__doc__.split("\n\n")[0],
        allow_abbrev=False,
    )
    parser.add_argument("--metrics", type=Path, required=True,
                        help="where to write the run's metrics.json")  # fmt: skip
    parser.add_argument("--time-budget", type=float, default=None,
                        help="stop training after this many seconds of steps")  # fmt: skip
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--no-eval", dest="evaluate", action="store_false",
                        help="skip the held-out evaluation (null psnr_holdout)")  # fmt: skip
    return parser


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: this environment's torch sees no CUDA device")
    return device


def nerfstudio_config(ns_args: list[str], device: str) -> Any:
    """nerfstudio's ``TrainerConfig`` from ns-train's arguments, set for ``device``."""
    import tyro
    from nerfstudio.configs.method_configs import AnnotatedBaseConfigUnion

    config = tyro.cli(AnnotatedBaseConfigUnion, args=ns_args)
    if config.data:  # ns-train's --data alias, as its main() applies it
        config.pipeline.datamanager.data = config.data
    if config.load_config:
        raise SystemExit("--load-config is not supported here: pass the run's arguments")
    if config.machine.num_devices * config.machine.num_machines != 1:
        raise SystemExit(
            "--machine.num-devices/--machine.num-machines: one process only here "
            "(use ns-train itself for multi-GPU runs)"
        )
    config.machine.device_type = device
    model = config.pipeline.model
    if device != "cuda" and getattr(model, "implementation", "torch") != "torch":
        log.info("%s: nerfstudio's torch modules (tiny-cuda-nn runs on CUDA only)", device)
        model.implementation = "torch"
    config.logging.local_writer.enable = False
    return config


class Budget:
    """Wraps the trainer's ``train_iteration``: counts steps, logs progress, and asks the
    trainer to stop once the steps have taken ``seconds`` (nerfstudio checks
    ``stop_training`` before each step and then saves its last checkpoint)."""

    def __init__(self, trainer: Any, seconds: float | None, max_steps: int) -> None:
        self.trainer = trainer
        self.seconds = seconds
        self.max_steps = max_steps
        self.steps = 0
        self.elapsed_s = 0.0
        self.stopped_by_time = False
        self._last_log = -math.inf
        self._inner = trainer.train_iteration
        trainer.train_iteration = self.train_iteration

    def train_iteration(self, step: int) -> Any:
        start = time.perf_counter()
        out = self._inner(step)
        self.elapsed_s += time.perf_counter() - start
        self.steps += 1
        over = self.seconds is not None and self.elapsed_s >= self.seconds
        if over and self.steps < self.max_steps:
            self.trainer.stop_training = True
            self.stopped_by_time = True
        last = over or self.steps >= self.max_steps
        if last or self.steps == 1 or self.elapsed_s - self._last_log >= PROGRESS_EVERY_S:
            self._last_log = self.elapsed_s
            log.info("step %d/%d  loss %.4g  %.1f s%s", self.steps, self.max_steps,
                     float(out[0].detach()), self.elapsed_s,
                     "  (time budget reached)" if self.stopped_by_time else "")  # fmt: skip
        return out


def held_out_metrics(trainer: Any) -> dict[str, Any]:
    """nerfstudio's evaluation over its eval images, in our metrics' names."""
    pipeline = trainer.pipeline
    dataset = getattr(pipeline.datamanager, "eval_dataset", None)
    if not dataset or len(dataset) == 0:
        return {"psnr_holdout": None, "psnr_holdout_reason": "the eval split has no images"}
    pipeline.eval()
    metrics = pipeline.get_average_eval_image_metrics(step=trainer.step)
    pipeline.train()

    def number(key: str) -> float | None:
        value = metrics.get(key)
        return None if value is None or not math.isfinite(float(value)) else float(value)

    return {
        "psnr_holdout": number("psnr"),
        "ssim_holdout": number("ssim"),
        "lpips_holdout": number("lpips"),
        "n_holdout_views": len(dataset),
    }


def scene_box_extent(config: Any) -> float | None:
    """How far the capture's box (``transforms.json``'s ``aabb``, where it has one) reaches
    in the run's frame (largest ``|x_N|`` of its corners); warns above :data:`BOX_LIMIT`."""
    import itertools

    import numpy as np

    from pipeline.nerfstudio.frames import DATAPARSER_TRANSFORMS, read_frame

    data = Path(config.pipeline.datamanager.data)
    transforms = data if data.suffix == ".json" else data / "transforms.json"
    aabb = json.loads(transforms.read_text()).get("aabb") if transforms.is_file() else None
    if aabb is None:
        return None
    frame = read_frame(config.get_base_dir() / DATAPARSER_TRANSFORMS, transforms)
    corners = np.array(list(itertools.product(*np.asarray(aabb, dtype=np.float64).T)))
    extent = float(np.abs(frame.to_nerfstudio(corners)).max())
    if extent > BOX_LIMIT:
        log.warning("%s: the scene box reaches %.2f in nerfstudio's frame, beyond %g where "
                    "nerfacto's contraction coarsens the field; a smaller --scale-factor of "
                    "nerfstudio-data (now %g) fits it", transforms, extent, BOX_LIMIT,
                    config.pipeline.datamanager.dataparser.scale_factor)  # fmt: skip
    return extent


def train(config: Any, time_budget_s: float | None, evaluate: bool) -> dict[str, Any]:
    """Train ``config`` as ns-train's ``train_loop`` does; returns our metrics."""
    import importlib.metadata

    from nerfstudio.scripts.train import _set_random_seed

    config.set_timestamp()
    config.save_config()
    _set_random_seed(config.machine.seed)
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    budget = Budget(trainer, time_budget_s, config.max_num_iterations)
    wall_start = time.perf_counter()
    log.info("training %s into %s on %s (%d steps at most%s)", config.method_name,
             config.get_base_dir(), config.machine.device_type, config.max_num_iterations,
             f", {time_budget_s:g} s" if time_budget_s is not None else "")  # fmt: skip
    trainer.train()
    metrics: dict[str, Any] = {
        "backend": "nerfstudio",
        "method": config.method_name,
        "implementation": getattr(config.pipeline.model, "implementation", None),
        "nerfstudio_version": importlib.metadata.version("nerfstudio"),
        "steps": budget.steps,
        "seconds": budget.elapsed_s,
        "stopped_by": "time_budget" if budget.stopped_by_time else "max_num_iterations",
        "device": config.machine.device_type,
        "config": str(config.get_base_dir() / "config.yml"),
        "scene_dir": str(Path(config.pipeline.datamanager.data).resolve()),
    }
    eval_start = time.perf_counter()
    if evaluate:
        metrics.update(held_out_metrics(trainer))
    else:
        metrics.update({"psnr_holdout": None, "psnr_holdout_reason": "evaluation skipped"})
    metrics["eval_seconds"] = time.perf_counter() - eval_start
    metrics["scene_box_extent"] = scene_box_extent(config)
    metrics["wall_seconds"] = time.perf_counter() - wall_start
    return metrics


def main(argv: list[str] | None = None) -> int:
    ours, ns_args = split_argv(sys.argv[1:] if argv is None else argv)
    args = arg_parser().parse_args(ours)
    if args.time_budget is not None and args.time_budget <= 0:
        raise SystemExit(f"--time-budget must be > 0, got {args.time_budget}")
    from pipeline.nerfstudio.lpips_stand_in import alexnet_weights_cached, install_lpips_stand_in

    if not alexnet_weights_cached():
        log.warning("torchvision's AlexNet weights are not cached (and cannot be fetched "
                    "offline): LPIPS is stood in, lpips_holdout is null")  # fmt: skip
        install_lpips_stand_in()
    # nerfstudio 1.1.5 indexes camera tensors with lists, which torch >= 2.9 warns about on
    # every ray batch: harmless, and it would bury the progress lines. Its data loader
    # processes are spawned (no inherited filters): they read PYTHONWARNINGS.
    warnings.filterwarnings("ignore", message=NOISY_WARNING, category=UserWarning)
    quiet = f"ignore:{NOISY_WARNING}:UserWarning"
    os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [os.environ.get("PYTHONWARNINGS"), quiet]))
    config = nerfstudio_config(ns_args, resolve_device(args.device))
    metrics = train(config, args.time_budget, args.evaluate)
    from nerfmae_common.files import atomic_write_text

    args.metrics.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.metrics, json.dumps(metrics, indent=2, sort_keys=True))
    psnr = metrics["psnr_holdout"]
    log.info("trained %s: %d steps in %.1f s, held-out PSNR %s", metrics["config"],
             metrics["steps"], metrics["seconds"],
             "unknown" if psnr is None else f"{psnr:.2f} dB")  # fmt: skip
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(main())
