"""``build-dataset``'s nerfstudio backend: scenes trained with nerfstudio, and finished
nerfstudio runs, turned into grids by processes in nerfstudio's own environment.

nerfstudio needs its own environment (``make nerfstudio`` builds ``.venv-nerfstudio``: a
CUDA torch 2.14 the main one must not get), so the flow never imports it: each step is a
subprocess there, its output streamed line by line into the Prefect task's log.

- training: ``<env>/bin/python -m pipeline.nerfstudio.train_run --metrics RUN/metrics.json
  ... -- METHOD <ns-train arguments> nerfstudio-data ...`` (nerfstudio's trainer with a time
  budget, held-out metrics in our ``metrics.json``); the nerfstudio run folder is
  ``RUN/METHOD/`` (``config.yml``, ``nerfstudio_models/``);
- extraction: ``<env>/bin/nerfmae extract RUN/METHOD/config.yml --out GRID.npz
  --resolution R ...`` (the grid in the capture's world frame, with the labels of its
  ``ground_truth/``), stored by the flow's own write step.

The environment is ``nerf["environment"]``, else ``$NERFMAE_NERFSTUDIO_ENV``, else
``.venv-nerfstudio`` in this repository. Its processes import this checkout (``PYTHONPATH``),
whatever checkout the environment was installed from.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.processes import stream_process
from flows.tasks import (
    GPU_LIMIT,
    _train_cache_key,
    config_from_dict,
    float16_megabytes,
    gpu_slot,
    retry_if_transient,
)

REPO = Path(__file__).resolve().parents[1]
ENV_VAR = "NERFMAE_NERFSTUDIO_ENV"
DEFAULT_ENV = REPO / ".venv-nerfstudio"
METRICS_FILE = "metrics.json"
# Methods whose field is nerfstudio's NerfactoField: the ones extraction reads
# (pipeline.nerfstudio.run); anything else would train for hours and then fail to extract.
METHODS = ("nerfacto", "nerfacto-big", "nerfacto-huge", "instant-ngp", "instant-ngp-bounded")
# ExtractConfig fields that `nerfmae extract` takes as flags (the others have none).
EXTRACT_FLAGS = {
    "directions": "--directions",
    "max_cameras": "--max-cameras",
    "box": "--box",
    "margin": "--margin",
    "empty_below": "--empty-below",
    "device": "--device",
}


@dataclass
class NerfstudioConfig:
    """How ``build-dataset`` trains a scene with nerfstudio (the flow's ``nerf`` dict with
    ``nerf_backend="nerfstudio"``). Every field but ``environment`` is hashed into the
    scene's ``config_hash``."""

    method: str = "nerfacto"
    """An ns-train method whose field extraction reads (:data:`METHODS`)."""
    max_num_iterations: int | None = None
    """Step budget (ns-train's ``--max-num-iterations``); None: the method's own (30000 for
    nerfacto and instant-ngp)."""
    time_budget_s: float | None = None
    """Seconds of training steps after which training stops and saves its checkpoint."""
    device: str = "auto"
    """``auto`` (CUDA where the nerfstudio environment sees it, else the CPU), ``cuda``,
    ``cpu``."""
    implementation: str | None = None
    """nerfacto's ``tcnn`` or ``torch``; None: nerfstudio's choice (tiny-cuda-nn on CUDA
    where installed) and ``torch`` on the CPU."""
    scale_factor: float = 0.5
    """nerfstudio-data's ``--scale-factor``: its auto-scaling puts the cameras in [-1, 1],
    and a room's walls lie beyond its cameras, in nerfacto's contracted (coarser) space;
    0.5 brings a synthetic room's box inside (train_run logs how far it reaches)."""
    eval_interval: int = 8
    """Every N-th view is held out (nerfstudio-data ``--eval-mode interval``): the views our
    own trainer holds out (``nerf_training.scene``), unless transforms.json lists splits."""
    evaluate: bool = True
    """Held-out PSNR/SSIM after training (renders the held-out views; False: null PSNR)."""
    ns_train_args: list[str] = field(default_factory=list)
    """More ns-train arguments, before the dataparser (``--pipeline.model.num-levels 8``...)."""
    dataparser_args: list[str] = field(default_factory=list)
    """More ``nerfstudio-data`` arguments (``--downscale-factor 2``...)."""
    environment: str | None = None
    """The nerfstudio environment's folder (default: see the module doc). Not hashed."""

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(
                f"nerf.method: {self.method!r} is not one of {list(METHODS)} (extraction reads "
                "nerfstudio's NerfactoField; other methods have none)"
            )
        if self.device not in ("auto", "cuda", "cpu"):
            raise ValueError(f"nerf.device: expected auto, cuda or cpu, got {self.device!r}")
        if self.implementation not in (None, "tcnn", "torch"):
            raise ValueError(f"nerf.implementation: expected tcnn or torch, got "
                             f"{self.implementation!r}")  # fmt: skip
        if self.time_budget_s is not None and self.time_budget_s <= 0:
            raise ValueError(f"nerf.time_budget_s must be > 0, got {self.time_budget_s}")
        if self.max_num_iterations is not None and self.max_num_iterations < 1:
            raise ValueError(f"nerf.max_num_iterations must be >= 1, got "
                             f"{self.max_num_iterations}")  # fmt: skip
        if self.scale_factor <= 0 or self.eval_interval < 2:
            raise ValueError("nerf.scale_factor must be > 0 and nerf.eval_interval >= 2")

    def hashed(self) -> dict[str, Any]:
        """What decides the trained field (where the environment lives does not)."""
        out = dataclasses.asdict(self)
        out.pop("environment")
        return out


