//! The in-memory index of one agent's queue: which segments exist, how big
//! they are, which routes they are tagged with, and each route's committed
//! cursor.
//!
//! It is rebuilt at open from the segment files (`open.rs`) and kept in
//! step with the database by [`super::Queue`], which changes it only after
//! the matching sled write succeeded. It answers "which segments does this route read
//! next" and "which segments may be freed" without touching the database.
//! It costs about 80 bytes per queued segment (a segment holds up to a whole
//! received batch). It also plans what the per-agent quota drops
//! ([`AgentIndex::plan_quota`]). It must not do I/O.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::files::Location;
use super::Cursor;
use crate::route::{DestinationKind, RouteKey};

/// A route of this agent, as segments are tagged with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RouteTag {
    pub kind: DestinationKind,
    pub cred_id: Arc<str>,
}

impl RouteTag {
    pub(crate) fn is(&self, route: &RouteKey) -> bool {
        self.kind == route.kind && *self.cred_id == *route.cred_id
    }
}

/// What the index keeps per segment.
#[derive(Clone, Debug)]
pub(crate) struct SegMeta {
    pub lines: u32,
    pub bytes: u64,
    /// Earliest and latest line timestamp (ns; 0 when unknown).
    pub span_ns: (i64, i64),
    /// Shared between consecutive segments with the same tags.
    pub tags: Arc<[RouteTag]>,
    /// Its record in a segment file.
    pub at: Location,
    /// Damage in it was found and counted already.
    pub damage_counted: bool,
}

/// What [`AgentIndex::remove_segments`] removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Removed {
    pub lines: u64,
    pub bytes: u64,
    /// The segment file of each removed segment (one entry per segment), to
    /// release.
    pub files: Vec<u64>,
}

impl SegMeta {
    /// Cursor of the segment's last line.
    fn last(&self, segment: u64) -> Cursor {
        Cursor {
            segment,
            index: self.lines.saturating_sub(1),
        }
    }
}

#[derive(Debug)]
struct RouteEntry {
    tag: RouteTag,
    cursor: Option<Cursor>,
    /// Lines of this route lost to damage since open.
    damaged: u64,
}

/// One segment a read should decode, and the first line index it wants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Planned {
    pub segment: u64,
    pub from_index: u32,
}

/// What one route loses when the quota drops segments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RouteLoss {
    pub tag: RouteTag,
    /// Lines the route had not delivered yet.
    pub lines: u64,
    /// Their data bytes (whole segments; prorated for a partly read one).
    pub bytes: u64,
    /// Earliest and latest timestamp of the dropped segments (ns).
    pub span_ns: (i64, i64),
    /// The route's new cursor: the last line of its newest dropped segment.
    pub cursor: Cursor,
}

/// The oldest segments to drop so an append fits the agent's quota.
#[derive(Debug, Default)]
pub(crate) struct QuotaPlan {
    pub segments: Vec<u64>,
    /// Lines of those segments that at least one route had not delivered.
    pub lost_lines: u64,
    /// Every route that loses undelivered lines.
    pub losses: Vec<RouteLoss>,
}

#[derive(Debug, Default)]
pub(crate) struct AgentIndex {
    segments: BTreeMap<u64, SegMeta>,
    routes: Vec<RouteEntry>,
    lines: u64,
    bytes: u64,
}

impl AgentIndex {
    /// (lines, bytes) of the segments still queued.
    pub(crate) fn depth(&self) -> (u64, u64) {
        (self.lines, self.bytes)
    }

    /// (lines, bytes) `route` has not yet delivered: the lines after its
    /// cursor in segments tagged with it. Bytes of a partly delivered
    /// segment are counted in proportion to its lines left.
    pub(crate) fn route_depth(&self, route: &RouteKey) -> (u64, u64) {
        let Some(cursor) = self.cursor(route) else {
            return (0, 0);
        };
        let start = cursor.map_or(0, |c| c.segment);
        let (mut lines, mut bytes) = (0u64, 0u64);
        for (&segment, meta) in self.segments.range(start..) {
            if !meta.tags.iter().any(|t| t.is(route)) {
                continue;
            }
            let from = match cursor {
                Some(c) if c.segment == segment => c.index.saturating_add(1),
                _ => 0,
            };
            let left = u64::from(meta.lines.saturating_sub(from));
            lines += left;
            if meta.lines > 0 {
                bytes += meta.bytes * left / u64::from(meta.lines);
            }
        }
        (lines, bytes)
    }

