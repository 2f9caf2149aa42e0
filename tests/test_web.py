"""The avatar in a browser (#17): the shader conversion, the asset set, the per-frame message, and end to end — a
real engine on the demo source, a real `serve`, Debian's Chromium (headless, SwiftShader WebGL2, driven over its
DevTools protocol) — checked from the page itself and against the desktop renderer.

The browser tests need `chromium` (`make test` installs it as root; otherwise they skip, naming the command).
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.config import DetailConfig, RenderConfig, load_config
from engine.identity import DEFAULT_IDENTITY_DIR, DetailBases, load_bundle
from engine.names import ICT_EXPRESSIONS, arkit_to_ict
from engine.stream.schema import Message
from engine.stream.security import consecutive_free_loopback_ports, free_loopback_ports
from engine.types import FaceState, HeadPose, TrackingState
from engine.web import shaders as web_shaders
from engine.web.assets import WebAssets, cache_key, dequantize_tiles, is_served_name, quantize_tiles
from engine.web.browser import Chromium, find_chromium
from engine.web.frames import FramePreparer, ict_weights, parse_frame
from engine.web.png import encode_png
from engine.web.server import resolve_token

REPO_ROOT = Path(__file__).resolve().parents[1]
SIZE = 512  # the render config's default size: the page and AvatarRenderer draw the same pixels
needs_chromium = pytest.mark.skipif(
    find_chromium() is None, reason="no Chromium: apt-get install -y chromium (make test does it as root)"
)


def _weights(**named: float) -> np.ndarray:
    w = np.zeros(len(ICT_EXPRESSIONS))
    for name, value in named.items():
        w[ICT_EXPRESSIONS.index(name)] = value
    return w


def _yaw_pitch(yaw_deg: float, pitch_deg: float) -> np.ndarray:
    from engine.render.camera import euler_to_quaternion

    return euler_to_quaternion(np.array(yaw_deg), np.array(pitch_deg), np.array(0.0))


def _params(weights: np.ndarray, quaternion: np.ndarray, seq: int = 0) -> Message:
    """A validated-looking `params` message as the engine publishes it (what serve receives)."""
    state = FaceState(HeadPose(quaternion, np.array([0.0, 0.0, -60.0])), weights, TrackingState.TRACKING, 0.9, 0, seq)
    now = time.monotonic_ns()
    header = {
        "v": 1, "seq": seq, "t_capture_ns": now, "t_publish_ns": now, "source": "test",
        "pose": {"quaternion": [float(q) for q in quaternion], "translation": [0.0, 0.0, -60.0], "scale": 1.0},
        "blendshapes": state.arkit(), "tracking": {"state": "tracking", "confidence": 0.9},
        "identity": "default", "face": 0, "frame_index": seq,
    }  # fmt: skip
    return Message("params", header, None, now)


def _state(message: Message) -> FaceState:
    from engine.stream.client import params_to_face_state

    return params_to_face_state(message)


def _psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    d = (a.astype(np.float64) - b.astype(np.float64)) ** 2
    d = d[mask] if mask is not None else d
    return float(10 * np.log10(255.0**2 / max(d.mean(), 1e-12)))


def _foreground_psnr(web: np.ndarray, desk: np.ndarray) -> float:
    """PSNR of RGB over the pixels either image covers (a background of zeros would inflate the whole-image one)."""
    return _psnr(web[..., :3], desk[..., :3], (web[..., 3] > 0) | (desk[..., 3] > 0))


# ---- the shader conversion ------------------------------------------------------------------------------------


def test_every_web_shader_converts_and_keeps_the_desktop_text() -> None:
    from engine.render.context import shader_source

    defines = {"MASK_TEXELS": 8, "TEXTURE_WIDTH": 2048, "N_ACTIVE": 3, "M_SLOTS": 1, "GROUP": 0, "DETAIL": 1}
    for name in web_shaders.WEB_SHADERS:
        desktop = shader_source(name, defines)
        es = web_shaders.es_source(name, defines)
        assert es.startswith("#version 300 es\nprecision highp float;")
        assert "precision highp sampler2DArray;" in es.split("#define", 1)[0]
        # Only the version line differs: the maths is the desktop's, character for character.
        assert es.split("\n", len(web_shaders.ES_PRECISION) + 1)[-1] == desktop.split("\n", 1)[1]
        assert "#include" not in es and "#define N_ACTIVE 3" in es
    bundle = web_shaders.shader_bundle()
    assert set(bundle["shaders"]) == set(web_shaders.WEB_SHADERS) and bundle["header"] == web_shaders.ES_HEADER


@pytest.mark.parametrize(
    "line, reason",
    [
        ("double x = 1.0;", "double precision"),
        ("uniform sampler1D t;", "no such sampler"),
        ("gl_FragColor = vec4(1.0);", "pre-1.30"),
        ("noperspective out vec2 v;", "noperspective"),
        ("#extension GL_ARB_foo : require", "extensions"),
    ],
)
def test_constructs_es_lacks_are_refused_with_the_line(line: str, reason: str) -> None:
    source = f"#version 330 core\nvoid f() {{}}\n{line}\n"
    with pytest.raises(web_shaders.ShaderConversionError, match=f"x.glsl, line 3: .*{reason}"):
        web_shaders.to_es(source, "x.glsl")
    with pytest.raises(web_shaders.ShaderConversionError, match="expected '#version 330 core'"):
        web_shaders.to_es("#version 450\nvoid main() {}\n", "y.glsl")


# ---- the asset set --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def web_cache(tmp_path_factory) -> Path:
    """One cache folder for the module: the asset set is built once here and found cached by `serve`."""
    return tmp_path_factory.mktemp("scapecast-cache")


@pytest.fixture(scope="module")
def default_identity(face_model):
    return load_bundle(DEFAULT_IDENTITY_DIR, face_model)


@pytest.fixture(scope="module")
def asset_set(face_model, web_cache) -> WebAssets:
    return WebAssets.load_or_build(DEFAULT_IDENTITY_DIR, face_model, web_cache / "web")


def test_the_asset_set_is_the_desktop_mesh_quantized_and_named_by_content(asset_set, face_model,
                                                                           default_identity) -> None:  # fmt: skip
    import hashlib

    from engine.render.mesh import AvatarMesh

    manifest = asset_set.manifest
    for name, file in asset_set.files.items():
        assert is_served_name(name) and name.split(".")[-2] == hashlib.sha256(file.path.read_bytes()).hexdigest()[:16]
    mesh = AvatarMesh.build(face_model, default_identity.identity_weights)
    blob = asset_set.files[manifest["files"]["mesh"]].path.read_bytes()
    arrays = {n: np.frombuffer(blob, np.dtype(a["dtype"]).newbyteorder("<"), int(np.prod(a["shape"])), a["offset"])
              .reshape(a["shape"]) for n, a in manifest["arrays"].items()}  # fmt: skip
    used = np.unique(mesh.triangles)
    assert manifest["vertices"] == len(used) < mesh.n_vertices  # ICT's undrawn transparent eye layers are dropped
    np.testing.assert_array_equal(arrays["rest"], mesh.rest[used])
    np.testing.assert_array_equal(used[arrays["indices"]], mesh.triangles)  # the same triangles, renumbered
    assert manifest["group_counts"] == mesh.group_counts.tolist()
    # The morph data reproduces every delta within half a quantization step.
    counts, index, delta, scale = (arrays[k] for k in ("morph_count", "morph_index", "morph_delta", "morph_scale"))
    starts = np.concatenate([[0], np.cumsum(counts)])
    for j in (ICT_EXPRESSIONS.index("jawOpen"), ICT_EXPRESSIONS.index("mouthSmile_L"), 0):
        dense = np.zeros((len(used), 6))
        rows = slice(starts[j], starts[j + 1])
        dense[index[rows]] = delta[rows] * np.repeat(scale[j], 3)
        error = np.abs(dense - mesh.basis[j][used]).reshape(-1, 2, 3).max(axis=(0, 2))
        assert np.all(error <= scale[j] * 0.5 + 1e-7), (j, error, scale[j])
    eyes = np.asarray(manifest["eye_ranges"])
    assert np.all(used[eyes[:, 0]] == mesh.eye_ranges[:, 0]) and np.all(
        used[eyes[:, 1] - 1] == mesh.eye_ranges[:, 1] - 1
    )
    # 8-bit tiles of the bases: within half a step of each tile's range.
    tiles = manifest["bases"]
    assert len(tiles["tiles"]) == 20 and tiles["bits"] == 8
    codes = np.stack([np.asarray(Image.open(asset_set.files[n].path))[::-1] for n in tiles["tiles"]])
    restored = dequantize_tiles(codes, np.asarray(tiles["lo"]), np.asarray(tiles["hi"]), 8)
    step = (np.asarray(tiles["hi"]) - np.asarray(tiles["lo"])) / 255
    assert np.all(np.abs(restored - default_identity.bases.maps).max(axis=(1, 2)) <= step * 0.5 + 1e-5)


def test_the_asset_set_is_cached_by_content_and_rebuilt_when_the_bundle_changes(
    asset_set, face_model, tmp_path
) -> None:
    again = WebAssets.load_or_build(DEFAULT_IDENTITY_DIR, face_model, asset_set.directory.parent)
    assert again.directory == asset_set.directory and again.manifest_name == asset_set.manifest_name
    copy = tmp_path / "bundle"
    copy.mkdir()
    for name in ("identity.json", "texture.png", "bases.npz"):
        (copy / name).symlink_to(DEFAULT_IDENTITY_DIR / name)
    assert cache_key(copy, face_model) == cache_key(DEFAULT_IDENTITY_DIR, face_model)  # content, not location
    meta = json.loads((DEFAULT_IDENTITY_DIR / "identity.json").read_text())
    meta["name"] = "renamed"
    (copy / "identity.json").unlink()
    (copy / "identity.json").write_text(json.dumps(meta))
    assert cache_key(copy, face_model) != cache_key(DEFAULT_IDENTITY_DIR, face_model)
    assert cache_key(DEFAULT_IDENTITY_DIR, face_model, bits=16) != cache_key(DEFAULT_IDENTITY_DIR, face_model)


@pytest.mark.parametrize("name", ["../identity.json", "..", "a/b.png", "index.json.gz", ".hidden.png", "x.py",
                                  "MANIFEST.JSON", "mesh.bin\0.png", "%2e%2e.png", ""])  # fmt: skip
def test_only_plain_asset_names_are_ever_looked_up(name: str) -> None:
    assert not is_served_name(name)


def test_desktop_uniform_values_are_what_the_page_is_given(asset_set, face_model, default_identity) -> None:
    """Every constant uniform of the desktop's face program equals what the manifest and hello config carry."""
    from engine.render.renderer import AvatarRenderer
    from engine.web.page_config import page_config

    config = RenderConfig(width=64, height=64)
    hello = page_config(config, DetailConfig())
    with AvatarRenderer(face_model, default_identity, config) as renderer:
        renderer.render(_state(_params(_weights(mouthSmile_L=0.6, mouthSmile_R=0.6), _yaw_pitch(0, 0))))
        programs = [program for program, _ in renderer._variants.values()]  # one per draw group drawn
        expected = {**asset_set.manifest["uniforms"], **hello["lighting"], **hello["uniforms"]}
        # The displacement debug view's range: no shaded variant uses it, so compare with what it would be given.
        assert expected.pop("u_debug_range_mm") == pytest.approx(renderer._debug_range_mm)
        for name, value in expected.items():
            users = [program for program in programs if name in program]
            assert users, f"no desktop program uses {name}"
            with renderer.context:
                got = np.frombuffer(users[0][name].read(), np.float32)
            np.testing.assert_allclose(np.asarray(got, np.float32).ravel(), np.asarray(value, np.float32).ravel(),
                                       rtol=1e-6, atol=1e-7, err_msg=name)  # fmt: skip
    camera = hello["camera"]
    assert (camera["fov_y_deg"], camera["distance_cm"], camera["near_cm"], camera["far_cm"]) == (
        renderer.camera.fov_y_deg,
        renderer.camera.distance_cm,
        renderer.camera.near_cm,
        renderer.camera.far_cm,
    )


