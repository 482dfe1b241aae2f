//! The room's open sockets with their sessions, cached between events, and everything sent
//! to them: frames are queued in an [`Outbox`] and flushed once the room's current burst of
//! work is done, one WebSocket message per socket, converted to a JS string once.
//!
//! `getWebSockets()` builds a fresh array of wrappers on every call, and
//! `WebSocket::send_with_str(&str)` copies the Rust string into a new JS string per call;
//! at 1→N fan-out both cost O(N) conversions per message, and reading every attachment
//! for presence cost O(N) deserializations per connect (the ramp profile in
//! docs/performance.md). The cache is filled from the runtime once per wake-up — sockets
//! with their attachments, skipping those already gone — and then kept in step with
//! accept and departure.
//!
//! The flush runs from a zero-delay timer. workerd fires timers only when no other work is
//! ready, so "after the current burst" costs an idle room nothing measurable, while a room
//! that is behind (sends still being written, more publishes waiting) coalesces everything
//! that arrived meanwhile. The queue lives behind an `Rc` so the timer callback can own a
//! handle to it.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;

use wasm_bindgen::prelude::*;
use worker::{web_sys, State, WebSocket};

use super::outbox::{presence_delay_ms, Outbox, Payload, To};
use super::session::Session;
use crate::error::close;
use crate::runtime::now_ms;

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

/// One open socket.
pub struct Entry {
    pub ws: WebSocket,
    pub session: Session,
    /// Outbox mark when it joined: it receives only frames queued after that.
    since: u64,
}

/// A user present in the room.
#[derive(Debug, Clone)]
pub struct Member {
    /// How many of the room's sockets are this user's.
    pub sockets: usize,
    /// The `info` of the user's first socket, as JSON text.
    pub info: Option<String>,
}

/// Open sockets and their users, kept together so that neither a connect nor a departure
/// has to scan every socket (a ramp to N sockets would otherwise cost O(N²)).
#[derive(Default)]
struct Cache {
    sockets: Vec<Entry>,
    /// Users by id: presence in `welcome`, `info` and the per-user connection limit.
    users: BTreeMap<String, Member>,
    /// Sockets that receive presence frames (did not connect with `presence=off`).
    watchers: usize,
}

impl Cache {
    fn insert(&mut self, entry: Entry) {
        self.users
            .entry(entry.session.user.clone())
            .and_modify(|m| m.sockets += 1)
            .or_insert_with(|| Member {
                sockets: 1,
                info: entry.session.info.clone(),
            });
        self.watchers += usize::from(entry.session.presence);
        self.sockets.push(entry);
    }

    fn remove(&mut self, ws: &WebSocket) {
        let Some(i) = self.sockets.iter().position(|e| &e.ws == ws) else {
            return;
        };
        let entry = self.sockets.swap_remove(i);
        self.watchers -= usize::from(entry.session.presence);
        if let Some(m) = self.users.get_mut(&entry.session.user) {
            m.sockets -= 1;
            if m.sockets == 0 {
                self.users.remove(&entry.session.user);
            }
        }
    }
}

#[derive(Default)]
struct Shared {
    /// Memory only: after a wake-up it is `None` and reloads from the runtime, which is
    /// the source of truth for hibernated sockets.
    cached: RefCell<Option<Cache>>,
    outbox: RefCell<Outbox>,
    /// When the pending flush timer fires (ms), if one is pending.
    flush_due: Cell<Option<i64>>,
}

/// The cache and the outbox.
#[derive(Default)]
pub struct Sockets {
    shared: Rc<Shared>,
}

impl Sockets {
    /// Runs `f` over the open sockets, loading them if needed.
    pub fn with<T>(&self, state: &State, f: impl FnOnce(&[Entry]) -> T) -> T {
        self.with_cache(state, |c| f(&c.sockets))
    }

    /// Runs `f` over the users present (by id), loading the sockets if needed.
    pub fn members<T>(&self, state: &State, f: impl FnOnce(&BTreeMap<String, Member>) -> T) -> T {
        self.with_cache(state, |c| f(&c.users))
    }

    fn with_cache<T>(&self, state: &State, f: impl FnOnce(&Cache) -> T) -> T {
        let mut slot = self.shared.cached.borrow_mut();
        let cache = slot.get_or_insert_with(|| {
            let mut cache = Cache::default();
            for ws in state.get_websockets() {
                if let Some(session) = Session::of(&ws).filter(|s| !s.gone) {
                    cache.insert(Entry {
                        ws,
                        session,
                        since: 0,
                    });
                }
            }
            cache
        });
        f(cache)
    }

    /// Records a newly accepted socket (only if the cache is loaded; otherwise the next
    /// load from the runtime includes it). Frames already queued are not for it.
    pub fn added(&self, ws: &WebSocket, session: &Session) {
        let since = self.shared.outbox.borrow().mark();
        if let Some(cache) = self.shared.cached.borrow_mut().as_mut() {
            cache.insert(Entry {
                ws: ws.clone(),
                session: session.clone(),
                since,
            });
        }
    }

