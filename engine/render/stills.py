"""Still renders of key expressions (detail on and off, debug views) into a folder: `scapecast render`, and a
before | after sheet against stills an earlier version wrote: `scapecast render --compare BEFORE_DIR`.

Each key expression is rendered at its table pattern scaled to a peak weight of 1 (design §4.1 lists
e.g. smile at 0.6; the scaled pattern shows the same shape more clearly).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np

from engine.config import RenderConfig
from engine.detail.weights import KEY_EXPRESSION_NAMES, key_expression_weights
from engine.face_model import FaceModel
from engine.identity import Identity
from engine.render.outputs import flatten, side_by_side, write_png
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


COMPARE_SHEET = "before_after.jpg"
_SHEET_BACKGROUND = (40, 40, 40)


def render_compare(
    model: FaceModel,
    identity: Identity,
    config: RenderConfig,
    before_dir: Path,
    out_path: Path,
    names: tuple[str, ...] = DEFAULT_STILLS,
    detail_gain: float = 1.0,
    cell: int = 320,
) -> Path:
    """One labelled sheet: per key expression a row `before | after`, written to `out_path` (JPEG or PNG by suffix).

    before: `<before_dir>/<name>_detail_on.png` (else `_detail_off.png`), what `render --out` wrote with an
    earlier version; after: the same expression rendered now, with detail when the identity has bases.
    Expressions without a before picture are left out; none at all is an error. Each picture is scaled to
    `cell` px high over a dark grey background.
    """
    from PIL import Image, ImageDraw, ImageFont

    rows: dict[str, np.ndarray] = {}
    with AvatarRenderer(model, identity, config, detail_gain=detail_gain) as renderer:
        for name in names:
            before_path = next(
                (p for s in ("on", "off") if (p := before_dir / f"{name}_detail_{s}.png").exists()), None
            )
            if before_path is None:
                log.warning("no before picture of %s in %s: left out of the sheet", name, before_dir)
                continue
            before = np.asarray(Image.open(before_path).convert("RGBA"))
            after = renderer.render(key_expression_state(name)).image
            rows[name] = side_by_side(before, after, height=cell, background=_SHEET_BACKGROUND)
    if not rows:
        raise ValueError(f"{before_dir} holds no <expression>_detail_on.png or _detail_off.png of {', '.join(names)}")
    width = max(r.shape[1] for r in rows.values())
    header = max(16, cell // 12)
    sheet = np.full((header + cell * len(rows), width, 3), _SHEET_BACKGROUND, np.uint8)
    for k, row in enumerate(rows.values()):
        sheet[header + k * cell : header + (k + 1) * cell, : row.shape[1]] = flatten(row)
    picture = Image.fromarray(sheet)
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default(size=int(header * 0.7))
    for x, text in ((0, "before"), (width // 2, "after")):
        draw.text((x + 8, header // 8), text, fill=(230, 230, 230), font=font)
    for k, name in enumerate(rows):
        draw.text((8, header + k * cell + 4), name, fill=(230, 230, 230), font=font)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if out_path.suffix.lower() in (".jpg", ".jpeg"):
        picture.save(out_path, quality=85, optimize=True)
    else:
        picture.save(out_path, optimize=True)
    return out_path