# ---- the per-frame message ------------------------------------------------------------------------------------


def test_the_frame_message_carries_the_desktops_own_per_frame_numbers() -> None:
    from engine.render.camera import Camera
    from engine.render.mesh import mask_channels
    from engine.render.renderer import key_weight_uniforms
    from engine.solve.eyes import eye_rotations

    rng = np.random.default_rng(3)
    for _ in range(20):  # the tabulated ARKit → ICT mapping is engine.names' own
        blendshapes = {k: float(v) for k, v in zip(FaceState.neutral().arkit(), rng.uniform(0, 1, 51), strict=True)}
        np.testing.assert_array_equal(ict_weights(blendshapes), arkit_to_ict(blendshapes).astype(np.float32))
    render = RenderConfig()
    weights = _weights(mouthSmile_L=0.7, mouthSmile_R=0.7, jawOpen=0.3, eyeLookOut_L=0.5, eyeLookIn_R=0.5)
    message = _params(weights, _yaw_pitch(20, -5), seq=7)
    meta, arrays = parse_frame(FramePreparer(render).prepare(message), 8)
    state = _state(message)
    w32 = np.asarray(state.weights, np.float32)
    np.testing.assert_array_equal(arrays["weights"], w32)
    camera = Camera(render.width, render.height, render.fov_y_deg, render.camera_distance_cm)
    np.testing.assert_array_equal(arrays["model_view"], np.ascontiguousarray(camera.model_view(state.pose).T).ravel())
    uniforms = key_weight_uniforms(w32, mask_channels(), 8, render.detail_key_threshold)
    assert meta["active"] == uniforms.active.tolist() and meta["n_active"] >= 2
    np.testing.assert_array_equal(arrays["coef"], uniforms.coefficients[: meta["n_active"] * 32])
    assert meta["eyes"] and np.array_equal(
        arrays["eyes"], eye_rotations(w32.astype(np.float64)).astype(np.float32).ravel()
    )
    assert meta["seq"] == 7 and meta["tracking"]["state"] == "tracking" and 0 <= meta["age_ms"] < 1000
    meta, arrays = parse_frame(FramePreparer(render).prepare(_params(np.zeros(53), _yaw_pitch(0, 0))), 8)
    assert not meta["eyes"] and meta["n_active"] == 0 and np.array_equal(arrays["eyes"], np.tile(np.eye(3).ravel(), 2))


