//! The room's open sockets with their sessions, cached between events, and a fan-out that
//! converts each frame to a JS string once.
//!
//! `getWebSockets()` builds a fresh array of wrappers on every call, and
//! `WebSocket::send_with_str(&str)` copies the Rust string into a new JS string per call;
//! at 1→N fan-out both cost O(N) conversions per message, and reading every attachment
//! for presence cost O(N) deserializations per connect (the ramp profile in
//! docs/performance.md). The cache is filled from the runtime once per wake-up — sockets
//! with their attachments, skipping those already gone — and then kept in step with
//! accept and departure; one `JsValue` string is handed to every `send`.

use std::cell::RefCell;

use wasm_bindgen::prelude::*;
use worker::{web_sys, State, WebSocket};

use super::session::Session;

#[wasm_bindgen]
extern "C" {
    /// A runtime WebSocket seen only through `send`, so that `send` can take an
    /// already-converted JS value (web-sys only offers `&str`, which converts per call).
    #[wasm_bindgen(js_name = WebSocket)]
    type SendOnly;

    #[wasm_bindgen(method, catch, js_name = send)]
    fn send_value(this: &SendOnly, data: &JsValue) -> Result<(), JsValue>;
}

/// The cache. Memory only: after a wake-up it is `None` and reloads from the runtime,
/// which is the source of truth for hibernated sockets.
#[derive(Default)]
pub struct Sockets {
    cached: RefCell<Option<Vec<(WebSocket, Session)>>>,
}

impl Sockets {
    /// Runs `f` over the open sockets and their sessions, loading them if needed.
    pub fn with<T>(&self, state: &State, f: impl FnOnce(&[(WebSocket, Session)]) -> T) -> T {
        let mut slot = self.cached.borrow_mut();
        let list = slot.get_or_insert_with(|| {
            state
                .get_websockets()
                .into_iter()
                .filter_map(|ws| Session::of(&ws).filter(|s| !s.gone).map(|s| (ws, s)))
                .collect()
        });
        f(list)
    }

    /// Records a newly accepted socket (only if the cache is loaded; otherwise the next
    /// load from the runtime includes it).
    pub fn added(&self, ws: &WebSocket, session: &Session) {
        if let Some(list) = self.cached.borrow_mut().as_mut() {
            list.push((ws.clone(), session.clone()));
        }
    }

    /// Forgets a socket that closed, failed or was closed by the room.
    pub fn removed(&self, ws: &WebSocket) {
        if let Some(list) = self.cached.borrow_mut().as_mut() {
            list.retain(|(other, _)| other != ws);
        }
    }
}

/// Sends `frame` (already a JS string) to one socket.
///
/// # Errors
///
/// The runtime's error when the socket is closing or closed.
pub fn send_js(ws: &WebSocket, frame: &JsValue) -> Result<(), JsValue> {
    let raw: &web_sys::WebSocket = ws.as_ref();
    raw.unchecked_ref::<SendOnly>().send_value(frame)
}
