// The per-texel dynamic-detail blend (docs/design.md §4.2), the same arithmetic as
// engine.detail.weights.normalize_key_weights + blend_bases:
//   s = Σ_{i≥1} M_i ;  M_i ← M_i / max(s, 1) ;  M_0 = max(1 − Σ_{i≥1} M_i, 0) ;  F = Σ_i M_i · F̂_i
// Each layer of u_bases is (F̂, ∂F̂/∂u, ∂F̂/∂v) in mm and mm per unit UV, so one blend gives the
// displacement and its gradient. The including shader defines fetch_basis().

uniform sampler2DArray u_bases;
uniform int u_active[19];                    // key-expression index (1..19) of active slot k

vec3 fetch_basis(vec2 uv, int layer);

float active_weight(vec4 m[M_SLOTS], int k) {
    return m[k / 4][k % 4];
}

vec3 blend_detail(vec2 uv, vec4 m[M_SLOTS]) {
    float total = 0.0;
    for (int k = 0; k < N_ACTIVE; ++k) {
        total += active_weight(m, k);
    }
    float scale = 1.0 / max(total, 1.0);
    vec3 f = max(1.0 - total * scale, 0.0) * fetch_basis(uv, 0);
    for (int k = 0; k < N_ACTIVE; ++k) {
        f += active_weight(m, k) * scale * fetch_basis(uv, u_active[k]);
    }
    return f;
}
