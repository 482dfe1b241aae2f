//! The room's one alarm. A Durable Object has a single alarm, so every reason the room has
//! to wake (today: closing sockets whose token expired) asks this schedule for a time, and
//! the schedule decides whether the stored alarm must move.
//!
//! Trade-off: an alarm wakes an evicted room, but only when something really has to
//! happen then; the alternative (checking on every event) would leave an idle room
//! holding sockets with dead tokens indefinitely. Only the earliest time is stored, and
//! asking for a later time than the pending alarm costs no storage write at all.

/// The alarm as the room knows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Schedule {
    /// When the stored alarm fires (ms), if one is set.
    at: Option<i64>,
}

impl Schedule {
    /// The schedule of a room whose stored alarm is `at` (read once per wake-up).
    pub fn new(at: Option<i64>) -> Self {
        Schedule { at }
    }

    /// Asks to be woken by `due` (ms). Returns the time to store as the alarm when it must
    /// move (nothing pending, or pending later than `due`).
    pub fn wake_by(&mut self, due: i64) -> Option<i64> {
        if self.at.is_some_and(|at| at <= due) {
            return None;
        }
        self.at = Some(due);
        Some(due)
    }

    /// The alarm fired: nothing is pending any more.
    pub fn fired(&mut self) {
        self.at = None;
    }

    /// Storing the alarm failed: forget it, so the next request tries again.
    pub fn failed(&mut self) {
        self.at = None;
    }

    /// When the pending alarm fires, if one is set.
    pub fn pending(&self) -> Option<i64> {
        self.at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_earlier_time_moves_the_alarm() {
        let mut s = Schedule::new(None);
        assert_eq!(s.wake_by(5000), Some(5000));
        assert_eq!(s.wake_by(9000), None, "later: the pending alarm serves it");
        assert_eq!(s.wake_by(5000), None);
        assert_eq!(s.wake_by(3000), Some(3000));
        assert_eq!(s.pending(), Some(3000));
        s.fired();
        assert_eq!(s.wake_by(9000), Some(9000));
    }

    #[test]
    fn a_failed_store_is_retried_by_the_next_request() {
        let mut s = Schedule::new(Some(1000));
        assert_eq!(s.wake_by(2000), None);
        s.failed();
        assert_eq!(s.wake_by(2000), Some(2000));
    }
}