    pub(crate) fn segment_count(&self) -> usize {
        self.segments.len()
    }

    pub(crate) fn newest_segment(&self) -> Option<u64> {
        self.segments.keys().next_back().copied()
    }

    pub(crate) fn has_route(&self, route: &RouteKey) -> bool {
        self.routes.iter().any(|r| r.tag.is(route))
    }

    /// Forgets `route` if no queued segment is tagged with it (a tag
    /// without its route would hold its segments forever); says whether it
    /// did.
    pub(crate) fn remove_route(&mut self, route: &RouteKey) -> bool {
        let tagged = self
            .segments
            .values()
            .any(|meta| meta.tags.iter().any(|t| t.is(route)));
        if tagged || !self.has_route(route) {
            return false;
        }
        self.routes.retain(|r| !r.tag.is(route));
        true
    }

    /// Adds a route if absent (an existing route keeps its cursor).
    pub(crate) fn add_route(&mut self, route: &RouteKey, cursor: Option<Cursor>) {
        if !self.has_route(route) {
            self.routes.push(RouteEntry {
                tag: RouteTag {
                    kind: route.kind,
                    cred_id: Arc::from(route.cred_id.as_str()),
                },
                cursor,
                damaged: 0,
            });
        }
    }

    /// Lines of `route` lost to damage since open.
    pub(crate) fn route_damaged(&self, route: &RouteKey) -> u64 {
        self.routes
            .iter()
            .find(|r| r.tag.is(route))
            .map_or(0, |r| r.damaged)
    }

    /// Records that `lines` lines of a segment were lost to damage, once per
    /// segment: returns the routes that had not delivered them (the ones
    /// whose cursor is before the segment's last line) and the segment's
    /// time span, or `None` if this segment's damage was counted already.
    pub(crate) fn count_damage(
        &mut self,
        segment: u64,
        lines: u64,
    ) -> Option<(Vec<RouteTag>, (i64, i64))> {
        let meta = self.segments.get_mut(&segment)?;
        if std::mem::replace(&mut meta.damage_counted, true) {
            return None;
        }
        let last = meta.last(segment);
        let (tags, span) = (meta.tags.clone(), meta.span_ns);
        let mut hit = Vec::new();
        for entry in &mut self.routes {
            if tags.contains(&entry.tag) && entry.cursor.is_none_or(|c| c < last) {
                entry.damaged += lines;
                hit.push(entry.tag.clone());
            }
        }
        Some((hit, span))
    }

    /// The segment's metadata.
    pub(crate) fn segment(&self, segment: u64) -> Option<&SegMeta> {
        self.segments.get(&segment)
    }

    /// The route's committed cursor; `None` inside if nothing is committed,
    /// outer `None` if the route is unknown.
    pub(crate) fn cursor(&self, route: &RouteKey) -> Option<Option<Cursor>> {
        self.routes
            .iter()
            .find(|r| r.tag.is(route))
            .map(|r| r.cursor)
    }

    pub(crate) fn set_cursor(&mut self, route: &RouteKey, cursor: Cursor) {
        if let Some(entry) = self.routes.iter_mut().find(|r| r.tag.is(route)) {
            entry.cursor = Some(cursor);
        }
    }

    /// Tags for a new segment, shared with the newest segment's when equal.
    pub(crate) fn tags_for<'a>(
        &self,
        routes: impl ExactSizeIterator<Item = (DestinationKind, &'a str)> + Clone,
    ) -> Arc<[RouteTag]> {
        if let Some(last) = self.segments.values().next_back() {
            let same = last.tags.len() == routes.len()
                && last
                    .tags
                    .iter()
                    .zip(routes.clone())
                    .all(|(t, (kind, cred))| t.kind == kind && *t.cred_id == *cred);
            if same {
                return last.tags.clone();
            }
        }
        routes
            .map(|(kind, cred_id)| RouteTag {
                kind,
                cred_id: Arc::from(cred_id),
            })
            .collect()
    }

