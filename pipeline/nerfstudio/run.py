"""A finished nerfstudio run: finding its files, and loading its field for inference.

A run folder (``outputs/<experiment>/<method>/<timestamp>/``) holds ``config.yml`` (a YAML
dump of nerfstudio's ``TrainerConfig``), ``nerfstudio_models/step-*.ckpt`` and
``dataparser_transforms.json``; the capture it was trained on (its ``transforms.json``) is
named in the config. :func:`find_run` resolves all of these with no nerfstudio import (the
main environment can recognise and inspect a run); the loaders need nerfstudio
(``make nerfstudio``), imported inside them.

:func:`load_nerfstudio_field` does what nerfstudio's ``eval_setup`` does, without its
traps: that picks CUDA by itself, its ``torch.load`` fails on torch >= 2.6, it exits the
process when the checkpoint folder is missing, resolves paths from the working directory,
builds the data manager (worker processes, images), and when the checkpoint does not fit
the model it falls back to ``strict=False`` without a word: a run trained with
tiny-cuda-nn opened where tiny-cuda-nn is missing becomes a randomly initialised field.
Here only the model is built, on the device asked for, from the checkpoint's own tensors
(scene box, number of training images), and the checkpoint's keys are checked against the
model's before anything is loaded.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CONFIG_NAME = "config.yml"
# nerfstudio's config.yml is ``yaml.dump(TrainerConfig)``: its root node carries this tag.
_ROOT_TAGS = ("!!python/object:nerfstudio.", "!<tag:yaml.org,2002:python/object:nerfstudio.")
_CHECKPOINT = re.compile(r"^step-(\d+)\.ckpt$")
_NERFSTUDIO_DATAPARSER = "nerfstudio.data.dataparsers.nerfstudio_dataparser."
# the models whose field is nerfstudio's NerfactoField (density and colour at a point)
SUPPORTED_FIELD = "NerfactoField"


@dataclass(frozen=True)
class NerfstudioRun:
    """The files of one finished nerfstudio run (paths absolute)."""

    config_path: Path
    run_dir: Path
    checkpoint: Path
    """the latest ``nerfstudio_models/step-*.ckpt``"""
    step: int
    dataparser_transforms: Path
    data: Path
    """the config's data (``pipeline.datamanager.data``), resolved: a capture folder, or a
    capture's ``.json`` file"""
    transforms_json: Path
    """the capture's ``transforms.json`` (world frame: the poses as stored)"""
    method: str
    nerfstudio_version: str | None
    """as recorded in the config; nerfstudio 1.1.5 records none"""


# ---------------------------------------------------------------- no nerfstudio needed


