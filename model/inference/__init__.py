"""Trained networks applied to a store's scenes (outside a training run)."""
