"""Oriented-box machinery of 3D detection: rotated IoU and NMS, box encoding, FCOS targets and
losses, head outputs to boxes, and NeRF-RPN's rotate-and-scale augmentation (pure PyTorch)."""
