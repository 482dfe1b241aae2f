//! What a room reports to Workers Analytics Engine when the `METRICS` binding exists
//! (docs/operating.md has the schema and example queries): one data point per room per
//! `METRICS_INTERVAL_SECS`, holding what changed since the previous one.
//!
//! A data point is only ever written from an event the room is already handling: the
//! interval never sets an alarm or keeps a room awake, so an idle room — hibernated, or
//! holding quiet sockets — writes nothing until something happens in it. The room writes
//! one more point when its last connection leaves, so the end of a burst of activity is
//! never left unreported.
//!
//! The writer is the [`MetricsSink`] trait: the runtime's `AnalyticsEngineDataset` in the
//! Durable Object, a recorder in the native tests (Miniflare's local binding accepts
//! points and keeps nothing, so what is written can only be checked here).

use std::collections::BTreeMap;

use super::counters::Counters;
use super::rpc::StorageStats;

/// Where data points go.
pub trait MetricsSink {
    /// Writes one point; the error is the runtime's message.
    ///
    /// # Errors
    ///
    /// What the runtime reports (the room logs it and goes on).
    fn write(&self, point: &DataPoint) -> std::result::Result<(), String>;
}

/// One Analytics Engine data point: one index, blobs and doubles in the documented order
/// ([`BLOBS`], [`DOUBLES`]).
#[derive(Debug, Clone, PartialEq)]
pub struct DataPoint {
    /// `index1`: the room's key, `tenant/room` (`/room` without a tenant), which is what
    /// Analytics Engine samples by, so a busy room never hides a quiet one.
    pub index: String,
    /// `blob1`…: see [`BLOBS`].
    pub blobs: Vec<String>,
    /// `double1`…: see [`DOUBLES`].
    pub doubles: Vec<f64>,
}

/// The blob columns, in order (`blob1` is the first).
pub const BLOBS: [&str; 4] = [
    "room",       // blob1: the room's name
    "tenant",     // blob2: its tenant, "" without one
    "rejections", // blob3: refusals in the interval by code, "rate_limited=3,forbidden=1"
    "kicks",      // blob4: sockets the room closed in the interval by code, "4009=2"
];

/// The double columns, in order (`double1` is the first).
pub const DOUBLES: [&str; 15] = [
    "connections",      // double1: open at the time of the point
    "users",            // double2: distinct users present at the time of the point
    "peak_connections", // double3: most open at once since the object started
    "interval_ms",      // double4: how long the counts below cover
    "messages",         // double5: durable messages accepted (new ids)
    "duplicates",       // double6: publishes answered as duplicates
    "ephemeral",        // double7: ephemeral messages fanned out
    "deliveries",       // double8: frames handed to sockets
    "sends",            // double9: WebSocket messages handed to the runtime
    "connects",         // double10: sockets accepted
    "rejections",       // double11: refused frames and connects, all codes
    "kicks",            // double12: sockets the room closed, all codes
    "rows_read",        // double13: SQLite rows read
    "rows_written",     // double14: SQLite rows written
    "webhooks_pending", // double15: webhook events not yet delivered (0 when off)
];

/// What the room is at the moment a point is taken.
#[derive(Debug, Clone, Default)]
pub struct Snapshot<'a> {
    /// Counters since the object started.
    pub counters: Option<&'a Counters>,
    /// Open connections.
    pub connections: usize,
    /// Users present.
    pub users: usize,
    /// SQLite rows since the object started.
    pub storage: StorageStats,
    /// Webhook events not yet delivered.
    pub webhooks_pending: u64,
}

/// The interval and what the previous point covered.
#[derive(Debug, Clone)]
pub struct Metrics {
    interval_ms: i64,
    /// When the counts of the next point start.
    last_ms: i64,
    /// Connections at the previous check: a room going from some to none writes a point.
    last_connections: usize,
    /// The totals the previous point was taken at.
    base: Counters,
    base_storage: StorageStats,
}

impl Metrics {
    /// Starts counting at `now` (the object's start: counters start at zero then).
    pub fn new(interval_secs: u64, now: i64) -> Self {
        Metrics {
            interval_ms: i64::try_from(interval_secs.saturating_mul(1000)).unwrap_or(i64::MAX),
            last_ms: now,
            last_connections: 0,
            base: Counters::default(),
            base_storage: StorageStats::default(),
        }
    }

    /// Whether a point is due at `now` with `connections` open: the interval has passed,
    /// or the last connection just left. Cheap, so the room asks after every event and
    /// builds a [`Snapshot`] only when the answer is yes.
    pub fn due(&mut self, now: i64, connections: usize) -> bool {
        let emptied = self.last_connections > 0 && connections == 0;
        self.last_connections = connections;
        emptied || now - self.last_ms >= self.interval_ms
    }

