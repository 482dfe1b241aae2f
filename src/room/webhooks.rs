//! Webhooks to the application's backend (docs/protocol.md §15) as a transactional
//! outbox: every forwarded event is written to the room's SQLite in the same synchronous
//! step — so the same atomic write — as the message or presence change it belongs to,
//! under a gapless number `n` (its `wid` is `"<epoch>:<n>"`). The room's alarm delivers
//! them in `n` order, a batch at a time, and deletes a batch only after a 2xx; anything
//! else is retried with exponential backoff and jitter until the event is older than
//! `WEBHOOK_MAX_AGE_SECS`, when it becomes dead (kept and counted, retried on request).
//!
//! Plain Rust over the [`Sql`] trait: the storage statements, the retry policy and the
//! request body are native-tested; the Durable Object only performs the HTTP request.

use serde::Serialize;

use super::log::{Arg, Cell, Sql};
use crate::config::Webhooks;
use crate::error::{Error, Result};

/// First retry delay; it doubles per failed attempt up to [`MAX_BACKOFF_MS`].
pub const FIRST_BACKOFF_MS: i64 = 1000;
/// Longest retry delay (5 minutes).
pub const MAX_BACKOFF_MS: i64 = 300_000;
/// How long a receiver may take to answer before the attempt counts as failed.
pub const TIMEOUT_MS: u64 = 10_000;

/// The outbox table, created with the log's schema (`log::SCHEMA`).
pub const TABLE: &str = "CREATE TABLE IF NOT EXISTS webhooks (n INTEGER PRIMARY KEY, queued INTEGER NOT NULL, body TEXT NOT NULL, dead INTEGER NOT NULL DEFAULT 0)";
/// Advances `meta.webhook_n` inside SQLite, so a recorded event costs one statement.
pub const ADVANCE: &str = "CREATE TRIGGER IF NOT EXISTS advance_webhook AFTER INSERT ON webhooks \
     BEGIN UPDATE meta SET value = NEW.n WHERE key = 'webhook_n'; END";

/// Delay before retry number `attempt` (1 = the first retry): 1 s doubling to 5 min, with
/// "equal jitter" — half fixed, half random (`jitter` in [0, 1)) — so retries from many
/// rooms spread out while each still waits at least half its step.
pub fn backoff_ms(attempt: u32, jitter: f64) -> i64 {
    let step = FIRST_BACKOFF_MS
        .saturating_mul(1i64 << attempt.saturating_sub(1).min(20))
        .min(MAX_BACKOFF_MS);
    let jitter = jitter.clamp(0.0, 1.0);
    step / 2 + ((step / 2) as f64 * jitter) as i64
}

/// The fields of a request body before `events`.
#[derive(Serialize)]
struct Head<'a> {
    room: &'a str,
    tenant: Option<&'a str>,
    epoch: &'a str,
}

/// A `presence` webhook event (without its `wid`).
#[derive(Serialize)]
pub struct PresenceEvent<'a> {
    /// Always `presence`.
    pub kind: &'static str,
    /// `join` or `leave`.
    pub op: &'a str,
    /// The user.
    pub user: &'a str,
    /// The user's `info`.
    pub info: &'a serde_json::value::RawValue,
    /// When, ms since the unix epoch.
    pub ts: i64,
}

/// A `room` webhook event (without its `wid`).
#[derive(Serialize)]
pub struct RoomEvent<'a> {
    /// Always `room`.
    pub kind: &'static str,
    /// `occupied` or `vacated`.
    pub op: &'a str,
    /// When, ms since the unix epoch.
    pub ts: i64,
}

/// A batch handed to the runtime to POST.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Where to POST.
    pub url: String,
    /// The JSON body.
    pub body: String,
    /// The `Roomcast-Signature` header value.
    pub signature: String,
    /// The last event number in the batch.
    pub upto: u64,
    /// Events in the batch.
    pub count: usize,
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The receiver answered with this status.
    Status(u16),
    /// No answer: a network error or the timeout.
    Failed(String),
}