def test_tokens_follow_the_engines_bind_rules() -> None:
    from engine.errors import UserError

    assert resolve_token("127.0.0.1", None, False) is None
    assert resolve_token("::1", "abcdefgh12", False) == "abcdefgh12"
    generated = resolve_token("0.0.0.0", None, False)
    assert generated and len(generated) >= 20 and generated != resolve_token("0.0.0.0", None, False)
    assert resolve_token("192.168.1.5", None, True) is None  # --insecure, knowingly
    with pytest.raises(UserError, match="at least 8"):
        resolve_token("0.0.0.0", "short", False)


def test_png_tiles_decode_exactly_with_an_independent_decoder() -> None:
    import cv2

    rng = np.random.default_rng(1)
    images = (rng.integers(0, 256, (23, 31, 3), dtype=np.uint8), rng.integers(0, 65536, (17, 9, 3), dtype=np.uint16),
              np.tile(np.arange(40, dtype=np.uint16)[None, :, None] * 1000, (5, 1, 3)))  # fmt: skip
    for image in images:
        decoded = cv2.imdecode(np.frombuffer(encode_png(image), np.uint8), cv2.IMREAD_UNCHANGED)[..., ::-1]
        np.testing.assert_array_equal(decoded, image)


def test_quantized_tiles_round_trip(default_identity) -> None:
    maps = default_identity.bases.maps[:3]
    for bits in (8, 16):
        codes, lo, hi = quantize_tiles(maps, bits)
        restored = dequantize_tiles(codes, lo, hi, bits)
        assert np.abs(restored - maps).max() <= ((hi - lo) / ((1 << bits) - 1)).max() / 2 + 1e-5


