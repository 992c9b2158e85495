//! The fleet-wide tail: a tail asked of this gateway also follows the
//! agent on every peer ([`crate::fleet`]), by calling each peer's `Tail`
//! with `local_only` set and the caller's token (the peer checks it), and
//! merging their lines into the caller's stream, each naming its gateway.
//!
//! It says what the tail covers: once every peer has answered or
//! `--peer-timeout` passed, one notice names the gateways followed and one
//! per peer that is missing; a peer that drops out or comes back is said
//! too, and a missing peer is asked again every [`RETRY`]. Its tasks end
//! with the caller's stream or at shutdown; peers added or gone on a
//! refresh of the fleet are followed or left. At most
//! [`super::MAX_FLEET_TAILS`] run at once; a tail past that is refused
//! with `RESOURCE_EXHAUSTED`.
//!
//! It must not touch the queue, and never fans out a `local_only` tail.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use logdrain::v1::drain_client::DrainClient;
use logdrain::v1::{Line, Origin, StreamKind, TailLine, TailRequest};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tonic::{Status, Streaming};

use crate::fleet::{Fleet, Peer};
use crate::shutdown::Shutdown;

/// A missing peer is asked again this often.
pub const RETRY: Duration = Duration::from_secs(5);

type Out = mpsc::Sender<Result<TailLine, Status>>;

/// Follows `request`'s agent on every peer of `fleet` into `out`, until
/// `out` closes or shutdown.
pub(super) fn spawn(
    mut fleet: Fleet,
    request: TailRequest,
    out: Out,
    timeout: Duration,
    shutdown: Shutdown,
    slot: super::FleetTailSlot,
) {
    let request = TailRequest {
        local_only: true,
        ..request
    };
    tokio::spawn(async move {
        // Held until this task ends, with the caller's stream.
        let _slot = slot;
        let view = fleet.view();
        // The first peers are opened together, so the coverage notice
        // comes once and says it all.
        let opened = futures::future::join_all(
            view.peers
                .iter()
                .map(|peer| open(peer, request.clone(), timeout)),
        )
        .await;
        let mut followed = vec![format!("{} (this one)", view.own_name)];
        let mut missing = Vec::new();
        for (peer, result) in view.peers.iter().zip(&opened) {
            match result {
                Ok(_) => followed.push(peer.name.clone()),
                Err(reason) => missing.push(format!(
                    "peer {} is missing from this tail: {reason}; asked again every {RETRY:?}",
                    peer.name
                )),
            }
        }
        let own = view.own_name.clone();
        let mut said = vec![format!("this tail follows {}", followed.join(", "))];
        said.extend(missing);
        for text in said {
            if out.send(Ok(notice(text, &own))).await.is_err() {
                return;
            }
        }
        let mut tasks = JoinSet::new();
        let mut running = HashMap::new();
        for (peer, first) in view.peers.iter().zip(opened) {
            let task = follow(
                peer.clone(),
                Some(first),
                request.clone(),
                out.clone(),
                timeout,
                own.clone(),
            );
            running.insert(peer.name.clone(), tasks.spawn(task));
        }
        loop {
            tokio::select! {
                () = fleet.changed() => {}
                () = out.closed() => return,
                () = shutdown.wait() => return,
            }
            let view = fleet.view();
            running.retain(|name, task| {
                let kept = view.peers.iter().any(|p| &p.name == name);
                if !kept {
                    task.abort();
                }
                kept
            });
            for peer in &view.peers {
                if !running.contains_key(&peer.name) {
                    let task = follow(
                        peer.clone(),
                        None,
                        request.clone(),
                        out.clone(),
                        timeout,
                        own.clone(),
                    );
                    running.insert(peer.name.clone(), tasks.spawn(task));
                }
            }
        }
        // Leaving drops `tasks`, which aborts every follower.
    });
}

/// A peer's tail, opened within `timeout`.
async fn open(
    peer: &Peer,
    request: TailRequest,
    timeout: Duration,
) -> Result<Streaming<TailLine>, String> {
    let mut client = DrainClient::new(peer.channel.clone())
        .max_decoding_message_size(logdrain::MAX_MESSAGE_BYTES);
    match tokio::time::timeout(timeout, client.tail(request)).await {
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) => Err(describe(&status)),
        Err(_) => Err(format!("no answer within {timeout:?} (--peer-timeout)")),
    }
}

fn describe(status: &Status) -> String {
    match status.code() {
        tonic::Code::Unimplemented => "it does not serve tails".to_string(),
        code => format!("{code:?}: {}", status.message()),
    }
}

/// Forwards one peer's lines, naming it, and opens its tail again every
/// [`RETRY`] while it is missing; says when it drops out or comes back.
async fn follow(
    peer: Peer,
    mut next: Option<Result<Streaming<TailLine>, String>>,
    request: TailRequest,
    out: Out,
    timeout: Duration,
    own: String,
) {
    // What was said last about this peer being missing (said on change).
    let mut missing: Option<String> = next
        .as_ref()
        .and_then(|first| first.as_ref().err().cloned());
    loop {
        let opened = match next.take() {
            Some(opened) => opened,
            None => open(&peer, request.clone(), timeout).await,
        };
        let reason = match opened {
            Ok(mut stream) => {
                if missing.take().is_some() {
                    let text = format!(
                        "peer {} answers again; its replicas' lines follow",
                        peer.name
                    );
                    if out.send(Ok(notice(text, &own))).await.is_err() {
                        return;
                    }
                }
                loop {
                    match stream.message().await {
                        Ok(Some(mut line)) => {
                            line.gateway.clone_from(&peer.name);
                            if out.send(Ok(line)).await.is_err() {
                                return;
                            }
                        }
                        Ok(None) => break "it ended the tail".to_string(),
                        Err(status) => break describe(&status),
                    }
                }
            }
            Err(reason) => reason,
        };
        if missing.as_ref() != Some(&reason) {
            let text = format!(
                "peer {} is missing from this tail: {reason}; asked again every {RETRY:?}",
                peer.name
            );
            if out.send(Ok(notice(text, &own))).await.is_err() {
                return;
            }
            missing = Some(reason);
        }
        tokio::select! {
            () = tokio::time::sleep(RETRY) => {}
            () = out.closed() => return,
        }
    }
}

/// A line from the gateway itself in a tail (`logdrain-gateway: text`).
pub(super) fn notice(text: String, gateway: &str) -> TailLine {
    TailLine {
        agent_server_id: "logdrain-gateway".to_string(),
        line: Some(Line {
            timestamp_ns: now_ns(),
            stream: StreamKind::Stderr as i32,
            data: Bytes::from(format!("logdrain-gateway: {text}")),
            origin: Origin::Shim as i32,
            part: 0,
            more_parts: false,
        }),
        gateway: gateway.to_string(),
    }
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}
