"""Wire format v1: topics, message fields and the checks a subscriber applies to every message.

A message is ZeroMQ multipart `[topic, header]` or `[topic, header, payload]`:

- `topic`: ASCII bytes, one of `TOPICS` (PUB/SUB filters on this prefix);
- `header`: one msgpack map holding the common fields `v` (= 1), `seq` (per topic, +1 per message),
  `t_capture_ns`, `t_publish_ns` (sender's monotonic clock, ns) and `source` (engine id), plus the
  topic's own fields below;
- `payload`: raw bytes, only for `frame` (the encoded image).

Unknown header fields are ignored, so v1 can grow by adding fields; a change that breaks readers bumps `v`.
The checks are explicit functions, not a schema library, so that ports to C#, C++ or JavaScript can
mirror them line by line. `validate` raises `SchemaError` whose `reason` comes from a small fixed set
(`frames`, `topic`, `header`, `v`, `<topic>.<field>`, `payload`), suitable as a counter key.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

from engine.names import ARKIT_BLENDSHAPES

VERSION = 1
PARAMS, FRAME, IDENTITY, STATUS, STATS = "params", "frame", "identity", "status", "stats"
TOPICS: tuple[str, ...] = (PARAMS, FRAME, IDENTITY, STATUS, STATS)
CODECS: tuple[str, ...] = ("jpeg", "rgba")
TRACKING_STATES: tuple[str, ...] = ("tracking", "coasting", "lost")
# A frame payload larger than 8K RGBA is not an avatar image; refuse before allocating anything for it.
MAX_FRAME_PIXELS = 7680 * 4320

_ARKIT = frozenset(ARKIT_BLENDSHAPES)


class SchemaError(ValueError):
    """A message that does not follow wire format v1; `reason` is a short counter key."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Message:
    """One validated message. `header`: the decoded msgpack map; `t_receive_ns`: receiver's monotonic ns."""

    topic: str
    header: dict[str, Any]
    payload: bytes | None
    t_receive_ns: int

    @property
    def seq(self) -> int:
        return int(self.header["seq"])


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_num(x: object) -> bool:
    return (isinstance(x, float) and math.isfinite(x)) or _is_int(x)


def _is_str(x: object) -> bool:
    return isinstance(x, str)


def _vec(n: int) -> Callable[[object], bool]:
    return lambda x: isinstance(x, list) and len(x) == n and all(_is_num(c) for c in x)


def _str_list(x: object) -> bool:
    return isinstance(x, list) and all(isinstance(s, str) for s in x)


# Value ranges a receiver can trust (a renderer given a zero quaternion or a weight of 50 crashes or mangles
# the face): a unit quaternion within QUATERNION_TOLERANCE, translation within MAX_TRANSLATION_CM, scale in
# SCALE_RANGE, weights in [0, 1] ± WEIGHT_TOLERANCE (float rounding), confidence in [0, 1], face index below
# MAX_FACES, seq below MAX_SEQ (2⁵³: exact in every JSON/JavaScript number).
QUATERNION_TOLERANCE = 0.01
MAX_TRANSLATION_CM = 1e5
SCALE_RANGE = (1e-3, 1e3)
WEIGHT_TOLERANCE = 0.01
MAX_FACES = 64
MAX_SEQ = 2**53


def _pose(x: object) -> bool:
    if not (isinstance(x, dict) and _vec(4)(x.get("quaternion")) and _vec(3)(x.get("translation"))):
        return False
    norm = math.sqrt(sum(float(c) * float(c) for c in x["quaternion"]))
    return (
        abs(norm - 1.0) <= QUATERNION_TOLERANCE
        and all(abs(float(c)) <= MAX_TRANSLATION_CM for c in x["translation"])
        and _is_num(x.get("scale"))
        and SCALE_RANGE[0] <= float(x["scale"]) <= SCALE_RANGE[1]
    )


def _weight(v: object) -> bool:
    return _is_num(v) and -WEIGHT_TOLERANCE <= float(v) <= 1.0 + WEIGHT_TOLERANCE  # type: ignore[arg-type]


def _blendshapes(x: object) -> bool:
    return isinstance(x, dict) and all(k in _ARKIT and _weight(v) for k, v in x.items())


