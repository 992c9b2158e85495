//! What the intakes received, and the knobs tests turn: written once for
//! every vendor.
//!
//! The [`Store`] is shared by the vendor handlers, the control API and the
//! in-process [`Intake`](crate::Intake) handle. It owns the recorded
//! requests and entries, the per-vendor counters, the accepted keys and the
//! scripted faults. It must not know any vendor's wire format: vendor modules
//! decide what a request means and hand the store finished records.
//!
//! A presented key is recorded only when it is one of the accepted keys the
//! test configured; an unknown key is never stored or echoed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::HeaderMap;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::control::Fault;
use crate::latency::Latency;
use crate::{IntakeConfig, Vendor};

/// Request headers that carry credentials; they are never recorded.
const CREDENTIAL_HEADERS: &[&str] = &[
    "dd-api-key",
    "dd-application-key",
    "x-license-key",
    "api-key",
    "x-sentry-auth",
    "authorization",
    "proxy-authorization",
    "cookie",
];

/// Where a request carried its credential.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthForm {
    /// In the named request header (for example `DD-API-KEY`).
    Header(&'static str),
    /// In the named query parameter (for example `dd-api-key`).
    Query(&'static str),
}

/// One request an intake answered.
#[derive(Clone, Debug, Serialize)]
pub struct RequestRecord {
    /// Position in arrival order, from 0.
    pub id: u64,
    pub vendor: Vendor,
    /// When the request arrived, on tokio's clock (virtual when paused), so
    /// tests can measure the spacing of retries.
    #[serde(skip)]
    pub arrived: Instant,
    /// When the request arrived, in wall-clock milliseconds since the epoch.
    pub arrived_unix_ms: u64,
    /// Where the credential was found, if anywhere.
    pub auth: Option<AuthForm>,
    /// The credential, only when it was one of the accepted keys.
    pub key: Option<Arc<str>>,
    /// Request headers (lowercase names), without credential headers.
    pub headers: BTreeMap<String, String>,
    /// Size of the body as received (0 when the request was answered before
    /// its body was read: a fault, or a refused key or header).
    pub body_bytes: usize,
    /// Size of the body after decompression, when it was decompressed.
    pub decoded_bytes: Option<usize>,
    /// Entries recorded from this request (0 unless accepted).
    pub entries: usize,
    pub status: u16,
    /// The status came from an injected fault, not from checking the request.
    pub injected: bool,
    /// Why the request was rejected.
    pub reason: Option<String>,
}

/// One accepted log entry.
#[derive(Clone, Debug, Serialize)]
pub struct Entry {
    pub vendor: Vendor,
    /// The [`RequestRecord::id`] of the request that carried it.
    pub request_id: u64,
    /// The accepted key of that request.
    pub key: Option<Arc<str>>,
    /// The vendor would truncate this entry (over its per-entry size limit).
    pub oversized: bool,
    pub value: Value,
}

/// Counters of one vendor intake.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct VendorStats {
    pub requests: u64,
    /// Responses by status code, accepted and rejected alike.
    pub by_status: BTreeMap<u16, u64>,
    /// Entries accepted.
    pub entries: u64,
    /// Accepted entries over the vendor's per-entry limit.
    pub oversized_entries: u64,
    /// Requests answered by an injected fault.
    pub injected: u64,
    /// How long after the shim read each accepted entry (its timestamp) the
    /// intake accepted it; counted for every accepted entry, kept or not.
    pub read_to_accepted: Latency,
    /// When the intake last accepted an entry (recorded the request that
    /// carried it), in wall-clock milliseconds since the epoch; `None` until
    /// it accepts one. A benchmark reads the end of delivery from it instead
    /// of polling for the moment the count is complete.
    pub last_accepted_unix_ms: Option<u64>,
    /// When the intake first accepted an entry, in the same clock: with
    /// [`VendorStats::last_accepted_unix_ms`] the span a backlog took to
    /// arrive, whatever came before it (an outage, a slow start).
    pub first_accepted_unix_ms: Option<u64>,
}

impl VendorStats {
    /// Responses with this status.
    pub fn status(&self, status: u16) -> u64 {
        self.by_status.get(&status).copied().unwrap_or(0)
    }
}

