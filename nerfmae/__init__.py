"""The ``nerfmae`` console script."""
