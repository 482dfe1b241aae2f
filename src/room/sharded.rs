//! The room core's two parts in a sharded room (docs/sharding.md), as more events and
//! effects of the same state machine:
//!
//! * a **shard** holds sockets. It admits their frames as an ordinary room does, but
//!   sends publishes, ephemeral messages, joins and leaves up to the sequencer
//!   (`RoomCore::send_up`, one batch in flight), and delivers what the sequencer sends
//!   down ([`RoomCore::deliver`]) in seq order, dropping repeats and asking for gaps;
//! * the **sequencer** holds no sockets. It owns the log (seq, dedup, history), presence
//!   over the whole room and webhooks, and queues every frame for every shard
//!   ([`super::sequencer::Fanout`]).
//!
//! Everything here is synchronous and runtime-free like the rest of the core; the
//! Durable Object carries the batches (`room/fanout.rs`).

use std::collections::HashMap;

use serde_json::value::RawValue;

use super::codec;
use super::core::{Effect, Greeting, RoomCore, MAX_PRESENCE_USERS};
use super::log::{self, Appended, Arg, Cell, Sql};
use super::outbox::{presence_delay_ms, Conflation, To};
use super::peer::{info_raw, Identity};
use super::presence::Change;
use super::rpc::{ConnectRequest, PublishRequest, Transport};
use super::schedule::Reason;
use super::sequencer::Fanout;
use super::shard::{Delivery, Down, DownAnswer, DownItem, Take, Up, UpItem, UpResult, Welcome};
use crate::error::{Error, Result};
use crate::protocol::{check_publish, PresenceOp, Resume, ServerFrame};

/// How long the sequencer waits before checking that every shard has everything stored
/// (after a restart, or a shard that could not be reached): long enough that a healthy
/// room never resends, short enough that a lost batch is a few seconds late, not lost.
pub const RESEND_MS: i64 = 5_000;

/// How a shard took a batch.
#[derive(Debug)]
pub enum Delivered<H> {
    /// Delivered: the shard's answer, and the sends.
    Done(DownAnswer, Vec<Effect<H>>),
    /// Messages `after + 1 .. before` are missing: fill them first.
    Gap {
        /// What the shard delivered last.
        after: u64,
        /// The batch's first seq.
        before: u64,
    },
}

/// The waiter "id" of a join in a shard's batch (event ids are never empty).
const JOINING: &str = "";

/// The object's part.
#[derive(Debug, Default)]
pub enum Role<H> {
    /// An ordinary room.
    #[default]
    Plain,
    /// Shard of a sharded room.
    Shard(ShardSide<H>),
    /// Sequencer of a sharded room.
    Sequencer(SequencerSide),
}

/// A shard's state beyond an ordinary room's.
#[derive(Debug)]
pub struct ShardSide<H> {
    /// Its index.
    pub index: u32,
    /// What it delivered.
    pub delivery: Delivery,
    /// Items waiting to go up, each with the (connection, id) to ack.
    up: Vec<(UpItem, Option<(String, String)>)>,
    /// Those of the batch in flight.
    in_flight: Option<Vec<Option<(String, String)>>>,
    /// Sockets accepted whose welcome the sequencer has not placed yet, by connection.
    /// Memory only: the welcome follows within one batch round, long before the shard
    /// could be evicted.
    joins: HashMap<String, PendingJoin<H>>,
    /// Sockets the shard closed while publishes of theirs were at the sequencer: closed
    /// once those are answered (their acks first), by connection.
    closing: HashMap<String, Closing<H>>,
    /// Whether this start's user list went up yet ([`UpItem::Users`]).
    reported: bool,
    /// Per connection: acks the sequencer has promised (a publish answered) less acks
    /// that came down. Negative while an ack overtook its answer.
    acks_due: HashMap<String, i64>,
}

/// A socket closed by the shard, waiting for its acks.
#[derive(Debug)]
struct Closing<H> {
    handle: H,
    id: Identity,
    /// Acks and errors that came back meanwhile, then what it gets before the close.
    acks: Vec<String>,
    texts: Vec<String>,
    /// Publishes whose ack (or failure) has not come back yet.
    outstanding: usize,
    code: u16,
    reason: &'static str,
}

/// A socket waiting for its welcome.
#[derive(Debug)]
struct PendingJoin<H> {
    handle: H,
    id: Identity,
    req: ConnectRequest,
    /// Frames it sent meanwhile, handled once it is in.
    buffered: Vec<String>,
}

