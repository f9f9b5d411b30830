"""NeRF-MAE: the 3D Swin Transformer MAE, downstream heads and the training engine."""