/// `GET /v1/rooms/{room}/webhooks`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Status {
    /// Whether `WEBHOOK_URL` is set.
    pub enabled: bool,
    /// Events waiting to be delivered.
    pub pending: u64,
    /// Events that outlived `WEBHOOK_MAX_AGE_SECS` undelivered.
    pub dead: u64,
    /// When the next attempt is due (ms since the unix epoch), if one is scheduled.
    pub next_attempt_ms: Option<i64>,
    /// Why the last attempt failed, if it did.
    pub last_error: Option<String>,
    /// Failed attempts in a row.
    pub attempts: u32,
}

/// The outbox as the room keeps it in memory. The retry state — failed attempts in a row,
/// when the next is due, the last error — is also stored in `meta` on each failure (three
/// rows) and cleared on the next success: a room is evicted ~10 s after its last event, so
/// with the count in memory only, every wake-up for a retry would start the backoff again
/// at 1 s and a room facing a receiver that is down would wake every few seconds for the
/// whole outage instead of every 5 minutes.
#[derive(Debug)]
pub struct Outbox {
    /// The configuration.
    pub config: Webhooks,
    /// The last event number assigned.
    pub last_n: u64,
    /// The batch being delivered: its last event number.
    pub in_flight: Option<u64>,
    /// Failed attempts in a row.
    pub attempts: u32,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// When the retry after the last failure is due (ms), while `attempts > 0`.
    pub retry_at: Option<i64>,
}

/// The `meta` keys of the stored retry state.
const RETRY_KEYS: [&str; 3] = ["webhook_attempts", "webhook_retry_at", "webhook_error"];

fn int(cell: Option<&Cell>) -> i64 {
    match cell {
        Some(Cell::Int(i)) => *i,
        _ => 0,
    }
}

impl Outbox {
    /// Opens the outbox (the table exists: `log::open` created it).
    ///
    /// # Errors
    ///
    /// `Internal` when storage fails.
    pub fn open(sql: &dyn Sql, config: Webhooks) -> Result<Self> {
        sql.write(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('webhook_n', 0)",
            &[],
        )?;
        let rows = sql.run("SELECT value FROM meta WHERE key = 'webhook_n'", &[])?;
        let last_n = u64::try_from(int(rows.first().and_then(|r| r.first()))).unwrap_or(0);
        let mut outbox = Outbox {
            config,
            last_n,
            in_flight: None,
            attempts: 0,
            last_error: None,
            retry_at: None,
        };
        let rows = sql.run(
            "SELECT key, value FROM meta WHERE key IN ('webhook_attempts', 'webhook_retry_at', 'webhook_error')",
            &[],
        )?;
        for row in rows {
            match (row.first(), row.get(1)) {
                (Some(Cell::Text(k)), v) if k == "webhook_attempts" => {
                    outbox.attempts = u32::try_from(int(v)).unwrap_or(0);
                }
                (Some(Cell::Text(k)), v) if k == "webhook_retry_at" => {
                    outbox.retry_at = Some(int(v));
                }
                (Some(Cell::Text(k)), Some(Cell::Text(e))) if k == "webhook_error" => {
                    outbox.last_error = Some(e.clone());
                }
                _ => {}
            }
        }
        if outbox.attempts == 0 {
            outbox.retry_at = None;
        }
        Ok(outbox)
    }

    /// When delivery should next be attempted after a (re)start: at once, unless a backoff
    /// stored before the restart is still running.
    pub fn resume_at(&self, now: i64) -> i64 {
        match self.retry_at {
            Some(at) if self.attempts > 0 => at.max(now),
            _ => now,
        }
    }

    /// Records one event. `event` is the event's JSON object without its `wid`, which is
    /// put first. Runs inside the caller's synchronous step, so it commits with it.
    ///
    /// # Errors
    ///
    /// `Internal` when storage fails.
    pub fn record(&mut self, sql: &dyn Sql, epoch: &str, now: i64, event: &str) -> Result<()> {
        let n = self.last_n + 1;
        let rest = event.strip_prefix('{').unwrap_or(event);
        let sep = if rest.starts_with('}') { "" } else { "," };
        let body = format!("{{\"wid\":\"{epoch}:{n}\"{sep}{rest}");
        sql.write(
            "INSERT INTO webhooks (n, queued, body) VALUES (?, ?, ?)",
            &[Arg::Int(n as i64), Arg::Int(now), Arg::Text(&body)],
        )?;
        self.last_n = n;
        Ok(())
    }

