//! One record per connection: who it is (what survives hibernation, in its attachment),
//! its abuse controls, what it wants pushed, and how much it has not read yet.
//!
//! Plain Rust, no runtime types: the Durable Object stores [`Identity`] as the socket's
//! attachment and hands the core the socket handle `H` it applies effects to.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::limits::ConnState;
use crate::auth::LEEWAY_SECS;
use crate::config::Limits;

/// What a socket carries across hibernation: its attachment.
///
/// The attachment is the only per-socket state that survives eviction, so it holds
/// everything a message handler needs without asking anyone: ids and claims, never payloads
/// (workerd caps an attachment at 2 KiB, and `info` is capped at 1 KiB for that reason).
/// The serialized form is the one v1 wrote, so sockets accepted by older code keep working.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Identity {
    /// Connection id, `c_` + 16 hex digits.
    pub conn: String,
    /// The token's `sub`.
    pub user: String,
    /// Whether the token grants `write`.
    pub write: bool,
    /// Token expiry, unix seconds.
    pub exp: i64,
    /// The token's `info` as JSON object text.
    pub info: Option<String>,
    /// Push flag: whether the socket receives presence `join`/`leave` frames (it did not
    /// connect with `presence=off`). Left out of the attachment when true, the default,
    /// which is also what attachments written before the option existed mean.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub presence: bool,
    /// Whether the socket's user is shown in presence through it (`join`/`leave`,
    /// `welcome.presence`, room info). False only for a long-poll's short-lived relay
    /// socket, which would otherwise make its user join and leave on every poll. Stored
    /// like `presence`: only when false.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub listed: bool,
    /// Set once the room has said goodbye to this socket (closed it), so that a socket the
    /// runtime still lists while its close completes is not restored after a wake-up.
    #[serde(default)]
    pub gone: bool,
}

fn yes() -> bool {
    true
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_true(b: &bool) -> bool {
    *b
}

impl Identity {
    /// Whether the token behind this socket has expired at `now_secs`, allowing the clock
    /// leeway.
    pub fn expired(&self, now_secs: i64) -> bool {
        now_secs > self.exp + LEEWAY_SECS
    }

    /// The `info` as raw JSON, `{}` when the token had none.
    pub fn info_raw(&self) -> Box<RawValue> {
        info_raw(self.info.as_deref())
    }
}

/// `info` text as raw JSON, `{}` when absent or (defensively) not valid JSON.
pub fn info_raw(info: Option<&str>) -> Box<RawValue> {
    info.and_then(|s| RawValue::from_string(s.to_string()).ok())
        .unwrap_or_else(|| {
            RawValue::from_string("{}".into()).unwrap_or_else(|_| unreachable!("{{}} is JSON"))
        })
}

/// One open connection.
#[derive(Debug)]
pub struct Peer<H> {
    /// The runtime's handle for the socket (a `WebSocket` in the Durable Object).
    pub handle: H,
    /// Who it is; mirrored in the attachment.
    pub id: Identity,
    /// Outbox mark when it joined: it receives only frames queued after that.
    pub since: u64,
    /// Publish bucket and strike counters. Memory only, which is safe to lose: a room is
    /// evicted only after ~10 s without events, by when every bucket has refilled and a
    /// burst of misbehaviour has ended (see `limits`).
    pub conn: ConnState,
    /// What it has been sent and not read. Memory only: after a wake-up the runtime has
    /// flushed what it held for ~10 s, so "nothing pending" is the right starting point.
    pub flow: Flow,
}

/// Bytes between two read checkpoints: receipts are credited at this granularity, so
/// the estimate is never off by more than this (1/16 of the bound by default).
fn checkpoint_bytes(limits: &Limits) -> u64 {
    (limits.max_pending_bytes as u64 / 16).max(1)
}

/// Most checkpoints kept per socket. With one per 1/16 of the bound, 32 cover twice the
/// bound, beyond which the socket is closed anyway; older ones are merged away.
const MAX_CHECKPOINTS: usize = 32;

/// A socket that has never sent a `received` frame may hold this many times
/// `MAX_PENDING_BYTES` by the estimate before it is closed (see [`Flow`]).
pub const UNCONFIRMED_SLACK: u64 = 8;

/// How many times `MAX_PENDING_BYTES` per second a socket without receipts is assumed to
/// read. The estimate cannot tell a slow reader from a fast one, so it errs towards
/// keeping healthy clients: at the default bound, 2 MiB/s (16 Mbit/s) per socket, more
/// than any room of ordinary traffic sends, so only a socket that stalls while the room
/// pushes it megabytes is closed.
pub const UNCONFIRMED_DRAIN: f64 = 2.0;

/// How much of what the room sent a socket is still unread (docs/protocol.md §12).
///
/// workerd does not say how much it has buffered for a socket (no `bufferedAmount`,
/// cloudflare/workerd#988): a socket that stops reading makes the runtime hold everything
/// sent to it. So the room counts what it hands the runtime per socket and credits what
/// the client says it has read (`{"type":"received","messages":N}`, sent by the SDK). A
/// client that never sends one is estimated instead: it is assumed to drain
/// [`UNCONFIRMED_DRAIN`] times `MAX_PENDING_BYTES` per second, and may hold
/// [`UNCONFIRMED_SLACK`] times the bound.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Flow {
    /// WebSocket messages and bytes handed to the runtime on this connection.
    sent_msgs: u64,
    sent_bytes: u64,
    /// Bytes the client has confirmed reading; `Some` once it sent a receipt.
    confirmed: Option<u64>,
    /// `(messages, bytes)` totals after past sends, oldest first, to map a receipt's
    /// message count to bytes.
    checkpoints: VecDeque<(u64, u64)>,
    /// The leaky-bucket estimate for clients without receipts, and when it was taken.
    estimate: f64,
    estimate_at: i64,
}

