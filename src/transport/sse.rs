//! `GET /v1/rooms/{room}/events`: the room's frames as Server-Sent Events
//! (docs/protocol.md §13).
//!
//! Each frame is one event: `event:` its `type`, `data:` its JSON. Durable messages carry
//! `id: <epoch>:<seq>`, and so does `welcome` (the seq the client holds after it, see
//! [`Welcome::holds`]), so a reconnecting `EventSource` resumes through `Last-Event-ID`
//! even when it was cut before its first message. When the room closes the relay socket
//! (token expiry 4001, too slow 4009, …) the stream ends with `event: close`.
//!
//! The body is pulled by the runtime as the client reads: each pull waits for the room's
//! next message or the keep-alive deadline, whichever comes first. What the runtime has
//! pulled is what the relay reports to the room in `received` receipts (§12), so a
//! client that stops reading is bounded exactly like a WebSocket client that sends them.

use std::time::Duration;

use futures_util::future::{select, Either};
use futures_util::{pin_mut, stream};
use worker::{Delay, Env, Headers, Request, Response, Url};

use super::frames::{split, Welcome};
use super::relay::{Event, Relay};
use crate::error::{Error, Result};
use crate::protocol::check_room;
use crate::room::rpc::Transport;
use crate::router::{authorize_user, header, internal, load, presence_query, resume_query};
use crate::runtime::now_ms;

/// The relay sends a receipt after this many room messages were handed to the client's
/// stream (or [`receipt_bytes`], whichever comes first): the SDK's cadence on WebSockets.
pub const RECEIPT_MESSAGES: u64 = 256;
/// See [`receipt_bytes`].
pub const RECEIPT_BYTES: u64 = 128 * 1024;

/// Bytes between receipts: the SDK's 128 KiB, or a quarter of `MAX_PENDING_BYTES` when
/// that is smaller — a receipt must come well before the unread bytes it leaves
/// uncounted reach the bound, or a reader that keeps up would be closed as too slow.
pub fn receipt_bytes(max_pending_bytes: usize) -> u64 {
    RECEIPT_BYTES.min((max_pending_bytes as u64 / 4).max(1))
}

/// The keep-alive comment.
pub const KEEPALIVE: &str = ": keepalive\n\n";

/// Appends one SSE event. `data` is written as one `data:` line per line of its text:
/// frames are compact JSON, but a published `data` is kept as the raw text it was sent
/// as and may contain line breaks (JSON whitespace only, never inside a string), and an
/// `EventSource` joins `data:` lines with `\n`, which gives back equivalent JSON.
pub fn event(out: &mut String, kind: &str, id: Option<&str>, data: &str) {
    out.push_str("event: ");
    out.push_str(kind);
    out.push('\n');
    if let Some(id) = id {
        out.push_str("id: ");
        out.push_str(id);
        out.push('\n');
    }
    for line in data.split(['\n', '\r']).filter(|l| !l.is_empty()) {
        out.push_str("data: ");
        out.push_str(line);
        out.push('\n');
    }
    if data.is_empty() {
        out.push_str("data: \n");
    }
    out.push('\n');
}

/// The SSE id of a durable position: `<epoch>:<seq>`.
pub fn event_id(epoch: &str, seq: u64) -> String {
    format!("{epoch}:{seq}")
}

/// Reads a `Last-Event-ID`: `<epoch>:<seq>` as this stream wrote it.
///
/// # Errors
///
/// `BadRequest` for anything else.
pub fn parse_event_id(id: &str) -> Result<(String, u64)> {
    id.rsplit_once(':')
        .and_then(|(epoch, seq)| Some((epoch, seq.parse::<u64>().ok()?)))
        .filter(|(epoch, _)| !epoch.is_empty())
        .map(|(epoch, seq)| (epoch.to_string(), seq))
        .ok_or_else(|| {
            Error::BadRequest(
                "Last-Event-ID must be \"<epoch>:<seq>\" as this stream sent it in `id:`".into(),
            )
        })
}

/// Turns the room's messages into SSE text.
#[derive(Debug, Default)]
pub struct Encoder {
    epoch: Option<String>,
}