    /// Marks events queued before `now - WEBHOOK_MAX_AGE_SECS` dead; returns how many.
    ///
    /// # Errors
    ///
    /// `Internal` when storage fails.
    pub fn expire(&self, sql: &dyn Sql, now: i64) -> Result<u64> {
        let max_age_ms = i64::try_from(self.config.max_age_secs)
            .unwrap_or(i64::MAX)
            .saturating_mul(1000);
        let before = self.counts(sql)?.1;
        sql.write(
            "UPDATE webhooks SET dead = 1 WHERE dead = 0 AND queued < ?",
            &[Arg::Int(now.saturating_sub(max_age_ms))],
        )?;
        Ok(self.counts(sql)?.1 - before)
    }

    /// The next batch to deliver (pending events in order, at most `WEBHOOK_MAX_BATCH`),
    /// signed; `None` when nothing is pending. Marks it in flight.
    ///
    /// # Errors
    ///
    /// `Internal` when storage or signing fails.
    pub fn next_batch(
        &mut self,
        sql: &dyn Sql,
        head: (&str, Option<&str>, &str),
        now: i64,
    ) -> Result<Option<Delivery>> {
        let (room, tenant, epoch) = head;
        let rows = sql.run(
            "SELECT n, body FROM webhooks WHERE dead = 0 ORDER BY n LIMIT ?",
            &[Arg::Int(i64::from(self.config.max_batch))],
        )?;
        let mut upto = 0u64;
        let mut events = Vec::with_capacity(rows.len());
        for row in rows {
            let mut cells = row.into_iter();
            upto = u64::try_from(int(cells.next().as_ref())).unwrap_or(0);
            match cells.next() {
                Some(Cell::Text(body)) => events.push(body),
                other => return Err(Error::Internal(format!("webhook {upto}: body {other:?}"))),
            }
        }
        if events.is_empty() {
            return Ok(None);
        }
        let head = serde_json::to_string(&Head {
            room,
            tenant,
            epoch,
        })
        .map_err(|e| Error::Internal(format!("webhook head: {e}")))?;
        let head = head.strip_suffix('}').unwrap_or(&head);
        let body = format!("{head},\"events\":[{}]}}", events.join(","));
        let t = now / 1000;
        let mac = crate::auth::sign(
            self.config.secret.as_bytes(),
            t,
            "POST",
            &self.config.path_and_query,
            body.as_bytes(),
        )?;
        self.in_flight = Some(upto);
        Ok(Some(Delivery {
            url: self.config.url.clone(),
            body,
            signature: format!("t={t},v1={mac}"),
            upto,
            count: events.len(),
        }))
    }

    /// The receiver took the batch up to `upto`: it is deleted.
    ///
    /// # Errors
    ///
    /// `Internal` when storage fails.
    pub fn delivered(&mut self, sql: &dyn Sql, upto: u64) -> Result<()> {
        self.in_flight = None;
        self.reset(sql)?;
        sql.write(
            "DELETE FROM webhooks WHERE n <= ? AND dead = 0",
            &[Arg::Int(upto as i64)],
        )?;
        Ok(())
    }

    /// The attempt at `now` failed with `why`; returns the delay before the next one, and
    /// stores the retry state so that a wake-up continues the backoff.
    ///
    /// # Errors
    ///
    /// `Internal` when storing the state fails (the delay is still right for this run).
    pub fn failed(
        &mut self,
        sql: &dyn Sql,
        now: i64,
        why: String,
        jitter: f64,
    ) -> (i64, Result<()>) {
        self.in_flight = None;
        self.attempts = self.attempts.saturating_add(1);
        let delay = backoff_ms(self.attempts, jitter);
        self.retry_at = Some(now + delay);
        let stored = sql.write(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('webhook_attempts', ?), ('webhook_retry_at', ?), ('webhook_error', ?)",
            &[
                Arg::Int(i64::from(self.attempts)),
                Arg::Int(now + delay),
                Arg::Text(&why),
            ],
        );
        self.last_error = Some(why);
        (delay, stored.map(|_| ()))
    }

