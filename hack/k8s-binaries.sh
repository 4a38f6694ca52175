#!/usr/bin/env bash
# Builds the Kubernetes server binaries that integration tests run against, from Debian's
# `kubernetes` source package (no registry here ships them), and caches them outside the
# checkout keyed by source version so later runs on the same machine skip the ~10 min build.
#
# Usage: hack/k8s-binaries.sh            -> prints the bin dir on the last line of stdout
# Env:   DUALPATH_K8S_CACHE (default ~/.cache/dualpath/k8s)
#        DUALPATH_K8S_WHAT  (default "kube-apiserver kube-controller-manager")
# Recipe and pitfalls: ../shared/notes/local-cluster.md
set -euo pipefail

CACHE=${DUALPATH_K8S_CACHE:-$HOME/.cache/dualpath/k8s}
WHAT=${DUALPATH_K8S_WHAT:-"kube-apiserver kube-controller-manager"}
log() { printf '[k8s-binaries] %s\n' "$*" >&2; }

mkdir -p "$CACHE"
# One build at a time per cache: parallel test runs wait for the first one's binaries.
exec 9>"$CACHE/.lock"
flock 9

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

ensure_debs() {
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    as_root apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}" >&2
  fi
}

ensure_debs etcd-server

# etcd-server's postinst may start a system etcd on 2379; tests use their own ports, but
# stop the system one so it does not hold memory or ports it does not need.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet etcd 2>/dev/null; then
  as_root systemctl stop etcd || true
fi

enable_deb_src() {
  local f=/etc/apt/sources.list.d/debian.sources
  if [ -f "$f" ] && ! grep -q '^Types:.*deb-src' "$f"; then
    log "enabling deb-src in $f"
    as_root sed -i 's/^Types: deb$/Types: deb deb-src/' "$f"
    as_root apt-get update -qq >&2
  fi
}

all_present() {
  local dir=$1
  for b in $WHAT; do [ -x "$dir/$b" ] || return 1; done
}

# The cache key is the Debian source version; resolve it without network when cached.
if [ -f "$CACHE/current" ] && all_present "$(cat "$CACHE/current")"; then
  cat "$CACHE/current"
  exit 0
fi

ensure_debs golang-go rsync jq golang-github-modern-go-reflect2-dev dpkg-dev
enable_deb_src
VERSION=$(apt-cache showsrc kubernetes | awk '/^Version:/{print $2; exit}')
[ -n "$VERSION" ] || { log "cannot find Debian source package 'kubernetes'"; exit 1; }
BIN="$CACHE/$VERSION/bin"
if all_present "$BIN"; then
  echo "$BIN" > "$CACHE/current"
  echo "$BIN"
  exit 0
fi

WORK="$CACHE/$VERSION/src"
mkdir -p "$WORK" "$BIN"
cd "$WORK"
if [ ! -d tree ]; then
  log "fetching Debian source package kubernetes $VERSION"
  apt-get source --download-only kubernetes >&2
  tarball=$(ls kubernetes_*.orig.tar.* | head -n1)
  mkdir -p tree.tmp
  tar -xf "$tarball" -C tree.tmp --strip-components=1
  # Vendored reflect2 1.0.1 segfaults kube-apiserver under Go >= 1.18; use Debian's 1.0.2.
  rm -rf tree.tmp/vendor/github.com/modern-go/reflect2
  cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 tree.tmp/vendor/github.com/modern-go/reflect2
  rm -f tree.tmp/vendor/github.com/modern-go/reflect2/go.mod
  mv tree.tmp tree
fi
cd tree
targets=""
for b in $WHAT; do targets="$targets cmd/$b"; done
log "building$targets (about 3-5 min per binary on 2 cores)"
HOME="$WORK/home" GOFLAGS=-mod=vendor make WHAT="${targets# }" >&2
for b in $WHAT; do install -m 0755 "_output/bin/$b" "$BIN/$b"; done
echo "$BIN" > "$CACHE/current"
log "binaries cached in $BIN"
echo "$BIN"
