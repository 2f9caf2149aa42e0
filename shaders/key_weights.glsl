// Per-vertex key-expression weights (docs/design.md §4.2):  M_i(v) = clamp(Σ_j c_ij · A_j(v), 0, 1).
// Only the active key expressions (those whose M_i can be > 0 this frame) are evaluated; slot k holds
// the k-th active one, so the fragment stage fetches only those layers.
// Defines: MASK_TEXELS (vec4 texels of A_j per vertex), TEXTURE_WIDTH (width of the mask texture),
// N_ACTIVE (active key expressions this frame, ≤ 19). N_ACTIVE is a compile-time constant so that every
// loop unrolls with constant indices: llvmpipe turns dynamic indexing into per-pixel memory traffic.

uniform sampler2D u_masks;                   // A_j for the key-expression blendshapes, RGBA32F
uniform vec4 u_coef[19 * MASK_TEXELS];       // c_kj of active slot k, packed like the masks

vec4 mask_texel(int index) {
    return texelFetch(u_masks, ivec2(index % TEXTURE_WIDTH, index / TEXTURE_WIDTH), 0);
}

void key_weights(int vertex_id, out vec4 m[M_SLOTS]) {
    vec4 a[MASK_TEXELS];
    for (int t = 0; t < MASK_TEXELS; ++t) {
        a[t] = mask_texel(vertex_id * MASK_TEXELS + t);
    }
    for (int k = 0; k < M_SLOTS; ++k) {
        m[k] = vec4(0.0);
    }
    for (int k = 0; k < N_ACTIVE; ++k) {
        float s = 0.0;
        for (int t = 0; t < MASK_TEXELS; ++t) {
            s += dot(u_coef[k * MASK_TEXELS + t], a[t]);
        }
        m[k / 4][k % 4] = clamp(s, 0.0, 1.0);
    }
}
