# Image for the worker, flower and producer services of docker-compose.yml.
#
# The package is installed (site-packages, with its compiled C hot path), not run from a copy of the source:
# nothing sets PYTHONPATH and the working directory holds no source, so `celery -A workers` (which puts the
# working directory on sys.path) and `ocycle-dist` import the installed modules.
# No registry at hand? deploy/make-base-images.sh makes python:3.11-slim from Debian packages.

# ---- build: the wheel of this repository, its C hot path compiled (gcc stays in this stage) ----
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY deploy/ca-certificates/ /usr/local/share/ca-certificates/
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates gcc libc6-dev \
    && update-ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY . /src
RUN PIP_CERT=/etc/ssl/certs/ca-certificates.crt pip wheel --no-deps -w /wheels /src

# ---- the image ----
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY deploy/ca-certificates/ /usr/local/share/ca-certificates/
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libsndfile1 \
    && update-ca-certificates \
    && rm -rf /var/lib/apt/lists/*
# the dependencies first, from pyproject.toml alone: a change to the source does not install them again
COPY pyproject.toml /tmp/pyproject.toml
RUN python -c "import tomllib; extras = tomllib.load(open('/tmp/pyproject.toml', 'rb'))['project']['optional-dependencies']; \
print('\n'.join(r for x in ('celery', 'audio', 'model', 'flower', 'metrics') for r in extras[x]))" > /tmp/requirements.txt \
    && PIP_CERT=/etc/ssl/certs/ca-certificates.crt pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt /tmp/pyproject.toml
COPY --from=build /wheels /wheels
RUN pip install --no-deps /wheels/*.whl && rm -rf /wheels \
    && python -c "from ocycle_dist.hotpath import appender_class; assert appender_class().__module__ == 'ocycle_dist._speedups', 'the C hot path was not built'"

# Run unprivileged; /archive and /spool are created here so fresh named volumes inherit the owner.
RUN useradd --create-home --uid 10001 ocycle \
    && mkdir -p /archive /spool \
    && chown ocycle:ocycle /archive /spool
USER ocycle
WORKDIR /home/ocycle

CMD ["celery", "-A", "workers", "worker", "--loglevel=INFO"]
