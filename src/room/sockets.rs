//! The runtime side of the room's sockets: attachments, sends, closes and the flush
//! timer — everything the [`RoomCore`]'s effects need from workerd, and nothing else.
//!
//! Sends take an already-converted JS string: `WebSocket::send_with_str(&str)` copies the
//! Rust string into a new JS string per call, so at 1→N fan-out the shared messages of a
//! batch are converted once and that one value is sent to every socket.
//!
//! The flush runs from a zero-delay timer. workerd fires timers only when no other work is
//! ready, so "after the current burst" costs an idle room nothing measurable, while a room
//! that is behind (sends still being written, more publishes waiting) coalesces everything
//! that arrived meanwhile (see `outbox`).

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use futures_util::future::{select, Either};

use wasm_bindgen::prelude::*;
use worker::worker_sys::ext::WebSocketExt;
use worker::{web_sys, Fetch, Headers, Method, Request, RequestInit, SqlStorage, WebSocket};

use super::core::{Effect, Out, RoomCore};
use super::peer::Identity;
use super::sql::{DoSql, Stats};
use super::webhooks::{Delivery, Outcome, TIMEOUT_MS};
use crate::error::{Error, Result};
use crate::runtime::{log_line, now_ms};

#[wasm_bindgen]
extern "C" {
    /// A runtime WebSocket seen only through `send`, so that `send` can take an
    /// already-converted JS value (web-sys only offers `&str`, which converts per call).
    #[wasm_bindgen(js_name = WebSocket)]
    type SendOnly;

    #[wasm_bindgen(method, catch, js_name = send)]
    fn send_value(this: &SendOnly, data: &JsValue) -> Result<(), JsValue>;

    #[wasm_bindgen(catch, js_name = setTimeout)]
    fn set_timeout(callback: &JsValue, ms: i32) -> Result<JsValue, JsValue>;
}

/// What the object shares with the flush timer's callback.
pub struct Room {
    /// The core; `None` until the first event after construction (or a wake-up) loads it.
    pub core: RefCell<Option<RoomCore<WebSocket>>>,
    /// The room's SQLite.
    pub sql: SqlStorage,
    /// Rows read and written.
    pub stats: Stats,
}

impl Room {
    /// The SQLite handle as the core's [`super::log::Sql`].
    pub fn db(&self) -> DoSql<'_> {
        DoSql {
            sql: self.sql.clone(),
            stats: &self.stats,
        }
    }
}

/// The shared part, behind an `Rc` so the timer callback can own a handle to it.
pub type Shared = Rc<Room>;

/// What applying effects left for an `await`: the alarm to store and webhooks to POST.
#[derive(Default)]
pub struct Pending {
    /// The earliest alarm asked for.
    pub alarm: Option<i64>,
    /// Batches to deliver, in order.
    pub deliveries: Vec<Delivery>,
    /// Whether a sharded room's batches are ready for its other objects.
    pub pump: bool,
}

/// The identity attached to a socket, if any.
///
/// Stored as JSON text: reading a string attachment is one runtime call and a parse in
/// Wasm, where an object attachment costs a runtime call per field — and this runs for
/// every message a client sends. Object attachments written by older versions are read.
pub fn identity(ws: &WebSocket) -> Option<Identity> {
    let raw: &web_sys::WebSocket = ws.as_ref();
    let value = raw.deserialize_attachment().ok()?;
    match value.as_string() {
        Some(text) => serde_json::from_str(&text).ok(),
        None if value.is_null() || value.is_undefined() => None,
        None => ws.deserialize_attachment::<Identity>().ok().flatten(),
    }
}

fn attach(ws: &WebSocket, id: &Identity) -> Result<()> {
    let text = serde_json::to_string(id).map_err(|e| Error::Internal(format!("identity: {e}")))?;
    let raw: &web_sys::WebSocket = ws.as_ref();
    raw.serialize_attachment(JsValue::from_str(&text))
        .map_err(|e| Error::Internal(format!("attachment: {e:?}")))
}

