//! The wire format (contract §5): frames as types, parsed once at the edge.
//!
//! Incoming frames are parsed into [`ClientFrame`]; outgoing ones are built from
//! [`ServerFrame`] and serialized once per fan-out. `data` travels as raw JSON text
//! ([`RawValue`]) so the room never re-encodes a payload it only forwards.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::error::{Error, Result};

/// Longest room name (contract §3).
pub const MAX_ROOM_LEN: usize = 128;
/// Longest tenant name (contract §3).
pub const MAX_TENANT_LEN: usize = 64;
/// Longest event id (contract §5).
pub const MAX_ID_LEN: usize = 128;
/// Longest event name (contract §5).
pub const MAX_EVENT_LEN: usize = 64;
/// Most frames in one array message. A bound keeps one message from monopolising the room
/// (each publish is a storage write); 100 covers any sane client-side coalescing.
pub const MAX_BATCH: usize = 100;

fn is_name_char(c: u8, extra: &[u8]) -> bool {
    c.is_ascii_alphanumeric() || extra.contains(&c)
}

fn check_name(value: &str, max: usize, extra: &[u8]) -> bool {
    (1..=max).contains(&value.len()) && value.bytes().all(|c| is_name_char(c, extra))
}

/// Whether `room` is a valid room name: `[A-Za-z0-9_.:-]{1,128}`, or a personal room
/// `<name>@<user>` (docs/protocol.md §14): one `@` between two non-empty runs of those
/// characters, 128 bytes in all. `@` is a legal path character, so neither form needs
/// percent-encoding.
pub fn valid_room(room: &str) -> bool {
    match room.split_once(PERSONAL_MARK) {
        None => check_name(room, MAX_ROOM_LEN, b"_.:-"),
        Some((name, user)) => {
            room.len() <= MAX_ROOM_LEN
                && check_name(name, MAX_ROOM_LEN, b"_.:-")
                && check_name(user, MAX_ROOM_LEN, b"_.:-")
        }
    }
}

/// What separates a personal room's name from its owner: `inbox@alice`.
pub const PERSONAL_MARK: char = '@';

/// The owner of a personal room — the user after its first `@` — or `None` for a shared
/// room. Any `@` makes a name personal, so that no pattern can open a malformed one.
pub fn personal_owner(room: &str) -> Option<&str> {
    room.split_once(PERSONAL_MARK).map(|(_, user)| user)
}

/// Whether `tenant` is a valid tenant: `[A-Za-z0-9_.-]{1,64}` (no `:` and no `/`, so the
/// Durable Object key `tenant/room` can never be ambiguous).
pub fn valid_tenant(tenant: &str) -> bool {
    check_name(tenant, MAX_TENANT_LEN, b"_.-")
}

/// Whether `id` is a valid event id: `[A-Za-z0-9_.:-]{1,128}`.
pub fn valid_id(id: &str) -> bool {
    check_name(id, MAX_ID_LEN, b"_.:-")
}

/// Validates a room name from a path or body.
///
/// # Errors
///
/// `BadRoom` with the offending name (truncated) and the allowed format.
pub fn check_room(room: &str) -> Result<()> {
    if valid_room(room) {
        Ok(())
    } else {
        let shown: String = room.chars().take(40).collect();
        Err(Error::BadRoom(format!(
            "invalid room name {shown:?}: use 1-128 characters from A-Z a-z 0-9 _ . : -, with at most one @ between two of them (a personal room, name@user)"
        )))
    }
}

/// Longest conflation `key` of an ephemeral message (contract §B).
pub const MAX_KEY_LEN: usize = 64;

/// Validates an event id and name, shared by WebSocket publishes and the HTTP API.
///
/// # Errors
///
/// `InvalidId` saying which field is wrong and what format it needs.
pub fn check_event(id: &str, event: &str) -> Result<()> {
    check_publish(Some(id), event, None, false)
}

