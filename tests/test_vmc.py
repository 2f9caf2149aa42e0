"""VMC bridge: bundles decoded by python-osc's own UDP server; Unity axis conversion checked as rotations."""

from __future__ import annotations

import socket
import threading

import numpy as np
import pytest
from pythonosc.dispatcher import Dispatcher
from pythonosc.osc_bundle import OscBundle
from pythonosc.osc_server import BlockingOSCUDPServer

from engine.names import to_vrm_name
from engine.solve.pose import euler_to_rotation, rotation_to_quaternion
from engine.stream.vmc import VmcBridge, unity_head_rotation, unity_root_pose
from engine.types import FaceState, HeadPose, TrackingState


def random_state(rng: np.random.Generator) -> FaceState:
    q = rng.normal(size=4)
    pose = HeadPose(q / np.linalg.norm(q), rng.normal(0, 5, 3) + [0, 0, -60], 1.0)
    return FaceState(pose, rng.uniform(0, 1, 53), TrackingState.TRACKING, 0.9, 0, 0)


def rotation(x: float, y: float, z: float, w: float) -> np.ndarray:
    """3×3 matrix of a unit quaternion (same formula in either handedness)."""
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])  # fmt: skip


@pytest.mark.parametrize(("casing", "pose"), [("arkit", "head"), ("vrm", "head"), ("arkit", "root")])
def test_bundle_is_decoded_by_python_osc_server(casing: str, pose: str) -> None:
    state = random_state(np.random.default_rng(0))
    received: list[tuple[str, tuple]] = []
    dispatcher = Dispatcher()
    dispatcher.set_default_handler(lambda address, *args: received.append((address, args)))
    server = BlockingOSCUDPServer(("127.0.0.1", 0), dispatcher)
    server.timeout = 5.0
    thread = threading.Thread(target=server.handle_request)  # exactly one datagram: the whole frame
    thread.start()
    try:
        with VmcBridge("127.0.0.1", server.server_address[1], casing, pose) as bridge:  # type: ignore[arg-type]
            assert bridge.send(state)
        thread.join(timeout=5.0)
    finally:
        server.server_close()
    addresses = [a for a, _ in received]
    arkit = state.arkit()
    n = len(arkit)
    pose_address = "/VMC/Ext/Bone/Pos" if pose == "head" else "/VMC/Ext/Root/Pos"
    assert addresses == ["/VMC/Ext/Blend/Val"] * n + ["/VMC/Ext/Blend/Apply", pose_address, "/VMC/Ext/T",
                                                       "/VMC/Ext/OK"]  # fmt: skip
    rename = to_vrm_name if casing == "vrm" else str
    values = dict(args for _, args in received[:n])
    assert values.keys() == {rename(k) for k in arkit}
    for name, value in arkit.items():
        assert values[rename(name)] == pytest.approx(value, abs=1e-6)  # OSC floats are float32
    if casing == "vrm":
        assert "EyeBlinkLeft" in values and "JawOpen" in values
    transform = received[n + 1][1]
    assert len(transform) == 8
    if pose == "head":
        assert transform[0] == "Head"
        np.testing.assert_allclose(transform[1:4], 0.0)  # the bone stays on the neck
        np.testing.assert_allclose(transform[4:], unity_head_rotation(state.pose), atol=1e-6)
    else:
        assert transform[0] == "root"
        position, quaternion = unity_root_pose(state.pose)
        np.testing.assert_allclose(transform[1:4], position, atol=1e-6)
        np.testing.assert_allclose(transform[4:], quaternion, atol=1e-6)
    assert received[-1][1] == (1,)


