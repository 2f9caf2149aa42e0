"""One validated configuration schema for every stage (pydantic), loaded from YAML with CLI overrides.

Order of precedence: `configs/default.yaml` < `--config FILE` < `--set section.key=value`.
Unknown keys are errors (typos must not be silently ignored); messages name the full key path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator

from engine.names import ICT_EXPRESSIONS
from engine.paths import CONFIGS_DIR

DEFAULT_CONFIG_PATH = CONFIGS_DIR / "default.yaml"


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the key path."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SourceConfig(_Section):
    """Capture: `auto` (webcam if one opens, else demo), `webcam[:N]`, `demo`, or a video/image path."""

    kind: str = "auto"
    width: int = Field(640, ge=16, le=7680)
    height: int = Field(480, ge=16, le=4320)
    fps: float = Field(30.0, gt=0, le=240)
    realtime: bool = False  # file sources: drop frames to keep wall-clock pace instead of processing all
    loop: bool = False
    demo_size: int = Field(512, ge=64, le=2048)
    demo_seed: int = 0
    # Play the shipped pre-rendered demo performance when it matches (identity, seed, size, camera); false
    # always renders the performer live (half the CPU of a 2-core software-GL machine).
    demo_recording: bool = True


class TrackingConfig(_Section):
    """MediaPipe FaceMesh (`engine.tracking.FaceTracker`). `refine_landmarks` adds the 10 iris points (478 in all);
    `static_image_mode` re-detects on every frame (stills) instead of tracking from the previous frame's crop."""

    max_faces: int = Field(1, ge=1, le=4)  # faces solved and published (`face` index); face 0 is rendered
    refine_landmarks: bool = True
    min_detection_confidence: float = Field(0.5, ge=0, le=1)
    min_tracking_confidence: float = Field(0.5, ge=0, le=1)
    static_image_mode: bool = False


class FilterConfig(_Section):
    """One Euro filter (Casiez et al. 2012) parameters for one channel group."""

    min_cutoff: float = Field(1.0, gt=0)
    beta: float = Field(0.0, ge=0)
    d_cutoff: float = Field(1.0, gt=0)


