// The avatar fragment stage: the dynamic-detail blend (detail_blend.glsl) on face skin, normal
// perturbation from the blended UV gradient, and shading: wrapped diffuse from a key and a fill light,
// a hemisphere ambient, Blinn-Phong specular, per-material albedo (identity texture on face skin,
// procedural elsewhere), a drawn iris and pupil, depth darkening inside the mouth, and eyelash strands
// as analytic coverage.
// Output: linear shading → display gamma 2.0 (sqrt); alpha 1 (the background is cleared to alpha 0), or
// on lash cards the strands' coverage, which the renderer blends over the face (depth writes off).
//
// Compiled once per draw group (GROUP = GROUP_FACE, GROUP_EYES, GROUP_HEAD, GROUP_INTERIOR, GROUP_LASHES),
// with DETAIL (face group, detail on), ALBEDO_MAP (the identity has a texture) and DEBUG_VIEW (0 shaded,
// 1 displacement F, 2 weights M_i, 3 normals, 4 shading classes) fixed at compile time:
// llvmpipe runs both sides of every branch, so only the code a pixel needs may be in its shader. No group
// discards, so every draw keeps early depth testing.

// ICT's lash cards (M_EyeLashes) carry their strands in an alpha texture it does not ship. Their UVs: u runs
// along the lid (each eye spans ~0.48 of UDIM tile 6), and v stacks three cards per lid (upper lid v > 0.5),
// LASH_CARD_PERIOD apart, each LASH_CARD_LENGTH long from the tip (lowest v) to the root in the lid.
#define LASH_CARD_PERIOD 0.166
#define LASH_CARD_LENGTH 0.14
#define LASH_TIP_UPPER 0.516                 // v of the first upper card's tip
#define LASH_TIP_LOWER 0.014
#define LASH_STRANDS_UPPER 110.0             // strands per unit u on each card
#define LASH_STRANDS_LOWER 55.0              // the lower lid's are sparser, thinner and shorter
#define LASH_OPACITY 0.92
// Skin: red light scatters farther under the surface than green and blue, so each channel's diffuse wraps past
// the terminator by its own amount (a cheap stand-in for pre-integrated skin shading).
#define SKIN_WRAP vec3(0.45, 0.24, 0.18)
// The bald scalp greys and darkens from SCALP_START_CM to SCALP_CROWN_CM of height over a plane tilted back
// (rest y − 0.3 z): from above the forehead to the crown, the back of the head included.
#define SCALP_START_CM 6.0
#define SCALP_CROWN_CM 13.0
// Eyes: the upper lid shades the eyeball from EYE_LID_SHADE_CM above the iris centre; the tear film adds a
// tight highlight of the key light and a Fresnel reflection of the sky.
#define EYE_LID_SHADE_CM vec2(0.05, 0.55)
#define EYE_WET_SHININESS 1200.0

in vec3 v_position;
in vec3 v_normal;
in vec2 v_uv;
flat in int v_class;
in vec3 v_albedo;
in vec3 v_rest;
in vec4 v_m[M_SLOTS];

out vec4 frag;

uniform float u_detail_gain;                 // multiplies the blended displacement
uniform sampler2D u_albedo_map;              // identity UV albedo (sRGB) of the face tile
uniform vec3 u_head_albedo;                  // sRGB skin tone of that texture, for the back of the head
uniform vec3 u_light_dir[2];                 // camera frame, unit, towards key and fill light
uniform vec3 u_light_color[2];
uniform vec3 u_sky;                          // hemisphere ambient from above / below
uniform vec3 u_ground;
uniform vec3 u_eye_pole[2];                  // rest front pole of the subject's left, right eyeball
uniform vec3 u_iris_color;                   // linear
uniform vec2 u_mouth_depth;                  // rest z (cm) of the mouth's front and of its dark back
uniform float u_debug_range_mm;

// Screen-space UV derivatives (bump mapping).
vec2 g_duv_dx;
vec2 g_duv_dy;

#include "detail_blend.glsl"

vec3 fetch_basis(vec2 uv, int layer) {
    // Implicit derivatives: the detail loop runs in uniform control flow (its bound is a uniform), and
    // llvmpipe picks one level per 2×2 quad this way — explicit per-pixel levels or gradients run slower.
    return texture(u_bases, vec3(uv, float(layer))).xyz;
}

vec3 to_linear(vec3 c) {
    return c * c;  // gamma 2.0: pow() is a costly exp/log pair per channel on llvmpipe
}

