# riskd: the same install path as `make run`, in a slim, non-root image.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY riskd ./riskd
RUN python -m venv /opt/riskd && /opt/riskd/bin/pip install --no-cache-dir .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home /var/lib/riskd riskd \
 && mkdir -p /etc/riskd /var/lib/riskd && chown riskd /var/lib/riskd
COPY --from=build /opt/riskd /opt/riskd
COPY data /opt/riskd/share/data
COPY config/riskd.toml /etc/riskd/riskd.toml
WORKDIR /var/lib/riskd
# The default config replays the bundled tape; mount your own at /etc/riskd/riskd.toml.
RUN ln -s /opt/riskd/share/data data
ENV PATH=/opt/riskd/bin:$PATH RISKD_SERVER__HOST=0.0.0.0
USER riskd
EXPOSE 8787
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
  CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8787/healthz', timeout=2)" || exit 1
STOPSIGNAL SIGTERM
ENTRYPOINT ["riskd"]
CMD ["run", "-c", "/etc/riskd/riskd.toml"]
