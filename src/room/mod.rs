//! The Room Durable Object: one per `(tenant, room)`, SQLite-backed, holding its sockets
//! with the WebSocket Hibernation API — or, for a room in `SHARDED_ROOMS`, one sequencer
//! and `ROOM_SHARDS` shards of the same class, each knowing its part by its name.
//!
//! This file is glue only: it turns runtime events into calls on [`core::RoomCore`] (the
//! room's rules, plain Rust with native tests) and applies the effects it returns through
//! [`sockets`]. Memory is a cache: after a wake-up the core is rebuilt from the runtime's
//! sockets (their attachments), the stored alarm and SQLite.
//!
//! # Layout
//!
//! * [`core`]: the state machine; [`commands`]: one handler per client frame type.
//! * [`peer`]: one record per connection; [`presence`]: users; [`schedule`]: the alarm.
//! * [`log`]: sequence, dedup and history in SQLite; [`codec`]: records → wire frames.
//! * [`outbox`]: queues, coalescing, conflation; [`limits`]: buckets and strikes.
//! * [`sockets`] and [`sql`]: the runtime side (sends, timers, attachments, storage).
//! * [`webhooks`]: the outbox of events for the backend; [`metrics`]: Analytics Engine.
//! * [`rpc`]: the Worker ↔ room requests; `http`: the object's answers to them.
//! * Sharded rooms (docs/sharding.md): [`shard`] (placement, the wire between the objects,
//!   delivery order), [`sequencer`] (per-shard queues), [`sharded`] (both parts as core
//!   events and effects), `fanout` (carrying the batches over `fetch`).

pub mod codec;
pub mod commands;
pub mod core;
#[cfg(all(test, not(target_arch = "wasm32")))]
mod core_tests;
pub mod counters;
mod fanout;
mod http;
pub mod limits;
pub mod log;
pub mod metrics;
pub mod outbox;
pub mod peer;
pub mod presence;
pub mod rpc;
pub mod schedule;
pub mod sequencer;
pub mod shard;
pub mod sharded;
pub mod sockets;
pub mod sql;
pub mod webhooks;

use std::cell::RefCell;
use std::rc::Rc;

use worker::{
    durable_object, DurableObject, Env, Request, Response, State, WebSocket,
    WebSocketIncomingMessage,
};

use self::core::{Effect, RoomCore};
use crate::config::{Limits, Webhooks};
use crate::error::{close, Error, Result};
use crate::runtime::{log_line, now_ms, random_id};
use sockets::Shared;

/// The Durable Object.
#[durable_object]
pub struct Room {
    state: State,
    limits: Limits,
    /// `None` when webhooks are off (or misconfigured: the Worker refuses every request
    /// then, so a room never sees traffic it would have to forward).
    hooks: Option<Webhooks>,
    shared: Shared,
    /// The `METRICS` Analytics Engine dataset when bound, and its interval state
    /// (started with the core).
    metrics: Option<(
        worker::AnalyticsEngineDataset,
        RefCell<Option<metrics::Metrics>>,
    )>,
    metrics_interval_secs: u64,
    /// The object's part in a sharded room, decided by its name and `SHARDED_ROOMS`.
    part: Part,
    /// The other objects of a sharded room; `None` for an ordinary room.
    link: Option<fanout::Link>,
    /// The object's name (`tenant/room`, or `tenant/room#i` for a shard; [`log::object_name`]).
    name: String,
}

/// What the object is, from its name: `tenant/room#i` is shard `i` of a sharded room;
/// `tenant/room` is that room's sequencer when `SHARDED_ROOMS` lists the room, otherwise
/// an ordinary room. One class serves all three, so no migration or second binding is
/// needed, and a room's mode follows the configuration of the deploy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Plain,
    Shard(u32),
    Sequencer(u32),
}

