"""The two image builds stay in step: the Dockerfile (for users with Docker) and
hack/image-build.sh (debootstrap + buildah, for machines without Docker or a registry)
install the same Debian packages, the same venv path, user, entrypoint and NIXL pins, and
the Dockerfile copies every package folder pyproject.toml builds."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = (REPO / "Dockerfile").read_text()
BUILD_SCRIPT = (REPO / "hack" / "image-build.sh").read_text()


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    logical = re.sub(r"\\\n\s*(#[^\n]*\n\s*)*", " ", DOCKERFILE)
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


def test_base_packages_match_debootstrap_list() -> None:
    listed = {
        line.strip()
        for line in (REPO / "hack" / "image" / "base-packages.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
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


def test_dockerfile_copies_every_package_folder() -> None:
    with open(REPO / "pyproject.toml", "rb") as f:
        where = tomllib.load(f)["tool"]["setuptools"]["packages"]["find"]["where"]
    copied = {
        args.split()[0] for word, args in instructions() if word == "COPY" and "--from" not in args
    }
    assert set(where) <= copied, f"Dockerfile misses COPY for {set(where) - copied}"


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
