//! `logdrain-gateway tail`: a client that prints an agent's lines live.
//!
//! Each line is prefixed with the agent-server id and stream it came from, or
//! printed as one JSON object per line with `--json`. This module only reads
//! from a gateway; it never writes to one.

use std::io::Write;

use logdrain::v1::drain_client::DrainClient;
use logdrain::v1::{Origin, StreamKind, TailLine, TailRequest};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::config::TailConfig;

#[derive(Debug, thiserror::Error)]
pub enum TailError {
    #[error("the gateway URL {url} is not usable: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("cannot connect to the gateway at {url}: {reason}; check --gateway / LOGDRAIN_GATEWAY and that the gateway runs")]
    Connect { url: String, reason: String },
    #[error("the gateway refused the tail: {0}")]
    Refused(String),
    #[error("the tail stream broke: {0}")]
    Stream(String),
    #[error("cannot write to stdout: {0}")]
    Output(std::io::Error),
    #[error("cannot read {flag} {path:?}: {source}; point it at a readable PEM file")]
    ReadPem {
        flag: &'static str,
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{flag} {path:?} holds no PEM block (\"-----BEGIN ...\"); give the file in PEM form")]
    NotPem {
        flag: &'static str,
        path: std::path::PathBuf,
    },
}

/// Follows the agent until the gateway ends the stream or `stop` resolves.
pub async fn run(
    config: TailConfig,
    out: &mut (dyn Write + Send),
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), TailError> {
    let url = config.gateway.to_string();
    let mut endpoint = Endpoint::from_shared(url.clone()).map_err(|e| TailError::BadUrl {
        url: url.clone(),
        reason: e.to_string(),
    })?;
    if config.gateway.scheme() == "https" {
        let mut tls = ClientTlsConfig::new().with_webpki_roots();
        if let Some(path) = &config.gateway_ca_file {
            tls = tls.ca_certificate(Certificate::from_pem(read_pem("--gateway-ca-file", path)?));
        }
        if let (Some(cert), Some(key)) = (&config.client_cert, &config.client_key) {
            tls = tls.identity(Identity::from_pem(
                read_pem("--client-cert", cert)?,
                read_pem("--client-key", key)?,
            ));
        }
        endpoint = endpoint.tls_config(tls).map_err(|e| TailError::BadUrl {
            url: url.clone(),
            reason: e.to_string(),
        })?;
    }
    let channel = endpoint.connect().await.map_err(|e| TailError::Connect {
        url: url.clone(),
        reason: error_chain(&e),
    })?;
    let mut client =
        DrainClient::new(channel).max_decoding_message_size(logdrain::MAX_MESSAGE_BYTES);
    let mut stream = client
        .tail(TailRequest {
            token: config.token.clone(),
            agent_id: config.agent_id.clone(),
            local_only: false,
        })
        .await
        .map_err(|s| {
            let without_identity =
                config.gateway.scheme() == "https" && config.client_cert.is_none();
            TailError::Refused(refusal(&s, without_identity))
        })?
        .into_inner();
    tokio::pin!(stop);
    loop {
        let next = tokio::select! {
            _ = &mut stop => return Ok(()),
            next = stream.message() => next,
        };
        match next {
            Ok(Some(line)) => match write_line(out, &line, config.json) {
                Ok(()) => {}
                // The reader went away (e.g. `| head`): a normal end.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
                Err(e) => return Err(TailError::Output(e)),
            },
            Ok(None) => return Ok(()),
            Err(status) => return Err(TailError::Stream(status.message().to_string())),
        }
    }
}

/// Why the gateway refused, with the TLS cause when there is one (a refused
/// client certificate shows only in the status's sources, if at all: the
/// alert can be lost in the race between the connection's end and the
/// request, hence the hint for a TLS connection `without_identity`).
fn refusal(status: &tonic::Status, without_identity: bool) -> String {
    let cause = match std::error::Error::source(status) {
        Some(source) => error_chain(source),
        None => status.message().to_string(),
    };
    let dropped = matches!(status.code(), tonic::Code::Cancelled | tonic::Code::Unknown);
    let hint = if cause.contains("CertificateRequired") {
        "; the gateway requires a client certificate: pass --client-cert and --client-key"
    } else if cause.contains("UnknownCA") || cause.contains("BadCertificate") {
        "; the gateway does not accept this client certificate: use one signed by its client CA"
    } else if without_identity && dropped {
        "; if the gateway requires client certificates (mutual TLS), pass --client-cert and \
         --client-key"
    } else {
        ""
    };
    format!("{cause}{hint}")
}

/// Reads a PEM file given on the command line.
fn read_pem(flag: &'static str, path: &std::path::Path) -> Result<Vec<u8>, TailError> {
    let pem = std::fs::read(path).map_err(|source| TailError::ReadPem {
        flag,
        path: path.to_path_buf(),
        source,
    })?;
    if !pem.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(TailError::NotPem {
            flag,
            path: path.to_path_buf(),
        });
    }
    Ok(pem)
}

/// An error with its sources, so a TLS failure names the certificate
/// problem rather than only "transport error".
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

fn write_line(out: &mut (dyn Write + Send), item: &TailLine, json: bool) -> std::io::Result<()> {
    let Some(line) = &item.line else {
        return Ok(());
    };
    let stream = StreamKind::try_from(line.stream)
        .unwrap_or(StreamKind::Stdout)
        .name();
    let text = String::from_utf8_lossy(&line.data);
    if json {
        let origin = if line.origin == Origin::Shim as i32 {
            "shim"
        } else {
            "agent"
        };
        let value = serde_json::json!({
            "agent_server_id": item.agent_server_id,
            "stream": stream,
            "timestamp_ns": line.timestamp_ns,
            "origin": origin,
            "part": line.part,
            "more_parts": line.more_parts,
            "message": text,
            "gateway": item.gateway,
        });
        writeln!(out, "{value}")?;
    } else {
        writeln!(out, "{} {stream} {text}", item.agent_server_id)?;
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use logdrain::v1::Line;

    fn item() -> TailLine {
        TailLine {
            agent_server_id: "replica-1".into(),
            gateway: "10.0.0.1:50051".into(),
            line: Some(Line {
                timestamp_ns: 5,
                stream: StreamKind::Stderr as i32,
                data: bytes::Bytes::from_static(b"hello \xff"),
                origin: Origin::Agent as i32,
                part: 0,
                more_parts: false,
            }),
        }
    }

    #[test]
    fn text_output_is_prefixed_with_replica_and_stream() {
        let mut out = Vec::new();
        write_line(&mut out, &item(), false).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "replica-1 stderr hello \u{fffd}\n"
        );
    }

    #[test]
    fn json_output_has_one_object_per_line() {
        let mut out = Vec::new();
        write_line(&mut out, &item(), true).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["agent_server_id"], "replica-1");
        assert_eq!(v["stream"], "stderr");
        assert_eq!(v["origin"], "agent");
    }
}