# our trainer's names for what NerfstudioConfig calls otherwise (a flow switched backends)
OURS_TO_NERFSTUDIO = {"max_steps": "max_num_iterations", "backend": "implementation"}


def nerfstudio_config(nerf: dict[str, Any]) -> NerfstudioConfig:
    """The flow's ``nerf`` dict as a :class:`NerfstudioConfig`; an unknown field is a
    ``ValueError`` that names the field meant (also for our trainer's names)."""
    renamed = {k: v for k, v in OURS_TO_NERFSTUDIO.items() if k in nerf}
    if renamed:
        said = ", ".join(f"{k!r} is {v!r}" for k, v in renamed.items())
        raise ValueError(f"NerfstudioConfig: with nerf_backend nerfstudio, {said}")
    return config_from_dict(NerfstudioConfig, nerf)


# ----------------------------------------------------------------- the environment
def nerfstudio_environment(environment: str | os.PathLike | None = None) -> Path:
    """The nerfstudio environment's folder (with ``bin/python`` and ``bin/nerfmae``);
    ``FileNotFoundError`` naming ``make nerfstudio`` when it is not there."""
    if environment is not None:
        root, origin = Path(environment), "nerf.environment"
    elif os.environ.get(ENV_VAR):
        root, origin = Path(os.environ[ENV_VAR]), f"${ENV_VAR}"
    else:
        root, origin = DEFAULT_ENV, "the default"
    missing = [p for p in (root / "bin" / "python", root / "bin" / "nerfmae") if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"nerfstudio environment {root} ({origin}): no {missing[0]}; build it with "
            f"`make nerfstudio` in {REPO}, or point {ENV_VAR} (or nerf.environment) at one"
        )
    return root


