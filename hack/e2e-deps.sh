#!/usr/bin/env bash
# Installs the Debian packages the e2e tier needs on this machine: container runtime
# (containerd + runc), CNI plugins, the image tools (buildah, debootstrap), iptables for
# kube-proxy, dnsmasq for cluster DNS, a static C toolchain for the pause image, and the
# five Kubernetes binaries (built once from Debian's source package by hack/k8s-binaries.sh).
#
# Usage: hack/e2e-deps.sh   -> prints the Kubernetes bin dir on the last line of stdout
# Idempotent: does nothing (and touches no network) when everything is present.
# Recipe and pitfalls: ../shared/notes/local-cluster.md
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(containerd runc containernetworking-plugins buildah busybox-static iptables
  dnsmasq-base debootstrap gcc libc6-dev openssl iproute2 util-linux etcd-server)
log() { printf '[e2e-deps] %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
for p in "${PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  apt_get() { DEBIAN_FRONTEND=noninteractive as_root apt-get -o DPkg::Lock::Timeout=600 "$@"; }
  apt_get update -qq >&2
  # policy-rc.d keeps containerd's own system service from starting: the tests run their
  # own containerds, with their own sockets and state.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | as_root tee /usr/sbin/policy-rc.d >/dev/null
    as_root chmod 0755 /usr/sbin/policy-rc.d
    trap 'as_root rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt_get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

# The five binaries of a node + control plane; cached by Debian source version.
DUALPATH_K8S_WHAT="kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy" \
  bash hack/k8s-binaries.sh
