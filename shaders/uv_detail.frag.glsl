// UV-space debug pass: writes the blended (F, ∂F/∂u, ∂F/∂v) in mm to a float target; alpha 1 = covered.

in vec2 v_uv;
in vec4 v_m[5];

out vec4 frag;

#include "detail_blend.glsl"

vec3 fetch_basis(vec2 uv, int layer) {
    return textureLod(u_bases, vec3(uv, float(layer)), 0.0).xyz;  // level 0: exact at texel centres
}

void main() {
    frag = vec4(blend_detail(v_uv, v_m), 1.0);
}
