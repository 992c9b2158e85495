//! How a client reaches a gateway's gRPC listener (the shim, `--check` and
//! `tail`): the endpoint with its timeouts and keepalive, TLS with the
//! Mozilla roots, an extra CA file and a client identity, and what a
//! failure means for the operator (TLS hints, canonical status names).
//!
//! It also reads the files of the options every client shares
//! (`--gateway-ca-file`, `--client-cert`, `--client-key`, `--token-file`).
//!
//! It must not open streams or retry: callers connect and decide. It never
//! prints the contents of a key or token file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, Uri};
use tonic::{Code, Status};

use crate::error_chain;

/// Connecting must finish within this.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 pings detect a dead connection while a stream is idle.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// A file given on the command line that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    #[error("cannot read {flag} {path:?}: {source}; point it at a readable PEM file or unset it")]
    Read {
        flag: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{flag} {path:?} holds no PEM {what} (no \"-----BEGIN {what}\"); give it in PEM form")]
    NotPem {
        flag: &'static str,
        path: PathBuf,
        what: &'static str,
    },
}

/// Reads the PEM file of option `flag`; it must hold a `-----BEGIN {what}`
/// block (`PRIVATE KEY` matches every key type, `EC PRIVATE KEY` too).
pub fn read_pem(flag: &'static str, path: &Path, what: &'static str) -> Result<Vec<u8>, PemError> {
    let pem = std::fs::read(path).map_err(|source| PemError::Read {
        flag,
        path: path.to_path_buf(),
        source,
    })?;
    let marker = b"-----BEGIN ";
    let found = pem.windows(marker.len()).enumerate().any(|(at, w)| {
        w == marker && {
            let line = &pem[at + marker.len()..];
            let end = line.iter().position(|&b| b == b'-').unwrap_or(line.len());
            line[..end].ends_with(what.as_bytes())
        }
    });
    if !found {
        return Err(PemError::NotPem {
            flag,
            path: path.to_path_buf(),
            what,
        });
    }
    Ok(pem)
}

/// Most bytes read from a token file: a token is 64 characters.
const MAX_TOKEN_FILE_BYTES: u64 = 4096;

/// Reads the file of `--token-file` (at most 4 KiB; the caller trims it).
pub fn read_token_file(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(MAX_TOKEN_FILE_BYTES)
        .read_to_string(&mut text)?;
    Ok(text)
}

/// A client certificate and its private key, both PEM. `Debug` shows
/// neither.
#[derive(Clone)]
pub struct ClientIdentity {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientIdentity(<redacted>)")
    }
}

/// What `https://` gateways are trusted with, beyond the Mozilla roots.
#[derive(Clone, Debug, Default)]
pub struct ClientTls {
    /// Extra CA certificates (PEM), from `--gateway-ca-file`.
    pub ca_pem: Option<Vec<u8>>,
    /// From `--client-cert` and `--client-key`, for mutual TLS.
    pub identity: Option<ClientIdentity>,
}

impl ClientTls {
    /// Reads `--gateway-ca-file`, `--client-cert` and `--client-key` (the
    /// identity only when both are given).
    pub fn load(
        ca_file: Option<&Path>,
        client_cert: Option<&Path>,
        client_key: Option<&Path>,
    ) -> Result<Self, PemError> {
        let ca_pem = ca_file
            .map(|path| read_pem("--gateway-ca-file", path, "CERTIFICATE"))
            .transpose()?;
        let identity = match (client_cert, client_key) {
            (Some(cert), Some(key)) => Some(ClientIdentity {
                cert_pem: read_pem("--client-cert", cert, "CERTIFICATE")?,
                key_pem: read_pem("--client-key", key, "PRIVATE KEY")?,
            }),
            _ => None,
        };
        Ok(Self { ca_pem, identity })
    }
}

/// TLS settings a gateway URL cannot be used with.
#[derive(Debug, thiserror::Error)]
#[error("invalid TLS settings for gateway {url}: {}; check --gateway-ca-file, --client-cert and --client-key", error_chain(.source))]
pub struct TlsError {
    pub url: Uri,
    #[source]
    pub source: tonic::transport::Error,
}

/// The endpoint for one gateway URL: connect timeout, keepalive, and TLS
/// for `https://`.
pub fn endpoint(url: &Uri, tls: &ClientTls) -> Result<Endpoint, TlsError> {
    let endpoint = Endpoint::from(url.clone())
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    if url.scheme_str() != Some("https") {
        return Ok(endpoint);
    }
    let mut config = ClientTlsConfig::new().with_webpki_roots();
    if let Some(pem) = &tls.ca_pem {
        config = config.ca_certificate(Certificate::from_pem(pem));
    }
    if let Some(identity) = &tls.identity {
        config = config.identity(Identity::from_pem(&identity.cert_pem, &identity.key_pem));
    }
    endpoint.tls_config(config).map_err(|source| TlsError {
        url: url.clone(),
        source,
    })
}

/// What a failed connection means: the address is unreachable (TCP, DNS),
/// or, for `https://`, the TLS handshake failed once connected.
pub fn connect_failure(url: &Uri, error: &dyn std::error::Error) -> String {
    let error = error_chain(error);
    let before_tls = error.contains("tcp connect error") || error.contains("dns error");
    if url.scheme_str() == Some("https") && !before_tls {
        format!(
            "TLS handshake failed: {error}{}",
            match tls_hint(&error) {
                "" =>
                    "; check that this port serves TLS (else use http://) and that its \
                       certificate is trusted (--gateway-ca-file for a private CA)",
                hint => hint,
            }
        )
    } else {
        format!("unreachable: {error}")
    }
}

