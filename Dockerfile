# costpipe image for docker-compose.yml: one image, one `costpipe <command>` per service.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY costpipe ./costpipe
COPY collectors ./collectors
COPY streams ./streams
COPY schemas ./schemas
COPY analytics ./analytics
COPY lake ./lake
RUN pip install . \
    && useradd --create-home --uid 10001 costpipe \
    && mkdir -p /data/lake /data/state \
    && chown -R costpipe /data

USER costpipe
ENV COSTPIPE_STATE_DIR=/data/state \
    COSTPIPE_LAKE__LOCATION=/data/lake
VOLUME ["/data/lake"]
CMD ["costpipe", "--help"]
