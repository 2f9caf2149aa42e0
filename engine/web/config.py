"""The `web` config section (`serve`, `run --web`; docs/web.md). Only pydantic here, so that engine/config.py can
import it into the one schema without an import cycle."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class WebConfig(BaseModel):
    """Where `serve` / `run --web` listen and who may watch."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    host: str = "127.0.0.1"  # another address needs a token (generated when unset) or `insecure`
    port: int = Field(8080, ge=0, le=65535)  # 0: any free port
    token: str | None = None  # pages must present ?token=…; generated when listening off loopback without `insecure`
    insecure: bool = False  # listen off loopback without a token, knowingly
    tile_bits: Literal[8, 16] = 8  # detail-basis tiles for browsers: 8-bit (4.3 MB, within 1/255) or 16-bit (21 MB)
    cache_dir: Path | None = None  # None: $XDG_CACHE_HOME/scapecast (fetched bundles, built asset sets)