def subprocess_env() -> dict[str, str]:
    """This process's environment, with this checkout first on ``PYTHONPATH`` (the
    processes run this code, not another checkout's)."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": str(REPO) + (os.pathsep + path if path else "")}


def run_streamed(command: list[str], logger: Any, what: str) -> None:
    """Run ``command`` in the nerfstudio environment's way (:func:`subprocess_env`), its
    output streamed into ``logger`` (:func:`flows.processes.stream_process`).

    A usage error (exit status 2: ns-train's parser, ``nerfmae``'s bad-input exit) is a
    ``ValueError`` (the same every time: not retried); another failure a ``RuntimeError``
    with the last lines of output."""
    status, output = stream_process(command, logger, env=subprocess_env())
    if status == 0:
        return
    if status == 2:
        raise ValueError(f"{what}: bad arguments or input (exit status 2):\n{output}")
    raise RuntimeError(f"{what} exited with status {status}; last output:\n{output}")


# ----------------------------------------------------------------- command lines
def train_command(
    env: Path, scene_dir: str | os.PathLike, run_dir: str | os.PathLike, config: NerfstudioConfig
) -> list[str]:
    """The training process's command line: our options, ``--``, then ns-train's
    (``--vis tensorboard``: nerfstudio's default viewer would serve on a port and keep
    evaluation off; the run at ``run_dir/METHOD``)."""
    run = Path(run_dir).resolve()
    ours = ["--metrics", str(run / METRICS_FILE), "--device", config.device]
    if config.time_budget_s is not None:
        ours += ["--time-budget", f"{config.time_budget_s:g}"]
    if not config.evaluate:
        ours.append("--no-eval")
    ns = [
        config.method, "--vis", "tensorboard",
        "--output-dir", str(run), "--experiment-name", "", "--timestamp", "",
        "--data", str(Path(scene_dir).resolve()),
    ]  # fmt: skip
    if config.max_num_iterations is not None:
        ns += ["--max-num-iterations", str(int(config.max_num_iterations))]
    if config.implementation is not None:
        ns += ["--pipeline.model.implementation", config.implementation]
    ns += [str(a) for a in config.ns_train_args]
    dataparser = [
        "nerfstudio-data", "--scale-factor", f"{config.scale_factor:g}",
        "--eval-mode", "interval", "--eval-interval", str(int(config.eval_interval)),
        *(str(a) for a in config.dataparser_args),
    ]  # fmt: skip
    python = env / "bin" / "python"
    return [str(python), "-m", "pipeline.nerfstudio.train_run", *ours, "--", *ns, *dataparser]


def extract_command(
    env: Path, config_yml: str | os.PathLike, grid_path: str | os.PathLike, resolution: int,
    extract: dict[str, Any],
) -> list[str]:  # fmt: skip
    """``nerfmae extract CONFIG --out GRID --resolution R`` with the flow's extraction
    settings as flags; a setting ``nerfmae extract`` has no flag for is a ``ValueError``
    (it would be hashed, and silently not applied)."""
    from pipeline.extract import ExtractConfig

    config_from_dict(ExtractConfig, {**extract, "resolution": resolution})  # names typos
    unsupported = sorted(set(extract) - set(EXTRACT_FLAGS))
    if unsupported:
        raise ValueError(
            f"extract: {unsupported} cannot reach a nerfstudio run's extraction (`nerfmae "
            f"extract` has flags for {sorted(EXTRACT_FLAGS)} only)"
        )
    command = [str(env / "bin" / "nerfmae"), "extract", str(config_yml), "--out",
               str(grid_path), "--resolution", str(int(resolution))]  # fmt: skip
    for key, value in extract.items():
        if key == "max_cameras" and value is None:
            value = 0  # the flag's "all"
        if value is not None:
            command += [EXTRACT_FLAGS[key], str(value)]
    return command


# ----------------------------------------------------------------- run folders
def trained_config(run_dir: str | os.PathLike, method: str) -> Path:
    """Where the training process leaves the nerfstudio run's ``config.yml``."""
    return Path(run_dir) / method / "config.yml"


def run_is_complete(run_dir: str | os.PathLike, method: str) -> bool:
    """A run folder whose nerfstudio training finished: its metrics (written last) and
    a checkpoint are there."""
    config = trained_config(run_dir, method)
    models = config.parent / "nerfstudio_models"
    return (
        (Path(run_dir) / METRICS_FILE).is_file()
        and config.is_file()
        and any(models.glob("step-*.ckpt"))
    )


def run_fingerprint(config_yml: str | os.PathLike, mode: str = "content") -> str:
    """Hash of what a finished nerfstudio run's grid is computed from: its ``config.yml``,
    latest checkpoint, ``dataparser_transforms.json`` and the capture's ``transforms.json``
    (``mode``: file bytes, or ``stat``: sizes and modification times; the small JSON and
    YAML files always by content)."""
    from pipeline.nerfstudio.run import find_run

    if mode not in ("content", "stat"):
        raise ValueError(f"hash_mode must be 'content' or 'stat', got {mode!r}")
    run = find_run(config_yml)
    digest = hashlib.sha256()
    for path in (run.config_path, run.checkpoint, run.dataparser_transforms,
                 run.transforms_json):  # fmt: skip
        digest.update(path.name.encode() + b"\0")
        if mode == "content" or path != run.checkpoint:
            with path.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
        else:
            st = path.stat()
            digest.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    return digest.hexdigest()


