"""Wire format v1 on real loopback sockets: round trips, seq, late joiners, slow subscribers, malformed input, assets.

Every test binds ephemeral ports (port 0), so tests never collide with each other or with a running engine.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq

from engine.config import StreamConfig
from engine.names import ARKIT_BLENDSHAPES, ICT_EXPRESSIONS, UNSUPPORTED_ARKIT
from engine.stream.assets import AssetError
from engine.stream.client import StreamClient, decode_frame, params_to_face_state
from engine.stream.publisher import Publisher
from engine.stream.schema import VERSION, SchemaError, encode, validate
from engine.types import FaceState, HeadPose, RenderedFrame, TrackingState

CONNECT_S = 0.3  # PUB/SUB subscriptions need a moment to reach the publisher


def random_state(rng: np.random.Generator, frame_index: int = 0, face: int = 0) -> FaceState:
    q = rng.normal(size=4)
    pose = HeadPose(q / np.linalg.norm(q), rng.normal(0, 5, 3) + [0, 0, -60], float(rng.uniform(0.8, 1.2)))
    tracking = TrackingState(rng.choice([s.value for s in TrackingState]))
    weights = rng.uniform(0, 1, len(ICT_EXPRESSIONS))
    return FaceState(pose, weights, tracking, float(rng.uniform()), time.monotonic_ns(), frame_index, face)


def stream_config(**kw) -> StreamConfig:
    return StreamConfig(params_port=0, frame_port=0, asset_port=0, **kw)


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    """A stand-in identity bundle directory: the asset service treats any files generically."""
    rng = np.random.default_rng(1)
    d = tmp_path / "bundle"
    d.mkdir()
    (d / "identity.json").write_text('{"schema_version": 1, "name": "ada"}')
    (d / "texture.png").write_bytes(rng.integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    np.savez(d / "bases.npz", maps=rng.normal(size=(20, 32, 32, 3)).astype(np.float16))
    return d


@pytest.fixture
def publisher(bundle: Path):
    with Publisher(stream_config(), "engine-test", {"id": "ada", "model_id": "ict-light"}, bundle) as pub:
        yield pub


def wait_until(predicate, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def test_params_round_trip_every_field(publisher: Publisher) -> None:
    rng = np.random.default_rng(0)
    with StreamClient(publisher.endpoints["params"]) as client:
        time.sleep(CONNECT_S)
        state = random_state(rng, frame_index=41, face=1)
        publisher.publish_params(state)
        message = client.wait("params", 2.0, face=1)
    assert message is not None
    h = message.header
    assert h["v"] == VERSION and h["source"] == "engine-test" and h["identity"] == "ada"
    assert h["face"] == 1 and h["frame_index"] == 41 and h["t_capture_ns"] == state.t_capture_ns
    assert state.t_capture_ns <= h["t_publish_ns"] <= message.t_receive_ns
    assert h["pose"]["quaternion"] == list(state.pose.quaternion)
    assert h["pose"]["translation"] == list(state.pose.translation)
    assert h["pose"]["scale"] == state.pose.scale
    assert h["tracking"] == {"state": state.tracking.value, "confidence": state.confidence}
    assert h["blendshapes"] == state.arkit()
    assert set(h["blendshapes"]) == set(ARKIT_BLENDSHAPES) - set(UNSUPPORTED_ARKIT)
    back = params_to_face_state(message)
    assert back.arkit() == pytest.approx(state.arkit(), abs=1e-12)
    unmerged = [i for i, n in enumerate(ICT_EXPRESSIONS) if not n.startswith(("browInnerUp", "cheekPuff"))]
    np.testing.assert_array_equal(back.weights[unmerged], state.weights[unmerged])
    assert back.tracking == state.tracking and back.face_index == 1 and back.frame_index == 41
    np.testing.assert_array_equal(back.pose.quaternion, state.pose.quaternion)


def test_frame_status_stats_round_trip(publisher: Publisher) -> None:
    rng = np.random.default_rng(2)
    yy, xx = np.mgrid[0:96, 0:128]
    rgba = np.stack([xx * 2, yy * 2, (xx + yy), np.full_like(xx, 200)], -1).astype(np.uint8)
    frame = RenderedFrame(rgba, random_state(rng, frame_index=7), time.monotonic_ns())
    with StreamClient(publisher.endpoints["params"], publisher.endpoints["frame"]) as client:
        time.sleep(CONNECT_S)
        publisher.config.frame_codec = "rgba"
        publisher.publish_frame(frame)
        raw = client.wait("frame", 2.0)
        publisher.config.frame_codec = "jpeg"
        publisher.publish_frame(frame)
        jpeg = client.wait("frame", 2.0, newer_than=raw)
        publisher.publish_status("running", {"source": "demo"})
        publisher.publish_stats({"fps": np.float32(29.5), "stages_ms": {"solve": 0.4}, "hist": np.arange(3)})
        status, stats = client.wait("status", 2.0), client.wait("stats", 2.0)
    assert raw is not None and jpeg is not None and status is not None and stats is not None
    assert raw.header["codec"] == "rgba" and (raw.header["width"], raw.header["height"]) == (128, 96)
    np.testing.assert_array_equal(decode_frame(raw), rgba)
    assert jpeg.header["codec"] == "jpeg" and jpeg.header["frame_index"] == 7 and jpeg.seq == raw.seq + 1
    decoded = decode_frame(jpeg)
    assert decoded.shape == (96, 128, 3)
    assert np.abs(decoded.astype(int) - rgba[..., :3]).mean() < 3.0  # smooth gradient: JPEG error is small
    assert len(jpeg.payload) < rgba.nbytes / 4
    assert status.header["state"] == "running" and status.header["detail"] == {"source": "demo"}
    assert stats.header["stats"] == {"fps": 29.5, "stages_ms": {"solve": 0.4}, "hist": [0, 1, 2]}
    assert publisher.counts["frame"] == 2 and publisher.counts["status"] == 1


def test_seq_strictly_increases_per_topic(publisher: Publisher) -> None:
    """A raw SUB socket (not the latest-value client) sees every message: seq goes 0, 1, 2, … per topic."""
    rng = np.random.default_rng(3)
    with zmq.Context() as ctx, ctx.socket(zmq.SUB) as sub:
        sub.rcvhwm = 0
        sub.subscribe(b"")
        sub.connect(publisher.endpoints["params"])
        time.sleep(CONNECT_S)
        for i in range(300):
            publisher.publish_params(random_state(rng, i))
            if i % 100 == 0:
                publisher.publish_status("running", {"i": i})
            time.sleep(0.0005)
        seqs: dict[str, list[int]] = {}
        while sub.poll(500):
            message = validate(sub.recv_multipart(), time.monotonic_ns())
            seqs.setdefault(message.topic, []).append(message.seq)
    assert len(seqs["params"]) == 300 and len(seqs["status"]) == 3
    for topic, values in seqs.items():
        assert np.all(np.diff(values) == 1), topic
    assert seqs["params"][0] == 0


def test_late_joiner_gets_identity_within_1_5_s(publisher: Publisher, bundle: Path) -> None:
    rng = np.random.default_rng(4)
    stop = threading.Event()

    def engine_loop() -> None:
        while not stop.is_set():
            publisher.publish_params(random_state(rng))
            time.sleep(1 / 30)

    thread = threading.Thread(target=engine_loop)
    thread.start()
    try:
        time.sleep(1.2)  # the engine has been running (and sent its identity) before the client exists
        t0 = time.monotonic()
        with StreamClient(publisher.endpoints["params"]) as client:
            identity = client.wait("identity", 3.0)
            elapsed = time.monotonic() - t0
    finally:
        stop.set()
        thread.join()
    assert identity is not None and elapsed <= 1.5, elapsed
    h = identity.header
    assert h["id"] == "ada" and h["model_id"] == "ict-light"
    assert h["assets"] == {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in bundle.iterdir()}
    assert h["unsupported"] == ["tongueOut"] and len(h["channels"]) == 51 and "tongueOut" not in h["channels"]


def _paced_rate(publisher: Publisher, frame: RenderedFrame, state: FaceState, hz: float, seconds: float) -> float:
    """Publish a frame + params at `hz` for `seconds`; the achieved rate (a blocking send would pull it down)."""
    period = 1.0 / hz
    t0 = time.monotonic()
    n = 0
    while (now := time.monotonic()) - t0 < seconds:
        publisher.publish_frame(frame)
        publisher.publish_params(state)
        n += 1
        time.sleep(max(0.0, t0 + n * period - time.monotonic()))
    return n / (now - t0)


def test_stalled_subscriber_does_not_slow_the_publisher(publisher: Publisher) -> None:
    rng = np.random.default_rng(5)
    state = random_state(rng)
    frame = RenderedFrame(rng.integers(0, 256, (256, 256, 4), dtype=np.uint8), state, 0)
    publisher.config.frame_codec = "rgba"  # 256 KB per frame: the stalled peer's buffers fill within a second
    baseline = _paced_rate(publisher, frame, state, hz=150, seconds=0.5)
    with zmq.Context() as ctx, ctx.socket(zmq.SUB) as stalled:
        stalled.rcvhwm = 1
        stalled.subscribe(b"")
        stalled.connect(publisher.endpoints["frame"])
        with StreamClient(publisher.endpoints["params"], publisher.endpoints["frame"]) as reader:
            time.sleep(CONNECT_S)
            sent_before = publisher.counts["frame"]
            rate = _paced_rate(publisher, frame, state, hz=150, seconds=1.5)
            sent = publisher.counts["frame"] - sent_before
            assert reader.wait("frame", 1.0) is not None and reader.received["params"] > 0.5 * sent
        received = 0
        while stalled.poll(200):
            stalled.recv_multipart()
            received += 1
    assert rate >= 0.9 * baseline, (rate, baseline)
    assert received < 0.5 * sent, (received, sent)  # the stalled peer lost messages instead of holding us up


def _fuzz_messages(rng: np.random.Generator, n: int) -> tuple[list[list[bytes]], int]:
    """`n` multipart messages whose first frame passes the SUB filter; most malformed. Returns (messages, n_valid)."""
    topics = [b"params", b"identity", b"status", b"stats"]
    valid_params = {
        "v": 1, "seq": 0, "t_capture_ns": 1, "t_publish_ns": 2, "source": "x",
        "pose": {"quaternion": [1.0, 0.0, 0.0, 0.0], "translation": [0.0, 0.0, -60.0], "scale": 1.0},
        "blendshapes": {"jawOpen": 0.5}, "tracking": {"state": "tracking", "confidence": 0.9},
        "identity": "a", "face": 0, "frame_index": 3,
    }  # fmt: skip
    bad_values = [None, "x", -1, 1.5, float("nan"), float("inf"), True, [], {}, [1.0] * 5, b"\x00", 2**64 - 1]
    not_int = ["x", 1.5, None, True, [], b"\x00"]
    not_str = [5, None, b"\x00", [], 1.5]
    not_map = ["x", [], None, 1.0, {}]
    wrong_values = {
        "v": [*not_int, 2], "seq": [*not_int, -1], "t_capture_ns": not_int, "t_publish_ns": not_int,
        "frame_index": not_int, "face": [*not_int, -1], "source": not_str, "identity": not_str,
        "pose": not_map, "tracking": not_map, "blendshapes": ["x", [], None, 1.0],
    }  # fmt: skip

    def random_value(depth: int = 0):
        kind = rng.integers(0, 7 if depth < 3 else 4)
        if kind == 0:
            return int(rng.integers(-(2**40), 2**40))
        if kind == 1:
            return float(rng.normal())
        if kind == 2:
            return "".join(chr(c) for c in rng.integers(32, 0x2FF, rng.integers(0, 8)))
        if kind == 3:
            return bad_values[rng.integers(len(bad_values))]
        if kind == 4:
            return [random_value(depth + 1) for _ in range(rng.integers(0, 4))]
        keys = ["v", "seq", "pose", "blendshapes", "tracking", "source", "id", "state", "stats", "width", "codec"]
        return {str(rng.choice(keys)): random_value(depth + 1) for _ in range(rng.integers(0, 6))}

    messages, n_valid = [], 0
    for seq in range(n):
        kind = rng.integers(0, 7)
        topic = topics[rng.integers(len(topics))]
        if kind == 0:  # valid, interleaved with the garbage
            messages.append([b"params", msgpack.packb({**valid_params, "seq": seq})])
            n_valid += 1
        elif kind == 1:  # random bytes as header, random frame count
            parts = [topic] + [rng.bytes(int(rng.integers(0, 64))) for _ in range(rng.integers(1, 5))]
            messages.append(parts)
        elif kind == 2:  # msgpack of random structures
            messages.append([topic, msgpack.packb(random_value())])
        elif kind == 3:  # one field of a valid message deleted or replaced with a value of the wrong kind
            header = {**valid_params, "seq": seq}
            key = str(rng.choice(list(header)))
            if rng.random() < 0.3:
                del header[key]
            else:
                wrong = wrong_values[key]
                header[key] = wrong[rng.integers(len(wrong))]
            messages.append([b"params", msgpack.packb(header, use_bin_type=True)])
        elif kind == 4:  # nested damage: unknown blendshape, bad tracking state, wrong vector length, bad scale
            header = {**valid_params, "seq": seq}
            damage = rng.integers(0, 4)
            if damage == 0:
                header["blendshapes"] = {"notAChannel": 0.1}
            elif damage == 1:
                header["tracking"] = {"state": "dancing", "confidence": 1.0}
            elif damage == 2:
                header["pose"] = {**header["pose"], "translation": [0.0, 1.0]}
            else:
                header["pose"] = {**header["pose"], "scale": 0.0}
            messages.append([b"params", msgpack.packb(header)])
        elif kind == 5:  # a topic that only shares the prefix, a payload where none belongs, a wrong version
            choice = rng.integers(0, 3)
            good = msgpack.packb({**valid_params, "seq": seq})
            if choice == 0:
                messages.append([b"params\xff", good])
            elif choice == 1:
                messages.append([b"params", good, b"payload"])
            else:
                messages.append([b"params", msgpack.packb({**valid_params, "v": 2})])
        else:  # truncated msgpack of a valid header
            good = msgpack.packb({**valid_params, "seq": seq})
            messages.append([topic, good[: int(rng.integers(1, len(good)))]])
    return messages, n_valid


def test_ten_thousand_malformed_messages_are_counted_not_fatal() -> None:
    rng = np.random.default_rng(6)
    messages, n_valid = _fuzz_messages(rng, 10_000)
    with zmq.Context() as ctx, ctx.socket(zmq.PUB) as pub:
        pub.sndhwm = 0  # unbounded for this test: every message must reach the client to be accounted for
        pub.bind("tcp://127.0.0.1:*")
        with StreamClient(pub.getsockopt_string(zmq.LAST_ENDPOINT)) as client:
            time.sleep(CONNECT_S)
            for parts in messages:
                pub.send_multipart(parts)
            counted = lambda: sum(client.received.values()) + sum(client.dropped.values())  # noqa: E731
            assert wait_until(lambda: counted() >= len(messages), 20.0), (counted(), len(messages))
            assert client.running
            assert sum(client.received.values()) == n_valid
            assert sum(client.dropped.values()) == len(messages) - n_valid
            assert {"frames", "header", "topic", "v", "payload", "params.pose", "params.blendshapes"} <= set(
                client.dropped
            )
            last = client.latest("params")
            pub.send_multipart(encode("params", {**last.header, "seq": 10_000}))
            assert client.wait("params", 2.0, newer_than=last).seq == 10_000


def test_schema_rejects_bad_frame_payloads() -> None:
    header = {"v": 1, "seq": 0, "t_capture_ns": 0, "t_publish_ns": 0, "source": "s", "width": 4, "height": 2,
              "codec": "rgba", "frame_index": 0}  # fmt: skip
    validate(encode("frame", header, bytes(32)), 0)
    for parts, reason in [
        (encode("frame", header, bytes(31)), "payload"),
        (encode("frame", header), "payload"),
        (encode("frame", {**header, "codec": "jpeg"}, b"not a jpeg"), "payload"),
        (encode("frame", {**header, "width": 10**6, "height": 10**6}, b""), "payload"),
        (encode("frame", {**header, "codec": "png"}, bytes(32)), "frame.codec"),
        (encode("frame", {**header, "width": True}, bytes(32)), "frame.width"),
    ]:
        with pytest.raises(SchemaError) as info:
            validate(parts, 0)
        assert info.value.reason == reason


def test_client_reconnects_to_a_restarted_engine(publisher: Publisher) -> None:
    rng = np.random.default_rng(7)
    address = publisher.endpoints["params"]
    port = int(address.rsplit(":", 1)[1])
    with StreamClient(address) as client:
        time.sleep(CONNECT_S)
        for i in range(5):
            publisher.publish_params(random_state(rng, i))
            time.sleep(0.01)  # a burst would overflow the publisher's small HWM (by design)
        assert wait_until(lambda: client.received["params"] == 5, 2.0)
        first = client.latest("params")
        publisher.close()
        with Publisher(StreamConfig(params_port=port, frame_port=0, asset_port=0), "engine-test") as restarted:
            message = None
            deadline = time.monotonic() + 5.0
            while message is None and time.monotonic() < deadline:
                restarted.publish_params(random_state(rng, 100))
                message = client.wait("params", 0.1, newer_than=first)
        assert message is not None and message.header["frame_index"] == 100
        assert client.gaps["params"] == 0  # the restart reset seq; that is not a loss


def test_fetch_assets_checks_hashes_and_caches(publisher: Publisher, bundle: Path, tmp_path: Path) -> None:
    dest = tmp_path / "fetched"
    with StreamClient(publisher.endpoints["params"], asset_address=publisher.endpoints["assets"]) as client:
        time.sleep(CONNECT_S)
        publisher.tick()  # no params are flowing: the identity comes from the periodic tick alone
        files = client.fetch_assets(dest, timeout_s=5.0)
        assert sorted(files) == sorted(p.name for p in bundle.iterdir())
        for name, path in files.items():
            assert path.read_bytes() == (bundle / name).read_bytes()
        (dest / "texture.png").write_bytes(b"damaged")  # a damaged cached copy is fetched again
        client.fetch_assets(dest, timeout_s=5.0)
        assert (dest / "texture.png").read_bytes() == (bundle / "texture.png").read_bytes()
        (bundle / "bases.npz").write_bytes(b"changed after the identity was announced")
        with pytest.raises(AssetError, match="sha256|changed underneath"):
            client.fetch_assets(tmp_path / "other", timeout_s=5.0)
        assert not list((tmp_path / "other").glob(".*partial"))


def test_asset_service_answers_bad_requests_with_errors(publisher: Publisher) -> None:
    with zmq.Context() as ctx, ctx.socket(zmq.DEALER) as dealer:
        dealer.connect(publisher.endpoints["assets"])
        replies = []
        for request in ([b"", b"bogus"], [b"", b"get", b"../../etc/passwd"], [b"get"], [b"", b"list", b"x"]):
            dealer.send_multipart(request)
            assert dealer.poll(2000)
            replies.append(dealer.recv_multipart())
        dealer.send_multipart([b"", b"list"])
        assert dealer.poll(2000)
        listing = dealer.recv_multipart()
    assert all(r[0] == b"" and r[1] == b"error" for r in replies)
    assert b"no asset named" in replies[1][2]
    files = msgpack.unpackb(listing[2])["files"]
    assert set(files) == {"identity.json", "texture.png", "bases.npz"}


def test_bind_conflict_is_a_user_error(publisher: Publisher) -> None:
    from engine.errors import UserError

    port = int(publisher.endpoints["params"].rsplit(":", 1)[1])
    with pytest.raises(UserError, match="cannot bind .*another engine"):
        Publisher(StreamConfig(params_port=port, frame_port=0, asset_port=0), "second")


def test_bench_stream_measures_something() -> None:
    """The benchmark runs end to end (its numbers are reported by `bench`, never asserted here)."""
    from engine.stream.bench import bench_stream

    result = bench_stream(params_seconds=0.3, params_hz=200, frames=10, size=64)
    for key in ("params_latency_ms", "params_latency_same_process_ms"):  # subscriber process, then thread
        assert result[key]["samples"] > 10, result[key]
        assert result[key]["transport"]["p50"] > 0
    assert result["jpeg_64"]["received"] == 10 and result["jpeg_64"]["mean_bytes"] > 0


def test_identity_carries_its_origin_and_the_engine_id_stays_the_source(bundle: Path) -> None:
    from engine.app import identity_info
    from engine.identity import Identity

    avatar = Identity("ada", "ict-light", np.zeros(100, np.float32), np.zeros(53, np.float32), source="photo ada.jpg")
    with Publisher(stream_config(), "engine-7", identity_info(avatar), bundle) as pub:
        with StreamClient(pub.endpoints["params"]) as client:
            identity = None
            deadline = time.monotonic() + 5
            while identity is None and time.monotonic() < deadline:
                pub.tick()
                identity = client.wait("identity", 0.2)
    assert identity is not None
    assert identity.header["source"] == "engine-7" and identity.header["origin"] == "photo ada.jpg"
    with pytest.raises(ValueError, match="envelope"):
        Publisher._send(pub, pub._params, "identity", 0, {"source": "elsewhere"})


def _params_header(seq: int = 0, **changes) -> dict:
    header = {"v": 1, "seq": seq, "t_capture_ns": 0, "t_publish_ns": 0, "source": "s", "identity": "ada",
              "face": 0, "frame_index": seq, "tracking": {"state": "tracking", "confidence": 0.9},
              "pose": {"quaternion": [1.0, 0.0, 0.0, 0.0], "translation": [0.0, 0.0, -60.0], "scale": 1.0},
              "blendshapes": {"jawOpen": 0.5}}  # fmt: skip
    for key, value in changes.items():
        if key in ("quaternion", "translation", "scale"):
            header["pose"] = {**header["pose"], key: value}
        elif key == "confidence":
            header["tracking"] = {**header["tracking"], key: value}
        elif key == "weight":
            header["blendshapes"] = {"jawOpen": value}
        else:
            header[key] = value
    return header


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"quaternion": [0.0, 0.0, 0.0, 0.0]}, "params.pose"),
        ({"quaternion": [1e300, 0.0, 0.0, 0.0]}, "params.pose"),
        ({"scale": 1e-300}, "params.pose"),
        ({"translation": [0.0, 0.0, 1e12]}, "params.pose"),
        ({"weight": 50}, "params.blendshapes"),
        ({"weight": -3}, "params.blendshapes"),
        ({"weight": 1e300}, "params.blendshapes"),
        ({"confidence": 7}, "params.tracking"),
        ({"face": 10**9}, "params.face"),
        ({"seq": 2**64 - 1}, "seq"),
    ],
)
def test_schema_refuses_values_out_of_range(changes: dict, reason: str) -> None:
    validate(encode("params", _params_header()), 0)  # the unchanged message is valid
    validate(encode("params", _params_header(weight=1.004, quaternion=[0.999, 0.0, 0.0, 0.0])), 0)  # rounding
    with pytest.raises(SchemaError) as info:
        validate(encode("params", _params_header(**changes)), 0)
    assert info.value.reason == reason


def test_a_stale_or_jumping_seq_never_replaces_the_newest_params() -> None:
    with zmq.Context() as ctx, ctx.socket(zmq.PUB) as pub:
        pub.bind("tcp://127.0.0.1:*")
        with StreamClient(pub.getsockopt_string(zmq.LAST_ENDPOINT)) as client:
            time.sleep(CONNECT_S)
            for seq in (500, 501, 502):
                pub.send_multipart(encode("params", _params_header(seq)))
            assert wait_until(lambda: client.received["params"] == 3, 5.0)
            pub.send_multipart(encode("params", _params_header(300)))  # older: dropped
            pub.send_multipart(encode("params", _params_header(502)))  # a repeat: dropped
            pub.send_multipart(encode("params", _params_header(502 + 10**7)))  # a broken sender's jump
            assert wait_until(lambda: sum(client.dropped.values()) == 3, 5.0), client.dropped
            assert client.latest("params").seq == 502 and client.gaps["params"] == 0
            assert client.dropped["params.seq_stale"] == 2 and client.dropped["params.seq_jump"] == 1
            pub.send_multipart(encode("params", _params_header(0)))  # a restarted engine counts from 0
            assert wait_until(lambda: client.received["params"] == 4, 5.0)
            assert client.latest("params").seq == 0


def test_a_huge_subscription_does_not_stall_params(publisher: Publisher) -> None:
    """A 32 MB subscription message (any local client can send one) is refused at the socket: params keep
    flowing to everyone else (it stalled them for seconds and kept gigabytes before the size limit)."""
    from engine.stream.publisher import MAX_INCOMING_BYTES

    assert publisher._params.getsockopt(zmq.MAXMSGSIZE) == MAX_INCOMING_BYTES
    rng = np.random.default_rng(8)
    stop = threading.Event()

    def engine_loop() -> None:
        while not stop.is_set():
            publisher.publish_params(random_state(rng))
            time.sleep(0.01)

    thread = threading.Thread(target=engine_loop)
    thread.start()
    arrivals: list[float] = []
    # The abuser runs in its own process: libzmq tears a 32 MB subscription down recursively and crashes the
    # process that holds it, which must never be the engine (the size limit keeps it out of the engine).
    abuse = (
        "import os, time, zmq\n"
        "s = zmq.Context().socket(zmq.SUB)\n"
        f"s.connect({publisher.endpoints['params']!r})\n"
        "s.setsockopt(zmq.SUBSCRIBE, b'p' * (32 * 1024 * 1024))\n"
        "print('got' if s.poll(1500) else 'nothing', flush=True)\n"
        "os._exit(0)\n"
    )
    try:
        with StreamClient(publisher.endpoints["params"], topics=("params",)) as client:
            assert client.wait("params", 3.0) is not None
            rss_before = _rss_mib()
            abuser = subprocess.Popen([sys.executable, "-c", abuse], stdout=subprocess.PIPE, text=True)
            last = client.latest("params")
            deadline = time.monotonic() + 2.5
            while time.monotonic() < deadline:
                message = client.wait("params", 1.0, newer_than=last)
                if message is not None:
                    arrivals.append(time.monotonic())
                    last = message
            out, _ = abuser.communicate(timeout=30)
            rss_growth = _rss_mib() - rss_before
    finally:
        stop.set()
        thread.join()
    assert out.strip() == "nothing"  # refused: the abuser's connection was dropped, it receives nothing
    assert len(arrivals) > 80
    assert max(np.diff(arrivals)) < 1.0  # no stall (it was 6.4 s)
    assert rss_growth < 50, rss_growth  # nothing of it is held (it was 3.5 GiB)


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0
