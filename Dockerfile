# tim-recall: the worker (`run`, the default), and the same image runs `sandbox`, `publish`,
# `results` and `dlq`. Build: docker build -t tim-recall:local .
#
# Base images are pinned by tag; both stages must use the same one, since the venv built in the
# first is copied into the second and its interpreter link points at /usr/local/bin/python3.11.
# For reproducible production builds, pin by digest as well (python:3.11-slim@sha256:...).

FROM python:3.11-slim AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /src

COPY pyproject.toml README.md ./
COPY consumer ./consumer
COPY schemas ./schemas

# One wheel for the project plus wheels of its dependencies, then a venv from those wheels only.
RUN python -m venv /opt/venv \
    && pip wheel --no-cache-dir --wheel-dir /wheels . \
    && /opt/venv/bin/pip install --no-cache-dir --no-index /wheels/*.whl


FROM python:3.11-slim AS runtime

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH

RUN groupadd --system --gid 10001 tim \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin tim

COPY --from=builder /opt/venv /opt/venv

USER 10001:10001

# /healthz, /readyz and /metrics (RECALL_HTTP_PORT, default 9464).
EXPOSE 9464

# Liveness only (a broker outage must not restart the worker). There is no curl in the slim
# image, so the probe is python's stdlib; it follows RECALL_HTTP_PORT when that is overridden.
# The `sandbox` command serves no /healthz: docker-compose.yml gives it a healthcheck of its own.
HEALTHCHECK --interval=15s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('RECALL_HTTP_PORT', '9464'), timeout=3)"]

# Exec form: tim-recall is PID 1 and receives SIGTERM itself (it installs its own handler,
# finishes the call in flight and settles it before exiting).
ENTRYPOINT ["tim-recall"]
CMD ["run"]
