//! The room's rules as a plain state machine: it takes events — a socket connects, sends
//! a message or goes away, the alarm fires, a backend publishes, the flush timer runs —
//! and returns [`Effect`]s for the Durable Object to apply in order: send this text to
//! this socket, close that one with this code, rewrite an attachment, flush soon, set the
//! alarm, log a line. It never awaits and holds no runtime types: `H` is whatever handle
//! the caller uses for a socket (a `WebSocket` in workerd, a number in tests), and time
//! and storage come in as arguments, so `cargo test` runs every rule natively against
//! real SQLite.
//!
//! One record per connection ([`Peer`]): its identity (mirrored in the socket's
//! attachment, so the core is rebuilt from the runtime's sockets after a wake-up), its
//! abuse controls, its push flags and how much it has not read. A peer that the room
//! closes is removed at once, before the next frame of the same message is looked at:
//! a socket kicked in the middle of an array frame cannot publish the rest of it.
//!
//! Client frames are handled one type per file in [`super::commands`].

use std::collections::HashMap;

use serde_json::value::RawValue;

use super::codec;
use super::counters::Counters;
use super::limits::{Bucket, ConnState};
use super::log::{self, Appended, Entry, Head, Retention, Sql};
use super::outbox::{self, presence_delay_ms, Conflation, Outbox, Payload, To};
use super::peer::{info_raw, Identity, Peer};
use super::presence::{Change, Presence};
use super::rpc::{
    ClientPublish, ConnectRequest, EphemeralResult, History, PublishRequest, PublishResult,
    RoomInfo, StorageStats, Transport, UserEntry,
};
use super::schedule::{Reason, Schedule};
use super::shard::UpItem;
use super::sharded::Role;
use super::webhooks::{self, Delivery, Outcome, Status};
use crate::auth::LEEWAY_SECS;
use crate::config::{Limits, Webhooks};
use crate::error::{close, Error, Result};
use crate::protocol::{
    self, check_publish, error_frame, ClientFrame, From, PresenceOp, PresenceUser, Resume,
    ServerFrame,
};

/// Most users listed in `welcome.presence` (contract §5).
pub const MAX_PRESENCE_USERS: usize = 100;

/// Sockets whose token runs out within this many seconds of an expiry alarm are closed by
/// that same alarm, so tokens minted together cost one wake-up, not one each.
pub const EXPIRY_COALESCE_SECS: i64 = 5;

/// Something the Durable Object must do, in the order the core returned it.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect<H> {
    /// Send `text` to the socket now.
    Send {
        /// The socket.
        to: H,
        /// One WebSocket message (a frame or an array of frames).
        text: String,
    },
    /// Close the socket with `code` (the core has already forgotten it).
    Close {
        /// The socket.
        to: H,
        /// Close code (contract §5, docs/protocol.md).
        code: u16,
        /// Close reason.
        reason: &'static str,
    },
    /// Store `identity` as the socket's attachment.
    Attach {
        /// The socket.
        to: H,
        /// What survives hibernation.
        identity: Identity,
    },
    /// Make sure [`RoomCore::flush`] runs within `delay_ms`.
    Flush {
        /// Milliseconds from now.
        delay_ms: i64,
    },
    /// Store the room's alarm for `at_ms` (ms since the unix epoch).
    SetAlarm {
        /// When to wake.
        at_ms: i64,
    },
    /// POST this batch of webhooks, then report with [`RoomCore::delivered`].
    Deliver(Delivery),
    /// Send what is ready for the room's other objects (a sharded room's sequencer or
    /// shards; docs/sharding.md).
    Pump,
    /// Write a structured log line.
    Log {
        /// The line's `event`.
        event: &'static str,
        /// Its other fields: ids, codes and reasons only, never payloads or tokens.
        fields: Vec<(&'static str, String)>,
    },
}

/// What the flush hands the runtime for one socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Out<'a> {
    /// The batch's messages shared by every socket of this kind (`watches`: it receives
    /// presence frames), the same slice for all of them: convert it once.
    Shared {
        /// Which batch of this flush (a new batch has new messages).
        batch: usize,
        /// Which kind of socket.
        watches: bool,
        /// The messages.
        messages: &'a [String],
    },
    /// Messages for this socket alone.
    Own(&'a [String]),
}

/// The outcome of a publish from the server API.
#[derive(Debug)]
pub enum Published {
    /// A durable message (new or duplicate).
    Durable(PublishResult),
    /// An ephemeral message.
    Ephemeral(EphemeralResult),
}

/// The room.
#[derive(Debug)]
pub struct RoomCore<H> {
    pub(in crate::room) limits: Limits,
    pub(in crate::room) head: Head,
    /// Open connections; `index` finds one by connection id.
    pub(in crate::room) peers: Vec<Peer<H>>,
    index: HashMap<String, usize>,
    pub(in crate::room) presence: Presence,
    pub(in crate::room) outbox: Outbox,
    pub(in crate::room) schedule: Schedule,
    /// When the pending flush runs (ms), if one is pending.
    flush_due: Option<i64>,
    /// The room's name and tenant, for webhook bodies.
    room: String,
    tenant: Option<String>,
    /// The webhook outbox, when webhooks are configured.
    pub(in crate::room) hooks: Option<webhooks::Outbox>,
    /// Webhook events produced by the current call, written by [`RoomCore::commit`] in
    /// the same synchronous step (so the same atomic write) as what produced them.
    hook_queue: Vec<String>,
    /// What an operator sees (`info`).
    pub(in crate::room) counters: Counters,
    /// Publish buckets of client HTTP publishes, per user (docs/protocol.md §13). Memory
    /// only, like the sockets' buckets and for the same reason: the room is evicted only
    /// after ~10 s without events, by when every bucket has refilled, so losing them
    /// loses nothing a client could not have had anyway.
    http_buckets: HashMap<String, Bucket>,
    /// The object's part in a sharded room (docs/sharding.md); `Plain` for every room
    /// not listed in `SHARDED_ROOMS`, whose paths below then run exactly as before.
    pub(in crate::room) role: Role<H>,
}

