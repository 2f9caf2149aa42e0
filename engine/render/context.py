"""OpenGL contexts and shader programs for the renderer.

Rendering is always off-screen into framebuffers; a preview window only shows the read-back frames
(`engine.render.outputs.PreviewWindow`), so the same code renders headless and windowed. The context is the
platform's standalone one: on Linux EGL, which needs no display (Mesa llvmpipe on CPU machines, the NVIDIA driver
on GPU machines), then GLX where EGL fails and a display exists; on Windows (WGL) and macOS (CGL) moderngl's
default, as EGL is not what their drivers offer. Shaders live in `shaders/*.glsl` (`engine.paths.SHADER_DIR`) and
are read at run time; a line `#include "name.glsl"` is replaced by that file, so the vertex math of the avatar and
of the UV-space debug pass is one source.
"""

from __future__ import annotations

import logging
import os
import platform
import re

import moderngl

from engine.errors import UserError
from engine.paths import SHADER_DIR

log = logging.getLogger(__name__)

GLSL_VERSION = "#version 330 core"
_INCLUDE = re.compile(r'^\s*#include\s+"([^"]+)"\s*$', re.MULTILINE)

# How each platform's default standalone backend is named in messages, and what to do when none works.
_DEFAULT_BACKEND = {"Linux": "GLX", "Windows": "WGL", "Darwin": "CGL"}
_INSTALL_HINT = {
    "Linux": "install Mesa's libEGL (e.g. apt-get install libegl1 libgl1-mesa-dri) or an NVIDIA driver",
    "Windows": "install the graphics card's driver (Microsoft's basic display driver has no OpenGL 3.3)",
    "Darwin": "macOS supplies OpenGL through CGL: check that this Mac offers an OpenGL 3.3 core profile",
}
_OTHER_HINT = "install an OpenGL 3.3 driver"


class RenderContextError(UserError):
    """No usable OpenGL 3.3 context (no backend of the platform gave one, or no display for a window)."""


def display_available() -> bool:
    """True when an X11 or Wayland display is set (a preview window can open)."""
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def wants_window(backend: str) -> bool:
    """`window` always asks for one; `auto` asks when a display exists; `egl` never."""
    if backend == "window" and not display_available():
        raise RenderContextError("render.backend=window but no display is set (DISPLAY/WAYLAND_DISPLAY); use egl")
    return backend == "window" or (backend == "auto" and display_available())


def context_backends(system: str | None = None) -> list[str | None]:
    """The moderngl standalone backends to try, in order (None: moderngl's default for the platform).

    Linux: EGL first, as it renders with no display at all (servers, CI, a render child); GLX only as a fallback
    where a display exists (an EGL library missing while X11 works). Windows and macOS: the default (WGL, CGL)."""
    system = system or platform.system()
    if system == "Linux":
        return ["egl", None] if display_available() else ["egl"]
    return [None]


def create_context() -> moderngl.Context:
    """A standalone OpenGL ≥ 3.3 core context from the platform's backend (`context_backends`)."""
    system = platform.system()
    failures = []
    for backend in context_backends(system):
        name = backend.upper() if backend else _DEFAULT_BACKEND.get(system, "the default backend")
        try:
            if backend is None:
                ctx = moderngl.create_standalone_context(require=330)
            else:
                ctx = moderngl.create_standalone_context(require=330, backend=backend)
        except Exception as exc:  # glcontext raises plain Exceptions for a missing library / no device or display
            log.debug("no OpenGL 3.3 context through %s: %s", name, exc)
            failures.append(f"{name}: {exc}")
            continue
        log.debug("OpenGL %s on %s through %s", ctx.info["GL_VERSION"], ctx.info["GL_RENDERER"], name)
        return ctx
    raise RenderContextError(
        f"could not create an OpenGL 3.3 context ({'; '.join(failures)}); {_INSTALL_HINT.get(system, _OTHER_HINT)}, "
        "or run with --no-render to track and publish parameters without the avatar"
    )


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
