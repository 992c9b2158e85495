//! How a fleet of gateways is found and shared out, the same for the shim,
//! the CLI and the gateways' peer calls:
//!
//! * [`Targets`]: a list of gateway URLs whose host names may each resolve
//!   to several addresses (a Kubernetes headless Service, compose's service
//!   DNS). Every address is one gateway, known by its `ip:port`. Each
//!   resolution keeps the last good addresses of a name that fails to
//!   resolve, so a DNS hiccup never empties the fleet.
//! * [`rank`]: rendezvous (highest-random-weight) hashing of a key (the
//!   shim's agent-server id) with each gateway's name. Keys spread evenly;
//!   a gateway that leaves moves only its own keys, each to its next
//!   choice; when it returns the ranking is what it was before. The weight
//!   is SHA-256, so it is the same on every build and platform.
//! * [`dial`]: a connector for tonic that reaches one resolved address
//!   while the URL (its host name: TLS name, `:authority`) stays as given.
//!
//! It must not decide when to resolve or whom to connect to: the callers
//! do.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;
use tonic::transport::Uri;

/// A resolution of one host name must finish within this.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Most addresses taken from one name (the fleet's fan-outs are bounded by it).
pub const MAX_ADDRESSES_PER_NAME: usize = 64;

/// The rendezvous weight of `gateway` for `key`: the first 8 bytes of
/// SHA-256(key, 0, gateway), big-endian.
pub fn weight(key: &str, gateway: &str) -> u64 {
    let digest = Sha256::new()
        .chain_update(key.as_bytes())
        .chain_update([0])
        .chain_update(gateway.as_bytes())
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// The indices of `gateways` (their names), best first for `key`: by
/// descending [`weight`], ties by name.
pub fn rank<T: AsRef<str>>(key: &str, gateways: &[T]) -> Vec<usize> {
    let mut order: Vec<(u64, usize)> = gateways
        .iter()
        .enumerate()
        .map(|(i, name)| (weight(key, name.as_ref()), i))
        .collect();
    order.sort_by(|a, b| {
        b.0.cmp(&a.0)
            .then_with(|| gateways[a.1].as_ref().cmp(gateways[b.1].as_ref()))
    });
    order.into_iter().map(|(_, i)| i).collect()
}

/// One gateway of a resolved fleet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// The URL it was configured as (host name kept: TLS checks it).
    pub url: Uri,
    /// The address to connect to.
    pub addr: SocketAddr,
}

impl Resolved {
    /// Its name in the fleet: `ip:port`, what [`rank`] hashes.
    pub fn name(&self) -> String {
        self.addr.to_string()
    }

    /// The URL, followed by the address when the URL names a host.
    pub fn describe(&self) -> String {
        let host = self.url.host().unwrap_or_default();
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.parse::<std::net::IpAddr>().is_ok() {
            self.url.to_string()
        } else {
            format!("{} ({})", self.url, self.addr)
        }
    }
}

/// Why a name did not resolve (the last good addresses were kept).
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("cannot resolve {url}: {source}; check the name (a DNS name, a headless Service) or give addresses")]
    Lookup { url: Uri, source: io::Error },
    #[error("resolving {url} took longer than {RESOLVE_TIMEOUT:?}")]
    Timeout { url: Uri },
    #[error("{url} resolved to no address")]
    Empty { url: Uri },
}

/// Gateway URLs and the addresses each resolved to last.
#[derive(Clone, Debug)]
pub struct Targets {
    urls: Vec<Uri>,
    last_good: Vec<Vec<SocketAddr>>,
}

impl Targets {
    /// `urls` must have a host (see the callers' URL checks).
    pub fn new(urls: Vec<Uri>) -> Self {
        let last_good = vec![Vec::new(); urls.len()];
        Self { urls, last_good }
    }

    pub fn urls(&self) -> &[Uri] {
        &self.urls
    }

    /// Resolves every URL again (concurrently, each within
    /// [`RESOLVE_TIMEOUT`]): every address of every name, without
    /// duplicates, sorted. A name that fails keeps its last good addresses,
    /// and its error is returned beside them.
    pub async fn resolve(&mut self) -> (Vec<Resolved>, Vec<ResolveError>) {
        let lookups = self.urls.iter().map(|url| async move {
            match tokio::time::timeout(RESOLVE_TIMEOUT, lookup(url)).await {
                Ok(result) => result,
                Err(_) => Err(ResolveError::Timeout { url: url.clone() }),
            }
        });
        let answers = futures::future::join_all(lookups).await;
        let mut errors = Vec::new();
        for (kept, answer) in self.last_good.iter_mut().zip(answers) {
            match answer {
                Ok(addrs) => *kept = addrs,
                Err(err) => errors.push(err),
            }
        }
        let mut all: Vec<Resolved> = Vec::new();
        for (url, addrs) in self.urls.iter().zip(&self.last_good) {
            for addr in addrs {
                if !all.iter().any(|r| r.addr == *addr) {
                    all.push(Resolved {
                        url: url.clone(),
                        addr: *addr,
                    });
                }
            }
        }
        all.sort_by_key(|r| r.addr);
        (all, errors)
    }
}

