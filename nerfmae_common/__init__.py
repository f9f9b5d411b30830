"""Plain helpers every package of the project may import: a leaf that imports none of them.

- :mod:`nerfmae_common.files`: atomic file writes (a reader never sees half a file).
- :mod:`nerfmae_common.psnr`: PSNR from a mean squared error, one rule everywhere.
- :mod:`nerfmae_common.devices`: the torch device a ``device`` setting names.

Standard library and numpy only; torch is imported inside the helpers that take tensors.
"""