/// The sequencer's state beyond an ordinary room's.
#[derive(Debug)]
pub struct SequencerSide {
    /// The per-shard queues.
    pub fanout: Fanout,
    /// The `fanout_seq` stored last.
    stored_fanout: u64,
}

/// The sequencer's users present (docs/storage.md): `shard` says where, so that a shard
/// that restarted without its sockets lets the sequencer announce their leaves.
const PRESENCE_TABLE: &str = "CREATE TABLE IF NOT EXISTS presence (user TEXT PRIMARY KEY, shard INTEGER NOT NULL, info TEXT)";

/// Reads an integer from `meta`, 0 when absent.
fn meta_int(db: &dyn Sql, key: &str) -> Result<u64> {
    Ok(meta_opt(db, key)?.unwrap_or(0))
}

/// Reads an integer from `meta`, if it is there.
fn meta_opt(db: &dyn Sql, key: &str) -> Result<Option<u64>> {
    let rows = db.run("SELECT value FROM meta WHERE key = ?", &[Arg::Text(key)])?;
    Ok(
        match rows.into_iter().next().and_then(|r| r.into_iter().next()) {
            Some(Cell::Int(v)) => Some(u64::try_from(v).unwrap_or(0)),
            _ => None,
        },
    )
}

fn store_meta_int(db: &dyn Sql, key: &str, value: u64) -> Result<()> {
    db.write(
        "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        &[Arg::Text(key), Arg::Int(value as i64)],
    )?;
    Ok(())
}

fn raw(text: String) -> Result<Box<RawValue>> {
    RawValue::from_string(text).map_err(|e| Error::Internal(format!("frame: {e}")))
}

impl<H: Clone> RoomCore<H> {
    // ---- set-up ------------------------------------------------------------------------

    /// Makes this room shard `index` of a sharded room; `delivered_seq` comes back from
    /// its storage.
    ///
    /// # Errors
    ///
    /// `Internal` when storage fails.
    pub fn become_shard(&mut self, db: &dyn Sql, key: &str, index: u32) -> Result<()> {
        super::log::remember_name(db, key)?;
        let delivered_seq = meta_int(db, "delivered_seq")?;
        self.role = Role::Shard(ShardSide {
            index,
            delivery: Delivery { delivered_seq },
            up: Vec::new(),
            in_flight: None,
            joins: HashMap::new(),
            closing: HashMap::new(),
            acks_due: HashMap::new(),
            reported: false,
        });
        Ok(())
    }

    /// Makes this room the sequencer of a room over `shards` shards. When storage holds
    /// messages not every shard has answered for (it restarted), they are queued again for
    /// every shard, ahead of anything new; shards drop what they already have.
    ///
    /// # Errors
    ///
    /// `Internal` when storage fails.
    pub fn become_sequencer(
        &mut self,
        db: &dyn Sql,
        now: i64,
        key: &str,
        shards: u32,
    ) -> Result<Vec<Effect<H>>> {
        super::log::remember_name(db, key)?;
        // Who is present is stored (one row written per join and per leave, like the
        // webhook row of either): the sequencer holds no sockets to rebuild it from, and
        // is evicted whenever the room is quiet for a few seconds.
        db.write(PRESENCE_TABLE, &[])?;
        for row in db.run("SELECT user, info FROM presence", &[])? {
            let mut c = row.into_iter();
            let (Some(Cell::Text(user)), info) = (c.next(), c.next()) else {
                continue;
            };
            let info = match info {
                Some(Cell::Text(i)) => Some(i),
                _ => None,
            };
            self.presence.add(&member(String::new(), user, info));
        }
        // A room that was an ordinary room until this deploy has no `fanout_seq`: what it
        // stored before was delivered by itself, so its shards start at its head.
        let fanout_seq = match meta_opt(db, "fanout_seq")? {
            Some(v) => v.min(self.head.last_seq),
            None => {
                store_meta_int(db, "fanout_seq", self.head.last_seq)?;
                self.head.last_seq
            }
        };
        self.role = Role::Sequencer(SequencerSide {
            fanout: Fanout::new(shards, fanout_seq),
            stored_fanout: fanout_seq,
        });
        let mut fx = Vec::new();
        self.resend(&mut fx, db, now)?;
        Ok(fx)
    }

