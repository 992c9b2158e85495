//! The write path of an append: de-duplicate against the stream's
//! high-water mark, encode the new lines as segments, append them (and the
//! route records their tags need) to the agent's segment file, and write
//! their index entries and the mark in one atomic sled batch while updating
//! the agent's index. The
//! disk watermark is checked first, and the agent's quota is made room for
//! in the same batch (its oldest segments dropped, cursors moved past them).
//!
//! Runs synchronously under a per-stream lock and the agent's index lock;
//! it must never await (the group commit that makes the write durable is
//! awaited by [`super::Queue::append`] after every lock is released).

use std::hash::BuildHasher;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use super::error::is_enospc;
use super::index::SegMeta;
use super::{
    keys, lock, records, segment, unknown, Agent, Append, AppendOutcome, Inner, QueueError,
};
use crate::metrics;
use crate::route::RouteKey;

/// What the synchronous part of an append did.
pub(super) struct Stored {
    pub outcome: AppendOutcome,
    /// The agent to wake and its newest segment, if segments were written.
    pub notify: Option<(Arc<Agent>, u64)>,
}

impl Inner {
    fn stream_lock(&self, agent_id: &str, agent_server_id: &str, boot_id: &str) -> &Mutex<()> {
        let hash = self
            .stream_hasher
            .hash_one((agent_id, agent_server_id, boot_id));
        &self.streams[(hash % self.streams.len() as u64) as usize]
    }

    /// The synchronous part of an append: de-duplicate and write. Returns
    /// the outcome and, if segments were written, whom to notify.
    pub(super) fn store(&self, append: Append<'_>) -> Result<Stored, QueueError> {
        let Append {
            agent_id,
            agent_server_id,
            boot_id,
            first_seq,
            mut lines,
            routes,
        } = append;
        if let Some(route) = routes.iter().find(|r| r.agent_id != agent_id) {
            return Err(QueueError::WrongAgent {
                route: route.to_string(),
                agent_id: agent_id.to_string(),
            });
        }
        let count = lines.len();
        let last_seq = match count {
            0 => None,
            n => Some(
                (first_seq > 0)
                    .then(|| first_seq.checked_add(n as u64 - 1))
                    .flatten()
                    .ok_or(QueueError::InvalidSequence {
                        first_seq,
                        lines: n,
                    })?,
            ),
        };

        let _stream = lock(self.stream_lock(agent_id, agent_server_id, boot_id));
        let hwm_key = keys::hwm(agent_id, agent_server_id, boot_id);
        let hwm = self.get_hwm(&hwm_key)?;
        let last_seq = match last_seq {
            Some(last) if last > hwm => last,
            _ => {
                let outcome = AppendOutcome {
                    acked_seq: hwm,
                    queued: 0,
                    duplicates: count,
                };
                return Ok(Stored {
                    outcome,
                    notify: None,
                });
            }
        };
        // Lines with seq <= hwm; fewer than `count` since last_seq > hwm.
        let skip = usize::try_from((hwm + 1).saturating_sub(first_seq)).unwrap_or(count);
        lines.drain(..skip);
        let mut outcome = AppendOutcome {
            acked_seq: last_seq,
            queued: 0,
            duplicates: skip,
        };
        if routes.is_empty() {
            self.db
                .insert(hwm_key, &records::encode_hwm(last_seq)[..])?;
            return Ok(Stored {
                outcome,
                notify: None,
            });
        }

        self.disk.check(|| self.queued_bytes()).inspect_err(|_| {
            metrics::refused_batches(agent_id, metrics::BatchRefused::DiskFull);
        })?;
        let header = segment::Header {
            agent_id: agent_id.to_string(),
            agent_server_id: agent_server_id.to_string(),
            boot_id: boot_id.to_string(),
            routes: routes.iter().map(segment::StoredTag::of).collect(),
            ..Default::default()
        };
        let (agent, newest, queued) = self.insert_segments(
            agent_id,
            routes,
            (header, first_seq + skip as u64, lines),
            (hwm_key, last_seq),
        )?;
        outcome.queued = queued;
        Ok(Stored {
            outcome,
            notify: Some((agent, newest)),
        })
    }

