//! `logdrain-gateway tail`: a client that prints an agent's lines live.
//!
//! Each line is prefixed with the agent-server id and stream it came from, or
//! printed as one JSON object per line with `--json`. A multi-line event
//! (one line on the wire holding `\n`) prints each of its lines with the
//! same prefix, the stream marked `+` after its first line
//! (`replica-1 stderr+   File ...`), so no line of an event reads as an
//! event of its own. This module only reads from a gateway; it never writes
//! to one.

use std::io::Write;

use logdrain::client::{self, ClientTls, PemError, TlsError};
use logdrain::v1::drain_client::DrainClient;
use logdrain::v1::{Origin, StreamKind, TailLine, TailRequest};
use tonic::codegen::http::uri::InvalidUri;
use tonic::transport::Uri;

use crate::config::TailConfig;

#[derive(Debug, thiserror::Error)]
pub enum TailError {
    #[error("the gateway URL {url} is not usable: {reason}")]
    BadUrl { url: String, reason: String },
    #[error(transparent)]
    Pem(#[from] PemError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot connect to the gateway at {url}: {reason}; check --gateway / LOGDRAIN_GATEWAY (its --grpc-listen address) and that the gateway runs")]
    Connect { url: String, reason: String },
    #[error("{0}")]
    Token(String),
    #[error("the gateway refused the tail: {0}")]
    Refused(String),
    #[error("the tail stream broke: {0}")]
    Stream(String),
    #[error("cannot write to stdout: {0}")]
    Output(std::io::Error),
}

/// Follows the agent until the gateway ends the stream or `stop` resolves.
pub async fn run(
    config: TailConfig,
    out: &mut (dyn Write + Send),
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), TailError> {
    let url = config.gateway.to_string();
    let uri: Uri = url.parse().map_err(|e: InvalidUri| TailError::BadUrl {
        url: url.clone(),
        reason: e.to_string(),
    })?;
    let tls = ClientTls::load(
        config.gateway_ca_file.as_deref(),
        config.client_cert.as_deref(),
        config.client_key.as_deref(),
    )?;
    let channel =
        client::endpoint(&uri, &tls)?
            .connect()
            .await
            .map_err(|e| TailError::Connect {
                url: url.clone(),
                reason: client::connect_failure(&uri, &e),
            })?;
    let mut client =
        DrainClient::new(channel).max_decoding_message_size(logdrain::MAX_MESSAGE_BYTES);
    let token = config.token.required().map_err(TailError::Token)?;
    let mut stream = client
        .tail(TailRequest {
            token,
            agent_id: config.agent_id.clone(),
            local_only: false,
        })
        .await
        .map_err(|status| {
            let https = uri.scheme_str() == Some("https");
            let detail = client::status_detail(&status);
            TailError::Refused(format!(
                "{} ({detail}){}{}",
                client::code_name(status.code()),
                client::tls_hint(&detail),
                client::closed_at_opening_hint(&status, https, tls.identity.is_some())
            ))
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
            Err(status) => return Err(TailError::Stream(client::status_detail(&status))),
        }
    }
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
        let mut marker = "";
        for text in text.split('\n') {
            writeln!(out, "{} {stream}{marker} {text}", item.agent_server_id)?;
            marker = "+";
        }
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
    fn a_multi_line_event_prints_each_line_prefixed_and_continuations_marked() {
        let mut event = item();
        if let Some(line) = &mut event.line {
            line.data = bytes::Bytes::from_static(
                b"Traceback (most recent call last):\n  File \"a.py\", line 1\n\nValueError: x",
            );
        }
        let mut out = Vec::new();
        write_line(&mut out, &event, false).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "replica-1 stderr Traceback (most recent call last):\n\
             replica-1 stderr+   File \"a.py\", line 1\n\
             replica-1 stderr+ \n\
             replica-1 stderr+ ValueError: x\n"
        );
        // With --json, the event is one object, its newlines escaped.
        let mut out = Vec::new();
        write_line(&mut out, &event, true).unwrap();
        assert_eq!(out.iter().filter(|b| **b == b'\n').count(), 1);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert!(v["message"]
            .as_str()
            .unwrap()
            .ends_with("\n\nValueError: x"));
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
