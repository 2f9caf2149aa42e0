"""Enrollment: photos / video / webcam frames → an identity bundle (DESIGN §5).

1. track every frame (static mode for stills) and keep the frames with a face;
2. fit the identity (w_id, jointly with pose) and the neutral calibration over those frames;
3. unwrap a UV albedo of the face tile: each texel's surface point is projected into every frame and its
   colour averaged with visibility weights (facing the camera, not occluded), unseen texels are filled from
   the mirrored side, then by inpainting, then by the mean skin tone;
4. precompute the 20 detail bases for that identity and texture; write the bundle atomically.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from engine.config import Config
from engine.detail.uv_raster import UVRasterizer, face_rasterizer
from engine.errors import UserError
from engine.face_model import FaceModel, LandmarkEmbedding, vertex_normals
from engine.identity import Identity, save_bundle
from engine.solve.landmark_sets import RIGID_LANDMARKS
from engine.solve.pose import pixels_to_observed, umeyama
from engine.types import Frame, Landmarks

log = logging.getLogger(__name__)
TEXTURE_SIZE = 1024
# Weight of a texel seen at angle θ to the camera: cos(θ)^k favours frontal views strongly.
VIEW_WEIGHT_POWER = 3.0


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


def unwrap_frame(
    image: np.ndarray,
    vertices: np.ndarray,
    normals: np.ndarray,
    rotation: np.ndarray,
    translation: np.ndarray,
    scale: float,
    raster: UVRasterizer,
    depth_vertices: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """One frame's contribution to the UV albedo: (N, N, 3) float32 colour and (N, N) float32 weight.

    vertices/normals: (V, 3) posed-identity model geometry; `depth_vertices` the vertex ids that may occlude
    (face and head). A texel counts when its surface faces the camera and no nearer surface covers it.
    """
    height, width = image.shape[:2]
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


def fill_texture(
    colour_sum: np.ndarray, weight_sum: np.ndarray, raster: UVRasterizer, mirror: np.ndarray
) -> np.ndarray:
    """Accumulated colour/weight → (N, N, 3) uint8 albedo with every covered texel filled.

    Unseen texels take their mirror texel's colour, then OpenCV inpainting (Telea) closes remaining holes,
    and whatever is still empty takes the mean observed skin tone.
    """
    seen = weight_sum > 1e-4
    if not seen.any():
        raise UserError("no face texel was visible in the enrollment frames")
    albedo = np.zeros_like(colour_sum)
    albedo[seen] = colour_sum[seen] / weight_sum[seen, None]
    flat_albedo = albedo.reshape(-1, 3)
    flat_seen = seen.ravel().copy()
    source = mirror.ravel()
    take = (~flat_seen) & (source >= 0)
    take[take] = flat_seen[source[take]]
    flat_albedo[take] = flat_albedo[source[take]]
    flat_seen |= take
    seen = flat_seen.reshape(seen.shape)
    mean_tone = albedo[seen].mean(axis=0)
    image = np.clip(albedo, 0, 255).astype(np.uint8)
    holes = (~seen).astype(np.uint8)
    image = cv2.inpaint(image, holes, 5, cv2.INPAINT_TELEA)
    image[~seen & ~raster.covered] = np.clip(mean_tone, 0, 255).astype(np.uint8)
    return raster.fill_gutter(image)


def unwrap_texture(
    model: FaceModel,
    identity_weights: np.ndarray,
    frames: list[TrackedFrame],
    embedding: LandmarkEmbedding,
    size: int = TEXTURE_SIZE,
    progress: bool = True,
) -> np.ndarray:
    """(size, size, 3) uint8 UV albedo of the face tile from tracked frames (row 0 at v = 0)."""
    raster = face_rasterizer(model, size)
    face = model.personalize(identity_weights)
    vertices = face.neutral
    normals = vertex_normals(vertices, model.topology.triangles)
    depth_vertices = model.topology.region_vertices("face", "head")
    embedded = embedding.apply(vertices).astype(np.float64)
    rigid = np.asarray(RIGID_LANDMARKS)  # landmarks that move little with expression
    colour_sum = np.zeros((size, size, 3), np.float32)
    weight_sum = np.zeros((size, size), np.float32)
    for tracked in tqdm(frames, desc="unwrapping texture", unit="frame", disable=not progress):
        height = tracked.frame.image.shape[0]
        observed = pixels_to_observed(tracked.landmarks.pixels, height)
        rotation, translation, scale = umeyama(embedded[rigid], observed[rigid])
        colour, weight = unwrap_frame(
            tracked.frame.image, vertices, normals, rotation, translation, scale, raster, depth_vertices
        )
        colour_sum += colour * weight[..., None]
        weight_sum += weight
    return fill_texture(colour_sum, weight_sum, raster, mirror_u_map(raster, model))


def track_frames(frames: Iterable[Frame], config: Config, static: bool) -> list[TrackedFrame]:
    """Run FaceMesh on each frame; keep those with a face (progress bar)."""
    from engine.tracking import FaceTracker

    kept: list[TrackedFrame] = []
    with FaceTracker(config.tracking, static=static) as tracker:
        for frame in tqdm(frames, desc="tracking", unit="frame"):
            faces = tracker.process(frame)
            if faces:
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
) -> Identity:
    """Build and save the identity bundle `name` from `frames` (see module docstring)."""
    from engine.detail.precompute import precompute_bases
    from engine.solve.identity_fit import fit_identity

    model = FaceModel.load()
    embedding = LandmarkEmbedding.load()
    tracked = track_frames(frames, config, static=static)
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
        neutral_offset=np.asarray(fit.neutral_offset, np.float32),
        texture=texture,
        bases=bases,
        source=source,
        model_hash=model.model_hash,
    )
    save_bundle(identity, directory)
    return identity


def _enroll_frames(args: argparse.Namespace, config: Config) -> tuple[list[Frame], str, bool]:
    """The frames an `enroll` invocation names, a description of where they came from, and whether stills."""
    from engine.sources.files import ImageSource, VideoFileSource
    from engine.sources.webcam import WebcamSource

    if args.image:
        with ImageSource(Path(args.image)) as images:
            return list(images), f"image {args.image}", True
    if args.video:
        with VideoFileSource(Path(args.video)) as video:
            frames = list(video)
        return frames, f"video {args.video}", False
    index = 0 if args.webcam is True else int(args.webcam)
    with WebcamSource(index, config.source.width, config.source.height, config.source.fps) as camera:
        print(f"enroll: look at the camera with a relaxed, neutral face for {args.seconds:.0f} s")
        frames = []
        deadline = time.monotonic() + args.seconds
        while time.monotonic() < deadline:
            frame = camera.read()
            if frame is not None:
                frames.append(frame)
    return frames, f"webcam:{index}", False


def cmd_enroll(args: argparse.Namespace, config: Config) -> int:
    """`enroll`: build an identity bundle and print where it went."""
    from engine.identity import default_bundle_dir

    if sum(bool(x) for x in (args.image, args.video, args.webcam)) != 1:
        raise UserError("enroll needs exactly one of --image PATH, --video PATH or --webcam [N]")
    if args.resolution:
        config.detail.resolution = args.resolution
    directory = Path(args.out) if args.out else default_bundle_dir(args.name, config.identity.cache_dir)
    frames, source, static = _enroll_frames(args, config)
    if not frames:
        raise UserError(f"{source} delivered no frames")
    identity = enroll(args.name, frames, source, config, directory, static=static, max_frames=args.max_frames)
    backend = identity.bases.backend if identity.bases is not None else "none"
    print(f"enrolled {args.name!r} from {source}: bundle written to {directory} (bases by {backend})")
    return 0


def add_enroll_command(sub: argparse._SubParsersAction) -> None:
    """`enroll --image | --video | --webcam`."""
    p = sub.add_parser("enroll", help="build an identity bundle from a photo, a video or the webcam")
    p.add_argument("--name", default="me", help="identity name (bundle folder name); default 'me'")
    p.add_argument("--image", help="a photo, or a folder of photos, of one face")
    p.add_argument("--video", help="a video of one face")
    p.add_argument("--webcam", nargs="?", const=True, default=None, metavar="N", help="capture from webcam N")
    p.add_argument("--seconds", type=float, default=3.0, help="webcam capture time (default 3 s)")
    p.add_argument("--max-frames", type=int, default=60, help="frames used for fitting and texture")
    p.add_argument("--resolution", type=int, help="detail basis resolution (default from config: 512)")
    p.add_argument("--out", help="bundle folder (default: the user cache dir, identities/<name>)")
    p.set_defaults(handler=cmd_enroll)