def run_capture_name(config_yml: str | os.PathLike) -> str:
    """The name of the capture a run was trained on (its data folder, or the folder of its
    ``.json``): a run gets the scene id its scene folder would get. Falls back to the run
    folder's name where the config records no data."""
    from pipeline.nerfstudio.run import read_config

    config = read_config(config_yml)
    datamanager = (config.get("pipeline") or {}).get("datamanager") or {}
    data = datamanager.get("data")
    if not isinstance(data, Path) or data == Path():
        data = (datamanager.get("dataparser") or {}).get("data")
    if isinstance(data, Path) and data != Path():
        data = data.parent if data.suffix == ".json" else data
        if data.name:
            return data.name
    return Path(config_yml).resolve().parent.name


def finished_run_metrics(config_yml: str | os.PathLike) -> dict[str, Any]:
    """What is known of a finished run: our ``metrics.json`` where the nerfstudio backend
    trained it (beside the run's folder), else its method and step (no held-out PSNR:
    nerfstudio keeps its evaluations in TensorBoard events only)."""
    from pipeline.nerfstudio.run import find_run, recorded_metrics

    run = find_run(config_yml)
    metrics = recorded_metrics(run)
    if metrics is not None:
        return metrics
    return {
        "backend": "nerfstudio",
        "method": run.method,
        "steps": run.step,
        "psnr_holdout": None,
        "psnr_holdout_reason": "a run trained outside build-dataset: held-out PSNR unknown",
    }


# ----------------------------------------------------------------- tasks
@task(
    name="train_nerfstudio",
    cache_key_fn=_train_cache_key,
    retries=2,
    retry_delay_seconds=[10, 30],
    retry_condition_fn=retry_if_transient,
)
def train_nerfstudio_task(
    scene_dir: str,
    run_dir: str,
    nerf: dict[str, Any],
    cache_token: str,
    gpu_limit: str | None = GPU_LIMIT,
) -> dict[str, Any]:
    """Train one scene with nerfstudio into ``run_dir/METHOD``; returns its metrics.

    ``nerf`` holds :class:`NerfstudioConfig` fields; ``cache_token`` keys Prefect's result
    cache as for our own NeRFs (``flows.tasks.train_nerf_task``)."""
    import json

    config = nerfstudio_config(nerf)
    env = nerfstudio_environment(config.environment)
    run = Path(run_dir)
    # a run that died part-way: its checkpoints would mix with the new run's
    shutil.rmtree(run / config.method, ignore_errors=True)
    (run / METRICS_FILE).unlink(missing_ok=True)
    run.mkdir(parents=True, exist_ok=True)
    command = train_command(env, scene_dir, run, config)
    with gpu_slot(gpu_limit):
        run_streamed(command, get_run_logger(), f"nerfstudio training of {scene_dir}")
    metrics_path = run / METRICS_FILE
    if not metrics_path.is_file():
        raise RuntimeError(f"{metrics_path}: the training process ended without writing it")
    return json.loads(metrics_path.read_text())


@task(
    name="extract_nerfstudio_grid",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=[10, 30],
    retry_condition_fn=retry_if_transient,
)
def extract_nerfstudio_task(
    config_yml: str,
    grid_path: str,
    resolution: int,
    extract: dict[str, Any],
    environment: str | None = None,
    gpu_limit: str | None = GPU_LIMIT,
) -> dict[str, Any]:
    """Sample the nerfstudio run of ``config_yml`` into a contract-1 ``.npz`` at
    ``grid_path`` (with its capture's ground-truth labels, as ``nerfmae extract`` attaches
    them). Returns ``{"grid_path", "shape", "megabytes"}`` as
    :func:`flows.tasks.extract_grid_task` does."""
    from grid_store import RadianceGrid

    env = nerfstudio_environment(environment)
    command = extract_command(env, config_yml, grid_path, resolution, extract)
    Path(grid_path).parent.mkdir(parents=True, exist_ok=True)
    with gpu_slot(gpu_limit):
        run_streamed(command, get_run_logger(), f"nerfmae extract {config_yml}")
    grid = RadianceGrid.load_npz(grid_path)
    return {"grid_path": str(grid_path), "shape": list(grid.shape),
            "megabytes": float16_megabytes(grid.shape)}  # fmt: skip
