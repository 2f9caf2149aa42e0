// UV-space debug pass: writes the blended (F, ∂F/∂u, ∂F/∂v) in mm to a float target; alpha 1 = covered.

in vec2 v_uv;
in vec4 v_m[M_SLOTS];

out vec4 frag;

#include "detail_blend.glsl"

vec3 fetch_basis(vec2 uv, int layer) {
    // The texel under this pixel, unfiltered: bilinear weights quantized by the rasterizer would leak
    // 1/256 of a neighbour when the interpolated UV lands a hair off the texel centre.
    ivec2 size = textureSize(u_bases, 0).xy;
    return texelFetch(u_bases, ivec3(clamp(ivec2(floor(uv * vec2(size))), ivec2(0), size - 1), layer), 0).xyz;
}

void main() {
    frag = vec4(blend_detail(v_uv, v_m), 1.0);
}
