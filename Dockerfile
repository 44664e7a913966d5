# riskd in a slim, non-root image, installed the way `make run` installs it.
#
#   docker build -t riskd .
#   docker run --rm -p 8787:8787 riskd                       # replays the bundled tape
#   docker run --rm -p 8787:8787 -v "$PWD/my.toml:/etc/riskd/riskd.toml:ro" riskd
#
# Config: /etc/riskd/riskd.toml (the image holds config/riskd.toml there; mount yours
# over it). RISKD_<SECTION>__<KEY> environment variables override it, e.g.
# RISKD_PUBLISHER__HTTP__SECRET, or mount a file and set [publisher.http] secret_file.
# Relative paths in the config resolve under /var/lib/riskd: the audit log and state
# go to /var/lib/riskd/var (a volume in docker-compose.yml); the bundled tapes are at
# /var/lib/riskd/data.
# `docker stop` sends SIGTERM: riskd (PID 1, exec form) stops its feed, publishes the
# final batch, flushes the audit log and exits 0 within 5 s, inside Docker's 10 s grace.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
# A C compiler for the one compiled part of riskd (setup.py: the Polymarket codec's
# store); only this stage has it, the image takes the built venv.
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml setup.py README.md ./
COPY riskd ./riskd
# Makefile's install (a venv, pip upgraded, the project from pyproject.toml), without
# the test/plot/dev extras and not editable: the image carries no source tree. The
# fast extra is uvloop, which `riskd run` uses when it is installed.
RUN python -m venv /opt/riskd \
 && /opt/riskd/bin/pip install --quiet --upgrade pip \
 && /opt/riskd/bin/pip install --quiet ".[fast]"

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/riskd/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    RISKD_SERVER__HOST=0.0.0.0
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/riskd \
      --shell /usr/sbin/nologin riskd \
 && mkdir -p /etc/riskd /var/lib/riskd/var \
 && chown -R riskd:riskd /var/lib/riskd
COPY --from=build /opt/riskd /opt/riskd
COPY data /opt/riskd/share/data
COPY config/riskd.toml /etc/riskd/riskd.toml
WORKDIR /var/lib/riskd
RUN ln -s /opt/riskd/share/data data
USER riskd
# Compile the model's kernels into riskd's cache (~/.cache/riskd, riskd/jit.py) at build
# time, so that a container start loads machine code instead of compiling it.
RUN riskd backtest data/tapes/fed_dec2025 > /dev/null \
 && python -c "from riskd.config import Settings; from riskd.engine import compile_kernels; compile_kernels(Settings())"
EXPOSE 8787
# /healthz answers 200 while the daemon's loop runs. Another port: set RISKD_HEALTHCHECK_URL.
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ.get('RISKD_HEALTHCHECK_URL', 'http://127.0.0.1:8787/healthz'), timeout=2)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["riskd"]
CMD ["run", "-c", "/etc/riskd/riskd.toml"]