/// The one validation of a publish, shared by every path that publishes (WebSocket
/// frames, the server API, client HTTP publishes): a durable publish needs an `id`, an
/// ephemeral one may carry one; `event` is 1–64 characters; an ephemeral `key` is at most
/// 64 characters.
///
/// # Errors
///
/// `InvalidId` saying which field is wrong and what format it needs.
pub fn check_publish(
    id: Option<&str>,
    event: &str,
    key: Option<&str>,
    ephemeral: bool,
) -> Result<()> {
    match id {
        Some(id) if !valid_id(id) => {
            return Err(Error::InvalidId(
                "id must be 1-128 characters from A-Z a-z 0-9 _ . : - and stay the same across retries"
                    .into(),
            ))
        }
        None if !ephemeral => {
            return Err(Error::InvalidId(
                "a durable publish needs an id (1-128 characters from A-Z a-z 0-9 _ . : -), stable across retries".into(),
            ))
        }
        _ => {}
    }
    if event.is_empty() || event.chars().count() > MAX_EVENT_LEN {
        return Err(Error::InvalidId("event must be 1-64 characters".into()));
    }
    if let Some(key) = key {
        if key.is_empty() || key.chars().count() > MAX_KEY_LEN {
            return Err(Error::InvalidId("key must be 1-64 characters".into()));
        }
    }
    Ok(())
}

/// A client → server frame. Parsed by [`parse_message`], which dispatches on `type`
/// itself: serde's internally tagged enums buffer their content, which cannot hold the
/// raw `data` payload.
#[derive(Debug)]
pub enum ClientFrame {
    /// Publish an event into the room: sequenced, stored, deduplicated.
    Publish(Publish),
    /// Publish an ephemeral event (`"ephemeral":true`, contract §B): fanned out only.
    Ephemeral(Ephemeral),
    /// How many WebSocket messages the client has read on this connection (slow
    /// consumers, docs/protocol.md §12).
    Received(Received),
}

/// The body of a `publish` frame with `"ephemeral":true`.
#[derive(Debug, Deserialize)]
pub struct Ephemeral {
    /// Optional client id; when given, the sender gets an `ack` naming it.
    #[serde(default)]
    pub id: Option<String>,
    /// Event name, 1–64 chars.
    pub event: String,
    /// Any JSON; `null` when absent.
    #[serde(default = "null_raw")]
    pub data: Box<RawValue>,
    /// Conflation key: a newer message with the same sender, event and key replaces a
    /// queued older one.
    #[serde(default)]
    pub key: Option<String>,
    /// Whether the sender also receives its own message.
    #[serde(default)]
    pub echo: bool,
}

/// The body of a `received` frame.
#[derive(Debug, Deserialize)]
pub struct Received {
    /// WebSocket messages received on this connection so far, `pong` excluded.
    pub messages: u64,
}

/// The body of a `publish` frame. Unknown fields are ignored so that newer clients can
/// talk to older servers.
#[derive(Debug, Deserialize)]
pub struct Publish {
    /// Client-chosen id, stable across retries; the dedup key.
    pub id: String,
    /// Event name, 1–64 chars.
    pub event: String,
    /// Any JSON; `null` when absent.
    #[serde(default = "null_raw")]
    pub data: Box<RawValue>,
    /// Whether the sender also receives its own message.
    #[serde(default)]
    pub echo: bool,
}

/// `null` as a raw JSON value, for absent `data`.
pub fn null_raw() -> Box<RawValue> {
    RawValue::from_string("null".into()).unwrap_or_else(|_| unreachable!("null is valid JSON"))
}

/// One parsed element of an incoming message: the frame, or the error to answer it with
/// together with the `id` it carried (so the client can correlate the error).
pub type Parsed = std::result::Result<ClientFrame, (Option<String>, Error)>;

