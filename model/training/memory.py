"""Will a training run fit? Its peak memory, estimated before anything is allocated.

The estimate adds up what a training step holds at its peak:

- **parameters, gradients and AdamW's two moments**: 4 bytes per parameter, and 12 more
  per trainable one (fp32 master weights, also under autocast);
- **activations**: what the forward pass keeps for the backward pass, counted exactly by
  running the task's network on ``meta`` tensors (no memory, no data) with a saved-tensor
  hook (:func:`saved_activation_bytes`: each storage once, the weights and the input left
  out), times :data:`ACTIVATION_FACTOR`; under bf16 autocast the floating-point ones count
  at half their fp32 size;
- **workspace**: the backward pass's transient buffers (gradients of full-resolution
  activations, convolution scratch), :data:`WORKSPACE_FLOATS` floats per input voxel of the
  micro-batch;
- **batches in flight**: the step's micro-batch and, per DataLoader worker, the batches it
  prefetches (``prefetch_factor`` 2) in shared memory, plus each worker's own process;
- **the runtime**: the Python process with torch and the data libraries loaded.

The constants were fitted to peaks measured on this project's CPU runs
(``benchmarks/bench_memory.py``, table in BENCHMARKS.md). The limit is the machine's memory
or its cgroup's, whichever is smaller, or the GPU's; :func:`check_training_memory` refuses a
run above it with the settings that would fit (a smaller batch, resolution or preset), before
the model or any batch exists. ``check_memory=False`` (``--no-check-memory``) skips it,
``memory_limit_gb`` sets the limit by hand.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from model.training.config import TrainingConfig
    from model.training.task import Task

logger = logging.getLogger(__name__)

GIB = 2**30
ACTIVATION_FACTOR = 1.1
"""Peak activation memory over the bytes the forward pass saves for the backward pass."""
WORKSPACE_FLOATS = 64
"""Transient float32 values per input voxel of a micro-batch at the peak of the backward."""
RUNTIME_BYTES = int(0.35 * GIB)
"""The training process with torch, zarr, dask and TensorBoard loaded, before the run."""
WORKER_BYTES = int(0.15 * GIB)
"""One DataLoader worker process beyond the batches it holds."""
PREFETCH_FACTOR = 2
"""Batches each DataLoader worker prepares ahead (torch's default)."""
HEADROOM = 0.9
"""Share of the limit a run may plan to use (the estimate is not exact)."""


@dataclass(frozen=True)
class MemoryEstimate:
    """A run's estimated peak memory, in bytes, by part."""

    parameters: int
    optimizer: int
    activations: int
    workspace: int
    batches: int
    runtime: int
    device: str
    saved_activations: int
    """What the forward pass saves (before :data:`ACTIVATION_FACTOR`)."""

    @property
    def total(self) -> int:
        return (self.parameters + self.optimizer + self.activations + self.workspace
                + self.batches + self.runtime)  # fmt: skip

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "total": self.total,
                "total_gib": round(self.total / GIB, 2)}  # fmt: skip


