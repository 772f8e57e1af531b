# The local base image every Wakeline image builds FROM: Debian 12 + Python 3.11 + redis-server.
# Built from a Debian mirror (apt) only, so no public image registry is needed when BASE_ROOTFS
# is used (see docs/deploy.md: `debootstrap` a rootfs, `docker import` it as wakeline/rootfs).
#   docker build -f docker/base.Dockerfile --build-arg ROOTFS=wakeline/rootfs:bookworm -t wakeline/base .
ARG ROOTFS=debian:bookworm-slim
FROM ${ROOTFS}
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends python3 python3-venv python3-pip redis-server \
      libsndfile1 espeak-ng ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /app