    pub(crate) fn insert_segment(&mut self, segment: u64, meta: SegMeta) {
        self.lines += u64::from(meta.lines);
        self.bytes += meta.bytes;
        if let Some(old) = self.segments.insert(segment, meta) {
            // Segment ids are never reused; keep the depth right regardless.
            self.lines -= u64::from(old.lines);
            self.bytes -= old.bytes;
        }
    }

    /// Removes segments; returns what they held and their files.
    pub(crate) fn remove_segments(&mut self, segments: &[u64]) -> Removed {
        let mut removed = Removed::default();
        for id in segments {
            if let Some(meta) = self.segments.remove(id) {
                removed.lines += u64::from(meta.lines);
                removed.bytes += meta.bytes;
                removed.files.push(meta.at.file);
            }
        }
        self.lines -= removed.lines;
        self.bytes -= removed.bytes;
        removed
    }

    /// Whether the segment is still queued.
    pub(crate) fn contains(&self, segment: u64) -> bool {
        self.segments.contains_key(&segment)
    }

    /// Segments `route` should read next, strictly after `after`, until
    /// their lines reach `max_lines` or their bytes reach `max_bytes`.
    pub(crate) fn plan_read(
        &self,
        route: &RouteKey,
        after: Option<Cursor>,
        max_lines: usize,
        max_bytes: usize,
    ) -> Vec<Planned> {
        let start = after.map_or(0, |c| c.segment);
        let (mut lines, mut bytes) = (0usize, 0usize);
        let mut plan = Vec::new();
        for (&segment, meta) in self.segments.range(start..) {
            if !meta.tags.iter().any(|t| t.is(route)) {
                continue;
            }
            let from_index = match after {
                Some(c) if c.segment == segment => c.index.saturating_add(1),
                _ => 0,
            };
            if from_index >= meta.lines {
                continue;
            }
            plan.push(Planned {
                segment,
                from_index,
            });
            lines += (meta.lines - from_index) as usize;
            bytes = bytes.saturating_add(usize::try_from(meta.bytes).unwrap_or(usize::MAX));
            if lines >= max_lines || bytes >= max_bytes {
                break;
            }
        }
        plan
    }

    /// The oldest segments (whole, for every route) to drop so that
    /// `incoming` more bytes fit within `quota`, and what each route loses.
    /// Empty when they already fit.
    pub(crate) fn plan_quota(&self, incoming: u64, quota: u64) -> QuotaPlan {
        let mut excess = self.bytes.saturating_add(incoming).saturating_sub(quota);
        let mut plan = QuotaPlan::default();
        if excess == 0 {
            return plan;
        }
        let mut dropped = Vec::new();
        for (&id, meta) in &self.segments {
            if excess == 0 {
                break;
            }
            excess = excess.saturating_sub(meta.bytes);
            plan.segments.push(id);
            dropped.push((id, meta));
            // The first line some tagged route still needs.
            let needed_from = meta
                .tags
                .iter()
                .map(|tag| match self.routes.iter().find(|r| r.tag == *tag) {
                    Some(RouteEntry {
                        cursor: Some(c), ..
                    }) if c.segment == id => c.index.saturating_add(1),
                    Some(RouteEntry {
                        cursor: Some(c), ..
                    }) if c.segment > id => meta.lines,
                    Some(_) => 0,
                    None => meta.lines,
                })
                .min()
                .unwrap_or(meta.lines);
            plan.lost_lines += u64::from(meta.lines.saturating_sub(needed_from));
        }
        for entry in &self.routes {
            let mut loss: Option<RouteLoss> = None;
            for &(id, meta) in &dropped {
                if !meta.tags.contains(&entry.tag) {
                    continue;
                }
                let last = meta.last(id);
                let from = match entry.cursor {
                    Some(c) if c >= last => continue,
                    Some(c) if c.segment == id => c.index + 1,
                    _ => 0,
                };
                let lines = u64::from(meta.lines - from);
                let bytes = meta.bytes * lines / u64::from(meta.lines.max(1));
                let loss = loss.get_or_insert_with(|| RouteLoss {
                    tag: entry.tag.clone(),
                    lines: 0,
                    bytes: 0,
                    span_ns: meta.span_ns,
                    cursor: last,
                });
                loss.lines += lines;
                loss.bytes += bytes;
                loss.span_ns = widen(loss.span_ns, meta.span_ns);
                loss.cursor = last;
            }
            plan.losses.extend(loss);
        }
        plan
    }