def is_nerfstudio_config(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a nerfstudio run's ``config.yml``, by its content: a YAML
    document whose root is a ``!!python/object:nerfstudio...`` (a dumped TrainerConfig).
    Any file (missing, binary, other YAML) answers without raising."""
    try:
        with open(path, encoding="utf-8") as f:
            head = f.read(4096)
    except (OSError, UnicodeDecodeError):
        return False
    for line in head.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "%")) or line == "---":
            continue
        if line.startswith("--- "):
            line = line[4:].lstrip()
        return line.startswith(_ROOT_TAGS)
    return False


def _config_loader() -> type:
    """A safe YAML loader that reads nerfstudio's python tags as plain data: objects as
    dicts, paths as :class:`Path`, tuples as tuples, names and other calls as strings and
    dicts. Nothing is imported or called (the main environment has no nerfstudio)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def python_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
        kind, _, name = suffix.partition(":")
        if isinstance(node, yaml.MappingNode):
            value: Any = loader.construct_mapping(node, deep=True)
        elif isinstance(node, yaml.SequenceNode):
            value = loader.construct_sequence(node, deep=True)
        else:
            value = loader.construct_scalar(node)
        if kind == "tuple":
            return tuple(value)
        if kind == "object/apply" and name.startswith("pathlib.") and isinstance(value, list):
            return Path(*value) if value else Path()
        if kind == "name":
            return name
        if isinstance(value, dict):
            return {"__type__": name, **value}
        return {"__type__": name, "args": value}

    Loader.add_multi_constructor("tag:yaml.org,2002:python/", python_tag)
    return Loader


def read_config(config_path: str | os.PathLike) -> dict:
    """A run's ``config.yml`` as plain data (see :func:`_config_loader`); raises
    ``ValueError`` naming the file when it is not a nerfstudio config."""
    import yaml

    path = Path(config_path)
    if not is_nerfstudio_config(path):
        raise ValueError(
            f"{path}: not a nerfstudio run's config.yml (its root is not a "
            "!!python/object:nerfstudio... TrainerConfig)"
        )
    try:
        config = yaml.load(path.read_text(encoding="utf-8"), Loader=_config_loader())
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: unreadable YAML: {exc}") from exc
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a TrainerConfig mapping at the root")
    return config


def _field(config: dict, dotted: str, config_path: Path) -> Any:
    value: Any = config
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            raise ValueError(f"{config_path}: no field {dotted!r}")
        value = value[part]
    return value


def latest_checkpoint(models_dir: Path, config_path: Path) -> tuple[Path, int]:
    """The highest-step ``step-*.ckpt`` in ``models_dir`` and its step."""
    found = []
    if models_dir.is_dir():
        found = [(int(m.group(1)), p) for p in models_dir.iterdir()
                 if (m := _CHECKPOINT.match(p.name)) and p.is_file()]  # fmt: skip
    if not found:
        what = "is empty of step-*.ckpt files" if models_dir.is_dir() else "does not exist"
        raise FileNotFoundError(
            f"{config_path}: no checkpoint: {models_dir} {what} (ns-train writes one every "
            "steps_per_save steps and at the end of training)"
        )
    step, path = max(found)
    return path, step


def _training_cwd(config: dict, run_dir: Path) -> Path | None:
    """The folder ``ns-train`` ran in, where the run folder says so: a relative
    ``output_dir`` puts the run at ``cwd/output_dir/experiment/method/timestamp``."""
    output_dir = config.get("output_dir")
    parts = [config.get(k) for k in ("experiment_name", "method_name", "timestamp")]
    if not isinstance(output_dir, Path) or output_dir.is_absolute():
        return None
    if any(p is None or str(p) == "" for p in parts):
        return None
    tail = Path(output_dir, *map(str, parts)).parts
    if run_dir.parts[-len(tail):] != tail:
        return None
    return run_dir.parents[len(tail) - 1]


def _data_path(config: dict, config_path: Path, run_dir: Path) -> Path:
    """The run's data, resolved: ``pipeline.datamanager.data`` (where ``--data`` goes),
    else the dataparser's own ``data``. A relative path was relative to where ns-train
    ran: tried from there (when the run folder tells it) and from this process's cwd."""
    field = "pipeline.datamanager.data"
    raw = _field(config, "pipeline.datamanager", config_path).get("data")
    if not isinstance(raw, Path) or raw == Path():
        field = "pipeline.datamanager.dataparser.data"
        raw = _field(config, field, config_path)
    if not isinstance(raw, Path) or raw == Path():
        raise ValueError(f"{config_path}: {field}: no data folder recorded")
    if raw.is_absolute():
        candidates = [raw]
    else:
        bases = [b for b in (_training_cwd(config, run_dir), Path.cwd()) if b is not None]
        candidates = list(dict.fromkeys((b / raw).resolve() for b in bases))
    for candidate in candidates:
        if candidate.exists():
            return candidate
    tried = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(
        f"{config_path}: {field} = {raw}: not found (tried {tried}); pass the capture "
        "folder as data="
    )


def find_run(path: str | os.PathLike, data: str | os.PathLike | None = None) -> NerfstudioRun:
    """The run whose ``config.yml`` is ``path`` (or the run folder holding it).

    ``data`` overrides the capture the config names (a run moved from another machine).
    Raises ``ValueError`` (not a nerfstudio config, a dataparser other than
    ``nerfstudio-data``) or ``FileNotFoundError`` (no checkpoint, no
    ``dataparser_transforms.json``, no capture), each naming the file.
    """
    config_path = Path(path)
    if config_path.is_dir():
        config_path = config_path / CONFIG_NAME
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path}: no such file")
    config_path = config_path.resolve()
    run_dir = config_path.parent
    config = read_config(config_path)

    method = _field(config, "method_name", config_path)
    if not isinstance(method, str):
        raise ValueError(f"{config_path}: method_name: expected a string, got {method!r}")
    dataparser = _field(config, "pipeline.datamanager.dataparser", config_path)
    dataparser_type = dataparser.get("__type__", "") if isinstance(dataparser, dict) else ""
    if not dataparser_type.startswith(_NERFSTUDIO_DATAPARSER):
        raise ValueError(
            f"{config_path}: pipeline.datamanager.dataparser is {dataparser_type or '?'}: "
            "only runs of nerfstudio's nerfstudio-data dataparser (a capture's "
            "transforms.json) are read"
        )

    models_dir = run_dir / Path(config.get("relative_model_dir") or "nerfstudio_models")
    checkpoint, step = latest_checkpoint(models_dir, config_path)
    dataparser_transforms = run_dir / "dataparser_transforms.json"
    if not dataparser_transforms.is_file():
        raise FileNotFoundError(
            f"{config_path}: the run has no {dataparser_transforms.name} beside it (ns-train "
            "writes it when training starts)"
        )
    if data is not None:
        data_path = Path(data).resolve()
        if not data_path.exists():
            raise FileNotFoundError(f"{data_path}: no such capture (data= for {config_path})")
    else:
        data_path = _data_path(config, config_path, run_dir)
    # nerfstudio-data reads ``data`` itself when it is a .json, else ``data/transforms.json``
    transforms_json = data_path if data_path.suffix == ".json" else data_path / "transforms.json"
    if not transforms_json.is_file():
        raise FileNotFoundError(
            f"{config_path}: the capture {data_path} has no {transforms_json.name}"
        )
    version = config.get("nerfstudio_version")
    return NerfstudioRun(
        config_path=config_path,
        run_dir=run_dir,
        checkpoint=checkpoint,
        step=step,
        dataparser_transforms=dataparser_transforms,
        data=data_path,
        transforms_json=transforms_json,
        method=method,
        nerfstudio_version=version if isinstance(version, str) else None,
    )