/// Client HTTP publishers whose buckets are kept before full ones are forgotten (a full
/// bucket is what a forgotten one starts as, so dropping it changes nothing).
const MAX_HTTP_BUCKETS: usize = 1024;

/// The connection id that names a client HTTP publish in `from.conn` when it did not name
/// its own open connection: `h_` + the user, stable across requests, so a receiver can
/// group a user's HTTP publishes; it never collides with a socket's `c_` id.
pub fn http_conn(user: &str) -> String {
    format!("h_{user}")
}

impl<H: Clone> RoomCore<H> {
    /// The room as storage and the runtime's sockets describe it: after construction or a
    /// wake-up. `sockets` are the runtime's open sockets with their attachments (those the
    /// room already closed are skipped); `alarm` is the stored alarm.
    ///
    /// # Errors
    ///
    /// `Internal` when storage fails.
    pub fn load(
        db: &dyn Sql,
        limits: Limits,
        now: i64,
        new_epoch: &dyn Fn() -> String,
        sockets: impl IntoIterator<Item = (H, Identity)>,
        alarm: Option<i64>,
    ) -> Result<Self> {
        let head = log::open(db, new_epoch)?;
        let mut core = RoomCore {
            limits,
            head,
            peers: Vec::new(),
            index: HashMap::new(),
            presence: Presence::default(),
            outbox: Outbox::default(),
            schedule: Schedule::new(alarm),
            flush_due: None,
            room: String::new(),
            tenant: None,
            hooks: None,
            hook_queue: Vec::new(),
            counters: Counters {
                since_ms: now,
                ..Counters::default()
            },
            http_buckets: HashMap::new(),
            role: Role::Plain,
        };
        for (handle, id) in sockets {
            if !id.gone && !core.index.contains_key(&id.conn) {
                core.insert(handle, id, now);
            }
        }
        Ok(core)
    }

    /// Finishes a (re)start: the room's name (the Durable Object key `tenant/room`), its
    /// webhooks, and what the alarm must wake for now that memory is fresh — the earliest
    /// token expiry of the restored sockets, and webhooks still stored undelivered.
    ///
    /// # Errors
    ///
    /// `Internal` when storage fails.
    pub fn start(
        &mut self,
        db: &dyn Sql,
        now: i64,
        key: &str,
        hooks: Option<Webhooks>,
    ) -> Result<Vec<Effect<H>>> {
        let (tenant, room) = key.split_once('/').unwrap_or(("", key));
        self.room = room.to_string();
        self.tenant = (!tenant.is_empty()).then(|| tenant.to_string());
        let mut fx = Vec::new();
        if let Some(config) = hooks {
            let outbox = webhooks::Outbox::open(db, config)?;
            let pending = outbox.counts(db)?.0;
            // A backoff stored before the restart goes on where it was (the alarm that
            // woke the room is usually its own retry, due now).
            let at = outbox.resume_at(now);
            self.hooks = Some(outbox);
            if pending > 0 {
                self.want(&mut fx, Reason::Webhook, at);
            }
        }
        if let Some(exp) = self.peers.iter().map(|p| p.id.exp).min() {
            self.want_expiry(&mut fx, exp);
        }
        Ok(fx)
    }

    /// What a resume from `since` in `epoch` gets: whether the position was recovered,
    /// and the records after it (none when it was not, or when either is missing).
    ///
    /// # Errors
    ///
    /// `Internal` when storage fails.
    pub(in crate::room) fn replay(
        &self,
        db: &dyn Sql,
        since: Option<u64>,
        epoch: Option<&str>,
    ) -> Result<(bool, Vec<log::Record>)> {
        let replay = match (since, epoch) {
            (Some(since), Some(epoch)) => {
                log::resume(db, &self.head, since, epoch, self.limits.history_limit)?
            }
            _ => log::Resumed::Lost,
        };
        Ok(match replay {
            log::Resumed::Recovered(records) => (true, records),
            log::Resumed::Lost => (false, Vec::new()),
        })
    }

    /// The log's epoch and last seq.
    pub fn head(&self) -> &Head {
        &self.head
    }

    /// Open connections.
    pub fn connections(&self) -> usize {
        self.peers.len()
    }

    /// Users with a client HTTP publish bucket in memory.
    pub fn http_buckets_len(&self) -> usize {
        self.http_buckets.len()
    }

    /// The peer with connection id `conn`, if it is open.
    pub fn peer(&self, conn: &str) -> Option<&Peer<H>> {
        self.index.get(conn).map(|&i| &self.peers[i])
    }

    pub(in crate::room) fn peer_mut(&mut self, conn: &str) -> Option<&mut Peer<H>> {
        self.index.get(conn).map(|&i| &mut self.peers[i])
    }

    pub(in crate::room) fn retention(&self) -> Retention {
        Retention {
            history_limit: self.limits.history_limit,
            dedup_window_ms: (self.limits.dedup_window_secs as i64).saturating_mul(1000),
        }
    }

    pub(in crate::room) fn insert(&mut self, handle: H, id: Identity, now: i64) -> Change {
        let change = self.presence.add(&id);
        if change == Change::Joined {
            self.hook_presence("join", &id, now);
        }
        self.insert_counted(handle, id, now);
        change
    }

    /// Adds a peer whose socket presence has already counted (a shard's joining socket).
    pub(in crate::room) fn insert_counted(&mut self, handle: H, id: Identity, now: i64) {
        if self.peers.is_empty() {
            self.hook_room("occupied", now);
        }
        self.index.insert(id.conn.clone(), self.peers.len());
        self.peers.push(Peer {
            handle,
            id,
            since: self.outbox.mark(),
            conn: ConnState::new(&self.limits, now),
            flow: Default::default(),
        });
    }

