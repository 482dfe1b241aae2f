//! The room's answers to the Worker's internal requests ([`super::rpc`]): the socket
//! upgrade (client sockets and the Worker's SSE/long-poll relays alike), publishes,
//! info and history. Part of the Durable Object's glue, kept apart from its event
//! handlers in `mod.rs`.

use worker::{Request, Response, WebSocketPair};

use super::core::Published;
use super::rpc::{self, ConnectRequest};
use super::{internal, Room};
use crate::error::{Error, Result};
use crate::runtime::{json_response, now_ms, random_id};

impl Room {
    pub(super) async fn route(&self, mut req: Request) -> Result<Response> {
        let url = req.url().map_err(internal)?;
        let query = |name: &str| {
            url.query_pairs()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.into_owned())
        };
        let number = |name: &str| query(name).and_then(|v| v.parse::<u64>().ok());
        match url.path() {
            rpc::path::CONNECT => self.accept(&req).await,
            rpc::path::PUBLISH => {
                // Read text and parse with serde_json: `Request::json` goes through a JS
                // value, which cannot carry the raw `data` payload.
                let text = req.text().await.map_err(internal)?;
                let body: rpc::PublishRequest = serde_json::from_str(&text)
                    .map_err(|e| Error::Internal(format!("bad publish request: {e}")))?;
                let db = self.sql();
                let out = self.with_core(|c| Some(c.publish(&db, now_ms(), &body)));
                let (published, fx) = out.ok_or_else(|| Error::Internal("no core".into()))??;
                self.settle(fx).await;
                match published {
                    Published::Durable(r) => json_response(200, &r),
                    Published::Ephemeral(r) => json_response(200, &r),
                }
            }
            rpc::path::INFO => {
                let stats = self.stats.get();
                let room = query("room").unwrap_or_default();
                let info = self.with_core(|c| Some(c.info(room, stats)));
                json_response(200, &info.ok_or_else(|| Error::Internal("no core".into()))?)
            }
            rpc::path::HISTORY => {
                let since = number("since").unwrap_or(0);
                let limit = number("limit").unwrap_or(u64::from(rpc::DEFAULT_HISTORY_PAGE));
                let limit = u32::try_from(limit).unwrap_or(rpc::MAX_HISTORY_PAGE);
                let db = self.sql();
                let page = self.with_core(|c| Some(c.history(&db, since, limit)));
                json_response(
                    200,
                    &page.ok_or_else(|| Error::Internal("no core".into()))??,
                )
            }
            other => Err(Error::NotFound(other.to_string())),
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
        let pair = WebSocketPair::new().map_err(internal)?;
        let (db, conn) = (self.sql(), random_id("c_"));
        let server = pair.server.clone();
        let fx = self
            .with_core(|core| Some(core.connect(&db, now_ms(), server, conn, &c)))
            .ok_or_else(|| Error::Internal("no core".into()))??;
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
