# One image for every safecity service: `docker run safecity safecity <service>`.
# Stage 1 builds a wheel and its dependencies; stage 2 is the slim runtime, non-root.
# PYTHON_IMAGE: any Debian-based Python 3.11+ image (the podman compose test builds a
# stand-in from Debian packages, see docs/compose.md).
ARG PYTHON_IMAGE=python:3.11-slim
# The broker's image (`target: broker`): MOSQUITTO_IMAGE plus safecity's guard plugin.
ARG MOSQUITTO_IMAGE=eclipse-mosquitto:2.0.18
FROM ${PYTHON_IMAGE} AS build
# The builder's own package index and CA bundle, when it has them (a PyPI mirror, a
# TLS-intercepting proxy's CA), or a local wheel directory mounted into the build
# (PIP_FIND_LINKS, with PIP_NO_INDEX=1 to use only it); unset, pip uses PyPI.
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_TRUSTED_HOST
ARG PIP_CERT
ARG PIP_FIND_LINKS
ARG PIP_NO_INDEX
WORKDIR /src
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# Dependencies first, in their own layer: a code change rebuilds only the project's wheel.
# Exactly the locked versions, each checked against its hash (`make lock` updates the lock).
COPY requirements.lock ./
RUN python -m venv /opt/safecity \
 && /opt/safecity/bin/pip install --require-hashes -r requirements.lock
COPY pyproject.toml README.md LICENSE ./
COPY safecity ./safecity
COPY control ./control
COPY broker ./broker
COPY ingest ./ingest
COPY api ./api
COPY simulators ./simulators
COPY edge ./edge
COPY alerts ./alerts
COPY notify ./notify
COPY rollups ./rollups
COPY dashboards ./dashboards
RUN /opt/safecity/bin/pip install --no-deps .

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="safecity" \
      org.opencontainers.image.description="Smart/safe-city telemetry platform services" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 safecity \
 && useradd --system --uid 10001 --gid safecity --home-dir /var/lib/safecity --create-home safecity
COPY --from=build /opt/safecity /opt/safecity
ENV PATH=/opt/safecity/bin:$PATH \
    PYTHONUNBUFFERED=1
WORKDIR /var/lib/safecity
USER safecity
# Every service answers health on its own port; HEALTHCHECK_URL names it (compose sets it
# per service; the default is the API's).
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=5 \
  CMD ["python", "-c", "import os,sys,urllib.request; sys.exit(0 if urllib.request.urlopen(os.environ.get('HEALTHCHECK_URL','http://127.0.0.1:8000/healthz'), timeout=2).status == 200 else 1)"]
CMD ["safecity", "--help"]

# The guard plugin (broker/plugin), compiled on the broker image's own system (musl on
# the eclipse-mosquitto image, glibc on a Debian stand-in) against Mosquitto's headers.
FROM ${MOSQUITTO_IMAGE} AS guard-build
USER root
# (A base that has the compiler and headers already, e.g. the podman test's stand-in,
# installs nothing.)
RUN if [ -e /usr/include/mosquitto_plugin.h ] && command -v gcc >/dev/null \
         && command -v make >/dev/null; then :; \
    elif command -v apk >/dev/null; then apk add --no-cache gcc musl-dev make mosquitto-dev; \
    else apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev make \
         mosquitto-dev libmosquitto-dev && rm -rf /var/lib/apt/lists/*; fi
COPY broker/plugin /src/plugin
RUN make -C /src/plugin OUT=/out

# The broker (compose, Kubernetes): Mosquitto with the guard where its config loads it
# (broker.guard.CONTAINER_GUARD), before the dynamic-security plugin.
FROM ${MOSQUITTO_IMAGE} AS broker
COPY --from=guard-build /out/safecity_guard.so /usr/lib/safecity_guard.so

# The scheduled backup's image (`docker compose --profile backup`, the Kubernetes CronJob):
# the runtime plus `influxd` from Debian's influxdb package, for its portable backup client.
FROM runtime AS backup
USER root
RUN apt-get update \
 && apt-get install -y --no-install-recommends influxdb \
 && rm -rf /var/lib/apt/lists/*
USER safecity
CMD ["safecity", "backup", "--help"]

# The default image (`build: .`, `docker build .`): the runtime above, unchanged.
FROM runtime