    /// Forgets a socket that closed, failed or was closed by the room.
    pub fn removed(&self, ws: &WebSocket) {
        if let Some(cache) = self.shared.cached.borrow_mut().as_mut() {
            cache.remove(ws);
        }
    }

    /// Queues `frame` for every socket but the connection `except`.
    pub fn broadcast(&self, state: &State, frame: String, except: Option<&str>) {
        // The flush sends to the cached sockets, so they must be loaded by now.
        self.with(state, |_| ());
        self.shared.outbox.borrow_mut().push(
            frame,
            To::All {
                except: except.map(str::to_string),
            },
        );
        self.schedule(0);
    }

    /// How many sockets a broadcast excluding `except` reaches (O(sockets): for answers
    /// that report it, not for the per-message path).
    pub fn audience(&self, state: &State, except: Option<&str>) -> usize {
        self.with(state, |list| {
            list.iter()
                .filter(|e| Some(e.session.conn.as_str()) != except)
                .count()
        })
    }

    /// Queues a presence frame for every socket that receives presence but `except`
    /// (`frame` is built only if one does). Unlike messages, presence may wait a little
    /// ([`presence_delay_ms`], growing with the room), so a join storm into a big room
    /// costs one send per socket per interval, not one per join.
    pub fn announce(&self, state: &State, frame: impl FnOnce() -> String, except: &str) {
        // `except` may still be in the cache (a join) or not (a leave): counting it as a
        // possible watcher at worst queues a frame nobody takes.
        let watchers = self.with_cache(state, |c| c.watchers);
        if watchers == 0 {
            return;
        }
        self.shared.outbox.borrow_mut().push(
            frame(),
            To::Watchers {
                except: except.to_string(),
            },
        );
        self.schedule(presence_delay_ms(watchers));
    }

    /// Sends `frame` to one socket: at once when nothing is queued, otherwise behind
    /// what is queued, so that the socket sees frames in the order the room made them.
    pub fn send(&self, ws: &WebSocket, conn: &str, frame: String) {
        if self.shared.outbox.borrow().is_empty() {
            let _ = send_js(ws, &JsValue::from_str(&frame));
            return;
        }
        self.shared
            .outbox
            .borrow_mut()
            .push(frame, To::One(conn.to_string()));
        self.schedule(0);
    }

    /// Sends whatever is queued for `ws`, then closes it with `code`. The socket stays in
    /// the cache; the caller's departure handling removes it.
    pub fn close(&self, ws: &WebSocket, code: u16, reason: &str) {
        self.flush();
        let _ = ws.close(Some(code), Some(reason));
    }

    /// Sends everything queued now.
    pub fn flush(&self) {
        flush(&self.shared);
    }

    /// Makes sure a flush runs within `delay_ms`. A timer that fires after an earlier
    /// flush finds the queue empty or newer frames to send; either is harmless.
    fn schedule(&self, delay_ms: i64) {
        let due = now_ms() + delay_ms;
        if self.shared.flush_due.get().is_some_and(|at| at <= due) {
            return;
        }
        self.shared.flush_due.set(Some(due));
        let shared = Rc::clone(&self.shared);
        let callback = Closure::once_into_js(move || flush(&shared));
        let ms = i32::try_from(delay_ms).unwrap_or(i32::MAX);
        if set_timeout(&callback, ms).is_err() {
            // No timer (should not happen in workerd): send now rather than never.
            self.flush();
        }
    }
}

/// Drains the outbox, one message per socket per batch.
///
/// A socket whose `send` throws was closed by the room already (workerd ignores sends to
/// sockets whose peer vanished), so it is just dropped from the cache here; its close or
/// error event does the rest.
fn flush(shared: &Shared) {
    shared.flush_due.set(None);
    loop {
        let batch = shared.outbox.borrow_mut().take();
        if batch.is_empty() {
            return;
        }
        // Converted to JS strings once each, on first use: for sockets that receive
        // presence frames and for those that opted out (the same when the batch holds none).
        let to_js = |watches: bool| -> Vec<JsValue> {
            batch
                .shared(watches)
                .iter()
                .map(|m| JsValue::from_str(m))
                .collect()
        };
        let (mut watching, mut quiet) = (None, None);
        let mut failed = Vec::new();
        if let Some(cache) = shared.cached.borrow().as_ref() {
            for e in &cache.sockets {
                let watches = e.session.presence;
                let sent = match batch.payload(&e.session.conn, e.since, watches) {
                    Payload::Shared => {
                        let slot = if watches { &mut watching } else { &mut quiet };
                        slot.get_or_insert_with(|| to_js(watches))
                            .iter()
                            .try_for_each(|js| send_js(&e.ws, js))
                    }
                    Payload::Own(messages) => messages
                        .iter()
                        .try_for_each(|m| send_js(&e.ws, &JsValue::from_str(m))),
                    Payload::Nothing => Ok(()),
                };
                if sent.is_err() {
                    failed.push(e.ws.clone());
                }
            }
        }
        if !failed.is_empty() {
            if let Some(cache) = shared.cached.borrow_mut().as_mut() {
                for ws in &failed {
                    cache.remove(ws);
                }
            }
            for ws in failed {
                let _ = ws.close(Some(close::INTERNAL), Some("send failed"));
            }
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