/// Parses one WebSocket text message: a single frame or a JSON array of frames.
///
/// # Errors
///
/// `BadFrame` when the message is not JSON, not an object or array of objects, or holds
/// more than [`MAX_BATCH`] frames. Per-frame problems are returned inside the vector so
/// that one bad frame in a batch does not drop its neighbours.
pub fn parse_message(text: &str) -> Result<Vec<Parsed>> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('[') {
        let items: Vec<&RawValue> = serde_json::from_str(text)
            .map_err(|e| Error::BadFrame(format!("message is not valid JSON: {e}")))?;
        if items.is_empty() {
            return Err(Error::BadFrame("empty frame array".into()));
        }
        if items.len() > MAX_BATCH {
            return Err(Error::BadFrame(format!(
                "{} frames in one message; at most {MAX_BATCH} are allowed",
                items.len()
            )));
        }
        Ok(items
            .into_iter()
            .map(|raw| parse_frame(raw.get()))
            .collect())
    } else {
        Ok(vec![parse_frame(text)])
    }
}

/// Fields looked at before the frame's full shape is known, to route errors well.
#[derive(Deserialize)]
struct Peek<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<std::borrow::Cow<'a, str>>,
    id: Option<serde_json::Value>,
    #[serde(default)]
    ephemeral: Option<serde_json::Value>,
}

fn parse_frame(text: &str) -> Parsed {
    // A frame is a JSON object. serde's derived structs also accept a JSON array, field by
    // field, so without this check `[["publish","id","event"]]` would parse as a publish.
    if !text.trim_start().starts_with('{') {
        return Err((
            None,
            Error::BadFrame("a frame must be a JSON object with a \"type\"".into()),
        ));
    }
    let peek: Peek = serde_json::from_str(text).map_err(|e| {
        (
            None,
            Error::BadFrame(format!(
                "a frame must be a JSON object with a \"type\": {e}"
            )),
        )
    })?;
    let id = peek
        .id
        .as_ref()
        .and_then(|v| v.as_str())
        .filter(|s| valid_id(s))
        .map(str::to_string);
    match peek.kind.as_deref() {
        None => Err((id, Error::BadFrame("frame has no string \"type\"".into()))),
        Some("publish") => match peek.ephemeral {
            None | Some(serde_json::Value::Bool(false)) => {
                let p: Publish = serde_json::from_str(text).map_err(|e| {
                    (
                        id.clone(),
                        Error::BadFrame(format!("bad publish frame: {e}")),
                    )
                })?;
                check_event(&p.id, &p.event).map_err(|e| (id, e))?;
                Ok(ClientFrame::Publish(p))
            }
            Some(serde_json::Value::Bool(true)) => {
                let p: Ephemeral = serde_json::from_str(text).map_err(|e| {
                    (
                        id.clone(),
                        Error::BadFrame(format!("bad ephemeral publish frame: {e}")),
                    )
                })?;
                check_publish(p.id.as_deref(), &p.event, p.key.as_deref(), true)
                    .map_err(|e| (id, e))?;
                Ok(ClientFrame::Ephemeral(p))
            }
            Some(_) => Err((
                id,
                Error::BadFrame("\"ephemeral\" must be true or false".into()),
            )),
        },
        Some("received") => {
            let r: Received = serde_json::from_str(text).map_err(|e| {
                (
                    None,
                    Error::BadFrame(format!(
                        "bad received frame (expected {{\"type\":\"received\",\"messages\":N}}): {e}"
                    )),
                )
            })?;
            Ok(ClientFrame::Received(r))
        }
        Some(other) => {
            let shown: String = other.chars().take(32).collect();
            Err((id, Error::UnknownType(shown)))
        }
    }
}

/// Who sent a message; `None` (serialized as `null`) for server broadcasts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct From {
    /// The sender's `sub`.
    pub user: String,
    /// The sender's connection id.
    pub conn: String,
}

/// `welcome.resume`.
#[derive(Debug, Clone, Serialize, Default, PartialEq, Eq)]
pub struct Resume {
    /// Whether the client sent `since`/`epoch`.
    pub requested: bool,
    /// Whether everything after `since` was replayed.
    pub recovered: bool,
    /// How many messages were replayed.
    pub replayed: u64,
}

