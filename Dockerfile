# syntax=docker/dockerfile:1
# The control plane's image: gunicorn serving wsgi:app on port 8000 as an unprivileged
# user, behind docker/entrypoint.sh (waits for the database, migrates once, then runs
# the command).  The Python version follows pyproject.toml's.
ARG PYTHON_VERSION=3.11

# Wheels of every pinned dependency, built apart so that the final image carries
# neither pip's cache nor anything a build needed.
FROM python:${PYTHON_VERSION}-slim-bookworm AS builder
WORKDIR /build
COPY requirements.txt .
RUN pip wheel --no-cache-dir --wheel-dir /wheels -r requirements.txt

FROM python:${PYTHON_VERSION}-slim-bookworm
LABEL org.opencontainers.image.title="Reverse Proxy Control Center" \
      org.opencontainers.image.description="Control plane for fleets of Nginx, Caddy and Traefik reverse proxies reached over SSH" \
      org.opencontainers.image.version="0.1.0"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    APP_ENV=production \
    BIND=0.0.0.0:8000 \
    PROMETHEUS_MULTIPROC_DIR=/run/rpcc/metrics

# The dependencies are installed from the builder's wheels only (no index): the
# image holds exactly what requirements.txt pins.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    --mount=type=bind,source=requirements.txt,target=/tmp/requirements.txt \
    python -m venv /opt/venv \
    && pip install --no-cache-dir --no-index --find-links=/wheels -r /tmp/requirements.txt

# The code belongs to root and is read-only to the app's user, who writes only its
# instance folder (a volume) and the metrics of its gunicorn workers.
RUN groupadd --system --gid 10001 rpcc \
    && useradd --system --uid 10001 --gid rpcc --home-dir /app/instance --no-create-home \
       --shell /usr/sbin/nologin rpcc \
    && mkdir -p /app/instance /run/rpcc/metrics \
    && chown rpcc:rpcc /app/instance /run/rpcc/metrics
WORKDIR /app
COPY config.py wsgi.py gunicorn.conf.py ./
COPY migrations ./migrations
COPY nginx_templates ./nginx_templates
COPY app ./app
COPY docker/entrypoint.sh ./docker/entrypoint.sh

USER 10001:10001
EXPOSE 8000
# /health answers 503 while the database is out of reach: the container is then
# unhealthy, and the load balancer's health checks see the same.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('BIND', '0.0.0.0:8000').rsplit(':', 1)[1] + '/health', timeout=4)"]
ENTRYPOINT ["/app/docker/entrypoint.sh"]
CMD ["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
