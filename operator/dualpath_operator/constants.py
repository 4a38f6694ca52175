"""Names shared by the API, the CRD generator, the children builders and the operator."""

from __future__ import annotations

GROUP = "dualpath.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "DualPathCluster"
PLURAL = "dualpathclusters"
SINGULAR = "dualpathcluster"
SHORT_NAMES = ("dpc",)
CRD_NAME = f"{PLURAL}.{GROUP}"

# Server-side apply field manager: every field the operator sets is owned under this name,
# so kubectl edits by people (other managers) are visible as conflicts we force back.
FIELD_MANAGER = "dualpath-operator"

# Labels on every child; the operator finds and watches its children by these.
LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_PART_OF = "app.kubernetes.io/part-of"
LABEL_CLUSTER = "dualpath.io/cluster"
LABEL_ROLE = "dualpath.io/role"
# On every engine pod, managed or attached: the engine's role (prefill | decode). With
# dualpath.io/cluster it is the whole attach-mode convention (README "Attached engines").
LABEL_ENGINE = "dualpath.io/engine"
# An attached engine's HTTP port when its container has no port named "http".
ANNOTATION_ENGINE_PORT = "dualpath.io/engine-port"
MANAGED_BY_VALUE = "dualpath-operator"

# Pod-template annotation whose change rolls the pods when the resolved config changes.
ANNOTATION_CONFIG_HASH = "dualpath.io/config-hash"
ANNOTATION_SPEC_GENERATION = "dualpath.io/cluster-generation"
MULTUS_ANNOTATION = "k8s.v1.cni.cncf.io/networks"

CONFIG_FILE_NAME = "dualpath.json"
CONFIG_MOUNT_DIR = "/etc/dualpath"
# Beside the config mount, not inside it: a mount point inside a read-only ConfigMap volume
# cannot be created by every runtime.
TLS_MOUNT_DIR = "/etc/dualpath-tls"

DEFAULT_IMAGE = "docker.io/dualpath/dualpath:0.1.0"
# The image's non-root user and group (Dockerfile USER, hack/image-build.sh APP_UID): pods
# name it numerically so the kubelet can verify runAsNonRoot without reading the image.
APP_UID = 65532