    /// Queues stored messages again for every idle shard behind the head.
    fn resend(&mut self, fx: &mut Vec<Effect<H>>, db: &dyn Sql, now: i64) -> Result<()> {
        let last = self.head.last_seq;
        let limit = self.limits.history_limit;
        let Role::Sequencer(s) = &mut self.role else {
            return Ok(());
        };
        let behind = s.fanout.behind(last);
        if behind.is_empty() {
            return Ok(());
        }
        let from = behind.iter().map(|(_, acked)| *acked).min().unwrap_or(last);
        // Resent frames skip their publisher's connection: what `echo:false`, the default,
        // asked for (the log does not keep `echo`).
        let records = log::read_after(db, from, limit)?;
        let mut items = Vec::with_capacity(records.len());
        for r in &records {
            items.push((
                r.seq,
                DownItem::Message {
                    seq: r.seq,
                    frame: raw(codec::record(r)?)?,
                    except: r.from.as_ref().map(|f| f.conn.clone()),
                },
            ));
        }
        for (shard, acked) in behind {
            for (seq, item) in &items {
                if *seq > acked {
                    s.fanout.push(shard, item.clone());
                }
            }
        }
        fx.push(Effect::Pump);
        fx.push(super::core::log_effect(
            "shard.resend",
            &[("from_seq", (from + 1).to_string())],
        ));
        self.want(fx, Reason::Fanout, now + RESEND_MS);
        Ok(())
    }

    /// The alarm fired for [`Reason::Fanout`]: resend to shards that are behind.
    pub(in crate::room) fn fanout_alarm(
        &mut self,
        fx: &mut Vec<Effect<H>>,
        db: &dyn Sql,
        now: i64,
    ) {
        if let Err(e) = self.resend(fx, db, now) {
            fx.push(super::core::log_effect(
                "shard.resend_failed",
                &[("detail", e.to_string())],
            ));
            self.want(fx, Reason::Fanout, now + RESEND_MS);
        }
        let busy = matches!(&self.role, Role::Sequencer(s) if !s.fanout.idle());
        if busy {
            self.want(fx, Reason::Fanout, now + RESEND_MS);
        }
    }

    // ---- the sequencer -----------------------------------------------------------------

    /// Queues a frame for every shard (`seq` for a durable message, `signal` for an
    /// ephemeral one), and makes sure the alarm checks on it.
    pub(in crate::room) fn fan_out_to_shards(
        &mut self,
        fx: &mut Vec<Effect<H>>,
        now: i64,
        seq: Option<u64>,
        frame: String,
        except: Option<String>,
        signal: Option<Conflation>,
    ) {
        let Ok(frame) = raw(frame) else {
            return;
        };
        let item = match (seq, signal) {
            (Some(seq), _) => DownItem::Message { seq, frame, except },
            (None, Some(conflation)) => DownItem::Ephemeral {
                frame,
                except,
                conflation,
            },
            (None, None) => return,
        };
        if let Role::Sequencer(s) = &mut self.role {
            s.fanout.push_all(&item);
        }
        fx.push(Effect::Pump);
        // One alarm write at most per RESEND_MS: `want` stores only when none is set.
        if seq.is_some() && self.schedule.wanted(Reason::Fanout).is_none() {
            self.want(fx, Reason::Fanout, now + RESEND_MS);
        }
    }

    /// Queues a presence frame for every shard.
    pub(in crate::room) fn announce_to_shards(
        &mut self,
        fx: &mut Vec<Effect<H>>,
        op: PresenceOp,
        id: &Identity,
    ) {
        let info = id.info_raw();
        let frame = ServerFrame::Presence {
            op,
            user: &id.user,
            info: &info,
        }
        .to_json();
        let Ok(frame) = raw(frame) else {
            return;
        };
        if let Role::Sequencer(s) = &mut self.role {
            s.fanout.push_all(&DownItem::Presence {
                frame,
                except: id.conn.clone(),
            });
        }
        fx.push(Effect::Pump);
    }

