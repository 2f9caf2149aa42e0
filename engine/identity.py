"""Identity: who the avatar is. w_id, neutral calibration, UV albedo and the 20 detail bases (DESIGN §5).

The on-disk bundle (`identity.json`, `texture.png`, `bases.npz` under
`$XDG_CACHE_HOME/scapecast/identities/<name>/`) is read and written here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DetailBases:
    """The 20 key-expression displacement bases of one identity, in the face UV tile.

    maps: (20, N, N, 3) float32 — channel 0 F̂_i in millimetres along the base-mesh normal, channels 1, 2 its
    UV gradient ∂F̂/∂u, ∂F̂/∂v in millimetres per unit UV. Row 0 of the image is v = 0.
    """

    maps: np.ndarray
    backend: str

    @property
    def resolution(self) -> int:
        return int(self.maps.shape[1])


@dataclass(frozen=True)
class Identity:
    """Everything identity-specific the solver and renderer need.

    identity_weights: (n_id,) float32 model identity coefficients. neutral_offset: (53,) float32 weights the
    user's relaxed face reads as (subtracted before clamping). texture: (H, W, 3) uint8 UV albedo of the face
    tile, or None for the plain skin material.
    """

    name: str
    model_id: str
    identity_weights: np.ndarray
    neutral_offset: np.ndarray
    texture: np.ndarray | None = None
    bases: DetailBases | None = None
    source: str = ""