impl DurableObject for Room {
    fn new(state: State, env: Env) -> Self {
        let get = |name: &str| env.var(name).ok().map(|v| v.to_string());
        // The Worker rejects requests when the configuration is malformed, so a room only
        // ever sees valid values; falling back here just avoids a panic path.
        let limits = Limits::from_lookup(&get).unwrap_or_default();
        let metrics_interval_secs = crate::config::metrics_interval_secs(&get)
            .unwrap_or(crate::config::DEFAULT_METRICS_INTERVAL_SECS);
        let metrics = env
            .analytics_engine("METRICS")
            .ok()
            .map(|dataset| (dataset, RefCell::new(None)));
        let sharding = crate::config::Sharding::from_lookup(&get).unwrap_or_default();
        let name = {
            let stats = sql::Stats::default();
            let db = sql::DoSql {
                sql: state.storage().sql(),
                stats: &stats,
            };
            log::object_name(&db, state.id().name()).unwrap_or_default()
        };
        let (room_key, index) = shard::parse_key(&name);
        let room = room_key.split_once('/').map_or(room_key, |(_, r)| r);
        let part = match (index, sharding.shards_for(room)) {
            (Some(i), _) => Part::Shard(i),
            (None, Some(n)) => Part::Sequencer(n),
            (None, None) => Part::Plain,
        };
        // Webhooks are the sequencer's (it sees every message and presence change once).
        let hooks = match part {
            Part::Shard(_) => None,
            _ => Webhooks::from_lookup(&get).ok().flatten(),
        };
        let link = match part {
            Part::Plain => None,
            _ => env
                .durable_object(crate::router::ROOMS_BINDING)
                .ok()
                .map(|ns| fanout::Link {
                    ns,
                    room_key: room_key.to_string(),
                }),
        };
        // One line per construction: a room starting again after its sockets were idle is
        // how eviction shows in `wrangler tail` (and how the tests observe it).
        log_line("room.start", &[("room_key", &name)]);
        // Answer heartbeats in the runtime without waking the room (contract §5).
        if let Ok(pair) = worker::WebSocketRequestResponsePair::new("ping", "pong") {
            state.set_websocket_auto_response(&pair);
        }
        let shared = Rc::new(sockets::Room {
            core: Default::default(),
            sql: state.storage().sql(),
            stats: Default::default(),
        });
        Room {
            state,
            limits,
            hooks,
            shared,
            metrics,
            metrics_interval_secs,
            part,
            link,
            name,
        }
    }

    async fn fetch(&self, req: Request) -> worker::Result<Response> {
        let result = match self.load().await {
            Ok(()) => self.route(req).await,
            Err(e) => Err(e),
        };
        Ok(result.unwrap_or_else(|e| crate::runtime::error_response(&e)))
    }

    async fn websocket_message(
        &self,
        ws: WebSocket,
        message: WebSocketIncomingMessage,
    ) -> worker::Result<()> {
        let Some(id) = sockets::identity(&ws) else {
            // Only sockets accepted by `accept` exist, and each gets an attachment there.
            log_line("room.no_attachment", &[]);
            let _ = ws.close(Some(close::INTERNAL), Some("lost session"));
            return Ok(());
        };
        if self.load().await.is_err() {
            let _ = ws.close(Some(close::INTERNAL), Some("room unavailable"));
            return Ok(());
        }
        let fx = self.with_core(|core, db, now| match &message {
            WebSocketIncomingMessage::String(text) => core.message(db, now, &id.conn, text),
            WebSocketIncomingMessage::Binary(_) => core.binary(now, &id.conn),
        });
        self.settle(fx).await;
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
        let reply = match code {
            1005 | 1006 => close::NORMAL,
            other => u16::try_from(other).unwrap_or(close::NORMAL),
        };
        let _ = ws.close(Some(reply), Some("bye"));
        self.departed(&ws, u16::try_from(code).unwrap_or(reply))
            .await;
        Ok(())
    }

    async fn websocket_error(&self, ws: WebSocket, _error: worker::Error) -> worker::Result<()> {
        self.departed(&ws, 1006).await;
        Ok(())
    }

    async fn alarm(&self) -> worker::Result<Response> {
        if self.load().await.is_ok() {
            let fx = self.with_core(|core, db, now| core.alarm(db, now));
            self.settle(fx).await;
        }
        Response::ok("")
    }
}

impl Room {
    /// Builds the core on the first event after construction: the log head from SQLite,
    /// the sockets from the runtime (with their attachments), the stored alarm; then what
    /// the alarm must wake for.
    async fn load(&self) -> Result<()> {
        if self.shared.core.borrow().is_some() {
            return Ok(());
        }
        let alarm = self.state.storage().get_alarm().await.ok().flatten();
        if self.shared.core.borrow().is_some() {
            return Ok(()); // another event loaded it during the await
        }
        let sockets = self
            .state
            .get_websockets()
            .into_iter()
            .filter_map(|ws| sockets::identity(&ws).map(|id| (ws, id)));
        let (db, now) = (self.shared.db(), now_ms());
        let mut core = RoomCore::load(&db, self.limits, now, &|| random_id("e_"), sockets, alarm)?;
        log::remember_name(&db, &self.name)?;
        let (room_key, _) = shard::parse_key(&self.name);
        let mut fx = core.start(&db, now, room_key, self.hooks.clone())?;
        match self.part {
            Part::Plain => {}
            Part::Shard(i) => core.become_shard(&db, &self.name, i)?,
            Part::Sequencer(n) => fx.extend(core.become_sequencer(&db, now, &self.name, n)?),
        }
        *self.shared.core.borrow_mut() = Some(core);
        if let Some((_, state)) = &self.metrics {
            *state.borrow_mut() = Some(metrics::Metrics::new(self.metrics_interval_secs, now));
        }
        self.settle(fx).await;
        Ok(())
    }

