"""GridDataset: a PyTorch view of a grid store, one cubic ``S^3`` sample per scene.

The only ``grid_store`` module that imports torch. A sample is::

    {"rgba": (4, S, S, S) float32, "valid": (S, S, S) bool, "scene_id": str,
     "semantic": (S, S, S) uint8,   # only for scenes that store labels
     "boxes": (N, 7) float32,       # only for scenes that store boxes: in the sample's
     "box_labels": (N,) int64}      #   voxel coordinates, see below

Grids are zero-padded at the high end of each axis (NeRF-MAE's ``pad_tensor``), and
``valid`` marks the real region. An axis longer than ``S`` is cropped to an ``S`` window
(from 0 with ``crop="pad"``, at a random offset with ``crop="random"``); with
``whole=True`` nothing is cropped and every sample is padded to the dataset's
:attr:`~GridDataset.sample_shape`, each axis the longest of ``S`` and its scenes' (whole
rooms for windowed validation, :mod:`model.inference.windows`). The window is
sliced out of the zarr array, so only the ``(4, 32, 32, 32)`` chunks it touches are
read and decompressed. Augmentation is NeRF-MAE's ``augment_rpn_inputs``: with
probability 0.5 each, a 90-degree rotation about z (swap x and y, then flip x), a flip
along x and a flip along y, applied before padding so the padding stays at the high end.

Boxes (``(cx, cy, cz, w, l, h, yaw)``, :mod:`grid_store.boxes`) are stored in world units;
a sample's are in its own voxel coordinates (sample ``i`` of an axis at ``i + 0.5``, the
padded cube spans ``[0, S]^3``): world -> voxel coordinates of the stored grid
(``world_to_voxel`` with the scene's ``bbox_min`` and ``voxel_size``), minus the crop
window's start, then the grid's augmentation (``augment_boxes`` with the window's
``(x, y)`` extent), yaw wrapped to ``[-pi, pi)``. A box is kept if and only if its centre
lies in the window, half-open per axis: ``start <= c < stop`` in stored voxel
coordinates (so windows that tile an axis share no box; with ``crop="pad"`` too, where a
box centred beyond the stored grid is dropped); kept boxes are not clipped and may reach
past the window. ``box_labels`` stay aligned with ``boxes``; a sample may have
no box (``(0, 7)`` and ``(0,)``). Boxes are read once per scene and process, like the
arrays. Their count varies, so ``collate_grids`` hands them over as lists
(``default_collate`` would refuse them).

Randomness comes from ``(seed, epoch, index)`` alone, so a sample does not depend on
which DataLoader worker made it or in what order. Call ``set_epoch`` before creating
each epoch's iterator (with ``persistent_workers=True`` the workers keep the epoch
they started with). The store is opened lazily in each process (after a fork or
unpickling), never shared between workers.

Speed (a GPU trainer must never wait): for the store's own encoding (float16 in
Blosc-zstd chunks) ``read_window_into`` fetches a window's chunk objects concurrently
and decompresses each straight into its place in the float32 output, casting and
flipping per chunk; ``__getitems__`` lays a whole batch out in one tensor (in shared
memory inside DataLoader workers) and ``collate_grids`` hands it over without the
copy ``default_collate`` would make. Other encodings go through zarr's own slicing.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
from collections.abc import Sequence
from typing import Any

import numcodecs.blosc
import numpy as np
import torch
import zarr
import zarr.codecs
from torch.utils.data import Dataset, get_worker_info
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from grid_store.boxes import augment_boxes, world_to_voxel
from grid_store.store import GridStore, StoreFormatError, validate_scene_id

CROP_MODES = ("pad", "random")

VARIABLE_LENGTH_KEYS = ("boxes", "box_labels")
"""Sample keys whose first dimension differs between samples: ``collate_grids`` lists them."""


def _is_plain_blosc(array: zarr.Array) -> bool:
    """True if the array's chunks are exactly the store's own encoding: raw float16 in Blosc."""
    codecs = array.metadata.codecs
    return (
        array.dtype == np.float16
        and len(codecs) == 2
        and isinstance(codecs[0], zarr.codecs.BytesCodec)
        and codecs[0].endian is not None
        and codecs[0].endian.value == "little"
        and isinstance(codecs[1], zarr.codecs.BloscCodec)
        and float(array.metadata.fill_value) == 0.0
    )


def read_window_into(
    array: zarr.Array, window: Sequence[slice], flips: Sequence[int], out: torch.Tensor
) -> None:
    """``out[...] = flip(array[:, window], flips)`` chunk by chunk, casting as it goes.

    ``array`` is ``(C, X, Y, Z)`` float16 stored as Blosc chunks (``_is_plain_blosc``);
    ``out`` is a ``(C, x, y, z)`` view of any dtype and strides (e.g. the real region of
    a padded, possibly transposed output). All chunk objects of the window are fetched
    concurrently, then each is decompressed into one reused chunk buffer and cast
    straight into its place in ``out``: no window-sized float16 intermediate, no second
    pass for the cast, and flips cost a copy of one chunk, not of the grid.
    """
    chunk = array.chunks  # (C, cx, cy, cz)
    starts = [range(w.start // c * c, w.stop, c) for w, c in zip(window, chunk[1:], strict=True)]
    origins = list(itertools.product(*starts))
    prefix = array.store_path

    async def fetch_all():
        prototype = default_buffer_prototype()
        indices = [(0, *(o // c for o, c in zip(org, chunk[1:], strict=True))) for org in origins]
        keys = [array.metadata.encode_chunk_key(index) for index in indices]
        return await asyncio.gather(*((prefix / key).get(prototype=prototype) for key in keys))

    buffers = sync(fetch_all())
    decoded = np.empty(chunk, dtype=np.float16)
    decoded_t = torch.from_numpy(decoded)  # (C, cx, cy, cz), shares memory with `decoded`
    with _single_threaded_decoding():
        for origin, buffer in zip(origins, buffers, strict=True):
            _place_chunk(origin, buffer, window, flips, decoded, decoded_t, out)


@contextlib.contextmanager
def _single_threaded_decoding():
    """Intra-op threads of torch and Blosc off for a loop of chunk-sized work.

    Each copy is ~128k elements, just above torch's parallel grain: with 2+ threads the
    fork/join costs more than the copy, and on a busy machine a descheduled thread
    stalls every copy (measured: 0.9 s vs 0.004 s CPU for a grid's 125 chunks). Blosc's
    own threads, which it uses from a process's main thread, cost DataLoader workers
    ~10 % of their throughput the same way (benchmarks/bench_loader.py: parallelism
    comes from the workers). Both settings are process-wide, so they are restored at once.
    """
    threads, blosc_threads = torch.get_num_threads(), numcodecs.blosc.use_threads
    numcodecs.blosc.use_threads = False
    if threads > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        numcodecs.blosc.use_threads = blosc_threads
        if threads > 1:
            torch.set_num_threads(threads)


def _place_chunk(
    origin: Sequence[int],
    buffer,
    window: Sequence[slice],
    flips: Sequence[int],
    decoded: np.ndarray,
    decoded_t: torch.Tensor,
    out: torch.Tensor,
) -> None:
    """Decompress the chunk at ``origin`` and cast its overlap with ``window`` into ``out``."""
    src, dst = [slice(None)], [slice(None)]
    for axis, (o, w, c) in enumerate(zip(origin, window, decoded.shape[1:], strict=True), start=1):
        lo, hi = max(o, w.start), min(o + c, w.stop)  # overlap, in array coordinates
        src.append(slice(lo - o, hi - o))
        a, b = lo - w.start, hi - w.start  # the same, in window coordinates
        length = w.stop - w.start
        dst.append(slice(length - b, length - a) if axis in flips else slice(a, b))
    target = out[tuple(dst)]
    if buffer is None:  # a chunk never written holds the fill value
        target.zero_()
        return
    numcodecs.blosc.decompress(buffer.as_numpy_array(), decoded)
    block = decoded_t[tuple(src)]  # (C, cx, cy, cz) view of the decoded chunk
    target.copy_(block.flip(list(flips)) if flips else block)


def collate_grids(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """``default_collate`` that does not copy batches ``__getitems__`` already laid out.

    ``GridDataset.__getitems__`` writes a batch's samples as consecutive slices of one
    ``(B, C, S, S, S)`` tensor (in shared memory inside DataLoader workers); stacking
    them again would copy ~65 MB per grid for nothing. The variable-length keys
    (``VARIABLE_LENGTH_KEYS``: ``boxes``, ``box_labels``) become lists of the samples'
    tensors, present if any sample has them, with ``None`` for a sample that has none (a
    scene without boxes). Anything else is stacked.
    """
    from torch.utils.data import default_collate

    batch = {}
    for key in VARIABLE_LENGTH_KEYS:
        if any(key in s for s in samples):
            batch[key] = [s.get(key) for s in samples]
    for key in samples[0]:
        if key in batch:
            continue
        values = [s[key] for s in samples]
        base = getattr(values[0], "_grid_batch", None)
        if (
            base is not None
            and all(getattr(v, "_grid_batch", None) is base for v in values)
            and len(values) == base.shape[0]
        ):
            batch[key] = base
        else:
            batch[key] = default_collate(values)
    return batch


class GridDataset(Dataset):
    """Scenes of a grid store as padded/cropped, optionally augmented ``S^3`` samples.

    Args:
        store_url: URL of the grid store (local path, ``memory://``, ``s3://``...).
        scene_ids: scenes to serve, in this order; ``None`` = every complete scene.
        size: the cube edge ``S`` of each sample (NeRF-MAE: 160).
        crop: ``"pad"`` crops oversized axes from index 0; ``"random"`` at a random offset.
        whole: crop nothing: samples are whole grids padded to :attr:`sample_shape`
            (no augmentation).
        augment: apply NeRF-MAE's random z-rotation and x/y flips.
        seed: base seed of the crop offsets and augmentations.
        storage_options: fsspec options for the store (S3 endpoint, credentials).
        alpha_step: re-express each grid's opacity for a sampling step of this length (world
            units): ``alpha' = 1 - (1 - alpha) ** (alpha_step / delta)`` with the scene's
            recorded ``delta`` (:func:`rescale_alpha`); ``None`` keeps the stored alpha.
            NeRF-MAE's published weights saw a step of 0.01.
    """

    def __init__(
        self,
        store_url: str | os.PathLike,
        scene_ids: Sequence[str] | None = None,
        size: int = 160,
        crop: str = "pad",
        augment: bool = False,
        seed: int = 0,
        storage_options: dict | None = None,
        alpha_step: float | None = None,
        whole: bool = False,
    ):
        if crop not in CROP_MODES:
            raise ValueError(f"crop must be one of {CROP_MODES}, got {crop!r}")
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.store_url = os.fspath(store_url)
        self.storage_options = dict(storage_options or {})
        self.size = int(size)
        self.crop = crop
        self.augment = bool(augment)
        self.whole = bool(whole)
        if self.whole and self.augment:
            raise ValueError("whole-grid samples are not augmented (augment=False)")
        self._sample_shape: tuple[int, int, int] | None = None
        self.seed = int(seed)
        if alpha_step is not None and not alpha_step > 0:
            raise ValueError(f"alpha_step must be > 0 or None, got {alpha_step!r}")
        self.alpha_step = alpha_step
        self.epoch = 0
        if scene_ids is None:
            scene_ids = self._open_store().list_scenes()
        self.scene_ids = [validate_scene_id(s) for s in scene_ids]
        self._store: GridStore | None = None
        self._store_pid: int | None = None
        self._arrays: dict[str, Any] = {}

    # ------------------------------------------------------------ process-local state
    def _open_store(self) -> GridStore:
        return GridStore(self.store_url, mode="r", storage_options=self.storage_options)

    def _scene(self, scene_id: str) -> tuple[Any, Any | None, Any, float]:
        """``(rgba, semantic or None, boxes or None, alpha exponent)``, opened/read once per
        scene and process.

        ``boxes`` is ``(voxel_boxes (N, 7) float32, labels (N,) int64)``: the stored boxes
        already in the stored grid's voxel coordinates. Scenes without boxes cost nothing more.
        """
        if self._store is None or self._store_pid != os.getpid():
            self._store, self._store_pid, self._arrays = self._open_store(), os.getpid(), {}
        if scene_id not in self._arrays:
            arrays = self._store.scene_zarr_arrays(scene_id)
            boxes = None
            if "boxes" in arrays or "box_labels" in arrays:
                boxes = self._voxel_boxes(scene_id, arrays)
            self._arrays[scene_id] = (arrays["rgba"], arrays.get("semantic"), boxes,
                                      self._alpha_exponent(scene_id))  # fmt: skip
        return self._arrays[scene_id]

    def _alpha_exponent(self, scene_id: str) -> float:
        """``alpha_step / delta`` of the scene (1 without ``alpha_step``)."""
        if self.alpha_step is None:
            return 1.0
        delta = self._store.scene_attrs(scene_id).get("delta")
        if not isinstance(delta, (int, float)) or not delta > 0:
            raise StoreFormatError(f"{self.store_url}: scene {scene_id!r} records no valid "
                                   f"delta ({delta!r}) to re-express its alpha with "
                                   "(alpha_step)")  # fmt: skip
        return float(self.alpha_step) / float(delta)

    def _voxel_boxes(self, scene_id: str, arrays: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """The scene's stored boxes in its grid's voxel coordinates, with their labels."""
        if "boxes" not in arrays or "box_labels" not in arrays:
            raise StoreFormatError(
                f"{self.store_url}: scene {scene_id!r} stores only one of boxes/box_labels"
            )
        boxes = np.asarray(arrays["boxes"][...], dtype=np.float32).reshape(-1, 7)
        labels = np.asarray(arrays["box_labels"][...], dtype=np.int64).reshape(-1)
        if len(labels) != len(boxes):
            raise StoreFormatError(
                f"{self.store_url}: scene {scene_id!r} has {len(boxes)} boxes "
                f"but {len(labels)} box_labels"
            )
        attrs = self._store.scene_attrs(scene_id)
        return world_to_voxel(boxes, attrs["bbox_min"], float(attrs["voxel_size"])), labels

    def __getstate__(self) -> dict[str, Any]:
        # Open stores (fsspec sessions, event loops) do not cross process boundaries.
        state = dict(self.__dict__)
        state.update(_store=None, _store_pid=None, _arrays={})
        return state

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random crops/augmentations the next samples use."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.scene_ids)

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """The ``(X, Y, Z)`` every sample is padded to: ``(S, S, S)``, or with ``whole`` the
        longest of ``S`` and the scenes' grids per axis (read from the arrays' metadata)."""
        if self._sample_shape is None:
            shape = [self.size] * 3
            if self.whole:
                for scene_id in self.scene_ids:
                    grid = self._scene(scene_id)[0].shape[1:]
                    shape = [max(a, int(b)) for a, b in zip(shape, grid, strict=True)]
            self._sample_shape = (shape[0], shape[1], shape[2])
        return self._sample_shape

    def oversized(self) -> dict[str, tuple[int, int, int]]:
        """The scenes whose grid exceeds the ``S`` cube on some axis, with their shapes."""
        shapes = {s: tuple(int(n) for n in self._scene(s)[0].shape[1:]) for s in self.scene_ids}
        return {s: shape for s, shape in shapes.items() if max(shape) > self.size}  # type: ignore[misc]

    # ------------------------------------------------------------------- sampling
    def _window(self, shape: Sequence[int], rng: np.random.Generator) -> tuple[slice, slice, slice]:
        """The ``S``-or-smaller window of each stored axis this sample reads."""
        if self.whole:
            return tuple(slice(0, n) for n in shape)  # type: ignore[return-value]
        window = []
        for n in shape:
            span = min(n, self.size)
            start = int(rng.integers(0, n - span + 1)) if self.crop == "random" and n > span else 0
            window.append(slice(start, start + span))
        return tuple(window)  # type: ignore[return-value]

    def _augmentation(self, rng: np.random.Generator) -> tuple[bool, bool, bool]:
        if not self.augment:
            return False, False, False
        rotate, flip_x, flip_y = (bool(v) for v in rng.random(3) < 0.5)
        return rotate, flip_x, flip_y

    @staticmethod
    def _augmented(volume: torch.Tensor, rotate: bool, flip_x: bool, flip_y: bool) -> torch.Tensor:
        """NeRF-MAE's rotation/flips of ``(C, X, Y, Z)``: ``transpose(x, y)`` then ``flip(x)``."""
        if rotate:  # 90 degrees about z: (i, j, k) -> (Y-1-j, i, k)
            volume = volume.transpose(1, 2)
        # The rotation's flip of x and a random flip of x cancel: one flip (one copy) at most.
        dims = [d for d, on in ((1, rotate != flip_x), (2, flip_y)) if on]
        return volume.flip(dims) if dims else volume

    def _padded(self, volume: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``(C, x, y, z)`` (any strides) -> ``(C, *sample_shape)`` of ``dtype``, zeros at the
        high end.

        One pass: torch casts (vectorised, threaded) and de-strides straight into the
        output; only the padding slabs are zeroed, not the whole cube.
        """
        c, x, y, z = volume.shape
        out = torch.empty((c, *self.sample_shape), dtype=dtype)
        out[:, :x, :y, :z].copy_(volume)
        _zero_outside(out, (x, y, z))
        return out

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        """Samples of a batch, written into one ``(B, ...)`` tensor per key.

        DataLoader calls this with a batch's indices; pass ``collate_fn=collate_grids``
        to receive those tensors without a copy. Inside a worker they are allocated in
        shared memory, so handing them to the main process copies nothing either.
        """
        B, shape = len(indices), self.sample_shape
        in_worker = get_worker_info() is not None
        rgba = _zeros((B, 4, *shape), torch.float32, shared=in_worker)
        valid = _zeros((B, *shape), torch.bool, shared=in_worker)
        samples = [self._sample_into(index, rgba[b], valid[b]) for b, index in enumerate(indices)]
        for sample in samples:  # marks the slices for collate_grids (in this process only)
            sample["rgba"]._grid_batch, sample["valid"]._grid_batch = rgba, valid
        return samples

    def _sample_into(self, index: int, rgba_out: torch.Tensor, valid_out: torch.Tensor) -> dict:
        """Write sample ``index`` into the zero-filled ``rgba_out`` (4, S, S, S) and ``valid_out``.

        The padding is left as the zeros the buffers start with: writing zeros over it would
        fault in every page of the padded region (often half the cube) for nothing.
        """
        scene_id = self.scene_ids[index]
        rgba_array, semantic_array, boxes, alpha_exponent = self._scene(scene_id)
        rng = np.random.default_rng([self.seed, self.epoch, index])
        window = self._window(rgba_array.shape[1:], rng)
        rotate, flip_x, flip_y = self._augmentation(rng)

        x, y, z = (w.stop - w.start for w in window)
        if rotate:
            x, y = y, x
        real = (slice(None), slice(0, x), slice(0, y), slice(0, z))
        if _is_plain_blosc(rgba_array):
            # Write flip(window) into the real region seen through the rotation's transpose.
            target = rgba_out[real].transpose(1, 2) if rotate else rgba_out[real]
            read_window_into(rgba_array, window, stored_axis_flips(rotate, flip_x, flip_y), target)
        else:  # another encoding (written by other tools): zarr's generic path
            volume = torch.from_numpy(rgba_array[(slice(None), *window)])
            rgba_out[real].copy_(self._augmented(volume, rotate, flip_x, flip_y))
        valid_out[real[1:]] = True
        if alpha_exponent != 1.0:
            rescale_alpha(rgba_out[3], alpha_exponent)
        sample: dict[str, Any] = {"rgba": rgba_out, "valid": valid_out, "scene_id": scene_id}
        if semantic_array is not None:
            semantic = torch.from_numpy(semantic_array[window][None])  # (1, x, y, z) uint8
            semantic = self._augmented(semantic, rotate, flip_x, flip_y)
            sample["semantic"] = self._padded(semantic, torch.uint8)[0]  # (X, Y, Z)
        if boxes is not None:
            sample["boxes"], sample["box_labels"] = window_boxes(
                *boxes, window, rotate, flip_x, flip_y
            )
        return sample


def rescale_alpha(alpha: torch.Tensor, exponent: float) -> torch.Tensor:
    """``alpha`` re-expressed, in place, for a step ``exponent`` times as long: ``1 - (1 -
    alpha) ** exponent`` (opacity ``1 - exp(-sigma * delta)`` of the same density over the
    longer step); 0 stays 0, 1 stays 1. Returns ``alpha``."""
    transmittance = torch.log1p(-alpha.clamp(max=1.0))  # log(1 - alpha), -inf at alpha 1
    return alpha.copy_(-torch.expm1(transmittance * exponent))


def real_bounds(valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The bounding box of an ``(X, Y, Z)`` bool mask (a sample's ``valid``): ``(3,)`` int64
    ``lo`` (first index) and ``hi`` (one past the last) per axis, both 0 on every axis of an
    empty mask. Computed on the mask's device without a host sync."""
    lo, hi = [], []
    for axis in range(3):
        along = valid.any(dim=tuple(a for a in range(3) if a != axis))  # (n,) bool
        found = along.any()
        occupied = along.to(torch.uint8)  # argmax takes numbers
        first = torch.argmax(occupied)  # the first True (0 when none)
        last = occupied.shape[0] - torch.argmax(occupied.flip(0))  # one past the last True
        lo.append(torch.where(found, first, 0))
        hi.append(torch.where(found, last, 0))
    return torch.stack(lo), torch.stack(hi)


def real_extent(valid: torch.Tensor) -> torch.Tensor:
    """``(3,)`` int64 size of a sample's real region (``valid`` ``(X, Y, Z)``, padding at the
    high end of each axis): one past its last index per axis, 0 for an empty mask."""
    return real_bounds(valid)[1]


def window_boxes(
    boxes: np.ndarray,
    labels: np.ndarray,
    window: Sequence[slice],
    rotate: bool,
    flip_x: bool,
    flip_y: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A window's boxes and labels, in the augmented sample's voxel coordinates.

    ``boxes`` ``(N, 7)`` are in the stored grid's voxel coordinates and ``window`` is the
    ``(x, y, z)`` slices of the stored grid a sample reads. Kept: the boxes whose centre
    lies in the window, ``start <= c < stop`` on every axis. They are shifted by the
    window's start and then moved like the voxels (``augment_boxes`` with the window's
    ``(x, y)`` extent), neither clipped nor otherwise changed. Returns ``(N', 7)`` float32
    and ``(N',)`` int64 tensors.
    """
    start = np.array([w.start for w in window], dtype=np.float32)
    stop = np.array([w.stop for w in window], dtype=np.float32)
    centres = boxes[:, :3]
    keep = ((centres >= start) & (centres < stop)).all(axis=1)
    shifted = boxes[keep]  # a copy (boolean indexing)
    shifted[:, :3] -= start
    extent = (window[0].stop - window[0].start, window[1].stop - window[1].start)
    moved = augment_boxes(shifted, extent, rotate, flip_x, flip_y)
    return torch.from_numpy(moved.reshape(-1, 7)), torch.from_numpy(labels[keep])


def stored_axis_flips(rotate: bool, flip_x: bool, flip_y: bool) -> list[int]:
    """The augmentation's flips as axes of the stored grid (before the x/y transpose).

    ``GridDataset._augmented`` is ``flip(transpose(v), dims)``; equivalently
    ``transpose(flip(v, dims'))`` where ``dims'`` swaps 1 and 2 when rotating.
    """
    dims = [d for d, on in ((1, rotate != flip_x), (2, flip_y)) if on]
    return [{1: 2, 2: 1}[d] for d in dims] if rotate else dims


def _zeros(shape: tuple[int, ...], dtype: torch.dtype, shared: bool) -> torch.Tensor:
    """A zero tensor whose pages the kernel zeroes, so untouched padding costs nothing.

    ``torch.zeros`` would memset (and so fault in) all of a ~65 MB-per-grid batch; a large
    calloc (numpy's ``zeros``) and fresh shared memory are zero by definition.
    """
    if not shared:
        return torch.from_numpy(np.zeros(shape, dtype=torch.empty((), dtype=dtype).numpy().dtype))
    storage = _shared_storage(int(np.prod(shape)) * dtype.itemsize)
    return torch.empty((0,), dtype=dtype).set_(storage).view(shape)


def _shared_storage(nbytes: int) -> torch.UntypedStorage:
    """Zero-filled shared memory that DataLoader hands to the main process without a copy.

    torch's own ``_new_shared`` fallocates every page up front, and its file lives in
    ``/dev/shm`` (64 MB in a default Docker container). A sparse memfd instead gets
    pages only where a grid is written (padding is often half the cube): allocating,
    filling 60 % of and freeing a batch of 4 measured ~3x cheaper on its own. It is passed
    on as a file descriptor, so it needs torch's default "file_descriptor" sharing strategy
    and Linux's memfd; otherwise torch's allocation is used.
    """
    if not hasattr(os, "memfd_create") or (
        torch.multiprocessing.get_sharing_strategy() != "file_descriptor"
    ):
        return torch.UntypedStorage._new_shared(nbytes)
    fd = os.memfd_create("nerfmae-grid-batch", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, nbytes)
        return torch.UntypedStorage._new_shared_fd_cpu(fd, nbytes)  # maps its own dup of fd
    finally:
        os.close(fd)


def _zero_outside(out: torch.Tensor, extent: tuple[int, int, int]) -> None:
    """Zero ``out`` (C, S, S, S) beyond ``extent`` at the high end of each axis."""
    x, y, z = extent
    out[:, x:] = 0
    out[:, :x, y:] = 0
    out[:, :x, :y, z:] = 0