# ---------------------------------------------------------------- nerfstudio needed


def recorded_metrics(run: NerfstudioRun) -> dict[str, Any] | None:
    """Our ``metrics.json`` of a run that build-dataset's nerfstudio backend trained (it
    sits beside the run's folder and names the run's ``config.yml``), else ``None``:
    nerfstudio itself keeps its evaluations in TensorBoard events only."""
    path = run.run_dir.parent / "metrics.json"
    if not path.is_file():
        return None
    metrics = json.loads(path.read_text())
    named = metrics.get("config")
    return metrics if named and Path(named).resolve() == run.config_path else None


def _trainer_config(run: NerfstudioRun) -> Any:
    """The run's config as nerfstudio's own ``TrainerConfig`` (its unsafe YAML loader, as
    nerfstudio reads it; the file is nerfstudio's own)."""
    import yaml
    from nerfstudio.engine.trainer import TrainerConfig

    config = yaml.load(run.config_path.read_text(encoding="utf-8"), Loader=yaml.Loader)
    if not isinstance(config, TrainerConfig):
        raise ValueError(f"{run.config_path}: not a TrainerConfig ({type(config).__name__})")
    return config


def _model_state(pipeline_state: dict, checkpoint: Path) -> dict:
    """The model's tensors of a checkpoint's pipeline state (``_model.`` stripped, and the
    ``module.`` of a DDP-trained run); LPIPS's keys dropped (:mod:`.lpips_stand_in`)."""
    from pipeline.nerfstudio.lpips_stand_in import LPIPS_PREFIX

    state = {k[len("_model."):]: v for k, v in pipeline_state.items() if k.startswith("_model.")}
    if not state:
        raise ValueError(f"{checkpoint}: the pipeline state holds no _model.* tensors")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return {k: v for k, v in state.items() if not k.startswith(LPIPS_PREFIX)}