# ---- end to end: engine → serve → Chromium --------------------------------------------------------------------


class _Engine:
    """`run_engine.py run --source demo --no-render` on fixed loopback ports; `restart()` keeps the ports."""

    def __init__(self, log: Path) -> None:
        self.ports = free_loopback_ports(3)
        self.log = log  # stderr goes to a file: an unread pipe would fill and stall the engine
        self.process: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        params, frame, asset = self.ports
        args = [sys.executable, str(REPO_ROOT / "run_engine.py"), "run", "--source", "demo", "--no-window",
                "--no-render", "--quiet", "--duration", "300", "--set", f"stream.params_port={params}",
                "--set", f"stream.frame_port={frame}", "--set", f"stream.asset_port={asset}"]  # fmt: skip
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(args, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=log)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def connect_args(self) -> list[str]:
        return ["--connect", f"tcp://127.0.0.1:{self.ports[0]}", "--assets", f"tcp://127.0.0.1:{self.ports[2]}"]


def _serve_command() -> list[str]:
    return [sys.executable, str(REPO_ROOT / "run_engine.py"), "serve"]


class _Serve:
    """A `serve` process; `url` is the page address it printed."""

    def __init__(self, engine: _Engine, cache: Path, *extra: str) -> None:
        args = [*_serve_command(), *engine.connect_args, "--port", "0", "--cache-dir", str(cache), *extra]
        self.log = cache / f"serve-{time.monotonic_ns()}.log"
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(args, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=log, text=True)
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(self.process.stdout.readline()), daemon=True)
        reader.start()
        reader.join(30)
        match = re.search(r"(http://\S+)", line[0] if line else "")
        if match is None:
            self.stop()
            raise AssertionError(f"serve printed no URL: {line!r} {self.log.read_text()[-2000:]}")
        self.url = match.group(1)

    def stop(self) -> str:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        out = self.process.stdout.read() if self.process.stdout else ""
        if self.process.stdout is not None:
            self.process.stdout.close()
        return out


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    process = _Engine(tmp_path_factory.mktemp("engine") / "engine.log")
    yield process
    process.stop()


@pytest.fixture(scope="module")
def serve(engine, web_cache, asset_set):  # asset_set: built into the cache serve uses, so serve finds it there
    server = _Serve(engine, web_cache)
    yield server
    out = server.stop()
    assert "served" in out  # SIGTERM stops it like Ctrl-C, with its summary


@pytest.fixture(scope="module")
def browser():
    if find_chromium() is None:
        pytest.skip("no Chromium: apt-get install -y chromium (make test does it as root)")
    with Chromium(window=(SIZE, SIZE)) as chromium:
        yield chromium


@pytest.fixture(scope="module")
def page(browser, serve):
    tab = browser.open(serve.url, SIZE, SIZE)
    tab.wait_for("window.scapecast && scapecast.stats.ready && scapecast.stats.rendered >= 2", timeout_s=90)
    return tab


@pytest.fixture(scope="module")
def desktop(face_model, default_identity):
    from engine.render.renderer import AvatarRenderer

    with AvatarRenderer(face_model, default_identity, load_config().render) as renderer:
        yield renderer


def _pixels(b64: str, size: int = SIZE) -> np.ndarray:
    return np.frombuffer(base64.b64decode(b64), np.uint8).reshape(size, size, 4)


def _page_render(page, message: Message, size: int = SIZE) -> np.ndarray:
    frame = base64.b64encode(FramePreparer(load_config().render).prepare(message)).decode()
    return _pixels(page.evaluate(f"scapecast.renderFrame('{frame}', {size}, {size})", timeout_s=120), size)


@needs_chromium
def test_params_arrive_and_the_page_shows_them(page) -> None:
    first = page.evaluate("scapecast.stats")
    time.sleep(2.0)
    stats = page.evaluate("scapecast.stats")
    assert stats["errors"] == [] and stats["connected"] and stats["engine"] == "live", stats
    assert stats["identity"] == "default" and "SwiftShader" in stats["renderer"]
    assert stats["received"] - first["received"] >= 40  # ~30 Hz from the engine for 2 s
    assert stats["rendered"] > first["rendered"]
    assert stats["tracking"] in ("tracking", "coasting", "lost") and stats["seq"] > first["seq"]
    assert stats["rttMs"] is not None and 0 < stats["latencyMs"] < 5000  # capture → display, measured by the page
    overlay = page.evaluate("document.getElementById('overlay').textContent")
    assert "engine   live" in overlay and "Hz" in overlay and "latency" in overlay


