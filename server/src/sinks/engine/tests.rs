//! Engine behaviour with an in-memory source and a scripted sink, in virtual
//! time (`start_paused`): every duration below is exact, not a threshold.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::{sleep, Instant};

use super::source::memory::MemorySource;
use super::*;
use crate::queue::QueuedLine;
use crate::route::DestinationKind;
use crate::sinks::{BatchLimits, Prepared, SecretError, SendOutcome, Sink, SinkError};

/// What the scripted sink does with one send.
enum Reply {
    Now(Result<SendOutcome, SinkError>),
    After(Duration, Result<SendOutcome, SinkError>),
    Never,
}

struct Call {
    at: Instant,
    payloads: Vec<String>,
    accepted: bool,
}

type Script = Box<dyn FnMut(usize, &[QueuedLine]) -> Reply + Send>;

/// A test double of a vendor sink: records every call and answers from a
/// script (attempt number, lines) → reply.
struct FakeSink {
    limits: BatchLimits,
    calls: Mutex<Vec<Call>>,
    script: Mutex<Script>,
}

impl FakeSink {
    fn new(
        limits: BatchLimits,
        script: impl FnMut(usize, &[QueuedLine]) -> Reply + Send + 'static,
    ) -> Arc<Self> {
        Arc::new(Self {
            limits,
            calls: Mutex::new(Vec::new()),
            script: Mutex::new(Box::new(script)),
        })
    }

    fn accepting(limits: BatchLimits) -> Arc<Self> {
        Self::new(limits, |_, _| Reply::Now(Ok(SendOutcome::accepted())))
    }

    fn call_count(&self) -> usize {
        self.calls.lock().unwrap().len()
    }

    fn call_times(&self) -> Vec<Instant> {
        self.calls.lock().unwrap().iter().map(|c| c.at).collect()
    }

    fn batch_sizes(&self) -> Vec<usize> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .map(|c| c.payloads.len())
            .collect()
    }

    /// Payloads of accepted calls, in call order.
    fn delivered(&self) -> Vec<String> {
        let calls = self.calls.lock().unwrap();
        calls
            .iter()
            .filter(|c| c.accepted)
            .flat_map(|c| c.payloads.clone())
            .collect()
    }
}

#[async_trait]
impl Sink for FakeSink {
    fn kind(&self) -> DestinationKind {
        DestinationKind::Datadog
    }

    fn limits(&self) -> BatchLimits {
        self.limits
    }

    fn event_size(&self, line: &QueuedLine) -> usize {
        line.line.data.len() + 1
    }

    async fn send_prepared(
        &self,
        lines: &[QueuedLine],
        _prepared: Prepared,
    ) -> Result<SendOutcome, SinkError> {
        let reply = {
            let mut calls = self.calls.lock().unwrap();
            let attempt = calls.len();
            let reply = (self.script.lock().unwrap())(attempt, lines);
            let accepted = matches!(reply, Reply::Now(Ok(_)) | Reply::After(_, Ok(_)));
            calls.push(Call {
                at: Instant::now(),
                payloads: lines
                    .iter()
                    .map(|l| String::from_utf8_lossy(&l.line.data).into_owned())
                    .collect(),
                accepted,
            });
            reply
        };
        match reply {
            Reply::Now(result) => result,
            Reply::After(delay, result) => {
                sleep(delay).await;
                result
            }
            Reply::Never => std::future::pending().await,
        }
    }
}

fn limits(max_events: usize, max_linger: Duration) -> BatchLimits {
    BatchLimits {
        max_events,
        max_bytes: 1_000_000,
        max_linger,
    }
}

fn route(agent: &str) -> RouteKey {
    RouteKey {
        agent_id: agent.to_string(),
        kind: DestinationKind::Datadog,
        cred_id: "c0ffee".to_string(),
    }
}

fn settings() -> EngineSettings {
    EngineSettings {
        retry: RetryPolicy {
            jitter: 0.0,
            ..RetryPolicy::default()
        },
        ..EngineSettings::default()
    }
}

fn engine(
    source: &MemorySource,
    sinks: Vec<(RouteKey, Arc<FakeSink>)>,
    settings: EngineSettings,
) -> Engine<MemorySource> {
    let sinks: HashMap<RouteKey, Arc<FakeSink>> = sinks.into_iter().collect();
    let build = move |route: &RouteKey, _: &Secrets| -> Result<Arc<dyn Sink>, SecretError> {
        match sinks.get(route) {
            Some(sink) => Ok(Arc::clone(sink) as Arc<dyn Sink>),
            None => Err(SecretError::Missing {
                secret: "TEST_SECRET",
                destination: route.kind.name(),
            }),
        }
    };
    Engine::new(source.clone(), settings, build, Shutdown::new())
}

/// An engine whose every route delivers through `sink`, with route `a1`
/// started.
fn engine_with_sink(source: &MemorySource, sink: Arc<dyn Sink>) -> Engine<MemorySource> {
    let build = move |_: &RouteKey, _: &Secrets| -> Result<Arc<dyn Sink>, SecretError> {
        Ok(Arc::clone(&sink))
    };
    let engine = Engine::new(source.clone(), settings(), build, Shutdown::new());
    engine.ensure_route(route("a1"), Secrets::default());
    engine
}

fn payloads(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

fn push(source: &MemorySource, agent: &str, lines: &[String]) {
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    source.push(agent, &refs);
}

fn status_of(engine: &Engine<MemorySource>, agent: &str) -> RouteStatus {
    engine
        .statuses()
        .into_iter()
        .find(|s| s.agent_id == agent)
        .expect("route is known")
}

/// Lets virtual time run until `cond` holds (at most a virtual hour).
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..360_000 {
        if cond() {
            return;
        }
        sleep(Duration::from_millis(10)).await;
    }
    panic!("never happened: {what}");
}

