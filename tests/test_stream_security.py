"""CURVE and bind policy on real sockets, and the relay (ZeroMQ's own proxy) end to end."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from engine.config import StreamConfig
from engine.errors import UserError
from engine.stream.client import StreamClient
from engine.stream.publisher import Publisher
from engine.stream.relay import Relay
from engine.stream.security import ClientKeys, consecutive_free_loopback_ports, is_loopback, make_keys
from engine.types import FaceState, RenderedFrame


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An engine key pair with `alice` on its allow-list, and `mallory`, a valid pair that is not on it."""
    root = tmp_path_factory.mktemp("keys")
    files = make_keys(root / "engine", ["alice"])
    outsider = make_keys(root / "outsider", ["mallory"])
    return {**files, "mallory secret": outsider["mallory secret"]}


def curve_config(keys: dict[str, Path]) -> StreamConfig:
    return StreamConfig(
        params_port=0,
        frame_port=0,
        asset_port=0,
        curve_server_secret=keys["server secret"],
        curve_allowed_clients=keys["allow-list"],
    )


def test_make_keys_writes_a_usable_layout(keys: dict[str, Path]) -> None:
    assert (keys["allow-list"] / "alice.key").read_bytes() == keys["alice public"].read_bytes()
    assert not (keys["allow-list"] / "server.key").exists()
    assert keys["server secret"].stat().st_mode & 0o077 == 0  # secrets are private to the user
    with pytest.raises(UserError, match="no secret key"):
        ClientKeys.load(keys["server public"], keys["alice public"])


def test_only_allowed_keys_receive_under_curve(keys: dict[str, Path]) -> None:
    alice = ClientKeys.load(keys["server public"], keys["alice secret"])
    mallory = ClientKeys.load(keys["server public"], keys["mallory secret"])
    state = FaceState.neutral()
    with Publisher(curve_config(keys), "secure", {"id": "ada"}) as pub:
        address = pub.endpoints["params"]
        with (
            StreamClient(address, keys=alice) as allowed,
            StreamClient(address, keys=mallory) as outsider,
            StreamClient(address) as plain,
        ):
            deadline = time.monotonic() + 1.5
            while time.monotonic() < deadline:
                pub.publish_params(state)
                time.sleep(0.02)
            assert allowed.received["params"] > 20 and allowed.latest("identity") is not None
            assert sum(outsider.received.values()) == 0 and sum(plain.received.values()) == 0
            assert sum(outsider.dropped.values()) == 0 and sum(plain.dropped.values()) == 0


def test_curve_assets_fetch_for_an_allowed_client(keys: dict[str, Path], tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "identity.json").write_text("{}")
    alice = ClientKeys.load(keys["server public"], keys["alice secret"])
    with Publisher(curve_config(keys), "secure", {"id": "ada"}, bundle) as pub:
        with StreamClient(pub.endpoints["params"], asset_address=pub.endpoints["assets"], keys=alice) as client:
            time.sleep(0.3)
            pub.tick()
            files = client.fetch_assets(tmp_path / "dest", timeout_s=5.0)
    assert files["identity.json"].read_text() == "{}"


def test_non_loopback_bind_needs_curve_or_insecure(keys: dict[str, Path]) -> None:
    with pytest.raises(UserError, match="--insecure"):
        Publisher(StreamConfig(bind_address="0.0.0.0", params_port=0, frame_port=0, asset_port=0), "open")
    with pytest.raises(UserError, match="needs both"):
        Publisher(StreamConfig(params_port=0, curve_server_secret=keys["server secret"]), "half")
    with pytest.raises(UserError, match="client .key files"):
        Publisher(curve_config(keys).model_copy(update={"curve_allowed_clients": keys["server secret"]}), "bad")
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and is_loopback("127.3.4.5")
    assert not any(is_loopback(h) for h in ("0.0.0.0", "*", "192.168.1.4", "example.com", "::"))