def test_one_datagram_per_frame_and_it_is_a_bundle() -> None:
    rng = np.random.default_rng(1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(2.0)
        with VmcBridge("127.0.0.1", sock.getsockname()[1]) as bridge:
            for _ in range(3):
                bridge.send(random_state(rng))
        datagrams = [sock.recv(65536) for _ in range(3)]
    for dgram in datagrams:
        assert OscBundle.dgram_is_bundle(dgram)
        assert OscBundle(dgram).num_contents == 51 + 4
        assert len(dgram) < 8192  # one small UDP datagram, well under any MTU-fragmentation worry of receivers


def test_root_pose_is_the_engine_pose_mirrored_into_unity_axes() -> None:
    """Unity is the engine frame mirrored through z = 0 (S = diag(1, 1, -1)): R_unity = S R S, p_unity = S p / 100."""
    rng = np.random.default_rng(2)
    mirror = np.diag([1.0, 1.0, -1.0])
    for _ in range(20):
        pose = random_state(rng).pose
        position, (x, y, z, w) = unity_root_pose(pose)
        qw, qx, qy, qz = pose.quaternion
        np.testing.assert_allclose(rotation(x, y, z, w), mirror @ rotation(qx, qy, qz, qw) @ mirror, atol=1e-12)
        np.testing.assert_allclose(position, mirror @ pose.translation / 100.0, atol=1e-12)
    # A head 60 cm in front of the camera: the engine's -z (away from viewer) is Unity's +z (forward).
    assert unity_root_pose(HeadPose(np.array([1.0, 0, 0, 0]), np.array([0, 0, -60.0])))[0][2] == pytest.approx(0.6)


def _avatar_turn(yaw_deg: float, pitch_deg: float, roll_deg: float) -> np.ndarray:
    """The avatar's Head bone rotation matrix (Unity's quaternion formula) for an engine head pose."""
    quaternion = rotation_to_quaternion(euler_to_rotation(yaw_deg, pitch_deg, roll_deg))
    return rotation(*unity_head_rotation(HeadPose(quaternion, np.zeros(3))))


def test_head_bone_turns_the_avatar_as_the_user_turns() -> None:
    """In Unity's humanoid frame (avatar facing +z, its right hand towards +x, y up): a user turning to their
    left turns the avatar's face towards its own left (−x), looking up raises it (+y), and tilting the head
    towards the left shoulder tips its top towards the avatar's left (−x)."""
    forward, up = np.array([0.0, 0.0, 1.0]), np.array([0.0, 1.0, 0.0])
    assert (_avatar_turn(30, 0, 0) @ forward)[0] < -0.4  # yaw to the subject's left (+y rotation in the engine)
    assert (_avatar_turn(-30, 0, 0) @ forward)[0] > 0.4
    # Pitch: the engine's rotation about +x by a negative angle turns the face up (+z towards +y).
    assert (_avatar_turn(0, -20, 0) @ forward)[1] > 0.3
    # Roll: the engine's rotation about +z by a negative angle moves the head's top to the subject's left (+x).
    assert (euler_to_rotation(0, 0, -20) @ up)[0] > 0.3
    assert (_avatar_turn(0, 0, -20) @ up)[0] < -0.3
    np.testing.assert_allclose(_avatar_turn(0, 0, 0), np.eye(3), atol=1e-12)  # at rest: the avatar's rest pose


def test_head_bone_is_the_engine_rotation_mirrored_through_x() -> None:
    """The avatar's frame is the engine head frame with x negated (S = diag(−1, 1, 1)): R_bone = S R S."""
    rng = np.random.default_rng(3)
    mirror = np.diag([-1.0, 1.0, 1.0])
    for _ in range(20):
        pose = random_state(rng).pose
        x, y, z, w = unity_head_rotation(pose)
        qw, qx, qy, qz = pose.quaternion
        np.testing.assert_allclose(rotation(x, y, z, w), mirror @ rotation(qx, qy, qz, qw) @ mirror, atol=1e-12)


def test_bad_casing_or_pose_is_rejected() -> None:
    with pytest.raises(ValueError, match="casing"):
        VmcBridge("127.0.0.1", 39539, "snake")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pose"):
        VmcBridge("127.0.0.1", 39539, "arkit", "hips")  # type: ignore[arg-type]