    /// Applies a [`QuotaPlan`] after its sled write succeeded: routes move
    /// past the dropped segments, which leave the index. Returns what the
    /// segments held.
    pub(crate) fn apply_quota(&mut self, plan: &QuotaPlan) -> Removed {
        for loss in &plan.losses {
            if let Some(entry) = self.routes.iter_mut().find(|r| r.tag == loss.tag) {
                if entry.cursor.is_none_or(|c| c < loss.cursor) {
                    entry.cursor = Some(loss.cursor);
                }
            }
        }
        self.remove_segments(&plan.segments)
    }

    /// Whether some route still needs the segment after `route` commits
    /// through `through`. A route the index does not know holds it: nothing
    /// is freed because its route record is missing.
    fn held(&self, segment: u64, meta: &SegMeta, route: &RouteKey, through: Cursor) -> bool {
        let last = meta.last(segment);
        meta.tags.iter().any(|tag| {
            let cursor = if tag.is(route) {
                Some(through)
            } else {
                match self.routes.iter().find(|r| r.tag == *tag) {
                    Some(entry) => entry.cursor,
                    None => return true,
                }
            };
            cursor.is_none_or(|c| c < last)
        })
    }

    /// Segments that become free when `route` commits through `through`.
    ///
    /// Only segments between the route's old and new cursor can change
    /// state, so only those are examined.
    pub(crate) fn freed_by_commit(&self, route: &RouteKey, through: Cursor) -> Vec<u64> {
        let from = self.cursor(route).flatten().map_or(0, |c| c.segment);
        self.segments
            .range(from..=through.segment)
            .filter(|(_, meta)| meta.tags.iter().any(|t| t.is(route)))
            .filter(|(&id, meta)| !self.held(id, meta, route, through))
            .map(|(&id, _)| id)
            .collect()
    }
}