    /// A shard's batch: each item applied in order, one result each.
    pub fn up(&mut self, db: &dyn Sql, now: i64, up: Up) -> (Vec<UpResult>, Vec<Effect<H>>) {
        let mut fx = Vec::new();
        if let Role::Sequencer(s) = &mut self.role {
            s.fanout.connections_of(up.shard, up.connections);
        } else {
            return (vec![UpResult::Failed; up.items.len()], fx);
        }
        let mut results = Vec::with_capacity(up.items.len());
        for item in up.items {
            let result = match item {
                UpItem::Publish {
                    id,
                    event,
                    data,
                    from,
                    except,
                } => {
                    let appended = self.append(
                        &mut fx,
                        db,
                        now,
                        &id,
                        &event,
                        &data,
                        Some(&from),
                        except.as_deref(),
                    );
                    match appended {
                        Ok(a) => {
                            let duplicate = matches!(a, Appended::Duplicate(_));
                            let ack = ServerFrame::Ack {
                                id: &id,
                                seq: a.seq(),
                                duplicate,
                            }
                            .to_json();
                            // Behind the message in the publisher's shard's stream, as an
                            // ordinary room queues the ack behind the message.
                            if let (Role::Sequencer(s), Ok(frame)) = (&mut self.role, raw(ack)) {
                                let conn = from.conn.clone();
                                s.fanout.push(up.shard, DownItem::Ack { conn, frame });
                                fx.push(Effect::Pump);
                            }
                            UpResult::Published {
                                seq: a.seq(),
                                duplicate,
                            }
                        }
                        Err(e) => {
                            fx.push(super::core::log_effect(
                                "error",
                                &[("detail", e.to_string())],
                            ));
                            UpResult::Failed
                        }
                    }
                }
                UpItem::Ephemeral {
                    id,
                    event,
                    key,
                    data,
                    from,
                    except,
                } => {
                    let signal = super::core::Signal {
                        id: id.as_deref(),
                        event: &event,
                        key: key.as_deref(),
                        data: &data,
                    };
                    self.fan_out_ephemeral(&mut fx, now, signal, Some(&from), except.as_deref());
                    UpResult::Done
                }
                UpItem::Join {
                    conn,
                    user,
                    info,
                    joined,
                    since,
                    epoch,
                } => match self.sequence_join(
                    &mut fx, db, now, up.shard, conn, user, info, joined, since, epoch,
                ) {
                    Ok(()) => UpResult::Done,
                    Err(e) => {
                        fx.push(super::core::log_effect(
                            "error",
                            &[("detail", e.to_string())],
                        ));
                        UpResult::Failed
                    }
                },
                UpItem::Leave { conn, user, info } => {
                    self.sequence_leave(&mut fx, db, now, member(conn, user, info));
                    UpResult::Done
                }
                UpItem::Users { users } => {
                    let gone: Vec<(String, Option<String>)> = db
                        .run(
                            "SELECT user, info FROM presence WHERE shard = ?",
                            &[Arg::Int(i64::from(up.shard))],
                        )
                        .unwrap_or_default()
                        .into_iter()
                        .filter_map(|row| {
                            let mut c = row.into_iter();
                            match (c.next(), c.next()) {
                                (Some(Cell::Text(u)), Some(Cell::Text(i))) => Some((u, Some(i))),
                                (Some(Cell::Text(u)), _) => Some((u, None)),
                                _ => None,
                            }
                        })
                        .filter(|(u, _)| !users.contains(u))
                        .collect();
                    for (user, info) in gone {
                        self.sequence_leave(&mut fx, db, now, member(String::new(), user, info));
                    }
                    UpResult::Done
                }
            };
            results.push(result);
        }
        (results, fx)
    }

    /// A socket joins through shard `shard`: presence (when it is its user's first), then
    /// its welcome, queued for that shard behind every message up to the head.
    #[allow(clippy::too_many_arguments)]
    fn sequence_join(
        &mut self,
        fx: &mut Vec<Effect<H>>,
        db: &dyn Sql,
        now: i64,
        shard: u32,
        conn: String,
        user: String,
        info: Option<String>,
        joined: bool,
        since: Option<u64>,
        epoch: Option<String>,
    ) -> Result<()> {
        let requested = since.is_some() || epoch.is_some();
        let (recovered, records) = self.replay(db, since, epoch.as_deref())?;
        let frames = records
            .iter()
            .map(|r| codec::record(r).and_then(raw))
            .collect::<Result<Vec<_>>>()?;
        if joined {
            let id = member(conn.clone(), user, info);
            let was_empty = self.presence.users().is_empty();
            db.write(
                "INSERT INTO presence (user, shard, info) VALUES (?, ?, ?) ON CONFLICT (user) DO UPDATE SET shard = excluded.shard, info = excluded.info",
                &[
                    Arg::Text(&id.user),
                    Arg::Int(i64::from(shard)),
                    Arg::opt(id.info.as_deref()),
                ],
            )?;
            if self.presence.add(&id) == Change::Joined {
                self.announce(fx, now, PresenceOp::Join, &id);
                self.hook_presence("join", &id, now);
            }
            if was_empty {
                self.hook_room("occupied", now);
            }
        }
        let welcome = Welcome {
            conn,
            epoch: self.head.epoch.clone(),
            seq: self.head.last_seq,
            requested,
            recovered: requested && recovered,
            replay: frames,
            count: self.presence.users().len(),
            users: self
                .presence
                .users()
                .iter()
                .take(MAX_PRESENCE_USERS)
                .map(|(user, m)| (user.clone(), info_raw(m.info.as_deref())))
                .collect(),
        };
        if let Role::Sequencer(s) = &mut self.role {
            s.fanout.push(shard, DownItem::Welcome(welcome));
        }
        fx.push(Effect::Pump);
        Ok(())
    }

