//! TLS for the gateway's two listeners (rustls with the ring provider, like
//! every other TLS use in logdrain).
//!
//! [`ServerTls::load`] reads and checks the PEM files once at start-up and
//! builds one rustls configuration per listener: gRPC (ALPN `h2`, client
//! certificates required when a client CA is given) and HTTP (ALPN
//! `http/1.1`, never asks for a client certificate, so health probes and
//! scrapers need only the CA). [`accept`] runs the handshakes off the accept
//! loop, with a deadline, so a slow or broken client never stalls others.
//!
//! This module owns certificate loading and handshakes. It must not know
//! what is served over the connections, and must never log key material.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// How long a client has to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection whose handshake failed is read from before it is
/// dropped (see [`close_after_alert`]).
const ALERT_LINGER: Duration = Duration::from_secs(1);
/// Handshaken connections waiting for the server to take them.
const READY_CONNECTIONS: usize = 64;

/// A TLS file the gateway cannot use. Each names the file and the fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {flag} {path:?}: {source}; point it at a readable PEM file")]
    Read {
        flag: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{flag} {path:?} holds no PEM certificate (no \"-----BEGIN CERTIFICATE-----\" block); give the certificate (and its chain) in PEM form")]
    NoCertificate { flag: &'static str, path: PathBuf },
    #[error("{flag} {path:?} is not valid PEM: {reason}; give the file in PEM form")]
    BadPem {
        flag: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("--tls-key {path:?} holds no PEM private key (PKCS#8 \"PRIVATE KEY\", PKCS#1 \"RSA PRIVATE KEY\" or SEC1 \"EC PRIVATE KEY\"); give the certificate's private key in PEM form")]
    NoKey { path: PathBuf },
    #[error("the private key {key:?} cannot be used with the certificate {cert:?}: {reason}; give the key that belongs to the certificate (--tls-key / LOGDRAIN_TLS_KEY)")]
    KeyMismatch {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error("--tls-client-ca {path:?} cannot verify client certificates: {reason}; give the PEM certificate of the CA that signs the client certificates")]
    ClientCa { path: PathBuf, reason: String },
}

/// The rustls configurations of the two listeners.
#[derive(Clone)]
pub struct ServerTls {
    grpc: Arc<ServerConfig>,
    http: Arc<ServerConfig>,
    /// Whether gRPC clients must present a certificate.
    pub mutual: bool,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("mutual", &self.mutual)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Reads the certificate chain, its key and the optional client CA, and
    /// checks that they fit together.
    pub fn load(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<Self, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain = certificates("--tls-cert", cert)?;
        let key_der = private_key(key)?;
        let builder = || {
            ServerConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .unwrap_or_else(|_| unreachable!("ring supports TLS 1.2 and 1.3"))
        };
        let mismatch = |e: rustls::Error| TlsError::KeyMismatch {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            reason: e.to_string(),
        };
        let mut http = builder()
            .with_no_client_auth()
            .with_single_cert(chain.clone(), key_der.clone_key())
            .map_err(mismatch)?;
        http.alpn_protocols = vec![b"http/1.1".to_vec()];
        let grpc_builder = match client_ca {
            None => builder().with_no_client_auth(),
            Some(path) => {
                let mut roots = RootCertStore::empty();
                for ca in certificates("--tls-client-ca", path)? {
                    roots.add(ca).map_err(|e| TlsError::ClientCa {
                        path: path.to_path_buf(),
                        reason: e.to_string(),
                    })?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .build()
                        .map_err(|e| TlsError::ClientCa {
                            path: path.to_path_buf(),
                            reason: e.to_string(),
                        })?;
                builder().with_client_cert_verifier(verifier)
            }
        };
        let mut grpc = grpc_builder
            .with_single_cert(chain, key_der)
            .map_err(mismatch)?;
        grpc.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Self {
            grpc: Arc::new(grpc),
            http: Arc::new(http),
            mutual: client_ca.is_some(),
        })
    }

    /// Accepts gRPC connections on `listener` and hands them out after
    /// their handshake.
    pub fn accept_grpc(&self, listener: TcpListener) -> mpsc::Receiver<TlsStream<TcpStream>> {
        accept(listener, Arc::clone(&self.grpc))
    }

    /// The HTTP listener over TLS, for `axum::serve`.
    pub fn https_listener(&self, listener: TcpListener) -> io::Result<HttpsListener> {
        let local_addr = listener.local_addr()?;
        Ok(HttpsListener {
            ready: accept(listener, Arc::clone(&self.http)),
            local_addr,
        })
    }
}

/// The client side of this gateway's calls to `https://` peers: the
/// Mozilla roots and `peer_ca` (`--peer-ca-file`) are trusted; with
/// `identity` (its own `--tls-cert` and `--tls-key`, when peers require
/// client certificates) it presents that.
pub fn peer_client(
    peer_ca: Option<&Path>,
    identity: Option<(&Path, &Path)>,
) -> Result<tonic::transport::ClientTlsConfig, TlsError> {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let mut tls = ClientTlsConfig::new().with_webpki_roots();
    if let Some(path) = peer_ca {
        certificates("--peer-ca-file", path)?;
        tls = tls.ca_certificate(Certificate::from_pem(read("--peer-ca-file", path)?));
    }
    if let Some((cert, key)) = identity {
        certificates("--tls-cert", cert)?;
        private_key(key)?;
        tls = tls.identity(Identity::from_pem(
            read("--tls-cert", cert)?,
            read("--tls-key", key)?,
        ));
    }
    Ok(tls)
}

fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        flag,
        path: path.to_path_buf(),
        source,
    })
}