impl Encoder {
    /// The events of one room message (empty if it held nothing to pass on).
    pub fn message(&mut self, message: &str) -> String {
        let mut out = String::new();
        for frame in split(message) {
            let id = if let Some(w) = Welcome::parse(&frame) {
                let id = event_id(&w.epoch, w.holds());
                self.epoch = Some(w.epoch);
                Some(id)
            } else {
                match (&self.epoch, frame.seq) {
                    (Some(epoch), Some(seq)) if frame.is_durable() => Some(event_id(epoch, seq)),
                    _ => None,
                }
            };
            event(&mut out, &frame.kind, id.as_deref(), frame.text);
        }
        out
    }

    /// The last event of a stream the room ended: `event: close` with its close code and
    /// reason (`{"code":4001,"reason":"token_expired"}`).
    pub fn close(code: u16, reason: &str) -> String {
        let data = serde_json::json!({ "code": code, "reason": reason }).to_string();
        let mut out = String::new();
        event(&mut out, "close", None, &data);
        out
    }
}

/// `GET /v1/rooms/{room}/events`: the same checks as the socket route, then the stream.
///
/// # Errors
///
/// The socket route's rejections (docs/protocol.md §4), as plain HTTP answers.
pub async fn serve(req: &Request, url: &Url, env: &Env, room: &str) -> Result<Response> {
    check_room(room)?;
    let (config, verifier) = load(env)?;
    let user = authorize_user(req, url, &config, &verifier, room)?;
    user.require_read(room)?;
    let (mut since, mut epoch) = resume_query(url)?;
    // An EventSource reconnects to the URL it was given, adding `Last-Event-ID`: the
    // header is the newer position, so it wins over `?since=&epoch=`.
    if let Some(last) = header(req, "Last-Event-ID").filter(|v| !v.trim().is_empty()) {
        let (e, s) = parse_event_id(last.trim())?;
        (since, epoch) = (Some(s), Some(e));
    }
    let session = user.session(room, since, epoch, presence_query(url)?, Transport::Sse);
    let relay = Relay::open(env, user.tenant.as_deref(), &session).await?;
    let keepalive = Duration::from_secs(config.sse_keepalive_secs);
    let headers = Headers::new();
    for (name, value) in [
        ("Content-Type", "text/event-stream; charset=utf-8"),
        ("Cache-Control", "no-cache, no-transform"),
        ("X-Accel-Buffering", "no"),
    ] {
        headers.set(name, value).map_err(internal)?;
    }
    let every = receipt_bytes(config.limits.max_pending_bytes);
    let body = stream::unfold(Pump::new(relay, keepalive, every), Pump::pull);
    Ok(Response::from_stream(body)
        .map_err(internal)?
        .with_headers(headers))
}

/// The state behind the response body.
struct Pump {
    relay: Relay,
    encoder: Encoder,
    keepalive: Duration,
    /// When the stream last wrote anything (ms).
    last_write: i64,
    /// Room messages handed to the client's stream, and their bytes; and the totals the
    /// last receipt reported.
    handed: (u64, u64),
    reported: (u64, u64),
    /// Bytes between receipts.
    receipt_every: u64,
    done: bool,
}

type Chunk = std::result::Result<Vec<u8>, worker::Error>;

impl Pump {
    fn new(relay: Relay, keepalive: Duration, receipt_every: u64) -> Self {
        Pump {
            relay,
            encoder: Encoder::default(),
            keepalive,
            last_write: now_ms(),
            handed: (0, 0),
            reported: (0, 0),
            receipt_every,
            done: false,
        }
    }

