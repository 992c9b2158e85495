//! The fleet: which other gateways this one asks for the fleet-wide tail
//! and status, and what this gateway is called among them.
//!
//! `--peers` names the fleet's gateways (a DNS name may resolve to several,
//! like a headless Service); they are resolved at start and again every
//! `--peer-refresh`, a name that fails keeping its last good addresses
//! ([`logdrain::fleet::Targets`]). Each gateway is named by its `ip:port`.
//! This gateway is the address that
//! * resolves from `--advertise` (on Kubernetes: the pod IP), or
//! * equals its gRPC listen address, or
//! * has the listen port when it listens on every address (`0.0.0.0`,
//!   `[::]`) and is an address of this host (one a socket can bind).
//!
//! It owns the peers' gRPC channels (connected lazily, reused across
//! refreshes). It must not call the peers itself: the tail and the status
//! do, bounded in time, with the caller's own credential.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use logdrain::fleet::{Resolved, Targets};
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::shutdown::Shutdown;

/// Most peers asked at once (the fan-outs are bounded by it).
pub const MAX_PEERS: usize = 64;
/// A peer's connection must be up within this (the call's own timeout,
/// `--peer-timeout`, bounds the whole answer).
const PEER_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What the fleet settings say.
#[derive(Clone, Debug)]
pub struct FleetSettings {
    pub peers: Vec<Uri>,
    pub refresh: Duration,
    pub advertise: Option<String>,
    /// The gRPC listener's address.
    pub listen: SocketAddr,
    /// For `https://` peers (see [`crate::tls::peer_client`]).
    pub tls: tonic::transport::ClientTlsConfig,
}

/// One other gateway.
#[derive(Clone, Debug)]
pub struct Peer {
    /// Its name in the fleet (`ip:port`).
    pub name: String,
    pub channel: Channel,
}

/// The fleet as last resolved.
#[derive(Debug)]
pub struct View {
    /// This gateway's name in the fleet.
    pub own_name: String,
    /// The other gateways, by name (at most [`MAX_PEERS`]).
    pub peers: Vec<Peer>,
}

/// The current [`View`]; cheap to clone.
#[derive(Clone, Debug)]
pub struct Fleet {
    view: watch::Receiver<Arc<View>>,
    /// `--peers` was given (even if none resolves yet).
    configured: bool,
}

impl Fleet {
    /// A gateway on its own, named `own_name`.
    pub fn alone(own_name: String) -> Self {
        Fleet {
            view: watch::Sender::new(Arc::new(View {
                own_name,
                peers: Vec::new(),
            }))
            .subscribe(),
            configured: false,
        }
    }