/// One user in a presence list.
#[derive(Debug, Clone, Serialize)]
pub struct PresenceUser<'a> {
    /// The user's `sub`.
    pub user: &'a str,
    /// The user's `info` claim (an object; `{}` when absent).
    pub info: &'a RawValue,
}

/// `welcome.presence`.
#[derive(Debug, Clone, Serialize)]
pub struct Presence<'a> {
    /// Distinct users in the room.
    pub count: usize,
    /// Up to 100 of them.
    pub users: Vec<PresenceUser<'a>>,
}

/// Presence operation.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PresenceOp {
    /// A user's first socket joined.
    Join,
    /// A user's last socket left.
    Leave,
}

/// A server → client frame.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ServerFrame<'a> {
    /// First frame on every connection.
    Welcome {
        /// Room name (without tenant).
        room: &'a str,
        /// This connection's id.
        conn: &'a str,
        /// The token's `sub`.
        user: &'a str,
        /// The room log's epoch.
        epoch: &'a str,
        /// Last assigned sequence number.
        seq: u64,
        /// Outcome of a resume request.
        resume: Resume,
        /// Who is here.
        presence: Presence<'a>,
        /// Whether the room reads `received` frames (docs/protocol.md §12); clients that
        /// send them are bounded exactly instead of by an estimate.
        receipts: bool,
    },
    /// A message published into the room.
    Message {
        /// Per-room sequence number.
        seq: u64,
        /// Event id.
        id: &'a str,
        /// Event name.
        event: &'a str,
        /// Payload.
        data: &'a RawValue,
        /// Sender, or `null` for server broadcasts.
        from: Option<From>,
        /// Server time of acceptance, in ms since the epoch.
        ts: i64,
    },
    /// An ephemeral message (contract §B): no `seq`, never stored.
    #[serde(rename = "message")]
    Ephemeral {
        /// Always true.
        ephemeral: bool,
        /// The publisher's id, when it gave one.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a str>,
        /// Event name.
        event: &'a str,
        /// The conflation key, when the publisher gave one.
        #[serde(skip_serializing_if = "Option::is_none")]
        key: Option<&'a str>,
        /// Payload.
        data: &'a RawValue,
        /// Sender, or `null` for server broadcasts.
        from: Option<From>,
        /// Server time of fan-out, in ms since the epoch.
        ts: i64,
    },
    /// Acknowledges an ephemeral publish that carried an id.
    #[serde(rename = "ack")]
    EphemeralAck {
        /// The publish's id.
        id: &'a str,
        /// Always true.
        ephemeral: bool,
    },
    /// Acknowledges a publish.
    Ack {
        /// The publish's id.
        id: &'a str,
        /// The (original) sequence number.
        seq: u64,
        /// Whether the id had been seen before.
        duplicate: bool,
    },
    /// A recoverable or fatal error about a frame.
    Error {
        /// The frame's id, when it had a valid one.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a str>,
        /// Contract error code.
        code: &'static str,
        /// Human-readable explanation.
        message: String,
        /// For `rate_limited`: when to retry.
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
    /// The `error` frame before the close of a server-API disconnect (docs/protocol.md
    /// §14). It names the close code that follows, because the client should act at once:
    /// the close event can reach it many seconds after the frame (workerd completes the
    /// closing handshake late), and an SSE stream has no close code at all.
    #[serde(rename = "error")]
    Disconnected {
        /// Always `disconnected`.
        code: &'static str,
        /// The backend's reason.
        message: &'a str,
        /// The close code that follows (4000–4999).
        close: u16,
    },
    /// Presence change.
    Presence {
        /// `join` or `leave`.
        op: PresenceOp,
        /// The user.
        user: &'a str,
        /// The user's info.
        info: &'a RawValue,
    },
}