    /// The runtime asks for the next chunk: everything returned before has been taken
    /// into the response body.
    async fn pull(mut self) -> Option<(Chunk, Self)> {
        if self.done {
            return None;
        }
        self.receipt();
        loop {
            let keepalive_ms = i64::try_from(self.keepalive.as_millis()).unwrap_or(i64::MAX);
            let wait = (self.last_write + keepalive_ms - now_ms()).max(0);
            let event = {
                let next = self.relay.next();
                let timer = Delay::from(Duration::from_millis(u64::try_from(wait).unwrap_or(0)));
                pin_mut!(next, timer);
                match select(next, timer).await {
                    Either::Left((event, _)) => Some(event),
                    Either::Right(((), _)) => None,
                }
            };
            let text = match event {
                None => KEEPALIVE.to_string(),
                Some(Some(Event::Text(message))) => {
                    self.handed.0 += 1;
                    self.handed.1 += message.len() as u64;
                    let text = self.encoder.message(&message);
                    if text.is_empty() {
                        continue;
                    }
                    text
                }
                Some(Some(Event::Closed { code, reason })) => {
                    self.done = true;
                    Encoder::close(code, &reason)
                }
                Some(None) => {
                    self.done = true;
                    Encoder::close(1006, "")
                }
            };
            self.last_write = now_ms();
            return Some((Ok(text.into_bytes()), self));
        }
    }

    /// Reports what the client's stream has taken, at the SDK's cadence.
    fn receipt(&mut self) {
        let (msgs, bytes) = self.handed;
        if msgs >= self.reported.0 + RECEIPT_MESSAGES
            || bytes >= self.reported.1 + self.receipt_every
        {
            self.relay
                .send(&format!(r#"{{"type":"received","messages":{msgs}}}"#));
            self.reported = self.handed;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WELCOME: &str = r#"{"type":"welcome","room":"r","conn":"c_1","user":"u","epoch":"e_9","seq":5,"resume":{"requested":true,"recovered":true,"replayed":2},"presence":{"count":1,"users":[]},"receipts":true}"#;

    #[test]
    fn every_frame_is_an_event_and_durable_positions_carry_ids() {
        let mut enc = Encoder::default();
        assert_eq!(
            enc.message(WELCOME),
            format!("event: welcome\nid: e_9:3\ndata: {WELCOME}\n\n")
        );
        let batch = r#"[{"type":"message","seq":4,"id":"a","event":"e","data":1,"from":null,"ts":1},{"type":"message","ephemeral":true,"event":"c","data":2,"from":null,"ts":2},{"type":"ack","id":"a","seq":4,"duplicate":false}]"#;
        assert_eq!(
            enc.message(batch),
            concat!(
                "event: message\nid: e_9:4\ndata: {\"type\":\"message\",\"seq\":4,\"id\":\"a\",\"event\":\"e\",\"data\":1,\"from\":null,\"ts\":1}\n\n",
                "event: message\ndata: {\"type\":\"message\",\"ephemeral\":true,\"event\":\"c\",\"data\":2,\"from\":null,\"ts\":2}\n\n",
                "event: ack\ndata: {\"type\":\"ack\",\"id\":\"a\",\"seq\":4,\"duplicate\":false}\n\n",
            )
        );
        assert_eq!(
            Encoder::close(4001, "token_expired"),
            "event: close\ndata: {\"code\":4001,\"reason\":\"token_expired\"}\n\n"
        );
    }

    #[test]
    fn line_breaks_in_published_data_become_several_data_lines() {
        let mut out = String::new();
        event(&mut out, "message", None, "{\"data\":{\r\n\"a\":1\n}}");
        assert_eq!(
            out,
            "event: message\ndata: {\"data\":{\ndata: \"a\":1\ndata: }}\n\n"
        );
        assert!(!out.contains('\r'));
    }

    #[test]
    fn receipts_come_at_the_sdk_cadence_or_a_quarter_of_a_small_bound() {
        assert_eq!(receipt_bytes(1 << 20), 128 * 1024);
        assert_eq!(receipt_bytes(16_384), 4096);
        assert_eq!(receipt_bytes(1), 1);
    }

    #[test]
    fn last_event_ids_round_trip_and_garbage_is_refused() {
        assert_eq!(parse_event_id(&event_id("e_9", 41)), Ok(("e_9".into(), 41)));
        for bad in ["", "e_9", "e_9:", ":4", "e_9:-1", "e_9:x"] {
            assert!(parse_event_id(bad).is_err(), "{bad:?}");
        }
    }
}
