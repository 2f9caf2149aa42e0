"""VMC bridge: datagrams decoded with python-osc and applied by a receiver that behaves like EVMC4U (bone
positions synchronised, clip names matched exactly); Unity axis conversion checked as rotations."""

from __future__ import annotations

import contextlib
import json
import math
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pythonosc.osc_bundle import OscBundle
from pythonosc.osc_bundle_builder import IMMEDIATELY, OscBundleBuilder
from pythonosc.osc_message_builder import OscMessageBuilder

from engine.names import ARKIT_BLENDSHAPES, arkit_to_ict, to_vrm_name
from engine.solve.pose import euler_to_rotation, rotation_to_quaternion
from engine.stream.vmc import (
    EXPRESSION_SETS,
    MAX_DATAGRAM_BYTES,
    VRM0_PRESETS,
    VRM1_PRESETS,
    VmcBridge,
    osc_message,
    pack_bundles,
    preset_weights,
    unity_head_rotation,
    unity_root_pose,
)
from engine.types import FaceState, HeadPose, TrackingState

REPO_ROOT = Path(__file__).resolve().parents[1]


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


def receive_frame(sock: socket.socket) -> list[tuple[str, tuple]]:
    """Every OSC message of one frame, as a receiver decodes them (datagram by datagram, up to /VMC/Ext/OK)."""
    messages: list[tuple[str, tuple]] = []
    while not messages or messages[-1][0] != "/VMC/Ext/OK":
        dgram = sock.recv(65536)
        assert OscBundle.dgram_is_bundle(dgram)
        for message in OscBundle(dgram):  # python-osc decodes what the bridge wrote by hand
            messages.append((message.address, tuple(message.params)))
    return messages


@pytest.fixture
def receiver() -> Iterator[socket.socket]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(5.0)
        yield sock


class Evmc4uLikeReceiver:
    """What EVMC4U's ExternalReceiver does with a frame, on a model given as its clip names and a humanoid
    with its Neck's world position: Bone/Pos sets the bone's *local* position and rotation (bone position
    synchronisation is on by default), Blend/Val stores a value for a clip the model has, matched by exact
    name as UniVRM's BlendShapeKey compares it, and Blend/Apply applies the stored values."""

    def __init__(self, clips: set[str], neck_world: np.ndarray) -> None:
        self.clips = clips
        self.neck_world = neck_world
        self.head_local = np.array([0.0, 0.11, 0.01])  # this model's own rest offset, overwritten on receipt
        self.head_rotation = np.array([0.0, 0.0, 0.0, 1.0])
        self.pending: dict[str, float] = {}
        self.applied: dict[str, float] = {}
        self.ok: tuple = ()

    def handle(self, address: str, args: tuple) -> None:
        if address == "/VMC/Ext/Bone/Pos" and args[0] == "Head":
            self.head_local = np.array(args[1:4])
            self.head_rotation = np.array(args[4:8])
        elif address == "/VMC/Ext/Blend/Val" and args[0] in self.clips:
            self.pending[args[0]] = args[1]
        elif address == "/VMC/Ext/Blend/Apply":
            self.applied.update(self.pending)
        elif address == "/VMC/Ext/OK":
            self.ok = args

    @property
    def head_world(self) -> np.ndarray:
        return self.neck_world + self.head_local  # the neck at rest: no rotation above it


PERFECT_SYNC_CLIPS = {to_vrm_name(name) for name in ARKIT_BLENDSHAPES}
VRM0_CLIPS = {"Neutral", "A", "I", "U", "E", "O", "Blink", "Blink_L", "Blink_R", "Joy", "Angry", "Sorrow", "Fun",
              "LookUp", "LookDown", "LookLeft", "LookRight"}  # fmt: skip


def state_with(arkit: dict[str, float], tracking: TrackingState = TrackingState.TRACKING) -> FaceState:
    return FaceState(HeadPose.identity(), arkit_to_ict(arkit), tracking, 0.9, 0, 0)


