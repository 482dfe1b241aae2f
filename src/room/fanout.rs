//! The runtime side of a sharded room (docs/sharding.md): carries the core's batches
//! between the sequencer and its shards over Durable Object `fetch`, and reports the
//! answers back to the core.
//!
//! Each batch is sent from a task of its own (`spawn_local`), not from the request that
//! produced it: a publish is answered as soon as it is sequenced, while fan-out to the
//! shards proceeds behind it, one batch in flight per shard. The core decides what goes
//! next; this file only sends.

use std::rc::Rc;

use serde::de::DeserializeOwned;
use serde::Serialize;
use wasm_bindgen::JsValue;
use worker::wasm_bindgen_futures::spawn_local;
use worker::{Headers, Method, ObjectNamespace, Request, RequestInit, Response};

use super::rpc::path;
use super::shard::{shard_key, Down, DownAnswer, UpResult};
use super::sockets::{self, Shared};
use crate::error::{Error, Result};
use crate::runtime::{log_line, now_ms};

/// Where the room's other objects are.
#[derive(Clone)]
pub struct Link {
    /// The rooms namespace.
    pub ns: ObjectNamespace,
    /// The room's key, `tenant/room` (the sequencer's name).
    pub room_key: String,
}

impl Link {
    /// POSTs `body` as JSON to object `name` at `path` and returns its answer.
    ///
    /// # Errors
    ///
    /// `Internal` when the object cannot be reached or answers with an error.
    pub async fn post<T: Serialize, R: DeserializeOwned>(
        &self,
        name: &str,
        path: &str,
        body: &T,
    ) -> Result<R> {
        let json = serde_json::to_string(body).map_err(|e| Error::Internal(e.to_string()))?;
        let mut resp = self.send(name, path, Method::Post, Some(json)).await?;
        let text = resp.text().await.map_err(internal)?;
        if resp.status_code() != 200 {
            return Err(Error::Internal(format!(
                "{name}{path} answered {}: {text}",
                resp.status_code()
            )));
        }
        serde_json::from_str(&text).map_err(|e| Error::Internal(format!("{name}{path}: {e}")))
    }

    /// Sends a request to object `name` and returns its answer as is.
    ///
    /// # Errors
    ///
    /// `Internal` when the object cannot be reached.
    pub async fn send(
        &self,
        name: &str,
        path: &str,
        method: Method,
        body: Option<String>,
    ) -> Result<Response> {
        let headers = Headers::new();
        headers
            .set("Content-Type", "application/json")
            .map_err(internal)?;
        let mut init = RequestInit::new();
        init.with_method(method).with_headers(headers);
        if let Some(body) = body {
            init.with_body(Some(JsValue::from_str(&body)));
        }
        let req = Request::new_with_init(&format!("https://room.internal{path}"), &init)
            .map_err(internal)?;
        let stub = self.ns.get_by_name(name).map_err(internal)?;
        stub.fetch_with_request(req).await.map_err(internal)
    }

    /// The name of shard `i`.
    pub fn shard(&self, i: u32) -> String {
        shard_key(&self.room_key, i)
    }
}

fn internal(e: worker::Error) -> Error {
    Error::Internal(e.to_string())
}

/// Sends every batch the core has ready: a shard's batch up to the sequencer, or the
/// sequencer's batches down to each shard without one in flight.
pub fn pump(shared: &Shared, link: &Link) {
    let (up, downs) = {
        let mut slot = shared.core.borrow_mut();
        let Some(core) = slot.as_mut() else {
            return;
        };
        let up = core.take_up();
        let downs: Vec<(u32, Down)> = core
            .ready_shards()
            .into_iter()
            .filter_map(|i| core.take_down(i).map(|d| (i, d)))
            .collect();
        (up, downs)
    };
    if let Some(up) = up {
        let (shared, link) = (Rc::clone(shared), link.clone());
        spawn_local(async move {
            let answer: Result<Vec<UpResult>> =
                link.post(&link.room_key, path::SHARD_UP, &up).await;
            if let Err(e) = &answer {
                log_line("shard.up_failed", &[("detail", &e.to_string())]);
            }
            let fx = match shared.core.borrow_mut().as_mut() {
                Some(core) => core.up_answered(now_ms(), answer.ok()),
                None => Vec::new(),
            };
            settle_task(&shared, &link, fx);
        });
    }
    for (i, down) in downs {
        let (shared, link) = (Rc::clone(shared), link.clone());
        spawn_local(async move {
            let answer: Result<DownAnswer> =
                link.post(&link.shard(i), path::SHARD_DELIVER, &down).await;
            if let Err(e) = &answer {
                log_line(
                    "shard.deliver_failed",
                    &[("shard", &i.to_string()), ("detail", &e.to_string())],
                );
            }
            let failed = answer.is_err();
            let fx = {
                let db = shared.db();
                match shared.core.borrow_mut().as_mut() {
                    Some(core) => core.shard_answered(&db, i, answer.ok()),
                    None => Vec::new(),
                }
            };
            settle_task(&shared, &link, fx);
            if failed {
                // Try the shard again after a pause, rather than in a tight loop; the
                // alarm's resend covers a sequencer that is evicted meanwhile.
                worker::Delay::from(std::time::Duration::from_millis(500)).await;
                pump(&shared, &link);
            }
        });
    }
}

/// Applies what an answer produced. Answers never ask for an alarm or a webhook POST
/// (only requests do, through the object's `settle`), so sends are all there is.
fn settle_task(shared: &Shared, link: &Link, fx: Vec<super::core::Effect<worker::WebSocket>>) {
    let pending = sockets::apply(shared, fx);
    if pending.alarm.is_some() || !pending.deliveries.is_empty() {
        log_line("shard.unexpected_effect", &[]);
    }
    if pending.pump {
        pump(shared, link);
    }
}