def _tracking(x: object) -> bool:
    if not (isinstance(x, dict) and x.get("state") in TRACKING_STATES and _is_num(x.get("confidence"))):
        return False
    return 0.0 <= float(x["confidence"]) <= 1.0


def _assets(x: object) -> bool:
    return isinstance(x, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in x.items())


COMMON_FIELDS: dict[str, Callable[[object], bool]] = {
    "v": _is_int,
    "seq": lambda x: _is_int(x) and 0 <= x < MAX_SEQ,
    "t_capture_ns": _is_int,
    "t_publish_ns": _is_int,
    "source": _is_str,
}

# The fields each topic must carry (beyond COMMON_FIELDS), with their checks.
TOPIC_FIELDS: dict[str, dict[str, Callable[[object], bool]]] = {
    PARAMS: {
        "pose": _pose,  # quaternion [w, x, y, z], translation [x, y, z] cm, scale
        "blendshapes": _blendshapes,  # {ARKit name: weight in [0, 1]}
        "tracking": _tracking,  # {state, confidence}
        "identity": _is_str,
        "face": lambda x: _is_int(x) and 0 <= x < MAX_FACES,
        "frame_index": _is_int,
    },
    FRAME: {
        "width": lambda x: _is_int(x) and x > 0,
        "height": lambda x: _is_int(x) and x > 0,
        "codec": lambda x: x in CODECS,
        "frame_index": _is_int,
    },
    IDENTITY: {
        "id": _is_str,
        "model_id": _is_str,
        "assets": _assets,  # {file name: sha256 hex}
        "channels": _str_list,  # ARKit names this engine drives
        "unsupported": _str_list,  # ARKit names it never sends
    },
    STATUS: {"state": _is_str, "detail": lambda x: isinstance(x, dict)},
    STATS: {"stats": lambda x: isinstance(x, dict)},
}


def _pack_default(obj: object) -> object:
    """msgpack fallback for numpy scalars and arrays (stats dicts often carry them)."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"cannot encode {type(obj).__name__} in a wire-format header")


def encode(topic: str, header: dict[str, Any], payload: bytes | None = None) -> list[bytes]:
    """The multipart frames of one message (the header must already hold the common fields)."""
    parts = [topic.encode("ascii"), msgpack.packb(header, use_bin_type=True, default=_pack_default)]
    if payload is not None:
        parts.append(payload)
    return parts


def validate(parts: list[bytes], t_receive_ns: int) -> Message:
    """Check one received multipart message against wire format v1; raises SchemaError(reason)."""
    if len(parts) not in (2, 3):
        raise SchemaError("frames")
    try:
        topic = parts[0].decode("ascii")
    except UnicodeDecodeError:
        raise SchemaError("topic") from None
    if topic not in TOPIC_FIELDS:
        raise SchemaError("topic")
    try:
        header = msgpack.unpackb(parts[1], raw=False)
    except Exception:  # msgpack raises several unrelated types (ValueError, UnicodeDecodeError, ExtraData, …)
        raise SchemaError("header") from None
    if not isinstance(header, dict):
        raise SchemaError("header")
    if header.get("v") != VERSION:
        raise SchemaError("v")
    for fields in (COMMON_FIELDS, TOPIC_FIELDS[topic]):
        for name, check in fields.items():
            if name not in header or not check(header[name]):
                raise SchemaError(f"{topic}.{name}" if fields is not COMMON_FIELDS else name)
    payload = parts[2] if len(parts) == 3 else None
    if topic == FRAME:
        _check_frame_payload(header, payload)
    elif payload is not None:
        raise SchemaError("payload")
    return Message(topic, header, payload, t_receive_ns)


def _check_frame_payload(header: dict[str, Any], payload: bytes | None) -> None:
    if payload is None or header["width"] * header["height"] > MAX_FRAME_PIXELS:
        raise SchemaError("payload")
    if header["codec"] == "rgba" and len(payload) != header["width"] * header["height"] * 4:
        raise SchemaError("payload")
    if header["codec"] == "jpeg" and not payload.startswith(b"\xff\xd8"):
        raise SchemaError("payload")
