//! The Room Durable Object: one per `(tenant, room)`, SQLite-backed, holding its sockets
//! with the WebSocket Hibernation API.
//!
//! This file is thin glue between the runtime and the plain logic in [`log`] (sequencing
//! and dedup), [`session`] (what survives hibernation) and [`crate::protocol`] (frames).
//! Memory here is a cache: the log head is reloaded from SQLite after a wake-up, and every
//! socket's identity lives in its attachment.

pub mod limits;
pub mod log;
pub mod outbox;
pub mod rpc;
pub mod session;
pub mod sockets;

use std::cell::{Cell as MemCell, RefCell};
use std::collections::HashMap;

use serde_json::value::RawValue;
use worker::{
    durable_object, DurableObject, Env, Request, Response, SqlStorage, SqlStorageValue, State,
    WebSocket, WebSocketIncomingMessage, WebSocketPair,
};

use crate::auth::LEEWAY_SECS;
use crate::config::Limits;
use crate::error::{close, Error, Result};
use crate::protocol::{
    self, error_frame, ClientFrame, From, Presence, PresenceOp, PresenceUser, Publish, Resume,
    ServerFrame,
};
use crate::runtime::{json_response, log_line, now_ms, random_id};
use limits::{Admit, ConnState};
use log::{Appended, Arg, Cell, Head, Retention, Sql};
use rpc::{ConnectRequest, PublishRequest, PublishResult, RoomInfo, UserEntry};
use session::{info_raw, Session};

/// Most users listed in `welcome.presence` (contract §5).
pub const MAX_PRESENCE_USERS: usize = 100;

/// The Durable Object.
#[durable_object]
pub struct Room {
    state: State,
    limits: Limits,
    /// The log head, loaded lazily; `None` until the first event after construction.
    head: RefCell<Option<Head>>,
    /// Rate-limit and strike state per connection id; memory only (see `limits`).
    conns: RefCell<HashMap<String, ConnState>>,
    /// Open sockets, cached between events (see `sockets`).
    sockets: sockets::Sockets,
    /// The expiry alarm as last set or read, in ms; `None` when not known since waking.
    alarm_at: MemCell<Option<Option<i64>>>,
}

/// Sockets whose token runs out within this many seconds of an expiry alarm are closed by
/// that same alarm, so tokens minted together cost one wake-up, not one each.
pub const EXPIRY_COALESCE_SECS: i64 = 5;

/// `ctx.storage.sql` as the log's [`Sql`] engine.
struct DoSql(SqlStorage);

