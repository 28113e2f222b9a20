# syntax=docker/dockerfile:1
# The fax-outbox image: the relay, Celery workers and beat, the webhook receiver, Flower and the
# mintfax simulator all run from it (docker-compose.yml). Slim, non-root, the [worker] extra.
#   docker build -t fax-outbox .
ARG PYTHON_VERSION=3.12

# Wheels are built apart so that the image carries no build tools, caches or sources it does
# not run.
FROM python:${PYTHON_VERSION}-slim AS wheels
WORKDIR /src
COPY pyproject.toml README.md ./
COPY outbox outbox
COPY workers workers
COPY migrations migrations
COPY mintfax_sandbox mintfax_sandbox
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[worker]"

FROM python:${PYTHON_VERSION}-slim
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN --mount=type=bind,from=wheels,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels "fax-outbox[worker]" \
    && useradd --create-home --uid 10001 --shell /usr/sbin/nologin faxout
# Never root: a compromised process must not own the image. Beat keeps its schedule file in
# the home directory (the only writable place).
USER faxout
WORKDIR /home/faxout
CMD ["faxout", "--help"]