class SolveConfig(_Section):
    """Regression: landmarks → head pose + 53 expression weights (docs/solve.md)."""

    regularization: float = Field(0.05, ge=0)  # λ in cm² (data term: squared cm summed over landmarks)
    landmark_response: bool = True  # apply models/landmark_response.npz (MediaPipe's measured response)
    learned_prior: bool = True  # add models/solve_prior.npz (weights regressed from landmarks) as a prior
    # For `performer: auto`, the people prior that also reads how the face moved from the performer's own neutral
    # (models/solve_prior_people_displaced.npz; docs/performer.md, "displaced"). Off: measured, not yet default.
    displaced_prior: bool = False
    # For `performer: auto` with the plain people prior: brows, blinks, jaw, lips read from how the face moved
    # from the performer's own neutral (models/solve_head_displaced.npz; docs/performer.md, "the head").
    displaced_head: bool = True
    prior_strength: float | None = Field(None, ge=0)  # μ (cm²) of that prior; None: the value it was tuned with
    channel_regularization: dict[str, float] = {}  # ICT channel name → λ replacing `regularization`
    symmetry_prior: float = Field(0.0, ge=0)  # μ in cm² on (X_L − X_R)²
    max_iterations: int = Field(30, ge=1, le=1000)  # box-QP active-set iterations per solve
    pose_iterations: int = Field(2, ge=1, le=10)  # pose ↔ expression alternations per frame
    compiled: bool = True  # the numba-compiled per-frame fit (engine/solve/compiled.py); false: the numpy one
    use_depth: bool = True
    depth_weight: float = Field(0.3, ge=0, le=1)  # weight of MediaPipe's z relative to x, y (when use_depth)
    oval_weight: float = Field(0.3, ge=0, le=1)  # weight of the face-outline landmarks (a sliding silhouette)
    eyes_enabled: bool = True  # blink from lid distances and gaze from irises replace the LSQ eye channels
    # Pull of the gaze channels to the iris read-out (cm²) where a learned prior reads gaze too (the demo
    # performer's); 0 pins them. Without such a prior (the people prior) they are always pinned (docs/solve.md).
    gaze_anchor: float = Field(0.3, ge=0)
    gaze_horizontal_deg: float = Field(30.0, gt=0, le=90)  # eyeball turn that eyeLookIn/Out = 1 stands for
    gaze_up_deg: float = Field(25.0, gt=0, le=90)
    gaze_down_deg: float = Field(25.0, gt=0, le=90)
    # Share of each eye's gaze taken from both eyes' mean (eyes turn together; MediaPipe's per-eye irises
    # disagree far more than eyes do): 1 yoked, 0 each eye on its own (docs/solve.md §3.5).
    gaze_yoke: float = Field(1.0, ge=0, le=1)
    # Crossed eyes: of the eyes' convergence (each turned towards the nose, degrees), what exceeds this is kept
    # through the yoke. On renders that look ahead, each eye's reading strays from the two eyes' mean by up to
    # about 10° (95th percentile).
    gaze_vergence_deadzone_deg: float = Field(10.0, ge=0, le=90)
    # The pitch (degrees, up) MediaPipe's irises read when the eyes look straight ahead; subtracted from every
    # reading (measured on training renders with `tools/measure_gaze.py`). No yaw: a mirrored face must read
    # mirrored gaze.
    gaze_straight_pitch_deg: float = Field(2.1, ge=-15, le=15)
    # Share of the blinks' left–right difference taken from the lids' own geometry rather than from the learned
    # prior, which keeps the level both eyes share (it has learnt MediaPipe's blink floor) but reads a real
    # person's wink as two half-closed eyes (docs/solve.md §3, "A wink stays a wink"). 0: the prior's difference.
    blink_lid_asymmetry: float = Field(1.0, ge=0, le=1)
    blink_lid_deadzone: float = Field(0.2, ge=0, le=2)  # differences up to this much are left to the prior
    # The source camera's vertical field of view (perspective correction, distance). null: the source's own when
    # it knows it (the demo performer's render camera), else performer.fov_prior_deg with `performer: auto` and
    # 25° with an enrolled performer (docs/engine.md, "camera").
    camera_fov_y_deg: float | None = Field(None, gt=1, lt=120)
    filter_enabled: bool = True
    filter_eyes: FilterConfig = FilterConfig(min_cutoff=3.0, beta=0.5)
    # Blinks are the fastest thing a face does (a real one can close the lids for one or two frames): their own
    # filter follows a fast change almost at once and still smooths the lids' jitter at rest.
    filter_blink: FilterConfig = FilterConfig(min_cutoff=3.0, beta=4.0, d_cutoff=5.0)
    filter_brows: FilterConfig = FilterConfig(min_cutoff=1.5, beta=1.0)
    filter_mouth: FilterConfig = FilterConfig(min_cutoff=1.5, beta=3.0)
    # The jaw moves fastest of the mouth (a syllable opens and closes it within a few frames) and jitters least.
    filter_jaw: FilterConfig = FilterConfig(min_cutoff=1.5, beta=10.0)
    filter_pose: FilterConfig = FilterConfig(min_cutoff=1.0, beta=0.2)
    calibration_frames: int = Field(30, ge=1, le=900)  # tracked frames a live neutral calibration averages
    coast_seconds: float = Field(0.5, ge=0)
    ease_seconds: float = Field(1.0, ge=0)

    # Per-channel response curves out = clip((w − lo)/(hi − lo), 0, 1) (engine/solve/curves.py): the shipped dead
    # zones (fitted with the people prior, applied with it) when true; channel_curves overrides channels by ICT name.
    response_curves: bool = True
    channel_curves: dict[str, tuple[float, float]] = {}

    @field_validator("channel_curves")
    @classmethod
    def _valid_curves(cls, value: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
        unknown = sorted(set(value) - set(ICT_EXPRESSIONS))
        if unknown:
            raise ValueError(f"unknown ICT channel(s) {unknown}; known: {', '.join(ICT_EXPRESSIONS)}")
        bad = [name for name, (lo, hi) in value.items() if not 0.0 <= lo < hi <= 1.0]
        if bad:
            raise ValueError(f"curves need 0 ≤ lo < hi ≤ 1: {bad}")
        return value

    @field_validator("channel_regularization")
    @classmethod
    def _known_channels(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(value) - set(ICT_EXPRESSIONS))
        if unknown:
            raise ValueError(f"unknown ICT channel(s) {unknown}; known: {', '.join(ICT_EXPRESSIONS)}")
        if any(v < 0 for v in value.values()):
            raise ValueError("channel regularization must be ≥ 0")
        return value


class DetailConfig(_Section):
    """Dynamic displacement bases (FaceScape §4.3)."""

    enabled: bool = True
    resolution: int = Field(512, ge=64, le=2048)
    backend: Literal["auto", "tensorrt", "torch", "onnxruntime"] = "auto"
    weights: Path | None = None  # None: the shipped network in models/
    engine_cache_dir: Path | None = None  # None: $XDG_CACHE_HOME/scapecast/engines
    precision: Literal["fp16", "fp32"] = "fp16"  # TensorRT engine precision
    scale_mm: float = Field(1.0, gt=0)  # output gain applied when shading


class RenderConfig(_Section):
    """moderngl avatar renderer (docs/rendering.md)."""

    width: int = Field(512, ge=16, le=4096)
    height: int = Field(512, ge=16, le=4096)
    # MSAA samples; 0 or 1: none; null: 4 on a GPU, 0 on a software rasterizer (llvmpipe shades every sample)
    samples: int | None = Field(None, ge=0, le=16)
    # auto: a preview window when a display exists (run --no-window turns it off); egl: headless only
    backend: Literal["egl", "window", "auto"] = "auto"
    fov_y_deg: float = Field(25.0, gt=1, lt=120)
    camera_distance_cm: float = Field(60.0, gt=1)  # framed camera: model origin this far ahead
    follow_pose_translation: bool = False  # place the head by the pose's translation/scale instead of framing it
    debug_view: Literal["none", "displacement", "weights", "normals", "classes"] = "none"
    background: tuple[float, float, float, float] = Field((0.0, 0.0, 0.0, 0.0))  # RGBA in [0, 1]; alpha 0 or 1
    mirror_preview: bool = True  # the preview window shows a mirror image (the output frames are never mirrored)
    # Dynamic detail: skip key expressions whose weight M_i stays below this everywhere (their basis would add
    # < 5 % of itself). Tracked faces give every channel a little weight, and per-pixel cost grows with the
    # number of keys blended; at 0.05 pixels stay within 1/255 of the exact blend with the shipped bases
    # (docs/rendering.md; costs in BENCHMARKS.md). 0: the exact blend.
    detail_key_threshold: float = Field(0.05, ge=0, le=0.25)

    @field_validator("background")
    @classmethod
    def _background_alpha(cls, value: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
        if not all(0.0 <= c <= 1.0 for c in value):
            raise ValueError("background components must be in [0, 1]")
        if value[3] not in (0.0, 1.0):
            raise ValueError("background alpha must be 0 (transparent) or 1 (opaque)")
        return value


class StreamConfig(_Section):
    """ZeroMQ publisher (wire format v1, docs/protocol.md) and bridges.

    A non-loopback `bind_address` needs CURVE (`curve_server_secret` + `curve_allowed_clients`, made by
    `run_engine.py keys`) or `insecure`. Port 0 binds an ephemeral port (tests, several engines on one host).
    """

    enabled: bool = True
    bind_address: str = "127.0.0.1"
    params_port: int = Field(5555, ge=0, le=65535)
    frame_port: int = Field(5556, ge=0, le=65535)
    asset_port: int = Field(5557, ge=0, le=65535)
    frame_codec: Literal["jpeg", "rgba", "none"] = "jpeg"
    jpeg_quality: int = Field(85, ge=1, le=100)
    send_hwm: int = Field(4, ge=1, le=10000)
    insecure: bool = False
    curve_server_secret: Path | None = None
    curve_allowed_clients: Path | None = None
    # VMC (OSC over UDP) to VSeeFace, VNyan, Warudo, EVMC4U… (docs/protocol.md, "VMC").
    vmc_enabled: bool = False
    vmc_host: str = "127.0.0.1"
    vmc_port: int = Field(39539, ge=1, le=65535)
    vmc_name_casing: Literal["arkit", "vrm"] = "vrm"  # vrm: PascalCase perfect-sync names (UniVRM is case-sensitive)
    vmc_pose: Literal["head", "root"] = "head"  # head: the Head bone's rotation (face trackers); root: whole pose
    # Expression sets sent each frame: the 52 perfect-sync (ARKit) names, VRM 0.x presets (Blink, A, Joy…),
    # VRM 1.0 presets (blink, aa, happy…). Models without perfect-sync clips move only with a preset set.
    vmc_expressions: list[Literal["perfect_sync", "vrm0", "vrm1"]] = ["perfect_sync", "vrm0"]
    # The Head bone's local position under the Neck (metres, Unity's frame) sent with its rotation; receivers
    # that synchronise bone positions (EVMC4U's default) put the head there.
    vmc_head_position: tuple[float, float, float] = (0.0, 0.1, 0.0)
    # iFacialMocap (UDP text, the face input of VSeeFace, VNyan, Warudo, VMagicMirror): the app's host.
    ifacialmocap_enabled: bool = False
    ifacialmocap_host: str = "127.0.0.1"
    ifacialmocap_port: int = Field(49983, ge=1, le=65535)
    # Live Link Face (UDP, Unreal Engine's Live Link): the editor's host and the subject name it shows.
    livelink_enabled: bool = False
    livelink_host: str = "127.0.0.1"
    livelink_port: int = Field(11111, ge=1, le=65535)
    livelink_subject: str = Field("scapecast", min_length=1, max_length=255)
    # Virtual camera (`run --vcam`, the `vcam` extra): the rendered avatar as a system camera for video calls.
    vcam_enabled: bool = False
    vcam_device: str | None = None  # None: the first free one (/dev/videoN on Linux, OBS Virtual Camera elsewhere)
    vcam_fps: float | None = Field(None, gt=0, le=120)  # None: the source's frame rate
    # RGB in [0, 1] behind the avatar; None: the render background where opaque, else chroma-key green.
    vcam_background: tuple[float, float, float] | None = None

    @field_validator("vcam_background")
    @classmethod
    def _background_range(cls, value: tuple[float, float, float] | None) -> tuple[float, float, float] | None:
        if value is not None and not all(0.0 <= c <= 1.0 for c in value):
            raise ValueError("vcam_background components must be in [0, 1]")
        return value


class IdentityConfig(_Section):
    """Which identity bundle is the avatar (what is rendered; `run --avatar`), and where bundles live."""

    name: str = "default"
    cache_dir: Path | None = None  # None: $XDG_CACHE_HOME/scapecast/identities
    rebuild: bool = True  # corrupt or stale bundle: rebuild its bases from w_id + texture instead of refusing


class PerformerConfig(_Section):
    """Who is tracked (the performer), apart from who is rendered (`identity`, the avatar). `auto` estimates
    the performer's face shape, the camera's field of view and a rest offset online (docs/performer.md); a
    name loads the profile `enroll` saved under that name (its identity and neutral calibration)."""

    name: str = "auto"
    # Identity modes estimated online (0: none), and the Gaussian prior's weight (cm², per unit-std mode).
    identity_modes: int = Field(0, ge=0, le=100)
    # The camera's field of view when neither the config nor the source knows it: "learned" reads it from the
    # face (`engine/solve/camera.py`), "fit" searches it with the identity fit (unreliable on MediaPipe's mesh),
    # "assumed" takes `fov_prior_deg`.
    camera: Literal["learned", "fit", "assumed"] = "learned"
    identity_prior: float = Field(0.3, ge=0)
    keyframes: int = Field(12, ge=3, le=60)  # frames the estimate is fitted to, spread over head poses
    first_estimate_s: float = Field(0.7, gt=0)  # seconds of tracking before the first estimate
    # Field of view prior (degrees) when neither the config nor the source knows the camera, and its bounds.
    fov_prior_deg: float = Field(50.0, gt=1, lt=120)
    fov_prior_std_deg: float = Field(12.0, gt=0)
    fov_min_deg: float = Field(30.0, gt=1, lt=120)
    fov_max_deg: float = Field(75.0, gt=1, lt=120)
    blend_s: float = Field(0.3, ge=0)  # a new estimate fades in over this long (no visible pop)
    # Rest offset: a slow low percentile of the channels identity and expression confuse, capped.
    rest_offset: bool = True
    rest_offset_cap: float = Field(0.5, ge=0, le=0.95)
    rest_offset_time_s: float = Field(4.0, gt=0)  # time constant of its approach
    # Gaze centre: the vertical gaze the irises read most of the time is taken as straight ahead, capped.
    gaze_centre: bool = True
    gaze_centre_cap_deg: float = Field(10.0, ge=0, le=25)
    gaze_centre_time_s: float = Field(4.0, gt=0)  # time constant of its approach
    new_person_lost_s: float = Field(2.0, gt=0)  # face lost this long: the next face restarts the estimate

    @model_validator(mode="before")
    @classmethod
    def _legacy_estimate_camera(cls, data: Any) -> Any:
        """`estimate_camera: true|false` (before `camera`) still reads, as the residual search or the assumed
        camera. It wins over `camera`, which the defaults file always sets."""
        if isinstance(data, dict) and "estimate_camera" in data:
            data = dict(data)
            data["camera"] = "fit" if TypeAdapter(bool).validate_python(data.pop("estimate_camera")) else "assumed"
        return data

    @model_validator(mode="after")
    def _camera_bounds(self) -> PerformerConfig:
        if not self.fov_min_deg < self.fov_max_deg:
            raise ValueError(f"fov_min_deg ({self.fov_min_deg}) must be below fov_max_deg ({self.fov_max_deg})")
        return self


class PipelineConfig(_Section):
    """Threads and run limits."""

    frames: int | None = Field(None, ge=1)
    duration_s: float | None = Field(None, gt=0)
    status_line: bool = True
    # Niceness of the render thread (and its llvmpipe workers): on a CPU-only machine tracking and `params`
    # come first and the local render takes what is left. 0 renders at the same priority.
    render_niceness: int = Field(10, ge=0, le=19)
    # Render in a child process: moderngl holds the GIL for a whole draw + readback (tens of ms on llvmpipe),
    # which in a thread stalls tracking. false renders on a thread of the engine's own process.
    render_process: bool = True


class WebConfig(_Section):
    """Where `serve` / `run --web` listen and who may watch."""

    host: str = "127.0.0.1"  # another address needs a token (generated when unset) or `insecure`
    port: int = Field(8080, ge=0, le=65535)  # 0: any free port
    token: str | None = None  # pages must present ?token=…; generated when listening off loopback without `insecure`
    insecure: bool = False  # listen off loopback without a token, knowingly
    tile_bits: Literal[8, 16] = 8  # detail-basis tiles for browsers: 8-bit (4.3 MB, within 1/255) or 16-bit (21 MB)
    cache_dir: Path | None = None  # None: $XDG_CACHE_HOME/scapecast (fetched bundles, built asset sets)


class Config(_Section):
    """The whole engine configuration."""

    source: SourceConfig = SourceConfig()
    tracking: TrackingConfig = TrackingConfig()
    solve: SolveConfig = SolveConfig()
    detail: DetailConfig = DetailConfig()
    render: RenderConfig = RenderConfig()
    stream: StreamConfig = StreamConfig()
    identity: IdentityConfig = IdentityConfig()
    performer: PerformerConfig = PerformerConfig()
    pipeline: PipelineConfig = PipelineConfig()
    web: WebConfig = WebConfig()  # `serve` and `run --web` (docs/web.md)


def _format_validation_error(error: ValidationError, origin: str) -> str:
    first = error.errors()[0]
    path = ".".join(str(p) for p in first["loc"])
    if first["type"] == "extra_forbidden":
        parent = first["loc"][:-1]
        allowed = _allowed_keys(parent)
        return f"{origin}: unknown key '{path}' (allowed: {', '.join(allowed)})"
    return f"{origin}: invalid value for '{path}': {first['msg']} (got {first.get('input')!r})"


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    model: type[BaseModel] = Config
    for key in loc:
        field = model.model_fields.get(str(key))
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            break
        model = field.annotation
    return sorted(model.model_fields)


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a folder, not a YAML file") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not text (expected YAML)") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, got {type(data).__name__}")
    return data


def parse_override(text: str) -> dict[str, Any]:
    """`section.key=value` → nested dict; the value is parsed as YAML (numbers, booleans, lists)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    nested: dict[str, Any] = {parts[-1]: value}
    for part in reversed(parts[:-1]):
        nested = {part: nested}
    return nested


def load_config(
    path: Path | str | None = None, overrides: list[str] | None = None, base: Path | None = DEFAULT_CONFIG_PATH
) -> Config:
    """Build the validated Config: defaults file, then `path`, then each `section.key=value` override."""
    data: dict[str, Any] = {}
    origin = "defaults"
    if base is not None and Path(base).is_file():
        data = _read_yaml(Path(base))
        origin = str(base)
    if path is not None:
        data = _deep_merge(data, _read_yaml(Path(path)))
        origin = str(path)
    for text in overrides or []:
        data = _deep_merge(data, parse_override(text))
        origin = f"--set {text}" if len(overrides or []) == 1 else "--set overrides"
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, origin)) from None
