"""OpenGL contexts and shader programs for the renderer.

Rendering is always off-screen into framebuffers (EGL: Mesa llvmpipe on CPU machines, the NVIDIA driver on
GPU machines); a preview window only shows the read-back frames (`engine.render.outputs.PreviewWindow`),
so the same code renders headless and windowed. Shaders live in `shaders/*.glsl` and are read at run
time; a line `#include "name.glsl"` is replaced by that file, so the vertex math of the avatar and of the
UV-space debug pass is one source.
"""

from __future__ import annotations

import logging
import os
import re

import moderngl

from engine.errors import UserError
from engine.paths import SHADER_DIR

log = logging.getLogger(__name__)

GLSL_VERSION = "#version 330 core"
_INCLUDE = re.compile(r'^\s*#include\s+"([^"]+)"\s*$', re.MULTILINE)


class RenderContextError(UserError):
    """No usable OpenGL 3.3 context (missing EGL/Mesa, or no display for a window)."""


def display_available() -> bool:
    """True when an X11 or Wayland display is set (a preview window can open)."""
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def wants_window(backend: str) -> bool:
    """`window` always asks for one; `auto` asks when a display exists; `egl` never."""
    if backend == "window" and not display_available():
        raise RenderContextError("render.backend=window but no display is set (DISPLAY/WAYLAND_DISPLAY); use egl")
    return backend == "window" or (backend == "auto" and display_available())


def create_context() -> moderngl.Context:
    """A standalone OpenGL ≥ 3.3 core context through EGL (no display needed)."""
    try:
        ctx = moderngl.create_standalone_context(require=330, backend="egl")
    except Exception as exc:  # glcontext raises plain Exceptions for missing libEGL / no device
        raise RenderContextError(
            f"could not create a headless OpenGL 3.3 context through EGL ({exc}); install Mesa's libEGL "
            "(e.g. apt-get install libegl1 libgl1-mesa-dri) or an NVIDIA driver"
        ) from exc
    log.debug("OpenGL %s on %s", ctx.info["GL_VERSION"], ctx.info["GL_RENDERER"])
    return ctx


def is_software(ctx: moderngl.Context) -> bool:
    """True on CPU rasterizers (llvmpipe, softpipe, swrast), where every texture fetch is expensive."""
    renderer = str(ctx.info.get("GL_RENDERER", "")).lower()
    return any(name in renderer for name in ("llvmpipe", "softpipe", "swrast"))


def shader_source(name: str, defines: dict[str, object] | None = None) -> str:
    """The text of `shaders/<name>` with includes expanded and `#define`s inserted after the version line."""
    text = _expand(name, set())
    lines = [GLSL_VERSION] + [f"#define {k} {v}" for k, v in (defines or {}).items()]
    return "\n".join(lines) + "\n#line 1\n" + text


def _expand(name: str, seen: set[str]) -> str:
    if name in seen:
        raise RuntimeError(f"shader include cycle at {name}")
    path = SHADER_DIR / name
    if not path.is_file():
        raise RenderContextError(f"shader file missing: {path}")
    text = path.read_text()
    return _INCLUDE.sub(lambda m: _expand(m.group(1), seen | {name}), text)


def load_program(
    ctx: moderngl.Context, vertex: str, fragment: str, defines: dict[str, object] | None = None
) -> moderngl.Program:
    """Compile `shaders/<vertex>` + `shaders/<fragment>` with the same `defines`."""
    try:
        return ctx.program(
            vertex_shader=shader_source(vertex, defines), fragment_shader=shader_source(fragment, defines)
        )
    except moderngl.Error as exc:
        raise RuntimeError(f"shader program {vertex} + {fragment} failed to compile/link:\n{exc}") from exc
