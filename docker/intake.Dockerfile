# logdrain-test-intake: the Datadog, Sentry and New Relic stand-ins and their
# /_intake control API, from a binary built on the host. Build context: docker/.
ARG BASE_IMAGE=logdrain-base:bookworm
FROM ${BASE_IMAGE}
COPY ensure-runtime.sh bin/logdrain-test-intake /opt/logdrain/
RUN sh /opt/logdrain/ensure-runtime.sh curl \
    && ln -s /opt/logdrain/logdrain-test-intake /usr/local/bin/logdrain-test-intake \
    && logdrain-test-intake --version
USER nobody
ENTRYPOINT ["logdrain-test-intake"]
CMD ["--listen", "0.0.0.0:8080"]