def saved_activation_bytes(model: torch.nn.Module, run, exclude: list[torch.Tensor]) -> dict:
    """Bytes the autograd graph of ``run()`` keeps, each storage counted once, those of the
    model's parameters and of ``exclude`` (the batch) left out: ``{dtype: bytes}``."""
    skip = {p.untyped_storage()._cdata for p in model.parameters()}
    skip |= {t.untyped_storage()._cdata for t in exclude}
    seen: set[int] = set()
    by_dtype: dict[torch.dtype, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        key = storage._cdata
        if key not in skip and key not in seen:
            seen.add(key)
            by_dtype[tensor.dtype] = by_dtype.get(tensor.dtype, 0) + storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        run()
    return by_dtype


def _probe(task: Task, micro_batch: int) -> tuple[int, int, dict]:
    """``(parameters, trainable parameters, saved bytes by dtype)`` of one micro-batch."""
    meta = torch.device("meta")
    # Building on meta draws nothing, but the run's random streams must stay untouched.
    with torch.random.fork_rng(devices=[]), meta:
        model = task.make_network()
        task.freeze(model)
        model.train()
        batch = task.probe_batch(micro_batch, meta)
        inputs = [t for t in batch.values() if isinstance(t, torch.Tensor)]
        saved = saved_activation_bytes(model, lambda: task.memory_probe(model, batch), inputs)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable, saved


def sample_bytes(task: Task) -> int:
    """One training sample: ``rgba`` (float32) and ``valid`` (bool) at the input size, and
    what the task adds."""
    s = task.input_size
    return 4 * 4 * s**3 + s**3 + task.extra_sample_bytes()


def estimate_training_memory(
    task: Task,
    micro_batch: int,
    num_workers: int,
    device: torch.device,
    amp_dtype: torch.dtype | None,
) -> MemoryEstimate:
    """The peak memory of a training step of ``task`` (see the module doc)."""
    total, trainable, saved = _probe(task, micro_batch)
    activations = 0
    for dtype, nbytes in saved.items():
        halved = amp_dtype is not None and dtype.is_floating_point and dtype.itemsize == 4
        activations += nbytes // 2 if halved else nbytes
    batch = micro_batch * sample_bytes(task)
    on_gpu = device.type == "cuda"
    in_flight = batch * (1 + PREFETCH_FACTOR * num_workers) if not on_gpu else batch
    return MemoryEstimate(
        parameters=4 * total,
        optimizer=12 * trainable,
        activations=int(ACTIVATION_FACTOR * activations),
        workspace=4 * WORKSPACE_FLOATS * micro_batch * task.input_size**3,
        batches=in_flight,
        runtime=RUNTIME_BYTES + WORKER_BYTES * num_workers if not on_gpu else 0,
        device=device.type,
        saved_activations=activations,
    )


def _cgroup_limit() -> int | None:
    """The memory limit of this process's cgroup (v2, then v1), if it sets one."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 2**60:  # "max" / a huge number: no limit
            return int(text)
    return None


def memory_limit(device: torch.device, limit_gb: float | None = None) -> tuple[int, str]:
    """``(bytes, where the figure comes from)``: what a run on ``device`` may use."""
    if limit_gb is not None:
        return int(limit_gb * GIB), "memory_limit_gb"
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        return total, f"{torch.cuda.get_device_name(device)} memory"
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    cgroup = _cgroup_limit()
    if cgroup is not None and cgroup < physical:
        return cgroup, "the cgroup's memory limit"
    return physical, "the machine's memory"


def _fits(estimate: MemoryEstimate, limit: int) -> bool:
    return estimate.total <= HEADROOM * limit


class RunDoesNotFit(ValueError):
    """A run whose estimated peak memory is over what it may use (a bad setting, so a
    ``ValueError``: command lines print it as one line)."""


def _suggestions(task: Task, config: TrainingConfig, micro_batch: int, device: torch.device,
                 amp_dtype: torch.dtype | None, limit: int) -> list[str]:  # fmt: skip
    """Settings that would fit, each a change of one setting of ``config``."""
    workers = config.num_workers

    def fits(candidate: Task, batch: int, loader_workers: int = workers) -> bool:
        return _fits(estimate_training_memory(candidate, batch, loader_workers, device,
                                              amp_dtype), limit)  # fmt: skip

    found = []
    parts = config.batch_size // micro_batch  # ranks x accumulation steps
    smaller = next((b for b in range(micro_batch - 1, 0, -1) if fits(task, b)), None)
    if smaller is not None:
        found.append(f"--batch-size {smaller * parts}, or --grad-accum-steps "
                     f"{math.ceil(micro_batch / smaller) * config.grad_accum_steps} to keep the "
                     f"batch (micro-batches of {smaller})")  # fmt: skip
    if workers and fits(task, micro_batch, 0):
        found.append("--num-workers 0")
    for resolution in task.smaller_resolutions():
        candidate = task.variant(resolution=resolution)
        if candidate is not None and fits(candidate, 1):
            found.append(f"--resolution {resolution} --batch-size {parts}")
            break
    presets = []
    for name in task.other_presets():
        candidate = task.variant(preset=name)
        if candidate is not None and fits(candidate, 1):
            presets.append(name)
    if presets:
        found.append(" or ".join(f"--preset {name}" for name in presets)
                     + f" --batch-size {parts}")  # fmt: skip
    return found


def check_training_memory(
    task: Task,
    config: TrainingConfig,
    micro_batch: int,
    device: torch.device,
    amp_dtype: torch.dtype | None,
) -> MemoryEstimate | None:
    """The run's estimate; :class:`RunDoesNotFit` naming the settings that would fit when it
    is over the limit (``None``, and nothing checked, with ``check_memory`` off)."""
    if not config.check_memory:
        return None
    estimate = estimate_training_memory(task, micro_batch, config.num_workers, device, amp_dtype)
    limit, source = memory_limit(device, config.memory_limit_gb)
    logger.info("memory: about %.1f GiB at the peak of a step, %.1f GiB may be used (%s)",
                estimate.total / GIB, limit / GIB, source)  # fmt: skip
    if _fits(estimate, limit):
        return estimate
    ways = _suggestions(task, config, micro_batch, device, amp_dtype, limit)
    advice = ("; settings that fit: " + "; ".join(ways)) if ways else (
        "; no smaller batch, resolution or preset fits either")  # fmt: skip
    resolution = task.input_size
    raise RunDoesNotFit(
        f"memory: a {task.name} step of preset {config.preset!r} at {resolution}^3 with "
        f"micro-batch {micro_batch} per {device.type} process ({config.num_workers} loader "
        f"worker(s), {'bf16' if amp_dtype else 'fp32'}) needs about {estimate.total / GIB:.1f} "
        f"GiB, over {HEADROOM:.0%} of the {limit / GIB:.1f} GiB of {source}{advice}; or "
        "--no-check-memory to run it anyway (check_memory=False), --memory-limit-gb N to "
        "state the limit"
    )