    /// Takes the point for `room_key` at `now` and starts the next interval.
    pub fn take(&mut self, now: i64, room_key: &str, s: &Snapshot<'_>) -> DataPoint {
        let zero = Counters::default();
        let c = s.counters.unwrap_or(&zero);
        let b = &self.base;
        let delta = |now: u64, then: u64| now.saturating_sub(then) as f64;
        let by_code = |now: &BTreeMap<String, u64>, then: &BTreeMap<String, u64>| {
            let mut total = 0u64;
            let mut parts = Vec::new();
            for (code, n) in now {
                let d = n.saturating_sub(then.get(code).copied().unwrap_or(0));
                if d > 0 {
                    total += d;
                    parts.push(format!("{code}={d}"));
                }
            }
            (total, parts.join(","))
        };
        let names =
            |m: &BTreeMap<&'static str, u64>| m.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        let codes = |m: &BTreeMap<u16, u64>| m.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        let (rejections, rejections_by) = by_code(&names(&c.rejections), &names(&b.rejections));
        let (kicks, kicks_by) = by_code(&codes(&c.kicks), &codes(&b.kicks));
        let (tenant, room) = room_key.split_once('/').unwrap_or(("", room_key));
        let point = DataPoint {
            index: room_key.to_string(),
            blobs: vec![
                room.to_string(),
                tenant.to_string(),
                rejections_by,
                kicks_by,
            ],
            doubles: vec![
                s.connections as f64,
                s.users as f64,
                c.peak_connections as f64,
                (now - self.last_ms).max(0) as f64,
                delta(c.messages, b.messages),
                delta(c.duplicates, b.duplicates),
                delta(c.ephemeral, b.ephemeral),
                delta(c.deliveries, b.deliveries),
                delta(c.sends, b.sends),
                delta(c.connects, b.connects),
                rejections as f64,
                kicks as f64,
                delta(s.storage.rows_read, self.base_storage.rows_read),
                delta(s.storage.rows_written, self.base_storage.rows_written),
                s.webhooks_pending as f64,
            ],
        };
        self.last_ms = now;
        self.base = c.clone();
        self.base_storage = s.storage;
        point
    }
}

