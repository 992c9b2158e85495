//! Tenant-supplied endpoints (today the host of `SENTRY_DSN`) reach public
//! vendors only: the one place the gateway applies the rule of
//! [`logdrain::endpoint`].
//!
//! * [`EndpointPolicy`] is the rule plus the networks the operator allowed
//!   (`--allow-endpoint-net`).
//! * [`EndpointPolicy::check_url`] judges a URL's host as written, when a
//!   sink is built: an IP literal (which the HTTP client connects to without
//!   resolving) or a well-known internal name. A refusal parks the route
//!   with `invalid_secret`.
//! * [`tenant_client`] is the HTTP client of tenant endpoints. Its resolver
//!   ([`GuardedResolver`]) resolves each name when a connection is opened
//!   and hands the client only the addresses that pass, so the address
//!   checked is the address connected to (no DNS rebinding). It uses no
//!   proxy, which would resolve and connect on its own.
//!
//! Operator-set URL overrides (`--datadog-url`, ...) are not tenant
//! endpoints and use the ordinary client.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use logdrain::endpoint::{self, NotPublic};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::{Host, Url};

/// The rule and the operator's exceptions. Cheap to clone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointPolicy {
    allowed: Arc<[IpNet]>,
}

impl EndpointPolicy {
    /// The rule, with `allowed` networks exempt from it.
    pub fn new(allowed: Vec<IpNet>) -> Self {
        Self {
            allowed: allowed.into(),
        }
    }

