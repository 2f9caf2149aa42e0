"""What the page needs besides the identity: camera, lights, constants and shader defines, from the desktop's own
definitions (`engine.render.renderer.Lighting`, `Camera`, `ShadeClass`, `DrawGroup`, the culled and blended groups).

Sent once per connection in the WebSocket's `hello` message as `config`:

    camera      {fov_y_deg, distance_cm, near_cm, far_cm, width, height, follow_pose_translation}
    lighting    {u_light_dir: [key, fill], u_light_color: [key, fill], u_sky, u_ground}
    uniforms    constants of every variant (u_iris_color), and per frame u_detail_gain
    defines     CLASS_*, GROUP_*, DEBUG_VIEW — the values the desktop compiles with
    groups      [{group, culled, blended}] in draw order (blended: coverage blended over the rest, no depth writes)
    background  RGBA clear colour; detail: whether the dynamic-detail blend is on

Two values are literals inside `AvatarRenderer._bind_program_uniforms` and are repeated here (`IRIS_COLOR`, the
mouth's 5 cm depth in engine/web/assets.py); tests/test_web.py reads every uniform of a desktop program and
compares, so a change there fails until it is made here too.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from engine.config import DetailConfig, RenderConfig
from engine.render.camera import Camera
from engine.render.materials import DrawGroup, ShadeClass
from engine.render.renderer import _BACKFACE_CULLED, _BLENDED, _DEBUG_VIEWS, Lighting

IRIS_COLOR = (0.16, 0.09, 0.045)  # linear; AvatarRenderer._bind_program_uniforms


def _floats(a: Any) -> Any:
    return np.asarray(a, np.float32).tolist()


def page_config(render: RenderConfig, detail: DetailConfig) -> dict[str, Any]:
    """The `config` of the hello message for these render and detail settings."""
    camera = Camera(render.width, render.height, render.fov_y_deg, render.camera_distance_cm)
    light = Lighting()
    return {
        "camera": {
            "fov_y_deg": camera.fov_y_deg,
            "distance_cm": camera.distance_cm,
            "near_cm": camera.near_cm,
            "far_cm": camera.far_cm,
            "width": render.width,
            "height": render.height,
            "follow_pose_translation": render.follow_pose_translation,
        },
        "lighting": {
            "u_light_dir": _floats(np.stack([light.key_direction, light.fill_direction])),
            "u_light_color": _floats(np.stack([light.key_color, light.fill_color])),
            "u_sky": _floats(light.sky),
            "u_ground": _floats(light.ground),
        },
        "uniforms": {"u_iris_color": list(IRIS_COLOR), "u_detail_gain": detail.scale_mm},
        "defines": {
            "DEBUG_VIEW": _DEBUG_VIEWS[render.debug_view],
            **{f"CLASS_{c.name}": int(c) for c in ShadeClass},
            **{f"GROUP_{g.name}": int(g) for g in DrawGroup},
        },
        "groups": [{"group": int(g), "culled": g in _BACKFACE_CULLED, "blended": g in _BLENDED} for g in DrawGroup],
        "background": list(render.background),
        "detail": detail.enabled,
    }