@needs_chromium
def test_the_page_compiles_exactly_the_converted_desktop_shaders(page) -> None:
    for name, defines in [
        ("avatar.frag.glsl", {"MASK_TEXELS": 8, "GROUP": 0, "DETAIL": 1, "N_ACTIVE": 5, "M_SLOTS": 2}),
        ("avatar.vert.glsl", {"TEXTURE_WIDTH": 2048, "DETAIL": 0}),
        ("uv_detail.frag.glsl", {}),
    ]:
        assert page.evaluate(f"scapecast.compose({json.dumps(name)}, {json.dumps(defines)})") == web_shaders.es_source(
            name, defines
        )


@needs_chromium
def test_the_page_decodes_png_as_stored(page) -> None:
    import io

    rng = np.random.default_rng(2)
    smooth = (np.add.outer(np.arange(37), np.arange(41))[..., None] * np.array([3, 5, 7])).astype(np.uint8)
    pil = io.BytesIO()
    Image.fromarray(smooth).save(pil, "PNG", optimize=True)  # Pillow's own filter choices
    for data, expected in (
        (pil.getvalue(), smooth),
        (encode_png(rng.integers(0, 65536, (11, 13, 3), dtype=np.uint16)), None),
    ):
        image = page.evaluate(f"scapecast.decodePng('{base64.b64encode(data).decode()}')")
        raw = base64.b64decode(image["data"])
        if expected is None:
            import cv2

            expected = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)[..., ::-1]
        got = np.frombuffer(raw, np.uint8 if image["depth"] == 8 else np.uint16).reshape(expected.shape)
        np.testing.assert_array_equal(got, expected)


@needs_chromium
def test_the_detail_blend_in_the_browser_is_the_desktops(page, face_model, default_identity, asset_set) -> None:
    """uv_detail.{vert,frag}.glsl converted and run by the page on its own textures vs AvatarRenderer.render_uv on the
    same (dequantized) bases: the key-weight and blend maths of the two agree per texel."""
    from engine.render.renderer import AvatarRenderer

    tiles = asset_set.manifest["bases"]
    codes = np.stack([np.asarray(Image.open(asset_set.files[n].path))[::-1] for n in tiles["tiles"]])
    bases = dequantize_tiles(codes, np.asarray(tiles["lo"]), np.asarray(tiles["hi"]), tiles["bits"])
    identity = replace(default_identity, bases=DetailBases(bases.astype(np.float16).astype(np.float32), "web"))
    n = tiles["resolution"]  # texel centres: uv·N lands half-way between integers, so both fetch the same texel
    with AvatarRenderer(face_model, identity, RenderConfig(width=64, height=64)) as renderer:
        smile = _weights(mouthSmile_L=1.0, mouthSmile_R=1.0, cheekSquint_L=0.5, cheekSquint_R=0.5)
        brows = _weights(browInnerUp_L=0.8, browInnerUp_R=0.8, browOuterUp_L=0.9, jawOpen=0.6, noseSneer_L=0.4)
        for weights in (smile, brows):
            message = _params(weights, _yaw_pitch(0, 0))
            frame = base64.b64encode(FramePreparer(RenderConfig()).prepare(message)).decode()
            web = np.frombuffer(base64.b64decode(page.evaluate(f"scapecast.renderUV('{frame}', {n})")), np.float32)
            web = web.reshape(n, n, 4)
            desk = renderer.render_uv(np.asarray(_state(message).weights, np.float32), n)
            both = (web[..., 3] > 0) & (desk[..., 3] > 0)
            assert both.sum() > 0.3 * n * n and ((web[..., 3] > 0) != (desk[..., 3] > 0)).mean() < 0.001
            assert np.abs(web[..., 0] - desk[..., 0])[both].max() < 1e-3  # F, mm
            assert np.abs(web[..., 1:3] - desk[..., 1:3])[both].max() < 2e-2  # gradients, mm per unit UV (≈60 max)
            assert np.abs(desk[..., 0][both]).max() > 0.02  # the blend is not trivially zero


@needs_chromium
def test_given_params_render_like_the_desktop_with_detail_on(page, desktop) -> None:
    weights = _weights(mouthSmile_L=0.8, mouthSmile_R=0.8, jawOpen=0.35, browInnerUp_L=0.5, browInnerUp_R=0.5,
                       eyeLookOut_L=0.5, eyeLookIn_R=0.5, eyeBlink_R=0.3)  # fmt: skip
    message = _params(weights, _yaw_pitch(15, -5))
    assert parse_frame(FramePreparer(load_config().render).prepare(message), 8)[0]["n_active"] >= 2  # detail on
    web = _page_render(page, message)
    desk = desktop.render(_state(message)).image
    assert (web[..., 3] > 0).mean() > 0.3
    assert ((web[..., 3] > 0) != (desk[..., 3] > 0)).mean() < 0.005  # the same silhouette
    psnr = _foreground_psnr(web, desk)
    assert psnr >= 30.0, psnr
    # And it is not just the silhouette: a different expression is clearly further away.
    other = desktop.render(_state(_params(_weights(jawOpen=0.9), _yaw_pitch(15, -5)))).image
    assert _foreground_psnr(web, other) < psnr - 6


