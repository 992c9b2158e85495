# An agent replica: agent-shim (PID 1) wrapping the demo agent. The binary is
# built on the host (docker/build-binaries.sh). Build context: docker/.
ARG BASE_IMAGE=logdrain-base:bookworm
FROM ${BASE_IMAGE}
COPY ensure-runtime.sh agent-entrypoint.sh bin/agent-shim demo-agent/demo_agent.py /opt/logdrain/
RUN sh /opt/logdrain/ensure-runtime.sh python3 \
    && ln -s /opt/logdrain/agent-shim /usr/local/bin/agent-shim \
    && agent-shim --version \
    && useradd --uid 10002 --no-create-home --home-dir /opt/logdrain --shell /usr/sbin/nologin agent \
    && mkdir -p /var/lib/demo-agent/ledger \
    && chown agent:agent /var/lib/demo-agent/ledger
USER agent
ENTRYPOINT ["sh", "/opt/logdrain/agent-entrypoint.sh"]
CMD ["python3", "/opt/logdrain/demo_agent.py"]