impl ServerFrame<'_> {
    /// Serializes the frame to its JSON text.
    pub fn to_json(&self) -> String {
        // Serializing these types cannot fail: every field is a string, number, bool or
        // already-valid raw JSON, and there are no maps with non-string keys.
        serde_json::to_string(self).unwrap_or_else(|e| {
            format!(r#"{{"type":"error","code":"internal","message":"serialize: {e}"}}"#)
        })
    }
}

/// Builds the `error` frame for an error about a frame with the given id.
pub fn error_frame(id: Option<&str>, err: &Error) -> String {
    ServerFrame::Error {
        id,
        code: err.code(),
        message: err.to_string(),
        retry_after_ms: err.retry_after_ms(),
    }
    .to_json()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_room("doc-42"));
        assert!(valid_room("a:b.c_d-E"));
        assert!(!valid_room(""));
        assert!(!valid_room("a/b"));
        assert!(!valid_room("a%2Fb"));
        assert!(!valid_room(&"x".repeat(129)));
        assert!(valid_room(&"x".repeat(128)));
        assert!(valid_room("inbox@alice"));
        assert!(valid_room("a@b"));
        assert!(valid_room(&format!(
            "{}@{}",
            "x".repeat(63),
            "y".repeat(64)
        )));
        assert!(!valid_room(&format!(
            "{}@{}",
            "x".repeat(64),
            "y".repeat(64)
        )));
        for bad in [
            "@alice",
            "inbox@",
            "@",
            "a@b@c",
            "inbox@al ice",
            "inbox@al/ice",
        ] {
            assert!(!valid_room(bad), "{bad}");
        }
        assert_eq!(personal_owner("inbox@alice"), Some("alice"));
        assert_eq!(personal_owner("a@b@c"), Some("b@c"));
        assert_eq!(personal_owner("lobby"), None);
        assert!(!valid_id("a@b"), "ids keep their format");
        assert!(valid_tenant("acme.prod-1"));
        assert!(!valid_tenant("a:b"));
        assert!(!valid_tenant("a/b"));
        assert!(!valid_id("has space"));
        assert!(!valid_id("é"));
    }

    #[test]
    fn parses_single_and_batch() {
        let one =
            parse_message(r#"{"type":"publish","id":"a1","event":"chat","data":{"x":1}}"#).unwrap();
        assert_eq!(one.len(), 1);
        let Ok(ClientFrame::Publish(p)) = &one[0] else {
            panic!("expected publish")
        };
        assert_eq!(p.data.get(), r#"{"x":1}"#);
        assert!(!p.echo);

        let many = parse_message(
            r#"[{"type":"publish","id":"a","event":"e"},{"type":"nope","id":"b"},{"type":"publish","id":"bad id","event":"e"}]"#,
        )
        .unwrap();
        assert_eq!(many.len(), 3);
        assert!(matches!(&many[0], Ok(ClientFrame::Publish(p)) if p.data.get() == "null"));
        assert!(
            matches!(&many[1], Err((Some(id), Error::UnknownType(t))) if id == "b" && t == "nope")
        );
        assert!(matches!(&many[2], Err((None, Error::InvalidId(_)))));
    }

    #[test]
    fn rejects_non_frames() {
        assert!(matches!(parse_message("[]"), Err(Error::BadFrame(_))));
        assert!(matches!(parse_message("[1,"), Err(Error::BadFrame(_))));
        let r = parse_message("42").unwrap();
        assert!(matches!(&r[0], Err((None, Error::BadFrame(_)))));
        let r = parse_message(r#"{"type":"publish","id":"x","event":""}"#).unwrap();
        assert!(matches!(&r[0], Err((Some(_), Error::InvalidId(_)))));
        let r = parse_message(r#"{"type":"publish","id":"x","event":"e","echo":"yes"}"#).unwrap();
        assert!(matches!(&r[0], Err((Some(_), Error::BadFrame(_)))));
        let big = format!("[{}]", vec!["{}"; MAX_BATCH + 1].join(","));
        assert!(matches!(parse_message(&big), Err(Error::BadFrame(_))));
    }
}
