//! The room's one alarm. A Durable Object has a single alarm, so every reason the room has
//! to wake — closing sockets whose token expired, delivering or retrying webhooks — asks
//! this schedule for a time, and the schedule decides whether the stored alarm must move.
//!
//! Trade-off: an alarm wakes an evicted room, but only when something really has to
//! happen then; the alternative (checking on every event) would leave an idle room
//! holding sockets with dead tokens, or webhooks undelivered, indefinitely. Only the
//! earliest time is stored, and asking for a later time than the pending alarm costs no
//! storage write at all. What each reason wants is memory only: after a wake-up the room
//! asks again (from its sockets' expiries and its stored webhooks).

/// Why the room wants to wake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// A socket's token expires.
    Expiry,
    /// Webhooks are due (first delivery or a retry).
    Webhook,
    /// A sharded room's sequencer checks that every shard has what it stored
    /// (docs/sharding.md, "Restarts").
    Fanout,
}

const REASONS: [Reason; 3] = [Reason::Expiry, Reason::Webhook, Reason::Fanout];

fn slot(reason: Reason) -> usize {
    match reason {
        Reason::Expiry => 0,
        Reason::Webhook => 1,
        Reason::Fanout => 2,
    }
}

/// The alarm as the room knows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Schedule {
    /// When the stored alarm fires (ms), if one is set.
    stored: Option<i64>,
    /// When each reason wants to wake (ms).
    wants: [Option<i64>; 3],
}

impl Schedule {
    /// The schedule of a room whose stored alarm is `at` (read once per wake-up).
    pub fn new(at: Option<i64>) -> Self {
        Schedule {
            stored: at,
            wants: [None; 3],
        }
    }

    /// `reason` wants to wake by `at` (ms), replacing what it wanted before. Returns the
    /// time to store as the alarm when it must move (nothing stored, or stored later).
    pub fn want(&mut self, reason: Reason, at: i64) -> Option<i64> {
        self.wants[slot(reason)] = Some(at);
        if self.stored.is_some_and(|stored| stored <= at) {
            return None;
        }
        self.stored = Some(at);
        Some(at)
    }

    /// `reason` no longer needs to wake. The stored alarm stays: waking for nothing once
    /// is cheaper than a storage write to move it.
    pub fn cancel(&mut self, reason: Reason) {
        self.wants[slot(reason)] = None;
    }

    /// When `reason` wants to wake, if it does.
    pub fn wanted(&self, reason: Reason) -> Option<i64> {
        self.wants[slot(reason)]
    }

    /// The alarm fired at `now`: nothing is stored any more. Returns the reasons that are
    /// due (each forgotten; it asks again if it still needs to).
    pub fn fired(&mut self, now: i64) -> Vec<Reason> {
        self.stored = None;
        let mut due = Vec::new();
        for reason in REASONS {
            if self.wants[slot(reason)].is_some_and(|at| at <= now) {
                self.wants[slot(reason)] = None;
                due.push(reason);
            }
        }
        due
    }

    /// After the due reasons were handled: the time to store for the earliest reason
    /// still waiting, when the stored alarm does not already cover it.
    pub fn rearm(&mut self) -> Option<i64> {
        let next = self.wants.iter().flatten().min().copied()?;
        if self.stored.is_some_and(|stored| stored <= next) {
            return None;
        }
        self.stored = Some(next);
        Some(next)
    }

    /// Storing the alarm failed: forget it, so the next request tries again.
    pub fn failed(&mut self) {
        self.stored = None;
    }

    /// When the stored alarm fires, if one is set.
    pub fn pending(&self) -> Option<i64> {
        self.stored
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_earlier_time_moves_the_alarm() {
        let mut s = Schedule::new(None);
        assert_eq!(s.want(Reason::Expiry, 5000), Some(5000));
        assert_eq!(
            s.want(Reason::Webhook, 9000),
            None,
            "later: the pending alarm serves it"
        );
        assert_eq!(s.want(Reason::Webhook, 3000), Some(3000));
        assert_eq!(s.pending(), Some(3000));
    }

    #[test]
    fn the_earliest_reason_wakes_first_and_the_rest_rearm() {
        let mut s = Schedule::new(None);
        s.want(Reason::Expiry, 5000);
        s.want(Reason::Webhook, 2000);
        assert_eq!(s.fired(2000), vec![Reason::Webhook]);
        assert_eq!(s.rearm(), Some(5000), "expiry still waits");
        assert_eq!(s.fired(5000), vec![Reason::Expiry]);
        assert_eq!(s.rearm(), None);
        // Both due at once.
        s.want(Reason::Expiry, 7000);
        s.want(Reason::Webhook, 7000);
        assert_eq!(s.fired(8000), vec![Reason::Expiry, Reason::Webhook]);
    }

    #[test]
    fn a_cancelled_reason_does_not_rearm() {
        let mut s = Schedule::new(None);
        s.want(Reason::Webhook, 1000);
        s.want(Reason::Expiry, 9000);
        s.cancel(Reason::Webhook);
        // The stored alarm still fires at 1000 (no write to move it); nothing is due then.
        assert_eq!(s.fired(1000), vec![]);
        assert_eq!(s.rearm(), Some(9000));
        assert_eq!(s.wanted(Reason::Webhook), None);
    }

    #[test]
    fn a_failed_store_is_retried_by_the_next_request() {
        let mut s = Schedule::new(Some(1000));
        assert_eq!(s.want(Reason::Expiry, 2000), None);
        s.failed();
        assert_eq!(s.want(Reason::Expiry, 2000), Some(2000));
        s.failed();
        assert_eq!(
            s.rearm(),
            Some(2000),
            "rearming after a failure stores again"
        );
    }
}