    /// Why `ip` may not be connected to, or `Ok` when it is public or in an
    /// allowed network.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), NotPublic> {
        let ip = canonical(ip);
        match endpoint::ip_not_public(ip) {
            Some(_) if self.allowed.iter().any(|net| net.contains(&ip)) => Ok(()),
            Some(kind) => Err(kind),
            None => Ok(()),
        }
    }

    /// Judges `url`'s host as written: an IP literal, or a well-known
    /// internal name (`localhost`, `metadata.google.internal`). Other names
    /// are judged when they are resolved ([`GuardedResolver`]).
    pub fn check_url(&self, url: &Url) -> Result<(), NotPublic> {
        let ip = match url.host() {
            Some(Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
            Some(Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
            Some(Host::Domain(name)) => endpoint::well_known_internal_name(name),
            None => None,
        };
        ip.map_or(Ok(()), |ip| self.check_ip(ip))
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is, so an allowed
/// IPv4 network covers it too.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// Every address of a tenant endpoint's name was refused by the rule.
/// Connect errors carry it, so the sink can name the rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the endpoint's host resolves to {}", .0.describe())]
pub struct Refused(pub NotPublic);

/// Looks names up; the system resolver in production, a stand-in in tests.
pub trait Lookup: Send + Sync + 'static {
    fn lookup(&self, name: String) -> Resolving;
}

/// The system resolver (`getaddrinfo`, through tokio).
#[derive(Debug, Default)]
pub struct SystemLookup;

impl Lookup for SystemLookup {
    fn lookup(&self, name: String) -> Resolving {
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// Resolves with `L` and keeps only the addresses [`EndpointPolicy`]
/// allows; fails with [`Refused`] when none is left.
pub struct GuardedResolver<L = SystemLookup> {
    policy: EndpointPolicy,
    lookup: L,
}

impl<L: Lookup> GuardedResolver<L> {
    pub fn new(policy: EndpointPolicy, lookup: L) -> Self {
        Self { policy, lookup }
    }
}

impl<L: Lookup> Resolve for GuardedResolver<L> {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        let answer = self.lookup.lookup(name.as_str().to_string());
        Box::pin(async move {
            let mut refused = None;
            let kept: Vec<SocketAddr> = answer
                .await?
                .filter(|addr| match policy.check_ip(addr.ip()) {
                    Ok(()) => true,
                    Err(kind) => {
                        refused.get_or_insert(kind);
                        false
                    }
                })
                .collect();
            match refused {
                Some(kind) if kept.is_empty() => Err(Box::new(Refused(kind)) as _),
                _ => Ok(Box::new(kept.into_iter()) as Addrs),
            }
        })
    }
}

/// The [`Refused`] somewhere in `error`'s causes.
pub fn refusal(error: &(dyn std::error::Error + 'static)) -> Option<Refused> {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if let Some(refused) = e.downcast_ref::<Refused>() {
            return Some(*refused);
        }
        cause = e.source();
    }
    None
}

/// The HTTP client of tenant endpoints: `builder` with the guarded
/// resolver and no proxy.
pub fn tenant_client(
    builder: reqwest::ClientBuilder,
    policy: &EndpointPolicy,
) -> reqwest::Result<reqwest::Client> {
    with_lookup(builder, policy, SystemLookup)
}

/// [`tenant_client`] with another lookup (tests).
pub fn with_lookup<L: Lookup>(
    builder: reqwest::ClientBuilder,
    policy: &EndpointPolicy,
    lookup: L,
) -> reqwest::Result<reqwest::Client> {
    builder
        .no_proxy()
        .dns_resolver(Arc::new(GuardedResolver::new(policy.clone(), lookup)))
        .build()
}

/// Parses one `--allow-endpoint-net` value: a network in CIDR form, or a
/// single address.
pub fn parse_net(value: &str) -> Result<IpNet, String> {
    let value = value.trim();
    value
        .parse::<IpNet>()
        .or_else(|_| value.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| {
            format!(
                "{value:?} is not a network; write it in CIDR form like 10.0.0.0/8 or fd00::/8, or give one address"
            )
        })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    use super::*;

    /// Answers each lookup with the next of `answers` (the last repeats).
    struct Scripted {
        answers: Mutex<Vec<Vec<IpAddr>>>,
        calls: AtomicUsize,
    }

    impl Scripted {
        fn new(answers: Vec<Vec<IpAddr>>) -> Self {
            Self {
                answers: Mutex::new(answers),
                calls: AtomicUsize::new(0),
            }
        }
    }

    impl Lookup for Arc<Scripted> {
        fn lookup(&self, _name: String) -> Resolving {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            let answers = self.answers.lock().unwrap();
            let answer = answers[n.min(answers.len() - 1)].clone();
            let addrs: Vec<SocketAddr> = answer.into_iter().map(|ip| (ip, 0).into()).collect();
            Box::pin(async move { Ok(Box::new(addrs.into_iter()) as Addrs) })
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    async fn resolve(resolver: &impl Resolve, name: &str) -> Result<Vec<IpAddr>, String> {
        match resolver.resolve(name.parse().unwrap()).await {
            Ok(addrs) => Ok(addrs.map(|a| a.ip()).collect()),
            Err(e) => Err(e.to_string()),
        }
    }

    #[test]
    fn literal_hosts_are_judged_after_url_parsing() {
        let policy = EndpointPolicy::default();
        for url in [
            "http://127.0.0.1:9000/x",
            "http://0x7f000001/x",
            "http://2130706433/x",
            "http://0177.0.0.1/x",
            "http://127.1/x",
            "http://[::1]/x",
            "http://[::ffff:127.0.0.1]/x",
            "http://[::ffff:169.254.169.254]/x",
            "http://169.254.169.254/latest/meta-data/",
            "http://metadata.google.internal/computeMetadata/v1/",
            "http://localhost:8080/x",
            // Full-width letters: IDNA maps them to `localhost`.
            "http://\u{ff4c}\u{ff4f}\u{ff43}\u{ff41}\u{ff4c}\u{ff48}\u{ff4f}\u{ff53}\u{ff54}/x",
            "http://127.0.0.1./x",
            "http://10.0.0.1/x",
            "http://[fd00::1]/x",
            "http://0.0.0.0/x",
            "http://224.0.0.1/x",
        ] {
            let url = Url::parse(url).unwrap();
            assert!(policy.check_url(&url).is_err(), "{url} passed");
        }
        let public = Url::parse("https://o1.ingest.sentry.io/api/1/envelope/").unwrap();
        assert_eq!(policy.check_url(&public), Ok(()));
    }

    #[test]
    fn an_allowed_network_lets_its_addresses_through_and_no_others() {
        let policy = EndpointPolicy::new(vec![parse_net("127.0.0.0/8").unwrap()]);
        assert_eq!(policy.check_ip(ip("127.0.0.1")), Ok(()));
        assert_eq!(policy.check_ip(ip("::ffff:127.0.0.1")), Ok(()));
        assert_eq!(policy.check_ip(ip("::1")), Err(NotPublic::Loopback));
        assert_eq!(policy.check_ip(ip("10.0.0.1")), Err(NotPublic::Private));
        let single = EndpointPolicy::new(vec![parse_net("10.1.2.3").unwrap()]);
        assert_eq!(single.check_ip(ip("10.1.2.3")), Ok(()));
        assert_eq!(single.check_ip(ip("10.1.2.4")), Err(NotPublic::Private));
        assert!(parse_net("10.0.0.0/33").is_err());
        assert!(parse_net("intranet").unwrap_err().contains("CIDR"));
    }

    #[tokio::test]
    async fn a_name_that_resolves_to_loopback_is_refused() {
        let resolver = GuardedResolver::new(EndpointPolicy::default(), SystemLookup);
        let err = resolve(&resolver, "localhost").await.unwrap_err();
        assert_eq!(err, "the endpoint's host resolves to a loopback address");
    }

    #[tokio::test]
    async fn only_the_public_addresses_of_a_mixed_answer_are_kept() {
        let script = Arc::new(Scripted::new(vec![vec![
            ip("10.0.0.7"),
            ip("93.184.215.14"),
            ip("169.254.169.254"),
        ]]));
        let resolver = GuardedResolver::new(EndpointPolicy::default(), script);
        assert_eq!(
            resolve(&resolver, "mixed.example").await.unwrap(),
            [ip("93.184.215.14")]
        );
    }

    #[tokio::test]
    async fn a_name_that_rebinds_to_a_private_address_is_refused_on_the_next_lookup() {
        let script = Arc::new(Scripted::new(vec![
            vec![ip("93.184.215.14")],
            vec![ip("127.0.0.1")],
        ]));
        let resolver = GuardedResolver::new(EndpointPolicy::default(), script);
        assert!(resolve(&resolver, "rebind.example").await.is_ok());
        assert_eq!(
            resolve(&resolver, "rebind.example").await.unwrap_err(),
            "the endpoint's host resolves to a loopback address"
        );
    }

    /// The client connects through the guard: a name that resolves to a
    /// listening loopback port never reaches it, and the error says why.
    #[tokio::test]
    async fn the_tenant_client_never_connects_to_a_refused_address() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut conn, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let mut request = [0u8; 1024];
                let _ = conn.read(&mut request).await;
                let _ = conn
                    .write_all(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n")
                    .await;
            }
        });
        let script = Arc::new(Scripted::new(vec![vec![ip("127.0.0.1")]]));
        let client = with_lookup(
            reqwest::Client::builder(),
            &EndpointPolicy::default(),
            script.clone(),
        )
        .unwrap();
        let err = client
            .post(format!("http://internal.example:{port}/admin"))
            .send()
            .await
            .unwrap_err();
        assert_eq!(refusal(&err), Some(Refused(NotPublic::Loopback)));
        assert_eq!(script.calls.load(Ordering::SeqCst), 1, "resolved once");

        // The same name with loopback allowed connects: the guard, not
        // something else, is what stood in the way.
        let allowed = EndpointPolicy::new(vec![parse_net("127.0.0.0/8").unwrap()]);
        let client = with_lookup(reqwest::Client::builder(), &allowed, script).unwrap();
        let answer = client
            .get(format!("http://internal.example:{port}/"))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 204);
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }
}