impl DoSql {
    fn exec(&self, query: &str, args: &[Arg<'_>]) -> Result<worker::SqlCursor> {
        let bindings: Vec<SqlStorageValue> = args
            .iter()
            .map(|a| match a {
                Arg::Int(i) => SqlStorageValue::Integer(*i),
                Arg::Text(s) => SqlStorageValue::String((*s).to_string()),
            })
            .collect();
        self.0
            .exec(query, bindings)
            .map_err(|e| Error::Internal(format!("sql {query:?}: {e}")))
    }
}

impl Sql for DoSql {
    fn write(&self, query: &str, args: &[Arg<'_>]) -> Result<bool> {
        // A statement without result rows has run to completion when `exec` returns.
        Ok(self.exec(query, args)?.rows_written() > 0)
    }

    fn run(&self, query: &str, args: &[Arg<'_>]) -> Result<Vec<Vec<Cell>>> {
        let cursor = self.exec(query, args)?;
        let mut rows = Vec::new();
        for row in cursor.raw() {
            let row = row.map_err(|e| Error::Internal(format!("sql row: {e}")))?;
            rows.push(
                row.into_iter()
                    .map(|v| match v {
                        SqlStorageValue::Integer(i) => Cell::Int(i),
                        // JS numbers arrive as floats; the log only stores integers < 2^53.
                        SqlStorageValue::Float(f) if f.fract() == 0.0 => Cell::Int(f as i64),
                        SqlStorageValue::String(s) => Cell::Text(s),
                        _ => Cell::Null,
                    })
                    .collect(),
            );
        }
        Ok(rows)
    }
}

impl DurableObject for Room {
    fn new(state: State, env: Env) -> Self {
        // The Worker rejects requests when the limits are malformed, so a room only ever
        // sees valid ones; falling back to defaults here just avoids a panic path.
        let limits = Limits::from_lookup(&|name| env.var(name).ok().map(|v| v.to_string()))
            .unwrap_or_default();
        // One line per construction: a room starting again after its sockets were idle is
        // how eviction shows in `wrangler tail` (and how the tests observe it).
        let name = state.id().name().unwrap_or_default();
        log_line("room.start", &[("room_key", &name)]);
        // Answer heartbeats in the runtime without waking the room (contract §5).
        if let Ok(pair) = worker::WebSocketRequestResponsePair::new("ping", "pong") {
            state.set_websocket_auto_response(&pair);
        }
        Room {
            state,
            limits,
            head: RefCell::new(None),
            conns: RefCell::new(HashMap::new()),
            sockets: sockets::Sockets::default(),
            alarm_at: MemCell::new(None),
        }
    }

    async fn fetch(&self, req: Request) -> worker::Result<Response> {
        let path = req.path();
        let result = match path.as_str() {
            rpc::path::CONNECT => self.accept(&req).await,
            rpc::path::PUBLISH => self.http_publish(req).await,
            rpc::path::INFO => self.info(&req),
            rpc::path::HISTORY => self.history(&req),
            _ => Err(Error::NotFound(path.clone())),
        };
        Ok(match result {
            Ok(resp) => resp,
            Err(e) => crate::runtime::error_response(&e),
        })
    }

    async fn websocket_message(
        &self,
        ws: WebSocket,
        message: WebSocketIncomingMessage,
    ) -> worker::Result<()> {
        let Some(session) = Session::of(&ws) else {
            // Only sockets accepted by `accept` exist, and each gets an attachment there.
            log_line("room.no_attachment", &[]);
            let _ = ws.close(Some(close::INTERNAL), Some("lost session"));
            return Ok(());
        };
        if session.gone {
            return Ok(());
        }
        let now = now_ms();
        let text = match message {
            WebSocketIncomingMessage::String(s) => s,
            WebSocketIncomingMessage::Binary(_) => {
                let e = Error::BadFrame(
                    "binary messages are not accepted; send JSON text frames".into(),
                );
                self.frame_error(&ws, &session, None, &e, now);
                return Ok(());
            }
        };
        if text.len() > self.limits.max_message_bytes {
            let e = Error::TooLarge(format!(
                "message is {} bytes; MAX_MESSAGE_BYTES is {}",
                text.len(),
                self.limits.max_message_bytes
            ));
            self.frame_error(&ws, &session, None, &e, now);
            return Ok(());
        }
        let frames = match protocol::parse_message(&text) {
            Ok(frames) => frames,
            Err(e) => {
                self.frame_error(&ws, &session, None, &e, now);
                return Ok(());
            }
        };
        for parsed in frames {
            let open = match parsed {
                Err((id, e)) => self.frame_error(&ws, &session, id.as_deref(), &e, now),
                Ok(ClientFrame::Publish(p)) => match self.ws_publish(&ws, &session, &p, now) {
                    Ok(()) => true,
                    Err(e) => self.frame_error(&ws, &session, Some(&p.id), &e, now),
                },
            };
            if !open {
                break;
            }
        }
        Ok(())
    }

    async fn websocket_close(
        &self,
        ws: WebSocket,
        code: usize,
        _reason: String,
        _was_clean: bool,
    ) -> worker::Result<()> {
        // Complete the closing handshake; the socket may already be closed, which is fine.
        let reply = if code == 1005 || code == 1006 {
            1000
        } else {
            code as u16
        };
        self.sockets.close(&ws, reply, "bye");
        if let Some(s) = Session::of(&ws) {
            log_line(
                "socket.close",
                &[("conn", &s.conn), ("code", &code.to_string())],
            );
        }
        self.departed(&ws);
        Ok(())
    }

    async fn alarm(&self) -> worker::Result<Response> {
        self.alarm_at.set(Some(None));
        let now = now_ms() / 1000;
        let mut closed = 0usize;
        let mut next: Option<i64> = None;
        let sockets: Vec<(WebSocket, Session)> = self.sockets.with(&self.state, |list| {
            list.iter()
                .map(|e| (e.ws.clone(), e.session.clone()))
                .collect()
        });
        for (ws, session) in sockets {
            if session.expired(now + EXPIRY_COALESCE_SECS) {
                self.sockets
                    .send(&ws, &session.conn, error_frame(None, &Error::TokenExpired));
                self.sockets
                    .close(&ws, close::TOKEN_EXPIRED, Error::TokenExpired.code());
                self.departed(&ws);
                closed += 1;
            } else {
                next = Some(next.map_or(session.exp, |n| n.min(session.exp)));
            }
        }
        log_line("room.alarm", &[("expired_closed", &closed.to_string())]);
        if let Some(exp) = next {
            self.schedule_expiry(exp).await;
        }
        Response::ok("")
    }

    async fn websocket_error(&self, ws: WebSocket, _error: worker::Error) -> worker::Result<()> {
        self.departed(&ws);
        Ok(())
    }
}

impl Room {
    /// Makes sure an alarm fires once a socket with token expiry `exp` must be closed.
    ///
    /// Trade-off: an alarm wakes an evicted room, but only when a socket really has to be
    /// closed; the alternative (checking on every event) would leave an idle room holding
    /// sockets with dead tokens indefinitely. Only the earliest expiry is scheduled, the
    /// alarm closes everything expiring within `EXPIRY_COALESCE_SECS` and reschedules, and
    /// the common case (a later token joining) costs no storage write at all.
    async fn schedule_expiry(&self, exp: i64) {
        let due = (exp + LEEWAY_SECS + 1) * 1000;
        let current = match self.alarm_at.get() {
            Some(known) => known,
            None => {
                let read = self.state.storage().get_alarm().await.ok().flatten();
                self.alarm_at.set(Some(read));
                read
            }
        };
        if current.is_some_and(|at| at <= due) {
            return;
        }
        // `set_alarm` takes an i64 as an offset from now, not as a timestamp.
        let offset = (due - now_ms()).max(0);
        match self.state.storage().set_alarm(offset).await {
            Ok(()) => self.alarm_at.set(Some(Some(due))),
            Err(e) => log_line("room.alarm_failed", &[("detail", &e.to_string())]),
        }
    }

    fn sql(&self) -> DoSql {
        DoSql(self.state.storage().sql())
    }

    fn retention(&self) -> Retention {
        Retention {
            history_limit: self.limits.history_limit,
            dedup_window_ms: (self.limits.dedup_window_secs as i64).saturating_mul(1000),
        }
    }

    /// Runs `f` with the log head, loading (and on first use creating) it from storage.
    fn with_head<T>(&self, f: impl FnOnce(&mut Head) -> Result<T>) -> Result<T> {
        let mut slot = self.head.borrow_mut();
        if slot.is_none() {
            *slot = Some(log::open(&self.sql(), &|| random_id("e_"))?);
        }
        match slot.as_mut() {
            Some(head) => f(head),
            None => Err(Error::Internal("log head missing".into())),
        }
    }

    async fn accept(&self, req: &Request) -> Result<Response> {
        let header = req
            .headers()
            .get(rpc::SESSION_HEADER)
            .ok()
            .flatten()
            .ok_or_else(|| Error::Internal("connect without session".into()))?;
        let c: ConnectRequest = serde_json::from_str(&header)
            .map_err(|e| Error::Internal(format!("bad session header: {e}")))?;

        let existing = self.sockets.members(&self.state, |users| {
            users.get(&c.user).map_or(0, |m| m.sockets)
        });
        if existing >= self.limits.max_connections_per_user as usize {
            return Err(Error::TooManyConnections(format!(
                "user {:?} already has {existing} sockets in this room; MAX_CONNECTIONS_PER_USER is {}",
                c.user, self.limits.max_connections_per_user
            )));
        }

        let head = self.with_head(|h| Ok(h.clone()))?;
        let pair = WebSocketPair::new().map_err(internal)?;
        let conn = random_id("c_");
        let session = Session {
            conn: conn.clone(),
            user: c.user.clone(),
            write: c.write,
            exp: c.exp,
            info: c.info.clone(),
            presence: c.presence,
            gone: false,
        };
        // No tags: the socket cache and its user index answer every lookup, and the
        // attachment carries what survives hibernation.
        self.state.accept_web_socket(&pair.server);
        session.attach(&pair.server)?;
        self.sockets.added(&pair.server, &session);

        // Presence is per user: announce a join only for the user's first socket.
        if existing == 0 {
            self.sockets.announce(
                &self.state,
                || presence_frame(PresenceOp::Join, &session),
                &conn,
            );
        }

        // Resume is decided and replayed inside this synchronous handler, before the
        // response returns: no other event can run in between, so no live message can
        // reach this socket ahead of its replay (contract §6).
        let requested = c.since.is_some() || c.epoch.is_some();
        let replay = match (c.since, c.epoch.as_deref()) {
            (Some(since), Some(epoch)) => {
                log::resume(&self.sql(), &head, since, epoch, self.limits.history_limit)?
            }
            _ => log::Resumed::Lost,
        };
        let (recovered, frames) = match replay {
            log::Resumed::Recovered(frames) => (true, frames),
            log::Resumed::Lost => (false, Vec::new()),
        };

        let (count, listed): (usize, Vec<(String, Box<RawValue>)>) =
            self.sockets.members(&self.state, |users| {
                let listed = users
                    .iter()
                    .take(MAX_PRESENCE_USERS)
                    .map(|(user, m)| (user.clone(), info_raw(m.info.as_deref())))
                    .collect();
                (users.len(), listed)
            });
        let welcome = ServerFrame::Welcome {
            room: &c.room,
            conn: &conn,
            user: &c.user,
            epoch: &head.epoch,
            seq: head.last_seq,
            resume: Resume {
                requested,
                recovered: requested && recovered,
                replayed: frames.len() as u64,
            },
            presence: Presence {
                count,
                users: listed
                    .iter()
                    .map(|(user, info)| PresenceUser { user, info })
                    .collect(),
            },
        };
        send(&pair.server, &welcome.to_json());
        // Replay coalesced like live traffic (the contract lets the server coalesce): one
        // send per up to 1,000 messages (256 KiB) instead of one per message.
        for message in outbox::messages(frames.iter().map(String::as_str)) {
            send(&pair.server, &message);
        }

        log_line("socket.open", &[("conn", &conn), ("user", &c.user)]);
        // Everything above ran without an await, so the replay is already queued ahead
        // of any live message; scheduling the expiry alarm may now yield safely.
        self.schedule_expiry(c.exp).await;

        let mut resp = Response::from_websocket(pair.client).map_err(internal)?;
        if c.subprotocol {
            resp.headers_mut()
                .set("Sec-WebSocket-Protocol", crate::router::SUBPROTOCOL)
                .map_err(internal)?;
        }
        Ok(resp)
    }

    /// Answers a bad frame or refused publish with an `error` frame, counts it toward the
    /// connection's strikes, and closes the socket when the error or the strikes say so.
    /// Returns whether the socket is still open.
    fn frame_error(
        &self,
        ws: &WebSocket,
        session: &Session,
        id: Option<&str>,
        err: &Error,
        now: i64,
    ) -> bool {
        self.sockets.send(ws, &session.conn, error_frame(id, err));
        let close = err.close_code().or_else(|| {
            let mut conns = self.conns.borrow_mut();
            let state = conns
                .entry(session.conn.clone())
                .or_insert_with(|| ConnState::new(&self.limits, now));
            if err.is_bad_frame() && state.bad_frame() {
                Some((close::PROTOCOL_ERROR, "too many invalid frames"))
            } else if matches!(err, Error::TooLarge(_)) && state.too_large() {
                Some((close::TOO_BIG, "too many oversized messages"))
            } else {
                None
            }
            .map(|(code, reason)| {
                log_line(
                    "socket.kick",
                    &[
                        ("conn", &session.conn),
                        ("code", &code.to_string()),
                        ("reason", reason),
                    ],
                );
                code
            })
        });
        match close {
            None => true,
            Some(code) => {
                self.sockets.close(ws, code, err.code());
                self.departed(ws);
                false
            }
        }
    }

    fn ws_publish(&self, ws: &WebSocket, session: &Session, p: &Publish, now: i64) -> Result<()> {
        if session.expired(now / 1000) {
            return Err(Error::TokenExpired);
        }
        if !session.write {
            return Err(Error::Forbidden(
                "this token has no \"write\" permission on this room".into(),
            ));
        }
        let admit = self
            .conns
            .borrow_mut()
            .entry(session.conn.clone())
            .or_insert_with(|| ConnState::new(&self.limits, now))
            .admit(&self.limits, now);
        match admit {
            Admit::Yes => {}
            Admit::Later(ms) => return Err(Error::RateLimited(ms)),
            Admit::Close => {
                self.sockets.send(
                    ws,
                    &session.conn,
                    error_frame(Some(&p.id), &Error::RateLimited(1000)),
                );
                log_line(
                    "socket.kick",
                    &[
                        ("conn", &session.conn),
                        ("code", "4008"),
                        ("reason", "sustained rate limiting"),
                    ],
                );
                self.sockets.close(ws, close::RATE_LIMITED, "rate_limited");
                self.departed(ws);
                return Ok(());
            }
        }
        let from = From {
            user: session.user.clone(),
            conn: session.conn.clone(),
        };
        let except = if p.echo {
            None
        } else {
            Some(session.conn.as_str())
        };
        let (outcome, _) = self.publish(&p.id, &p.event, &p.data, Some(from), |frame| {
            self.sockets.broadcast(&self.state, frame, except);
            0
        })?;
        let ack = ServerFrame::Ack {
            id: &p.id,
            seq: outcome.seq(),
            duplicate: matches!(outcome, Appended::Duplicate(_)),
        };
        self.sockets.send(ws, &session.conn, ack.to_json());
        Ok(())
    }

    /// Dedup, sequence, store, then fan out with `deliver` (only for a new id).
    fn publish(
        &self,
        id: &str,
        event: &str,
        data: &RawValue,
        from: Option<From>,
        deliver: impl FnOnce(String) -> usize,
    ) -> Result<(Appended, usize)> {
        let ts = now_ms();
        let retention = self.retention();
        let sql = self.sql();
        let (outcome, frame) = self.with_head(|head| {
            log::append(&sql, head, retention, id, ts, |seq| {
                ServerFrame::Message {
                    seq,
                    id,
                    event,
                    data,
                    from,
                    ts,
                }
                .to_json()
            })
        })?;
        let delivered = frame.map(deliver).unwrap_or(0);
        Ok((outcome, delivered))
    }

    async fn http_publish(&self, mut req: Request) -> Result<Response> {
        // Read text and parse with serde_json: `Request::json` goes through a JS value,
        // which cannot carry the raw `data` payload.
        let text = req.text().await.map_err(internal)?;
        let body: PublishRequest = serde_json::from_str(&text)
            .map_err(|e| Error::Internal(format!("bad publish request: {e}")))?;
        let except = body.exclude_conn.as_deref();
        let (outcome, delivered) = self.publish(&body.id, &body.event, &body.data, None, |f| {
            self.sockets.broadcast(&self.state, f, except);
            self.sockets.audience(&self.state, except)
        })?;
        let epoch = self.with_head(|h| Ok(h.epoch.clone()))?;
        json_response(
            200,
            &PublishResult {
                room: body.room,
                epoch,
                seq: outcome.seq(),
                duplicate: matches!(outcome, Appended::Duplicate(_)),
                delivered,
            },
        )
    }

    fn history(&self, req: &Request) -> Result<Response> {
        let url = req.url().map_err(internal)?;
        let number = |name: &str| {
            url.query_pairs()
                .find(|(k, _)| k == name)
                .and_then(|(_, v)| v.parse::<u64>().ok())
        };
        let since = number("since").unwrap_or(0);
        let limit = number("limit").unwrap_or(u64::from(rpc::DEFAULT_HISTORY_PAGE)) as u32;
        let head = self.with_head(|h| Ok(h.clone()))?;
        let rows = log::read_after(&self.sql(), since, limit)?;
        let messages = rows
            .into_iter()
            .map(|(_, frame)| {
                RawValue::from_string(frame).map_err(|e| Error::Internal(e.to_string()))
            })
            .collect::<Result<Vec<_>>>()?;
        json_response(
            200,
            &rpc::History {
                epoch: head.epoch,
                last_seq: head.last_seq,
                messages,
            },
        )
    }

    fn info(&self, req: &Request) -> Result<Response> {
        let url = req.url().map_err(internal)?;
        let room = url
            .query_pairs()
            .find(|(k, _)| k == "room")
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
        let head = self.with_head(|h| Ok(h.clone()))?;
        let connections = self.sockets.with(&self.state, <[_]>::len);
        let users = self.sockets.members(&self.state, |users| {
            users
                .iter()
                .map(|(user, m)| UserEntry {
                    user: user.clone(),
                    connections: m.sockets,
                    info: info_raw(m.info.as_deref()),
                })
                .collect()
        });
        json_response(
            200,
            &RoomInfo {
                room,
                epoch: head.epoch,
                last_seq: head.last_seq,
                connections,
                users,
            },
        )
    }

    /// Cleans up after a socket that closed, failed, or was closed by the room: marks it
    /// gone (once), forgets its limits, and announces `leave` when it was the user's last
    /// socket.
    fn departed(&self, ws: &WebSocket) {
        self.sockets.removed(ws);
        let Some(mut session) = Session::of(ws) else {
            return;
        };
        if session.gone {
            return;
        }
        session.gone = true;
        let _ = session.attach(ws);
        self.conns.borrow_mut().remove(&session.conn);
        // `ws` was removed from the cache above, so this counts the user's other sockets.
        let others = self.sockets.members(&self.state, |users| {
            users.get(&session.user).map_or(0, |m| m.sockets)
        });
        if others == 0 {
            self.sockets.announce(
                &self.state,
                || presence_frame(PresenceOp::Leave, &session),
                &session.conn,
            );
        }
    }
}

/// The `presence` frame announcing a user's first socket or last departure.
fn presence_frame(op: PresenceOp, session: &Session) -> String {
    let info = session.info_raw();
    ServerFrame::Presence {
        op,
        user: &session.user,
        info: &info,
    }
    .to_json()
}

/// Sends a frame at once, bypassing the outbox: only for the socket being accepted, which
/// no queued frame is for (see `outbox`). Failure is ignored: the socket is closing and its
/// close handler cleans up.
fn send(ws: &WebSocket, frame: &str) {
    let _ = ws.send_with_str(frame);
}

fn internal(e: worker::Error) -> Error {
    Error::Internal(e.to_string())
}
