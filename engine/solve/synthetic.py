"""Synthetic landmarks from the face model itself: ground truth for the solver's tests and benchmark.

`synthetic_landmarks` poses an identity's embedded landmarks (expression weights, gaze turning the irises about
the eyeball centres as the renderer does, Gaussian noise in cm), projects them through a pinhole camera and
writes them as MediaPipe would (pixels, y down, z growing away from the camera, relative to the head).
`constructed_embedding` is an embedding that needs nothing but the model: random front-face triangles, the eye
corners and lids on ICT's iBUG-68 eye vertices, the irises on the eyeballs — for checking the solver's math
independently of the shipped embedding.
"""

from __future__ import annotations

import numpy as np

from engine.face_model import DEFAULT_MODEL_PATH, FaceModel, LandmarkEmbedding
from engine.names import ICT_EXPRESSIONS
from engine.solve.expression import EmbeddedFace
from engine.solve.eyes import DEFAULT_GAZE_RANGES, GazeRanges, eye_rotations
from engine.solve.landmark_sets import INNER_CORNER, IRIS, LOWER_LID, OUTER_CORNER, UPPER_LID
from engine.solve.pose import focal_length_px
from engine.types import Landmarks

_MOUTH_CLOSE = ICT_EXPRESSIONS.index("mouthClose")
_JAW_OPEN = ICT_EXPRESSIONS.index("jawOpen")
_NARROW_FACE_LAST = 6705  # ICT's front face (vertex range table in ../shared/ict-facekit/README.md)