    /// The highest seq every shard has answered for (sharded rooms' `info.shards`).
    pub fn fanout_seq(&self) -> Option<u64> {
        match &self.role {
            Role::Sequencer(s) => Some(s.fanout.fanout_seq()),
            _ => None,
        }
    }

    /// A user left the room (their shard said so, or their shard restarted without them).
    fn sequence_leave(&mut self, fx: &mut Vec<Effect<H>>, db: &dyn Sql, now: i64, id: Identity) {
        if let Err(e) = db.write(
            "DELETE FROM presence WHERE user = ?",
            &[Arg::Text(&id.user)],
        ) {
            fx.push(super::core::log_effect(
                "error",
                &[("detail", e.to_string())],
            ));
        }
        if self.presence.remove(&id) == Change::Left {
            self.announce(fx, now, PresenceOp::Leave, &id);
            self.hook_presence("leave", &id, now);
            if self.presence.users().is_empty() {
                self.hook_room("vacated", now);
            }
        }
    }

    /// Shards with a batch ready to send.
    pub fn ready_shards(&self) -> Vec<u32> {
        match &self.role {
            Role::Sequencer(s) => s.fanout.ready(),
            _ => Vec::new(),
        }
    }

    /// The next batch for `shard` (then in flight until [`RoomCore::shard_answered`]).
    pub fn take_down(&mut self, shard: u32) -> Option<Down> {
        match &mut self.role {
            Role::Sequencer(s) => s.fanout.next(shard),
            _ => None,
        }
    }

    /// Shard `shard` answered its batch (`None`: it could not be reached, the batch is
    /// sent again). Stores `fanout_seq` when every shard has moved past it.
    pub fn shard_answered(
        &mut self,
        db: &dyn Sql,
        shard: u32,
        answer: Option<DownAnswer>,
    ) -> Vec<Effect<H>> {
        let mut fx = Vec::new();
        let Role::Sequencer(s) = &mut self.role else {
            return fx;
        };
        match answer {
            Some(a) => s.fanout.answered(shard, a),
            None => {
                s.fanout.failed(shard);
                fx.push(super::core::log_effect(
                    "shard.unreachable",
                    &[("shard", shard.to_string())],
                ));
            }
        }
        let fanout_seq = s.fanout.fanout_seq();
        if fanout_seq > s.stored_fanout {
            match store_meta_int(db, "fanout_seq", fanout_seq) {
                Ok(()) => s.stored_fanout = fanout_seq,
                Err(e) => fx.push(super::core::log_effect(
                    "shard.store_failed",
                    &[("detail", e.to_string())],
                )),
            }
        }
        if answer.is_some() && !s.fanout.ready().is_empty() {
            fx.push(Effect::Pump);
        }
        fx
    }

    /// Stored messages after `after` and before `before`, for a shard's gap.
    ///
    /// # Errors
    ///
    /// `Internal` when storage fails.
    pub fn fill(&self, db: &dyn Sql, after: u64, before: u64) -> Result<Down> {
        let limit = u32::try_from(before.saturating_sub(after + 1))
            .unwrap_or(u32::MAX)
            .min(self.limits.history_limit);
        let records = log::read_after(db, after, limit)?;
        let mut items = Vec::with_capacity(records.len());
        for r in records.iter().filter(|r| r.seq < before) {
            items.push(DownItem::Message {
                seq: r.seq,
                frame: raw(codec::record(r)?)?,
                except: r.from.as_ref().map(|f| f.conn.clone()),
            });
        }
        let to_seq = records
            .iter()
            .map(|r| r.seq)
            .filter(|s| *s < before)
            .max()
            .unwrap_or(after);
        Ok(Down {
            from_seq: after + 1,
            to_seq,
            items,
        })
    }

    // ---- a shard -----------------------------------------------------------------------

    /// Queues `item` for the sequencer, with the (connection, id) to ack.
    pub(in crate::room) fn send_up(
        &mut self,
        fx: &mut Vec<Effect<H>>,
        item: UpItem,
        waiter: Option<(String, String)>,
    ) {
        if let Role::Shard(s) = &mut self.role {
            s.up.push((item, waiter));
            if s.in_flight.is_none() {
                fx.push(Effect::Pump);
            }
        }
    }

