"""`run_engine.py view` end to end: a live Publisher on loopback, the CLI fetching the bundle and rendering it."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.cli import main
from engine.config import RenderConfig, StreamConfig
from engine.identity import Identity, save_bundle
from engine.names import ICT_EXPRESSIONS
from engine.stream.publisher import Publisher
from engine.types import FaceState, HeadPose, TrackingState

SIZE = 96


def test_view_fetches_the_identity_and_renders_what_the_engine_sends(face_model, tmp_path: Path) -> None:
    from engine.render.renderer import AvatarRenderer

    rng = np.random.default_rng(0)
    identity = Identity(
        name="ada",
        model_id=face_model.model_id,
        identity_weights=rng.normal(0, 0.5, face_model.n_identity).astype(np.float32),
        neutral_offset=np.zeros(len(ICT_EXPRESSIONS), np.float32),
        texture=rng.integers(80, 200, (64, 64, 3), dtype=np.uint8),
        model_hash=face_model.model_hash,
    )
    bundle = save_bundle(identity, tmp_path / "bundle")
    weights = np.zeros(len(ICT_EXPRESSIONS))
    weights[ICT_EXPRESSIONS.index("jawOpen")] = 0.7
    weights[ICT_EXPRESSIONS.index("mouthSmile_L")] = 0.5  # unmerged channels: the ARKit round trip is exact
    yaw = np.array([np.cos(0.15), 0.0, np.sin(0.15), 0.0])
    state = FaceState(HeadPose(yaw, np.array([0.0, 0.0, -60.0])), weights, TrackingState.TRACKING, 1.0, 0, 5)

    with Publisher(StreamConfig(params_port=0, frame_port=0, asset_port=0), "engine", {"id": "ada"}, bundle) as pub:
        stop = threading.Event()

        def engine_loop() -> None:
            while not stop.is_set():
                pub.publish_params(state)
                time.sleep(1 / 30)

        thread = threading.Thread(target=engine_loop)
        thread.start()
        try:
            out = tmp_path / "out"
            args = ["--set", f"render.width={SIZE}", "--set", f"render.height={SIZE}", "view"]
            args += ["--connect", pub.endpoints["params"], "--assets", pub.endpoints["assets"], "--frames", "2"]
            args += ["--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--timeout", "10"]
            assert main(args) == 0
        finally:
            stop.set()
            thread.join()

    fetched = tmp_path / "cache" / "ada"
    for name in ("identity.json", "texture.png"):
        assert (fetched / name).read_bytes() == (bundle / name).read_bytes()
    frames = sorted(out.glob("*.png"))
    assert len(frames) == 2
    viewed = np.asarray(Image.open(frames[-1]).convert("RGBA"))
    with AvatarRenderer(face_model, identity, RenderConfig(width=SIZE, height=SIZE)) as renderer:
        local = renderer.render(state).image
    assert viewed.shape == local.shape
    assert (viewed[..., 3] > 0).mean() > 0.05  # the avatar is there
    assert np.abs(viewed.astype(int) - local.astype(int)).max() <= 2


def test_view_without_an_engine_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["view", "--connect", "tcp://127.0.0.1:9", "--timeout", "0.3", "--out", str(tmp_path / "o")])
    assert code == 2
    assert "nothing from tcp://127.0.0.1:9 within 0.3 s" in capsys.readouterr().err
