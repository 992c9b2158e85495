# The CloudWatch Logs stand-in: moto_server (PyPI moto[server]) on port 5000.
# docker/base-image.sh puts moto into the base image; on another base image it
# is installed here (network needed). Build context: docker/.
ARG BASE_IMAGE=logdrain-base:bookworm
FROM ${BASE_IMAGE}
ARG MOTO_VERSION=5.2.5
COPY ensure-runtime.sh /opt/logdrain/
RUN MOTO_VERSION=${MOTO_VERSION} sh /opt/logdrain/ensure-runtime.sh moto curl
USER nobody
ENTRYPOINT ["/opt/moto/bin/moto_server", "--host", "0.0.0.0", "--port", "5000"]