/// The smallest span covering both (0 means unknown and is ignored).
pub(crate) fn widen(a: (i64, i64), b: (i64, i64)) -> (i64, i64) {
    let min = |x: i64, y: i64| match (x, y) {
        (0, v) | (v, 0) => v,
        (x, y) => x.min(y),
    };
    (min(a.0, b.0), a.1.max(b.1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(cred: &str) -> RouteKey {
        RouteKey {
            agent_id: "a".into(),
            kind: DestinationKind::Datadog,
            cred_id: cred.into(),
        }
    }

    fn index_with(segments: &[(u64, u32, &[&str])]) -> AgentIndex {
        let mut index = AgentIndex::default();
        for cred in ["x", "y"] {
            index.add_route(&route(cred), None);
        }
        for (id, lines, creds) in segments {
            let tags = index.tags_for(creds.iter().map(|c| (DestinationKind::Datadog, *c)));
            index.insert_segment(
                *id,
                SegMeta {
                    lines: *lines,
                    bytes: u64::from(*lines) * 10,
                    span_ns: (i64::from(*lines), i64::from(*lines) + 1),
                    tags,
                    at: Location {
                        file: 1,
                        offset: 0,
                        len: 1,
                    },
                    damage_counted: false,
                },
            );
        }
        index
    }

    #[test]
    fn a_routes_depth_counts_only_its_own_segments_after_its_cursor() {
        let mut index = index_with(&[(1, 4, &["x", "y"]), (2, 3, &["x"]), (3, 5, &["y"])]);
        assert_eq!(index.route_depth(&route("x")), (7, 70));
        assert_eq!(index.route_depth(&route("y")), (9, 90));
        index.set_cursor(
            &route("x"),
            Cursor {
                segment: 1,
                index: 1,
            },
        );
        assert_eq!(
            index.route_depth(&route("x")),
            (5, 50),
            "half of segment 1 is left"
        );
        assert_eq!(index.route_depth(&route("unknown")), (0, 0));
    }

    #[test]
    fn plan_skips_untagged_segments_and_resumes_inside_a_segment() {
        let index = index_with(&[(1, 3, &["x"]), (2, 3, &["y"]), (3, 3, &["x", "y"])]);
        let plan = index.plan_read(
            &route("x"),
            Some(Cursor {
                segment: 1,
                index: 1,
            }),
            100,
            usize::MAX,
        );
        assert_eq!(
            plan,
            vec![
                Planned {
                    segment: 1,
                    from_index: 2
                },
                Planned {
                    segment: 3,
                    from_index: 0
                }
            ]
        );
        // A cursor on a segment's last line moves on to the next one.
        let plan = index.plan_read(
            &route("y"),
            Some(Cursor {
                segment: 2,
                index: 2,
            }),
            1,
            usize::MAX,
        );
        assert_eq!(
            plan,
            vec![Planned {
                segment: 3,
                from_index: 0
            }]
        );
    }

    #[test]
    fn quota_plan_drops_oldest_segments_and_counts_lines_some_route_still_needed() {
        let mut index = index_with(&[(1, 4, &["x", "y"]), (2, 4, &["x"]), (3, 4, &["x", "y"])]);
        // x delivered all of segment 1 and half of 2; y nothing.
        index.set_cursor(
            &route("x"),
            Cursor {
                segment: 2,
                index: 1,
            },
        );
        assert!(index.plan_quota(0, 120).segments.is_empty(), "fits");
        // 120 queued + 30 incoming over a quota of 100: drop 1 and 2.
        let plan = index.plan_quota(30, 100);
        assert_eq!(plan.segments, vec![1, 2]);
        // Segment 1: y needed all 4; segment 2: x needed its last 2.
        assert_eq!(plan.lost_lines, 6);
        let lost: Vec<(&str, u64, Cursor)> = plan
            .losses
            .iter()
            .map(|l| (&*l.tag.cred_id, l.lines, l.cursor))
            .collect();
        assert_eq!(
            lost,
            vec![
                (
                    "x",
                    2,
                    Cursor {
                        segment: 2,
                        index: 3
                    }
                ),
                (
                    "y",
                    4,
                    Cursor {
                        segment: 1,
                        index: 3
                    }
                )
            ]
        );
        let removed = index.apply_quota(&plan);
        assert_eq!((removed.lines, removed.bytes), (8, 80));
        assert_eq!(
            index.cursor(&route("y")),
            Some(Some(Cursor {
                segment: 1,
                index: 3
            }))
        );
        assert_eq!(index.depth(), (4, 40));
    }

    #[test]
    fn a_segment_is_freed_only_past_its_last_line_for_every_tag() {
        let mut index = index_with(&[(1, 3, &["x", "y"]), (2, 3, &["x"])]);
        let mid = Cursor {
            segment: 2,
            index: 1,
        };
        // x passed segment 1 but y still holds it; segment 2 is not passed.
        assert!(index.freed_by_commit(&route("x"), mid).is_empty());
        index.set_cursor(&route("x"), mid);
        let end = Cursor {
            segment: 1,
            index: 2,
        };
        assert_eq!(index.freed_by_commit(&route("y"), end), vec![1]);
    }

    #[test]
    fn damage_is_counted_once_per_segment_for_the_routes_that_had_not_delivered_it() {
        let mut index = index_with(&[(1, 3, &["x", "y"])]);
        index.set_cursor(
            &route("x"),
            Cursor {
                segment: 1,
                index: 2,
            },
        );
        let (hit, span) = index.count_damage(1, 2).expect("first time");
        assert_eq!(hit.len(), 1);
        assert_eq!(&*hit[0].cred_id, "y");
        assert_eq!(span, (3, 4));
        assert!(index.count_damage(1, 2).is_none(), "counted once");
        assert_eq!(index.route_damaged(&route("y")), 2);
        assert_eq!(index.route_damaged(&route("x")), 0);
    }
}