    /// Forgets a peer and announces `leave` when it was its user's last socket.
    fn remove(&mut self, fx: &mut Vec<Effect<H>>, now: i64, conn: &str) -> Option<Peer<H>> {
        let i = self.index.remove(conn)?;
        let peer = self.peers.swap_remove(i);
        if let Some(moved) = self.peers.get(i) {
            self.index.insert(moved.id.conn.clone(), i);
        }
        if self.presence.remove(&peer.id) == Change::Left {
            self.announce(fx, now, PresenceOp::Leave, &peer.id);
            self.hook_presence("leave", &peer.id, now);
        }
        if self.peers.is_empty() {
            self.hook_room("vacated", now);
        }
        Some(peer)
    }

    // ---- events -----------------------------------------------------------------------

    /// A verified socket asks to join (the Worker checked its token). On success the
    /// effects attach its identity, send `welcome` and any replay, and announce the join.
    ///
    /// # Errors
    ///
    /// `TooManyConnections` over the per-user cap; `Internal` when storage fails. Nothing
    /// has changed in the room then.
    pub fn connect(
        &mut self,
        db: &dyn Sql,
        now: i64,
        to: H,
        conn: String,
        req: &ConnectRequest,
    ) -> Result<Vec<Effect<H>>> {
        let existing = self.presence.sockets_of(&req.user);
        if existing >= self.limits.max_connections_per_user as usize {
            self.counters.rejected("too_many_connections");
            return Err(Error::TooManyConnections(format!(
                "user {:?} already has {existing} sockets in this room; MAX_CONNECTIONS_PER_USER is {}",
                req.user, self.limits.max_connections_per_user
            )));
        }
        if matches!(self.role, Role::Shard(_)) {
            return Ok(self.begin_join(to, conn, req));
        }
        // Resume is decided and replayed inside this one call: no other event can run in
        // between, so no live message can reach the socket ahead of its replay (§6).
        let requested = req.since.is_some() || req.epoch.is_some();
        let (recovered, records) = self.replay(db, req.since, req.epoch.as_deref())?;
        let frames = records
            .iter()
            .map(codec::record)
            .collect::<Result<Vec<_>>>()?;

        let id = Identity {
            conn: conn.clone(),
            user: req.user.clone(),
            write: req.write,
            exp: req.exp,
            info: req.info.clone(),
            presence: req.presence,
            listed: req.transport != Transport::Poll,
            gone: false,
        };
        let mut fx = vec![Effect::Attach {
            to: to.clone(),
            identity: id.clone(),
        }];
        if self.insert(to.clone(), id.clone(), now) == Change::Joined {
            self.announce(&mut fx, now, PresenceOp::Join, &id);
        }
        let infos: Vec<(String, Box<RawValue>)> = self
            .presence
            .users()
            .iter()
            .take(MAX_PRESENCE_USERS)
            .map(|(user, m)| (user.clone(), info_raw(m.info.as_deref())))
            .collect();
        let greeting = Greeting {
            epoch: self.head.epoch.clone(),
            seq: self.head.last_seq,
            resume: Resume {
                requested,
                recovered: requested && recovered,
                replayed: frames.len() as u64,
            },
            count: self.presence.users().len(),
            users: infos,
        };
        self.greet(&mut fx, now, &conn, req, &greeting, frames);
        Ok(fx)
    }

    /// Sends a new socket its `welcome` and replay, and counts and logs the connect.
    pub(in crate::room) fn greet(
        &mut self,
        fx: &mut Vec<Effect<H>>,
        now: i64,
        conn: &str,
        req: &ConnectRequest,
        g: &Greeting,
        frames: Vec<String>,
    ) {
        self.counters.connects += 1;
        self.counters.peak_connections = self.counters.peak_connections.max(self.peers.len());
        let welcome = ServerFrame::Welcome {
            room: &req.room,
            conn,
            user: &req.user,
            epoch: &g.epoch,
            seq: g.seq,
            resume: g.resume.clone(),
            presence: protocol::Presence {
                count: g.count,
                users: g
                    .users
                    .iter()
                    .map(|(user, info)| PresenceUser { user, info })
                    .collect(),
            },
            receipts: true,
        }
        .to_json();
        // Welcome and replay leave at once, ahead of anything queued later. The replay is
        // coalesced like live traffic: one message per up to 1,000 frames (256 KiB).
        let mut texts = vec![welcome];
        texts.extend(outbox::messages(frames.iter().map(String::as_str)));
        for text in texts {
            self.send_now(fx, now, conn, text);
        }
        self.want_expiry(fx, req.exp);
        let transport = match req.transport {
            Transport::WebSocket => "websocket",
            Transport::Sse => "sse",
            Transport::Poll => "poll",
        };
        fx.push(log_line(
            "socket.open",
            &[
                ("conn", conn.to_string()),
                ("user", req.user.clone()),
                ("transport", transport.into()),
            ],
        ));
    }

    /// A text message from socket `conn`: one frame or an array of them, each handled in
    /// order until one of them ends the connection.
    pub fn message(&mut self, db: &dyn Sql, now: i64, conn: &str, text: &str) -> Vec<Effect<H>> {
        let mut fx = Vec::new();
        if self.peer(conn).is_none() {
            self.hold_for_join(conn, text);
            return fx;
        }
        if text.len() > self.limits.max_message_bytes {
            let e = Error::TooLarge(format!(
                "message is {} bytes; MAX_MESSAGE_BYTES is {}",
                text.len(),
                self.limits.max_message_bytes
            ));
            self.reject(&mut fx, now, conn, None, &e);
            return fx;
        }
        let frames = match protocol::parse_message(text) {
            Ok(frames) => frames,
            Err(e) => {
                self.reject(&mut fx, now, conn, None, &e);
                return fx;
            }
        };
        for parsed in frames {
            // A frame may have closed the connection: the rest of the array is not read.
            if self.peer(conn).is_none() {
                break;
            }
            match parsed {
                Err((id, e)) => self.reject(&mut fx, now, conn, id.as_deref(), &e),
                Ok(ClientFrame::Publish(p)) => self.on_publish(&mut fx, db, now, conn, &p),
                Ok(ClientFrame::Ephemeral(p)) => self.on_ephemeral(&mut fx, now, conn, &p),
                Ok(ClientFrame::Received(r)) => self.on_received(conn, &r),
            }
        }
        fx
    }

