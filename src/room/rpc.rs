//! The internal requests the Worker sends to a room, and the room's answers.
//!
//! The Worker builds every request to a room from scratch (it never forwards a client's
//! headers), so the identity in [`ConnectRequest`] is exactly what the Worker verified:
//! a client cannot forge it by sending a header of the same name.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Header carrying the JSON [`ConnectRequest`] on the internal upgrade request.
pub const SESSION_HEADER: &str = "X-Roomcast-Session";
/// Internal URL paths of the room.
pub mod path {
    /// WebSocket upgrade.
    pub const CONNECT: &str = "/connect";
    /// Server publish.
    pub const PUBLISH: &str = "/publish";
    /// Room info.
    pub const INFO: &str = "/info";
    /// Message history.
    pub const HISTORY: &str = "/history";
    /// Server disconnect of a user's sockets or one connection
    /// ([`crate::room::commands::disconnect`]).
    pub const DISCONNECT: &str = "/disconnect";
    /// Webhook status.
    pub const WEBHOOKS: &str = "/webhooks";
    /// Queue dead webhooks again.
    pub const WEBHOOKS_RETRY: &str = "/webhooks/retry";
    /// Sharded rooms, shard → sequencer: a batch of what the shard's sockets did.
    pub const SHARD_UP: &str = "/shard/up";
    /// Sharded rooms, sequencer → shard: a batch of the room's traffic.
    pub const SHARD_DELIVER: &str = "/shard/deliver";
    /// Sharded rooms, shard → sequencer: stored messages to fill a gap.
    pub const SHARD_FILL: &str = "/shard/fill";
}

/// A verified socket, as the Worker hands it to the room.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnectRequest {
    /// Room name (without tenant).
    pub room: String,
    /// The token's `sub`.
    pub user: String,
    /// Whether the token grants `write` on this room.
    pub write: bool,
    /// The token's `exp`, unix seconds.
    pub exp: i64,
    /// The token's `info` (JSON object text).
    pub info: Option<String>,
    /// Whether to answer `Sec-WebSocket-Protocol: roomcast.v1`.
    pub subprotocol: bool,
    /// Resume: last seq the client saw.
    pub since: Option<u64>,
    /// Resume: the epoch that seq belongs to.
    pub epoch: Option<String>,
    /// Whether the socket receives presence `join`/`leave` frames (`presence=off` says no).
    pub presence: bool,
    /// What the socket carries: a client's own WebSocket, or the Worker's relay for an SSE
    /// stream or a long-poll (docs/protocol.md §13). Absent means a WebSocket, which is
    /// what the Worker sent before relays existed.
    #[serde(default)]
    pub transport: Transport,
}

/// Who is at the other end of a room socket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// The client's own WebSocket.
    #[default]
    WebSocket,
    /// The Worker relaying the socket's frames into a client's SSE stream. To the room it
    /// is an ordinary socket (presence, limits, expiry, receipts): the relay sends the
    /// receipts as it hands frames to the client's stream.
    Sse,
    /// The Worker holding a long-poll: it reads the welcome, the replay and at most the
    /// first live durable message, then closes. Not counted in presence (a poller would
    /// otherwise join and leave on every poll), but counted against the per-user cap.
    Poll,
}

/// A publish from the server API, or from a client over HTTP (`client` is set).
#[derive(Debug, Serialize, Deserialize)]
pub struct PublishRequest {
    /// Room name (without tenant).
    pub room: String,
    /// Event id (already validated); required unless `ephemeral`.
    pub id: Option<String>,
    /// Event name (already validated).
    pub event: String,
    /// Payload.
    pub data: Box<RawValue>,
    /// A connection that should not receive the message.
    pub exclude_conn: Option<String>,
    /// Fan out only: not stored, sequenced or deduplicated (contract §B).
    #[serde(default)]
    pub ephemeral: bool,
    /// Conflation key of an ephemeral message.
    #[serde(default)]
    pub key: Option<String>,
    /// Set for `POST /v1/rooms/{room}/publish`: the user whose token (with `write`) the
    /// Worker verified. The room rate-limits it per user and names it in `from`.
    #[serde(default)]
    pub client: Option<ClientPublish>,
    /// Set by a sharded room's shard forwarding a client HTTP publish to the sequencer:
    /// the publisher as the shard (which holds the user's sockets) resolved it; the
    /// connection to skip is then `exclude_conn`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<crate::protocol::From>,
}

