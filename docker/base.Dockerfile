# The local base image every Wakeline image builds FROM: Debian 12 + Python 3.11 + redis-server.
# Needs only a Debian mirror: with ROOTFS=wakeline/rootfs:bookworm (a debootstrap'd root file
# system imported with `docker import`, docs/deploy.md) no image registry is involved at all.
#   docker build --network host -f docker/base.Dockerfile --build-arg ROOTFS=wakeline/rootfs:bookworm -t wakeline/base .
ARG ROOTFS=debian:bookworm-slim
FROM ${ROOTFS}
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends python3 python3-venv python3-pip redis-server \
      libsndfile1 libgomp1 ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv
# a TLS-intercepting proxy's CA, when the build host needs one (docker/wheelhouse/extra-ca.crt)
COPY docker/wheelhouse/README.md docker/wheelhouse/extra-ca.cr[t] /tmp/wheelhouse/
RUN if [ -f /tmp/wheelhouse/extra-ca.crt ]; then \
      cp /tmp/wheelhouse/extra-ca.crt /usr/local/share/ca-certificates/extra-ca.crt && update-ca-certificates; \
    fi; rm -rf /tmp/wheelhouse
ENV PATH=/opt/venv/bin:$PATH PIP_CERT=/etc/ssl/certs/ca-certificates.crt
WORKDIR /app