    /// The next batch for the sequencer, if none is in flight.
    pub fn take_up(&mut self) -> Option<Up> {
        let connections = self.peers.len();
        let Role::Shard(s) = &mut self.role else {
            return None;
        };
        if s.in_flight.is_some() || s.up.is_empty() {
            return None;
        }
        if !s.reported {
            s.reported = true;
            let users = self.presence.users().keys().cloned().collect();
            s.up.insert(0, (UpItem::Users { users }, None));
        }
        let (items, waiters): (Vec<_>, Vec<_>) = std::mem::take(&mut s.up).into_iter().unzip();
        s.in_flight = Some(waiters);
        Some(Up {
            shard: s.index,
            connections,
            items,
        })
    }

    /// The sequencer answered the batch in flight (`None`: it failed). Acks come down
    /// with the room's traffic ([`DownItem::Ack`]), in order behind the messages before
    /// them; here only failures are answered.
    pub fn up_answered(&mut self, now: i64, results: Option<Vec<UpResult>>) -> Vec<Effect<H>> {
        let mut fx = Vec::new();
        let Role::Shard(s) = &mut self.role else {
            return fx;
        };
        let waiters = s.in_flight.take().unwrap_or_default();
        let more = !s.up.is_empty();
        let mut results = results.unwrap_or_default().into_iter();
        let mut failed = Vec::new();
        let mut failed_joins = Vec::new();
        for waiter in waiters {
            let result = results.next().unwrap_or(UpResult::Failed);
            match (waiter, result) {
                (None, _) => {}
                (Some((conn, id)), UpResult::Failed) if id == JOINING => failed_joins.push(conn),
                (Some((_, id)), _) if id == JOINING => {}
                (Some((conn, _)), UpResult::Published { .. }) => due(&mut s.acks_due, conn, 1),
                (Some(w), UpResult::Failed | UpResult::Done) => failed.push(w),
            }
        }
        // A join the sequencer did not take gets no welcome: close the socket so that the
        // client connects again, rather than leave it waiting.
        for conn in failed_joins {
            if let Some(handle) = self.abandon_join(&mut fx, now, &conn) {
                fx.push(Effect::Close {
                    to: handle,
                    code: crate::error::close::INTERNAL,
                    reason: "room unavailable",
                });
            }
        }
        let e = Error::Internal("the room's sequencer did not take the publish".into());
        for (conn, id) in failed {
            if self.closing_gets(&mut fx, &conn, crate::protocol::error_frame(Some(&id), &e)) {
                continue;
            }
            self.reject(&mut fx, now, &conn, Some(&id), &e);
        }
        if more {
            fx.push(Effect::Pump);
        }
        fx
    }

    /// Hands `text` (an ack or a publish's error) to socket `conn` if the shard is
    /// closing it, and closes it once nothing is outstanding. False when it is not closing.
    fn closing_gets(&mut self, fx: &mut Vec<Effect<H>>, conn: &str, text: String) -> bool {
        let Role::Shard(s) = &mut self.role else {
            return false;
        };
        let Some(c) = s.closing.get_mut(conn) else {
            return false;
        };
        c.acks.push(text);
        c.outstanding = c.outstanding.saturating_sub(1);
        if c.outstanding == 0 {
            if let Some(c) = s.closing.remove(conn) {
                let texts = c.acks.into_iter().chain(c.texts).collect();
                super::core::finish_close(fx, c.handle, c.id, texts, c.code, c.reason);
            }
        }
        true
    }

