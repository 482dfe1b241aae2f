//! The room's internal HTTP routes (what the Worker asks a room, `rpc`): each one
//! translated into a call on the core, its effects applied like any event's.

use std::collections::BTreeMap;

use futures_util::future::join_all;
use worker::{Method, Request, Response, WebSocketPair};

use super::commands::disconnect::DisconnectRequest;
use super::core::Published;
use super::fanout::Link;
use super::shard::{Down, DownAnswer, Up};
use super::sharded::Delivered;
use super::{internal, rpc, Part, Room};
use crate::error::{Error, Result};
use crate::runtime::{json_response, log_line, now_ms, random_id};
use rpc::ConnectRequest;
use serde_json::Value;

impl Room {
    pub(super) async fn route(&self, mut req: Request) -> Result<Response> {
        let url = req.url().map_err(internal)?;
        let query = |name: &str| {
            url.query_pairs()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.into_owned())
        };
        let number = |name: &str| query(name).and_then(|v| v.parse::<u64>().ok());
        let no_core = || Error::Internal("no core".into());
        match url.path() {
            rpc::path::CONNECT => self.accept(&req).await,
            rpc::path::PUBLISH => {
                // Read text and parse with serde_json: `Request::json` goes through a JS
                // value, which cannot carry the raw `data` payload.
                let text = req.text().await.map_err(internal)?;
                let body: rpc::PublishRequest = serde_json::from_str(&text)
                    .map_err(|e| Error::Internal(format!("bad publish request: {e}")))?;
                if let (Part::Shard(_), Some(link)) = (self.part, &self.link) {
                    // A client HTTP publish reaches the user's shard, which admits it and
                    // hands it to the sequencer with the publisher resolved.
                    let forward = {
                        let mut slot = self.shared.core.borrow_mut();
                        slot.as_mut()
                            .ok_or_else(no_core)?
                            .prepare_publish(now_ms(), &body)?
                    };
                    let json = serde_json::to_string(&forward)
                        .map_err(|e| Error::Internal(e.to_string()))?;
                    return link
                        .send(&link.room_key, rpc::path::PUBLISH, Method::Post, Some(json))
                        .await;
                }
                let mut answer = None;
                let fx = self.with_core(|c, db, now| match c.publish(db, now, &body) {
                    Ok((published, fx)) => {
                        answer = Some(Ok(published));
                        fx
                    }
                    Err(e) => {
                        answer = Some(Err(e));
                        Vec::new()
                    }
                });
                self.settle(fx).await;
                match answer.ok_or_else(no_core)?? {
                    Published::Durable(r) => json_response(200, &r),
                    Published::Ephemeral(r) => json_response(200, &r),
                }
            }
            rpc::path::INFO => {
                let stats = self.shared.stats.get();
                let room = query("room").unwrap_or_default();
                let info = {
                    let core = self.shared.core.borrow();
                    core.as_ref()
                        .ok_or_else(no_core)?
                        .info(&self.shared.db(), room.clone(), stats)
                };
                if let (Part::Sequencer(n), Some(link)) = (self.part, &self.link) {
                    let fanout_seq = {
                        let core = self.shared.core.borrow();
                        core.as_ref().and_then(|c| c.fanout_seq()).unwrap_or(0)
                    };
                    let mut info =
                        serde_json::to_value(&info).map_err(|e| Error::Internal(e.to_string()))?;
                    info["shards"] = serde_json::json!({ "count": n, "fanout_seq": fanout_seq });
                    self.merge_shard_info(link, n, &room, &mut info).await;
                    return json_response(200, &info);
                }
                json_response(200, &info)
            }
            rpc::path::SHARD_UP => {
                let text = req.text().await.map_err(internal)?;
                let up: Up = serde_json::from_str(&text)
                    .map_err(|e| Error::Internal(format!("bad up batch: {e}")))?;
                let mut results = None;
                let fx = self.with_core(|c, db, now| {
                    let (r, fx) = c.up(db, now, up);
                    results = Some(r);
                    fx
                });
                self.settle(fx).await;
                json_response(200, &results.ok_or_else(no_core)?)
            }
            rpc::path::SHARD_DELIVER => {
                let text = req.text().await.map_err(internal)?;
                let down: Down = serde_json::from_str(&text)
                    .map_err(|e| Error::Internal(format!("bad down batch: {e}")))?;
                let answer = self.deliver(down).await?;
                json_response(200, &answer)
            }
            rpc::path::SHARD_FILL => {
                let (after, before) = (number("after").unwrap_or(0), number("before").unwrap_or(0));
                let core = self.shared.core.borrow();
                let fill =
                    core.as_ref()
                        .ok_or_else(no_core)?
                        .fill(&self.shared.db(), after, before)?;
                json_response(200, &fill)
            }
            rpc::path::HISTORY => {
                let since = number("since").unwrap_or(0);
                let limit = number("limit").unwrap_or(u64::from(rpc::DEFAULT_HISTORY_PAGE));
                let limit = u32::try_from(limit).unwrap_or(rpc::MAX_HISTORY_PAGE);
                let core = self.shared.core.borrow();
                let page = core.as_ref().ok_or_else(no_core)?;
                json_response(200, &page.history(&self.shared.db(), since, limit)?)
            }
            rpc::path::WEBHOOKS => {
                let core = self.shared.core.borrow();
                let status = core.as_ref().ok_or_else(no_core)?;
                json_response(200, &status.webhook_status(&self.shared.db())?)
            }
            rpc::path::WEBHOOKS_RETRY => {
                let mut requeued = None;
                let fx = self.with_core(|c, db, now| match c.webhook_retry(db, now) {
                    Ok((n, fx)) => {
                        requeued = Some(Ok(n));
                        fx
                    }
                    Err(e) => {
                        requeued = Some(Err(e));
                        Vec::new()
                    }
                });
                self.settle(fx).await;
                let requeued = requeued.ok_or_else(no_core)??;
                json_response(200, &serde_json::json!({ "requeued": requeued }))
            }
            rpc::path::DISCONNECT => {
                let text = req.text().await.map_err(internal)?;
                let body: DisconnectRequest = serde_json::from_str(&text)
                    .map_err(|e| Error::Internal(format!("bad disconnect request: {e}")))?;
                let mut result = None;
                let fx = self.with_core(|c, _, now| {
                    let (r, fx) = c.disconnect(now, &body);
                    result = Some(r);
                    fx
                });
                self.settle(fx).await;
                json_response(200, &result.ok_or_else(no_core)?)
            }
            other => Err(Error::NotFound(other.to_string())),
        }
    }

    /// A batch from the sequencer, with a gap filled from its history first.
    async fn deliver(&self, down: Down) -> Result<DownAnswer> {
        let mut batches = vec![down];
        // At most one fill: a second gap right after a fill means the history no longer
        // holds the missing messages, and the batch is then delivered as it is.
        let mut filled = false;
        while let Some(batch) = batches.pop() {
            let mut outcome = None;
            let fx = self.with_core(|c, db, now| {
                let attempt = if filled {
                    c.deliver_anyway(db, now, batch.clone())
                } else {
                    c.deliver(db, now, batch.clone())
                };
                match attempt {
                    Ok(Delivered::Done(answer, fx)) => {
                        outcome = Some(Ok(Ok(answer)));
                        fx
                    }
                    Ok(Delivered::Gap { after, before }) => {
                        outcome = Some(Ok(Err((after, before))));
                        Vec::new()
                    }
                    Err(e) => {
                        outcome = Some(Err(e));
                        Vec::new()
                    }
                }
            });
            self.settle(fx).await;
            match outcome.ok_or_else(|| Error::Internal("no core".into()))?? {
                Ok(answer) if batches.is_empty() => return Ok(answer),
                Ok(_) => {}
                Err((after, before)) => {
                    let link = self
                        .link
                        .as_ref()
                        .ok_or_else(|| Error::Internal("a shard without a link".into()))?;
                    log_line(
                        "shard.gap",
                        &[
                            ("after", &after.to_string()),
                            ("before", &before.to_string()),
                        ],
                    );
                    let path = format!("{}?after={after}&before={before}", rpc::path::SHARD_FILL);
                    let mut resp = link.send(&link.room_key, &path, Method::Get, None).await?;
                    let text = resp.text().await.map_err(internal)?;
                    let fill: Down = serde_json::from_str(&text)
                        .map_err(|e| Error::Internal(format!("bad fill: {e}")))?;
                    filled = true;
                    batches.push(batch);
                    batches.push(fill);
                }
            }
        }
        Err(Error::Internal("nothing delivered".into()))
    }

    /// `GET /v1/rooms/{room}` of a sharded room: the sequencer's log and counters, plus
    /// the shards' sockets, users and counters (summed; `peak_connections` is then the
    /// sum of the shards' peaks, an upper bound of the room's).
    async fn merge_shard_info(&self, link: &Link, shards: u32, room: &str, info: &mut Value) {
        let path = format!("{}?room={room}", rpc::path::INFO);
        let calls = (0..shards).map(|i| {
            let (name, path) = (link.shard(i), path.clone());
            async move {
                let mut resp = link.send(&name, &path, Method::Get, None).await?;
                let text = resp.text().await.map_err(internal)?;
                serde_json::from_str::<Value>(&text)
                    .map_err(|e| Error::Internal(format!("shard info: {e}")))
            }
        });
        let mut users: BTreeMap<String, (u64, Value)> = BTreeMap::new();
        let mut connections = 0;
        let mut counters = info.get("counters").cloned().unwrap_or(Value::Null);
        for answer in join_all(calls).await {
            let shard = match answer {
                Ok(v) => v,
                Err(e) => {
                    log_line("shard.info_failed", &[("detail", &e.to_string())]);
                    continue;
                }
            };
            connections += shard["connections"].as_u64().unwrap_or(0);
            for u in shard["users"].as_array().into_iter().flatten() {
                let (Some(name), n) = (u["user"].as_str(), u["connections"].as_u64().unwrap_or(0))
                else {
                    continue;
                };
                let entry = users
                    .entry(name.to_string())
                    .or_insert_with(|| (0, u["info"].clone()));
                entry.0 += n;
            }
            add_counts(&mut counters, &shard["counters"]);
        }
        info["connections"] = connections.into();
        info["users"] = users
            .into_iter()
            .map(|(user, (n, i))| serde_json::json!({ "user": user, "connections": n, "info": i }))
            .collect();
        info["counters"] = counters;
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
        let pair = WebSocketPair::new().map_err(internal)?;
        let (server, conn) = (pair.server.clone(), random_id("c_"));
        let mut refused = None;
        let fx = self.with_core(
            |core, db, now| match core.connect(db, now, server, conn, &c) {
                Ok(fx) => fx,
                Err(e) => {
                    refused = Some(e);
                    Vec::new()
                }
            },
        );
        if let Some(e) = refused {
            return Err(e);
        }
        // No tags: the core answers every lookup, and the attachment (the first effect)
        // carries what survives hibernation.
        self.state.accept_web_socket(&pair.server);
        self.settle(fx).await;
        let mut resp = Response::from_websocket(pair.client).map_err(internal)?;
        if c.subprotocol {
            resp.headers_mut()
                .set("Sec-WebSocket-Protocol", crate::router::SUBPROTOCOL)
                .map_err(internal)?;
        }
        Ok(resp)
    }
}

/// Adds a shard's counters into the room's: numbers and maps of numbers summed, the
/// start time left as the sequencer's.
fn add_counts(into: &mut Value, from: &Value) {
    let (Some(into), Some(from)) = (into.as_object_mut(), from.as_object()) else {
        return;
    };
    for (key, v) in from {
        if key == "since_ms" {
            continue;
        }
        match v {
            Value::Number(n) => {
                let sum =
                    into.get(key).and_then(Value::as_u64).unwrap_or(0) + n.as_u64().unwrap_or(0);
                into.insert(key.clone(), sum.into());
            }
            Value::Object(_) => {
                let slot = into
                    .entry(key.clone())
                    .or_insert_with(|| Value::Object(Default::default()));
                add_counts(slot, v);
            }
            _ => {}
        }
    }
}
