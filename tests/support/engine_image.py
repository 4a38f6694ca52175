"""A vLLM engine served from the engine image (hack/image-build.sh, DUALPATH_IMAGE_ENGINE=1)
as a container on this machine: `buildah run` with the host's network (loopback only: the
engine listens on 127.0.0.1) and the model mounted read-only, as a pod would run it."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from dualpath_vllm.process import EngineProcess, EngineSpec

MODEL_MOUNT = "/model"


def world_readable_copy(model: Path, into: Path) -> Path:
    """The image runs as a non-root user: a copy of the model it can read."""
    copy = into / model.name
    shutil.copytree(model, copy, dirs_exist_ok=True)
    for path in [copy, *copy.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return copy


class ContainerEngine(EngineProcess):
    """EngineProcess whose server runs in a working container of `image`; stopping it stops
    the `buildah run` process group, and `remove` deletes the container."""

    def __init__(self, spec: EngineSpec, image: str, model: Path, log_path: Path) -> None:
        super().__init__(spec, log_path)
        self.image = image
        self.model = model
        self.container = ""

    def start(self) -> ContainerEngine:
        self.container = subprocess.run(
            ["buildah", "from", "--pull-never", self.image],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        env = [f"--env={k}={v}" for k, v in self.spec.environ({}).items()]
        command = [
            "buildah", "run", "--isolation", "chroot", "--network", "host",
            "--volume", f"{self.model}:{MODEL_MOUNT}:ro", *env,
            self.container, "--", *self.spec.argv("python"),
        ]  # fmt: skip
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.started_at = time.monotonic()
        return self

    def remove(self) -> None:
        if self.container:
            subprocess.run(["buildah", "rm", self.container], check=False, capture_output=True)
            self.container = ""
