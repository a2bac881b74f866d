# pyraftkv node image: `make image` (docker or podman), then see compose.yaml and
# deploy/kubernetes/. The entrypoint writes cluster.toml from the container's stable
# name (kv-0, kv-1, ...) and runs `kv serve`; see deploy/entrypoint.sh for its settings.
FROM python:3.12-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY consensus consensus
COPY kvstore kvstore
RUN pip install --no-cache-dir --prefix=/install '.[server]'

FROM python:3.12-slim
COPY --from=build /install /usr/local
COPY deploy/entrypoint.sh /usr/local/bin/kv-entrypoint
RUN useradd --system --uid 10001 --user-group --home-dir /data --no-create-home kv \
    && mkdir -p /data && chown kv:kv /data
USER 10001:10001
ENV KV_DATA_DIR=/data \
    KV_CLIENT_PORT=8001 \
    KV_PEER_PORT=7001 \
    KV_LISTEN_HOST=0.0.0.0 \
    KV_LOG_FORMAT=json \
    PYTHONUNBUFFERED=1
VOLUME ["/data"]
EXPOSE 8001 7001
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["kv-entrypoint", "healthcheck"]
ENTRYPOINT ["kv-entrypoint"]
CMD []