@needs_chromium
def test_the_mouth_moves_when_jaw_open_changes(page, desktop) -> None:
    rest, open_ = (_params(_weights(jawOpen=value, mouthSmile_L=0.2), _yaw_pitch(0, 0)) for value in (0.0, 0.8))
    web = [_page_render(page, m).astype(int) for m in (rest, open_)]
    desk = [desktop.render(_state(m)).image.astype(int) for m in (rest, open_)]
    moved_web = np.abs(web[1] - web[0])[..., :3].max(axis=2) > 40
    moved_desk = np.abs(desk[1] - desk[0])[..., :3].max(axis=2) > 40
    assert moved_web.sum() > 2000  # the mouth opened in the browser
    rows = np.nonzero(moved_web)[0]
    assert rows.mean() > 0.55 * SIZE  # centred on the mouth and jaw (the eyes are at ~0.4 of the height)
    assert (rows < 0.3 * SIZE).mean() < 0.01  # nothing moved up the forehead
    iou = (moved_web & moved_desk).sum() / (moved_web | moved_desk).sum()
    assert iou > 0.8, iou  # and where the desktop renderer says it moves


@needs_chromium
def test_the_live_avatar_moves_and_matches_the_desktop(page, desktop) -> None:
    captures = []
    for _ in range(2):
        capture = page.evaluate(f"scapecast.capture({SIZE}, {SIZE})", timeout_s=120)
        assert capture is not None
        captures.append(capture)
        time.sleep(1.5)
    a, b = (_pixels(c["pixels"]) for c in captures)
    assert captures[1]["meta"]["seq"] > captures[0]["meta"]["seq"]
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 0.2  # the tracked head and face moved between them
    for capture, web in zip(captures, (a, b), strict=True):
        meta = capture["meta"]
        pose = HeadPose(np.asarray(meta["pose"]["quaternion"]), np.asarray(meta["pose"]["translation"]),
                        meta["pose"]["scale"])  # fmt: skip
        state = FaceState(pose, np.asarray(capture["weights"], np.float32), TrackingState.TRACKING, 1.0, 0, 0)
        assert _foreground_psnr(web, desktop.render(state).image) >= 30.0


def _http(url: str, headers: dict[str, str] | None = None) -> int:
    import aiohttp

    async def get() -> int:
        async with aiohttp.ClientSession() as session, session.get(url, headers=headers or {}) as response:
            await response.read()
            return response.status

    return asyncio.run(get())


def _raw_get(port: int, path: str) -> tuple[int, bytes]:
    """GET `path` exactly as written (HTTP client libraries resolve `..` before sending)."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def _websocket(url: str, headers: dict[str, str] | None = None, wait_s: float = 5.0) -> int | str:
    """The handshake's refusal status, or "data" once a binary frame arrived."""
    import aiohttp

    async def connect() -> int | str:
        async with aiohttp.ClientSession() as session:
            try:
                async with session.ws_connect(url, headers=headers or {}) as ws:
                    deadline = time.monotonic() + wait_s
                    while time.monotonic() < deadline:
                        msg = await ws.receive(timeout=deadline - time.monotonic())
                        if msg.type == aiohttp.WSMsgType.BINARY:
                            return "data"
                    return "nothing"
            except aiohttp.WSServerHandshakeError as exc:
                return exc.status

    return asyncio.run(connect())


@needs_chromium
def test_a_token_guards_the_stream_and_the_assets(engine, web_cache, browser, asset_set) -> None:
    token = "s3cret-token-123"
    server = _Serve(engine, web_cache, "--token", token)
    try:
        assert server.url.endswith(f"?token={token}")
        base = server.url.split("?")[0]
        ws = base.replace("http://", "ws://") + "ws"
        manifest = asset_set.manifest_name
        assert _websocket(ws) == 403 and _websocket(ws + "?token=wrong-token-000") == 403
        assert _websocket(f"{ws}?token={token}") == "data"
        assert _websocket(f"{ws}?token={token}", {"Origin": "http://evil.example"}) == 403  # another site's page
        assert _http(f"{base}assets/{manifest}") == 403 and _http(f"{base}assets/{manifest}?token=nope-nope") == 403
        deadline = time.monotonic() + 30  # the identity is fetched and its asset set found once the engine is seen
        while _http(f"{base}assets/{manifest}?token={token}") != 200:
            assert time.monotonic() < deadline, "the asset set never became available"
            time.sleep(0.2)
        public = {(REPO_ROOT / "engine" / "web" / "static" / n).read_bytes() for n in ("index.html", "app.js")}
        port = int(base.rsplit(":", 1)[1].strip("/"))
        for path in ("/assets/..%2F..%2Fidentity.json", "/assets/%2e%2e%2fmesh.bin", "/assets/index.json",
                     "/assets/../../../../etc/passwd", "/assets/..%2f..%2f..%2f..%2fetc%2fpasswd",
                     "/assets/%2e%2e/%2e%2e/remote/default/identity.json", "/assets/../app.js",
                     "/assets/" + asset_set.manifest_name + "/../../index.json"):  # fmt: skip
            status, body = _raw_get(port, f"{path}?token={token}")
            # Refused, or normalized by the server onto one of its public pages: never a file of its own choosing.
            assert status in (400, 403, 404) or (status == 200 and body in public), (path, status, body[:80])
        assert _http(base) == 200  # the page itself is public; it can do nothing without the token
        wrong = browser.open(f"{base}?token=wrong-token-000", 256, 256)
        time.sleep(4.0)
        stats = wrong.evaluate("scapecast.stats")
        assert stats["received"] == 0 and not stats["connected"] and not stats["ready"] and stats["reconnects"] >= 1
        wrong.close()
    finally:
        server.stop()


