"""Inference backends for the once-per-identity basis run (design §4.3): TensorRT, torch, ONNX Runtime.

Each backend maps network inputs (B, 10, N, N) float32 → (B, N, N) float32 millimetres. `auto` prefers
TensorRT (NVIDIA GPU, FP16 engine), then torch on CUDA, then the faster CPU path. The reasons for the choice
are returned so the engine can log which backend ran and why the better ones did not.

TensorRT engines are cached on disk, one file per key: sha256 of the ONNX file, TensorRT version, GPU name,
precision, resolution and batch. A sidecar JSON holds the key fields and the engine's sha256; a mismatch or a
damaged file means a rebuild. Both are written to a temporary file and moved into place with `os.replace`.
The TensorRT code follows TensorRT 10's Python API (name-based tensors, `execute_async_v3`); this project's
CI machines have no GPU, so it is exercised only by `tools/gpu_check.sh` on a GPU machine.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
from tqdm import tqdm

from engine.errors import UserError
from engine.face_model import file_sha256

if TYPE_CHECKING:
    from engine.detail.precompute import DetailParts
    from engine.detail.uv_raster import UVRasterizer

log = logging.getLogger(__name__)

BACKENDS = ("tensorrt", "torch", "onnxruntime")
# Measured by `bench_precompute` on the 2-core CPU machine (docs/detail.md): ONNX Runtime is the faster CPU path.
CPU_PREFERENCE = ("onnxruntime", "torch")
CPU_CHUNK = 4  # images per CPU call: bounds activation memory at 512² (≈ 0.5 GB per chunk)


class Backend(Protocol):
    name: str

    def run(self, inputs: np.ndarray, progress: bool = False) -> np.ndarray:
        """(B, 10, N, N) float32 → (B, N, N) float32 mm."""
        ...


@dataclass(frozen=True)
class Availability:
    """What this machine offers; each field is None when usable, else the reason it is not."""

    tensorrt: str | None
    cuda: str | None
    torch: str | None
    onnxruntime: str | None

    @staticmethod
    def probe() -> Availability:
        def missing(module: str) -> str | None:
            return None if importlib.util.find_spec(module) is not None else f"python package '{module}' not installed"

        torch_reason = missing("torch")
        cuda_reason = torch_reason
        if cuda_reason is None:
            import torch

            cuda_reason = None if torch.cuda.is_available() else "no CUDA device visible to torch"
        trt_reason = missing("tensorrt")
        if trt_reason is not None:
            trt_reason += " (pip install scapecast[gpu])"
        elif cuda_reason is not None:
            trt_reason = f"TensorRT needs an NVIDIA GPU: {cuda_reason}"
        return Availability(trt_reason, cuda_reason, torch_reason, missing("onnxruntime"))


def select_backend(requested: str, available: Availability) -> tuple[str, str, str]:
    """Choose a backend → (name, device, reason). `requested` is `auto` or one of BACKENDS.

    An explicit request that cannot run is a UserError naming the reason; `auto` explains what it skipped.
    """
    if requested not in ("auto", *BACKENDS):
        raise UserError(f"detail.backend must be auto, {', '.join(BACKENDS)}; got {requested!r}")
    if requested == "tensorrt":
        if available.tensorrt is not None:
            raise UserError(f"detail.backend=tensorrt is unavailable: {available.tensorrt}")
        return "tensorrt", "cuda", "requested in config"
    if requested == "torch":
        if available.torch is not None:
            raise UserError(f"detail.backend=torch is unavailable: {available.torch}")
        device = "cuda" if available.cuda is None else "cpu"
        return "torch", device, f"requested in config; running on {device}"
    if requested == "onnxruntime":
        if available.onnxruntime is not None:
            raise UserError(f"detail.backend=onnxruntime is unavailable: {available.onnxruntime}")
        return "onnxruntime", "cpu", "requested in config"
    if available.tensorrt is None:
        return "tensorrt", "cuda", "auto: NVIDIA GPU and TensorRT present (FP16 engine)"
    if available.cuda is None:
        return "torch", "cuda", f"auto: CUDA present but not TensorRT ({available.tensorrt})"
    for name in CPU_PREFERENCE:
        if getattr(available, name) is None:
            return name, "cpu", f"auto: no GPU path ({available.tensorrt}); {name} is the faster CPU backend"
    raise UserError("no detail backend is usable: install torch or onnxruntime")


def _chunked(fn: Callable[[np.ndarray], np.ndarray], inputs: np.ndarray, chunk: int, desc: str, progress: bool):
    out = []
    with tqdm(total=len(inputs), desc=desc, unit="basis", disable=not progress) as bar:
        for start in range(0, len(inputs), chunk):
            out.append(fn(inputs[start : start + chunk]))
            bar.update(len(out[-1]))
    return np.concatenate(out, axis=0)


class TorchBackend:
    """The reference: the network in torch, on CUDA (all at once) or the CPU (in chunks)."""

    name = "torch"

    def __init__(self, weights: Path, device: str = "cpu", threads: int | None = None) -> None:
        import torch

        from engine.detail.net import load_network  # with torch, only for the torch backend

        if threads is not None:
            torch.set_num_threads(threads)
        self.device = device
        self.net = load_network(weights, device)

    def run(self, inputs: np.ndarray, progress: bool = False) -> np.ndarray:
        import torch

        def call(x: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return self.net(torch.from_numpy(x).to(self.device))[:, 0].float().cpu().numpy()

        chunk = len(inputs) if self.device == "cuda" else CPU_CHUNK
        return _chunked(call, inputs, chunk, f"detail bases (torch {self.device})", progress)

    @property
    def assembles_on_device(self) -> bool:
        """On CUDA, `precompute_bases` hands over the unassembled parts (`run_parts`)."""
        return self.device == "cuda"

    def run_parts(self, parts: DetailParts, raster: UVRasterizer, fade: np.ndarray) -> np.ndarray:
        """The whole basis run on `self.device`: rasterize the 20 deform maps (the numpy gather of
        `UVRasterizer.rasterize`, in torch), assemble the (20, 10, N, N) batch as `assemble_inputs` does, run
        the network, fade (`fade` (N, N)) and take the UV gradients as `uv_gradients` does → (20, N, N, 3)
        float32 [F̂ mm, ∂F̂/∂u, ∂F̂/∂v] on the host."""
        import torch

        device = self.device
        n = raster.resolution
        covered = np.flatnonzero(raster.covered.reshape(-1))
        with torch.inference_mode():
            offsets = torch.from_numpy(parts.offsets).to(device)  # (B, V, 3)
            corners = torch.from_numpy(raster.corners_model.reshape(-1, 3)[covered].astype(np.int64)).to(device)
            bary = torch.from_numpy(raster.barycentric.reshape(-1, 3)[covered]).to(device)  # (K, 3)
            gathered = (offsets[:, corners, :] * bary[None, :, :, None]).sum(dim=2)  # (B, K, 3)
            flat = torch.zeros((len(offsets), n * n, 3), dtype=torch.float32, device=device)
            flat[:, torch.from_numpy(covered).to(device)] = gathered
            target = torch.from_numpy(raster.fill_target).to(device)
            flat[:, target] = flat[:, torch.from_numpy(raster.fill_source).to(device)]
            inputs = torch.from_numpy(parts.static).to(device).expand(len(offsets), -1, -1, -1).clone()
            inputs[:, 3:6] = flat.reshape(-1, n, n, 3).permute(0, 3, 1, 2) * 2.0
            disp = self.net(inputs)[:, 0].float() * torch.from_numpy(fade).to(device)
            d_dv, d_du = torch.gradient(disp, spacing=1.0 / n, dim=(1, 2))
            return torch.stack([disp, d_du, d_dv], dim=-1).cpu().numpy()


class OnnxRuntimeBackend:
    """ONNX Runtime on the CPU (the exported graph, float32)."""

    name = "onnxruntime"

    def __init__(self, onnx_path: Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads is not None:
            opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            raise UserError(f"detail network {onnx_path} cannot be loaded by ONNX Runtime: {exc}") from None
        self.input_name = self.session.get_inputs()[0].name

    def run(self, inputs: np.ndarray, progress: bool = False) -> np.ndarray:
        def call(x: np.ndarray) -> np.ndarray:
            return self.session.run(None, {self.input_name: np.ascontiguousarray(x, np.float32)})[0][:, 0]

        return _chunked(call, inputs, CPU_CHUNK, "detail bases (onnxruntime)", progress)


# --- TensorRT -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EngineKey:
    """Everything a serialized TensorRT engine depends on; a change in any field means a rebuild."""

    onnx_sha256: str
    tensorrt_version: str
    gpu_name: str
    precision: str
    resolution: int
    batch: int

    @property
    def digest(self) -> str:
        text = json.dumps(self.__dict__, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def path(self, cache_dir: Path) -> Path:
        """Engine file in `cache_dir`: `detail_<resolution>_<precision>_<digest16>.engine` (+ `.json` sidecar)."""
        return Path(cache_dir) / f"detail_{self.resolution}_{self.precision}_{self.digest[:16]}.engine"


def default_engine_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/scapecast/engines` (`~/.cache` when unset)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "scapecast" / "engines"


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def store_engine(key: EngineKey, cache_dir: Path, blob: bytes) -> Path:
    """Write a serialized engine and its sidecar atomically (engine first, so a sidecar never points at
    a missing or partial engine)."""
    path = key.path(cache_dir)
    _atomic_write(path, blob)
    meta = {**key.__dict__, "engine_sha256": hashlib.sha256(blob).hexdigest()}
    _atomic_write(path.with_suffix(".json"), json.dumps(meta, indent=1).encode())
    return path


def load_cached_engine(key: EngineKey, cache_dir: Path) -> bytes | None:
    """The cached engine bytes for `key`, or None (logging why) when absent, stale or damaged."""
    path = key.path(cache_dir)
    sidecar = path.with_suffix(".json")
    if not path.is_file() or not sidecar.is_file():
        return None
    try:
        meta = json.loads(sidecar.read_text())
        blob = path.read_bytes()
    except (OSError, json.JSONDecodeError) as exc:
        log.warning("TensorRT engine cache %s unreadable (%s): rebuilding", path, exc)
        return None
    if any(meta.get(k) != v for k, v in key.__dict__.items()):
        log.warning("TensorRT engine cache %s was built for other settings: rebuilding", path)
        return None
    if meta.get("engine_sha256") != hashlib.sha256(blob).hexdigest():
        log.warning("TensorRT engine cache %s fails its checksum: rebuilding", path)
        return None
    return blob


class TensorRTBackend:
    """ONNX → TensorRT FP16 engine (cached), run on CUDA through torch-allocated buffers."""

    name = "tensorrt"
    input_name = "inputs"
    output_name = "displacement_mm"

    def __init__(
        self, onnx_path: Path, resolution: int, batch: int, cache_dir: Path | None = None, precision: str = "fp16"
    ) -> None:
        import tensorrt as trt
        import torch

        self.trt = trt
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.key = EngineKey(
            onnx_sha256=file_sha256(onnx_path),
            tensorrt_version=trt.__version__,
            gpu_name=torch.cuda.get_device_name(0),
            precision=precision,
            resolution=resolution,
            batch=batch,
        )
        cache = Path(cache_dir) if cache_dir is not None else default_engine_cache_dir()
        blob = load_cached_engine(self.key, cache)
        if blob is None:
            log.info("building TensorRT %s engine for %d × %d² (cached in %s)", precision, batch, resolution, cache)
            blob = self._build(onnx_path)
            store_engine(self.key, cache, blob)
        self.engine = trt.Runtime(self.logger).deserialize_cuda_engine(blob)
        if self.engine is None:
            raise UserError(f"TensorRT could not deserialize the engine in {self.key.path(cache)}; delete it")
        self.context = self.engine.create_execution_context()

    def _build(self, onnx_path: Path) -> bytes:
        trt = self.trt
        builder = trt.Builder(self.logger)
        network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
        parser = trt.OnnxParser(network, self.logger)
        if not parser.parse(Path(onnx_path).read_bytes()):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise UserError(f"TensorRT cannot parse {onnx_path}: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 2 << 30)
        if self.key.precision == "fp16":
            config.set_flag(trt.BuilderFlag.FP16)
        profile = builder.create_optimization_profile()
        shape = (self.key.batch, 10, self.key.resolution, self.key.resolution)
        profile.set_shape(self.input_name, (1, *shape[1:]), shape, shape)
        config.add_optimization_profile(profile)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise UserError("TensorRT failed to build the detail engine (see the TensorRT log above)")
        return bytes(serialized)

    def run(self, inputs: np.ndarray, progress: bool = False) -> np.ndarray:
        import torch

        x = torch.from_numpy(np.ascontiguousarray(inputs, np.float32)).cuda()
        out = torch.empty((len(x), 1, x.shape[2], x.shape[3]), dtype=torch.float32, device="cuda")
        stream = torch.cuda.current_stream()
        self.context.set_input_shape(self.input_name, tuple(x.shape))
        self.context.set_tensor_address(self.input_name, x.data_ptr())
        self.context.set_tensor_address(self.output_name, out.data_ptr())
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise UserError("TensorRT execution of the detail engine failed")
        stream.synchronize()
        return out[:, 0].cpu().numpy()
