"""Build scapecast's wheel, install it into a fresh virtual environment outside the repository, run the demo with it.

    .venv/bin/python tools/check_wheel.py [--workdir DIR] [--frames N]

Run by `make test` (tests/test_packaging.py); exits 0 when the installed wheel works, else 1 with the step that
failed and its output. Why each step is as it is:

- The wheel is built (`pip wheel . --no-deps`) from a copy of the working tree (the files git tracks or would
  track), not in place: setuptools reuses a `build/` folder and would ship files left there by an earlier build,
  and the shared checkout gets no build artefacts.
- The fresh environment (`venv --without-pip`, outside the repository) sees the dependencies already installed for
  the interpreter running this script through a `.pth` file that appends that site-packages folder: no download of
  torch and the rest. A path line in a `.pth` file does not process that folder's own `.pth` files, so the
  editable install of the checkout there stays inactive; the check still confirms that `engine` and its data come
  from the fresh environment. `pip check` then confirms the wheel's declared dependencies are satisfied.
- Every file of the checkout's `models/`, `configs/*.yaml` and `shaders/*.glsl` must be in the installed package.
- `scapecast run --source demo --no-window` runs from a temporary directory with that environment's script, as a
  user's would, on free loopback ports. A render child that cannot start does not fail a run (parameters go on),
  so the summary must also show rendered frames.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from engine.stream.security import free_loopback_ports  # noqa: E402  (the checkout's, run from the dev venv)

ROOT = Path(__file__).resolve().parents[1]
# The checkout's folders the wheel carries as package data (engine/_data/<name>), with the files that must be in it.
DATA = {"models": "**/*", "shaders": "*.glsl", "configs": "*.yaml"}
_IGNORED_COPY = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "out")


class CheckFailed(Exception):
    """A step of the check failed; the message says which and why."""


def copy_sources(root: Path, target: Path) -> None:
    """The working tree's files that git tracks or would track (all of it, less the usual artefacts, without git)."""
    try:
        listing = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=root, capture_output=True, check=True,
        )  # fmt: skip
    except (OSError, subprocess.CalledProcessError):  # no git, or not a git checkout
        shutil.copytree(root, target, ignore=_IGNORED_COPY, dirs_exist_ok=True)
        return
    for name in filter(None, listing.stdout.decode().split("\0")):
        source = root / name
        if source.is_file():  # a tracked file deleted in the working tree is not built
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


def missing_data(checkout: Path, installed: Path) -> list[str]:
    """The data files of `checkout` (DATA) absent from, or of another size in, `installed` (`engine/_data`)."""
    missing = []
    for folder, pattern in DATA.items():
        for path in sorted((checkout / folder).glob(pattern)):
            if path.is_file() and "__pycache__" not in path.parts:
                relative = path.relative_to(checkout)
                copy = installed / relative
                if not copy.is_file() or copy.stat().st_size != path.stat().st_size:
                    missing.append(relative.as_posix())
    return missing


def outside(paths: dict[str, str], environment: Path, checkout: Path) -> list[str]:
    """The entries of `paths` that are not inside `environment`, or are inside `checkout`."""
    environment, checkout = environment.resolve(), checkout.resolve()
    wrong = []
    for name, value in paths.items():
        path = Path(value).resolve()
        if not path.is_relative_to(environment) or path.is_relative_to(checkout):
            wrong.append(f"{name}={value}")
    return wrong