    /// Runs `f` on the loaded core, then writes the webhook events it produced in the same
    /// synchronous step (callers load first; an empty slot yields nothing).
    fn with_core<T: Default + Extend<Effect<WebSocket>>>(
        &self,
        f: impl FnOnce(&mut RoomCore<WebSocket>, &sql::DoSql<'_>, i64) -> T,
    ) -> T {
        let db = self.shared.db();
        let now = now_ms();
        let mut slot = self.shared.core.borrow_mut();
        let Some(core) = slot.as_mut() else {
            return T::default();
        };
        let mut out = f(core, &db, now);
        out.extend(core.commit(&db, now));
        self.report(core, &db, now);
        out
    }

    /// Writes an Analytics Engine data point when `METRICS` is bound and one is due
    /// (`metrics::Metrics::due`: the interval passed, or the room just emptied).
    fn report(&self, core: &RoomCore<WebSocket>, db: &sql::DoSql<'_>, now: i64) {
        let Some((dataset, state)) = &self.metrics else {
            return;
        };
        let mut state = state.borrow_mut();
        let Some(m) = state.as_mut() else {
            return;
        };
        if !m.due(now, core.connections()) {
            return;
        }
        let snapshot = metrics::Snapshot {
            counters: Some(&core.counters),
            connections: core.connections(),
            users: core.presence.users().len(),
            storage: self.shared.stats.get(),
            webhooks_pending: core.webhooks_pending(db),
        };
        let point = m.take(now, &self.name, &snapshot);
        if let Err(e) = metrics::MetricsSink::write(dataset, &point) {
            log_line("metrics.write_failed", &[("detail", &e)]);
        }
    }

    /// Applies effects, then does what needs an `await`: stores the alarm (every send was
    /// already handed to the runtime, in order) and POSTs webhook batches one after the
    /// other, each answer deciding the next step.
    async fn settle(&self, fx: Vec<Effect<WebSocket>>) {
        let mut pending = sockets::apply(&self.shared, fx);
        loop {
            if std::mem::take(&mut pending.pump) {
                if let Some(link) = &self.link {
                    fanout::pump(&self.shared, link);
                }
            }
            if let Some(at) = pending.alarm.take() {
                // `set_alarm` takes an i64 as an offset from now, not as a timestamp.
                let offset = (at - now_ms()).max(0);
                if let Err(e) = self.state.storage().set_alarm(offset).await {
                    log_line("room.alarm_failed", &[("detail", &e.to_string())]);
                    if let Some(core) = self.shared.core.borrow_mut().as_mut() {
                        core.alarm_failed();
                    }
                }
            }
            let Some(batch) = pending.deliveries.pop() else {
                return;
            };
            let outcome = sockets::post(&batch).await;
            let jitter = f64::from(crate::runtime::random_u32()) / f64::from(u32::MAX);
            let fx = self
                .with_core(|core, db, now| core.delivered(db, now, batch.upto, &outcome, jitter));
            let next = sockets::apply(&self.shared, fx);
            pending.alarm = next.alarm;
            pending.pump = next.pump;
            pending.deliveries.extend(next.deliveries);
        }
    }

    /// The runtime reports a socket closed or failed (also one the room closed itself,
    /// whose attachment says `gone`: the core has forgotten it already).
    async fn departed(&self, ws: &WebSocket, code: u16) {
        let Some(id) = sockets::identity(ws) else {
            return;
        };
        log_line(
            "socket.close",
            &[("conn", &id.conn), ("code", &code.to_string())],
        );
        if self.load().await.is_err() {
            return;
        }
        let fx = self.with_core(|core, _, now| {
            if id.gone {
                Vec::new() // commits what its departure queued, nothing more
            } else {
                core.closed(now, &id.conn)
            }
        });
        self.settle(fx).await;
    }
}

fn internal(e: worker::Error) -> Error {
    Error::Internal(e.to_string())
}