/// The runtime's dataset is a sink as it is.
impl MetricsSink for worker::AnalyticsEngineDataset {
    fn write(&self, point: &DataPoint) -> std::result::Result<(), String> {
        worker::AnalyticsEngineDataPointBuilder::new()
            .indexes([point.index.as_str()])
            .blobs(point.blobs.iter().map(String::as_str))
            .doubles(point.doubles.iter().copied())
            .write_to(self)
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    #[derive(Default)]
    struct Recorder(RefCell<Vec<DataPoint>>);

    impl MetricsSink for Recorder {
        fn write(&self, point: &DataPoint) -> std::result::Result<(), String> {
            self.0.borrow_mut().push(point.clone());
            Ok(())
        }
    }

    fn column(p: &DataPoint, name: &str) -> f64 {
        let i = DOUBLES.iter().position(|n| *n == name).unwrap();
        p.doubles[i]
    }

    /// Drives `Metrics` the way the room does: ask after every event, write when due.
    fn event(m: &mut Metrics, sink: &Recorder, now: i64, key: &str, s: &Snapshot<'_>) {
        if m.due(now, s.connections) {
            let point = m.take(now, key, s);
            sink.write(&point).unwrap();
        }
    }

    #[test]
    fn one_point_per_interval_with_what_changed_since_the_last() {
        let sink = Recorder::default();
        let mut m = Metrics::new(60, 1_000);
        let mut c = Counters {
            messages: 5,
            deliveries: 15,
            connects: 3,
            peak_connections: 3,
            ..Counters::default()
        };
        c.rejected("rate_limited");
        c.rejected("rate_limited");
        c.rejected("forbidden");
        // Events inside the first interval write nothing.
        for t in [1_000, 20_000, 60_999] {
            event(&mut m, &sink, t, "t1/lobby", &snapshot(&c, 3, 2, 10, 7));
        }
        assert!(sink.0.borrow().is_empty());
        event(
            &mut m,
            &sink,
            61_000,
            "t1/lobby",
            &snapshot(&c, 3, 2, 10, 7),
        );
        let points = sink.0.borrow().clone();
        assert_eq!(points.len(), 1);
        let p = &points[0];
        assert_eq!(p.index, "t1/lobby");
        assert_eq!(p.blobs, ["lobby", "t1", "forbidden=1,rate_limited=2", ""]);
        assert_eq!(p.doubles.len(), DOUBLES.len());
        assert_eq!(column(p, "connections"), 3.0);
        assert_eq!(column(p, "users"), 2.0);
        assert_eq!(column(p, "interval_ms"), 60_000.0);
        assert_eq!(column(p, "messages"), 5.0);
        assert_eq!(column(p, "deliveries"), 15.0);
        assert_eq!(column(p, "rejections"), 3.0);
        assert_eq!(column(p, "rows_read"), 10.0);
        assert_eq!(column(p, "rows_written"), 20.0);
        assert_eq!(column(p, "webhooks_pending"), 7.0);

        // The next point holds only what happened after the first.
        c.messages = 9;
        c.deliveries = 27;
        c.kicked(4009);
        c.rejected("forbidden");
        event(
            &mut m,
            &sink,
            100_000,
            "t1/lobby",
            &snapshot(&c, 3, 2, 16, 7),
        );
        assert_eq!(sink.0.borrow().len(), 1, "not due yet");
        event(
            &mut m,
            &sink,
            125_000,
            "t1/lobby",
            &snapshot(&c, 3, 2, 16, 7),
        );
        let p = sink.0.borrow()[1].clone();
        assert_eq!(p.blobs, ["lobby", "t1", "forbidden=1", "4009=1"]);
        assert_eq!(column(&p, "interval_ms"), 64_000.0);
        assert_eq!(column(&p, "messages"), 4.0);
        assert_eq!(column(&p, "deliveries"), 12.0);
        assert_eq!(column(&p, "rejections"), 1.0);
        assert_eq!(column(&p, "kicks"), 1.0);
        assert_eq!(column(&p, "rows_read"), 6.0);
        assert_eq!(column(&p, "peak_connections"), 3.0, "a level, not a delta");
    }

    #[test]
    fn the_last_connection_leaving_writes_the_partial_interval() {
        let sink = Recorder::default();
        let mut m = Metrics::new(60, 0);
        let mut c = Counters::default();
        event(&mut m, &sink, 1_000, "/room", &snapshot(&c, 0, 0, 0, 0));
        assert!(
            sink.0.borrow().is_empty(),
            "an empty room that stays empty writes nothing"
        );
        c.connects = 1;
        event(&mut m, &sink, 2_000, "/room", &snapshot(&c, 1, 1, 0, 0));
        c.messages = 1;
        event(&mut m, &sink, 3_000, "/room", &snapshot(&c, 1, 1, 0, 0));
        assert!(sink.0.borrow().is_empty());
        event(&mut m, &sink, 4_000, "/room", &snapshot(&c, 0, 0, 0, 0));
        let points = sink.0.borrow().clone();
        assert_eq!(points.len(), 1, "written when the room emptied");
        assert_eq!(points[0].blobs[..2], ["room".to_string(), String::new()]);
        assert_eq!(column(&points[0], "connections"), 0.0);
        assert_eq!(column(&points[0], "connects"), 1.0);
        assert_eq!(column(&points[0], "messages"), 1.0);
        assert_eq!(column(&points[0], "interval_ms"), 4_000.0);
        // Still empty: nothing more until the interval passes.
        event(&mut m, &sink, 5_000, "/room", &snapshot(&c, 0, 0, 0, 0));
        assert_eq!(sink.0.borrow().len(), 1);
        event(&mut m, &sink, 64_000, "/room", &snapshot(&c, 0, 0, 0, 0));
        assert_eq!(sink.0.borrow().len(), 2);
        assert_eq!(column(&sink.0.borrow()[1], "messages"), 0.0);
    }

    #[test]
    fn the_schema_has_room_for_its_columns() {
        // Analytics Engine takes one index, up to 20 blobs and 20 doubles.
        assert!(BLOBS.len() <= 20 && DOUBLES.len() <= 20);
        let p = Metrics::new(1, 0).take(1_000, "a/b", &Snapshot::default());
        assert_eq!(
            (p.blobs.len(), p.doubles.len()),
            (BLOBS.len(), DOUBLES.len())
        );
    }

    fn snapshot(
        c: &Counters,
        connections: usize,
        users: usize,
        rows: u64,
        pending: u64,
    ) -> Snapshot<'_> {
        Snapshot {
            counters: Some(c),
            connections,
            users,
            storage: StorageStats {
                rows_read: rows,
                rows_written: rows * 2,
            },
            webhooks_pending: pending,
        }
    }
}