/// Counters of all intakes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    pub vendors: BTreeMap<Vendor, VendorStats>,
    /// Entries accepted but not kept because the recording cap was reached.
    pub dropped_entries: u64,
    /// Requests answered but not kept because the recording cap was reached.
    pub dropped_requests: u64,
}

impl Stats {
    /// The counters of one vendor (zero when it saw no request).
    pub fn vendor(&self, vendor: Vendor) -> VendorStats {
        self.vendors.get(&vendor).cloned().unwrap_or_default()
    }
}

/// Everything recorded so far, as seen by [`Intake::wait_for`](crate::Intake::wait_for).
#[derive(Debug, Default)]
pub struct Records {
    requests: Vec<RequestRecord>,
    entries: Vec<Entry>,
    stats: Stats,
}

impl Records {
    /// Requests in arrival order.
    pub fn requests(&self) -> &[RequestRecord] {
        &self.requests
    }

    /// Accepted entries of one vendor, in arrival order.
    pub fn entries(&self, vendor: Vendor) -> impl Iterator<Item = &Entry> {
        self.entries.iter().filter(move |e| e.vendor == vendor)
    }

    /// How many entries of one vendor were recorded.
    pub fn entry_count(&self, vendor: Vendor) -> usize {
        self.entries(vendor).count()
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }
}

/// A request being answered: the vendor handler fills it in, then hands it
/// to [`Store::record`].
#[derive(Debug)]
pub(crate) struct Pending {
    pub vendor: Vendor,
    pub arrived: Instant,
    pub arrived_unix_ms: u64,
    pub headers: BTreeMap<String, String>,
    pub auth: Option<AuthForm>,
    pub key: Option<Arc<str>>,
    pub body_bytes: usize,
    pub decoded_bytes: Option<usize>,
}