/// The publisher of a client HTTP publish (docs/protocol.md §13).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClientPublish {
    /// The token's `sub`.
    pub user: String,
    /// The client's own open connection in this room (its SSE stream's `welcome.conn`),
    /// if it named one. When it is open and the same user's, the message is from it and
    /// skips it unless `echo`; otherwise the message is from `h_<user>`.
    #[serde(default)]
    pub conn: Option<String>,
    /// Whether `conn` also receives the message.
    #[serde(default)]
    pub echo: bool,
}

/// The room's answer to an ephemeral publish; also the HTTP API's answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct EphemeralResult {
    /// Room name.
    pub room: String,
    /// Always true.
    pub ephemeral: bool,
    /// Sockets the message was queued for.
    pub delivered: usize,
}

/// The room's answer to a publish; also the HTTP API's answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct PublishResult {
    /// Room name.
    pub room: String,
    /// The room log's epoch.
    pub epoch: String,
    /// Assigned (or original) seq.
    pub seq: u64,
    /// Whether the id had been seen before.
    pub duplicate: bool,
    /// Sockets the message was sent to (0 for a duplicate).
    pub delivered: usize,
}

/// One user in `GET /v1/rooms/{room}`.
#[derive(Debug, Serialize, Deserialize)]
pub struct UserEntry {
    /// The user's `sub`.
    pub user: String,
    /// Open sockets of this user in the room.
    pub connections: usize,
    /// The user's `info`.
    pub info: Box<RawValue>,
}

/// The room's answer to an info request.
#[derive(Debug, Serialize)]
pub struct RoomInfo {
    /// Room name.
    pub room: String,
    /// The room log's epoch.
    pub epoch: String,
    /// Last assigned seq.
    pub last_seq: u64,
    /// Open sockets.
    pub connections: usize,
    /// Distinct users.
    pub users: Vec<UserEntry>,
    /// The room's SQLite traffic since the object started.
    pub storage: StorageStats,
    /// What happened in the room since the object started.
    pub counters: super::counters::Counters,
    /// The webhook outbox, when webhooks are on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhooks: Option<WebhookBacklog>,
}

/// Webhook events waiting, in `GET /v1/rooms/{room}`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct WebhookBacklog {
    /// Not delivered yet.
    pub pending: u64,
    /// Dead (older than `WEBHOOK_MAX_AGE_SECS`).
    pub dead: u64,
}

/// Rows the room's SQLite statements read and wrote (the runtime's `rowsRead` and
/// `rowsWritten`, summed over every statement since the object last started), so an
/// operator sees what a room costs and a test sees that ephemeral traffic costs nothing.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StorageStats {
    /// Rows read.
    pub rows_read: u64,
    /// Rows written.
    pub rows_written: u64,
}

/// Default page size of `GET /v1/rooms/{room}/messages`.
pub const DEFAULT_HISTORY_PAGE: u32 = 100;
/// Largest page size of `GET /v1/rooms/{room}/messages` (contract §7).
pub const MAX_HISTORY_PAGE: u32 = 1000;

/// The room's answer to a history request; also the HTTP API's answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct History {
    /// The room log's epoch.
    pub epoch: String,
    /// Last assigned seq.
    pub last_seq: u64,
    /// Stored messages with `seq > since`, in order, as `message` frames.
    pub messages: Vec<Box<RawValue>>,
}
