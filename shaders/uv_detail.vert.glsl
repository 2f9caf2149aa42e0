// UV-space debug pass: the avatar's key-weight math, with the vertex placed at its face-tile UV so that
// pixel (x, y) of an N×N target is texel (x, y) of the bases (row 0 = v = 0).

#include "key_weights.glsl"

in vec2 in_uv;

out vec2 v_uv;
out vec4 v_m[M_SLOTS];

void main() {
    key_weights(gl_VertexID, v_m);
    v_uv = in_uv;
    gl_Position = vec4(in_uv * 2.0 - 1.0, 0.0, 1.0);
}
