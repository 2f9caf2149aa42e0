"""The detail network: UV texture + deforming map (+ neutral position map) → one displacement basis (design §4.3).

A small fully convolutional U-Net (FaceScape uses pix2pixHD; this is the light version the CPU can run):
four scales, two 3×3 convolutions per scale, nearest-neighbour upsampling and skip connections, SiLU,
no normalization layers (so the batch of 20 is 20 independent images and ONNX/TensorRT see plain ops).
Output: tanh × `scale_mm` millimetres along the base-mesh normal.

Input channels (built by `network_inputs`, shared by training and every backend):
    0–2  texture RGB in [−1, 1]
    3–5  deforming map: key-expression offset from neutral, cm × 2
    6–8  neutral position map relative to the face's mean, cm / 10
    9    face mask (1 on the face tile, 0 off it)
Texel scale: trained on 512² maps of the face tile (≈ 0.58 mm per texel); the network runs at any size
divisible by 16, but its wrinkles have the wavelengths it learned at 512².
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from engine.errors import UserError
from engine.face_model import MODELS_DIR

IN_CHANNELS = 10
DEFAULT_WEIGHTS = MODELS_DIR / "detail_net.pt"
DEFAULT_ONNX = MODELS_DIR / "detail_net.onnx"
SIZE_MULTIPLE = 16  # four 2× downsamplings


def network_inputs(
    texture: np.ndarray,
    deform: np.ndarray,
    position: np.ndarray,
    mask: np.ndarray,
    centre: np.ndarray | None = None,
) -> np.ndarray:
    """Assemble the network input for one identity.

    texture: (N, N, 3) uint8 (row 0 at v = 0). deform: (B, N, N, 3) float cm. position: (N, N, 3) float cm.
    mask: (N, N) bool. centre: (3,) cm the position map is taken relative to (default: its mean over the
    mask; pass the full map's centre when these are crops). Returns (B, 10, N, N) float32.
    """
    b, n, w = deform.shape[0], deform.shape[1], deform.shape[2]
    if texture.shape != (n, w, 3) or position.shape != (n, w, 3) or mask.shape != (n, w):
        raise ValueError(
            f"texture {texture.shape}, position {position.shape} and mask {mask.shape} must match deform {deform.shape}"
        )
    m = mask.astype(bool)
    if centre is None:
        centre = position[m].mean(axis=0) if m.any() else np.zeros(3)
    static = np.concatenate(
        [
            texture.astype(np.float32) / 127.5 - 1.0,
            np.zeros((n, w, 3), np.float32),
            (position - centre) / 10.0 * m[..., None],
            m[..., None].astype(np.float32),
        ],
        axis=-1,
    )
    x = np.repeat(static[None], b, axis=0)
    x[..., 3:6] = deform * 2.0
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.SiLU(), nn.Conv2d(cout, cout, 3, padding=1), nn.SiLU())


class DetailUNet(nn.Module):
    """(B, 10, N, N) → (B, 1, N, N) millimetres; N divisible by 16."""

    def __init__(self, width: int = 16, scale_mm: float = 1.0) -> None:
        super().__init__()
        w = (width, 2 * width, 4 * width, 6 * width, 8 * width)
        self.scale_mm = scale_mm
        self.width = width
        self.enc = nn.ModuleList([_block(IN_CHANNELS, w[0]), *[_block(w[k], w[k + 1]) for k in range(3)]])
        self.down = nn.ModuleList([nn.Conv2d(w[k], w[k], 2, stride=2) for k in range(4)])
        self.mid = _block(w[3], w[4])
        self.up = nn.ModuleList([nn.Upsample(scale_factor=2, mode="nearest") for _ in range(4)])
        self.dec = nn.ModuleList([_block(w[k + 1] + w[k], w[k]) for k in reversed(range(4))])
        self.head = nn.Conv2d(w[0], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for enc, down in zip(self.enc, self.down, strict=True):
            x = enc(x)
            skips.append(x)
            x = down(x)
        x = self.mid(x)
        for up, dec, skip in zip(self.up, self.dec, reversed(skips), strict=True):
            x = dec(torch.cat([up(x), skip], dim=1))
        return torch.tanh(self.head(x)) * self.scale_mm


def load_network(path: Path | str = DEFAULT_WEIGHTS, device: str = "cpu") -> DetailUNet:
    """Load a state dict saved by `tools/train_detail.py` (it stores width and scale with the weights)."""

    path = Path(path)
    if not path.is_file():
        raise UserError(f"detail network weights not found: {path} (train them with tools/train_detail.py)")
    try:
        blob = torch.load(path, map_location=device, weights_only=True)
        net = DetailUNet(width=int(blob["width"]), scale_mm=float(blob["scale_mm"]))
        net.load_state_dict(blob["state_dict"])
    except (KeyError, RuntimeError, OSError, ValueError) as exc:
        raise UserError(f"detail network weights {path} are unreadable or do not match the network: {exc}") from None
    return net.to(device).eval()


def save_network(net: DetailUNet, path: Path | str) -> Path:
    """Write the state dict plus the architecture parameters `load_network` needs."""
    path = Path(path)
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    torch.save({"width": net.width, "scale_mm": net.scale_mm, "state_dict": state}, path)
    return path


def export_onnx(net: DetailUNet, path: Path | str, resolution: int = 64) -> Path:
    """Export with dynamic batch and spatial size (opset 17); `resolution` only shapes the trace."""
    path = Path(path)
    net = net.cpu().eval()
    dummy = torch.zeros(1, IN_CHANNELS, resolution, resolution)
    torch.onnx.export(
        net,
        (dummy,),
        str(path),
        input_names=["inputs"],
        output_names=["displacement_mm"],
        dynamic_axes={name: {0: "batch", 2: "height", 3: "width"} for name in ("inputs", "displacement_mm")},
        opset_version=17,
        dynamo=False,
    )
    return path
