// The avatar vertex stage: blendshapes (CPU-deformed input, or summed here from float textures with
// GPU_BLENDSHAPES), the per-vertex key-expression weights M_i for face skin, and the camera transform.
// Defines: MASK_TEXELS, TEXTURE_WIDTH, CLASS_* (engine.render.materials.ShadeClass), DETAIL (face group,
// detail on); with GPU_BLENDSHAPES also N_RENDER (delta j of vertex r is texel j·N_RENDER + r).

#include "key_weights.glsl"

in vec3 in_position;                         // cm, model frame (the rest shape with GPU_BLENDSHAPES)
in vec3 in_normal;
in vec2 in_uv;
in float in_class;
in vec3 in_albedo;                           // sRGB
in vec3 in_rest;                             // rest position, cm: procedural materials stick to the skin

uniform mat4 u_model_view;                   // model → camera (rotation × scale, translation)
uniform mat4 u_projection;

#ifdef GPU_BLENDSHAPES
uniform sampler2D u_position_basis;          // RGB32F per-unit-weight position deltas, cm
uniform sampler2D u_normal_basis;            // RGB32F per-unit-weight normal deltas
uniform int u_n_weights;                     // non-zero weights this frame
uniform int u_weight_index[53];
uniform float u_weight_value[53];

vec3 basis_texel(sampler2D tex, int index) {
    return texelFetch(tex, ivec2(index % TEXTURE_WIDTH, index / TEXTURE_WIDTH), 0).xyz;
}
#endif

out vec3 v_position;                         // camera frame, cm
out vec3 v_normal;                           // camera frame, unnormalized
out vec2 v_uv;
flat out int v_class;
out vec3 v_albedo;
out vec3 v_rest;
out vec4 v_m[M_SLOTS];

void main() {
    vec3 position = in_position;
    vec3 normal = in_normal;
#ifdef GPU_BLENDSHAPES
    for (int a = 0; a < u_n_weights; ++a) {
        int index = u_weight_index[a] * N_RENDER + gl_VertexID;
        position += u_weight_value[a] * basis_texel(u_position_basis, index);
        normal += u_weight_value[a] * basis_texel(u_normal_basis, index);
    }
#endif
    v_class = int(in_class + 0.5);
#if DETAIL
    key_weights(gl_VertexID, v_m);
#else
    for (int k = 0; k < M_SLOTS; ++k) {
        v_m[k] = vec4(0.0);
    }
#endif
    vec4 camera = u_model_view * vec4(position, 1.0);
    v_position = camera.xyz;
    v_normal = mat3(u_model_view) * normal;  // rotation × uniform scale: renormalized per fragment
    v_uv = in_uv;
    v_albedo = in_albedo;
    v_rest = in_rest;
    gl_Position = u_projection * camera;
}