// Bump mapping from a UV gradient (Mikkelsen 2010): ∇u, ∇v on the surface from screen derivatives.
vec3 perturb_normal(vec3 n, vec3 dpdx, vec3 dpdy, vec2 grad_mm) {
    vec3 r1 = cross(dpdy, n);
    vec3 r2 = cross(n, dpdx);
    float det = dot(dpdx, r1);
    if (abs(det) < 1e-12) {
        return n;
    }
    vec3 grad_u = (r1 * g_duv_dx.x + r2 * g_duv_dy.x) / det;  // 1/cm
    vec3 grad_v = (r1 * g_duv_dx.y + r2 * g_duv_dy.y) / det;
    return normalize(n - 0.1 * (grad_mm.x * grad_u + grad_mm.y * grad_v));  // mm → cm
}

vec3 iris_albedo(vec3 rest) {
    vec3 pole = rest.x > 0.0 ? u_eye_pole[0] : u_eye_pole[1];
    vec2 d = rest.xy - pole.xy;
    float r = length(d);
    float angle = atan(d.y, d.x);
    float fibres = 0.82 + 0.18 * sin(angle * 31.0 + 9.0 * sin(angle * 5.0)) * sin(r * 60.0 + angle * 3.0);
    vec3 iris = u_iris_color * fibres * mix(0.55, 1.15, smoothstep(0.2, 0.5, r));
    vec3 color = mix(iris, to_linear(vec3(0.90, 0.87, 0.84)), smoothstep(0.56, 0.62, r));
    color *= 1.0 - 0.6 * smoothstep(0.46, 0.57, r) * (1.0 - smoothstep(0.57, 0.63, r));  // limbal ring
    return mix(vec3(0.004), color, smoothstep(0.19, 0.215, r));  // pupil
}

float hash11(float x) {
    return fract(sin(x * 127.1) * 43758.5453);
}

// Coverage of a pixel by lash strands, in [0, 1]: each strand a tapered band along v, box-filtered over the
// pixel's footprint (fwidth) across it. Where strands are narrower than a pixel the coverage tends to their mean
// density instead of aliasing into stripes; no MSAA needed (llvmpipe renders without it).
float lash_coverage(vec2 uv, vec3 rest) {
    bool upper = uv.y > 0.5;
    float from_tip = mod(uv.y - (upper ? LASH_TIP_UPPER : LASH_TIP_LOWER) + 0.01, LASH_CARD_PERIOD) - 0.01;
    float card = floor((uv.y - (upper ? LASH_TIP_UPPER : LASH_TIP_LOWER) + 0.01) / LASH_CARD_PERIOD);
    float t = clamp(1.0 - from_tip / LASH_CARD_LENGTH, 0.0, 1.0);  // 0 at the root, 1 at the tip
    float s = uv.x * (upper ? LASH_STRANDS_UPPER : LASH_STRANDS_LOWER) + 0.37 * card;
    float footprint = max(fwidth(s), 1e-4);  // pixel width in strand spacings
    float id = floor(s);
    float h = hash11(id + 17.0 * card + (upper ? 0.0 : 331.0));
    // Longer towards the outer corner (the eye spans |x| ≈ 1.6–5.3 cm), random per strand.
    float strand_length = (upper ? 1.0 : 0.5) * (0.6 + 0.4 * h) * mix(0.75, 1.0, smoothstep(1.8, 4.5, abs(rest.x)));
    float half_width = (upper ? 0.28 : 0.15) * pow(clamp(1.0 - t / strand_length, 0.0, 1.0), 0.6);
    float d = abs(fract(s) - 0.5 - 0.3 * (h - 0.5));
    float overlap = max(min(half_width, d + 0.5 * footprint) - max(-half_width, d - 0.5 * footprint), 0.0) / footprint;
    float mean = 2.0 * half_width;  // what a pixel spanning whole strand spacings sees
    return LASH_OPACITY * mix(min(overlap, 1.0), mean, smoothstep(0.4, 1.0, footprint));
}

vec3 palette(int i) {
    return 0.5 + 0.5 * cos(6.2831853 * (float(i) / 19.0 + vec3(0.0, 0.33, 0.67)));
}

