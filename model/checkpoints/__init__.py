"""Checkpoints in and out: every format the project reads, the networks they hold, what a
downstream network takes from a pretraining checkpoint, and export in the published layout.

- :mod:`~model.checkpoints.reading`: :func:`read_checkpoint` (ours of any task, NeRF-MAE's
  published MAE and detector files), told apart by content.
- :mod:`~model.checkpoints.loading`: :func:`load_model`, the network with its weights.
- :mod:`~model.checkpoints.transfer`: a pretraining checkpoint's encoder (and decoder blocks
  4-2) into a fine-tuning network.
- :mod:`~model.checkpoints.reference`: the published layouts (names, shapes, export).

Training-run checkpoints themselves (exact resume) are :mod:`model.training.checkpointing`.
"""
