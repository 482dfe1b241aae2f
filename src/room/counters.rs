//! What an operator sees of a room in `GET /v1/rooms/{room}`: counters since the room's
//! object last started (memory only — an evicted room starts again from zero, which the
//! `since_ms` field says).

use std::collections::BTreeMap;

use serde::Serialize;

/// Counters since the object started.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Counters {
    /// When the object started counting (ms since the unix epoch).
    pub since_ms: i64,
    /// Durable messages accepted (new ids).
    pub messages: u64,
    /// Publishes answered as duplicates.
    pub duplicates: u64,
    /// Ephemeral messages fanned out.
    pub ephemeral: u64,
    /// Frames handed to sockets (one frame to one socket is one delivery).
    pub deliveries: u64,
    /// WebSocket messages handed to the runtime (coalesced frames travel together).
    pub sends: u64,
    /// Sockets accepted.
    pub connects: u64,
    /// Most sockets open at once.
    pub peak_connections: usize,
    /// Refused frames and connects, by error code.
    pub rejections: BTreeMap<&'static str, u64>,
    /// Sockets the room closed, by close code.
    pub kicks: BTreeMap<u16, u64>,
}

impl Counters {
    /// Counts a refusal.
    pub fn rejected(&mut self, code: &'static str) {
        *self.rejections.entry(code).or_default() += 1;
    }

    /// Counts a room-initiated close.
    pub fn kicked(&mut self, code: u16) {
        *self.kicks.entry(code).or_default() += 1;
    }
}
