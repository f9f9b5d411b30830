"""Pictures of each task's validation grids (PNG, also shown in TensorBoard).

- :mod:`~model.pictures.common`: real region, top-down compositing, saving a figure.
- :mod:`~model.pictures.reconstruction`: the MAE's masked input, prediction and target.
- :mod:`~model.pictures.dense`: true vs predicted label slices; super-resolved grids.
- :mod:`~model.pictures.boxes`: oriented boxes over a grid (bird's-eye view and slices).
"""

import matplotlib

matplotlib.use("Agg")  # before any submodule imports pyplot: pictures are files, never windows
