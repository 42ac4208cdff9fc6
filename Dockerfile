# syntax=docker/dockerfile:1
# One image for both roles:
#   docker run IMAGE pooler /etc/maitred/pooler.ini     the data plane
#   docker run IMAGE operator --all-namespaces          the control plane
# It runs as UID/GID 65532, the user the operator's pooler pods and the Helm chart's operator pod run as,
# and writes nothing outside the volumes a pod mounts (/tmp), so it runs with a read-only root filesystem.
#
#   docker build -t maitred:dev .

ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

# -- build: the maitred wheel from pyproject.toml, plus a wheel of every dependency ---------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
# The compiled hot path (setup.py, Cython) needs a C compiler and Python's headers: the official image has the
# headers, a Debian python3 gets them from python3-dev. Only this stage has them.
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends gcc libc6-dev \
 && { [ -e "$(python3 -c 'import sysconfig; print(sysconfig.get_path("include"))')/Python.h" ] \
      || apt-get install -y -qq --no-install-recommends python3-dev; } \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# What setuptools needs for the wheel (pyproject.toml names README.md as the long description, setup.py builds
# the compiled hot path); the tests, benchmarks and e2e harness stay out of the image.
COPY pyproject.toml setup.py README.md ./
COPY maitred/ maitred/
COPY pooler/ pooler/
COPY operator/pooler_operator/ operator/pooler_operator/
# CI=true: the image's hot path is compiled, or the build fails (no pure-Python fallback here).
RUN CI=true pip wheel --wheel-dir /wheels .

# -- runtime: the wheels installed, no compiler, no build tools, no pip cache ----------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ARG PYTHON_IMAGE
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="maitred" \
      org.opencontainers.image.description="A PostgreSQL connection-pooling tier for Kubernetes: an asyncio pooler and an operator that tunes it." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# Binary wheels only, from the build stage (bind-mounted, so they leave no layer behind); pip compiles the
# bytecode now, since nothing can write it at run time. setuptools and wheel are not needed to run.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --only-binary=:all: --find-links=/wheels maitred \
 && pip uninstall --yes setuptools wheel \
 && groupadd --system --gid 65532 maitred \
 && useradd --system --uid 65532 --gid 65532 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin maitred
USER 65532:65532
WORKDIR /tmp
ENTRYPOINT ["maitred"]
CMD ["--help"]