    /// A binary message from socket `conn`: refused (frames are JSON text).
    pub fn binary(&mut self, now: i64, conn: &str) -> Vec<Effect<H>> {
        let mut fx = Vec::new();
        if self.peer(conn).is_some() {
            let e =
                Error::BadFrame("binary messages are not accepted; send JSON text frames".into());
            self.reject(&mut fx, now, conn, None, &e);
        }
        fx
    }

    /// The runtime reports socket `conn` closed or failed: forget it.
    pub fn closed(&mut self, now: i64, conn: &str) -> Vec<Effect<H>> {
        let mut fx = Vec::new();
        if self.remove(&mut fx, now, conn).is_none() {
            self.abandon_join(&mut fx, now, conn);
        }
        fx
    }

    /// The alarm fired: close every socket whose token has expired (or will within
    /// [`EXPIRY_COALESCE_SECS`]), start delivering webhooks when they are due, and store
    /// the alarm for whatever comes next.
    pub fn alarm(&mut self, db: &dyn Sql, now: i64) -> Vec<Effect<H>> {
        let due = self.schedule.fired(now);
        let mut fx = Vec::new();
        let horizon = now / 1000 + EXPIRY_COALESCE_SECS;
        let expired: Vec<String> = self
            .peers
            .iter()
            .filter(|p| p.id.expired(horizon))
            .map(|p| p.id.conn.clone())
            .collect();
        for conn in &expired {
            let last = error_frame(None, &Error::TokenExpired);
            self.drop_peer(
                &mut fx,
                now,
                conn,
                close::TOKEN_EXPIRED,
                "token_expired",
                Some(last),
            );
        }
        self.schedule.cancel(Reason::Expiry);
        if let Some(exp) = self.peers.iter().map(|p| p.id.exp).min() {
            self.want_expiry(&mut fx, exp);
        }
        fx.push(log_line(
            "room.alarm",
            &[("expired_closed", expired.len().to_string())],
        ));
        if due.contains(&Reason::Webhook) {
            self.deliver_next(&mut fx, db, now);
        }
        if due.contains(&Reason::Fanout) {
            self.fanout_alarm(&mut fx, db, now);
        }
        if let Some(at_ms) = self.schedule.rearm() {
            fx.push(Effect::SetAlarm { at_ms });
        }
        fx.extend(self.commit(db, now));
        fx
    }

    /// Storing the alarm failed; the next request for one tries again.
    pub fn alarm_failed(&mut self) {
        self.schedule.failed();
    }

    /// Writes the webhook events the last call produced (call it right after, in the same
    /// synchronous step, so they commit with what produced them), and asks the alarm to
    /// deliver them unless a delivery or a retry is already under way.
    pub fn commit(&mut self, db: &dyn Sql, now: i64) -> Vec<Effect<H>> {
        let mut fx = Vec::new();
        if self.hook_queue.is_empty() {
            return fx;
        }
        let events = std::mem::take(&mut self.hook_queue);
        let Some(hooks) = self.hooks.as_mut() else {
            return fx;
        };
        for event in &events {
            if let Err(e) = hooks.record(db, &self.head.epoch, now, event) {
                fx.push(log_line(
                    "webhook.record_failed",
                    &[("detail", e.to_string())],
                ));
            }
        }
        let idle = hooks.in_flight.is_none() && hooks.attempts == 0;
        if idle {
            self.want(&mut fx, Reason::Webhook, now);
        }
        fx
    }

    /// The receiver's answer to the batch ending at `upto`; `jitter` in [0, 1) spreads the
    /// retry. A 2xx deletes the batch and starts the next one; anything else schedules a
    /// retry, after which events older than `WEBHOOK_MAX_AGE_SECS` become dead.
    pub fn delivered(
        &mut self,
        db: &dyn Sql,
        now: i64,
        upto: u64,
        outcome: &Outcome,
        jitter: f64,
    ) -> Vec<Effect<H>> {
        let mut fx = Vec::new();
        let Some(hooks) = self.hooks.as_mut() else {
            return fx;
        };
        if webhooks::accepted(outcome) {
            if let Err(e) = hooks.delivered(db, upto) {
                fx.push(log_line("webhook.ack_failed", &[("detail", e.to_string())]));
            }
            self.deliver_next(&mut fx, db, now);
            return fx;
        }
        let why = match outcome {
            Outcome::Status(s) => format!("HTTP {s}"),
            Outcome::Failed(e) => e.clone(),
        };
        let (delay, stored) = hooks.failed(db, now, why.clone(), jitter);
        if let Err(e) = stored {
            fx.push(log_line(
                "webhook.state_failed",
                &[("detail", e.to_string())],
            ));
        }
        let attempts = hooks.attempts;
        match hooks.expire(db, now) {
            Ok(0) => {}
            Ok(n) => fx.push(log_line("webhook.dead", &[("events", n.to_string())])),
            Err(e) => fx.push(log_line(
                "webhook.expire_failed",
                &[("detail", e.to_string())],
            )),
        }
        fx.push(log_line(
            "webhook.retry",
            &[
                ("error", why),
                ("attempts", attempts.to_string()),
                ("delay_ms", delay.to_string()),
            ],
        ));
        self.want(&mut fx, Reason::Webhook, now + delay);
        fx
    }

    /// `GET /v1/rooms/{room}/webhooks`.
    ///
    /// # Errors
    ///
    /// `Internal` when storage fails.
    pub fn webhook_status(&self, db: &dyn Sql) -> Result<Status> {
        let Some(hooks) = &self.hooks else {
            return Ok(Status {
                enabled: false,
                pending: 0,
                dead: 0,
                next_attempt_ms: None,
                last_error: None,
                attempts: 0,
            });
        };
        let (pending, dead) = hooks.counts(db)?;
        Ok(Status {
            enabled: true,
            pending,
            dead,
            next_attempt_ms: self.schedule.wanted(Reason::Webhook),
            last_error: hooks.last_error.clone(),
            attempts: hooks.attempts,
        })
    }