def _uses_tcnn(keys) -> bool:
    """tiny-cuda-nn modules hold all their weights in one flat ``params`` tensor; nerfstudio's
    torch modules in ``hash_table`` and ``layers.N.weight``/``bias``."""
    return any(k.endswith(".params") for k in keys)


def _tcnn_available() -> bool:
    return importlib.util.find_spec("tinycudann") is not None


def _check_keys(model_state: dict, state: dict, run: NerfstudioRun) -> None:
    """Every tensor of the model in the checkpoint and nothing else, each of its shape."""
    model_keys = set(model_state)
    missing = sorted(model_keys - set(state))
    unexpected = sorted(set(state) - model_keys)
    resized = sorted(f"{k} {tuple(state[k].shape)} (model {tuple(model_state[k].shape)})"
                     for k in model_keys & set(state)
                     if tuple(state[k].shape) != tuple(model_state[k].shape))  # fmt: skip
    if not missing and not unexpected and not resized:
        return

    def some(keys: list[str]) -> str:
        return ", ".join(keys[:6]) + (f" and {len(keys) - 6} more" if len(keys) > 6 else "")

    parts = []
    if missing:
        parts.append(f"missing from the checkpoint: {some(missing)}")
    if unexpected:
        parts.append(f"not in the model: {some(unexpected)}")
    if resized:
        parts.append(f"of another shape: {some(resized)}")
    raise ValueError(
        f"{run.checkpoint}: its tensors do not fit the model {run.config_path} describes "
        f"({'; '.join(parts)})"
    )