void main() {
    vec3 dpdx = dFdx(v_position);
    vec3 dpdy = dFdy(v_position);
    g_duv_dx = dFdx(v_uv);
    g_duv_dy = dFdy(v_uv);
    vec3 n = normalize(v_normal);
    if (!gl_FrontFacing) {
        n = -n;  // the inside of the mouth socket is seen from its back
    }
    vec3 f = vec3(0.0);
#if DETAIL
    f = u_detail_gain * blend_detail(v_uv, v_m);
    n = perturb_normal(n, dpdx, dpdy, f.yz);
#endif

#if DEBUG_VIEW == 1
    float x = clamp(f.x / u_debug_range_mm, -1.0, 1.0);
    vec3 c = x > 0.0 ? mix(vec3(1.0), vec3(0.85, 0.15, 0.1), x) : mix(vec3(1.0), vec3(0.1, 0.3, 0.9), -x);
    frag = vec4(GROUP == GROUP_FACE ? c : vec3(0.25), 1.0);
#elif DEBUG_VIEW == 2
    vec3 c = vec3(0.25);
#if DETAIL
    float total = 0.0;
    vec3 mixed = vec3(0.0);
    for (int k = 0; k < N_ACTIVE; ++k) {
        total += active_weight(v_m, k);
        mixed += active_weight(v_m, k) * palette(u_active[k]);
    }
    c = (mixed + max(1.0 - total, 0.0) * vec3(0.6)) / max(total, 1.0);
#endif
    frag = vec4(c, 1.0);
#elif DEBUG_VIEW == 3
    frag = vec4(n * 0.5 + 0.5, 1.0);
#elif DEBUG_VIEW == 4
    frag = vec4(float(v_class) / 10.0, palette(v_class * 5).yz, 1.0);  // red = ShadeClass / 10 (decodable)
#else
    vec3 albedo = to_linear(v_albedo);
    float specular = 0.06;
    float shininess = 24.0;
    vec3 wrap = SKIN_WRAP;
    float occlusion = 1.0;
    float alpha = 1.0;
#if GROUP == GROUP_FACE
#if ALBEDO_MAP
    albedo = to_linear(texture(u_albedo_map, v_uv).rgb);
#endif
    albedo *= clamp(1.0 + 0.3 * f.x, 0.7, 1.05);  // folds (F < 0) hold less light
#elif GROUP == GROUP_HEAD && ALBEDO_MAP
    albedo = to_linear(u_head_albedo);  // the identity texture covers the face tile only: match its skin tone
#elif GROUP == GROUP_EYES
    albedo = iris_albedo(v_rest);  // ICT's sclera is the outer (corneal) surface: the iris shows through it
    specular = 0.7;
    shininess = 180.0;
    wrap = vec3(0.0);
    float above_iris = v_rest.y - (v_rest.x > 0.0 ? u_eye_pole[0].y : u_eye_pole[1].y);
    occlusion = 1.0 - 0.45 * smoothstep(EYE_LID_SHADE_CM.x, EYE_LID_SHADE_CM.y, above_iris);
#elif GROUP == GROUP_INTERIOR
    occlusion = pow(clamp((v_rest.z - u_mouth_depth.y) / (u_mouth_depth.x - u_mouth_depth.y), 0.03, 1.0), 1.5);
    specular = v_class == CLASS_TEETH ? 0.25 : 0.12;
    shininess = 48.0;
    wrap = vec3(0.0);
    if (v_class == CLASS_TONGUE) {
        albedo *= 1.0 - 0.3 * exp(-v_rest.x * v_rest.x * 16.0);  // the median groove, ~5 mm wide
        specular = 0.3;  // wet
        shininess = 24.0;
    }
#elif GROUP == GROUP_LASHES
    alpha = lash_coverage(v_uv, v_rest);
    specular = 0.0;
    wrap = vec3(0.0);
#endif
#if GROUP == GROUP_FACE || GROUP == GROUP_HEAD
    float scalp = smoothstep(SCALP_START_CM, SCALP_CROWN_CM, v_rest.y - 0.3 * v_rest.z);
    albedo = mix(albedo, vec3(dot(albedo, vec3(0.3, 0.59, 0.11))) * 0.6, 0.65 * scalp);
#endif

    vec3 view = normalize(-v_position);
    vec3 color = albedo * mix(u_ground, u_sky, 0.5 + 0.5 * n.y) * occlusion;
    for (int k = 0; k < 2; ++k) {
        vec3 l = u_light_dir[k];
        vec3 diffuse = max((dot(n, l) + wrap) / (1.0 + wrap), 0.0);
        vec3 h = normalize(l + view);
        float n_h = max(dot(n, h), 0.0);
        float spec = dot(n, l) > 0.0 ? pow(n_h, shininess) * (shininess + 8.0) / 25.1327 : 0.0;
#if GROUP == GROUP_EYES
        spec += 2.0 * pow(n_h, EYE_WET_SHININESS);  // in the eyes' variant only: pow is an exp/log pair on llvmpipe
#endif
        color += u_light_color[k] * occlusion * (albedo * diffuse + specular * spec);
    }
#if GROUP == GROUP_EYES
    float grazing = 1.0 - max(dot(n, view), 0.0);
    color += occlusion * (0.02 + 0.3 * grazing * grazing * grazing) * u_sky;  // Schlick-like sky reflection
#endif
    frag = vec4(sqrt(clamp(color, 0.0, 1.0)), alpha);
#endif
}
