"""Named sets of MediaPipe FaceMesh landmark indices (478-point topology) that the solver and enrollment use.

Left/right are the subject's (MediaPipe's `FACEMESH_LEFT_*` sets are the subject's left).
"""

from __future__ import annotations

# MediaPipe's own Procrustes set for head pose (`geometry_pipeline_metadata_landmarks.pbtxt`, the 33 landmarks
# with non-zero weight): nose bridge and tip, outer forehead, eye corners, cheekbones.
RIGID_LANDMARKS: tuple[int, ...] = (
    4, 6, 10, 33, 54, 67, 117, 119, 121, 127, 129, 132, 133, 136, 143, 147, 198, 205,
    263, 284, 297, 346, 348, 350, 356, 358, 361, 362, 365, 372, 376, 420, 425,
)  # fmt: skip

# The face outline (`FACEMESH_FACE_OVAL`): a silhouette, it slides over the surface as the head turns.
FACE_OVAL: tuple[int, ...] = (
    10, 21, 54, 58, 67, 93, 103, 109, 127, 132, 136, 148, 149, 150, 152, 162, 172, 176, 234, 251, 284, 288,
    297, 323, 332, 338, 356, 361, 365, 377, 378, 379, 389, 397, 400, 454,
)  # fmt: skip

# Per eye, (subject's left, subject's right). On an unmirrored photo 468 lies on the image's left.
OUTER_CORNER = (263, 33)
INNER_CORNER = (362, 133)
UPPER_LID = ((388, 387, 386, 385, 384), (161, 160, 159, 158, 157))  # outer → inner
LOWER_LID = ((390, 373, 374, 380, 381), (163, 144, 145, 153, 154))  # outer → inner
IRIS = ((473, 474, 475, 476, 477), (468, 469, 470, 471, 472))  # centre first, then the rim

N_MESH_LANDMARKS = 468  # 468..477 are the iris points
