//! Per-connection abuse controls: the publish token bucket and strike counters.
//!
//! This state lives only in the room's memory. That is safe to lose on eviction: a room
//! is evicted only after ~10 s without events, by which time every bucket has refilled
//! (the slowest allowed refill, 1 token/s, restores a burst of ≤ 10 tokens; larger bursts
//! take longer, and then the client merely gets its full burst back early) and strike
//! counts describe a burst of misbehaviour that has ended.

use crate::config::Limits;

/// Invalid frames (bad JSON, unknown type, bad ids, binary) a connection may send before
/// it is closed with 4400. Generous enough for a buggy client to see and log the errors,
/// small enough that a hostile one cannot make the room parse garbage forever.
pub const MAX_BAD_FRAMES: u32 = 10;
/// Oversized messages a connection may send before it is closed with 1009.
pub const MAX_TOO_LARGE: u32 = 3;

/// A token bucket for publishes, refilled continuously.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    tokens: f64,
    last_ms: i64,
}

impl Bucket {
    /// A full bucket at `now_ms`.
    pub fn full(limits: &Limits, now_ms: i64) -> Self {
        Bucket {
            tokens: f64::from(limits.rate_limit_burst),
            last_ms: now_ms,
        }
    }

    /// Whether the bucket has refilled completely by `now_ms`.
    pub fn is_full(&self, limits: &Limits, now_ms: i64) -> bool {
        let elapsed = (now_ms - self.last_ms).max(0) as f64 / 1000.0;
        self.tokens + elapsed * f64::from(limits.rate_limit_per_sec)
            >= f64::from(limits.rate_limit_burst)
    }

    /// Takes one token, or says how long until one is available (in ms, at least 1).
    pub fn take(&mut self, limits: &Limits, now_ms: i64) -> Result<(), u64> {
        let rate = f64::from(limits.rate_limit_per_sec);
        let burst = f64::from(limits.rate_limit_burst);
        let elapsed = (now_ms - self.last_ms).max(0) as f64 / 1000.0;
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.last_ms = now_ms;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            let wait = ((1.0 - self.tokens) / rate * 1000.0).ceil() as u64;
            Err(wait.max(1))
        }
    }
}

/// What the room remembers about one connection between messages.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnState {
    /// Publish rate limit.
    pub bucket: Bucket,
    /// Publishes rejected by the rate limit since the last accepted one.
    pub rate_strikes: u32,
    /// Invalid frames so far.
    pub bad_frames: u32,
    /// Oversized messages so far.
    pub too_large: u32,
}

impl ConnState {
    /// A fresh connection.
    pub fn new(limits: &Limits, now_ms: i64) -> Self {
        ConnState {
            bucket: Bucket::full(limits, now_ms),
            rate_strikes: 0,
            bad_frames: 0,
            too_large: 0,
        }
    }
}

/// The verdict on a publish attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Go ahead.
    Yes,
    /// Rejected: retry after this many ms.
    Later(u64),
    /// Rejected, and the client kept going after a full burst of rejections: close 4008.
    Close,
}

impl ConnState {
    /// Charges one publish against the bucket. Sustained abuse — another full burst of
    /// publishes sent after being told to back off — ends the connection.
    pub fn admit(&mut self, limits: &Limits, now_ms: i64) -> Admit {
        match self.bucket.take(limits, now_ms) {
            Ok(()) => {
                self.rate_strikes = 0;
                Admit::Yes
            }
            Err(wait) => {
                self.rate_strikes += 1;
                if self.rate_strikes > limits.rate_limit_burst {
                    Admit::Close
                } else {
                    Admit::Later(wait)
                }
            }
        }
    }

    /// Counts an invalid frame; true when the connection should be closed (4400).
    pub fn bad_frame(&mut self) -> bool {
        self.bad_frames += 1;
        self.bad_frames >= MAX_BAD_FRAMES
    }

    /// Counts an oversized message; true when the connection should be closed (1009).
    pub fn too_large(&mut self) -> bool {
        self.too_large += 1;
        self.too_large >= MAX_TOO_LARGE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(rate: u32, burst: u32) -> Limits {
        Limits {
            rate_limit_per_sec: rate,
            rate_limit_burst: burst,
            ..Limits::default()
        }
    }

    #[test]
    fn bucket_allows_a_burst_then_the_rate() {
        let l = limits(10, 5);
        let mut b = Bucket::full(&l, 0);
        for _ in 0..5 {
            assert_eq!(b.take(&l, 0), Ok(()));
        }
        assert_eq!(b.take(&l, 0), Err(100));
        assert_eq!(b.take(&l, 50), Err(50));
        assert_eq!(b.take(&l, 100), Ok(()));
        // Refill never exceeds the burst.
        let mut b = Bucket::full(&l, 0);
        for _ in 0..5 {
            b.take(&l, 0).unwrap();
        }
        for _ in 0..5 {
            assert_eq!(b.take(&l, 60_000), Ok(()));
        }
        assert!(b.take(&l, 60_000).is_err());
    }

    #[test]
    fn clock_going_backwards_does_not_mint_tokens() {
        let l = limits(10, 1);
        let mut b = Bucket::full(&l, 1000);
        b.take(&l, 1000).unwrap();
        assert!(b.take(&l, 0).is_err());
    }

    #[test]
    fn sustained_abuse_closes() {
        let l = limits(1, 3);
        let mut c = ConnState::new(&l, 0);
        for _ in 0..3 {
            assert_eq!(c.admit(&l, 0), Admit::Yes);
        }
        for _ in 0..3 {
            assert!(matches!(c.admit(&l, 0), Admit::Later(_)));
        }
        assert_eq!(c.admit(&l, 0), Admit::Close);
        // An accepted publish in between resets the strikes.
        let mut c = ConnState::new(&l, 0);
        for _ in 0..3 {
            c.admit(&l, 0);
        }
        for _ in 0..3 {
            assert!(matches!(c.admit(&l, 0), Admit::Later(_)));
        }
        assert_eq!(c.admit(&l, 1000), Admit::Yes);
        assert!(matches!(c.admit(&l, 1000), Admit::Later(_)));
    }

    #[test]
    fn strikes() {
        let l = Limits::default();
        let mut c = ConnState::new(&l, 0);
        for _ in 1..MAX_BAD_FRAMES {
            assert!(!c.bad_frame());
        }
        assert!(c.bad_frame());
        for _ in 1..MAX_TOO_LARGE {
            assert!(!c.too_large());
        }
        assert!(c.too_large());
    }
}