class NerfstudioField:
    """A loaded run's field in nerfstudio's normalised frame: ``density(x)``,
    ``color(x, d)`` and ``aabb`` (the model's scene box), with ``step`` and ``method``.

    ``density`` is the field's ``get_density`` (what nerfacto renders with; the proposal
    networks are sampling aids). ``color`` is ``get_outputs`` in eval mode with the mean of
    the trained appearance embeddings (see :meth:`color`)."""

    def __init__(self, model: Any, run: NerfstudioRun, implementation: str, version: str):
        self.model = model
        self.field = model.field
        self.run = run
        self.step = run.step
        self.method = run.method
        self.implementation = implementation
        self.nerfstudio_version = version
        """of the environment that loaded the run"""
        self.device = model.device
        self.aabb = self.field.aabb.detach().clone().cpu()  # (2, 3)
        self.chunk = 1 << 18

    def _samples(self, x, d):
        """Zero-length ray samples at points ``x`` (N, 3) looking along ``d`` (N, 3)."""
        import torch
        from nerfstudio.cameras.rays import Frustums, RaySamples

        zeros = torch.zeros_like(x[:, :1])
        frustums = Frustums(origins=x, directions=d, starts=zeros, ends=zeros,
                            pixel_area=torch.ones_like(zeros))  # fmt: skip
        # get_outputs needs camera indices even in eval; with the average embedding (set
        # in load) they select nothing
        indices = torch.zeros_like(zeros, dtype=torch.long)
        return RaySamples(frustums=frustums, camera_indices=indices)

    def _evaluate(self, fn, x, d, shape: tuple[int, ...]):
        """``fn(x, d)`` over chunks of points (bounded memory), on the model's device;
        the result on ``x``'s device and float dtype, ``(N, *shape)``."""
        import torch

        x = torch.as_tensor(x)
        out_device = x.device
        out_dtype = x.dtype if x.is_floating_point() else torch.float32
        x = x.to(self.device, torch.float32).reshape(-1, 3)
        if d is None:  # density does not depend on it; any unit direction
            d = torch.zeros_like(x)
            d[:, 2] = 1.0
        else:
            d = torch.as_tensor(d).to(self.device, torch.float32).reshape(-1, 3)
            d = d / d.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        if len(x) != len(d):
            raise ValueError(f"{len(x)} points but {len(d)} directions")
        if len(x) == 0:
            return torch.zeros((0, *shape), device=out_device, dtype=out_dtype)
        with torch.no_grad():
            parts = [fn(self._samples(x[i:i + self.chunk], d[i:i + self.chunk]))
                     for i in range(0, len(x), self.chunk)]  # fmt: skip
        return torch.cat(parts).reshape(-1, *shape).to(out_device, out_dtype)

    def density(self, x):
        """``(N, 3)`` points (nerfstudio's frame) -> ``(N,)`` sigma per normalised unit."""

        def fn(samples):
            sigma, _ = self.field.get_density(samples)
            return sigma.reshape(-1)

        return self._evaluate(fn, x, None, ())

    def color(self, x, d):
        """``(N, 3)`` points and directions (nerfstudio's frame) -> ``(N, 3)`` RGB in [0, 1].

        The appearance embedding is the mean of the trained ones, as nerfacto renders in
        eval mode with ``use_average_appearance_embedding`` (load sets it: an all-zero
        embedding, the other choice, is one no training view ever had)."""
        from nerfstudio.field_components.field_heads import FieldHeadNames

        def fn(samples):
            _, embedding = self.field.get_density(samples)
            rgb = self.field.get_outputs(samples, density_embedding=embedding)
            return rgb[FieldHeadNames.RGB].reshape(-1, 3)

        return self._evaluate(fn, x, d, (3,))


def load_nerfstudio_field(run: NerfstudioRun, device: str = "cpu") -> NerfstudioField:
    """The run's field on ``device``, in inference mode, keys checked first.

    Raises ``ValueError`` when the checkpoint does not fit the model (missing or
    unexpected tensors, each named; a tiny-cuda-nn run opened without tiny-cuda-nn; a
    method whose field is not nerfstudio's NerfactoField).
    """
    import importlib.metadata

    import torch
    from nerfstudio.data.scene_box import SceneBox

    from pipeline.nerfstudio.lpips_stand_in import lpips_stand_in

    config = _trainer_config(run)
    checkpoint = torch.load(run.checkpoint, map_location="cpu", weights_only=False)
    if not isinstance(checkpoint, dict) or "pipeline" not in checkpoint:
        raise ValueError(f"{run.checkpoint}: not a nerfstudio checkpoint (no 'pipeline')")
    state = _model_state(checkpoint["pipeline"], run.checkpoint)

    model_config = config.pipeline.model
    # The checkpoint decides the implementation: a config saying tcnn trained with torch's
    # modules where tiny-cuda-nn was missing (nerfstudio falls back with a warning).
    if _uses_tcnn(state):
        if not _tcnn_available():
            raise ValueError(
                f"{run.checkpoint}: trained with tiny-cuda-nn (its tensors are tcnn's flat "
                "'params'), and tiny-cuda-nn (tinycudann) is not installed here: the torch "
                "hash grid computes a different function, so the run cannot be loaded "
                "without tinycudann (a CUDA GPU)"
            )
        if torch.device(device).type != "cuda":
            raise ValueError(
                f"{run.checkpoint}: trained with tiny-cuda-nn, which runs on CUDA only: "
                f"load it with device='cuda', not {device!r}"
            )
        implementation = "tcnn"
    else:
        implementation = "torch"
    if hasattr(model_config, "implementation"):
        model_config.implementation = implementation

    aabb = state.get("field.aabb")
    if aabb is None:
        raise ValueError(
            f"{run.checkpoint}: no field.aabb: method {run.method!r} has no "
            f"{SUPPORTED_FIELD} (nerfacto and instant-ngp are read)"
        )
    # The number of training images sizes the per-image tensors; read from them, else
    # (a method with neither, e.g. instant-ngp without appearance embeddings) counted by
    # the run's dataparser on the capture.
    per_image = ("field.embedding_appearance.embedding.weight", "camera_optimizer.pose_adjustment")
    sizes = [int(state[key].shape[0]) for key in per_image if key in state]
    num_train_data = sizes[0] if sizes else len(_train_cameras(run)[0])

    config.machine.device_type = torch.device(device).type
    with lpips_stand_in():
        model = model_config.setup(
            scene_box=SceneBox(aabb=aabb.to(torch.float32).clone()),
            num_train_data=num_train_data,
            metadata={},
            device=device,
        )
    if type(getattr(model, "field", None)).__name__ != SUPPORTED_FIELD:
        raise ValueError(
            f"{run.config_path}: method {run.method!r} has no {SUPPORTED_FIELD} "
            "(nerfacto and instant-ngp are read)"
        )
    _check_keys(model.state_dict(), state, run)
    model.update_to_step(run.step)
    model.load_state_dict(state, strict=True)
    model.field.use_average_appearance_embedding = True
    model.to(device)
    model.eval()
    version = importlib.metadata.version("nerfstudio")
    log.info("loaded %s step %d (%s, %s) on %s", run.config_path, run.step, run.method,
             implementation, device)  # fmt: skip
    return NerfstudioField(model, run, implementation, version)