    /// A batch from the sequencer. Returns the shard's answer, or the gap to fill first.
    ///
    /// # Errors
    ///
    /// `Internal` when storing `delivered_seq` fails (the sequencer sends the batch again).
    pub fn deliver(&mut self, db: &dyn Sql, now: i64, batch: Down) -> Result<Delivered<H>> {
        let mut fx = Vec::new();
        let Role::Shard(s) = &mut self.role else {
            return Err(Error::Internal(
                "deliver to a room that is not a shard".into(),
            ));
        };
        let before = s.delivery.delivered_seq;
        let items = match s.delivery.take(batch) {
            Take::Gap { after, from_seq } => {
                return Ok(Delivered::Gap {
                    after,
                    before: from_seq,
                })
            }
            Take::Deliver(items) => items,
        };
        for item in items {
            match item {
                DownItem::Message { seq, frame, except } => {
                    if let Role::Shard(s) = &mut self.role {
                        s.delivery.advance(seq);
                    }
                    self.queue(&mut fx, now, frame.get().to_string(), To::All { except });
                }
                DownItem::Ephemeral {
                    frame,
                    except,
                    conflation,
                } => {
                    self.outbox.push_ephemeral(
                        frame.get().to_string(),
                        To::All { except },
                        conflation,
                    );
                    self.want_flush(&mut fx, now, 0);
                }
                DownItem::Presence { frame, except } => {
                    let watchers = self.presence.watchers();
                    if watchers > 0 {
                        self.outbox
                            .push(frame.get().to_string(), To::Watchers { except });
                        self.want_flush(&mut fx, now, presence_delay_ms(watchers));
                    }
                }
                DownItem::Welcome(w) => {
                    // A shard without sockets has nobody to fill a gap for: a new shard of
                    // a room whose log did not start with it takes the welcome's head.
                    if let Role::Shard(s) = &mut self.role {
                        if self.peers.is_empty() && s.delivery.delivered_seq < w.seq {
                            s.delivery.delivered_seq = w.seq;
                        }
                    }
                    self.complete_join(&mut fx, db, now, w)
                }
                DownItem::Ack { conn, frame } => {
                    if let Role::Shard(s) = &mut self.role {
                        due(&mut s.acks_due, conn.clone(), -1);
                    }
                    let text = frame.get().to_string();
                    if !self.closing_gets(&mut fx, &conn, text.clone()) {
                        self.reply(&mut fx, now, &conn, text);
                    }
                }
            }
        }
        let Role::Shard(s) = &mut self.role else {
            return Err(Error::Internal("role changed".into()));
        };
        let delivered = s.delivery.delivered_seq;
        if delivered > before {
            store_meta_int(db, "delivered_seq", delivered)?;
        }
        let answer = DownAnswer {
            delivered_seq: delivered,
            connections: self.peers.len(),
        };
        Ok(Delivered::Done(answer, fx))
    }

    /// [`RoomCore::deliver`] after a gap that could not be filled (the history no longer
    /// holds it): the batch is delivered as it is, its head taken as the new one.
    ///
    /// # Errors
    ///
    /// As [`RoomCore::deliver`].
    pub fn deliver_anyway(&mut self, db: &dyn Sql, now: i64, batch: Down) -> Result<Delivered<H>> {
        if let Role::Shard(s) = &mut self.role {
            if batch.from_seq > 0 {
                s.delivery.delivered_seq = s.delivery.delivered_seq.max(batch.from_seq - 1);
            }
        }
        self.deliver(db, now, batch)
    }

    /// A shard closes socket `conn`: when publishes of it are still at the sequencer, the
    /// close waits for their acks (returns `None`), as an ordinary room's socket gets its
    /// acks before its close; otherwise returns `texts`, what it gets before the close.
    #[allow(clippy::too_many_arguments)]
    pub(in crate::room) fn defer_close(
        &mut self,
        conn: &str,
        handle: &H,
        id: &Identity,
        texts: Vec<String>,
        code: u16,
        reason: &'static str,
    ) -> Option<Vec<String>> {
        let Role::Shard(s) = &mut self.role else {
            return Some(texts);
        };
        let mine = |w: &&Option<(String, String)>| w.as_ref().is_some_and(|(c, _)| c == conn);
        let outstanding = (s.up.iter().map(|(_, w)| w).filter(mine).count()
            + s.in_flight.iter().flatten().filter(mine).count()) as i64
            + s.acks_due.get(conn).copied().unwrap_or(0);
        let Ok(outstanding) = usize::try_from(outstanding) else {
            return Some(texts);
        };
        if outstanding == 0 {
            return Some(texts);
        }
        s.closing.insert(
            conn.to_string(),
            Closing {
                handle: handle.clone(),
                id: id.clone(),
                acks: Vec::new(),
                texts,
                code,
                reason,
                outstanding,
            },
        );
        None
    }