def random_box_qp(rng: np.random.Generator, n: int = 53, coupled: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """A random box-QP (H, b) like the expression solve's: H = AᵀA + 0.01 I, b = Aᵀy for a random tall A with
    column scales spanning 30× (like blendshape bases); `coupled` mixes the columns strongly, the hard case
    for guessing the active set (it drives the primal-dual phase into the primal active-set fallback)."""
    a = rng.normal(size=(300, n)) * rng.uniform(0.1, 3.0, size=n)
    if coupled:
        a = a @ (np.eye(n) + 0.9 * rng.normal(size=(n, n)) / np.sqrt(n))
    y = rng.normal(size=300) * (30.0 if coupled else 3.0)
    return a.T @ a + 0.01 * np.eye(n), a.T @ y


def random_expression(rng: np.random.Generator, n_active: tuple[int, int] = (1, 4)) -> np.ndarray:
    """(53,) a few channels active with values in [0.2, 1]; mouthClose only together with a larger jawOpen
    (ICT's mouthClose corrects an open jaw, see `engine.solve.solver`)."""
    w = np.zeros(len(ICT_EXPRESSIONS))
    k = int(rng.integers(n_active[0], n_active[1] + 1))
    idx = rng.choice(len(ICT_EXPRESSIONS), size=k, replace=False)
    w[idx] = rng.uniform(0.2, 1.0, size=k)
    if w[_MOUTH_CLOSE] > w[_JAW_OPEN]:
        w[_JAW_OPEN] = min(1.0, w[_MOUTH_CLOSE] + rng.uniform(0.0, 0.3))
    return w


def synthetic_landmarks(
    face: EmbeddedFace,
    eyeball_centers: np.ndarray,
    weights: np.ndarray,
    rotation: np.ndarray,
    scale_px_per_cm: float = 12.0,
    image_size: tuple[int, int] = (640, 480),
    noise_cm: float = 0.0,
    rng: np.random.Generator | None = None,
    ranges: GazeRanges = DEFAULT_GAZE_RANGES,
    fov_y_deg: float = 25.0,
) -> Landmarks:
    """MediaPipe-style landmarks of `face` with (53,) `weights`, seen by a pinhole camera.

    eyeball_centers: (2, 3) cm (left, right); rotation: (3, 3) model → camera; noise_cm: isotropic Gaussian
    σ in cm added in the model frame. The head origin sits on the optical axis at the distance where one cm
    spans `scale_px_per_cm` pixels (f/D) for a camera of vertical field of view `fov_y_deg`; z is depth
    relative to the head, magnified like x and y (MediaPipe's z is "scaled like x").
    """
    points = face.landmarks(weights)
    for eye, rot in enumerate(eye_rotations(weights, ranges)):
        idx = list(IRIS[eye])
        points[idx] = (points[idx] - eyeball_centers[eye]) @ rot.T + eyeball_centers[eye]
    if noise_cm > 0:
        points = points + (rng or np.random.default_rng()).normal(scale=noise_cm, size=points.shape)
    width, height = image_size
    focal = focal_length_px(height, fov_y_deg)
    cam = points @ rotation.T
    cam[:, 2] -= focal / scale_px_per_cm  # the head origin at distance D = f/s, straight ahead
    magnification = focal / -cam[:, 2]  # pixels per cm at each landmark's own depth
    pixels = np.stack(
        [
            0.5 * width + cam[:, 0] * magnification,
            0.5 * height - cam[:, 1] * magnification,
            -(cam[:, 2] - cam[:, 2].mean()) * magnification,
        ],
        axis=1,
    )
    normalized = pixels / np.array([width, height, width])
    return Landmarks(normalized=normalized, pixels=pixels, image_size=image_size, presence=1.0)


def constructed_embedding(model: FaceModel, seed: int = 0) -> LandmarkEmbedding:
    """A 478-landmark embedding from the model alone (see module doc). Eye landmark k of a lid binds to the
    nearest iBUG-68 lid vertices; each iris point to its eyeball's iris vertex nearest the intended spot."""
    rng = np.random.default_rng(seed)
    with np.load(DEFAULT_MODEL_PATH, allow_pickle=False) as z:
        ibug = z["landmark_vertices_68"].astype(np.int32)
    tris = model.topology.triangles
    front = tris[(tris <= _NARROW_FACE_LAST).all(axis=1)]
    chosen = front[rng.choice(len(front), size=478, replace=False)]
    bary = rng.dirichlet(np.ones(3), size=478).astype(np.float32)
    vertex_ids = chosen.astype(np.int32)

    def bind(landmark: int, vertices: tuple[int, ...], coefficients: tuple[float, ...]) -> None:
        ids = list(vertices) + [vertices[-1]] * (3 - len(vertices))
        vertex_ids[landmark] = ids
        bary[landmark] = list(coefficients) + [0.0] * (3 - len(coefficients))

    # iBUG-68 eyes (0-based): right 36 outer, 37/38 upper, 39 inner, 40/41 lower; left 42 inner, 43/44 upper,
    # 45 outer, 46/47 lower. MediaPipe lids run outer → inner.
    corners = {OUTER_CORNER[0]: 45, INNER_CORNER[0]: 42, OUTER_CORNER[1]: 36, INNER_CORNER[1]: 39}
    for landmark, k in corners.items():
        bind(landmark, (int(ibug[k]),), (1.0,))
    lids = (
        (UPPER_LID[0], 44, 43), (LOWER_LID[0], 46, 47), (UPPER_LID[1], 37, 38), (LOWER_LID[1], 41, 40),
    )  # fmt: skip
    for landmarks, outer, inner in lids:
        for j, landmark in enumerate(landmarks):
            t = j / (len(landmarks) - 1)
            bind(landmark, (int(ibug[outer]), int(ibug[inner])), (1.0 - t, t))
    neutral = model.neutral
    iris_sets = [np.arange(first, last + 1) for first, last in model.iris_ranges]
    iris_sets.sort(key=lambda ids: -neutral[ids, 0].mean())  # subject's left (+x) first, like IRIS
    for eye, ids in enumerate(iris_sets):
        centre = ids[np.argmax(neutral[ids, 2])]
        spots = neutral[centre] + np.array([[0, 0, 0], [0.55, 0, 0], [0, 0.55, 0], [-0.55, 0, 0], [0, -0.55, 0]])
        for landmark, spot in zip(IRIS[eye], spots, strict=True):
            bind(landmark, (int(ids[np.argmin(np.linalg.norm(neutral[ids] - spot, axis=1))]),), (1.0,))
    return LandmarkEmbedding(vertex_ids, bary, {"constructed": float("nan")})
