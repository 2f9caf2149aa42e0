"""The desktop shaders, converted for WebGL2: GLSL 330 core → GLSL ES 3.00, one source of truth for the maths.

The browser renders with the repository's own `shaders/*.glsl`, not a port: `#include`s are expanded by the
desktop renderer's own `engine.render.context.shader_source`, and `to_es` rewrites what GLSL ES 3.00 spells
differently. The page receives a header and one body per shader (`shader_bundle`, served as `shaders.json`) and
composes each variant exactly like `shader_source` does — version line, one `#define NAME VALUE` per line,
`#line 1`, body — so `to_es(shader_source(name, defines))` is byte for byte what the page compiles (a test holds
the two equal).

What changes between the two languages, for these shaders:

- the version line: `#version 330 core` → `#version 300 es`;
- precision: ES has no default float precision in fragment shaders, and none at all for `sampler2DArray` in
  either stage; everything is declared `highp` (the displacement gradients reach ~60 mm per unit UV and the
  bump-mapping determinant is compared with 1e-12, which mediump would flush to zero);
- constructs ES 3.00 does not have are refused with the line that uses them rather than silently mistranslated
  (`REFUSED`): double precision, 1D and rectangle samplers, `noperspective`, geometry-stage built-ins,
  `gl_FragColor`/`texture2D` (pre-1.30 GLSL), `#extension`. None occurs in today's shaders; the test converts
  every shader, and a desktop change that uses one fails it with the reason.

Implicit int → float conversions, which GLSL 330 accepts and ES rejects, cannot be fixed by a text rewrite without
a parser; the shaders write conversions explicitly, and the browser test compiles every variant the page uses, so
a new implicit conversion fails there with ANGLE's message.
"""

from __future__ import annotations

import re

from engine.render.context import GLSL_VERSION, shader_source

ES_VERSION = "#version 300 es"
# Every type ES leaves without a default precision in some stage, declared once for both stages.
ES_PRECISION = (
    "precision highp float;",
    "precision highp int;",
    "precision highp sampler2D;",
    "precision highp sampler2DArray;",
)
ES_HEADER = "\n".join((ES_VERSION, *ES_PRECISION))

# Shaders the page compiles (the avatar and the UV-space pass its tests compare with the desktop's).
WEB_SHADERS = ("avatar.vert.glsl", "avatar.frag.glsl", "uv_detail.vert.glsl", "uv_detail.frag.glsl")

# (pattern, why) — constructs with no GLSL ES 3.00 equivalent.
REFUSED: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern, re.MULTILINE), why)
    for pattern, why in (
        (r"\b(double|dvec[234]|dmat[234](x[234])?)\b", "double precision does not exist in GLSL ES 3.00"),
        (r"\b[iu]?sampler(1D|2DRect|Buffer|2DMS|CubeArray)\w*\b", "ES 3.00 has no such sampler type"),
        (r"\bnoperspective\b", "ES 3.00 has no noperspective interpolation"),
        (r"\b(gl_FragColor|gl_FragData|texture2D|texture3D|textureCube)\b", "pre-1.30 GLSL: out variables, texture()"),
        (r"\b(gl_PrimitiveID|gl_Layer|gl_ViewportIndex|gl_ClipDistance)\b", "not available in ES 3.00"),
        (r"^\s*#\s*extension\b", "extensions differ between desktop GL and WebGL2: none may be required"),
        (r"^\s*layout\s*\(\s*binding\b", "ES 3.00 has no binding layout qualifier"),
    )
)  # fmt: skip


class ShaderConversionError(ValueError):
    """A desktop shader uses something GLSL ES 3.00 lacks (the message names the shader, line and reason)."""


def convert_body(text: str, name: str = "<shader>", first_line: int = 1) -> str:
    """The part of a shader after its version line, checked for constructs ES lacks (returned unchanged: the
    shaders are written in the common subset, and anything outside it is refused, not rewritten). `first_line`:
    the line number of the text's first line, for the message."""
    for pattern, why in REFUSED:
        match = pattern.search(text)
        if match:
            line = text.count("\n", 0, match.start()) + first_line
            raise ShaderConversionError(f"{name}, line {line}: {match.group(0).strip()!r}: {why}")
    return text


def to_es(source: str, name: str = "<shader>") -> str:
    """A complete GLSL 330 core shader (as `shader_source` returns it) → GLSL ES 3.00."""
    first, sep, rest = source.partition("\n")
    if first.strip() != GLSL_VERSION:
        raise ShaderConversionError(f"{name}: expected {GLSL_VERSION!r} on the first line, found {first!r}")
    return ES_HEADER + sep + convert_body(rest, name, first_line=2)


def es_source(name: str, defines: dict[str, object] | None = None) -> str:
    """`shaders/<name>` with includes expanded and `defines` inserted, as GLSL ES 3.00 (what the page compiles)."""
    return to_es(shader_source(name, defines), name)


def shader_bundle(names: tuple[str, ...] = WEB_SHADERS) -> dict[str, object]:
    """The page's shader set: `{"header": ES header, "shaders": {name: body}}`.

    A variant is `header + "".join("\\n#define K V" for each define) + "\\n#line 1\\n" + body`, the layout of
    `shader_source` (the body is the expanded text that follows its `#line 1`)."""
    marker = "\n#line 1\n"
    bodies = {}
    for name in names:
        source = shader_source(name, {})
        prefix = GLSL_VERSION + marker
        if not source.startswith(prefix):
            raise ShaderConversionError(f"{name}: shader_source no longer starts with {prefix!r}; update the page")
        bodies[name] = convert_body(source[len(prefix) :], name)
    return {"header": ES_HEADER, "shaders": bodies}