    /// Starts a socket's join at a shard: the per-user cap is decided here (all of a
    /// user's sockets are on this shard), presence counts it at once, and the sequencer
    /// is asked for its welcome.
    pub(in crate::room) fn begin_join(
        &mut self,
        to: H,
        conn: String,
        req: &ConnectRequest,
    ) -> Vec<Effect<H>> {
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
        let joined = self.presence.add(&id) == Change::Joined;
        let mut fx = vec![Effect::Attach {
            to: to.clone(),
            identity: id.clone(),
        }];
        let conn_for_waiter = conn.clone();
        let item = UpItem::Join {
            conn: conn.clone(),
            user: req.user.clone(),
            info: req.info.clone(),
            joined,
            since: req.since,
            epoch: req.epoch.clone(),
        };
        if let Role::Shard(s) = &mut self.role {
            s.joins.insert(
                conn,
                PendingJoin {
                    handle: to,
                    id,
                    req: req.clone(),
                    buffered: Vec::new(),
                },
            );
        }
        self.send_up(&mut fx, item, Some((conn_for_waiter, JOINING.to_string())));
        fx
    }

    /// The sequencer's welcome for a joining socket reached this shard, in order: the
    /// socket becomes a peer here, gets its welcome and replay, then what it sent meanwhile
    /// is handled.
    fn complete_join(&mut self, fx: &mut Vec<Effect<H>>, db: &dyn Sql, now: i64, w: Welcome) {
        let Role::Shard(s) = &mut self.role else {
            return;
        };
        let Some(p) = s.joins.remove(&w.conn) else {
            return; // it closed while waiting
        };
        self.insert_counted(p.handle, p.id, now);
        let greeting = Greeting {
            epoch: w.epoch,
            seq: w.seq,
            resume: Resume {
                requested: w.requested,
                recovered: w.recovered,
                replayed: w.replay.len() as u64,
            },
            count: w.count,
            users: w.users,
        };
        let frames = w.replay.iter().map(|f| f.get().to_string()).collect();
        self.greet(fx, now, &w.conn, &p.req, &greeting, frames);
        for text in p.buffered {
            let more = self.message(db, now, &w.conn, &text);
            fx.extend(more);
        }
    }

    /// Keeps a frame from a socket still waiting for its welcome.
    pub(in crate::room) fn hold_for_join(&mut self, conn: &str, text: &str) {
        if let Role::Shard(s) = &mut self.role {
            if let Some(p) = s.joins.get_mut(conn) {
                p.buffered.push(text.to_string());
            }
        }
    }

    /// A socket closed before its welcome came (or its join failed): forgotten, and its
    /// user leaves if it was their only socket. Returns its handle if it was waiting.
    pub(in crate::room) fn abandon_join(
        &mut self,
        fx: &mut Vec<Effect<H>>,
        now: i64,
        conn: &str,
    ) -> Option<H> {
        let Role::Shard(s) = &mut self.role else {
            return None;
        };
        let p = s.joins.remove(conn)?;
        if self.presence.remove(&p.id) == Change::Left {
            self.announce(fx, now, PresenceOp::Leave, &p.id);
        }
        fx.push(Effect::Attach {
            to: p.handle.clone(),
            identity: Identity { gone: true, ..p.id },
        });
        Some(p.handle)
    }

    /// A client HTTP publish arriving at the user's shard: admitted here (the user's
    /// bucket and connections are here), then forwarded to the sequencer with the
    /// publisher resolved.
    ///
    /// # Errors
    ///
    /// `BadRequest` and `RateLimited` as [`RoomCore::publish`].
    pub fn prepare_publish(&mut self, now: i64, req: &PublishRequest) -> Result<PublishRequest> {
        check_publish(
            req.id.as_deref(),
            &req.event,
            req.key.as_deref(),
            req.ephemeral,
        )
        .map_err(|e| Error::BadRequest(e.to_string()))?;
        let (from, except) = match &req.client {
            None => (req.from.clone(), req.exclude_conn.clone()),
            Some(client) => {
                self.admit_http(now, &client.user)?;
                self.http_publisher(client)
            }
        };
        Ok(PublishRequest {
            room: req.room.clone(),
            id: req.id.clone(),
            event: req.event.clone(),
            data: req.data.clone(),
            exclude_conn: except,
            ephemeral: req.ephemeral,
            key: req.key.clone(),
            client: None,
            from,
        })
    }
}

/// Adds `n` to a connection's count of acks due, forgetting it at zero.
fn due(counts: &mut HashMap<String, i64>, conn: String, n: i64) {
    let entry = counts.entry(conn.clone()).or_default();
    *entry += n;
    if *entry == 0 {
        counts.remove(&conn);
    }
}

/// A user as the sequencer counts them (presence only).
fn member(conn: String, user: String, info: Option<String>) -> Identity {
    Identity {
        conn,
        user,
        write: false,
        exp: i64::MAX,
        info,
        presence: false,
        listed: true,
        gone: false,
    }
}
