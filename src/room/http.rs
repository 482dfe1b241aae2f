//! The room's internal HTTP routes (what the Worker asks a room, `rpc`): each one
//! translated into a call on the core, its effects applied like any event's.

use worker::{Request, Response, WebSocketPair};

use super::commands::disconnect::DisconnectRequest;
use super::core::Published;
use super::{internal, rpc, Room};
use crate::error::{Error, Result};
use crate::runtime::{json_response, random_id};
use rpc::ConnectRequest;

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
                let core = self.shared.core.borrow();
                let info = core
                    .as_ref()
                    .ok_or_else(no_core)?
                    .info(&self.shared.db(), room, stats);
                json_response(200, &info)
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