    /// Forgets the retry state (a success, a requeue, nothing left to send). Writes only
    /// when there was one, so a healthy outbox costs no extra rows.
    ///
    /// # Errors
    ///
    /// `Internal` when storage fails.
    pub fn reset(&mut self, sql: &dyn Sql) -> Result<()> {
        let had = self.attempts > 0 || self.retry_at.is_some() || self.last_error.is_some();
        self.attempts = 0;
        self.retry_at = None;
        self.last_error = None;
        if had {
            sql.write(
                &format!(
                    "DELETE FROM meta WHERE key IN ('{}', '{}', '{}')",
                    RETRY_KEYS[0], RETRY_KEYS[1], RETRY_KEYS[2]
                ),
                &[],
            )?;
        }
        Ok(())
    }

    /// Dead events become pending again, as if just queued; returns how many.
    ///
    /// # Errors
    ///
    /// `Internal` when storage fails.
    pub fn requeue(&mut self, sql: &dyn Sql, now: i64) -> Result<u64> {
        let dead = self.counts(sql)?.1;
        sql.write(
            "UPDATE webhooks SET dead = 0, queued = ? WHERE dead = 1",
            &[Arg::Int(now)],
        )?;
        self.reset(sql)?;
        Ok(dead)
    }

    /// `(pending, dead)`.
    ///
    /// # Errors
    ///
    /// `Internal` when storage fails.
    pub fn counts(&self, sql: &dyn Sql) -> Result<(u64, u64)> {
        let rows = sql.run(
            "SELECT COALESCE(SUM(dead = 0), 0), COALESCE(SUM(dead), 0) FROM webhooks",
            &[],
        )?;
        let row = rows.first();
        let get = |i: usize| u64::try_from(int(row.and_then(|r| r.get(i)))).unwrap_or(0);
        Ok((get(0), get(1)))
    }
}

