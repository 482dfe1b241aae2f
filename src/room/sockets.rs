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

use wasm_bindgen::prelude::*;
use worker::worker_sys::ext::WebSocketExt;
use worker::{web_sys, WebSocket};

use super::core::{Effect, Out, RoomCore};
use super::peer::Identity;
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

/// The core, shared with the flush timer's callback; `None` until the first event after
/// the object was constructed (or woke up) loads it.
pub type Shared = Rc<RefCell<Option<RoomCore<WebSocket>>>>;

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

/// Applies effects in order, except the alarm, which needs an `await`: the earliest
/// alarm asked for is returned for the caller to store.
pub fn apply(core: &Shared, effects: Vec<Effect<WebSocket>>) -> Option<i64> {
    let mut alarm: Option<i64> = None;
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
                alarm = Some(alarm.map_or(at_ms, |a| a.min(at_ms)));
            }
            Effect::Log { event, fields } => {
                let fields: Vec<(&str, &str)> =
                    fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
                log_line(event, &fields);
            }
        }
    }
    alarm
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
        let mut slot = core.borrow_mut();
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
