"""Enrollment: photos / video / webcam frames → an identity bundle (design §5).

1. track every frame (static mode for stills) and keep the frames with a face;
2. fit the identity (w_id, jointly with pose) and the neutral calibration over those frames;
3. unwrap a UV albedo of the face tile: each texel's surface point is projected into every frame and its
   colour averaged with visibility weights (facing the camera, not occluded), unseen texels are filled from
   the mirrored side, then by inpainting, then by the mean skin tone;
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
# Above the brows, a texel darker than this fraction of the median skin luminance is taken for hair.
HAIR_LUMA_RATIO = 0.6
# Beside the brows only clearly black texels count as hair (brows measure ≥ 0.75 of skin luminance).
DARK_HAIR_LUMA_RATIO = 0.35
# A texel seen with at least this view weight (cos³θ ≈ 0.3: θ ≈ 48°) keeps its own colour; less, it blends
# towards its mirror texel.
MIRROR_FULL_WEIGHT = 0.3
# MediaPipe brow landmarks (both sides): the forehead starts this far (cm) above the highest of them.
BROW_LANDMARKS = (70, 63, 105, 66, 107, 336, 296, 334, 293, 300)
FOREHEAD_MARGIN_CM = 0.8
# Temples (|x| beyond the brow tails, down to eye level) can show hair too.
TEMPLE_HALF_WIDTH_CM = 6.2


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
    """(H, W) bool: inside the convex hull of the face-oval landmarks, grown (or, negative, shrunk) by
    `grow` × face height.

    Texels that project outside it see hair, neck or background, which must not become skin albedo; the
    default shrinks the outline slightly because MediaPipe's oval sits on the silhouette.
    """
    outline = landmarks.pixels[list(FACE_OVAL), :2].astype(np.float32)
    hull = cv2.convexHull(outline).astype(np.int32)
    mask = np.zeros(shape, np.uint8)
    cv2.fillConvexPoly(mask, hull, 1)
    radius = max(1, int(abs(grow) * float(np.ptp(outline[:, 1]))))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    mask = cv2.dilate(mask, kernel) if grow > 0 else cv2.erode(mask, kernel)
    return mask.astype(bool)


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
    that may occlude (face and head); `region`: (H, W) bool pixels that show facial skin. A texel counts when
    its surface faces the camera, no nearer surface covers it and it lands inside `region`.
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
    rows = np.clip((texel_px[..., 1] / cell).astype(int), 0, buffer.shape[0] - 1)
    cols = np.clip((texel_px[..., 0] / cell).astype(int), 0, buffer.shape[1] - 1)
    unoccluded = texel_depth >= buffer[rows, cols] - 0.8 * scale  # within 8 mm of the nearest surface
    inside = (texel_px[..., 0] >= 0) & (texel_px[..., 0] < width - 1) & (texel_px[..., 1] >= 0)
    inside &= texel_px[..., 1] < height - 1
    px = np.clip(texel_px[..., 0].astype(int), 0, width - 1)
    py = np.clip(texel_px[..., 1].astype(int), 0, height - 1)
    inside &= region[py, px]
    weight = np.where(raster.covered & inside & unoccluded & (facing > 0.2), facing**VIEW_WEIGHT_POWER, 0.0)
    colour = cv2.remap(
        image, texel_px[..., 0].astype(np.float32), texel_px[..., 1].astype(np.float32), cv2.INTER_LINEAR
    ).astype(np.float32)
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
    """(N, N, C) float image with (N, N) bool `known` texels → every texel filled by smooth extrapolation.

    Pull: average the known texels down a pyramid (normalized convolution); push: fill each level's holes
    from the coarser level. Unlike inpainting along isophotes it never streaks, and it costs O(N²).
    """
    weight = known.astype(np.float32)
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


def fill_texture(
    colour_sum: np.ndarray,
    weight_sum: np.ndarray,
    raster: UVRasterizer,
    mirror: np.ndarray,
    hair_ratio: np.ndarray | None = None,
) -> np.ndarray:
    """Accumulated colour/weight → (N, N, 3) uint8 albedo with every texel filled.

    `hair_ratio` (N, N): a texel darker than that fraction of the median skin luminance is hair and dropped
    (0 where no hair can be). Texels seen only obliquely blend towards their mirror texel on the other side
    of the face (fully below `MIRROR_FULL_WEIGHT`), so the seam between seen and mirrored skin fades; smooth
    push-pull extrapolation fills what neither side showed (hairline, ears, under the chin).
    """
    weight = weight_sum.copy()
    if not (weight > 1e-4).any():
        raise UserError("no face texel was visible in the enrollment frames")
    albedo = colour_sum / np.maximum(weight, 1e-6)[..., None]
    if hair_ratio is not None:
        luma = albedo @ np.array([0.299, 0.587, 0.114], np.float32)
        skin_luma = float(np.median(luma[weight > 1e-4]))
        weight[luma < hair_ratio * skin_luma] = 0.0
    seen = weight > 1e-4
    source = mirror.ravel()
    has_mirror = (source >= 0) & seen.ravel()[np.maximum(source, 0)]
    mirrored = albedo.reshape(-1, 3)[np.maximum(source, 0)].reshape(albedo.shape)
    own = np.clip(weight / MIRROR_FULL_WEIGHT, 0.0, 1.0)[..., None]
    has_mirror = has_mirror.reshape(seen.shape)[..., None]
    blended = np.where(has_mirror, own * albedo + (1.0 - own) * mirrored, albedo)
    known = seen | has_mirror[..., 0]
    filled = push_pull_fill(np.where(known[..., None], blended, 0.0), known)
    return raster.fill_gutter(np.clip(filled, 0, 255).astype(np.uint8))


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
    lips and cheeks onto the smiling mesh rather than smearing them over the neutral one.
    """

    raster = face_rasterizer(model, size)
    face = model.personalize(identity_weights)
    fitter = FrameFitter(model, embedding, identity_weights, SolveConfig())
    depth_vertices = model.topology.region_vertices("face", "head")
    n_vertices = int(depth_vertices.max()) + 1  # face and head lead the vertex order: skip teeth and eyes
    colour_sum = np.zeros((size, size, 3), np.float32)
    weight_sum = np.zeros((size, size), np.float32)
    for tracked in tqdm(frames, desc="unwrapping texture", unit="frame", disable=not progress):
        observation = valid_observation(tracked.landmarks)
        if observation is None:
            continue
        observed, has_iris = observation
        fit = fitter.fit(observed, has_iris=has_iris)
        vertices = face.evaluate(fit.weights.astype(np.float32), n_vertices)
        region = face_region_mask(tracked.landmarks, tracked.frame.image.shape[:2])
        colour, weight = unwrap_frame(
            tracked.frame.image, vertices, fit.rotation, fit.translation_px, fit.scale_px_per_cm, raster,
            depth_vertices, region, _triangles_within(model, n_vertices),
        )  # fmt: skip
        colour_sum += colour * weight[..., None]
        weight_sum += weight
    surface = np.einsum("hwk,hwkc->hwc", raster.barycentric, face.neutral[raster.corners_model])
    brow_top = float(embedding.apply(face.neutral)[list(BROW_LANDMARKS), 1].max())
    x, y = np.abs(surface[..., 0]), surface[..., 1]
    hair_ratio = np.zeros(raster.covered.shape, np.float32)
    # Black hair can reach the brow tails and temples; brows themselves are much lighter than that.
    hair_ratio[(y > brow_top - 0.2) & (x > 4.0)] = DARK_HAIR_LUMA_RATIO
    hair_ratio[(x > TEMPLE_HALF_WIDTH_CM) & (y > brow_top - 2.5)] = DARK_HAIR_LUMA_RATIO
    hair_ratio[y > brow_top + FOREHEAD_MARGIN_CM] = HAIR_LUMA_RATIO
    return fill_texture(colour_sum, weight_sum, raster, mirror_u_map(raster, model), hair_ratio)


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
) -> Identity:
    """Build and save the identity bundle `name` from `frames` (see module docstring).

    `calibrate=False` stores a zero neutral calibration: for bundles that drive other people's faces (the
    shipped default identity), where the enrolled person's resting expression means nothing.
    """
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
    log.info("fitting the identity on %d frame(s)", len(tracked))
    started = time.monotonic()
    fit = fit_identity(model, embedding, [t.landmarks for t in tracked])
    log.info("identity fit: residual %.2f px in %.1f s", fit.residual_px, time.monotonic() - started)
    texture = unwrap_texture(model, fit.identity_weights, tracked, embedding)
    bases = precompute_bases(model, fit.identity_weights, texture, config.detail, progress=True)
    identity = Identity(
        name=name,
        model_id=model.model_id,
        identity_weights=np.asarray(fit.identity_weights, np.float32),
        neutral_offset=np.asarray(fit.neutral_offset if calibrate else np.zeros_like(fit.neutral_offset), np.float32),
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