impl Flow {
    /// Records `msgs` messages of `bytes` bytes handed to the runtime at `now_ms`.
    pub fn sent(&mut self, limits: &Limits, now_ms: i64, msgs: u64, bytes: u64) {
        self.estimate = self.drained(limits, now_ms) + bytes as f64;
        self.estimate_at = now_ms;
        self.sent_msgs += msgs;
        self.sent_bytes += bytes;
        let total = (self.sent_msgs, self.sent_bytes);
        // Checkpoints stay at least one step apart, and the newest is always the current
        // total, so a receipt for everything credits everything.
        let n = self.checkpoints.len();
        if n >= 2 && self.checkpoints[n - 2].1 + checkpoint_bytes(limits) > total.1 {
            self.checkpoints[n - 1] = total;
        } else {
            self.checkpoints.push_back(total);
        }
        if self.checkpoints.len() > MAX_CHECKPOINTS {
            self.checkpoints.pop_front();
        }
    }

    /// Credits a receipt: the client has read `msgs` messages on this connection.
    /// Returns whether the receipt was plausible (not more than was sent).
    pub fn received(&mut self, msgs: u64) -> bool {
        let plausible = msgs <= self.sent_msgs;
        let msgs = msgs.min(self.sent_msgs);
        let mut credited = self.confirmed.unwrap_or(0);
        while let Some(&(m, b)) = self.checkpoints.front() {
            if m > msgs {
                break;
            }
            credited = credited.max(b);
            self.checkpoints.pop_front();
        }
        self.confirmed = Some(credited);
        plausible
    }

    /// The estimate for a client without receipts, drained to `now_ms`.
    fn drained(&self, limits: &Limits, now_ms: i64) -> f64 {
        let elapsed = (now_ms - self.estimate_at).max(0) as f64 / 1000.0;
        let rate = UNCONFIRMED_DRAIN * limits.max_pending_bytes as f64;
        (self.estimate - elapsed * rate).max(0.0)
    }

    /// Unread bytes as far as the room can tell.
    pub fn pending(&self, limits: &Limits, now_ms: i64) -> u64 {
        match self.confirmed {
            Some(read) => self.sent_bytes.saturating_sub(read),
            None => self.drained(limits, now_ms) as u64,
        }
    }

    /// How many unread bytes this socket may hold before it counts as slow.
    pub fn bound(&self, limits: &Limits) -> u64 {
        let max = limits.max_pending_bytes as u64;
        if self.confirmed.is_some() {
            max
        } else {
            max.saturating_mul(UNCONFIRMED_SLACK)
        }
    }

    /// Whether the socket already has more unread than its bound beyond `baseline` — the
    /// least any *other* socket that sends receipts has unread (0 when there is none). A
    /// room that is itself behind (receipts wait in its queue behind the publishes it is
    /// catching up on) sees every reader's unread grow together; measured against the
    /// best of its peers, a reader is closed only when it falls behind them, not when the
    /// room falls behind.
    pub fn over(&self, limits: &Limits, now_ms: i64, baseline: u64) -> bool {
        let baseline = if self.confirmed.is_some() {
            baseline
        } else {
            0
        };
        self.pending(limits, now_ms) > self.bound(limits).saturating_add(baseline)
    }