    /// Writes segments and the stream's new high-water mark in one atomic
    /// batch and adds them to the agent's index. Returns the agent, the
    /// newest segment id and the number of lines written.
    fn insert_segments(
        &self,
        agent_id: &str,
        routes: &[RouteKey],
        (header, first_seq, lines): (segment::Header, u64, Vec<logdrain::v1::Line>),
        (hwm_key, hwm): (Vec<u8>, u64),
    ) -> Result<(Arc<Agent>, u64, usize), QueueError> {
        let agent = self.agent(agent_id);
        let mut index = lock(&agent.index);
        if let Some(route) = routes.iter().find(|r| !index.has_route(r)) {
            return Err(unknown(route));
        }
        // Each file holds the route records its segments need.
        let mut route_records = Vec::with_capacity(routes.len());
        for route in routes {
            let id = keys::route(route);
            let Some(sealed) = self.db.get(&id)? else {
                return Err(unknown(route));
            };
            route_records.push((id, segment::encode_route(route, &sealed)));
        }
        // Allocated under the agent lock: an agent's segments become
        // visible in id order, so a cursor never passes an unseen one.
        let encoded = segment::encode_batch(header, first_seq, lines, || {
            self.next_segment.fetch_add(1, Ordering::AcqRel)
        });
        let incoming: u64 = encoded.iter().map(|e| e.bytes).sum();
        let quota = self.limits.agent_quota_bytes;
        if incoming > quota {
            metrics::refused_batches(agent_id, metrics::BatchRefused::OverQuota);
            return Err(QueueError::OverQuota {
                agent_id: agent_id.to_string(),
                batch_bytes: incoming,
                quota,
            });
        }
        let plan = index.plan_quota(incoming, quota);
        let tags = index.tags_for(routes.iter().map(|r| (r.kind, r.cred_id.as_str())));
        let mut batch = sled::Batch::default();
        for id in &plan.segments {
            batch.remove(keys::segment(agent_id, *id));
        }
        for loss in &plan.losses {
            let route = RouteKey {
                agent_id: agent_id.to_string(),
                kind: loss.tag.kind,
                cred_id: loss.tag.cred_id.to_string(),
            };
            batch.insert(
                keys::cursor(&route),
                &records::encode_cursor(loss.cursor)[..],
            );
        }
        let mut metas = Vec::with_capacity(encoded.len());
        let mut written = Vec::with_capacity(encoded.len());
        for segment in encoded {
            let at = match self.files.append(
                &agent.id,
                &route_records,
                &segment.file_header(),
                &segment.body,
            ) {
                Ok(at) => at,
                Err(e) => {
                    if e.is_out_of_space() {
                        self.disk.file_write_failed();
                    }
                    self.files.release(written);
                    return Err(e);
                }
            };
            self.disk.file_write_succeeded();
            written.push(at.file);
            let id = segment.header.segment;
            batch.insert(keys::segment(agent_id, id), segment.sled_value(at));
            let meta = SegMeta {
                lines: segment.lines,
                bytes: segment.bytes,
                span_ns: segment.span_ns,
                tags: tags.clone(),
                at,
                damage_counted: false,
            };
            metas.push((id, meta));
        }
        batch.insert(hwm_key, &records::encode_hwm(hwm)[..]);
        if let Err(e) = self.db.apply_batch(batch) {
            if is_enospc(&e) {
                self.disk.write_failed();
            }
            self.files.release(written);
            return Err(e.into());
        }
        if !plan.segments.is_empty() {
            let lost = plan.lost_lines;
            let removed = index.apply_quota(&plan);
            self.files.release(removed.files);
            agent.metrics.popped(removed.lines, removed.bytes);
            metrics::dropped(agent_id, metrics::Dropped::Quota, lost);
            tracing::warn!(
                agent = agent_id,
                segments = plan.segments.len(),
                lines = lost,
                quota,
                "agent queue reached its quota; dropped its oldest lines"
            );
            self.record_quota_drops(agent_id, &plan.losses);
        }

        let (mut lines, mut bytes, mut newest) = (0, 0, 0);
        for (id, meta) in metas {
            lines += u64::from(meta.lines);
            bytes += meta.bytes;
            newest = id;
            index.insert_segment(id, meta);
        }
        agent.metrics.pushed(lines, bytes);
        let (depth_lines, depth_bytes) = index.depth();
        agent.metrics.depth(depth_lines, depth_bytes);
        drop(index);
        // At most the lines of one received batch.
        let queued = usize::try_from(lines).unwrap_or(usize::MAX);
        Ok((agent, newest, queued))
    }
}
