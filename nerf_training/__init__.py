"""Per-scene hash-grid NeRF training (tiny-cuda-nn on a GPU, pure PyTorch elsewhere)."""
