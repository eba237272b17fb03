# Image for the worker, flower and producer services of docker-compose.yml.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/app

RUN apt-get update \
    && apt-get install -y --no-install-recommends libsndfile1 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY . /app
# gcc only to build write()'s C hot path (ocycle_dist/_speedups.c), then removed
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && pip install ".[celery,audio,model,flower]" \
    && apt-get purge -y gcc libc6-dev && apt-get autoremove -y \
    && rm -rf /var/lib/apt/lists/*

# Run unprivileged; /archive is created here so a fresh named volume inherits the owner.
RUN useradd --create-home --uid 10001 ocycle \
    && mkdir -p /archive /spool \
    && chown ocycle:ocycle /archive /spool
USER ocycle

CMD ["celery", "-A", "workers", "worker", "--loglevel=INFO"]