@pytest.mark.parametrize(("casing", "pose"), [("arkit", "head"), ("vrm", "head"), ("vrm", "root")])
def test_frame_is_decoded_by_python_osc(receiver: socket.socket, casing: str, pose: str) -> None:
    state = random_state(np.random.default_rng(0))
    with VmcBridge("127.0.0.1", receiver.getsockname()[1], casing, pose) as bridge:  # type: ignore[arg-type]
        assert bridge.send(state)
    received = receive_frame(receiver)
    addresses = [a for a, _ in received]
    arkit = state.arkit()
    n = len(arkit) + len(VRM0_PRESETS)
    pose_address = "/VMC/Ext/Bone/Pos" if pose == "head" else "/VMC/Ext/Root/Pos"
    assert addresses == ["/VMC/Ext/Blend/Val"] * n + ["/VMC/Ext/Blend/Apply", pose_address, "/VMC/Ext/T",
                                                       "/VMC/Ext/OK"]  # fmt: skip
    rename = to_vrm_name if casing == "vrm" else str
    values = dict(args for _, args in received[:n])
    assert values.keys() == {rename(k) for k in arkit} | set(VRM0_PRESETS)
    for name, value in arkit.items():
        assert values[rename(name)] == pytest.approx(value, abs=1e-6)  # OSC floats are float32
    transform = received[n + 1][1]
    assert len(transform) == 8
    if pose == "head":
        assert transform[0] == "Head"
        np.testing.assert_allclose(transform[1:4], (0.0, 0.1, 0.0), atol=1e-6)  # the configured rest offset
        np.testing.assert_allclose(transform[4:], unity_head_rotation(state.pose), atol=1e-6)
    else:
        assert transform[0] == "root"
        position, quaternion = unity_root_pose(state.pose)
        np.testing.assert_allclose(transform[1:4], position, atol=1e-6)
        np.testing.assert_allclose(transform[4:], quaternion, atol=1e-6)
    assert received[-1][1] == (1, 3, 0, 1)  # loaded, calibrated, normal mode, tracking


def test_every_datagram_fits_one_ethernet_frame(receiver: socket.socket) -> None:
    """All three expression sets (the largest frame): several bundles, each under 1400 bytes."""
    rng = np.random.default_rng(1)
    with VmcBridge("127.0.0.1", receiver.getsockname()[1], expressions=EXPRESSION_SETS) as bridge:  # type: ignore[arg-type]
        bundles = bridge.bundles(random_state(rng))
        assert sum(len(b) for b in bundles) > 2 * MAX_DATAGRAM_BYTES  # the frame needs splitting at all
        for _ in range(3):
            assert bridge.send(random_state(rng))
        sizes = []
        for _ in range(3 * len(bundles)):
            sizes.append(len(receiver.recv(65536)))
    assert max(sizes) <= MAX_DATAGRAM_BYTES
    assert len(bundles) == math.ceil(sum(len(b) for b in bundles) / MAX_DATAGRAM_BYTES)  # no needless splits


def test_pack_bundles_keeps_order_and_refuses_a_message_too_large() -> None:
    bundles = pack_bundles([osc_message("/VMC/Ext/Blend/Val", f"name{i}", float(i)) for i in range(100)], limit=300)
    decoded = [m.params[1] for b in bundles for m in OscBundle(b)]
    assert decoded == [float(i) for i in range(100)]
    assert all(len(b) <= 300 for b in bundles)
    with pytest.raises(ValueError, match="does not fit"):
        pack_bundles([osc_message("/VMC/Ext/Blend/Val", "name", 1.0)], limit=40)


@pytest.mark.parametrize(
    "args", [("Head", 0.0, 0.1, 0.0, 0.1, -0.2, 0.3, 0.9), ("EyeBlinkLeft", 0.37), (1, 3, 0, 1), (), ("ü",), (2.5,)]
)
def test_hand_written_osc_equals_python_osc_builder(args: tuple) -> None:
    """The fast encoder against python-osc's own builder, byte for byte."""
    builder = OscMessageBuilder("/VMC/Ext/Bone/Pos")
    for arg in args:
        builder.add_arg(arg)
    assert osc_message("/VMC/Ext/Bone/Pos", *args) == builder.build().dgram
    bundle = OscBundleBuilder(IMMEDIATELY)
    bundle.add_content(builder.build())
    assert pack_bundles([osc_message("/VMC/Ext/Bone/Pos", *args)])[0] == bundle.build().dgram


