"""3D object detection on the NeRF-MAE encoder: boxes, the FCOS head, evaluation, pictures."""
