"""Linear probes of frozen features: did pretraining teach the encoder anything?

A feature source (:mod:`.sources`: a checkpoint's frozen encoder stages, the same architecture
untrained, the voxel's own colour, its position alone) is read at fixed voxels of labelled rooms
(:mod:`.rooms`, :mod:`.interpolation`) by two linear probes (:mod:`.linear`): the class of a voxel
(:mod:`.semantic`; and from its token, one map per position in the token's patch:
:mod:`.tokens`) and the class and size of an object from features pooled over its box
(:mod:`.objects`); :func:`probe_source` runs both (:mod:`.probe`).
``benchmarks/bench_probe.py`` traces them over a pretraining run's checkpoints.
"""

from model.probing.probe import ProbeConfig, probe_source
from model.probing.rooms import ProbeRooms, SamplingConfig, load_rooms
from model.probing.sources import (
    ColourSource,
    CoordinateConfig,
    CoordinateSource,
    EncoderSource,
    FeatureSource,
    checkpoint_source,
    random_source,
    run_checkpoints,
)

__all__ = [
    "ColourSource",
    "CoordinateConfig",
    "CoordinateSource",
    "EncoderSource",
    "FeatureSource",
    "ProbeConfig",
    "ProbeRooms",
    "SamplingConfig",
    "checkpoint_source",
    "load_rooms",
    "probe_source",
    "random_source",
    "run_checkpoints",
]
