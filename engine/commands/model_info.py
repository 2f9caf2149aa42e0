"""`model-info`: the face model's summary (vertex counts per region, expressions, identity modes, embedding)."""

from __future__ import annotations

import argparse
import json

from engine.config import Config
from engine.face_model import FaceModel, LandmarkEmbedding, ModelFileError


def cmd_model_info(args: argparse.Namespace, config: Config) -> int:
    """Print the face model summary: vertex counts per region, expressions, identity modes, embedding residual."""

    model = FaceModel.load()
    info = model.summary()
    try:
        embedding = LandmarkEmbedding.load()
        info["landmark_embedding"] = {"landmarks": len(embedding.vertex_ids), "residual_mm": embedding.residual_mm}
    except ModelFileError as exc:
        info["landmark_embedding"] = f"unavailable: {exc}"
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"model      {info['model_id']}  (sha256 {info['model_hash']}…)")
    print(f"vertices   {info['vertices']}  triangles {info['triangles']}  render vertices {info['render_vertices']}")
    for region, count in info["regions"].items():  # type: ignore[union-attr]
        print(f"  {region:<14} {count:>6} vertices")
    print(f"identity   {info['identity_modes']} modes;  rigid vertices {info['rigid_vertices']}")
    print(f"expressions ({len(info['expressions'])}): {', '.join(info['expressions'])}")  # type: ignore[arg-type]
    emb = info["landmark_embedding"]
    if isinstance(emb, dict):
        residual = ", ".join(f"{k} {v:.2f}" for k, v in emb["residual_mm"].items())
        print(f"landmarks  {emb['landmarks']} embedded; residual (mm): {residual}")
    else:
        print(f"landmarks  {emb}")
    return 0


def add_model_info_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("model-info", help="print the face model summary")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=cmd_model_info)