#[tokio::test(start_paused = true)]
async fn delivers_everything_in_order_and_commits_the_last_line() {
    let source = MemorySource::default();
    let lines = payloads("line-", 250);
    push(&source, "a1", &lines);
    let sink = FakeSink::accepting(limits(100, Duration::from_secs(1)));
    let engine = engine(&source, vec![(route("a1"), sink.clone())], settings());
    engine.ensure_route(route("a1"), Secrets::default());

    until("all committed", || {
        source.committed_cursor(&route("a1")) == source.last_cursor("a1")
    })
    .await;
    assert_eq!(sink.delivered(), lines);
    assert_eq!(sink.batch_sizes(), [100, 100, 50]);
    let status = status_of(&engine, "a1");
    assert_eq!(status.delivered_lines, 250);
    assert_eq!(status.delivered_requests, 3);
    assert_eq!(status.pending_lines, 0);
    until("idle", || {
        status_of(&engine, "a1").state == RouteState::Idle
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn full_batches_go_at_once_and_a_partial_batch_waits_for_the_linger() {
    let source = MemorySource::default();
    push(&source, "a1", &payloads("x", 150));
    let sink = FakeSink::accepting(limits(100, Duration::from_secs(1)));
    let engine = engine(&source, vec![(route("a1"), sink.clone())], settings());
    let t0 = Instant::now();
    engine.ensure_route(route("a1"), Secrets::default());

    until("two sends", || sink.call_count() == 2).await;
    assert_eq!(sink.call_times(), [t0, t0 + Duration::from_secs(1)]);
    assert_eq!(sink.batch_sizes(), [100, 50]);
}

#[tokio::test(start_paused = true)]
async fn lines_appended_while_lingering_join_the_same_batch() {
    let source = MemorySource::default();
    push(&source, "a1", &payloads("early", 3));
    let sink = FakeSink::accepting(limits(100, Duration::from_secs(1)));
    let engine = engine(&source, vec![(route("a1"), sink.clone())], settings());
    let t0 = Instant::now();
    engine.ensure_route(route("a1"), Secrets::default());
    sleep(Duration::from_millis(400)).await;
    push(&source, "a1", &payloads("late", 2));

    until("one send", || sink.call_count() == 1).await;
    sleep(Duration::from_secs(5)).await;
    assert_eq!(sink.call_times(), [t0 + Duration::from_secs(1)]);
    assert_eq!(
        sink.delivered(),
        ["early0", "early1", "early2", "late0", "late1"]
    );
}

#[tokio::test(start_paused = true)]
async fn retryable_failures_back_off_exponentially_then_deliver() {
    let source = MemorySource::default();
    push(&source, "a1", &payloads("x", 5));
    let sink = FakeSink::new(limits(100, Duration::ZERO), |attempt, _| {
        if attempt < 4 {
            Reply::Now(Err(SinkError::Retryable {
                reason: "503".into(),
                retry_after: None,
            }))
        } else {
            Reply::Now(Ok(SendOutcome::accepted()))
        }
    });
    let engine = engine(&source, vec![(route("a1"), sink.clone())], settings());
    engine.ensure_route(route("a1"), Secrets::default());

    until("retrying", || {
        status_of(&engine, "a1").state == RouteState::Retrying
    })
    .await;
    until("committed", || {
        source.committed_cursor(&route("a1")).is_some()
    })
    .await;
    let times = sink.call_times();
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(
        gaps,
        [100, 200, 400, 800].map(Duration::from_millis),
        "backoff doubles from the minimum"
    );
    let status = status_of(&engine, "a1");
    assert_eq!(status.failed_requests, 4);
    assert_eq!(
        status.consecutive_failures, 0,
        "a success resets the breaker"
    );
    assert_eq!(status.last_error.as_deref(), Some("503"));
    assert_eq!(sink.delivered().len(), 5);
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_honoured_and_never_shorter_than_the_minimum() {
    let source = MemorySource::default();
    push(&source, "a1", &payloads("x", 1));
    let sink = FakeSink::new(limits(100, Duration::ZERO), |attempt, _| match attempt {
        0 => Reply::Now(Err(SinkError::Retryable {
            reason: "429".into(),
            retry_after: Some(Duration::from_secs(30)),
        })),
        1 => Reply::Now(Err(SinkError::Retryable {
            reason: "429".into(),
            retry_after: Some(Duration::ZERO),
        })),
        _ => Reply::Now(Ok(SendOutcome::accepted())),
    });
    let engine = engine(&source, vec![(route("a1"), sink.clone())], settings());
    let t0 = Instant::now();
    engine.ensure_route(route("a1"), Secrets::default());

    until("committed", || {
        source.committed_cursor(&route("a1")).is_some()
    })
    .await;
    assert_eq!(
        sink.call_times(),
        [
            t0,
            t0 + Duration::from_secs(30),
            t0 + Duration::from_millis(30_100)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_rejected_line_is_isolated_by_splitting_and_only_it_is_dropped() {
    let source = MemorySource::default();
    let lines = payloads("l", 8);
    push(&source, "a1", &lines);
    let sink = FakeSink::new(limits(100, Duration::ZERO), |_, batch| {
        if batch.iter().any(|l| &l.line.data[..] == b"l5") {
            Reply::Now(Err(SinkError::PayloadRejected {
                reason: "Datadog answered 400 Bad Request".into(),
            }))
        } else {
            Reply::Now(Ok(SendOutcome::accepted()))
        }
    });
    let engine = engine(&source, vec![(route("a1"), sink.clone())], settings());
    engine.ensure_route(route("a1"), Secrets::default());

    until("all committed", || {
        source.committed_cursor(&route("a1")) == source.last_cursor("a1")
    })
    .await;
    let expected: Vec<String> = lines.iter().filter(|l| *l != "l5").cloned().collect();
    assert_eq!(
        sink.delivered(),
        expected,
        "good lines in order, l5 only dropped"
    );
    let status = status_of(&engine, "a1");
    assert_eq!(status.dropped_lines, 1);
    assert_eq!(status.delivered_lines, 7);
    // 8 → 4+4 → (2+2) → (1+1): fewer than 2 × 8 sends, never a loop.
    assert!(sink.call_count() < 2 * 8, "{}", sink.call_count());
    assert!(
        sink.call_times().iter().all(|t| *t == sink.call_times()[0]),
        "splitting does not wait"
    );
}

#[tokio::test(start_paused = true)]
async fn refused_credentials_park_the_route_keep_the_lines_and_resume() {
    let source = MemorySource::default();
    push(&source, "a1", &payloads("x", 3));
    let accept = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&accept);
    let sink = FakeSink::new(limits(100, Duration::ZERO), move |_, _| {
        if flag.load(Ordering::SeqCst) {
            Reply::Now(Ok(SendOutcome::accepted()))
        } else {
            Reply::Now(Err(SinkError::Unauthorized {
                reason: "Datadog answered 403 Forbidden".into(),
            }))
        }
    });
    let engine = engine(&source, vec![(route("a1"), sink.clone())], settings());
    let t0 = Instant::now();
    engine.ensure_route(route("a1"), Secrets::default());

    until("second attempt", || sink.call_count() == 2).await;
    let status = status_of(&engine, "a1");
    assert_eq!(status.state, RouteState::CredentialsRejected);
    assert!(status.last_error.unwrap().contains("403"));
    assert_eq!(status.pending_lines, 3);
    assert_eq!(
        source.committed_cursor(&route("a1")),
        None,
        "lines are kept"
    );
    // The first wait is half to all of the park interval (60 s).
    let second = sink.call_times()[1] - t0;
    assert!((30..=60).contains(&second.as_secs()), "{second:?}");

    accept.store(true, Ordering::SeqCst);
    until("committed", || {
        source.committed_cursor(&route("a1")).is_some()
    })
    .await;
    // The next one is slower: one to two park intervals.
    let third = sink.call_times()[2] - sink.call_times()[1];
    assert!((60..=120).contains(&third.as_secs()), "{third:?}");
    assert_eq!(sink.delivered(), ["x0", "x1", "x2"]);
    until("unparked", || {
        status_of(&engine, "a1").state == RouteState::Idle
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_stuck_or_failing_route_does_not_delay_other_routes() {
    let source = MemorySource::default();
    for agent in ["stuck", "failing", "healthy"] {
        push(&source, agent, &payloads(agent, 10));
    }
    let stuck = FakeSink::new(limits(100, Duration::ZERO), |_, _| Reply::Never);
    let failing = FakeSink::new(limits(100, Duration::ZERO), |_, _| {
        Reply::Now(Err(SinkError::Retryable {
            reason: "500".into(),
            retry_after: None,
        }))
    });
    let healthy = FakeSink::accepting(limits(100, Duration::ZERO));
    let engine = engine(
        &source,
        vec![
            (route("stuck"), stuck.clone()),
            (route("failing"), failing.clone()),
            (route("healthy"), healthy.clone()),
        ],
        settings(),
    );
    let t0 = Instant::now();
    for agent in ["stuck", "failing", "healthy"] {
        engine.ensure_route(route(agent), Secrets::default());
    }
    until("stuck and failing started", || {
        stuck.call_count() == 1 && failing.call_count() >= 2
    })
    .await;
    until("healthy delivered", || {
        source.committed_cursor(&route("healthy")) == source.last_cursor("healthy")
    })
    .await;
    assert_eq!(healthy.call_times(), [t0], "healthy went at once");

    // More lines for the healthy route while the others are still down.
    push(&source, "healthy", &payloads("more", 5));
    until("healthy delivered again", || {
        source.committed_cursor(&route("healthy")) == source.last_cursor("healthy")
    })
    .await;
    assert_eq!(stuck.call_count(), 1);
    assert_eq!(source.committed_cursor(&route("stuck")), None);
    assert_eq!(source.committed_cursor(&route("failing")), None);
}

#[tokio::test(start_paused = true)]
async fn a_send_without_an_answer_times_out_and_is_retried() {
    let source = MemorySource::default();
    push(&source, "a1", &payloads("x", 2));
    let sink = FakeSink::new(limits(100, Duration::ZERO), |attempt, _| match attempt {
        0 => Reply::Never,
        _ => Reply::Now(Ok(SendOutcome::accepted())),
    });
    let settings = EngineSettings {
        send_timeout: Duration::from_secs(10),
        ..settings()
    };
    let engine = engine(&source, vec![(route("a1"), sink.clone())], settings);
    let t0 = Instant::now();
    engine.ensure_route(route("a1"), Secrets::default());

    until("committed", || {
        source.committed_cursor(&route("a1")).is_some()
    })
    .await;
    assert_eq!(sink.call_times(), [t0, t0 + Duration::from_millis(10_100)]);
    assert!(status_of(&engine, "a1")
        .last_error
        .unwrap()
        .contains("no answer within 10s"));
}

#[tokio::test(start_paused = true)]
async fn shutdown_lets_a_send_in_flight_finish_and_commit() {
    let source = MemorySource::default();
    push(&source, "a1", &payloads("x", 4));
    let sink = FakeSink::new(limits(100, Duration::ZERO), |_, _| {
        Reply::After(Duration::from_secs(2), Ok(SendOutcome::accepted()))
    });
    let engine = engine(&source, vec![(route("a1"), sink.clone())], settings());
    engine.ensure_route(route("a1"), Secrets::default());
    until("sending", || sink.call_count() == 1).await;
    push(&source, "a1", &payloads("after", 2));

    let started = Instant::now();
    let report = engine.shutdown(Duration::from_secs(10)).await;
    assert_eq!(
        report,
        ShutdownReport {
            finished: 1,
            aborted: 0
        }
    );
    assert!(Instant::now() - started <= Duration::from_secs(2));
    assert_eq!(sink.call_count(), 1, "no new batch after shutdown began");
    assert_eq!(sink.delivered(), ["x0", "x1", "x2", "x3"]);
    let committed = source.committed_cursor(&route("a1")).unwrap();
    assert_eq!(committed.index, 3, "the lines after it stay queued");
    assert_eq!(status_of(&engine, "a1").state, RouteState::Stopped);
}

#[tokio::test(start_paused = true)]
async fn shutdown_aborts_sends_still_running_after_the_grace_period() {
    let source = MemorySource::default();
    push(&source, "a1", &payloads("x", 4));
    let sink = FakeSink::new(limits(100, Duration::ZERO), |_, _| Reply::Never);
    let engine = engine(&source, vec![(route("a1"), sink.clone())], settings());
    engine.ensure_route(route("a1"), Secrets::default());
    until("sending", || sink.call_count() == 1).await;

    let started = Instant::now();
    let report = engine.shutdown(Duration::from_secs(5)).await;
    assert_eq!(Instant::now() - started, Duration::from_secs(5));
    assert_eq!(
        report,
        ShutdownReport {
            finished: 0,
            aborted: 1
        }
    );
    assert_eq!(
        source.committed_cursor(&route("a1")),
        None,
        "lines stay queued"
    );
    assert_eq!(status_of(&engine, "a1").state, RouteState::Stopped);
}

#[tokio::test(start_paused = true)]
async fn the_process_shutdown_signal_stops_idle_workers() {
    let source = MemorySource::default();
    let sink = FakeSink::accepting(limits(100, Duration::ZERO));
    let process = Shutdown::new();
    let sinks = Arc::clone(&sink);
    let engine = Engine::new(
        source.clone(),
        settings(),
        move |_: &RouteKey, _: &Secrets| -> Result<Arc<dyn Sink>, SecretError> {
            Ok(Arc::clone(&sinks) as Arc<dyn Sink>)
        },
        process.clone(),
    );
    engine.ensure_route(route("a1"), Secrets::default());
    until("idle", || {
        status_of(&engine, "a1").state == RouteState::Idle
    })
    .await;
    process.trigger();
    until("stopped", || {
        status_of(&engine, "a1").state == RouteState::Stopped
    })
    .await;
    push(&source, "a1", &payloads("x", 1));
    sleep(Duration::from_secs(5)).await;
    assert_eq!(sink.call_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_route_whose_secrets_build_no_sink_is_parked_in_config_and_keeps_its_lines() {
    let source = MemorySource::default();
    push(&source, "a1", &payloads("x", 2));
    let engine = Engine::new(
        source.clone(),
        settings(),
        |_: &RouteKey, _: &Secrets| -> Result<Arc<dyn Sink>, SecretError> {
            Err(SecretError::NotOneOf {
                secret: "DATADOG_REGION",
                what: "Datadog region",
                accepted: "us1, eu",
            })
        },
        Shutdown::new(),
    );
    engine.ensure_route(route("a1"), Secrets::default());
    sleep(Duration::from_secs(60)).await;

    let status = status_of(&engine, "a1");
    assert_eq!(status.state, RouteState::InvalidSecret);
    assert_eq!(
        status.last_error.as_deref(),
        Some(r#"DATADOG_REGION is not a Datadog region; use one of us1, eu"#)
    );
    assert_eq!(source.committed_cursor(&route("a1")), None);
}

#[tokio::test(start_paused = true)]
async fn ensure_route_is_idempotent() {
    let source = MemorySource::default();
    push(&source, "a1", &payloads("x", 3));
    let sink = FakeSink::accepting(limits(100, Duration::ZERO));
    let engine = engine(&source, vec![(route("a1"), sink.clone())], settings());
    for _ in 0..3 {
        engine.ensure_route(route("a1"), Secrets::default());
    }
    until("committed", || {
        source.committed_cursor(&route("a1")).is_some()
    })
    .await;
    sleep(Duration::from_secs(5)).await;
    assert_eq!(engine.statuses().len(), 1);
    assert_eq!(sink.delivered(), ["x0", "x1", "x2"], "each line sent once");
}

#[tokio::test(start_paused = true)]
async fn queue_read_failures_are_retried_and_reported() {
    let source = MemorySource::default();
    push(&source, "a1", &payloads("x", 3));
    source.fail_next_reads(3);
    let sink = FakeSink::accepting(limits(100, Duration::ZERO));
    let engine = engine(&source, vec![(route("a1"), sink.clone())], settings());
    engine.ensure_route(route("a1"), Secrets::default());

    until("committed", || {
        source.committed_cursor(&route("a1")).is_some()
    })
    .await;
    assert_eq!(sink.delivered(), ["x0", "x1", "x2"]);
    let error = status_of(&engine, "a1").last_error.unwrap();
    assert!(
        error.starts_with("queue failed while reading lines"),
        "{error}"
    );
}

#[tokio::test(start_paused = true)]
async fn lines_a_vendor_refuses_inside_an_accepted_request_are_counted_as_dropped() {
    let source = MemorySource::default();
    push(&source, "a1", &payloads("x", 5));
    let sink = FakeSink::new(limits(100, Duration::ZERO), |_, _| {
        Reply::Now(Ok(SendOutcome {
            rejected: 2,
            rejected_reason: Some("too old".into()),
            ..SendOutcome::default()
        }))
    });
    let engine = engine(&source, vec![(route("a1"), sink.clone())], settings());
    engine.ensure_route(route("a1"), Secrets::default());

    until("committed", || {
        source.committed_cursor(&route("a1")) == source.last_cursor("a1")
    })
    .await;
    let status = status_of(&engine, "a1");
    assert_eq!(status.delivered_lines, 3);
    assert_eq!(status.dropped_lines, 2);
    assert_eq!(sink.call_count(), 1, "refused lines are not retried");
}

#[tokio::test(start_paused = true)]
async fn lines_a_sink_sent_again_restamped_are_delivered_and_kept_for_the_routes_notice() {
    let source = MemorySource::default();
    push(&source, "a1", &payloads("x", 3));
    let sink = FakeSink::new(limits(100, Duration::ZERO), |_, _| {
        Reply::Now(Ok(SendOutcome {
            restamped: late::Restamps {
                expired: 2,
                ..late::Restamps::default()
            },
            ..SendOutcome::default()
        }))
    });
    let engine = engine(&source, vec![(route("a1"), sink.clone())], settings());
    engine.ensure_route(route("a1"), Secrets::default());

    until("committed", || {
        source.committed_cursor(&route("a1")) == source.last_cursor("a1")
    })
    .await;
    let status = status_of(&engine, "a1");
    assert_eq!((status.delivered_lines, status.dropped_lines), (3, 0));
    let restamps = engine.take_restamps();
    assert_eq!(restamps.len(), 1);
    assert_eq!(restamps[0].1.expired, 2);
}

#[tokio::test(start_paused = true)]
async fn an_accepted_request_that_asks_to_hold_off_delays_only_the_next_send() {
    let source = MemorySource::default();
    push(&source, "a1", &payloads("x", 3));
    // One line per request: the first acceptance asks to hold off 30 s, the
    // second one asks for nothing.
    let sink = FakeSink::new(limits(1, Duration::ZERO), |attempt, _| {
        Reply::Now(Ok(SendOutcome {
            hold_off: (attempt == 0).then_some(Duration::from_secs(30)),
            ..SendOutcome::default()
        }))
    });
    let engine = engine(&source, vec![(route("a1"), sink.clone())], settings());
    let t0 = Instant::now();
    engine.ensure_route(route("a1"), Secrets::default());

    until("all committed", || {
        source.committed_cursor(&route("a1")) == source.last_cursor("a1")
    })
    .await;
    assert_eq!(
        sink.call_times(),
        [
            t0,
            t0 + Duration::from_secs(30),
            t0 + Duration::from_secs(30)
        ]
    );
    let status = status_of(&engine, "a1");
    assert_eq!(status.delivered_lines, 3);
    assert_eq!(status.failed_requests, 0, "holding off is not a failure");
}

#[tokio::test(start_paused = true)]
async fn a_hold_off_is_capped_like_retry_after() {
    let source = MemorySource::default();
    push(&source, "a1", &payloads("x", 2));
    let sink = FakeSink::new(limits(1, Duration::ZERO), |_, _| {
        Reply::Now(Ok(SendOutcome {
            hold_off: Some(Duration::from_secs(86_400)),
            ..SendOutcome::default()
        }))
    });
    let engine = engine(&source, vec![(route("a1"), sink.clone())], settings());
    let t0 = Instant::now();
    engine.ensure_route(route("a1"), Secrets::default());

    until("two sends", || sink.call_count() == 2).await;
    assert_eq!(
        sink.call_times(),
        [t0, t0 + RetryPolicy::default().retry_after_cap]
    );
}

#[tokio::test(start_paused = true)]
async fn the_oldest_undelivered_line_is_reported_while_failing_and_cleared_once_delivered() {
    let source = MemorySource::default();
    push(&source, "a1", &payloads("line-", 3));
    let down = Arc::new(AtomicBool::new(true));
    let vendor_down = Arc::clone(&down);
    let sink = FakeSink::new(limits(100, Duration::ZERO), move |_, _| {
        if vendor_down.load(Ordering::SeqCst) {
            Reply::Now(Err(SinkError::Retryable {
                reason: "503".into(),
                retry_after: None,
            }))
        } else {
            Reply::Now(Ok(SendOutcome::accepted()))
        }
    });
    let engine = engine(&source, vec![(route("a1"), sink.clone())], settings());
    engine.ensure_route(route("a1"), Secrets::default());

    until("retrying", || sink.call_count() >= 2).await;
    assert_eq!(
        status_of(&engine, "a1").oldest_undelivered_ns,
        Some(1_700_000_000_000_000_000),
        "the head line's shim timestamp while the vendor fails"
    );
    down.store(false, Ordering::SeqCst);
    until("delivered and idle", || {
        let status = status_of(&engine, "a1");
        status.delivered_lines == 3 && status.state == RouteState::Idle
    })
    .await;
    assert_eq!(status_of(&engine, "a1").oldest_undelivered_ns, None);
}

#[tokio::test(start_paused = true)]
async fn a_parked_route_reports_its_oldest_line_from_the_queue() {
    let source = MemorySource::default();
    push(&source, "a1", &payloads("kept-", 2));
    // No sink for this route: it is parked in `config` without a worker.
    let engine = engine(&source, vec![], settings());
    engine.ensure_route(route("a1"), Secrets::default());
    assert_eq!(status_of(&engine, "a1").state, RouteState::InvalidSecret);
    assert_eq!(
        engine.oldest_undelivered(),
        [(route("a1"), Some(1_700_000_000_000_000_000))]
    );
}

// --- Replaying a parked route's backlog with newer credentials ---

/// One vendor that accepts some tokens (secret `TOKEN`) and refuses the
/// rest with 403; a token starting with `invalid` builds no sink at all.
/// Records (route cred id, token, payload) per accepted line.
#[derive(Clone, Default)]
struct KeyedVendor {
    accepted_tokens: Arc<Mutex<Vec<String>>>,
    delivered: Arc<Mutex<Vec<(String, String, String)>>>,
    attempts: Arc<Mutex<Vec<(String, String, Instant)>>>,
}

struct KeyedSink {
    cred_id: String,
    token: String,
    vendor: KeyedVendor,
}

#[async_trait]
impl Sink for KeyedSink {
    fn kind(&self) -> DestinationKind {
        DestinationKind::Datadog
    }

    fn limits(&self) -> BatchLimits {
        limits(100, Duration::ZERO)
    }

    fn event_size(&self, line: &QueuedLine) -> usize {
        line.line.data.len() + 1
    }

    async fn send_prepared(
        &self,
        lines: &[QueuedLine],
        _prepared: Prepared,
    ) -> Result<SendOutcome, SinkError> {
        let v = &self.vendor;
        v.attempts
            .lock()
            .unwrap()
            .push((self.cred_id.clone(), self.token.clone(), Instant::now()));
        if !v.accepted_tokens.lock().unwrap().contains(&self.token) {
            return Err(SinkError::Unauthorized {
                reason: "Datadog answered 403 Forbidden".into(),
            });
        }
        let mut delivered = v.delivered.lock().unwrap();
        for line in lines {
            delivered.push((
                self.cred_id.clone(),
                self.token.clone(),
                String::from_utf8_lossy(&line.line.data).into_owned(),
            ));
        }
        Ok(SendOutcome::accepted())
    }
}

impl KeyedVendor {
    fn accepting(tokens: &[&str]) -> Self {
        let vendor = Self::default();
        *vendor.accepted_tokens.lock().unwrap() = tokens.iter().map(|t| t.to_string()).collect();
        vendor
    }

    fn engine(&self, source: &MemorySource) -> Engine<MemorySource> {
        let vendor = self.clone();
        let build =
            move |route: &RouteKey, secrets: &Secrets| -> Result<Arc<dyn Sink>, SecretError> {
                let token = secrets.get("TOKEN").unwrap_or_default().to_string();
                if token.starts_with("invalid") {
                    return Err(SecretError::Missing {
                        secret: "TOKEN",
                        destination: route.kind.name(),
                    });
                }
                Ok(Arc::new(KeyedSink {
                    cred_id: route.cred_id.clone(),
                    token,
                    vendor: vendor.clone(),
                }))
            };
        Engine::new(source.clone(), settings(), build, Shutdown::new())
    }

    /// (token, payload) of the lines `cred_id`'s route delivered, in order.
    fn delivered_by(&self, cred_id: &str) -> Vec<(String, String)> {
        self.delivered
            .lock()
            .unwrap()
            .iter()
            .filter(|(c, _, _)| c == cred_id)
            .map(|(_, t, p)| (t.clone(), p.clone()))
            .collect()
    }

    /// Send attempts of `cred_id`'s route with `token`, by time.
    fn attempts_with(&self, cred_id: &str, token: &str) -> Vec<Instant> {
        self.attempts
            .lock()
            .unwrap()
            .iter()
            .filter(|(c, t, _)| c == cred_id && t == token)
            .map(|(_, _, at)| *at)
            .collect()
    }
}

fn cred_route(agent: &str, cred_id: &str) -> RouteKey {
    RouteKey {
        agent_id: agent.to_string(),
        kind: DestinationKind::Datadog,
        cred_id: cred_id.to_string(),
    }
}

fn token(value: &str) -> Secrets {
    Secrets(
        [("TOKEN".to_string(), value.to_string())]
            .into_iter()
            .collect(),
    )
}

fn status_of_route(engine: &Engine<MemorySource>, route: &RouteKey) -> RouteStatus {
    engine
        .statuses()
        .into_iter()
        .find(|s| s.agent_id == route.agent_id && s.cred_id == route.cred_id)
        .expect("route is known")
}

fn with_token(token: &str, payloads: &[String]) -> Vec<(String, String)> {
    payloads
        .iter()
        .map(|p| (token.to_string(), p.clone()))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_route_parked_with_refused_credentials_replays_its_backlog_with_newer_ones() {
    let source = MemorySource::default();
    let backlog = payloads("x", 5);
    push(&source, "a1", &backlog);
    let vendor = KeyedVendor::accepting(&["key-b"]);
    let engine = vendor.engine(&source);
    let old = cred_route("a1", "aaaa");
    let new = cred_route("a1", "bbbb");
    engine.ensure_route(old.clone(), token("key-a"));
    until("parked", || {
        status_of_route(&engine, &old).state == RouteState::CredentialsRejected
    })
    .await;
    assert_eq!(source.committed_cursor(&old), None, "lines are kept");

    // A new deployment of the agent brings key B for the same destination.
    let redeployed = Instant::now();
    engine.ensure_route(new.clone(), token("key-b"));
    engine.offer_credentials(&new, &token("key-b"));

    until("old route's backlog delivered", || {
        source.committed_cursor(&old) == source.last_cursor("a1")
    })
    .await;
    assert_eq!(
        vendor.delivered_by("aaaa"),
        with_token("key-b", &backlog),
        "the whole backlog, in order, with the newer key"
    );
    assert_eq!(
        vendor.attempts_with("aaaa", "key-b")[0],
        redeployed,
        "the parked route retries at once, not after the park interval"
    );
    assert_eq!(
        source.stored_secrets(&old),
        Some(token("key-b")),
        "the adoption is stored with the route, so a restart keeps it"
    );
    assert_eq!(engine.current_secrets(&old), Some(token("key-b")));
    let status = status_of_route(&engine, &old);
    assert_eq!(status.adopted_cred_id.as_deref(), Some("bbbb"));
    let note = status.note.clone().unwrap_or_default();
    assert!(
        note.starts_with(
            "delivering with a newer deployment's credentials (cred id bbbb, first seen 20"
        ),
        "{note}"
    );
    assert_eq!(status.consecutive_failures, 0);
    let json = serde_json::to_string(&status).unwrap();
    assert!(!json.contains("key-a") && !json.contains("key-b"), "{json}");
    until("idle", || {
        status_of_route(&engine, &old).state == RouteState::Idle
    })
    .await;
    assert_eq!(vendor.delivered_by("bbbb"), with_token("key-b", &backlog));
}

#[tokio::test(start_paused = true)]
async fn healthy_routes_keep_their_own_credentials_when_another_deployment_brings_new_ones() {
    let source = MemorySource::default();
    let lines = payloads("x", 3);
    push(&source, "a1", &lines);
    let vendor = KeyedVendor::accepting(&["key-a", "key-b"]);
    let engine = vendor.engine(&source);
    let a = cred_route("a1", "aaaa");
    let b = cred_route("a1", "bbbb");
    engine.ensure_route(a.clone(), token("key-a"));
    until("a delivered", || {
        source.committed_cursor(&a) == source.last_cursor("a1")
    })
    .await;
    engine.ensure_route(b.clone(), token("key-b"));
    engine.offer_credentials(&b, &token("key-b"));
    until("b delivered", || {
        source.committed_cursor(&b) == source.last_cursor("a1")
    })
    .await;

    assert_eq!(vendor.delivered_by("aaaa"), with_token("key-a", &lines));
    assert_eq!(vendor.delivered_by("bbbb"), with_token("key-b", &lines));
    assert_eq!(source.stored_secrets(&a), None, "nothing was adopted");
    assert_eq!(engine.current_secrets(&a), Some(token("key-a")));
    assert_eq!(status_of_route(&engine, &a).adopted_cred_id, None);
    assert_eq!(status_of_route(&engine, &a).note, None);
}

#[tokio::test(start_paused = true)]
async fn a_parked_route_whose_agent_never_redeploys_stays_parked_and_keeps_its_lines() {
    let source = MemorySource::default();
    push(&source, "a1", &payloads("x", 3));
    push(&source, "other", &payloads("y", 3));
    let vendor = KeyedVendor::accepting(&["key-b"]);
    let engine = vendor.engine(&source);
    let parked = cred_route("a1", "aaaa");
    engine.ensure_route(parked.clone(), token("key-a"));
    // Newer credentials for another agent, and for another destination of
    // the same agent, are not this route's.
    let other_agent = cred_route("other", "bbbb");
    engine.ensure_route(other_agent.clone(), token("key-b"));
    engine.offer_credentials(&other_agent, &token("key-b"));
    let other_kind = RouteKey {
        kind: DestinationKind::NewRelic,
        ..cred_route("a1", "cccc")
    };
    engine.offer_credentials(&other_kind, &token("key-b"));

    sleep(Duration::from_secs(3601)).await;
    let status = status_of_route(&engine, &parked);
    assert_eq!(status.state, RouteState::CredentialsRejected);
    assert_eq!(status.adopted_cred_id, None);
    assert_eq!(source.committed_cursor(&parked), None, "lines are kept");
    assert_eq!(source.stored_secrets(&parked), None);
    assert!(vendor.delivered_by("aaaa").is_empty());
    // Tried again ever more slowly (at least 30 s, then 60, 120, ...
    // up to 15 min between attempts), with its own key only.
    let attempts = vendor.attempts_with("aaaa", "key-a");
    assert!((2..=8).contains(&attempts.len()), "{attempts:?}");
    for (i, pair) in attempts.windows(2).enumerate() {
        let gap = (pair[1] - pair[0]).as_secs();
        assert!(gap >= (30u64 << i.min(5)).min(900), "attempt {i}: {gap} s");
    }
    assert!(vendor.attempts_with("aaaa", "key-b").is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_route_parked_for_invalid_secrets_adopts_newer_valid_ones() {
    let source = MemorySource::default();
    let backlog = payloads("x", 2);
    push(&source, "a1", &backlog);
    let vendor = KeyedVendor::accepting(&["key-b"]);
    let engine = vendor.engine(&source);
    let old = cred_route("a1", "aaaa");
    let new = cred_route("a1", "bbbb");
    engine.ensure_route(old.clone(), token("invalid-region"));
    assert_eq!(
        status_of_route(&engine, &old).state,
        RouteState::InvalidSecret
    );

    // Newer secrets that build no sink either leave it parked.
    let also_bad = cred_route("a1", "dddd");
    engine.offer_credentials(&also_bad, &token("invalid-too"));
    assert_eq!(
        status_of_route(&engine, &old).state,
        RouteState::InvalidSecret
    );
    assert_eq!(source.stored_secrets(&old), None);

    engine.ensure_route(new.clone(), token("key-b"));
    engine.offer_credentials(&new, &token("key-b"));
    until("old route's backlog delivered", || {
        source.committed_cursor(&old) == source.last_cursor("a1")
    })
    .await;
    assert_eq!(vendor.delivered_by("aaaa"), with_token("key-b", &backlog));
    assert_eq!(source.stored_secrets(&old), Some(token("key-b")));
}

#[tokio::test(start_paused = true)]
async fn after_a_restart_an_adopted_route_delivers_with_its_stored_credentials_and_says_so() {
    // What the queue holds after an adoption: the old route with key B.
    let source = MemorySource::default();
    let backlog = payloads("x", 4);
    push(&source, "a1", &backlog);
    let vendor = KeyedVendor::accepting(&["key-b"]);
    let engine = vendor.engine(&source);
    let old = cred_route("a1", "aaaa");
    let new = cred_route("a1", "bbbb");
    engine.ensure_route(old.clone(), token("key-b"));
    until("delivered", || {
        source.committed_cursor(&old) == source.last_cursor("a1")
    })
    .await;
    assert_eq!(vendor.delivered_by("aaaa"), with_token("key-b", &backlog));

    // The old deployment's stream reopens: it must store the adopted
    // secrets again, not its refused key.
    assert_eq!(engine.current_secrets(&old), Some(token("key-b")));
    // The newer deployment's stream reopens: the status says why the route
    // uses other credentials than its own, and the worker is not restarted.
    engine.ensure_route(new.clone(), token("key-b"));
    engine.offer_credentials(&new, &token("key-b"));
    let status = status_of_route(&engine, &old);
    assert_eq!(status.adopted_cred_id.as_deref(), Some("bbbb"));
    assert_eq!(status.delivered_lines, 4);
    sleep(Duration::from_secs(5)).await;
    assert_eq!(vendor.delivered_by("aaaa").len(), 4, "nothing sent twice");
}

#[tokio::test(start_paused = true)]
async fn a_route_refused_after_the_newer_stream_opened_adopts_its_credentials_when_it_parks() {
    // Key rotation: the new deployment (key B) is already delivering when
    // the tenant revokes key A, which the old deployment still uses.
    let source = MemorySource::default();
    let vendor = KeyedVendor::accepting(&["key-a", "key-b"]);
    let engine = vendor.engine(&source);
    let old = cred_route("a1", "aaaa");
    let new = cred_route("a1", "bbbb");
    engine.ensure_route(old.clone(), token("key-a"));
    engine.offer_credentials(&old, &token("key-a"));
    engine.ensure_route(new.clone(), token("key-b"));
    engine.offer_credentials(&new, &token("key-b"));
    let first = payloads("x", 2);
    push(&source, "a1", &first);
    until("both delivered", || {
        source.committed_cursor(&old) == source.last_cursor("a1")
            && source.committed_cursor(&new) == source.last_cursor("a1")
    })
    .await;

    vendor
        .accepted_tokens
        .lock()
        .unwrap()
        .retain(|t| t != "key-a");
    let revoked = Instant::now();
    let later = payloads("y", 3);
    push(&source, "a1", &later);
    until("old route caught up", || {
        source.committed_cursor(&old) == source.last_cursor("a1")
    })
    .await;

    assert_eq!(vendor.attempts_with("aaaa", "key-a").last(), Some(&revoked));
    assert_eq!(
        vendor.attempts_with("aaaa", "key-b"),
        [revoked],
        "adopted when it parked, without waiting for the park interval"
    );
    let mut expected = with_token("key-a", &first);
    expected.extend(with_token("key-b", &later));
    assert_eq!(vendor.delivered_by("aaaa"), expected);
    assert_eq!(source.stored_secrets(&old), Some(token("key-b")));
    assert_eq!(
        status_of_route(&engine, &old).adopted_cred_id.as_deref(),
        Some("bbbb")
    );
    assert_eq!(status_of_route(&engine, &new).adopted_cred_id, None);
}

#[tokio::test(start_paused = true)]
async fn a_parked_route_never_adopts_credentials_that_are_refused_too() {
    let source = MemorySource::default();
    push(&source, "a1", &payloads("x", 2));
    let vendor = KeyedVendor::accepting(&[]);
    let engine = vendor.engine(&source);
    let a = cred_route("a1", "aaaa");
    let b = cred_route("a1", "bbbb");
    engine.ensure_route(a.clone(), token("key-a"));
    engine.offer_credentials(&a, &token("key-a"));
    until("a parked", || {
        status_of_route(&engine, &a).state == RouteState::CredentialsRejected
    })
    .await;
    engine.ensure_route(b.clone(), token("key-b"));
    engine.offer_credentials(&b, &token("key-b"));
    until("b parked", || {
        status_of_route(&engine, &b).state == RouteState::CredentialsRejected
    })
    .await;

    sleep(Duration::from_secs(600)).await;
    // Credentials that never delivered are never handed on, either way.
    assert_eq!(engine.current_secrets(&a), Some(token("key-a")));
    assert_eq!(engine.current_secrets(&b), Some(token("key-b")));
    assert!(vendor.attempts_with("aaaa", "key-b").is_empty());
    assert!(vendor.attempts_with("bbbb", "key-a").is_empty());
    assert_eq!(source.committed_cursor(&a), None, "lines are kept");
    assert_eq!(source.committed_cursor(&b), None, "lines are kept");
}

/// Deploy 1 delivers with key A; deploy 2 brings `newer` for the same
/// destination. Returns the engine and both routes once deploy 2's route
/// has parked.
async fn redeploy_with(
    source: &MemorySource,
    vendor: &KeyedVendor,
    newer: &str,
) -> (Engine<MemorySource>, RouteKey, RouteKey) {
    let engine = vendor.engine(source);
    let old = cred_route("a1", "aaaa");
    let new = cred_route("a1", "bbbb");
    push(source, "a1", &payloads("deploy-1", 2));
    engine.ensure_route(old.clone(), token("key-a"));
    engine.offer_credentials(&old, &token("key-a"));
    until("deploy 1 delivered", || {
        source.committed_cursor(&old) == source.last_cursor("a1")
    })
    .await;
    push(source, "a1", &payloads("deploy-2", 2));
    engine.ensure_route(new.clone(), token(newer));
    engine.offer_credentials(&new, &token(newer));
    (engine, old, new)
}

#[tokio::test(start_paused = true)]
async fn a_newer_deployment_with_invalid_secrets_stays_parked_and_never_takes_the_older_credentials(
) {
    let source = MemorySource::default();
    let vendor = KeyedVendor::accepting(&["key-a"]);
    let (engine, _old, new) = redeploy_with(&source, &vendor, "invalid-region").await;
    sleep(Duration::from_secs(600)).await;

    let status = status_of_route(&engine, &new);
    assert_eq!(status.state, RouteState::InvalidSecret, "{status:?}");
    assert!(status.last_error.is_some(), "its own error is shown");
    assert_eq!(status.adopted_cred_id, None);
    assert_eq!(status.note, None);
    assert_eq!(engine.current_secrets(&new), Some(token("invalid-region")));
    assert_eq!(source.stored_secrets(&new), None);
    assert!(
        vendor.delivered_by("bbbb").is_empty(),
        "nothing sent with key A"
    );
    assert_eq!(source.committed_cursor(&new), None, "lines are kept");
}

#[tokio::test(start_paused = true)]
async fn a_newer_deployment_whose_credentials_are_refused_stays_credentials_rejected_and_never_takes_the_older_ones(
) {
    let source = MemorySource::default();
    let vendor = KeyedVendor::accepting(&["key-a"]);
    let (engine, _old, new) = redeploy_with(&source, &vendor, "key-b").await;
    until("deploy 2 parked", || {
        status_of_route(&engine, &new).state == RouteState::CredentialsRejected
    })
    .await;
    sleep(Duration::from_secs(600)).await;

    let status = status_of_route(&engine, &new);
    assert_eq!(status.state, RouteState::CredentialsRejected, "{status:?}");
    assert_eq!(
        status.last_error.as_deref(),
        Some("the vendor refused the credentials: Datadog answered 403 Forbidden"),
        "the 403 is shown"
    );
    assert_eq!(status.adopted_cred_id, None);
    assert_eq!(status.note, None);
    assert_eq!(engine.current_secrets(&new), Some(token("key-b")));
    assert!(
        vendor.attempts_with("bbbb", "key-a").is_empty(),
        "key A never used"
    );
    assert!(vendor.delivered_by("bbbb").is_empty());
    assert_eq!(source.committed_cursor(&new), None, "lines are kept");
}

#[tokio::test(start_paused = true)]
async fn an_older_deployment_refused_adopts_the_newer_credentials_once_they_deliver() {
    // The mirror: deploy 1's key A is refused, deploy 2's key B is good.
    let source = MemorySource::default();
    let vendor = KeyedVendor::accepting(&["key-b"]);
    let engine = vendor.engine(&source);
    let old = cred_route("a1", "aaaa");
    let new = cred_route("a1", "bbbb");
    let backlog = payloads("x", 3);
    push(&source, "a1", &backlog);
    engine.ensure_route(old.clone(), token("key-a"));
    until("deploy 1 parked", || {
        status_of_route(&engine, &old).state == RouteState::CredentialsRejected
    })
    .await;
    engine.ensure_route(new.clone(), token("key-b"));
    engine.offer_credentials(&new, &token("key-b"));
    until("deploy 1's backlog delivered", || {
        source.committed_cursor(&old) == source.last_cursor("a1")
    })
    .await;

    assert_eq!(vendor.delivered_by("aaaa"), with_token("key-b", &backlog));
    assert_eq!(engine.current_secrets(&old), Some(token("key-b")));
    assert_eq!(source.stored_secrets(&old), Some(token("key-b")));
    let status = status_of_route(&engine, &old);
    assert_eq!(status.adopted_cred_id.as_deref(), Some("bbbb"));
    let note = status.note.unwrap_or_default();
    assert!(note.contains("cred id bbbb, first seen "), "{note}");
    assert!(!note.contains("key-"), "{note}");
}

/// What [`OverlapSink`] saw, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Seen {
    Prepared(String),
    SendStart(String),
    SendEnd(String),
}

/// A sink whose requests take 100 ms, recording when each batch (named by
/// its first line) was encoded and sent.
struct OverlapSink {
    seen: Mutex<Vec<Seen>>,
}

impl OverlapSink {
    fn first(lines: &[QueuedLine]) -> String {
        String::from_utf8_lossy(&lines[0].line.data).into_owned()
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

#[async_trait]
impl Sink for OverlapSink {
    fn kind(&self) -> DestinationKind {
        DestinationKind::Datadog
    }

    fn limits(&self) -> BatchLimits {
        limits(100, Duration::from_secs(1))
    }

    fn event_size(&self, line: &QueuedLine) -> usize {
        line.line.data.len()
    }

    fn prepare(&self, lines: &[QueuedLine]) -> Result<Prepared, SinkError> {
        let first = Self::first(lines);
        self.seen
            .lock()
            .unwrap()
            .push(Seen::Prepared(first.clone()));
        Ok(Prepared::body(first.into_bytes()))
    }

    async fn send_prepared(
        &self,
        lines: &[QueuedLine],
        prepared: Prepared,
    ) -> Result<SendOutcome, SinkError> {
        let first = Self::first(lines);
        assert_eq!(prepared.body, first.as_bytes(), "the body of other lines");
        self.seen
            .lock()
            .unwrap()
            .push(Seen::SendStart(first.clone()));
        sleep(Duration::from_millis(100)).await;
        self.seen.lock().unwrap().push(Seen::SendEnd(first));
        Ok(SendOutcome::accepted())
    }
}

#[tokio::test(start_paused = true)]
async fn the_next_batch_is_encoded_while_a_request_is_in_flight_and_requests_stay_one_at_a_time() {
    let source = MemorySource::default();
    push(&source, "a1", &payloads("x", 300));
    let sink = Arc::new(OverlapSink {
        seen: Mutex::new(Vec::new()),
    });
    let _engine = engine_with_sink(&source, Arc::clone(&sink) as Arc<dyn Sink>);

    until("all committed", || {
        source.committed_cursor(&route("a1")) == source.last_cursor("a1")
    })
    .await;
    let seen = sink.seen();
    let at = |event: Seen| {
        seen.iter()
            .position(|s| *s == event)
            .unwrap_or_else(|| panic!("{event:?} never happened: {seen:?}"))
    };
    use Seen::*;
    for (batch, next) in [("x0", "x100"), ("x100", "x200")] {
        let (b, n) = (batch.to_string(), next.to_string());
        assert!(at(Prepared(b.clone())) < at(SendStart(b.clone())));
        // Encoded while the previous request was in flight ...
        assert!(at(Prepared(n.clone())) < at(SendEnd(b.clone())), "{seen:?}");
        // ... but sent only after it was answered.
        assert!(at(SendEnd(b)) < at(SendStart(n)), "{seen:?}");
    }
    assert_eq!(seen.iter().filter(|s| matches!(s, SendStart(_))).count(), 3);
}

/// A sink that records on which thread each batch was encoded, or whose
/// encoder panics.
struct ThreadSink {
    prepares: bool,
    panics: bool,
    threads: Mutex<Vec<std::thread::ThreadId>>,
}

#[async_trait]
impl Sink for ThreadSink {
    fn kind(&self) -> DestinationKind {
        DestinationKind::Datadog
    }

    fn limits(&self) -> BatchLimits {
        limits(100, Duration::from_secs(1))
    }

    fn event_size(&self, line: &QueuedLine) -> usize {
        line.line.data.len()
    }

    fn prepares(&self) -> bool {
        self.prepares
    }

    fn prepare(&self, _lines: &[QueuedLine]) -> Result<Prepared, SinkError> {
        assert!(!self.panics, "an encoder bug");
        self.threads
            .lock()
            .unwrap()
            .push(std::thread::current().id());
        Ok(Prepared::default())
    }

    async fn send_prepared(
        &self,
        _lines: &[QueuedLine],
        _prepared: Prepared,
    ) -> Result<SendOutcome, SinkError> {
        Ok(SendOutcome::accepted())
    }
}

/// Delivers 300 lines of `line_bytes` each through a [`ThreadSink`] and
/// tells, per batch, whether it was encoded on the route's own thread (the
/// test runtime has only this one).
async fn encoded_in_place(prepares: bool, line_bytes: usize) -> Vec<bool> {
    let source = MemorySource::default();
    let lines: Vec<String> = (0..300)
        .map(|i| format!("{i:0width$}", width = line_bytes))
        .collect();
    push(&source, "a1", &lines);
    let sink = Arc::new(ThreadSink {
        prepares,
        panics: false,
        threads: Mutex::new(Vec::new()),
    });
    let _engine = engine_with_sink(&source, Arc::clone(&sink) as Arc<dyn Sink>);
    until("all committed", || {
        source.committed_cursor(&route("a1")) == source.last_cursor("a1")
    })
    .await;
    let here = std::thread::current().id();
    let threads = sink.threads.lock().unwrap().clone();
    threads.into_iter().map(|thread| thread == here).collect()
}

#[tokio::test(start_paused = true)]
async fn small_batches_and_sinks_with_nothing_to_encode_are_prepared_in_place() {
    assert_eq!(encoded_in_place(true, 10).await, [true; 3], "small batches");
    assert_eq!(
        encoded_in_place(false, 1_000).await,
        [true; 3],
        "nothing to encode"
    );
}

#[tokio::test(start_paused = true)]
async fn large_batches_of_an_encoding_sink_are_prepared_on_the_blocking_pool() {
    assert_eq!(encoded_in_place(true, 1_000).await, [false; 3]);
}

#[tokio::test(start_paused = true)]
async fn an_encoder_that_panics_in_place_parks_the_route_with_its_lines_kept() {
    let source = MemorySource::default();
    push(&source, "a1", &payloads("x", 3));
    let sink = Arc::new(ThreadSink {
        prepares: true,
        panics: true,
        threads: Mutex::new(Vec::new()),
    });
    let engine = engine_with_sink(&source, sink);
    until("parked", || {
        status_of(&engine, "a1").state == RouteState::InvalidSecret
    })
    .await;
    let status = status_of(&engine, "a1");
    let error = status.last_error.unwrap_or_default();
    assert!(error.contains("the encoder panicked"), "{error}");
    assert_eq!(
        source.committed_cursor(&route("a1")),
        None,
        "lines are kept"
    );
}

// ---- lines outside a vendor's window, through the real sinks ----

const HOUR_NS: i64 = 3_600_000_000_000;

fn unix_ms_now() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    since.as_millis() as i64
}

/// Delivers `lines` (payload, ns) through an engine whose route sends
/// through `sink` to `intake`, and returns the wall-clock ms before and
/// after.
async fn through_the_engine(
    sink: Arc<dyn Sink>,
    intake: &logdrain_test_intake::Intake,
    lines: &[(&str, i64)],
) -> (i64, i64) {
    let source = MemorySource::default();
    source.push_stamped("a1", lines);
    let before = unix_ms_now();
    let engine = engine_with_sink(&source, sink);
    intake
        .wait_for(Duration::from_secs(60), |records| {
            records.requests().iter().any(|r| r.status == 202)
        })
        .await
        .unwrap();
    engine.shutdown(Duration::from_secs(5)).await;
    (before, unix_ms_now())
}

/// Datadog discards logs older than 18 h after answering 202 (the intake
/// does too): a backlog of 20 h reaches it at the time of sending, each line
/// keeping its own time in `logdrain.original_timestamp`.
#[tokio::test]
async fn a_20_hour_old_backlog_reaches_datadog_restamped_with_its_own_time_kept() {
    use logdrain_test_intake::{Intake, IntakeConfig};
    let intake = Intake::start(IntakeConfig::with_datadog_keys(["dd-key"]))
        .await
        .unwrap();
    let secrets = Secrets([("DATADOG_TOKEN".to_string(), "dd-key".to_string())].into());
    let settings = crate::sinks::SinkSettings {
        datadog_url: Some(url::Url::parse(&intake.base_url()).unwrap()),
        ..crate::sinks::SinkSettings::default()
    };
    let sink = crate::sinks::datadog::DatadogSink::new(
        &route("a1"),
        &secrets,
        &settings,
        &reqwest::Client::new(),
    )
    .unwrap();
    let now_ns = unix_ms_now() * 1_000_000;
    let lines = [
        ("fresh", now_ns - 60_000_000_000),
        ("twenty hours old", now_ns - 20 * HOUR_NS),
        ("three hours ahead", now_ns + 3 * HOUR_NS),
    ];
    let source = MemorySource::default();
    source.push_stamped("a1", &lines);
    let before = unix_ms_now();
    let engine = engine_with_sink(&source, Arc::new(sink));
    intake
        .wait_for(Duration::from_secs(60), |records| {
            records.requests().iter().any(|r| r.status == 202)
        })
        .await
        .unwrap();
    let after = unix_ms_now();
    // The counts the route's next notice states, taken once.
    let restamps = engine.take_restamps();
    assert_eq!(
        restamps,
        [(
            route("a1"),
            late::Restamps {
                too_old: 1,
                too_new: 1,
                expired: 0
            },
            crate::sinks::datadog::MAX_AGE
        )]
    );
    assert_eq!(
        restamps[0].1.notice("datadog", restamps[0].2),
        "logdrain: 2 lines were sent with the time of sending (1 older than datadog's 18h \
         window, 1 more than 2h in the future); each keeps its own time in \
         logdrain.original_timestamp"
    );
    assert!(engine.take_restamps().is_empty());
    engine.shutdown(Duration::from_secs(5)).await;
    let entries = intake.datadog_entries();
    let messages: Vec<&str> = entries
        .iter()
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    assert_eq!(messages, ["fresh", "twenty hours old", "three hours ahead"]);
    assert_eq!(entries[0]["timestamp"], (lines[0].1 / 1_000_000));
    assert!(entries[0].get("logdrain").is_none(), "{}", entries[0]);
    for (entry, (_, own_ns)) in entries.iter().zip(&lines).skip(1) {
        let sent = entry["timestamp"].as_i64().unwrap();
        assert!((before..=after).contains(&sent), "{entry}");
        assert_eq!(
            entry["logdrain"]["original_timestamp"],
            own_ns / 1_000_000,
            "{entry}"
        );
    }
}

/// New Relic may drop logs older than 48 h after a 202 (the intake does).
#[tokio::test]
async fn a_50_hour_old_backlog_reaches_new_relic_restamped_with_its_own_time_kept() {
    use logdrain_test_intake::{Intake, IntakeConfig, Vendor};
    const KEY: &str = "0123456789abcdef0123456789abcdef0123NRAL";
    let mut config = IntakeConfig::default();
    config.newrelic.keys = vec![KEY.to_string()];
    let intake = Intake::start(config).await.unwrap();
    let secrets = Secrets([("NEW_RELIC_LICENSE_KEY".to_string(), KEY.to_string())].into());
    let settings = crate::sinks::SinkSettings {
        newrelic_url: Some(url::Url::parse(&intake.base_url()).unwrap()),
        ..crate::sinks::SinkSettings::default()
    };
    let sink = crate::sinks::newrelic::NewRelicSink::new(
        &route("a1"),
        &secrets,
        &settings,
        &reqwest::Client::new(),
    )
    .unwrap();
    let now_ns = unix_ms_now() * 1_000_000;
    let lines = [
        ("fresh", now_ns - 60_000_000_000),
        ("fifty hours old", now_ns - 50 * HOUR_NS),
    ];
    let (before, after) = through_the_engine(Arc::new(sink), &intake, &lines).await;
    let entries: Vec<serde_json::Value> = intake
        .entries(Vendor::NewRelic)
        .into_iter()
        .map(|e| e.value)
        .collect();
    let messages: Vec<&str> = entries
        .iter()
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    assert_eq!(messages, ["fresh", "fifty hours old"]);
    assert!(entries[0].get("logdrain.original_timestamp").is_none());
    let sent = entries[1]["timestamp"].as_i64().unwrap();
    assert!((before..=after).contains(&sent), "{}", entries[1]);
    assert_eq!(
        entries[1]["logdrain.original_timestamp"],
        lines[1].1 / 1_000_000
    );
}

#[tokio::test(start_paused = true)]
async fn a_sink_without_a_window_gets_every_line_at_its_own_time() {
    let source = MemorySource::default();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    let sink = FakeSink::new(limits(10, Duration::from_millis(10)), move |_, lines| {
        record.lock().unwrap().extend(
            lines
                .iter()
                .map(|l| (l.line.timestamp_ns, l.original_timestamp_ns)),
        );
        Reply::Now(Ok(SendOutcome::accepted()))
    });
    source.push_stamped("a1", &[("ancient", 1)]);
    let engine = engine(&source, vec![(route("a1"), sink)], settings());
    engine.ensure_route(route("a1"), Secrets::default());
    until("delivered", || !seen.lock().unwrap().is_empty()).await;
    assert_eq!(*seen.lock().unwrap(), [(1, None)]);
}

// --- Bounded routes per agent ---

#[tokio::test(start_paused = true)]
async fn a_flood_of_distinct_credentials_hits_the_route_limit_and_vendor_requests_stay_bounded() {
    let source = MemorySource::default();
    push(&source, "a1", &payloads("x", 2));
    // Every token is refused: each route parks.
    let vendor = KeyedVendor::accepting(&[]);
    let engine = vendor.engine(&source);
    let limit = EngineSettings::default().max_routes_per_agent;
    let mut refused = Vec::new();
    for i in 0..300 {
        let route = cred_route("a1", &format!("c{i:03}"));
        match engine.check_route_limit("a1", std::slice::from_ref(&route)) {
            Ok(()) => engine.ensure_route(route, token(&format!("bogus-{i}"))),
            Err(error) => refused.push(error),
        }
    }
    assert_eq!(refused.len(), 300 - limit);
    assert_eq!(
        refused[0],
        EngineError::TooManyRoutes {
            agent_id: "a1".into(),
            known: limit,
            adding: 1,
            limit
        }
    );
    let shown = refused[0].to_string();
    assert!(
        shown.contains("--max-routes-per-agent") && shown.contains("LOGDRAIN_MAX_ROUTES_PER_AGENT"),
        "{shown}"
    );
    assert!(!shown.contains("bogus"), "{shown}");
    // Known routes, and other agents, still pass.
    assert_eq!(
        engine.check_route_limit("a1", &[cred_route("a1", "c000")]),
        Ok(())
    );
    assert_eq!(
        engine.check_route_limit("a2", &[cred_route("a2", "c999")]),
        Ok(())
    );

    sleep(Duration::from_secs(5 * 60)).await;
    let statuses = engine.statuses();
    assert_eq!(statuses.len(), limit);
    assert!(statuses
        .iter()
        .all(|s| s.state == RouteState::CredentialsRejected));
    // A parked route waits at least 30 s, then 60, then 120 s: at most 4
    // attempts each in 5 minutes.
    let attempts = vendor.attempts.lock().unwrap().clone();
    assert!(
        attempts.len() <= limit * 4,
        "{} vendor requests",
        attempts.len()
    );
    // Jittered: the routes parked together do not retry together.
    let second_attempts: std::collections::HashSet<Instant> = (0..limit)
        .filter_map(|i| {
            let cred = format!("c{i:03}");
            let mine: Vec<Instant> = attempts
                .iter()
                .filter(|(c, _, _)| *c == cred)
                .map(|(_, _, at)| *at)
                .collect();
            mine.get(1).copied()
        })
        .collect();
    assert!(second_attempts.len() > 1, "{second_attempts:?}");
}

#[tokio::test(start_paused = true)]
async fn test_send_borrows_the_routes_own_sink_and_a_route_without_one_lends_none() {
    let source = MemorySource::default();
    let sink = FakeSink::new(limits(100, Duration::ZERO), |_, _| {
        Reply::Now(Ok(SendOutcome::accepted()))
    });
    let engine = engine(&source, vec![(route("a1"), sink.clone())], settings());
    engine.ensure_route(route("a1"), Secrets::default());
    let lent = engine
        .route_sink(&route("a1"))
        .expect("the route has a sink");
    assert!(std::ptr::addr_eq(Arc::as_ptr(&lent), Arc::as_ptr(&sink)));

    let vendor = KeyedVendor::accepting(&[]);
    let keyed = vendor.engine(&source);
    let invalid = cred_route("a1", "aaaa");
    keyed.ensure_route(invalid.clone(), token("invalid-region"));
    assert!(keyed.route_sink(&invalid).is_none());
    assert!(keyed.route_sink(&cred_route("a1", "unknown")).is_none());
}

// --- Idle routes expire ---

#[tokio::test(start_paused = true)]
async fn a_parked_route_without_streams_or_lines_expires_after_the_idle_time_and_stops_calling_the_vendor(
) {
    let source = MemorySource::default();
    let vendor = KeyedVendor::accepting(&[]);
    let engine = vendor.engine(&source);
    let refused = cred_route("a1", "aaaa");
    engine.ensure_route(refused.clone(), token("key-a"));
    engine.attach(&refused);
    // Lines come, are refused, then are gone (as the quota drops them).
    push(&source, "a1", &payloads("x", 2));
    until("parked", || {
        status_of_route(&engine, &refused).state == RouteState::CredentialsRejected
    })
    .await;
    let expiry = EngineSettings::default().route_idle_expiry;
    sleep(expiry * 2).await;
    assert!(engine.expire_idle().is_empty(), "a stream still carries it");
    engine.detach(&refused);
    sleep(expiry * 2).await;
    assert!(
        engine.expire_idle().is_empty(),
        "its lines are still queued"
    );
    engine.attach(&refused);
    source
        .commit(&refused, source.last_cursor("a1").unwrap())
        .unwrap();
    engine.detach(&refused);
    sleep(expiry - Duration::from_secs(1)).await;
    assert!(engine.expire_idle().is_empty(), "not idle long enough");
    sleep(Duration::from_secs(1)).await;
    assert_eq!(engine.expire_idle(), std::slice::from_ref(&refused));

    assert!(engine.statuses().is_empty());
    assert_eq!(source.removed(), std::slice::from_ref(&refused));
    let attempts = vendor.attempts_with("aaaa", "key-a").len();
    sleep(Duration::from_secs(24 * 60 * 60)).await;
    assert_eq!(vendor.attempts_with("aaaa", "key-a").len(), attempts);
    // The route's credentials may come back: a new route.
    engine.ensure_route(refused.clone(), token("key-a"));
    assert_eq!(engine.statuses().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_route_that_delivers_never_expires_and_an_unused_one_does() {
    let source = MemorySource::default();
    let vendor = KeyedVendor::accepting(&["key-a", "key-b"]);
    let engine = vendor.engine(&source);
    let delivering = cred_route("a1", "aaaa");
    engine.ensure_route(delivering.clone(), token("key-a"));
    push(&source, "a1", &payloads("x", 2));
    until("delivered", || {
        source.committed_cursor(&delivering) == source.last_cursor("a1")
    })
    .await;
    // Known for another agent that never sends a line.
    let unused = cred_route("a2", "bbbb");
    engine.ensure_route(unused.clone(), token("key-b"));

    sleep(EngineSettings::default().route_idle_expiry * 3).await;
    assert_eq!(engine.expire_idle(), [unused]);
    assert_eq!(engine.statuses().len(), 1);
    assert_eq!(
        status_of_route(&engine, &delivering).state,
        RouteState::Idle
    );
}

#[tokio::test(start_paused = true)]
async fn after_a_restart_the_stored_first_seen_times_decide_which_way_credentials_may_move() {
    // As restored from the queue: deploy 1 (key A) and deploy 2, first seen
    // a second apart, by a clock ahead of today's (it stepped back since).
    let source = MemorySource::default();
    let backlog = payloads("x", 2);
    push(&source, "a1", &backlog);
    let vendor = KeyedVendor::accepting(&["key-a"]);
    let engine = vendor.engine(&source);
    let old = cred_route("a1", "aaaa");
    let new = cred_route("a1", "bbbb");
    const DEPLOY_1: u64 = 4_000_000_000_000;
    const DEPLOY_2: u64 = DEPLOY_1 + 1_000;
    engine.ensure_route_since(old.clone(), token("key-a"), DEPLOY_1);
    engine.ensure_route_since(new.clone(), token("key-b"), DEPLOY_2);
    until("old delivered, new parked", || {
        source.committed_cursor(&old) == source.last_cursor("a1")
            && status_of_route(&engine, &new).state == RouteState::CredentialsRejected
    })
    .await;
    sleep(Duration::from_secs(600)).await;
    assert_eq!(engine.current_secrets(&new), Some(token("key-b")));
    assert!(vendor.attempts_with("bbbb", "key-a").is_empty());

    // Key B starts working: deploy 1's route stays on its own key (it
    // delivers), and a route opened now is newer than both.
    vendor.accepted_tokens.lock().unwrap().push("key-b".into());
    until("new delivered", || {
        source.committed_cursor(&new) == source.last_cursor("a1")
    })
    .await;
    assert_eq!(engine.current_secrets(&old), Some(token("key-a")));
    assert!(engine.first_seen(&cred_route("a1", "cccc")) > DEPLOY_2);
}