def test_evmc4u_like_receiver_keeps_the_head_on_the_neck_and_matches_vrm_names(receiver: socket.socket) -> None:
    neck = np.array([0.0, 1.35, 0.0])
    avatar = Evmc4uLikeReceiver(PERFECT_SYNC_CLIPS | VRM0_CLIPS, neck)
    state = state_with({"eyeBlinkLeft": 0.8, "jawOpen": 0.5, "mouthSmileLeft": 0.6, "mouthSmileRight": 0.6})
    with VmcBridge("127.0.0.1", receiver.getsockname()[1], expressions=("perfect_sync",)) as bridge:
        bridge.send(state)
    for address, args in receive_frame(receiver):
        avatar.handle(address, args)
    # The head sits a neck-to-head length above the neck, not inside it (Bone/Pos carried (0, 0, 0) before).
    assert avatar.head_world[1] - neck[1] == pytest.approx(0.1, abs=1e-6)
    assert avatar.applied["EyeBlinkLeft"] == pytest.approx(0.8, abs=1e-3)
    assert avatar.applied["JawOpen"] == pytest.approx(0.5, abs=1e-3)
    assert avatar.applied["MouthSmileLeft"] == pytest.approx(0.6, abs=1e-3)
    assert "Blink" not in avatar.applied  # only the set asked for

    # ARKit casing reaches none of a perfect-sync model's clips: why `vrm` is the default.
    with VmcBridge("127.0.0.1", receiver.getsockname()[1], casing="arkit", expressions=("perfect_sync",)) as bridge:
        bridge.send(state)
    camel = Evmc4uLikeReceiver(PERFECT_SYNC_CLIPS, neck)
    for address, args in receive_frame(receiver):
        camel.handle(address, args)
    assert camel.applied == {}


def test_a_model_with_only_vrm_presets_blinks_winks_talks_and_smiles(receiver: socket.socket) -> None:
    """Defaults (perfect sync + VRM 0.x presets) on a model that has only the presets."""
    port = receiver.getsockname()[1]

    def apply(arkit: dict[str, float]) -> dict[str, float]:
        avatar = Evmc4uLikeReceiver(VRM0_CLIPS, np.zeros(3))
        with VmcBridge("127.0.0.1", port) as bridge:
            bridge.send(state_with(arkit))
        for address, args in receive_frame(receiver):
            avatar.handle(address, args)
        assert set(avatar.applied) == set(VRM0_PRESETS)
        return avatar.applied

    closed = apply({"eyeBlinkLeft": 1.0, "eyeBlinkRight": 0.9})
    assert closed["Blink"] == pytest.approx(0.9, abs=1e-3) and closed["Blink_L"] == pytest.approx(0.1, abs=1e-3)
    assert closed["Blink_R"] == pytest.approx(0.0, abs=1e-6)
    wink = apply({"eyeBlinkRight": 1.0})
    assert wink["Blink"] == 0 and wink["Blink_L"] == 0 and wink["Blink_R"] == pytest.approx(1.0, abs=1e-3)
    rest = apply({})
    assert max(rest.values()) == 0.0
    aah = apply({"jawOpen": 0.8})
    assert aah["A"] > 0.7 and max(aah[v] for v in "IUEO") < 0.05
    ooh = apply({"jawOpen": 0.6, "mouthFunnel": 0.9})
    assert ooh["O"] > 0.5 and ooh["O"] > 3 * max(ooh["A"], ooh["E"], ooh["I"])
    uuh = apply({"jawOpen": 0.05, "mouthPucker": 0.9})
    assert uuh["U"] > 0.7 and uuh["O"] < 0.1
    grin = apply({"mouthSmileLeft": 0.9, "mouthSmileRight": 0.9, "eyeSquintLeft": 0.8, "eyeSquintRight": 0.8})
    assert grin["Joy"] > 0.6 and grin["Angry"] < 0.05 and grin["Sorrow"] < 0.05
    smile = apply({"mouthSmileLeft": 0.9, "mouthSmileRight": 0.9})
    assert smile["Fun"] > 0.8 and smile["Joy"] < 0.05
    cross = apply({"browDownLeft": 0.9, "browDownRight": 0.9})
    assert cross["Angry"] > 0.8 and cross["Joy"] == 0 and cross["Sorrow"] < 0.05
    sad = apply({"browInnerUp": 0.9, "mouthFrownLeft": 0.7, "mouthFrownRight": 0.7})
    assert sad["Sorrow"] > 0.8 and sad["Angry"] == 0