    /// Unread bytes as confirmed by receipts, for clients that send them.
    pub fn confirmed_pending(&self) -> Option<u64> {
        self.confirmed
            .map(|read| self.sent_bytes.saturating_sub(read))
    }

    /// Whether sending `bytes` more now keeps the socket within its bound.
    pub fn fits(&self, limits: &Limits, now_ms: i64, bytes: u64) -> bool {
        self.pending(limits, now_ms).saturating_add(bytes) <= self.bound(limits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max: usize) -> Limits {
        Limits {
            max_pending_bytes: max,
            ..Limits::default()
        }
    }

    #[test]
    fn expiry_allows_leeway() {
        let s = Identity {
            conn: "c_1".into(),
            user: "u".into(),
            write: true,
            exp: 1000,
            info: None,
            presence: true,
            listed: true,
            gone: false,
        };
        assert!(!s.expired(1000 + LEEWAY_SECS));
        assert!(s.expired(1001 + LEEWAY_SECS));
        assert_eq!(s.info_raw().get(), "{}");
    }

    #[test]
    fn presence_defaults_on_and_only_off_is_stored() {
        let old = r#"{"conn":"c_1","user":"u","write":true,"exp":1,"info":null}"#;
        let s: Identity = serde_json::from_str(old).unwrap_or_else(|e| panic!("{e}"));
        assert!(s.presence && !s.gone);
        let on = serde_json::to_string(&s).unwrap_or_default();
        assert_eq!(
            on,
            r#"{"conn":"c_1","user":"u","write":true,"exp":1,"info":null,"gone":false}"#
        );
        let off = Identity {
            presence: false,
            ..s
        };
        let text = serde_json::to_string(&off).unwrap_or_default();
        assert!(text.contains(r#""presence":false"#), "{text}");
        assert_eq!(serde_json::from_str::<Identity>(&text).ok(), Some(off));
    }

    #[test]
    fn without_receipts_the_estimate_drains_twice_the_bound_per_second() {
        let l = limits(1000);
        let mut f = Flow::default();
        f.sent(&l, 0, 1, 6000);
        assert_eq!(f.pending(&l, 0), 6000);
        assert_eq!(f.pending(&l, 1000), 4000);
        assert_eq!(f.pending(&l, 5000), 0);
        assert_eq!(f.bound(&l), 8000);
        assert!(f.fits(&l, 0, 2000));
        assert!(!f.fits(&l, 0, 2001));
    }

    #[test]
    fn receipts_credit_exactly_what_was_read() {
        let l = limits(1600); // checkpoints every 100 bytes
        let mut f = Flow::default();
        for i in 0..10 {
            f.sent(&l, i, 1, 100);
        }
        assert!(f.received(4));
        assert_eq!(
            f.bound(&l),
            1600,
            "a client that sends receipts gets the exact bound"
        );
        assert_eq!(f.pending(&l, 10), 600);
        // Time does not drain a client that reports its reads.
        assert_eq!(f.pending(&l, 1_000_000), 600);
        assert!(f.received(10));
        assert_eq!(f.pending(&l, 10), 0);
        // A receipt can never credit more than was sent, nor go backwards.
        assert!(!f.received(99));
        assert!(f.received(2));
        assert_eq!(f.pending(&l, 10), 0);
        f.sent(&l, 11, 1, 50);
        assert_eq!(f.pending(&l, 11), 50);
    }

    #[test]
    fn small_sends_share_a_checkpoint_and_receipts_stay_conservative() {
        let l = limits(1600); // checkpoints every 100 bytes
        let mut f = Flow::default();
        for i in 0..100 {
            f.sent(&l, i, 1, 10);
        }
        assert!(f.checkpoints.len() <= 12, "{:?}", f.checkpoints);
        // 55 messages read: credited to the newest checkpoint at or before 55 messages,
        // which never claims more than was read.
        f.received(55);
        let pending = f.pending(&l, 100);
        assert!((450..=550).contains(&pending), "{pending}");
        f.received(100);
        assert_eq!(f.pending(&l, 100), 0);
    }
}