def _train_cameras(run: NerfstudioRun) -> tuple[list[Path], Any]:
    """The run's dataparser on its capture, train split, no image read: image paths and
    ``(C, 3, 4)`` camera-to-world poses in nerfstudio's normalised frame."""
    config = _trainer_config(run)
    dataparser_config = config.pipeline.datamanager.dataparser
    dataparser_config.data = run.data
    if getattr(dataparser_config, "downscale_factor", 1) is None:
        # None makes the dataparser open an image to pick a downscale; poses do not
        # depend on it, and the capture's images need not be here
        dataparser_config.downscale_factor = 1
    outputs = dataparser_config.setup().get_dataparser_outputs(split="train")
    return list(outputs.image_filenames), outputs.cameras.camera_to_worlds


def nerfstudio_camera_centres(run: NerfstudioRun):
    """``(C, 3)`` float64 centres of the run's training cameras in nerfstudio's normalised
    frame, as its dataparser produces them (before any pose optimisation in training)."""
    import numpy as np

    _, poses = _train_cameras(run)
    return np.asarray(poses[:, :3, 3].cpu().numpy(), dtype=np.float64)


def capture_camera_centres(run: NerfstudioRun):
    """``(C, 3)`` float64 centres of the same cameras (same order) as the capture's
    ``transforms.json`` stores them (its world frame)."""
    import numpy as np

    filenames, _ = _train_cameras(run)
    meta = json.loads(run.transforms_json.read_text())
    data_dir = run.transforms_json.parent
    by_path = {}
    for frame in meta.get("frames", []):
        by_path[os.path.normpath(data_dir / frame["file_path"])] = frame
    centres = []
    for name in filenames:
        frame = by_path.get(os.path.normpath(name))
        if frame is None:
            raise ValueError(f"{run.transforms_json}: no frame for the run's image {name}")
        centres.append(np.asarray(frame["transform_matrix"], dtype=np.float64)[:3, 3])
    return np.stack(centres) if centres else np.zeros((0, 3))


__all__ = [
    "NerfstudioField",
    "NerfstudioRun",
    "capture_camera_centres",
    "find_run",
    "is_nerfstudio_config",
    "latest_checkpoint",
    "load_nerfstudio_field",
    "nerfstudio_camera_centres",
    "read_config",
]
