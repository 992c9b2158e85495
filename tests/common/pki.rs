//! Test certificates, made at test time (no private key is committed): a CA,
//! a gateway certificate for `127.0.0.1`/`localhost` (server and client
//! authentication, as a gateway presents it to its peers) and a client
//! certificate signed by it, and a second, unrelated CA.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// PEM files of one test PKI, in a directory of the test.
pub struct Pki {
    /// The CA that signed the gateway and client certificates.
    pub ca: PathBuf,
    pub gateway_cert: PathBuf,
    pub gateway_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// A CA that signed nothing here.
    pub other_ca: PathBuf,
    /// A client certificate and key signed by `other_ca`.
    pub stranger_cert: PathBuf,
    pub stranger_key: PathBuf,
}

fn ca(name: &str) -> (CertificateParams, KeyPair, String) {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().expect("CA key");
    let pem = params.self_signed(&key).expect("self-sign CA").pem();
    (params, key, pem)
}

fn leaf(
    names: &[&str],
    purposes: &[ExtendedKeyUsagePurpose],
    issuer: &Issuer<'_, &KeyPair>,
) -> (String, String) {
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .expect("leaf params");
    params.distinguished_name.push(DnType::CommonName, names[0]);
    params.extended_key_usages = purposes.to_vec();
    let key = KeyPair::generate().expect("leaf key");
    let cert = params.signed_by(&key, issuer).expect("sign leaf");
    (cert.pem(), key.serialize_pem())
}

impl Pki {
    /// Writes a fresh PKI into `dir`.
    pub fn generate(dir: &Path) -> Pki {
        std::fs::create_dir_all(dir).expect("pki dir");
        let write = |name: &str, pem: &str| {
            let path = dir.join(name);
            std::fs::write(&path, pem).expect("write pem");
            path
        };
        let (ca_params, ca_key, ca_pem) = ca("logdrain test CA");
        let issuer = Issuer::from_params(&ca_params, &ca_key);
        let (gw_cert, gw_key) = leaf(
            &["127.0.0.1", "localhost"],
            // Client too: a gateway presents it to its mutual-TLS peers.
            &[
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            &issuer,
        );
        let (client_cert, client_key) = leaf(
            &["shim-client"],
            &[ExtendedKeyUsagePurpose::ClientAuth],
            &issuer,
        );
        let (other_params, other_key, other_pem) = ca("some other CA");
        let other_issuer = Issuer::from_params(&other_params, &other_key);
        let (stranger_cert, stranger_key) = leaf(
            &["stranger"],
            &[ExtendedKeyUsagePurpose::ClientAuth],
            &other_issuer,
        );
        Pki {
            ca: write("ca.pem", &ca_pem),
            gateway_cert: write("gateway.pem", &gw_cert),
            gateway_key: write("gateway.key", &gw_key),
            client_cert: write("client.pem", &client_cert),
            client_key: write("client.key", &client_key),
            other_ca: write("other-ca.pem", &other_pem),
            stranger_cert: write("stranger.pem", &stranger_cert),
            stranger_key: write("stranger.key", &stranger_key),
        }
    }

    /// Gateway environment for TLS; with `mutual`, client certificates
    /// signed by [`Pki::ca`] are required on gRPC.
    pub fn gateway_env(&self, mutual: bool) -> Vec<(String, String)> {
        let mut env = vec![
            ("LOGDRAIN_TLS_CERT".into(), path(&self.gateway_cert)),
            ("LOGDRAIN_TLS_KEY".into(), path(&self.gateway_key)),
        ];
        if mutual {
            env.push(("LOGDRAIN_TLS_CLIENT_CA".into(), path(&self.ca)));
        }
        env
    }

    /// An HTTPS client that trusts [`Pki::ca`] only.
    pub fn http_client(&self) -> reqwest::Client {
        let pem = std::fs::read(&self.ca).expect("read CA");
        reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("CA pem"))
            .build()
            .expect("https client")
    }
}

pub fn path(p: &Path) -> String {
    p.to_str().expect("utf-8 temp path").to_string()
}