fn certificates(flag: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(flag, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadPem {
            flag,
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            flag,
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read("--tls-key", path)?;
    match PrivateKeyDer::from_pem_slice(&pem) {
        Ok(key) => Ok(key),
        Err(rustls::pki_types::pem::Error::NoItemsFound) => Err(TlsError::NoKey {
            path: path.to_path_buf(),
        }),
        // The PEM error names only the section, never key bytes.
        Err(e) => Err(TlsError::BadPem {
            flag: "--tls-key",
            path: path.to_path_buf(),
            reason: e.to_string(),
        }),
    }
}

/// Accepts TCP connections and runs each TLS handshake in its own task with
/// a deadline; finished connections come out of the returned channel. Ends
/// when the receiver is dropped.
fn accept(
    listener: TcpListener,
    config: Arc<ServerConfig>,
) -> mpsc::Receiver<TlsStream<TcpStream>> {
    let (tx, rx) = mpsc::channel(READY_CONNECTIONS);
    let acceptor = TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: wait, retry.
                        tracing::warn!(error = %e, "cannot accept a connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                () = tx.closed() => return,
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let handshake = acceptor.accept(tcp).into_fallible();
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(tls).await;
                    }
                    Ok(Err((e, tcp))) => {
                        handshake_failed(peer, &e.to_string());
                        close_after_alert(tcp).await;
                    }
                    Err(_) => handshake_failed(peer, "no handshake within 10s"),
                }
            });
        }
    });
    rx
}

/// Closes a connection whose handshake failed so that the client reads the
/// TLS alert (which says why) instead of a reset: the client has usually
/// sent more data already, and closing with unread data resets the
/// connection, discarding the alert.
async fn close_after_alert(mut tcp: TcpStream) {
    let _ = tcp.shutdown().await;
    let mut scratch = [0u8; 4096];
    let _ = tokio::time::timeout(ALERT_LINGER, async {
        while matches!(tcp.read(&mut scratch).await, Ok(n) if n > 0) {}
    })
    .await;
}

fn handshake_failed(peer: SocketAddr, reason: &str) {
    // Debug level: anyone can open a connection, so this must not flood.
    tracing::debug!(%peer, reason, "TLS handshake failed");
}

/// The HTTP listener over TLS (see [`ServerTls::https_listener`]).
pub struct HttpsListener {
    ready: mpsc::Receiver<TlsStream<TcpStream>>,
    local_addr: SocketAddr,
}

impl axum::serve::Listener for HttpsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(tls) => {
                let addr = tls.get_ref().0.peer_addr().unwrap_or(self.local_addr);
                (tls, addr)
            }
            // The accept task ends only when this listener is dropped:
            // wait for the server to be shut down.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

    struct Files {
        _dir: tempfile::TempDir,
        cert: PathBuf,
        key: PathBuf,
        other_key: PathBuf,
        ca: PathBuf,
        dir: PathBuf,
    }

    fn files() -> Files {
        let dir = tempfile::tempdir().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().unwrap();
        let ca_pem = ca_params.self_signed(&ca_key).unwrap().pem();
        let issuer = Issuer::from_params(&ca_params, &ca_key);
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        Files {
            cert: write("cert.pem", &cert.pem()),
            key: write("key.pem", &key.serialize_pem()),
            other_key: write("other.key", &KeyPair::generate().unwrap().serialize_pem()),
            ca: write("ca.pem", &ca_pem),
            dir: dir.path().to_path_buf(),
            _dir: dir,
        }
    }

    #[test]
    fn a_certificate_with_its_key_loads_with_and_without_a_client_ca() {
        let f = files();
        assert!(!ServerTls::load(&f.cert, &f.key, None).unwrap().mutual);
        assert!(
            ServerTls::load(&f.cert, &f.key, Some(&f.ca))
                .unwrap()
                .mutual
        );
    }

    #[test]
    fn a_key_of_another_certificate_is_refused_naming_both_files() {
        let f = files();
        let err = ServerTls::load(&f.cert, &f.other_key, None).unwrap_err();
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");
        let shown = err.to_string();
        assert!(
            shown.contains("other.key") && shown.contains("cert.pem"),
            "{shown}"
        );
    }

    #[test]
    fn files_without_the_expected_pem_block_are_refused_with_the_fix() {
        let f = files();
        let err = ServerTls::load(&f.key, &f.key, None).unwrap_err();
        assert!(
            matches!(
                err,
                TlsError::NoCertificate {
                    flag: "--tls-cert",
                    ..
                }
            ),
            "{err}"
        );
        let err = ServerTls::load(&f.cert, &f.cert, None).unwrap_err();
        assert!(matches!(err, TlsError::NoKey { .. }), "{err}");
        let err = ServerTls::load(&f.cert, &f.key, Some(&f.key)).unwrap_err();
        assert!(
            matches!(
                err,
                TlsError::NoCertificate {
                    flag: "--tls-client-ca",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn an_unreadable_file_is_named() {
        let f = files();
        let missing = f.dir.join("nope.pem");
        let err = ServerTls::load(&missing, &f.key, None).unwrap_err();
        assert!(matches!(
            err,
            TlsError::Read {
                flag: "--tls-cert",
                ..
            }
        ));
        assert!(err.to_string().contains("nope.pem"), "{err}");
    }

    #[test]
    fn errors_never_show_key_material() {
        let f = files();
        let key_pem = std::fs::read_to_string(&f.key).unwrap();
        let body = key_pem.lines().nth(1).unwrap();
        for err in [
            ServerTls::load(&f.cert, &f.other_key, None).unwrap_err(),
            ServerTls::load(&f.key, &f.key, None).unwrap_err(),
        ] {
            assert!(!format!("{err} {err:?}").contains(body));
        }
    }
}
