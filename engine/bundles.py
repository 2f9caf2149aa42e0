"""The identity library: finding, loading, repairing and naming identity bundles (avatars) and performer profiles.

    name ──bundle_dir──▶ folder ──load_bundle──▶ Identity          (engine/identity.py: the bundle format)
                                     │ damaged bases, `identity.rebuild` on
                                     ▼
                              rebuild_bases (the caller's `detail` config) ──save_bundle──▶ Identity

Every command that needs a bundle by name comes here: `run` (the avatar and an enrolled performer), `view`,
`report`, `eval`, `render`, `bench`, the demo source, the tools. The format itself (files, checksums, what
makes a bundle stale) lives in `engine/identity.py`; computing detail bases in `engine/detail/precompute.py`.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np

from engine.config import DetailConfig, IdentityConfig
from engine.errors import UserError
from engine.face_model import FaceModel
from engine.identity import (
    DEFAULT_IDENTITY_DIR,
    BundleError,
    Identity,
    default_bundle_dir,
    load_bundle,
    save_bundle,
)

log = logging.getLogger(__name__)

#: Where the shipped default identity is restored from when damaged (a source checkout) — said in the error.
SHIPPED_HINT = "restore models/ from git (or reinstall the package)"


def bundle_dir(name: str, cache_dir: Path | None, missing: str = "no identity named", alternative: str = "") -> Path:
    """The folder of the bundle `name` (the shipped default when `default` was never enrolled); a missing one
    is a UserError that starts with `missing` and names the fix (after `alternative`, when given)."""
    try:
        directory = default_bundle_dir(name, cache_dir)
    except BundleError as exc:
        raise UserError(str(exc)) from None
    if name == "default" and not (directory / "identity.json").is_file():
        directory = DEFAULT_IDENTITY_DIR
    if not (directory / "identity.json").is_file():
        raise UserError(
            f"{missing} {name!r} in {directory.parent} "
            f"({alternative}create it with: run_engine.py enroll --name {name} --image PHOTO)"
        )
    return directory


def load_identity(config: IdentityConfig, model: FaceModel, detail: DetailConfig | None = None) -> Identity:
    """The identity bundle named in `config` (the shipped default when `default` was never enrolled).

    A bundle whose bases are damaged is rebuilt from its identity with the caller's `detail` settings (backend,
    resolution, network) and saved, when `config.rebuild` allows; a bundle of another face model, or one whose
    identity file is damaged, is refused with the command that fixes it.
    """
    directory = bundle_dir(config.name, config.cache_dir)
    try:
        return load_bundle(directory, model)
    except BundleError as exc:
        if directory == DEFAULT_IDENTITY_DIR:
            raise UserError(f"the shipped default identity is damaged ({exc}); {SHIPPED_HINT}") from None
        reenroll = f"re-create it with: run_engine.py enroll --name {config.name} ..."
        try:
            load_bundle(directory, model, with_bases=False)
        except BundleError:
            raise UserError(f"{exc} — {reenroll}") from None
        if not config.rebuild:
            raise UserError(f"{exc} — rebuild it (identity.rebuild: true) or {reenroll}") from None
        log.warning("%s — recomputing the detail bases", exc)
        return rebuild_bases(directory, model, detail or DetailConfig())


def rebuild_bases(
    directory: Path | str,
    model: FaceModel,
    detail: DetailConfig,
    progress: bool = True,
    adopt_model: bool = False,
    save_to: Path | str | None = None,
) -> Identity:
    """Recompute a bundle's 20 detail bases from its identity weights and texture with `detail`'s backend and
    resolution (after a network change, or when `bases.npz` is damaged) and save the bundle to `save_to`
    (default: in place). `adopt_model` also accepts a bundle made for another build of the model (same
    identity modes) and re-stamps it with this model's hash."""
    from engine.detail.precompute import precompute_bases  # torch / ONNX Runtime: only when rebuilding

    identity = load_bundle(directory, model, with_bases=False, check_model=not adopt_model)
    texture = identity.texture if identity.texture is not None else np.full((1024, 1024, 3), 180, np.uint8)
    bases = precompute_bases(model, identity.identity_weights, texture, detail, progress)
    identity = replace(identity, bases=bases, model_id=model.model_id, model_hash=model.model_hash)
    save_bundle(identity, save_to if save_to is not None else directory)
    return identity


def load_performer_identity(name: str, cache_dir: Path | None, model: FaceModel) -> Identity:
    """The identity of the performer profile `enroll` saved under `name` (its detail bases are not read)."""
    directory = bundle_dir(name, cache_dir, "no performer profile named", "use --performer auto, or ")
    try:
        return load_bundle(directory, model, with_bases=False)
    except BundleError as exc:
        raise UserError(f"performer profile {name!r}: {exc}") from None
