# logdrain-gateway, from a binary built on the host (docker/build-binaries.sh).
# Build context: docker/. Works with the classic builder and with BuildKit.
# Few instructions on purpose: each one costs a container commit in the
# classic builder.
ARG BASE_IMAGE=logdrain-base:bookworm
FROM ${BASE_IMAGE}
COPY ensure-runtime.sh bin/logdrain-gateway /opt/logdrain/
# `--version` fails the build right here if the binary needs a newer glibc
# than the base image has (build on an older system, or pick a newer BASE_IMAGE).
RUN sh /opt/logdrain/ensure-runtime.sh curl \
    && ln -s /opt/logdrain/logdrain-gateway /usr/local/bin/logdrain-gateway \
    && logdrain-gateway --version \
    && useradd --uid 10001 --no-create-home --home-dir /var/lib/logdrain --shell /usr/sbin/nologin logdrain \
    && mkdir -p /var/lib/logdrain /run/logdrain-token \
    && chown logdrain:logdrain /var/lib/logdrain /run/logdrain-token
USER logdrain
ENV LOGDRAIN_DATA_DIR=/var/lib/logdrain
ENTRYPOINT ["logdrain-gateway"]
CMD ["serve"]