def test_without_a_token_only_this_servers_own_host_names_are_answered(engine, web_cache, serve) -> None:
    base = serve.url.split("?")[0]
    ws = base.replace("http://", "ws://") + "ws"
    assert _websocket(ws, {"Host": "attacker.example"}) == 403  # a DNS name rebound to 127.0.0.1
    assert _websocket(ws, {"Origin": base.rstrip("/")}) == "data"  # the page's own origin


def _slow_page_verdict(base: dict, slow: dict) -> list[str]:
    """What went wrong in one pair of runs (8 pages, then 8 pages and a slow one); empty when nothing did."""
    wrong = []
    for name, run in (("base", base), ("slow", slow)):
        if run["received"] < run["published"] - 2:  # the intake takes every frame the engine sends
            wrong.append(f"{name}: serve took {run['received']} of the {run['published']} frames sent")
        if run["pages_receiving"] != 8 or run["page_missed_fraction"] > 0.02:
            wrong.append(f"{name}: {run['pages_receiving']} pages receiving, missed {run['page_missed_fraction']}")
    latency, limit = slow["page_latency_ms_p50"]["p50"], base["page_latency_ms_p50"]["p50"]
    if latency > max(2 * limit, limit + 5):
        wrong.append(f"pages' latency p50 {latency} ms beside the slow page, {limit} ms without")
    (page,) = slow["slow_pages"]
    if not page["handshake"].startswith("HTTP/1.1 101") or page["dropped"] <= 30:
        wrong.append(f"the slow page got a backlog, not the newest: {page}")
    if page["max_buffered_bytes"] > 64 * 1024:
        wrong.append(f"serve held {page['max_buffered_bytes']} bytes for the slow page")  # must stay bounded
    if page["sent"] < 2:
        wrong.append(f"the slow page was sent {page['sent']} frames")  # whenever it drained, the newest
    return wrong


def test_a_slow_page_slows_neither_serve_nor_the_other_pages() -> None:
    """Every check holds in one pair of runs, of up to three. On this shared 2-core machine a burst of other work
    can deschedule serve's process for longer than a frame (30 Hz) in either run, with or without the slow page
    (seen at load 4-9: up to 23 frames of 114 skipped by the intake, and pages missing 4 %, in the run *without*
    it); a slow page that slowed serve would fail every try."""
    from engine.web.bench import bench_web

    tries = []
    for _ in range(3):
        base = bench_web(clients=8, hz=30.0, duration_s=3.0, slow_clients=0)
        slow = bench_web(clients=8, hz=30.0, duration_s=3.0, slow_clients=1)
        tries.append(_slow_page_verdict(base, slow))
        if not tries[-1]:
            return
    pytest.fail(f"every try failed: {tries}")


@needs_chromium
def test_the_page_reconnects_by_itself_when_the_engine_restarts(engine, page) -> None:
    before = page.evaluate("scapecast.stats")
    engine.restart()
    page.wait_for(f"scapecast.stats.sources > {before['sources']} && scapecast.stats.received > "
                  f"{before['received'] + 30}", timeout_s=60)  # fmt: skip
    stats = page.evaluate("scapecast.stats")
    assert stats["source"] != before["source"] and stats["ready"] and stats["errors"] == []
    rendered = stats["rendered"]
    page.wait_for(f"scapecast.stats.rendered > {rendered}", timeout_s=20)


def test_serve_without_an_engine_waits_and_says_so(tmp_path) -> None:
    """No engine yet: serve starts anyway (ZeroMQ connects when one comes) and pages see `waiting`."""
    from engine.web.server import ServeSettings, WebServerThread

    port = free_loopback_ports(1)[0]
    settings = ServeSettings(connect=f"tcp://127.0.0.1:{port}", port=0, cache_dir=tmp_path)
    with WebServerThread(settings, RenderConfig(), DetailConfig()) as server:
        assert server.call(server.server.stats)["engine"] == "waiting"
        assert _http(server.url) == 200


