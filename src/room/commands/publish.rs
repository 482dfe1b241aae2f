//! `publish` frames: durable (sequenced, stored, exactly-once) and ephemeral (fanned out
//! only). Both need `write`, an unexpired token and a token from the connection's bucket.

use super::super::core::{Effect, RoomCore, Signal};
use super::super::limits::Admit;
use super::super::log::{Appended, Sql};
use super::super::shard::UpItem;
use super::super::sharded::Role;
use crate::error::{close, Error};
use crate::protocol::{error_frame, Ephemeral, From, Publish, ServerFrame};

impl<H: Clone> RoomCore<H> {
    /// The checks every publish from a socket passes: token still valid, `write`, rate
    /// limit. Returns who is publishing when it may go ahead; otherwise the refusal has
    /// been answered (and the socket closed when the refusal says so).
    fn admit_publish(
        &mut self,
        fx: &mut Vec<Effect<H>>,
        now: i64,
        conn: &str,
        id: Option<&str>,
    ) -> Option<From> {
        let limits = self.limits;
        let peer = self.peer_mut(conn)?;
        let refusal = if peer.id.expired(now / 1000) {
            Some(Error::TokenExpired)
        } else if !peer.id.write {
            Some(Error::Forbidden(
                "this token has no \"write\" permission on this room".into(),
            ))
        } else {
            match peer.conn.admit(&limits, now) {
                Admit::Yes => None,
                Admit::Later(ms) => Some(Error::RateLimited(ms)),
                Admit::Close => {
                    let last = error_frame(id, &Error::RateLimited(1000));
                    self.kick(
                        fx,
                        now,
                        conn,
                        close::RATE_LIMITED,
                        "sustained rate limiting",
                        "rate_limited",
                        last,
                    );
                    return None;
                }
            }
        };
        match refusal {
            Some(e) => {
                self.reject(fx, now, conn, id, &e);
                None
            }
            None => Some(From {
                user: peer.id.user.clone(),
                conn: conn.to_string(),
            }),
        }
    }

    /// A durable publish: dedup, sequence, store, fan out, then `ack` the sender.
    pub(in crate::room) fn on_publish(
        &mut self,
        fx: &mut Vec<Effect<H>>,
        db: &dyn Sql,
        now: i64,
        conn: &str,
        p: &Publish,
    ) {
        let Some(from) = self.admit_publish(fx, now, conn, Some(&p.id)) else {
            return;
        };
        let except = (!p.echo).then_some(conn);
        if let Role::Shard(_) = self.role {
            // Sequenced at the room's sequencer; the ack follows its answer.
            let item = UpItem::Publish {
                id: p.id.clone(),
                event: p.event.clone(),
                data: p.data.clone(),
                from,
                except: except.map(str::to_string),
            };
            let waiter = (conn.to_string(), p.id.clone());
            self.send_up(fx, item, Some(waiter));
            return;
        }
        match self.append(fx, db, now, &p.id, &p.event, &p.data, Some(&from), except) {
            Ok(outcome) => {
                let ack = ServerFrame::Ack {
                    id: &p.id,
                    seq: outcome.seq(),
                    duplicate: matches!(outcome, Appended::Duplicate(_)),
                }
                .to_json();
                self.reply(fx, now, conn, ack);
            }
            Err(e) => self.reject(fx, now, conn, Some(&p.id), &e),
        }
    }

    /// An ephemeral publish: fan out (conflated while queued); `ack` only when it had an id.
    pub(in crate::room) fn on_ephemeral(
        &mut self,
        fx: &mut Vec<Effect<H>>,
        now: i64,
        conn: &str,
        p: &Ephemeral,
    ) {
        let Some(from) = self.admit_publish(fx, now, conn, p.id.as_deref()) else {
            return;
        };
        let signal = Signal {
            id: p.id.as_deref(),
            event: &p.event,
            key: p.key.as_deref(),
            data: &p.data,
        };
        let except = (!p.echo).then_some(conn);
        if let Role::Shard(_) = self.role {
            let item = UpItem::Ephemeral {
                id: p.id.clone(),
                event: p.event.clone(),
                key: p.key.clone(),
                data: p.data.clone(),
                from,
                except: except.map(str::to_string),
            };
            self.send_up(fx, item, None);
        } else {
            self.fan_out_ephemeral(fx, now, signal, Some(&from), except);
        }
        if let Some(id) = &p.id {
            let ack = ServerFrame::EphemeralAck {
                id,
                ephemeral: true,
            }
            .to_json();
            self.reply(fx, now, conn, ack);
        }
    }
}
