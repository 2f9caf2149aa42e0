"""Still renders of key expressions (detail on and off, debug views) into a folder: `scapecast render`.

Each key expression is rendered at its table pattern scaled to a peak weight of 1 (design §4.1 lists
e.g. smile at 0.6; the scaled pattern shows the same shape more clearly).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from engine.config import RenderConfig
from engine.detail.weights import KEY_EXPRESSION_NAMES, key_expression_weights
from engine.face_model import FaceModel
from engine.identity import Identity
from engine.render.outputs import side_by_side, write_png
from engine.render.renderer import AvatarRenderer
from engine.types import FaceState

log = logging.getLogger(__name__)

DEFAULT_STILLS = ("neutral", "smile", "mouth_stretch", "brow_raiser", "lip_puckerer")


def key_expression_state(name: str) -> FaceState:
    """A frontal FaceState showing key expression `name` at a peak weight of 1."""
    if name not in KEY_EXPRESSION_NAMES:
        raise ValueError(f"unknown key expression {name!r}; known: {', '.join(KEY_EXPRESSION_NAMES)}")
    pattern = key_expression_weights()[KEY_EXPRESSION_NAMES.index(name)]
    return replace(FaceState.neutral(), weights=pattern / max(pattern.max(), 1e-9))


def render_stills(
    model: FaceModel,
    identity: Identity,
    config: RenderConfig,
    out_dir: Path,
    names: tuple[str, ...] = DEFAULT_STILLS,
    debug_views: bool = True,
    detail_gain: float = 1.0,
) -> list[Path]:
    """Write `<name>_detail_on.png` / `_detail_off.png` (RGBA) and a `<name>_compare.png` sheet per key
    expression, plus `<first non-neutral>_{displacement,weights,normals}.png`. Returns the files written."""

    states = {name: key_expression_state(name) for name in names}
    written: list[Path] = []
    with AvatarRenderer(model, identity, config, detail_gain=detail_gain) as renderer:
        has_detail = renderer.detail
        for name, state in states.items():
            images = {}
            for on in (True, False) if has_detail else (False,):
                renderer.detail = on
                images[on] = renderer.render(state).image
                written.append(write_png(out_dir / f"{name}_detail_{'on' if on else 'off'}.png", images[on]))
            if has_detail:
                sheet = side_by_side(images[False], images[True], background=(40, 40, 40))
                written.append(write_png(out_dir / f"{name}_compare.png", sheet))
    focus = next((n for n in names if n != "neutral"), None)
    if debug_views and has_detail and focus is not None:
        for view in ("displacement", "weights", "normals"):
            debug_config = config.model_copy(update={"debug_view": view})
            with AvatarRenderer(model, identity, debug_config, detail_gain=detail_gain) as renderer:
                written.append(write_png(out_dir / f"{focus}_{view}.png", renderer.render(states[focus]).image))
    return written