def test_vrm1_names_and_tracking_state(receiver: socket.socket) -> None:
    with VmcBridge("127.0.0.1", receiver.getsockname()[1], expressions=("vrm1",)) as bridge:
        bridge.send(state_with({"eyeBlinkLeft": 1.0, "eyeBlinkRight": 1.0, "jawOpen": 0.7}, TrackingState.LOST))
    received = receive_frame(receiver)
    values = {args[0]: args[1] for address, args in received if address == "/VMC/Ext/Blend/Val"}
    assert list(values) == list(VRM1_PRESETS)
    assert values["blink"] == pytest.approx(1.0) and values["aa"] > 0.6
    assert received[-1][1] == (1, 3, 0, 0)  # lost: tracking status 0


def test_preset_weights_stay_in_range_and_never_open_the_mouth_past_the_jaw() -> None:
    rng = np.random.default_rng(7)
    for _ in range(200):
        arkit = {name: float(rng.uniform(0, 1)) for name in ARKIT_BLENDSHAPES}
        presets = preset_weights(arkit)
        assert all(0.0 <= v <= 1.0 for v in presets.values())
        assert presets["Blink"] + presets["Blink_L"] == pytest.approx(arkit["eyeBlinkLeft"])
        assert presets["Blink"] + presets["Blink_R"] == pytest.approx(arkit["eyeBlinkRight"])
        assert presets["A"] + presets["E"] + presets["O"] <= arkit["jawOpen"] + 1e-9


def test_close_releases_the_socket() -> None:
    bridge = VmcBridge("127.0.0.1", 39539)
    sock = bridge._sock
    bridge.close()
    assert sock.fileno() == -1


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


def test_bad_casing_pose_expressions_or_position_are_rejected() -> None:
    with pytest.raises(ValueError, match="casing"):
        VmcBridge("127.0.0.1", 39539, "snake")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pose"):
        VmcBridge("127.0.0.1", 39539, "arkit", "hips")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="expressions"):
        VmcBridge("127.0.0.1", 39539, expressions=("vrm2",))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="expressions"):
        VmcBridge("127.0.0.1", 39539, expressions=())
    with pytest.raises(ValueError, match="head position"):
        VmcBridge("127.0.0.1", 39539, head_position=(0.0, float("nan"), 0.0))


def test_engine_run_sends_every_frame_and_says_so(receiver: socket.socket, tmp_path: Path) -> None:
    """`run` with VMC on: one VMC frame per processed frame reaches the receiver, and the summary counts them."""
    summary_path = tmp_path / "summary.json"
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "run_engine.py"), "run", "--source", "demo", "--frames", "30",
         "--no-render", "--set", "stream.enabled=false", "--set", "stream.vmc_enabled=true",
         "--set", f"stream.vmc_port={receiver.getsockname()[1]}", "--summary-json", str(summary_path)],
        capture_output=True, text=True, timeout=240, cwd=REPO_ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    frames = []
    receiver.settimeout(0.5)
    with contextlib.suppress(TimeoutError):
        while True:
            frames.append(receive_frame(receiver))
    summary = json.loads(summary_path.read_text())
    assert summary["outputs"]["vmc"] == {"sent": summary["frames"], "dropped": 0}
    assert len(frames) == summary["frames"] == 30
    assert {args[0] for address, args in frames[-1] if address == "/VMC/Ext/Blend/Val"} >= {"EyeBlinkLeft", "Blink"}
    assert "vmc 30 sent, 0 dropped" in result.stdout
