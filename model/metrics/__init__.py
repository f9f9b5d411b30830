"""Validation figures of each task, accumulated over batches and merged over ranks.

- :mod:`~model.metrics.reconstruction`: the MAE's colour PSNR and masked alpha MSE.
- :mod:`~model.metrics.semantic`: class weights, confusion, mIoU / mAcc / allAcc.
- :mod:`~model.metrics.superres`: occupied-voxel RGB error, pooled PSNR.
- :mod:`~model.metrics.detection`: VOC AP25/AP50 and recalls of oriented boxes.
"""