/// Whether a response status means the batch was taken.
pub fn accepted(outcome: &Outcome) -> bool {
    matches!(outcome, Outcome::Status(s) if (200..300).contains(s))
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;
    use crate::config::HookKinds;
    use crate::room::log::{self, tests::lite};

    fn config(max_batch: u32) -> Webhooks {
        Webhooks {
            url: "http://127.0.0.1:9/hook".into(),
            path_and_query: "/hook".into(),
            secret: "s3cret".into(),
            kinds: HookKinds {
                message: true,
                presence: true,
                room: true,
            },
            message_events: vec!["*".into()],
            max_batch,
            max_age_secs: 60,
        }
    }

    #[test]
    fn backoff_doubles_from_one_second_to_five_minutes_with_jitter() {
        let steps: Vec<i64> = (1..=12).map(|a| backoff_ms(a, 1.0)).collect();
        assert_eq!(
            steps,
            vec![
                1000, 2000, 4000, 8000, 16_000, 32_000, 64_000, 128_000, 256_000, 300_000, 300_000,
                300_000
            ]
        );
        assert_eq!(backoff_ms(1, 0.0), 500, "at least half the step");
        assert_eq!(backoff_ms(3, 0.5), 3000);
        assert_eq!(backoff_ms(u32::MAX, 0.0), 150_000);
    }

    #[test]
    fn events_are_numbered_gaplessly_batched_in_order_and_deleted_only_when_taken() {
        let db = lite();
        log::open(&db, &|| "e".into()).unwrap();
        let mut o = Outbox::open(&db, config(2)).unwrap();
        for i in 0..5 {
            o.record(
                &db,
                "e_1",
                1000,
                &format!(r#"{{"kind":"message","seq":{i}}}"#),
            )
            .unwrap();
        }
        let b = o
            .next_batch(&db, ("lobby", None, "e_1"), 5000)
            .unwrap()
            .unwrap();
        assert_eq!(b.count, 2);
        assert_eq!(b.upto, 2);
        assert_eq!(
            b.body,
            r#"{"room":"lobby","tenant":null,"epoch":"e_1","events":[{"wid":"e_1:1","kind":"message","seq":0},{"wid":"e_1:2","kind":"message","seq":1}]}"#
        );
        // Signed exactly like inbound server-API requests, so `verify_signature` accepts it.
        let verified = crate::auth::verify_signature(
            b"s3cret",
            &b.signature,
            "POST",
            "/hook",
            b.body.as_bytes(),
            5,
        );
        assert_eq!(verified, Ok(()));
        // A failure keeps the batch; the retry sends the same events.
        let (delay, stored) = o.failed(&db, 5500, "HTTP 500".into(), 0.0);
        assert_eq!((delay, stored), (500, Ok(())));
        let again = o
            .next_batch(&db, ("lobby", None, "e_1"), 6000)
            .unwrap()
            .unwrap();
        assert_eq!(again.upto, 2);
        o.delivered(&db, again.upto).unwrap();
        assert_eq!(o.attempts, 0);
        let next = o
            .next_batch(&db, ("lobby", None, "e_1"), 7000)
            .unwrap()
            .unwrap();
        assert!(next.body.contains(r#""wid":"e_1:3""#) && next.body.contains(r#""wid":"e_1:4""#));
        o.delivered(&db, next.upto).unwrap();
        assert_eq!(o.counts(&db).unwrap(), (1, 0));
        // Numbers survive a reopen (a wake-up or restart).
        let mut reopened = Outbox::open(&db, config(2)).unwrap();
        assert_eq!(reopened.last_n, 5);
        reopened
            .record(&db, "e_1", 8000, r#"{"kind":"room","op":"vacated"}"#)
            .unwrap();
        let last = reopened
            .next_batch(&db, ("lobby", Some("acme"), "e_1"), 9000)
            .unwrap()
            .unwrap();
        assert!(
            last.body.starts_with(r#"{"room":"lobby","tenant":"acme""#),
            "{}",
            last.body
        );
        assert!(last.body.contains(r#""wid":"e_1:6""#));
    }

    #[test]
    fn old_events_become_dead_and_can_be_queued_again() {
        let db = lite();
        log::open(&db, &|| "e".into()).unwrap();
        let mut o = Outbox::open(&db, config(100)).unwrap();
        o.record(&db, "e", 0, r#"{"kind":"message","seq":1}"#)
            .unwrap();
        o.record(&db, "e", 50_000, r#"{"kind":"message","seq":2}"#)
            .unwrap();
        assert_eq!(o.expire(&db, 61_000).unwrap(), 1, "older than 60 s");
        assert_eq!(o.counts(&db).unwrap(), (1, 1));
        let b = o
            .next_batch(&db, ("r", None, "e"), 61_000)
            .unwrap()
            .unwrap();
        assert_eq!(b.count, 1, "dead events are not sent");
        o.delivered(&db, b.upto).unwrap();
        assert_eq!(
            o.counts(&db).unwrap(),
            (0, 1),
            "delivery never deletes a dead event"
        );
        assert_eq!(o.requeue(&db, 70_000).unwrap(), 1);
        assert_eq!(
            o.expire(&db, 70_001).unwrap(),
            0,
            "requeued events get a new age"
        );
        let b = o
            .next_batch(&db, ("r", None, "e"), 70_001)
            .unwrap()
            .unwrap();
        assert!(b.body.contains(r#""wid":"e:1""#));
    }

    #[test]
    fn the_message_log_is_pruned_without_touching_undelivered_events() {
        let db = lite();
        let mut head = log::open(&db, &|| "e".into()).unwrap();
        let mut o = Outbox::open(&db, config(1000)).unwrap();
        let r = log::Retention {
            history_limit: 1,
            dedup_window_ms: 1,
        };
        for i in 0..log::PRUNE_EVERY {
            let id = format!("m{i}");
            let entry = log::Entry {
                id: &id,
                event: "e",
                data: "0",
                from: None,
                ts: i as i64 * 10_000,
            };
            log::append(&db, &mut head, r, entry).unwrap();
            o.record(
                &db,
                "e",
                0,
                &format!(r#"{{"kind":"message","seq":{}}}"#, i + 1),
            )
            .unwrap();
        }
        assert_eq!(o.counts(&db).unwrap(), (log::PRUNE_EVERY, 0));
    }
}
