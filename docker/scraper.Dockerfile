# The metrics scraper: polls /metrics of every gateway (docker/scraper).
# Build context: docker/.
ARG BASE_IMAGE=logdrain-base:bookworm
FROM ${BASE_IMAGE}
COPY ensure-runtime.sh scraper/scrape.py /opt/logdrain/
RUN sh /opt/logdrain/ensure-runtime.sh python3 curl \
    && mkdir -p /var/lib/scraper && chown nobody /var/lib/scraper
USER nobody
ENTRYPOINT ["python3", "/opt/logdrain/scrape.py"]
