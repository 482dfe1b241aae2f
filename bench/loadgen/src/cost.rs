//! Cost counts per scenario (docs/performance.md "Cost").

use std::cell::RefCell;

use serde_json::{json, Value};

use super::{room_info, storage_rows, Rig};

/// What a scenario would be billed for on Cloudflare (docs/performance.md "Cost"), counted
/// on the client side so every peer is counted alike: upgrades and HTTP requests reach a
/// Durable Object as requests, incoming WebSocket messages are billed at 20:1; storage
/// rows come from the rooms' own `GET /v1/rooms/{room}` at the end of the scenario.
#[derive(Default)]
pub(crate) struct Cost {
    pub upgrades: u64,
    pub http_requests: u64,
    pub ws_in: u64,
    /// Messages the room accepted (acks without `duplicate`, HTTP publishes answered 200).
    pub messages: u64,
    /// `message` frames received by all sockets.
    pub deliveries: u64,
    pub rooms: std::collections::BTreeSet<String>,
    /// Rows a scenario read from a room before its object restarted (storm).
    pub rows_extra: (u64, u64),
    /// Seconds during which the scenario's rooms were idle long enough to be evicted.
    pub idle_secs: f64,
}

thread_local! {
    static COST: RefCell<Cost> = RefCell::new(Cost::default());
}

pub(crate) fn cost<R>(f: impl FnOnce(&mut Cost) -> R) -> R {
    COST.with(|c| f(&mut c.borrow_mut()))
}

/// The scenario's cost counts, with storage rows summed over its rooms.
pub(crate) async fn cost_json(rig: &Rig, wall_secs: f64) -> Value {
    let rooms: Vec<String> = cost(|c| c.rooms.iter().cloned().collect());
    let (mut read, mut written) = cost(|c| c.rows_extra);
    let mut reporting = 0usize;
    for room in &rooms {
        if let Some((r, w)) = storage_rows(&room_info(rig, room).await) {
            read += r;
            written += w;
            reporting += 1;
        }
    }
    cost(|c| {
        let awake = (wall_secs - c.idle_secs).max(0.0) * rooms.len() as f64;
        json!({
            "upgrades": c.upgrades,
            "http_requests": c.http_requests,
            "ws_messages_in": c.ws_in,
            "do_requests": c.upgrades as f64 + c.http_requests as f64 + c.ws_in as f64 / 20.0,
            "messages": c.messages,
            "deliveries": c.deliveries,
            "rooms": rooms.len(),
            "rooms_reporting_storage": reporting,
            "rows_read": if reporting > 0 { json!(read) } else { Value::Null },
            "rows_written": if reporting > 0 { json!(written) } else { Value::Null },
            "awake_object_secs": awake,
        })
    })
}