    /// Resolves the peers once, then again every `refresh` until shutdown.
    pub async fn start(settings: FleetSettings, shutdown: Shutdown) -> Self {
        let own_default = settings
            .advertise
            .clone()
            .unwrap_or_else(|| settings.listen.to_string());
        if settings.peers.is_empty() {
            return Fleet::alone(own_default);
        }
        let mut resolver = Resolver {
            targets: Targets::new(settings.peers.clone()),
            settings,
            own_default,
            last_errors: String::new(),
        };
        let first = resolver.resolve(&[]).await;
        let (tx, rx) = watch::channel(Arc::new(first));
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = shutdown.wait() => return,
                    () = tokio::time::sleep(resolver.settings.refresh) => {}
                }
                let previous = Arc::clone(&tx.borrow());
                let next = resolver.resolve(&previous.peers).await;
                let same = next.own_name == previous.own_name
                    && next.peers.len() == previous.peers.len()
                    && next
                        .peers
                        .iter()
                        .zip(&previous.peers)
                        .all(|(a, b)| a.name == b.name);
                if !same {
                    tracing::info!(
                        own = %next.own_name,
                        peers = %names(&next.peers),
                        "the fleet changed"
                    );
                    tx.send_replace(Arc::new(next));
                }
            }
        });
        let fleet = Fleet {
            view: rx,
            configured: true,
        };
        let view = fleet.view();
        tracing::info!(own = %view.own_name, peers = %names(&view.peers), "fleet resolved");
        fleet
    }

    pub fn view(&self) -> Arc<View> {
        Arc::clone(&self.view.borrow())
    }

    /// Whether this gateway has peers to ask (`--peers`), now or later.
    pub fn is_configured(&self) -> bool {
        self.configured
    }

    /// Resolves when the fleet changes (never, for a gateway alone).
    pub async fn changed(&mut self) {
        if self.view.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

fn names(peers: &[Peer]) -> String {
    let names: Vec<&str> = peers.iter().map(|p| p.name.as_str()).collect();
    names.join(",")
}

struct Resolver {
    targets: Targets,
    settings: FleetSettings,
    own_default: String,
    /// Resolution errors logged last: said again only when they change.
    last_errors: String,
}

impl Resolver {
    async fn resolve(&mut self, previous: &[Peer]) -> View {
        let (resolved, errors) = self.targets.resolve().await;
        let mut errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
        let mut advertised = Vec::new();
        if let Some(advertise) = &self.settings.advertise {
            let lookup = tokio::net::lookup_host(advertise.as_str());
            match tokio::time::timeout(logdrain::fleet::RESOLVE_TIMEOUT, lookup).await {
                Ok(Ok(addrs)) => advertised.extend(addrs),
                Ok(Err(e)) => errors.push(format!(
                    "cannot resolve --advertise {advertise}: {e}; give this gateway's IP:PORT as its peers reach it"
                )),
                Err(_) => errors.push(format!("resolving --advertise {advertise} timed out")),
            }
        }
        let text = errors.join("; ");
        if text != self.last_errors {
            if text.is_empty() {
                tracing::info!("the peers resolve again");
            } else {
                tracing::warn!(errors = %text, "cannot resolve every peer; going on with the addresses resolved before");
            }
            self.last_errors = text;
        }
        let mut own_name = None;
        let mut peers = Vec::new();
        for gateway in resolved {
            if is_self(gateway.addr, self.settings.listen, &advertised) {
                own_name.get_or_insert_with(|| gateway.name());
                continue;
            }
            if peers.len() == MAX_PEERS {
                tracing::warn!(
                    max = MAX_PEERS,
                    "more peers than the fan-out asks; the rest are left out"
                );
                break;
            }
            let name = gateway.name();
            let channel = match previous.iter().find(|p| p.name == name) {
                Some(known) => known.channel.clone(),
                None => match connect_lazy(&gateway, &self.settings.tls) {
                    Ok(channel) => channel,
                    Err(e) => {
                        tracing::warn!(peer = %name, error = %e, "cannot set up TLS to the peer; it is left out");
                        continue;
                    }
                },
            };
            peers.push(Peer { name, channel });
        }
        View {
            own_name: own_name.unwrap_or_else(|| self.own_default.clone()),
            peers,
        }
    }
}

/// A channel to a peer, connected on first use (and again after a break);
/// TLS, checked against the URL's host, for `https://`.
fn connect_lazy(
    gateway: &Resolved,
    tls: &tonic::transport::ClientTlsConfig,
) -> Result<Channel, tonic::transport::Error> {
    let mut endpoint = Endpoint::from(gateway.url.clone()).connect_timeout(PEER_CONNECT_TIMEOUT);
    if gateway.url.scheme_str() == Some("https") {
        endpoint = endpoint.tls_config(tls.clone())?;
    }
    Ok(endpoint.connect_with_connector_lazy(logdrain::fleet::dial(gateway.addr)))
}

/// Whether `addr` is this gateway (see the module docs).
pub fn is_self(addr: SocketAddr, listen: SocketAddr, advertised: &[SocketAddr]) -> bool {
    if advertised.contains(&addr) || addr == listen {
        return true;
    }
    listen.ip().is_unspecified()
        && addr.port() == listen.port()
        // Only an address of this host can be bound.
        && std::net::UdpSocket::bind((addr.ip(), 0)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn a_gateway_knows_itself_by_its_listen_address_or_what_it_advertises() {
        let listen = addr("127.0.0.2:50051");
        assert!(is_self(listen, listen, &[]));
        assert!(!is_self(addr("127.0.0.3:50051"), listen, &[]));
        assert!(is_self(
            addr("10.9.8.7:50051"),
            listen,
            &[addr("10.9.8.7:50051")]
        ));
    }

    #[test]
    fn listening_on_every_address_it_knows_itself_by_port_among_its_own_addresses() {
        let listen = addr("0.0.0.0:50051");
        assert!(is_self(addr("127.0.0.5:50051"), listen, &[]));
        assert!(!is_self(addr("127.0.0.5:50052"), listen, &[]));
        // TEST-NET-3: never an address of this host.
        assert!(!is_self(addr("203.0.113.9:50051"), listen, &[]));
    }

    #[tokio::test]
    async fn a_peer_list_that_names_this_gateway_leaves_it_out_and_names_it() {
        let fleet = Fleet::start(
            FleetSettings {
                peers: vec![
                    "http://127.0.0.1:50051".parse().unwrap(),
                    "http://127.0.0.2:50051".parse().unwrap(),
                ],
                refresh: Duration::from_secs(3600),
                advertise: None,
                listen: addr("127.0.0.2:50051"),
                tls: tonic::transport::ClientTlsConfig::new(),
            },
            Shutdown::new(),
        )
        .await;
        let view = fleet.view();
        assert_eq!(view.own_name, "127.0.0.2:50051");
        let peers: Vec<&str> = view.peers.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(peers, ["127.0.0.1:50051"]);
    }
}
