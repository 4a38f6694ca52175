# syntax=docker/dockerfile:1
# The DualPath image: one image for every component, `dualpath operator|agent|controller`
# (or the dualpath-operator / dualpath-agent / dualpath-controller entrypoints).
#
#   docker build -t docker.io/dualpath/dualpath:0.1.0 .
#   kind load docker-image docker.io/dualpath/dualpath:0.1.0 --name dualpath
#
# Machines without Docker or a registry build the same image with hack/image-build.sh
# (debootstrap + buildah); a unit test keeps the two in step (base packages, venv path,
# user, entrypoint, NIXL pins).

ARG DEBIAN=debian:bookworm-slim

# --- build: the project wheel and a venv with its runtime dependencies ------------------
FROM ${DEBIAN} AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/dualpath
WORKDIR /src
COPY pyproject.toml README.md ./
COPY common common
COPY proto proto
COPY operator operator
COPY agents agents
COPY traffic_controller traffic_controller
COPY sim sim
COPY cli cli
COPY local local
COPY router router
COPY engines engines
RUN /opt/dualpath/bin/pip install --no-cache-dir --disable-pip-version-check . \
 # NIXL (UCX + POSIX backends) without its declared CUDA torch dependency (several GB).
 && /opt/dualpath/bin/pip install --no-cache-dir --disable-pip-version-check --no-deps \
      nixl-cu12==1.5.1 nixl==1.5.1

# --- runtime ------------------------------------------------------------------------------
FROM ${DEBIAN}
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && echo 'dualpath:x:65532:65532:DualPath:/home/dualpath:/usr/sbin/nologin' >>/etc/passwd \
 && echo 'dualpath:x:65532:' >>/etc/group \
 && mkdir -p /home/dualpath && chown 65532:65532 /home/dualpath
COPY --from=build /opt/dualpath /opt/dualpath
COPY hack/image/bin/ /usr/local/bin/
ENV PATH=/opt/dualpath/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1 \
    HOME=/home/dualpath
LABEL org.opencontainers.image.title=dualpath \
      org.opencontainers.image.source=https://github.com/dualpath/dualpath
USER 65532:65532
WORKDIR /home/dualpath
ENTRYPOINT ["dualpath"]
CMD ["--help"]