/// A status's message with the causes in its sources (a broken connection,
/// such as a TLS alert, is explained only there).
pub fn status_detail(status: &Status) -> String {
    let message = status.message();
    let cause = std::error::Error::source(status)
        .map(error_chain)
        .unwrap_or_default();
    match cause.strip_prefix(message) {
        _ if cause.is_empty() => message.to_string(),
        Some(rest) => format!("{message}{rest}"),
        None if message.is_empty() => cause,
        None => format!("{message}: {cause}"),
    }
}

/// The fix for a TLS failure named in `detail` (rustls's names for the
/// alerts and verification errors), or nothing.
pub fn tls_hint(detail: &str) -> &'static str {
    if detail.contains("CertificateRequired") {
        "; the gateway requires a client certificate: pass --client-cert and --client-key \
         (LOGDRAIN_CLIENT_CERT / LOGDRAIN_CLIENT_KEY) signed by its client CA"
    } else if detail.contains("UnknownCA") || detail.contains("BadCertificate") {
        "; the gateway does not accept this client certificate: use one signed by the CA it \
         was given with --tls-client-ca"
    } else if detail.contains("invalid peer certificate") {
        "; the gateway's certificate is not trusted or not for this host name: pass its CA \
         with --gateway-ca-file and connect with a name its certificate holds"
    } else {
        ""
    }
}

/// The likely fix when a TLS connection closed before the gateway answered
/// and the status does not say why: a gateway that requires client
/// certificates does that to a refused one, and the alert that would say so
/// is often lost in the race between the connection's end and the request.
pub fn closed_at_opening_hint(status: &Status, https: bool, has_identity: bool) -> &'static str {
    let dropped = matches!(status.code(), Code::Cancelled | Code::Unknown);
    if !https || !dropped || !tls_hint(&status_detail(status)).is_empty() {
        ""
    } else if has_identity {
        "; if the gateway requires client certificates (mutual TLS), check that --client-cert \
         is signed by the CA it was given with --tls-client-ca"
    } else {
        "; if the gateway requires client certificates (mutual TLS), pass --client-cert and \
         --client-key (LOGDRAIN_CLIENT_CERT / LOGDRAIN_CLIENT_KEY)"
    }
}

/// The canonical gRPC name of a status code.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_failures_name_their_fix() {
        assert!(tls_hint("received fatal alert: CertificateRequired").contains("--client-cert"));
        assert!(tls_hint("received fatal alert: UnknownCA").contains("--tls-client-ca"));
        assert!(tls_hint("invalid peer certificate: UnknownIssuer").contains("--gateway-ca-file"));
        assert_eq!(tls_hint("Connection refused"), "");
    }

    #[test]
    fn a_tls_connection_closed_at_opening_suggests_the_client_certificate() {
        let closed = Status::cancelled("connection closed");
        assert_eq!(closed_at_opening_hint(&closed, false, false), "");
        assert!(closed_at_opening_hint(&closed, true, false).contains("--client-cert"));
        assert!(closed_at_opening_hint(&closed, true, true).contains("--tls-client-ca"));
        let refused = Status::unauthenticated("token");
        assert_eq!(closed_at_opening_hint(&refused, true, false), "");
        let explained = Status::unknown("received fatal alert: UnknownCA");
        assert_eq!(closed_at_opening_hint(&explained, true, true), "");
    }

    #[test]
    fn a_refused_connection_is_unreachable_even_over_https() {
        let url: Uri = "https://gw.example:443".parse().unwrap();
        for error in [
            "transport error: tcp connect error: Connection refused",
            "transport error: dns error: no such host",
        ] {
            let text = connect_failure(&url, &std::io::Error::other(error));
            assert!(text.starts_with("unreachable: "), "{text}");
        }
    }

    #[test]
    fn a_failure_after_connecting_over_https_is_a_tls_failure_with_the_fix() {
        let url: Uri = "https://gw.example:443".parse().unwrap();
        let error =
            std::io::Error::other("transport error: invalid peer certificate: UnknownIssuer");
        let text = connect_failure(&url, &error);
        assert!(text.starts_with("TLS handshake failed: "), "{text}");
        assert!(text.contains("--gateway-ca-file"), "{text}");
        let error = std::io::Error::other("transport error: reset");
        let text = connect_failure(&url, &error);
        assert!(text.contains("this port serves TLS"), "{text}");
        let plain: Uri = "http://gw.example:80".parse().unwrap();
        assert!(connect_failure(&plain, &error).starts_with("unreachable: "));
    }

    #[test]
    fn https_endpoints_get_tls_and_http_ones_do_not() {
        let tls = ClientTls::default();
        assert!(endpoint(&"https://gw.example:443".parse().unwrap(), &tls).is_ok());
        assert!(endpoint(&"http://127.0.0.1:1".parse().unwrap(), &tls).is_ok());
    }

    #[test]
    fn pem_files_must_hold_the_block_their_option_needs() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path();
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nAA==\n").unwrap();
        std::fs::write(&key, "-----BEGIN EC PRIVATE KEY-----\nAA==\n").unwrap();
        assert!(read_pem("--client-cert", &cert, "CERTIFICATE").is_ok());
        assert!(read_pem("--client-key", &key, "PRIVATE KEY").is_ok());
        let err = read_pem("--client-key", &cert, "PRIVATE KEY").unwrap_err();
        assert!(matches!(err, PemError::NotPem { .. }), "{err}");
        assert!(err.to_string().contains("--client-key"), "{err}");
        let err = read_pem("--gateway-ca-file", &dir.join("none"), "CERTIFICATE").unwrap_err();
        assert!(
            err.to_string().starts_with("cannot read --gateway-ca-file"),
            "{err}"
        );
    }
}