def test_run_web_starts_serve_beside_the_engine_and_refuses_what_it_cannot_serve(tmp_path) -> None:
    from engine.errors import UserError
    from engine.web.server import start_web_server

    for overrides, message in ((["stream.params_port=0"], "fixed stream.params_port"),
                               (["stream.enabled=false"], "stream.enabled=true")):  # fmt: skip
        with pytest.raises(UserError, match=message):
            start_web_server(load_config(None, overrides), port=0)
    params, _, assets = free_loopback_ports(3)
    config = load_config(None, [f"stream.params_port={params}", f"stream.asset_port={assets}"])
    server = start_web_server(config, port=0)
    try:
        assert server.server.params_address == f"tcp://127.0.0.1:{params}"
        assert server.server.asset_address == f"tcp://127.0.0.1:{assets}"
        assert server.url.startswith("http://127.0.0.1:") and "token" not in server.url and _http(server.url) == 200
    finally:
        server.stop()


@needs_chromium
def test_a_new_identity_reaches_an_open_page(browser, face_model, tmp_path, web_cache, asset_set) -> None:
    """The engine behind serve changes avatar (a bundle without detail bases, a small texture): serve fetches and
    builds it, the open page loads it by itself and draws it like the desktop does."""
    from engine.identity import Identity, save_bundle
    from engine.render.renderer import AvatarRenderer
    from engine.stream.publisher import Publisher
    from engine.web.server import ServeSettings, WebServerThread

    rng = np.random.default_rng(5)
    texture = rng.integers(90, 200, (64, 64, 3), dtype=np.uint8)
    ada = Identity(name="ada", model_id=face_model.model_id, model_hash=face_model.model_hash,
                   identity_weights=rng.normal(0, 0.6, face_model.n_identity).astype(np.float32),
                   neutral_offset=np.zeros(53, np.float32), texture=texture)  # fmt: skip
    bundle = save_bundle(ada, tmp_path / "ada")
    params, frame, assets = free_loopback_ports(3)
    stream = load_config().stream.model_copy(update={"params_port": params, "frame_port": frame,
                                                     "asset_port": assets})  # fmt: skip
    message = _params(_weights(jawOpen=0.4, mouthSmile_L=0.5), _yaw_pitch(-10, 0))
    state = _state(message)
    settings = ServeSettings(connect=f"tcp://127.0.0.1:{params}", assets=f"tcp://127.0.0.1:{assets}", port=0,
                             cache_dir=web_cache)  # fmt: skip  # the default identity's set is built there

    def publish(publisher: Publisher, stop: threading.Event) -> None:
        while not stop.is_set():
            publisher.publish_params(replace(state, t_capture_ns=time.monotonic_ns()))
            stop.wait(1 / 30)

    with WebServerThread(settings, load_config().render, DetailConfig()) as server:
        tab = None
        for name, directory in (("default", DEFAULT_IDENTITY_DIR), ("ada", bundle)):
            stop = threading.Event()
            with Publisher(stream, f"engine-{name}", {"id": name, "model_id": face_model.model_id}, directory) as pub:
                thread = threading.Thread(target=publish, args=(pub, stop), daemon=True)
                thread.start()
                try:
                    tab = tab or browser.open(server.url, 256, 256)
                    tab.wait_for(
                        f"window.scapecast && scapecast.stats.ready && scapecast.stats.identity === '{name}'", 90
                    )
                    capture = tab.evaluate(f"scapecast.capture({SIZE}, {SIZE})", timeout_s=120)
                finally:
                    stop.set()
                    thread.join()
        tab.close()
    with AvatarRenderer(face_model, ada, load_config().render) as renderer:
        assert _foreground_psnr(_pixels(capture["pixels"]), renderer.render(state).image) >= 30.0


def test_serve_works_behind_a_relay(face_model, web_cache, asset_set) -> None:
    """engine → relay → serve: params and the identity bundle both come through the relay's own ports."""
    from engine.config import StreamConfig
    from engine.stream.publisher import Publisher
    from engine.stream.relay import Relay
    from engine.web.server import ServeSettings, WebServerThread

    base = consecutive_free_loopback_ports(3)
    stream = StreamConfig(params_port=base, frame_port=base + 1, asset_port=base + 2)
    state = _state(_params(_weights(jawOpen=0.3), _yaw_pitch(0, 0)))
    stop = threading.Event()
    identity = {"id": "default", "model_id": face_model.model_id}
    with (
        Publisher(stream, "engine", identity, DEFAULT_IDENTITY_DIR) as publisher,
        Relay(f"tcp://127.0.0.1:{base}", StreamConfig(params_port=0, frame_port=0, asset_port=0)) as relay,
    ):

        def engine() -> None:
            while not stop.wait(1 / 30):
                publisher.publish_params(state)

        thread = threading.Thread(target=engine, daemon=True)
        thread.start()
        settings = ServeSettings(connect=relay.endpoints["params"], assets=relay.endpoints["assets"], port=0,
                                 cache_dir=web_cache)  # fmt: skip
        try:
            with WebServerThread(settings, RenderConfig(), DetailConfig()) as server:
                ws = server.url.replace("http://", "ws://") + "ws"
                assert _websocket(ws) == "data"
                deadline = time.monotonic() + 60
                while server.call(lambda: server.server.stats()["manifest"]) is None:
                    assert time.monotonic() < deadline, "the bundle never came through the relay"
                    time.sleep(0.2)
                assert _http(f"{server.url}assets/{asset_set.manifest_name}") == 200
        finally:
            stop.set()
            thread.join()
