"""Enrollment: photos / video / webcam frames → an identity bundle (design §5).

1. track every frame (static mode for stills) and keep the frames with a face;
2. fit the identity (w_id, jointly with pose) and the neutral calibration over those frames;
3. unwrap a UV albedo of the face tile: each texel's surface point is projected into every frame and its
   colour averaged with smooth weights (facing the camera, not occluded, inside the face oval, showing skin
   rather than hair, glasses or background); the baked shading is divided out, and what no frame showed is
   taken from the mirrored side, then from a smooth fill, each blended in by confidence so no edge shows;
4. precompute the 20 detail bases for that identity and texture; write the bundle atomically.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Sized
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from engine.config import Config, SolveConfig
from engine.detail.uv_raster import UVRasterizer, face_rasterizer
from engine.errors import UserError
from engine.face_model import FaceModel, LandmarkEmbedding, vertex_normals
from engine.identity import Identity, save_bundle
from engine.solve.identity_fit import fit_identity
from engine.solve.landmark_sets import FACE_OVAL
from engine.solve.solver import FrameFitter, valid_observation
from engine.sources.files import VideoFileSource
from engine.tracking import FaceTracker, InvalidFrameError
from engine.types import Frame, Landmarks

log = logging.getLogger(__name__)
TEXTURE_SIZE = 1024
# Weight of a texel seen at angle θ to the camera: cos(θ)^k favours frontal views strongly.
VIEW_WEIGHT_POWER = 3.0
# Towards the silhouette the view weight also ramps from 0 (cos θ ≤ 0.15, θ ≈ 81°) to 1 (cos θ ≥ 0.35), so the
# edge of what one frame saw carries no step.
SILHOUETTE_RAMP = (0.15, 0.35)
# A texel seen with at least this summed weight (cos³θ ≈ 0.3: θ ≈ 48°) keeps its own colour; less, it leans
# towards its mirror texel if that was seen better.
MIRROR_FULL_WEIGHT = 0.3
# Below this summed weight (cos³θ ≈ 0.05: θ ≈ 68°) a texel's colour fades into the fill.
SEEN_FULL_WEIGHT = 0.05
# Skin test (per frame, in CIELAB): a pixel within the first distance of the cheek and nose skin is skin,
# beyond the second it is not (hair, glasses frames, beard, teeth); between, it fades.
SKIN_DISTANCE = (3.0, 5.0)
# Lightness counts in units of this fraction of the skin's median L* (shading darkens skin by less than ~30 %;
# dark hair is 60 % darker); chroma spreads are at least this many a*/b* units.
SKIN_LIGHTNESS_SPREAD = 0.1
SKIN_CHROMA_FLOOR = 2.5
# Brows, lips and eyes belong in the albedo however unlike the cheeks they look: they skip the skin test.
# MediaPipe's FACEMESH_RIGHT_EYEBROW, _LEFT_EYEBROW, the outer ring of _LIPS, _RIGHT_EYE, _LEFT_EYE.
FEATURE_LANDMARKS: tuple[tuple[int, ...], ...] = (
    (46, 52, 53, 55, 63, 65, 66, 70, 105, 107),
    (276, 282, 283, 285, 293, 295, 296, 300, 334, 336),
    (0, 17, 37, 39, 40, 61, 84, 91, 146, 181, 185, 267, 269, 270, 291, 314, 321, 375, 405, 409),
    (7, 33, 133, 144, 145, 153, 154, 155, 157, 158, 159, 160, 161, 163, 173, 246),
    (249, 263, 362, 373, 374, 380, 381, 382, 384, 385, 386, 387, 388, 390, 398, 466),
)
# The inner lip ring (the mouth opening): between the lips lie teeth, not lips.
INNER_LIPS = (13, 14, 78, 80, 81, 82, 87, 88, 95, 178, 191, 308, 310, 311, 312, 317, 318, 324, 402, 415)
# Where the skin statistics are sampled: cheeks and the nose ridge, never forehead (hair) or chin (beard).
SKIN_SAMPLE_LANDMARKS = (50, 280, 101, 330, 117, 346, 123, 352, 205, 425, 195, 197, 5)
# The face-oval region fades in over this fraction of the face height inside its outline.
REGION_FEATHER = 0.04
# Seen texels blend into the fill (and poorly seen ones into their mirror texels) over this many texels (at 1024²),
# measured in UV space inward from where the summed weight falls below `SEEN_FULL_WEIGHT` (`MIRROR_FULL_WEIGHT`):
# a summed weight can fall from one threshold to the other within a few texels (a fringe's edge in every frame),
# so a blend driven by the weight alone switched colours there and drew a line (#18). Unseen patches smaller than
# `FEATURE_HOLE_AREA` of the tile (mouth opening, nostrils, eye slits) keep the narrow blend of
# `HOLE_FEATHER_TEXELS`, or the lips and lids around them would fade into the fill. The push-pull fill is blurred
# by σ = `FILL_BLUR_TEXELS` (its 2×2 pyramid leaves faint blocks).
FILL_FEATHER_TEXELS = 32
HOLE_FEATHER_TEXELS = 8
FEATURE_HOLE_AREA = 0.02
FILL_BLUR_TEXELS = 12
# Baked lighting: the shading field is the luminance of the skin blurred with σ = this fraction of the texture
# size (about 1 cm on the face), and the correction it asks for is clipped to this range of factors.
SHADING_SIGMA = 0.02
SHADING_GAIN = (0.6, 1.6)


@dataclass(frozen=True)
class TrackedFrame:
    """A frame with its landmarks."""

    frame: Frame
    landmarks: Landmarks


def project_vertices(
    vertices: np.ndarray, rotation: np.ndarray, translation: np.ndarray, scale: float, image_height: int
) -> tuple[np.ndarray, np.ndarray]:
    """Model vertices (V, 3) cm → image pixels (V, 2) (x right, y down) and depth toward the camera (V,),
    under the weak-perspective similarity `observed = s·R·X + t` of `engine.solve.pose`."""
    observed = scale * vertices @ rotation.T + translation
    pixels = np.stack([observed[:, 0], image_height - observed[:, 1]], axis=1)
    return pixels, observed[:, 2]


def _depth_buffer(pixels: np.ndarray, depth: np.ndarray, shape: tuple[int, int], cell: int) -> np.ndarray:
    """Max depth (toward the camera) of the projected points per `cell`-pixel bin: a coarse z-buffer."""
    height, width = shape
    rows = np.clip((pixels[:, 1] / cell).astype(int), 0, (height - 1) // cell)
    cols = np.clip((pixels[:, 0] / cell).astype(int), 0, (width - 1) // cell)
    buffer = np.full(((height - 1) // cell + 1, (width - 1) // cell + 1), -np.inf)
    np.maximum.at(buffer, (rows, cols), depth)
    return buffer


def face_region_mask(landmarks: Landmarks, shape: tuple[int, int], grow: float = -0.015) -> np.ndarray:
    """(H, W) float32 in [0, 1]: the convex hull of the face-oval landmarks, grown (or, negative, shrunk) by
    `grow` × face height, fading in from 0 on its outline to 1 at `REGION_FEATHER` × face height inside.

    Texels that project outside it see hair, neck or background, which must not become skin albedo; the
    default shrinks the outline slightly because MediaPipe's oval sits on the silhouette. The fade keeps the
    outline, which moves from frame to frame, from printing a step into the albedo.
    """
    outline = landmarks.pixels[list(FACE_OVAL), :2].astype(np.float32)
    hull = cv2.convexHull(outline).astype(np.int32)
    mask = np.zeros(shape, np.uint8)
    cv2.fillConvexPoly(mask, hull, 1)
    face_height = float(np.ptp(outline[:, 1]))
    radius = max(1, int(abs(grow) * face_height))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    mask = cv2.dilate(mask, kernel) if grow > 0 else cv2.erode(mask, kernel)
    inside = cv2.distanceTransform(mask, cv2.DIST_L2, 5)
    return _smoothstep(inside / max(REGION_FEATHER * face_height, 1.0))


def skin_weight(image: np.ndarray, landmarks: Landmarks, person: np.ndarray) -> np.ndarray:
    """(H, W) float32 in [0, 1]: how surely each pixel of `image` (H, W, 3) uint8 RGB shows the face's skin,
    brows, lips or eyes — never hair, glasses, beard or background.

    person: (H, W) float32 person probability (MediaPipe selfie segmentation). Skin colour is measured on the
    cheeks and the nose ridge, in CIELAB: a robust Gaussian of the chroma (a*, b*) and, for lightness, how much
    darker than the skin's median a pixel is, in units of `SKIN_LIGHTNESS_SPREAD` of that median — dark hair
    and frames can share skin's hue, and lighting only darkens skin by so much. Lighter than skin is not a
    fault (highlights). The combined distance fades the weight from 1 to 0 over `SKIN_DISTANCE`. The result
    is eroded by 2 % of the face height and blurred by 1 %, so mixed hair/skin pixels at a hairline drop out and the
    mask has no hard edge; brows, lips and eyes (MediaPipe's outlines, not the mouth opening) are added back
    untested.
    """
    height, width = image.shape[:2]
    points = landmarks.pixels[:, :2]
    face_height = float(np.ptp(points[list(FACE_OVAL), 1]))
    blur = max(1.0, 0.004 * face_height)  # pores and noise must not decide skin by themselves
    lab = cv2.cvtColor(cv2.GaussianBlur(image, (0, 0), blur).astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)
    samples = np.zeros((height, width), np.uint8)
    for x, y in points[list(SKIN_SAMPLE_LANDMARKS)].round().astype(int):
        cv2.circle(samples, (int(x), int(y)), max(1, int(0.03 * face_height)), 1, -1)
    pixels = lab[samples.astype(bool)].astype(np.float64)
    if len(pixels) < 10:
        return np.zeros((height, width), np.float32)
    mean, inverse = _robust_gaussian(pixels[:, 1:])
    chroma = lab[..., 1:].astype(np.float64) - mean
    lightness = float(np.median(pixels[:, 0]))
    darker = np.maximum(lightness - lab[..., 0], 0.0) / max(SKIN_LIGHTNESS_SPREAD * lightness, 1.0)
    distance = np.sqrt(np.einsum("hwi,ij,hwj->hw", chroma, inverse, chroma) + darker**2)
    lo, hi = SKIN_DISTANCE
    skin = 1.0 - _smoothstep((distance - lo) / (hi - lo))
    radius = max(1, int(round(0.01 * face_height)))
    # Erode twice as far as the blur below spreads, so the blurred edge stays on clean skin.
    skin = cv2.erode(skin, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (4 * radius + 1, 4 * radius + 1)))
    features = np.zeros((height, width), np.uint8)
    for ids in FEATURE_LANDMARKS:
        cv2.fillConvexPoly(features, cv2.convexHull(points[list(ids)].astype(np.float32)).astype(np.int32), 1)
    mouth = cv2.convexHull(points[list(INNER_LIPS)].astype(np.float32)).astype(np.int32)
    cv2.fillConvexPoly(features, mouth, 0)  # teeth and tongue take the skin test (and fail it)
    features = cv2.dilate(features, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1)))
    skin = np.maximum(skin, features.astype(np.float32))  # dilated by the blur's σ: whole on their outlines
    return (cv2.GaussianBlur(skin, (0, 0), radius) * person).astype(np.float32)


def _robust_gaussian(samples: np.ndarray, rounds: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """(n, 2) chroma samples → mean (2,) and inverse covariance (2, 2) of their core: samples beyond
    Mahalanobis 2.5 (a stray hair or lip in the sample discs) are dropped and the fit repeated. Each axis's
    spread is at least `SKIN_CHROMA_FLOOR`: a smooth cheek must not make every other skin pixel an outlier."""
    keep = np.ones(len(samples), bool)
    floor = np.eye(samples.shape[1]) * SKIN_CHROMA_FLOOR**2
    for _ in range(rounds):
        mean = samples[keep].mean(axis=0)
        # The core of a 2-D Gaussian cut at 2.5σ holds 0.71 of its variance: scale back to the true σ.
        covariance = np.cov(samples[keep].T) / 0.71 + floor
        delta = samples - mean
        inside = np.einsum("ni,ij,nj->n", delta, np.linalg.inv(covariance), delta) < 2.5**2
        if inside.sum() < 10:
            break
        keep = inside
    return mean, np.linalg.inv(covariance)


def _smoothstep(t: np.ndarray) -> np.ndarray:
    """Cubic ease 0 → 1 over t ∈ [0, 1] (clamped): zero slope at both ends, so a fade starts without a kink."""
    t = np.clip(t, 0.0, 1.0)
    return (t * t * (3.0 - 2.0 * t)).astype(np.float32)


def unwrap_frame(
    image: np.ndarray,
    vertices: np.ndarray,
    rotation: np.ndarray,
    translation: np.ndarray,
    scale: float,
    raster: UVRasterizer,
    depth_vertices: np.ndarray,
    region: np.ndarray,
    triangles: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """One frame's contribution to the UV albedo: (N, N, 3) float32 colour and (N, N) float32 weight.

    vertices: (V, 3) the frame's fitted mesh (identity + expression), model cm; `depth_vertices` the vertex ids
    that may occlude (face and head); `region`: (H, W) float32 in [0, 1], how surely each pixel shows facial
    skin. A texel's weight is cos³ of its angle to the camera (fading out towards the silhouette), times how
    far it is from being covered by a nearer surface (fading over 3 mm), times `region` where it lands: every
    factor is continuous, so the edge of what this frame saw leaves no step in the albedo.
    """
    height, width = image.shape[:2]
    normals = vertex_normals(vertices, triangles)
    pixels, depth = project_vertices(vertices, rotation, translation, scale, height)
    corners, bary = raster.corners_model, raster.barycentric
    texel_px = np.einsum("hwk,hwkc->hwc", bary, pixels[corners])
    texel_depth = np.einsum("hwk,hwk->hw", bary, depth[corners])
    texel_normal = np.einsum("hwk,hwkc->hwc", bary, normals[corners]) @ rotation.T
    facing = texel_normal[..., 2] / np.maximum(np.linalg.norm(texel_normal, axis=-1), 1e-9)
    cell = max(2, int(round(scale * 0.4)))  # ~4 mm bins: finer than the nose, coarser than vertex spacing
    buffer = _depth_buffer(pixels[depth_vertices], depth[depth_vertices], (height, width), cell)
    # The buffer read bilinearly (empty bins as far away), so the occlusion test does not step from bin to bin;
    # within 8 mm of the nearest surface counts as seen, fading out over the next 3 mm.
    buffer = np.where(np.isfinite(buffer), buffer, float(depth.min())).astype(np.float32)
    nearest = cv2.remap(
        buffer, (texel_px[..., 0] / cell - 0.5).astype(np.float32), (texel_px[..., 1] / cell - 0.5).astype(np.float32),
        cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE,
    )  # fmt: skip
    unoccluded = _smoothstep((texel_depth - nearest + 1.1 * scale) / (0.3 * scale))
    inside = (texel_px[..., 0] >= 0) & (texel_px[..., 0] < width - 1) & (texel_px[..., 1] >= 0)
    inside &= texel_px[..., 1] < height - 1
    map_x, map_y = texel_px[..., 0].astype(np.float32), texel_px[..., 1].astype(np.float32)
    in_region = cv2.remap(region.astype(np.float32), map_x, map_y, cv2.INTER_LINEAR, borderValue=0.0)
    lo, hi = SILHOUETTE_RAMP
    view = np.clip(facing, 0.0, 1.0) ** VIEW_WEIGHT_POWER * _smoothstep((facing - lo) / (hi - lo))
    weight = np.where(raster.covered & inside, view * unoccluded * in_region, 0.0)
    colour = cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR).astype(np.float32)
    return colour, weight.astype(np.float32)


def mirror_u_map(raster: UVRasterizer, model: FaceModel) -> np.ndarray:
    """(N, N) int64 flat index of each texel's mirror texel (the same surface point at −x), −1 if none.

    Found through the surface, not by flipping u: the ICT face tile is not exactly symmetric in u.
    """
    from scipy.spatial import cKDTree

    n = raster.resolution
    points = np.einsum("hwk,hwkc->hwc", raster.barycentric, model.neutral[raster.corners_model])
    covered = np.flatnonzero(raster.covered.ravel())
    flat_points = points.reshape(-1, 3)[covered]
    tree = cKDTree(flat_points)
    mirrored = flat_points * np.array([-1.0, 1.0, 1.0])
    distance, nearest = tree.query(mirrored)
    result = np.full(n * n, -1, dtype=np.int64)
    ok = distance < 0.3  # cm: a matching surface point exists on the other side
    result[covered[ok]] = covered[nearest[ok]]
    return result.reshape(n, n)


def push_pull_fill(image: np.ndarray, known: np.ndarray) -> np.ndarray:
    """(N, N, C) float image with (N, N) `known` (bool, or float confidence in [0, 1]) → every texel filled by
    smooth extrapolation; fully known texels keep their value.

    Pull: average the known texels down a pyramid (normalized convolution); push: fill each level's holes
    from the coarser level. Unlike inpainting along isophotes it never streaks, and it costs O(N²).
    """
    weight = np.clip(known.astype(np.float32), 0.0, 1.0)
    levels = [(image * weight[..., None], weight)]
    while min(levels[-1][1].shape) > 1:
        colour, w = levels[-1]
        h, wd = (colour.shape[0] + 1) // 2 * 2, (colour.shape[1] + 1) // 2 * 2
        colour = np.pad(colour, ((0, h - colour.shape[0]), (0, wd - colour.shape[1]), (0, 0)))
        w = np.pad(w, ((0, h - w.shape[0]), (0, wd - w.shape[1])))
        levels.append((
            colour.reshape(h // 2, 2, wd // 2, 2, -1).sum(axis=(1, 3)),
            w.reshape(h // 2, 2, wd // 2, 2).sum(axis=(1, 3)),
        ))  # fmt: skip
    colour, w = levels[-1]
    filled = colour / np.maximum(w, 1e-6)[..., None]
    for colour, w in reversed(levels[:-1]):
        up = cv2.resize(filled.astype(np.float32), (w.shape[1], w.shape[0]), interpolation=cv2.INTER_LINEAR)
        up = up.reshape(w.shape[0], w.shape[1], -1)
        mix = np.clip(w, 0.0, 1.0)[..., None]  # texels with full known weight keep their own value
        filled = np.where(w[..., None] > 0, colour / np.maximum(w, 1e-6)[..., None], up) * mix + up * (1 - mix)
    return filled


def shading_field(albedo: np.ndarray, confidence: np.ndarray) -> np.ndarray:
    """(N, N) float32 low-frequency luminance of the skin in `albedo` (N, N, 3) float, relative to its median
    (1 = the median skin brightness), from the texels weighted by `confidence` (N, N) in [0, 1].

    A Gaussian of σ = `SHADING_SIGMA` × N (normalized convolution, so the unseen texels do not darken the
    edges). Brows, eyes, nostrils and highlights are not shading: a second pass leaves out texels more than
    25 % off the first estimate.
    """
    sigma = SHADING_SIGMA * albedo.shape[0]
    luma = np.maximum(albedo @ np.array([0.299, 0.587, 0.114], np.float32), 1.0)
    weight = confidence.astype(np.float32)
    for _ in range(2):
        field = cv2.GaussianBlur(luma * weight, (0, 0), sigma) / np.maximum(
            cv2.GaussianBlur(weight, (0, 0), sigma), 1e-6
        )
        weight = confidence * ((luma > 0.8 * field) & (luma < 1.25 * field))
    median = float(np.median(luma[confidence > 0.5])) if (confidence > 0.5).any() else float(luma.mean())
    return (field / median).astype(np.float32)


def _feather_inside(good: np.ndarray, texels: float) -> np.ndarray:
    """(N, N) float32 in [0, 1]: 0 outside `good` (N, N) bool, rising with the UV distance inward from its
    edge to 1 at `texels`, so a blend driven by it spans at least that many texels however steeply the weight
    that defined `good` fell. Patches outside `good` smaller than `FEATURE_HOLE_AREA` of the tile (mouth opening,
    nostrils, eye slits) count as inside: they are left to the narrow per-texel blend."""
    outside = (~good).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(outside, connectivity=8)
    large = np.zeros(count, bool)
    large[1:] = stats[1:, cv2.CC_STAT_AREA] >= FEATURE_HOLE_AREA * good.size
    inside = cv2.distanceTransform((~large[labels]).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return _smoothstep(inside / max(texels, 1.0))


def fill_texture(
    colour_sum: np.ndarray, weight_sum: np.ndarray, raster: UVRasterizer, mirror: np.ndarray
) -> np.ndarray:
    """Accumulated colour/weight → (N, N, 3) uint8 albedo with every texel filled.

    A texel's confidence in its own colour rises with its UV distance inward from where the summed view weight
    falls below `SEEN_FULL_WEIGHT` (full at `FILL_FEATHER_TEXELS`; small unseen holes keep a per-texel fade over
    `HOLE_FEATHER_TEXELS`). Its colour leans towards its mirror texel on the other side of the face when that one
    was seen better (own texel within `FILL_FEATHER_TEXELS` of where its weight falls below
    `MIRROR_FULL_WEIGHT`); what neither side saw comes from a smooth push-pull fill of the rest, blurred. Every
    blend is continuous and spans at least `FILL_FEATHER_TEXELS` in UV however steeply the weight falls, so no
    seam or line shows. The baked lighting is
    divided out first: the skin's low-frequency shading (`shading_field`), keeping its median brightness and hue.
    """
    if not (weight_sum > 1e-4).any():
        raise UserError("no face texel was visible in the enrollment frames")
    n = weight_sum.shape[0]
    albedo = colour_sum / np.maximum(weight_sum, 1e-6)[..., None]
    # Distance to the nearest unseen face texel (texels off the face tile, like the eye openings, are no edge).
    seen = ((weight_sum > 1e-4) | ~raster.covered).astype(np.uint8)
    inward = cv2.distanceTransform(seen, cv2.DIST_L2, 5)
    hole = _smoothstep(inward / (HOLE_FEATHER_TEXELS * n / 1024))
    own = (
        _smoothstep(weight_sum / SEEN_FULL_WEIGHT)
        * hole
        * _feather_inside((weight_sum >= SEEN_FULL_WEIGHT) | ~raster.covered, FILL_FEATHER_TEXELS * n / 1024)
    )
    quality = _smoothstep(weight_sum / MIRROR_FULL_WEIGHT) * _feather_inside(
        (weight_sum >= MIRROR_FULL_WEIGHT) | ~raster.covered, FILL_FEATHER_TEXELS * n / 1024
    )
    source = np.maximum(mirror.ravel(), 0)
    has_mirror = (mirror >= 0).astype(np.float32)
    mirror_own = own.ravel()[source].reshape(own.shape) * has_mirror
    mirror_quality = quality.ravel()[source].reshape(own.shape) * has_mirror
    mirrored = albedo.reshape(-1, 3)[source].reshape(albedo.shape)
    take_own = own * (quality + 0.05)
    take_mirror = mirror_own * (1.0 - quality) * (mirror_quality + 0.05)
    total = np.maximum(take_own + take_mirror, 1e-6)[..., None]
    value = (take_own[..., None] * albedo + take_mirror[..., None] * mirrored) / total
    confidence = 1.0 - (1.0 - own) * (1.0 - mirror_own)
    gain = np.clip(1.0 / np.maximum(shading_field(value, confidence), 1e-3), *SHADING_GAIN)
    value = value * gain[..., None]
    fill = push_pull_fill(np.where(confidence[..., None] > 0, value, 0.0), confidence)
    fill = cv2.GaussianBlur(fill.astype(np.float32), (0, 0), FILL_BLUR_TEXELS * n / 1024)
    out = confidence[..., None] * value + (1.0 - confidence[..., None]) * fill
    return raster.fill_gutter(np.clip(out, 0, 255).astype(np.uint8))


def unwrap_texture(
    model: FaceModel,
    identity_weights: np.ndarray,
    frames: list[TrackedFrame],
    embedding: LandmarkEmbedding,
    size: int = TEXTURE_SIZE,
    progress: bool = True,
) -> np.ndarray:
    """(size, size, 3) uint8 UV albedo of the face tile from tracked frames (row 0 at v = 0).

    Each frame is fitted (pose and expression) with the solver's per-frame fit, so a smiling photo maps its
    lips and cheeks onto the smiling mesh rather than smearing them over the neutral one; its pixels count
    as far as they show skin (`skin_weight` inside the feathered face oval).
    """
    colour_sum, weight_sum = accumulate_views(model, identity_weights, frames, embedding, size, progress)
    raster = face_rasterizer(model, size)
    return fill_texture(colour_sum, weight_sum, raster, mirror_u_map(raster, model))


def accumulate_views(
    model: FaceModel,
    identity_weights: np.ndarray,
    frames: list[TrackedFrame],
    embedding: LandmarkEmbedding,
    size: int = TEXTURE_SIZE,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Σ weight·colour (size, size, 3) float32 and Σ weight (size, size) float32 over the frames' `unwrap_frame`."""
    from mediapipe.python.solutions.selfie_segmentation import SelfieSegmentation  # ~1 s import: when enrolling

    raster = face_rasterizer(model, size)
    face = model.personalize(identity_weights)
    fitter = FrameFitter(model, embedding, identity_weights, SolveConfig())
    depth_vertices = model.topology.region_vertices("face", "head")
    n_vertices = int(depth_vertices.max()) + 1  # face and head lead the vertex order: skip teeth and eyes
    triangles = _triangles_within(model, n_vertices)
    colour_sum = np.zeros((size, size, 3), np.float32)
    weight_sum = np.zeros((size, size), np.float32)
    with SelfieSegmentation(model_selection=0) as segmenter:
        for tracked in tqdm(frames, desc="unwrapping texture", unit="frame", disable=not progress):
            observation = valid_observation(tracked.landmarks)
            if observation is None:
                continue
            observed, has_iris = observation
            fit = fitter.fit(observed, has_iris=has_iris)
            vertices = face.evaluate(fit.weights.astype(np.float32), n_vertices)
            image = tracked.frame.image
            person = segmenter.process(image).segmentation_mask
            region = face_region_mask(tracked.landmarks, image.shape[:2])
            region *= skin_weight(image, tracked.landmarks, person)
            colour, weight = unwrap_frame(
                image, vertices, fit.rotation, fit.translation_px, fit.scale_px_per_cm, raster, depth_vertices,
                region, triangles,
            )  # fmt: skip
            colour_sum += colour * weight[..., None]
            weight_sum += weight
    return colour_sum, weight_sum


def _triangles_within(model: FaceModel, n_vertices: int) -> np.ndarray:
    triangles = model.topology.triangles
    return triangles[(triangles < n_vertices).all(axis=1)]


def track_frames(
    frames: Iterable[Frame], config: Config, static: bool, keep_every: int = 1, total: int | None = None
) -> list[TrackedFrame]:
    """Run FaceMesh on each frame; keep those with a face (progress bar). Every frame is tracked (video mode
    follows the face from frame to frame), but only every `keep_every`-th is kept with its image, so a long
    video never sits in memory whole. Frames the tracker cannot take (too small, say) count as faceless."""

    kept: list[TrackedFrame] = []
    with FaceTracker(config.tracking, static=static) as tracker:
        for number, frame in enumerate(tqdm(frames, desc="tracking", unit="frame", total=total)):
            try:
                faces = tracker.process(frame)
            except InvalidFrameError as exc:
                log.warning("frame %d skipped: %s", frame.index, exc)
                continue
            if faces and number % keep_every == 0:
                kept.append(TrackedFrame(frame, faces[0]))
    return kept


def enroll(
    name: str,
    frames: Iterable[Frame],
    source: str,
    config: Config,
    directory: Path,
    static: bool,
    max_frames: int = 60,
    calibrate: bool = True,
    identity_weights: np.ndarray | None = None,
) -> Identity:
    """Build and save the identity bundle `name` from `frames` (see module docstring).

    `calibrate=False` stores a zero neutral calibration: for bundles that drive other people's faces (the
    shipped default identity), where the enrolled person's resting expression means nothing.
    `identity_weights` (n_id,): keep this shape instead of fitting one (re-texturing a bundle whose geometry
    other assets depend on); it needs `calibrate=False`, the calibration coming from the same fit.
    """
    if identity_weights is not None and calibrate:
        raise ValueError("given identity weights leave no fit to calibrate from: pass calibrate=False")
    from engine.detail.precompute import precompute_bases  # torch / ONNX Runtime: only when enrolling

    model = FaceModel.load()
    embedding = LandmarkEmbedding.load()
    # A video names its length: keep about max_frames of its frames (evenly spaced), not all of them.
    total = len(frames) if isinstance(frames, Sized) else None
    keep_every = max(1, total // max_frames) if total else 1
    tracked = track_frames(frames, config, static=static, keep_every=keep_every, total=total)
    if not tracked:
        raise UserError(f"no face found in {source}: enrollment needs a clearly visible face")
    if len(tracked) > max_frames:  # evenly spaced frames keep fitting and unwrapping fast
        tracked = [tracked[i] for i in np.linspace(0, len(tracked) - 1, max_frames).round().astype(int)]
    neutral_offset = np.zeros(len(model.expression_basis), np.float32)
    if identity_weights is None:
        log.info("fitting the identity on %d frame(s)", len(tracked))
        started = time.monotonic()
        fit = fit_identity(model, embedding, [t.landmarks for t in tracked])
        log.info("identity fit: residual %.2f px in %.1f s", fit.residual_px, time.monotonic() - started)
        identity_weights = fit.identity_weights
        if calibrate:
            neutral_offset = np.asarray(fit.neutral_offset, np.float32)
    started = time.monotonic()
    texture = unwrap_texture(model, identity_weights, tracked, embedding)
    log.info("texture unwrapped from %d frame(s) in %.1f s", len(tracked), time.monotonic() - started)
    bases = precompute_bases(model, identity_weights, texture, config.detail, progress=True)
    identity = Identity(
        name=name,
        model_id=model.model_id,
        identity_weights=np.asarray(identity_weights, np.float32),
        neutral_offset=neutral_offset,
        texture=texture,
        bases=bases,
        source=source,
        model_hash=model.model_hash,
    )
    save_bundle(identity, directory)
    return identity


class VideoFrames:
    """A video's frames, decoded one at a time as they are iterated (never all in memory); `len()` is the
    container's frame count (an estimate some containers get wrong; it only spaces the kept frames)."""

    def __init__(self, path: Path) -> None:
        with VideoFileSource(path) as video:  # opens and reads one frame: a bad file fails here, in one line
            self._count = max(1, video.frame_count)
        self.path = path

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[Frame]:
        with VideoFileSource(self.path) as video:
            yield from video