def test_relay_fans_out_params_frames_and_assets(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "texture.png").write_bytes(b"\x89PNG fake texture")
    base = consecutive_free_loopback_ports()
    engine = StreamConfig(params_port=base, frame_port=base + 1, asset_port=base + 2)
    with (
        Publisher(engine, "upstream", {"id": "ada"}, bundle) as pub,
        Relay(f"tcp://127.0.0.1:{base}", StreamConfig(params_port=0, frame_port=0, asset_port=0)) as relay,
        StreamClient(relay.endpoints["params"], asset_address=relay.endpoints["assets"]) as a,
        StreamClient(relay.endpoints["params"], relay.endpoints["frame"]) as b,
    ):
        image = np.full((8, 8, 4), 77, np.uint8)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and not (
            a.latest("identity") and b.received["params"] > 5 and b.received["frame"]
        ):
            pub.publish_params(FaceState.neutral(frame_index=3))
            pub.publish_frame(RenderedFrame(image, FaceState.neutral(frame_index=3), 0))
            time.sleep(0.02)
        assert a.latest("params").header["source"] == "upstream" and b.received["params"] > 5
        assert b.latest("frame").header["frame_index"] == 3
        files = a.fetch_assets(tmp_path / "dest", timeout_s=5.0)
    assert files["texture.png"].read_bytes() == b"\x89PNG fake texture"


def test_secret_keys_are_private_from_the_start_and_old_ones_are_made_private(tmp_path) -> None:
    files = make_keys(tmp_path / "keys", ["alice"])
    for label in ("server secret", "alice secret"):
        assert files[label].stat().st_mode & 0o777 == 0o600
    assert files["alice public"].stat().st_mode & 0o777 == 0o644
    files["alice secret"].chmod(0o644)  # left readable by an older version or by hand
    make_keys(tmp_path / "keys", ["alice"])
    assert files["alice secret"].stat().st_mode & 0o777 == 0o600


def test_asset_service_serves_only_the_bundle_and_no_symlink(tmp_path) -> None:
    from engine.stream.assets import scan_bundle

    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "identity.json").write_text("{}")
    (bundle / "notes.txt").write_text("private")  # not a bundle file
    (bundle / "texture.png").symlink_to("/etc/passwd")  # a link out of the bundle
    served = scan_bundle(bundle)
    assert set(served) == {"identity.json"}


def _wait_for(condition, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()


def test_relay_says_when_it_lowers_security_or_is_refused(keys: dict[str, Path], caplog) -> None:
    """A relay reading a CURVE engine and republishing without CURVE warns at start; one without keys (or
    with a key the engine does not allow) is refused by the engine and says so instead of relaying nothing."""
    alice = ClientKeys.load(keys["server public"], keys["alice secret"])
    mallory = ClientKeys.load(keys["server public"], keys["mallory secret"])
    plain = StreamConfig(params_port=0, frame_port=0, asset_port=0)
    with Publisher(curve_config(keys), "secure", {"id": "ada"}) as pub:
        upstream = pub.endpoints["params"]
        caplog.clear()
        with Relay(upstream, plain, alice) as relay, StreamClient(relay.endpoints["params"]) as viewer:
            assert "republishes it without encryption" in caplog.text
            assert _wait_for(lambda: relay.upstream == "connected")
            assert _wait_for(lambda: (pub.publish_params(FaceState.neutral()), viewer.received["params"] > 0)[1])
        # libzmq reports a mechanism mismatch with or without its detail, depending on timing.
        for client_keys, reasons in (
            (None, ("security mechanisms differ", "handshake failed")),
            (mallory, ("authentication refused",)),
        ):
            caplog.clear()
            with Relay(upstream, plain, client_keys) as relay:
                assert _wait_for(lambda relay=relay: relay.upstream != "connecting"), relay.upstream
                assert relay.upstream.startswith(reasons), relay.upstream
                assert any(f"refused this relay: {reason}" in caplog.text for reason in reasons)
                if client_keys is None:  # nothing to lower without keys
                    assert "republishes it without encryption" not in caplog.text
