// The present pass (GPUs): the resolved image flipped to top-row-first and, for a transparent background,
// with antialiased edges un-premultiplied — what AvatarRenderer.read does in numpy on software rasterizers —
// so the host reads the finished bytes with no CPU pass over them. Same arithmetic as the numpy path.

uniform sampler2D u_image;                   // the resolved RGBA8 frame, bottom row first (GL convention)
uniform int u_height;
uniform bool u_unpremultiply;

out vec4 color;

void main() {
    ivec2 p = ivec2(gl_FragCoord.xy);
    vec4 c = texelFetch(u_image, ivec2(p.x, u_height - 1 - p.y), 0);
    if (u_unpremultiply && c.a > 0.0 && c.a < 1.0) {
        c.rgb = min(c.rgb / c.a, vec3(1.0));
    }
    color = c;
}
