"""Packaging and platform: the wheel carries what the engine needs and runs outside the checkout (#14 item 4), the
engine finds its files where it is installed, and rendering asks each platform for its own OpenGL context."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from engine import paths
from engine.render import context
from engine.render.context import RenderContextError

REPO_ROOT = Path(__file__).resolve().parents[1]


def _check_wheel_module():
    spec = importlib.util.spec_from_file_location("check_wheel", REPO_ROOT / "tools" / "check_wheel.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- where the files are ---


def test_a_checkout_uses_the_repository_folders() -> None:
    assert paths.MODELS_DIR == REPO_ROOT / "models"
    assert paths.SHADER_DIR == REPO_ROOT / "shaders"
    assert paths.CONFIGS_DIR == REPO_ROOT / "configs"
    assert (paths.MODELS_DIR / "ict_face_model.npz").is_file() and (paths.CONFIGS_DIR / "default.yaml").is_file()


def test_installed_package_data_wins_over_the_checkout(tmp_path, monkeypatch) -> None:
    (tmp_path / "_data" / "models").mkdir(parents=True)
    monkeypatch.setattr(paths, "_DATA", tmp_path / "_data")
    assert paths._folder("models") == tmp_path / "_data" / "models"
    assert paths._folder("shaders") == REPO_ROOT / "shaders"  # not installed there: the checkout's
    monkeypatch.setattr(paths, "_ROOT", tmp_path / "nowhere")
    # Neither: the installed location, so that a missing file is reported where an installed engine looks.
    assert paths._folder("configs") == tmp_path / "_data" / "configs"


def test_pyproject_lists_every_engine_package_and_maps_the_data_folders() -> None:
    setuptools = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {
        ".".join(init.parent.relative_to(REPO_ROOT).parts) for init in (REPO_ROOT / "engine").rglob("__init__.py")
    }
    missing = on_disk - set(setuptools["packages"])
    assert not missing, f"add these packages to [tool.setuptools] packages in pyproject.toml: {sorted(missing)}"
    mapped = {name.removeprefix("engine._data."): folder for name, folder in setuptools["package-dir"].items()}
    assert mapped == {name: name for name in ("models", "shaders", "configs")}
    for sub in (p for p in (REPO_ROOT / "models").rglob("*") if p.is_dir() and p.name != "__pycache__"):
        package = "engine._data." + ".".join(sub.relative_to(REPO_ROOT).parts)
        assert package in setuptools["packages"] and package in setuptools["package-data"], package


# --- the wheel check's own tests: it can fail ---


def test_the_check_finds_missing_package_data(tmp_path) -> None:
    check = _check_wheel_module()
    checkout, installed = tmp_path / "checkout", tmp_path / "site" / "engine" / "_data"
    for root in (checkout, installed):
        (root / "models" / "default_identity").mkdir(parents=True)
        (root / "shaders").mkdir(parents=True)
        (root / "models" / "a.npz").write_bytes(b"12345")
        (root / "shaders" / "x.glsl").write_text("void main() {}")
    (checkout / "models" / "default_identity" / "bases.npz").write_bytes(b"1")
    (checkout / "configs").mkdir()
    (checkout / "configs" / "default.yaml").write_text("a: 1\n")
    (installed / "shaders" / "x.glsl").write_text("void main() { }")  # another size: a different file
    assert check.missing_data(checkout, installed) == [
        "models/default_identity/bases.npz", "shaders/x.glsl", "configs/default.yaml",
    ]  # fmt: skip


def test_the_check_refuses_an_engine_from_the_checkout(tmp_path) -> None:
    check = _check_wheel_module()
    venv = tmp_path / "venv"
    site = venv / "lib" / "python3.11" / "site-packages"
    good = {"engine": str(site / "engine" / "__init__.py"), "models": str(site / "engine" / "_data" / "models")}
    assert check.outside(good, venv, REPO_ROOT) == []
    bad = dict(good, engine=str(REPO_ROOT / "engine" / "__init__.py"), shaders=str(REPO_ROOT / "shaders"))
    assert check.outside(bad, venv, REPO_ROOT) == [f"engine={bad['engine']}", f"shaders={bad['shaders']}"]


@pytest.mark.wheel
def test_the_built_wheel_runs_the_demo_in_a_fresh_environment() -> None:
    """`pip wheel .`, installed into a fresh venv outside the checkout, runs `scapecast run --source demo --frames
    60 --no-window` from a temporary directory and renders (tools/check_wheel.py; about 35 s, most of it the
    solver's first-run compile and the run itself)."""
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "tools" / "check_wheel.py")], capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    assert "ran 60 frames" in proc.stdout


# --- the platform's OpenGL context ---


class _Refused(Exception):
    pass


@pytest.fixture
def calls(monkeypatch) -> list[dict]:
    """The keyword arguments of every moderngl.create_standalone_context call; every call fails."""
    seen: list[dict] = []

    def fake(**kwargs):
        seen.append(kwargs)
        raise _Refused(f"no {kwargs.get('backend', 'default')} context here")

    monkeypatch.setattr(context.moderngl, "create_standalone_context", fake)
    return seen


def _headless(monkeypatch, display: bool) -> None:
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    if display:
        monkeypatch.setenv("DISPLAY", ":0")
    else:
        monkeypatch.delenv("DISPLAY", raising=False)


@pytest.mark.parametrize("system", ["Windows", "Darwin"])
def test_windows_and_macos_use_moderngls_default_context(monkeypatch, calls, system) -> None:
    monkeypatch.setattr(context.platform, "system", lambda: system)
    _headless(monkeypatch, display=False)
    with pytest.raises(RenderContextError) as caught:
        context.create_context()
    assert calls == [{"require": 330}]  # no backend: WGL on Windows, CGL on macOS
    assert "--no-render" in str(caught.value) and {"Windows": "WGL", "Darwin": "CGL"}[system] in str(caught.value)


def test_linux_headless_asks_for_egl_only(monkeypatch, calls) -> None:
    monkeypatch.setattr(context.platform, "system", lambda: "Linux")
    _headless(monkeypatch, display=False)
    with pytest.raises(RenderContextError) as caught:
        context.create_context()
    assert calls == [{"require": 330, "backend": "egl"}]
    message = str(caught.value)
    assert "--no-render" in message and "EGL: no egl context here" in message and "libegl1" in message


def test_linux_with_a_display_falls_back_to_glx(monkeypatch, calls) -> None:
    monkeypatch.setattr(context.platform, "system", lambda: "Linux")
    _headless(monkeypatch, display=True)
    with pytest.raises(RenderContextError) as caught:
        context.create_context()
    assert calls == [{"require": 330, "backend": "egl"}, {"require": 330}]
    assert "EGL: no egl context here; GLX: no default context here" in str(caught.value)
    assert "--no-render" in str(caught.value)


def test_linux_returns_the_first_context_that_works(monkeypatch) -> None:
    monkeypatch.setattr(context.platform, "system", lambda: "Linux")
    _headless(monkeypatch, display=True)

    class _Context:
        info = {"GL_VERSION": "3.3", "GL_RENDERER": "test"}

    made = _Context()
    asked = []

    def fake(**kwargs):
        asked.append(kwargs)
        if kwargs.get("backend") == "egl":
            raise _Refused("libEGL.so.1 not found")
        return made

    monkeypatch.setattr(context.moderngl, "create_standalone_context", fake)
    assert context.create_context() is made
    assert asked == [{"require": 330, "backend": "egl"}, {"require": 330}]


def test_this_machine_makes_a_real_context() -> None:
    ctx = context.create_context()
    try:
        assert ctx.version_code >= 330
    finally:
        ctx.release()