/// The addresses of one URL's host and port (80 or 443 by scheme when the
/// URL gives none).
async fn lookup(url: &Uri) -> Result<Vec<SocketAddr>, ResolveError> {
    let host = url.host().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = url.port_u16().unwrap_or(match url.scheme_str() {
        Some("https") => 443,
        _ => 80,
    });
    let found = tokio::net::lookup_host((host, port))
        .await
        .map_err(|source| ResolveError::Lookup {
            url: url.clone(),
            source,
        })?;
    let mut addrs: Vec<SocketAddr> = Vec::new();
    for addr in found {
        if !addrs.contains(&addr) && addrs.len() < MAX_ADDRESSES_PER_NAME {
            addrs.push(addr);
        }
    }
    if addrs.is_empty() {
        return Err(ResolveError::Empty { url: url.clone() });
    }
    addrs.sort();
    Ok(addrs)
}

/// A tonic connector (for `Endpoint::connect_with_connector`) that always
/// reaches `addr`, whatever the endpoint's URL says; TLS still checks the
/// URL's host name.
pub fn dial(
    addr: SocketAddr,
) -> impl tower::Service<
    Uri,
    Response = TokioIo<TcpStream>,
    Error = io::Error,
    Future = impl std::future::Future<Output = io::Result<TokioIo<TcpStream>>> + Send,
> + Clone
       + Send
       + 'static {
    tower::service_fn(move |_: Uri| async move {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(TokioIo::new(stream))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("10.0.0.{i}:50051")).collect()
    }

    fn counts(keys: usize, gateways: &[String]) -> Vec<usize> {
        let mut counts = vec![0; gateways.len()];
        for k in 0..keys {
            counts[rank(&format!("replica-{k}"), gateways)[0]] += 1;
        }
        counts
    }

    #[test]
    fn the_weight_is_the_same_on_every_build() {
        // SHA-256("replica-1\0" "10.0.0.1:50051"), first 8 bytes, as Python's
        // hashlib computes it: a change of hash or input cannot pass unnoticed.
        assert_eq!(weight("replica-1", "10.0.0.1:50051"), 0x7213_1396_1335_ae50);
    }

    #[test]
    fn keys_spread_evenly_over_the_gateways() {
        let gateways = names(3);
        for count in counts(30_000, &gateways) {
            assert!((9_700..=10_300).contains(&count), "{count} of 30000 keys");
        }
        for count in counts(300, &gateways) {
            assert!((85..=115).contains(&count), "{count} of 300 keys");
        }
    }

    #[test]
    fn a_gateway_that_leaves_moves_only_its_own_keys_to_their_next_choice() {
        let all = names(4);
        let without: Vec<String> = all.iter().filter(|g| *g != &all[1]).cloned().collect();
        let mut moved = 0;
        for k in 0..4_000 {
            let key = format!("replica-{k}");
            let before = rank(&key, &all);
            let after = &without[rank(&key, &without)[0]];
            if before[0] == 1 {
                moved += 1;
                assert_eq!(after, &all[before[1]], "{key} goes to its second choice");
            } else {
                assert_eq!(after, &all[before[0]], "{key} stays");
            }
        }
        assert!((800..=1_200).contains(&moved), "{moved} of 4000 moved");
    }

    #[test]
    fn a_gateway_that_returns_gets_back_exactly_its_own_keys() {
        let all = names(3);
        let mut shuffled = all.clone();
        shuffled.reverse();
        for k in 0..1_000 {
            let key = format!("replica-{k}");
            let top = &all[rank(&key, &all)[0]];
            // The order gateways are listed or resolved in does not matter.
            assert_eq!(top, &shuffled[rank(&key, &shuffled)[0]]);
        }
    }

    #[tokio::test]
    async fn a_name_that_stops_resolving_keeps_its_last_addresses() {
        let mut targets = Targets::new(vec![
            "http://127.0.0.1:7".parse().unwrap(),
            "http://127.0.0.2:7".parse().unwrap(),
        ]);
        let (first, errors) = targets.resolve().await;
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            first.iter().map(Resolved::name).collect::<Vec<_>>(),
            ["127.0.0.1:7", "127.0.0.2:7"]
        );
        targets.urls[1] = "http://name.invalid:7".parse().unwrap();
        let (second, errors) = targets.resolve().await;
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].to_string().contains("name.invalid"),
            "{}",
            errors[0]
        );
        assert_eq!(second.len(), 2, "the last good address is kept");
    }
}
