"""Peak signal-to-noise ratio of signals in [0, 1]: ``-10 log10(MSE)``.

One rule for every figure the project reports (NeRF held-out views, grid fidelity, MAE
reconstruction, super-resolution): a perfect match (MSE 0) is ``+inf``, and an MSE that
is NaN (nothing was scored) stays NaN.
"""

from __future__ import annotations

import math
from typing import Any


def psnr_from_mse(mse: Any) -> Any:
    """PSNR in dB of an MSE: a number gives a float, a torch tensor an element-wise tensor
    (+inf at 0 and NaN at NaN by IEEE rules)."""
    if isinstance(mse, (int, float)):
        if math.isnan(mse):
            return math.nan
        return math.inf if mse == 0 else -10.0 * math.log10(mse)
    return -10.0 * mse.log10()