/// Wall-clock milliseconds since the epoch (0 before it).
fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Pending {
    /// Starts the record of a request that arrived now.
    pub fn arrived(vendor: Vendor, headers: &HeaderMap) -> Self {
        let arrived_unix_ms = unix_ms();
        let headers = headers
            .iter()
            .filter(|(name, _)| !CREDENTIAL_HEADERS.contains(&name.as_str()))
            .map(|(name, value)| {
                (
                    name.as_str().to_string(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect();
        Pending {
            vendor,
            arrived: Instant::now(),
            arrived_unix_ms,
            headers,
            auth: None,
            key: None,
            body_bytes: 0,
            decoded_bytes: None,
        }
    }
}

/// What the counters and the latency histogram need of one accepted entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Line {
    /// When the shim read the entry (its timestamp), in milliseconds since
    /// the epoch; `None` when the entry carries no usable timestamp.
    pub time_ms: Option<i64>,
    /// The vendor would truncate the entry (over its per-entry size limit).
    pub oversized: bool,
}

/// How a request was answered, for [`Store::record`].
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Accepted (the vendor's success status) with these entries as
    /// (value, oversized); each is timed from its value.
    Accepted {
        status: u16,
        entries: Vec<(Value, bool)>,
    },
    /// Counted by the counting intake: only what the counters need of each
    /// entry.
    Counted { status: u16, lines: Vec<Line> },
    /// Rejected after checking the request.
    Rejected { status: u16, reason: String },
    /// Answered by an injected fault.
    Injected { status: u16 },
}

struct Inner {
    records: Records,
    faults: Vec<Fault>,
    keys: BTreeMap<Vendor, BTreeSet<Arc<str>>>,
    next_request_id: u64,
    max_entries: usize,
    max_requests: usize,
}

/// Shared state of all intakes. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Store {
    inner: Arc<Mutex<Inner>>,
    /// Bumped after every recorded request, so waiters wake without polling.
    changed: Arc<watch::Sender<u64>>,
}

impl Store {
    pub fn new(config: &IntakeConfig) -> Self {
        let mut keys = BTreeMap::new();
        keys.insert(Vendor::Datadog, to_key_set(&config.datadog.keys));
        keys.insert(Vendor::Sentry, to_key_set(&config.sentry.keys));
        Store {
            inner: Arc::new(Mutex::new(Inner {
                records: Records::default(),
                faults: Vec::new(),
                keys,
                next_request_id: 0,
                max_entries: config.max_recorded_entries,
                max_requests: config.max_recorded_requests,
            })),
            changed: Arc::new(watch::channel(0).0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind; keep going.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the records under the lock.
    pub fn read<T>(&self, f: impl FnOnce(&Records) -> T) -> T {
        f(&self.lock().records)
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The accepted key equal to `presented`, if it is one.
    pub fn accepted_key(&self, vendor: Vendor, presented: &str) -> Option<Arc<str>> {
        self.lock()
            .keys
            .get(&vendor)
            .and_then(|keys| keys.get(presented).cloned())
    }

    /// Replaces the accepted keys of one vendor.
    pub fn set_keys(&self, vendor: Vendor, keys: &[String]) {
        self.lock().keys.insert(vendor, to_key_set(keys));
    }

    /// Adds a fault after the ones already scripted.
    pub fn inject(&self, fault: Fault) {
        self.lock().faults.push(fault);
    }

    /// Removes every scripted fault.
    pub fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    /// The fault that answers the next request to `vendor`, if one is
    /// scripted: the first matching fault in injection order. A counted fault
    /// is used up after its last request.
    pub fn take_fault(&self, vendor: Vendor) -> Option<Fault> {
        let mut inner = self.lock();
        let at = inner.faults.iter().position(|f| f.applies_to(vendor))?;
        let fault = &mut inner.faults[at];
        let taken = fault.clone();
        if let Some(times) = &mut fault.times {
            *times = times.saturating_sub(1);
            if *times == 0 {
                inner.faults.remove(at);
            }
        }
        Some(taken)
    }

    /// Records one answered request and wakes waiters.
    pub fn record(&self, pending: Pending, outcome: Outcome) {
        let vendor = pending.vendor;
        let (status, reason, injected, lines, entries) = match outcome {
            Outcome::Accepted { status, entries } => {
                let lines = entries
                    .iter()
                    .map(|(value, oversized)| Line {
                        time_ms: vendor.entry_time_ms(value),
                        oversized: *oversized,
                    })
                    .collect();
                (status, None, false, lines, entries)
            }
            Outcome::Counted { status, lines } => (status, None, false, lines, Vec::new()),
            Outcome::Rejected { status, reason } => {
                (status, Some(reason), false, Vec::new(), Vec::new())
            }
            Outcome::Injected { status } => (status, None, true, Vec::new(), Vec::new()),
        };
        let accepted_unix_ms = (!lines.is_empty()).then(unix_ms);
        {
            let mut guard = self.lock();
            let inner = &mut *guard;
            let records = &mut inner.records;
            let id = inner.next_request_id;
            inner.next_request_id += 1;

            let stats = records.stats.vendors.entry(vendor).or_default();
            stats.requests += 1;
            *stats.by_status.entry(status).or_default() += 1;
            stats.entries += lines.len() as u64;
            stats.oversized_entries += lines.iter().filter(|line| line.oversized).count() as u64;
            stats.injected += u64::from(injected);
            for line in &lines {
                stats
                    .read_to_accepted
                    .record(line.time_ms, pending.arrived_unix_ms);
            }
            if accepted_unix_ms.is_some() {
                stats.last_accepted_unix_ms = accepted_unix_ms;
                if stats.first_accepted_unix_ms.is_none() {
                    stats.first_accepted_unix_ms = accepted_unix_ms;
                }
            }

            // Counted entries have no value to keep: all count as dropped.
            let room = inner.max_entries.saturating_sub(records.entries.len());
            let count = lines.len();
            let kept = entries.len().min(room);
            records.stats.dropped_entries += (count - kept) as u64;
            records
                .entries
                .extend(
                    entries
                        .into_iter()
                        .take(kept)
                        .map(|(value, oversized)| Entry {
                            vendor,
                            request_id: id,
                            key: pending.key.clone(),
                            oversized,
                            value,
                        }),
                );

            if records.requests.len() < inner.max_requests {
                records.requests.push(RequestRecord {
                    id,
                    vendor,
                    arrived: pending.arrived,
                    arrived_unix_ms: pending.arrived_unix_ms,
                    auth: pending.auth,
                    key: pending.key,
                    headers: pending.headers,
                    body_bytes: pending.body_bytes,
                    decoded_bytes: pending.decoded_bytes,
                    entries: count,
                    status,
                    injected,
                    reason,
                });
            } else {
                records.stats.dropped_requests += 1;
            }
        }
        self.changed.send_modify(|version| *version += 1);
    }

    /// Forgets every request, entry, counter and fault; keeps the keys.
    pub fn reset(&self) {
        {
            let mut inner = self.lock();
            inner.records = Records::default();
            inner.next_request_id = 0;
            inner.faults.clear();
        }
        self.changed.send_modify(|version| *version += 1);
    }
}

fn to_key_set(keys: &[String]) -> BTreeSet<Arc<str>> {
    keys.iter().map(|k| Arc::from(k.as_str())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending() -> Pending {
        Pending::arrived(Vendor::Datadog, &HeaderMap::new())
    }

    #[test]
    fn credential_headers_are_never_recorded() {
        let mut headers = HeaderMap::new();
        headers.insert("dd-api-key", "secret-key".parse().unwrap());
        headers.insert("content-type", "application/json".parse().unwrap());
        let pending = Pending::arrived(Vendor::Datadog, &headers);
        assert!(!pending.headers.contains_key("dd-api-key"));
        assert_eq!(pending.headers["content-type"], "application/json");
    }

    #[test]
    fn accepted_entries_are_timed_from_their_timestamp_to_arrival_even_beyond_the_cap() {
        let store = Store::new(&IntakeConfig {
            max_recorded_entries: 0,
            ..IntakeConfig::default()
        });
        let mut arrived = pending();
        arrived.arrived_unix_ms = 1_714_564_810_000;
        store.record(
            arrived,
            Outcome::Accepted {
                status: 202,
                entries: vec![
                    (
                        serde_json::json!({"message": "a", "timestamp": 1_714_564_809_750_i64}),
                        false,
                    ),
                    (
                        serde_json::json!({"message": "b", "timestamp": 1_714_564_809_990_i64}),
                        false,
                    ),
                    (serde_json::json!({"message": "no timestamp"}), false),
                ],
            },
        );
        store.read(|r| {
            let latency = r.stats().vendor(Vendor::Datadog).read_to_accepted.summary();
            assert_eq!(r.entry_count(Vendor::Datadog), 0);
            assert_eq!((latency.count, latency.unstamped), (2, 1));
            assert_eq!(latency.max_ms, 250);
            assert_eq!(latency.p50_ms, 10);
        });
    }

    #[test]
    fn counted_entries_are_counted_and_timed_but_never_kept() {
        let store = Store::new(&IntakeConfig {
            max_recorded_entries: 0,
            ..IntakeConfig::default()
        });
        let mut arrived = pending();
        arrived.arrived_unix_ms = 1_714_564_810_000;
        let line = |time_ms, oversized| Line { time_ms, oversized };
        store.record(
            arrived,
            Outcome::Counted {
                status: 202,
                lines: vec![line(Some(1_714_564_809_750), true), line(None, false)],
            },
        );
        store.read(|r| {
            let stats = r.stats();
            let datadog = stats.vendor(Vendor::Datadog);
            assert_eq!((datadog.entries, datadog.oversized_entries), (2, 1));
            assert_eq!(stats.dropped_entries, 2);
            assert_eq!(r.entry_count(Vendor::Datadog), 0);
            assert_eq!(r.requests()[0].entries, 2);
            let latency = datadog.read_to_accepted.summary();
            assert_eq!(
                (latency.count, latency.unstamped, latency.max_ms),
                (1, 1, 250)
            );
        });
    }

    #[test]
    fn entries_beyond_the_cap_are_counted_as_dropped() {
        let store = Store::new(&IntakeConfig {
            max_recorded_entries: 3,
            max_recorded_requests: 1,
            ..IntakeConfig::default()
        });
        let accepted = |n| Outcome::Accepted {
            status: 202,
            entries: (0..n).map(|i| (Value::from(i), false)).collect(),
        };
        store.record(pending(), accepted(2));
        store.record(pending(), accepted(2));
        store.read(|r| {
            assert_eq!(r.entry_count(Vendor::Datadog), 3);
            assert_eq!(r.requests().len(), 1);
            let stats = r.stats();
            assert_eq!(stats.dropped_entries, 1);
            assert_eq!(stats.dropped_requests, 1);
            assert_eq!(stats.vendor(Vendor::Datadog).entries, 4);
            assert_eq!(stats.vendor(Vendor::Datadog).status(202), 2);
        });
    }
}