    /// `POST /v1/rooms/{room}/webhooks/retry`: dead events are queued again and delivery
    /// is attempted at once. Returns how many were dead.
    ///
    /// # Errors
    ///
    /// `Internal` when storage fails.
    pub fn webhook_retry(&mut self, db: &dyn Sql, now: i64) -> Result<(u64, Vec<Effect<H>>)> {
        let mut fx = Vec::new();
        let Some(hooks) = self.hooks.as_mut() else {
            return Ok((0, fx));
        };
        let requeued = hooks.requeue(db, now)?;
        if hooks.in_flight.is_none() {
            self.want(&mut fx, Reason::Webhook, now);
        }
        Ok((requeued, fx))
    }

    fn deliver_next(&mut self, fx: &mut Vec<Effect<H>>, db: &dyn Sql, now: i64) {
        let Some(hooks) = self.hooks.as_mut() else {
            return;
        };
        if hooks.in_flight.is_some() {
            return;
        }
        if let Err(e) = hooks.expire(db, now) {
            fx.push(log_line(
                "webhook.expire_failed",
                &[("detail", e.to_string())],
            ));
        }
        let head = (
            self.room.as_str(),
            self.tenant.as_deref(),
            self.head.epoch.as_str(),
        );
        match hooks.next_batch(db, head, now) {
            Ok(Some(batch)) => fx.push(Effect::Deliver(batch)),
            Ok(None) => {
                // Nothing left to send (all delivered, or the rest dead): the next event
                // starts a delivery at once instead of waiting out a backoff.
                if let Err(e) = hooks.reset(db) {
                    fx.push(log_line(
                        "webhook.state_failed",
                        &[("detail", e.to_string())],
                    ));
                }
                self.schedule.cancel(Reason::Webhook);
            }
            Err(e) => {
                fx.push(log_line(
                    "webhook.batch_failed",
                    &[("detail", e.to_string())],
                ));
                self.want(fx, Reason::Webhook, now + webhooks::MAX_BACKOFF_MS);
            }
        }
    }

    pub(in crate::room) fn want(&mut self, fx: &mut Vec<Effect<H>>, reason: Reason, at: i64) {
        if let Some(at_ms) = self.schedule.want(reason, at) {
            fx.push(Effect::SetAlarm { at_ms });
        }
    }

    /// Wakes for a token expiring at `exp` (unix seconds) unless an earlier expiry is
    /// already wanted.
    fn want_expiry(&mut self, fx: &mut Vec<Effect<H>>, exp: i64) {
        let due = (exp + LEEWAY_SECS + 1) * 1000;
        let at = self
            .schedule
            .wanted(Reason::Expiry)
            .map_or(due, |w| w.min(due));
        self.want(fx, Reason::Expiry, at);
    }

    pub(in crate::room) fn hook_presence(&mut self, op: &str, id: &Identity, now: i64) {
        if self.hooks.as_ref().is_some_and(|h| h.config.kinds.presence) {
            let info = id.info_raw();
            let event = webhooks::PresenceEvent {
                kind: "presence",
                op,
                user: &id.user,
                info: &info,
                ts: now,
            };
            self.hook_queue.extend(serde_json::to_string(&event).ok());
        }
    }

    pub(in crate::room) fn hook_room(&mut self, op: &str, now: i64) {
        if self.hooks.as_ref().is_some_and(|h| h.config.kinds.room) {
            let event = webhooks::RoomEvent {
                kind: "room",
                op,
                ts: now,
            };
            self.hook_queue.extend(serde_json::to_string(&event).ok());
        }
    }

    /// A publish from the server API, or a client's HTTP publish (`req.client`).
    ///
    /// # Errors
    ///
    /// `BadRequest` for an id/event/key the contract refuses (the Worker checks first);
    /// `RateLimited` when a client's bucket is empty (nothing was published);
    /// `Internal` when storage fails.
    pub fn publish(
        &mut self,
        db: &dyn Sql,
        now: i64,
        req: &PublishRequest,
    ) -> Result<(Published, Vec<Effect<H>>)> {
        check_publish(
            req.id.as_deref(),
            &req.event,
            req.key.as_deref(),
            req.ephemeral,
        )
        .map_err(|e| Error::BadRequest(e.to_string()))?;
        let mut fx = Vec::new();
        let (from, except) = match &req.client {
            None => (req.from.clone(), req.exclude_conn.clone()),
            Some(client) => {
                self.admit_http(now, &client.user)?;
                self.http_publisher(client)
            }
        };
        let (from, except) = (from.as_ref(), except.as_deref());
        let delivered = match &self.role {
            // The shards' sockets as they last said, less the one skipped (if it is open:
            // the sequencer cannot tell, so this is an estimate for a sharded room).
            Role::Sequencer(s) => s
                .fanout
                .connections()
                .saturating_sub(usize::from(except.is_some())),
            _ => self
                .peers
                .iter()
                .filter(|p| Some(p.id.conn.as_str()) != except)
                .count(),
        };
        let published = if req.ephemeral {
            let signal = Signal {
                id: req.id.as_deref(),
                event: &req.event,
                key: req.key.as_deref(),
                data: &req.data,
            };
            self.fan_out_ephemeral(&mut fx, now, signal, from, except);
            Published::Ephemeral(EphemeralResult {
                room: req.room.clone(),
                ephemeral: true,
                delivered,
            })
        } else {
            let id = req.id.as_deref().unwrap_or_default();
            let outcome = self.append(&mut fx, db, now, id, &req.event, &req.data, from, except)?;
            Published::Durable(PublishResult {
                room: req.room.clone(),
                epoch: self.head.epoch.clone(),
                seq: outcome.seq(),
                duplicate: matches!(outcome, Appended::Duplicate(_)),
                delivered: if matches!(outcome, Appended::New(_)) {
                    delivered
                } else {
                    0
                },
            })
        };
        Ok((published, fx))
    }