def _environment() -> dict[str, str]:
    """This process's environment without what could put the checkout's `engine` on the fresh environment's path."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PYTHONNOUSERSITE="1", PYTHONUNBUFFERED="1")
    return env


def _step(name: str, command: list[str], cwd: Path, timeout: float) -> str:
    started = time.monotonic()
    try:
        proc = subprocess.run(command, cwd=cwd, env=_environment(), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise CheckFailed(f"{name}: no result within {timeout:.0f} s ({' '.join(command)})") from exc
    if proc.returncode != 0:
        output = (proc.stdout + proc.stderr)[-4000:]
        raise CheckFailed(f"{name}: exit status {proc.returncode} ({' '.join(command)})\n{output}")
    print(f"check_wheel: {name}: {time.monotonic() - started:.1f} s", flush=True)
    return proc.stdout


def check(workdir: Path, frames: int) -> None:
    source, dist, venv, run_dir = (workdir / name for name in ("src", "dist", "venv", "run"))
    for folder in (source, dist, run_dir):
        folder.mkdir(parents=True, exist_ok=True)
    if venv.resolve().is_relative_to(ROOT):
        raise CheckFailed(f"the fresh environment {venv} must be outside the repository {ROOT}")

    started = time.monotonic()
    copy_sources(ROOT, source)
    print(f"check_wheel: copy the working tree: {time.monotonic() - started:.1f} s", flush=True)
    _step("pip wheel", [sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "-q", "-w", str(dist)], source, 300)
    wheels = sorted(dist.glob("scapecast-*.whl"))
    if len(wheels) != 1:
        raise CheckFailed(f"pip wheel made {[w.name for w in wheels]}, not one scapecast wheel")

    _step("fresh venv", [sys.executable, "-m", "venv", "--without-pip", str(venv)], workdir, 120)
    scripts = venv / ("Scripts" if os.name == "nt" else "bin")
    python = scripts / ("python.exe" if os.name == "nt" else "python")
    site = Path(_step("its site-packages", [str(python), "-c", _PURELIB], workdir, 60).strip())
    dependencies = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    (site / "_scapecast_check_dependencies.pth").write_text("".join(f"{path}\n" for path in dependencies))
    # --ignore-installed: the checkout's editable install, visible through the .pth file, is never touched (pip
    # would not uninstall it anyway, being outside this environment).
    install = ["install", "--no-deps", "--ignore-installed", "-q", str(wheels[0])]
    _step("pip install the wheel", [str(python), "-m", "pip", *install], workdir, 300)
    _step("pip check", [str(python), "-m", "pip", "check"], workdir, 120)

    located = json.loads(_step("where engine is", [str(python), "-c", _LOCATE], run_dir, 120))
    wrong = outside(located, venv, ROOT)
    if wrong:
        raise CheckFailed(f"the fresh environment does not use the installed wheel: {', '.join(wrong)}")
    missing = missing_data(source, Path(located["engine"]).parent / "_data")
    if missing:
        raise CheckFailed(f"package data missing from the installed wheel: {', '.join(missing)}")

    summary = run_dir / "summary.json"
    ports = [f"stream.{name}={port}" for name, port in zip(("params_port", "frame_port", "asset_port"),
                                                            free_loopback_ports(3), strict=True)]  # fmt: skip
    command = [str(scripts / "scapecast"), "run", "--source", "demo", "--frames", str(frames), "--no-window",
               "--quiet", "--summary-json", str(summary)] + [a for p in ports for a in ("--set", p)]  # fmt: skip
    _step("scapecast run --source demo", command, run_dir, 420)
    result = json.loads(summary.read_text())
    if result.get("frames") != frames or not result.get("rendered"):
        raise CheckFailed(
            f"the run should have processed {frames} frames and rendered some: frames {result.get('frames')}, "
            f"rendered {result.get('rendered')}, render {result.get('render')}"
        )
    print(f"check_wheel: {wheels[0].name} ({wheels[0].stat().st_size / 2**20:.0f} MiB) ran {result['frames']} "
          f"frames, rendered {result['rendered']}, in {venv}", flush=True)  # fmt: skip


_PURELIB = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
_LOCATE = """
import json
import engine, engine.paths as paths
print(json.dumps({"engine": engine.__file__, "models": str(paths.MODELS_DIR), "shaders": str(paths.SHADER_DIR),
                  "configs": str(paths.CONFIGS_DIR)}))
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, help="work in this new folder and keep it (default: a temporary one)")
    parser.add_argument("--frames", type=int, default=60, help="frames of the demo to run (default 60)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    if args.workdir is not None and args.workdir.exists():
        parser.error(f"--workdir {args.workdir} exists: name a new folder")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="scapecast-wheel-check-"))
    try:
        check(workdir.resolve(), args.frames)
    except CheckFailed as exc:
        print(f"check_wheel: FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"check_wheel: the wheel works ({time.monotonic() - started:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