fn send_js(ws: &WebSocket, frame: &JsValue) -> bool {
    let raw: &web_sys::WebSocket = ws.as_ref();
    raw.unchecked_ref::<SendOnly>().send_value(frame).is_ok()
}

/// Applies effects in order, except those that need an `await` (storing the alarm,
/// POSTing webhooks), which are returned for the caller.
pub fn apply(core: &Shared, effects: Vec<Effect<WebSocket>>) -> Pending {
    let mut pending = Pending::default();
    for effect in effects {
        match effect {
            // A failed send or close means the socket is going away; its close or error
            // event (or the next flush) cleans up.
            Effect::Send { to, text } => {
                send_js(&to, &JsValue::from_str(&text));
            }
            Effect::Close { to, code, reason } => {
                let _ = to.close(Some(code), Some(reason));
            }
            Effect::Attach { to, identity } => {
                if let Err(e) = attach(&to, &identity) {
                    log_line("room.attach_failed", &[("detail", &e.to_string())]);
                }
            }
            Effect::Flush { delay_ms } => schedule_flush(core, delay_ms),
            Effect::SetAlarm { at_ms } => {
                pending.alarm = Some(pending.alarm.map_or(at_ms, |a| a.min(at_ms)));
            }
            Effect::Deliver(batch) => pending.deliveries.push(batch),
            Effect::Pump => pending.pump = true,
            Effect::Log { event, fields } => {
                let fields: Vec<(&str, &str)> =
                    fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
                log_line(event, &fields);
            }
        }
    }
    pending
}

fn schedule_flush(core: &Shared, delay_ms: i64) {
    let shared = Rc::clone(core);
    let callback = Closure::once_into_js(move || flush(&shared));
    let ms = i32::try_from(delay_ms).unwrap_or(i32::MAX);
    if set_timeout(&callback, ms).is_err() {
        // No timer (should not happen in workerd): send now rather than never.
        flush(core);
    }
}

/// Runs the core's flush, converting each batch's shared messages to JS strings once.
fn flush(core: &Shared) {
    let effects = {
        let mut slot = core.core.borrow_mut();
        let Some(room) = slot.as_mut() else {
            return;
        };
        // Shared messages by kind of socket (receives presence or not), converted on first
        // use in each batch.
        let mut cache: [Option<(usize, Vec<JsValue>)>; 2] = [None, None];
        room.flush(now_ms(), &mut |ws, out| match out {
            Out::Shared {
                batch,
                watches,
                messages,
            } => {
                let slot = &mut cache[usize::from(watches)];
                if slot.as_ref().is_none_or(|(b, _)| *b != batch) {
                    *slot = Some((
                        batch,
                        messages.iter().map(|m| JsValue::from_str(m)).collect(),
                    ));
                }
                let Some((_, slot)) = slot.as_ref() else {
                    return false;
                };
                slot.iter().all(|js| send_js(ws, js))
            }
            Out::Own(messages) => messages.iter().all(|m| send_js(ws, &JsValue::from_str(m))),
        })
    };
    // A flush never asks for an alarm (it only closes sockets and queues presence).
    let _ = apply(core, effects);
}

/// POSTs one webhook batch, giving up after [`TIMEOUT_MS`].
pub async fn post(batch: &Delivery) -> Outcome {
    let attempt = async {
        let headers = Headers::new();
        headers.set("Content-Type", "application/json")?;
        headers.set("Roomcast-Signature", &batch.signature)?;
        let mut init = RequestInit::new();
        init.with_method(Method::Post)
            .with_headers(headers)
            .with_body(Some(JsValue::from_str(&batch.body)));
        let req = Request::new_with_init(&batch.url, &init)?;
        let resp = Fetch::Request(req).send().await?;
        Ok::<u16, worker::Error>(resp.status_code())
    };
    let timeout = worker::Delay::from(Duration::from_millis(TIMEOUT_MS));
    match select(Box::pin(attempt), timeout).await {
        Either::Left((Ok(status), _)) => Outcome::Status(status),
        Either::Left((Err(e), _)) => Outcome::Failed(format!("network error: {e}")),
        Either::Right(_) => Outcome::Failed(format!("no answer within {} ms", TIMEOUT_MS)),
    }
}
