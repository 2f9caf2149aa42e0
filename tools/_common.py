"""The start-up the solver's fitting tools share (`fit_landmark_response.py`, `fit_solve_prior.py`).

Imported first by a tool run as a script (`python tools/<tool>.py`: its folder is on sys.path), it puts the
repository on sys.path so that `engine` imports after it; `start` then parses the command line with the options
every fitting tool has (`--size`, `--seed`, `--set`) and loads what every run needs: the config, the face model,
the landmark embedding and the configured identity.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from engine.bundles import load_identity  # noqa: E402
from engine.config import Config, load_config  # noqa: E402
from engine.face_model import FaceModel, LandmarkEmbedding  # noqa: E402
from engine.identity import Identity  # noqa: E402


@dataclass(frozen=True)
class ToolRun:
    """One run of a fitting tool: its parsed arguments and what it loaded at start."""

    args: argparse.Namespace
    config: Config
    model: FaceModel
    embedding: LandmarkEmbedding
    identity: Identity  # the configured identity (`identity.name`), the one the tools render
    rng: np.random.Generator  # seeded with --seed
    started: float  # time.monotonic() when the run began

    def elapsed_s(self) -> float:
        return time.monotonic() - self.started


def argument_parser(doc: str) -> argparse.ArgumentParser:
    """A parser described by the first line of the tool's docstring, with the shared options."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="render size in pixels (square)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], help="config override section.key=value"
    )
    return parser


def start(parser: argparse.ArgumentParser) -> ToolRun:
    """Parse the command line; load the config (with the --set overrides), the face model, the landmark
    embedding and the configured identity; seed the random generator."""
    args = parser.parse_args()
    started = time.monotonic()
    config = load_config(overrides=args.overrides)
    model = FaceModel.load()
    embedding = LandmarkEmbedding.load()
    identity = load_identity(config.identity, model, config.detail)
    return ToolRun(args, config, model, embedding, identity, np.random.default_rng(args.seed), started)
