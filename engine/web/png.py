"""A small PNG encoder for 8- and 16-bit grey/RGB/RGBA tiles (Pillow writes no 16-bit colour PNGs).

Standard PNG (ISO/IEC 15948): signature, IHDR, one IDAT (zlib), IEND; no interlacing and no ancillary chunks (no
gAMA, no iCCP), so a browser or any tool reads the stored numbers as they are. Each row gets the filter that
libpng's heuristic picks (smallest sum of absolute signed bytes), computed for all rows at once from the raw
bytes (every PNG filter predicts from unfiltered neighbours, so the filters vectorize). The page decodes these
files itself (`static/app.js: decodePng`), with the browser's zlib (`DecompressionStream`), to get the exact
16-bit values: `<img>` decoding reduces 16-bit PNGs to 8 bits and may colour-manage.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

SIGNATURE = b"\x89PNG\r\n\x1a\n"
_COLOR_TYPE = {1: 0, 3: 2, 4: 6}  # channels → PNG colour type (grey, truecolour, truecolour with alpha)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _filtered_rows(raw: np.ndarray, bpp: int) -> np.ndarray:
    """(H, B) uint8 scanlines → (H, 1 + B) with each row's best filter type in front."""
    h, _ = raw.shape
    x = raw.astype(np.int16)
    up = np.zeros_like(x)
    up[1:] = x[:-1]
    left = np.zeros_like(x)
    left[:, bpp:] = x[:, :-bpp]
    up_left = np.zeros_like(x)
    up_left[1:, bpp:] = x[:-1, :-bpp]
    p = left + up - up_left
    pa, pb, pc = np.abs(p - left), np.abs(p - up), np.abs(p - up_left)
    paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, up_left))
    candidates = np.stack([x, x - left, x - up, x - (left + up) // 2, x - paeth]).astype(np.uint8)  # mod 256
    cost = np.abs(candidates.view(np.int8).astype(np.int32)).sum(axis=2)  # (5, H)
    best = cost.argmin(axis=0)
    out = np.empty((h, 1 + raw.shape[1]), np.uint8)
    out[:, 0] = best
    out[:, 1:] = candidates[best, np.arange(h)]
    return out


def encode_png(image: np.ndarray, level: int = 6) -> bytes:
    """(H, W) or (H, W, C) uint8/uint16 with C in 1, 3, 4 → PNG bytes (16-bit samples big-endian, as PNG wants)."""
    a = np.asarray(image)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[2] not in _COLOR_TYPE or a.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"expected (H, W[, 1|3|4]) uint8 or uint16, got {a.shape} {a.dtype}")
    h, w, c = a.shape
    depth = 8 if a.dtype == np.uint8 else 16
    raw = np.ascontiguousarray(a.astype(">u2") if depth == 16 else a).view(np.uint8).reshape(h, -1)
    rows = _filtered_rows(raw, c * depth // 8)
    header = struct.pack(">IIBBBBB", w, h, depth, _COLOR_TYPE[c], 0, 0, 0)
    return (
        SIGNATURE
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(rows.tobytes(), level))
        + _chunk(b"IEND", b"")
    )