    /// Charges a client HTTP publish to its user's bucket in this room.
    pub(in crate::room) fn admit_http(&mut self, now: i64, user: &str) -> Result<()> {
        let limits = self.limits;
        if self.http_buckets.len() >= MAX_HTTP_BUCKETS && !self.http_buckets.contains_key(user) {
            self.http_buckets.retain(|_, b| !b.is_full(&limits, now));
        }
        self.http_buckets
            .entry(user.to_string())
            .or_insert_with(|| Bucket::full(&limits, now))
            .take(&limits, now)
            .map_err(Error::RateLimited)
    }

    /// Who a client HTTP publish is from, and which connection it skips: the client's
    /// own connection when it named an open one of the same user (skipped unless
    /// `echo`), else `h_<user>` and no one.
    pub(in crate::room) fn http_publisher(
        &self,
        client: &ClientPublish,
    ) -> (Option<From>, Option<String>) {
        let own = client
            .conn
            .as_deref()
            .filter(|c| self.peer(c).is_some_and(|p| p.id.user == client.user));
        let from = From {
            user: client.user.clone(),
            conn: own.map_or_else(|| http_conn(&client.user), str::to_string),
        };
        let except = own.filter(|_| !client.echo).map(str::to_string);
        (Some(from), except)
    }

    /// Sends everything queued: one WebSocket message per socket per batch, through
    /// `send` (which returns false when the runtime refused the send). A socket for which
    /// a batch would exceed its bound of unread data loses the batch's ephemeral messages;
    /// one that already has more than its bound unread is closed with 4009 instead of sent
    /// to (docs/protocol.md §12).
    pub fn flush(&mut self, now: i64, send: &mut dyn FnMut(&H, Out<'_>) -> bool) -> Vec<Effect<H>> {
        self.flush_due = None;
        let mut fx = Vec::new();
        let limits = self.limits;
        for round in 0.. {
            let batch = self.outbox.take();
            if batch.is_empty() {
                break;
            }
            let shared_bytes = [
                outbox::bytes(batch.shared(false)),
                outbox::bytes(batch.shared(true)),
            ];
            let (mut failed, mut slow) = (Vec::new(), Vec::new());
            let (mut sends, mut deliveries) = (0u64, 0u64);
            // The two least unread among sockets that send receipts: each socket is
            // measured against the best of the others (see `Flow::over`).
            let mut best: [(u64, usize); 2] = [(u64::MAX, usize::MAX); 2];
            for (i, p) in self.peers.iter().enumerate() {
                if let Some(unread) = p.flow.confirmed_pending() {
                    if unread < best[0].0 {
                        best = [(unread, i), best[0]];
                    } else if unread < best[1].0 {
                        best[1] = (unread, i);
                    }
                }
            }
            for (i, peer) in self.peers.iter_mut().enumerate() {
                let others = if best[0].1 == i { best[1].0 } else { best[0].0 };
                let baseline = if others == u64::MAX { 0 } else { others };
                let watches = peer.id.presence;
                let conn = peer.id.conn.as_str();
                let mut payload = batch.payload(conn, peer.since, watches);
                let size = |p: &Payload| match p {
                    Payload::Shared => (
                        batch.shared(watches).len(),
                        shared_bytes[usize::from(watches)],
                    ),
                    Payload::Own(m) => (m.len(), outbox::bytes(m)),
                    Payload::Nothing => (0, 0),
                };
                let (mut msgs, mut bytes) = size(&payload);
                if msgs == 0 {
                    continue;
                }
                if !peer.flow.fits(&limits, now, bytes) {
                    // Beyond the bound with this batch: the ephemeral messages go first.
                    if let Some(durable) = batch.without_ephemeral(conn, peer.since, watches) {
                        payload = durable;
                        (msgs, bytes) = size(&payload);
                    }
                    // Closed only once what it has already left unread is over the bound
                    // (beyond the best of its peers): a socket that kept up takes one
                    // batch of any size, since a room catching up after a stall sends
                    // healthy readers more than the bound at once.
                    if peer.flow.over(&limits, now, baseline) {
                        slow.push((peer.id.conn.clone(), baseline));
                        continue;
                    }
                }
                let out = match &payload {
                    Payload::Shared => Out::Shared {
                        batch: round,
                        watches,
                        messages: batch.shared(watches),
                    },
                    Payload::Own(m) => Out::Own(m),
                    Payload::Nothing => continue,
                };
                if send(&peer.handle, out) {
                    peer.flow.sent(&limits, now, msgs as u64, bytes);
                    sends += msgs as u64;
                    deliveries += batch.frames(&payload, conn, peer.since, watches) as u64;
                } else {
                    failed.push(peer.id.conn.clone());
                }
            }
            self.counters.sends += sends;
            self.counters.deliveries += deliveries;
            // A socket whose send throws is closing already (workerd ignores sends to a
            // socket whose peer vanished): forget it; its close event finds nothing.
            for conn in failed {
                if let Some(peer) = self.remove(&mut fx, now, &conn) {
                    self.counters.kicked(close::INTERNAL);
                    fx.push(Effect::Close {
                        to: peer.handle,
                        code: close::INTERNAL,
                        reason: "send failed",
                    });
                }
            }
            for (conn, baseline) in slow {
                let pending = self.peer(&conn).map_or(0, |p| p.flow.pending(&limits, now));
                fx.push(log_line(
                    "socket.kick",
                    &[
                        ("conn", conn.clone()),
                        ("code", close::TOO_SLOW.to_string()),
                        ("reason", "too slow".into()),
                        ("pending_bytes", pending.to_string()),
                        ("baseline_bytes", baseline.to_string()),
                    ],
                ));
                self.drop_peer(&mut fx, now, &conn, close::TOO_SLOW, "too_slow", None);
            }
        }
        fx
    }

    /// Webhook events not yet delivered (0 when webhooks are off or storage fails).
    pub fn webhooks_pending(&self, db: &dyn Sql) -> u64 {
        self.hooks
            .as_ref()
            .and_then(|h| h.counts(db).ok())
            .map_or(0, |(pending, _)| pending)
    }

    /// `GET /v1/rooms/{room}`.
    pub fn info(&self, db: &dyn Sql, room: String, storage: StorageStats) -> RoomInfo {
        let webhooks = self
            .hooks
            .as_ref()
            .and_then(|h| h.counts(db).ok())
            .map(|(pending, dead)| super::rpc::WebhookBacklog { pending, dead });
        RoomInfo {
            room,
            epoch: self.head.epoch.clone(),
            last_seq: self.head.last_seq,
            connections: self.peers.len(),
            users: self
                .presence
                .users()
                .iter()
                .map(|(user, m)| UserEntry {
                    user: user.clone(),
                    connections: m.sockets,
                    info: info_raw(m.info.as_deref()),
                })
                .collect(),
            storage,
            counters: self.counters.clone(),
            webhooks,
        }
    }

    /// `GET /v1/rooms/{room}/messages`.
    ///
    /// # Errors
    ///
    /// `Internal` when storage fails.
    pub fn history(&self, db: &dyn Sql, since: u64, limit: u32) -> Result<History> {
        let messages = log::read_after(db, since, limit)?
            .iter()
            .map(|r| {
                let frame = codec::record(r)?;
                RawValue::from_string(frame).map_err(|e| Error::Internal(e.to_string()))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(History {
            epoch: self.head.epoch.clone(),
            last_seq: self.head.last_seq,
            messages,
        })
    }

    // ---- what the handlers share --------------------------------------------------------

    /// Dedup, sequence and store, then fan out a new message to every socket but `except`.
    #[allow(clippy::too_many_arguments)]
    pub(in crate::room) fn append(
        &mut self,
        fx: &mut Vec<Effect<H>>,
        db: &dyn Sql,
        now: i64,
        id: &str,
        event: &str,
        data: &RawValue,
        from: Option<&From>,
        except: Option<&str>,
    ) -> Result<Appended> {
        let retention = self.retention();
        let entry = Entry {
            id,
            event,
            data: data.get(),
            from,
            ts: now,
        };
        let outcome = log::append(db, &mut self.head, retention, entry)?;
        match outcome {
            Appended::New(_) => self.counters.messages += 1,
            Appended::Duplicate(_) => self.counters.duplicates += 1,
        }
        if let Appended::New(seq) = outcome {
            let frame = codec::message(seq, id, event, data, from, now);
            let forward = self
                .hooks
                .as_ref()
                .is_some_and(|h| h.config.kinds.message && h.config.forwards_event(event));
            if forward {
                // The webhook event is the message frame with `kind` in place of `type`.
                let body = frame
                    .strip_prefix(r#"{"type":"message","#)
                    .unwrap_or(&frame);
                self.hook_queue
                    .push(format!(r#"{{"kind":"message",{body}"#));
            }
            let except = except.map(str::to_string);
            if let Role::Sequencer(_) = self.role {
                self.fan_out_to_shards(fx, now, Some(seq), frame, except, None);
            } else {
                self.queue(fx, now, frame, To::All { except });
            }
        }
        Ok(outcome)
    }

    /// Fans out an ephemeral message: no storage at all, conflated while queued.
    pub(in crate::room) fn fan_out_ephemeral(
        &mut self,
        fx: &mut Vec<Effect<H>>,
        now: i64,
        s: Signal<'_>,
        from: Option<&From>,
        except: Option<&str>,
    ) {
        self.counters.ephemeral += 1;
        let frame = codec::ephemeral(s.id, s.event, s.key, s.data, from, now);
        let signal: Conflation = (
            from.map(|f| f.conn.clone()),
            s.event.to_string(),
            s.key.map(str::to_string),
        );
        let except = except.map(str::to_string);
        if let Role::Sequencer(_) = self.role {
            self.fan_out_to_shards(fx, now, None, frame, except, Some(signal));
            return;
        }
        self.outbox
            .push_ephemeral(frame, To::All { except }, signal);
        self.want_flush(fx, now, 0);
    }

    /// Queues `frame` for `to` and makes sure a flush follows.
    pub(in crate::room) fn queue(
        &mut self,
        fx: &mut Vec<Effect<H>>,
        now: i64,
        frame: String,
        to: To,
    ) {
        self.outbox.push(frame, to);
        self.want_flush(fx, now, 0);
    }

    /// Sends `frame` to one socket: at once when nothing is queued, otherwise behind what
    /// is queued, so that the socket sees frames in the order the room made them.
    pub(in crate::room) fn reply(
        &mut self,
        fx: &mut Vec<Effect<H>>,
        now: i64,
        conn: &str,
        frame: String,
    ) {
        if self.outbox.is_empty() {
            self.send_now(fx, now, conn, frame);
        } else {
            self.queue(fx, now, frame, To::One(conn.to_string()));
        }
    }

    pub(in crate::room) fn send_now(
        &mut self,
        fx: &mut Vec<Effect<H>>,
        now: i64,
        conn: &str,
        text: String,
    ) {
        let limits = self.limits;
        if let Some(peer) = self.peer_mut(conn) {
            peer.flow.sent(&limits, now, 1, text.len() as u64);
            fx.push(Effect::Send {
                to: peer.handle.clone(),
                text,
            });
        }
    }

    pub(in crate::room) fn want_flush(&mut self, fx: &mut Vec<Effect<H>>, now: i64, delay_ms: i64) {
        let due = now + delay_ms;
        if self.flush_due.is_some_and(|at| at <= due) {
            return;
        }
        self.flush_due = Some(due);
        fx.push(Effect::Flush { delay_ms });
    }

    /// Queues a presence frame for every socket that receives presence but the one it is
    /// about (built only if anyone does). Presence may wait a little
    /// ([`presence_delay_ms`], growing with the room), so a join storm into a big room
    /// costs one send per socket per interval, not one per join.
    pub(in crate::room) fn announce(
        &mut self,
        fx: &mut Vec<Effect<H>>,
        now: i64,
        op: PresenceOp,
        id: &Identity,
    ) {
        match self.role {
            Role::Plain => {}
            // A shard reports its users' joins (with the join itself) and leaves; the
            // sequencer fans the frame out to every shard.
            Role::Shard(_) => {
                if op == PresenceOp::Leave {
                    self.send_up(
                        fx,
                        UpItem::Leave {
                            conn: id.conn.clone(),
                            user: id.user.clone(),
                            info: id.info.clone(),
                        },
                        None,
                    );
                }
                return;
            }
            Role::Sequencer(_) => {
                self.announce_to_shards(fx, op, id);
                return;
            }
        }
        let watchers = self.presence.watchers();
        if watchers == 0 {
            return;
        }
        let info = id.info_raw();
        let frame = ServerFrame::Presence {
            op,
            user: &id.user,
            info: &info,
        }
        .to_json();
        self.outbox.push(
            frame,
            To::Watchers {
                except: id.conn.clone(),
            },
        );
        self.want_flush(fx, now, presence_delay_ms(watchers));
    }

    /// Answers a refused frame with an `error` frame, counts it toward the connection's
    /// strikes, and closes the connection when the error or the strikes say so.
    pub(in crate::room) fn reject(
        &mut self,
        fx: &mut Vec<Effect<H>>,
        now: i64,
        conn: &str,
        id: Option<&str>,
        err: &Error,
    ) {
        if let Error::Internal(detail) = err {
            fx.push(log_line(
                "error",
                &[("conn", conn.to_string()), ("detail", detail.clone())],
            ));
        }
        self.counters.rejected(err.code());
        let frame = error_frame(id, err);
        if let Some(code) = err.close_code() {
            self.drop_peer(fx, now, conn, code, err.code(), Some(frame));
            return;
        }
        let strike = self.peer_mut(conn).and_then(|peer| {
            if err.is_bad_frame() && peer.conn.bad_frame() {
                Some((close::PROTOCOL_ERROR, "too many invalid frames"))
            } else if matches!(err, Error::TooLarge(_)) && peer.conn.too_large() {
                Some((close::TOO_BIG, "too many oversized messages"))
            } else {
                None
            }
        });
        match strike {
            None => self.reply(fx, now, conn, frame),
            Some((code, why)) => self.kick(fx, now, conn, code, why, err.code(), frame),
        }
    }

    /// Closes a misbehaving connection after `last`, with a `socket.kick` log line.
    #[allow(clippy::too_many_arguments)]
    pub(in crate::room) fn kick(
        &mut self,
        fx: &mut Vec<Effect<H>>,
        now: i64,
        conn: &str,
        code: u16,
        why: &'static str,
        reason: &'static str,
        last: String,
    ) {
        fx.push(log_line(
            "socket.kick",
            &[
                ("conn", conn.to_string()),
                ("code", code.to_string()),
                ("reason", why.to_string()),
            ],
        ));
        self.drop_peer(fx, now, conn, code, reason, Some(last));
    }

    /// The room ends a connection: what was queued for it leaves first, then `last` (its
    /// error frame), then the close; the peer is forgotten at once and its attachment
    /// marked gone, so nothing it sent later and nothing a wake-up restores revives it.
    fn drop_peer(
        &mut self,
        fx: &mut Vec<Effect<H>>,
        now: i64,
        conn: &str,
        code: u16,
        reason: &'static str,
        last: Option<String>,
    ) {
        let Some(peer) = self.peer(conn) else {
            return;
        };
        let mut texts = self.outbox.pending_for(conn, peer.since, peer.id.presence);
        texts.extend(last);
        let Some(peer) = self.remove(fx, now, conn) else {
            return;
        };
        self.counters.kicked(code);
        // A shard's socket with publishes still at the sequencer closes once they are
        // acked, as an ordinary room's socket gets its acks before its close.
        let Some(texts) = self.defer_close(conn, &peer.handle, &peer.id, texts, code, reason)
        else {
            return;
        };
        finish_close(fx, peer.handle, peer.id, texts, code, reason);
    }
}

/// Sends a closing socket what it still gets, marks its attachment gone and closes it.
pub(in crate::room) fn finish_close<H: Clone>(
    fx: &mut Vec<Effect<H>>,
    handle: H,
    id: Identity,
    texts: Vec<String>,
    code: u16,
    reason: &'static str,
) {
    for text in texts {
        fx.push(Effect::Send {
            to: handle.clone(),
            text,
        });
    }
    fx.push(Effect::Attach {
        to: handle.clone(),
        identity: Identity { gone: true, ..id },
    });
    fx.push(Effect::Close {
        to: handle,
        code,
        reason,
    });
}

/// What a new socket's `welcome` says, wherever it was decided (here, or at a sharded
/// room's sequencer).
#[derive(Debug, Clone)]
pub struct Greeting {
    /// The log's epoch.
    pub epoch: String,
    /// The head.
    pub seq: u64,
    /// The resume outcome.
    pub resume: Resume,
    /// Users present.
    pub count: usize,
    /// The first [`MAX_PRESENCE_USERS`] of them with their `info`.
    pub users: Vec<(String, Box<RawValue>)>,
}

/// An ephemeral message as the handlers pass it on.
#[derive(Debug, Clone, Copy)]
pub struct Signal<'a> {
    /// The publisher's id, if it gave one.
    pub id: Option<&'a str>,
    /// Event name.
    pub event: &'a str,
    /// Conflation key.
    pub key: Option<&'a str>,
    /// Payload.
    pub data: &'a RawValue,
}

/// A log line as an effect.
pub(in crate::room) fn log_effect<H>(
    event: &'static str,
    fields: &[(&'static str, String)],
) -> Effect<H> {
    log_line(event, fields)
}

fn log_line<H>(event: &'static str, fields: &[(&'static str, String)]) -> Effect<H> {
    Effect::Log {
        event,
        fields: fields.to_vec(),
    }
}
