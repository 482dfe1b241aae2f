//! The internal WebSocket between the Worker and a room, for SSE streams and long-polls.
//!
//! The Worker opens it exactly like a client's socket (the room's `CONNECT` path with the
//! verified session), accepts the returned socket in the Worker and reads it here. The
//! room accepts its end with the Hibernation API, so while the Worker waits on it the room
//! may be evicted; the runtime keeps the socket and wakes the room for its next message
//! (proved by `miniflare/transports.test.mjs`, "hibernation").
//!
//! `worker::WebSocket::events()` borrows the socket, which a response body that outlives
//! the handler cannot hold, so the listeners here own their channel and are removed, and
//! the socket closed, when the relay is dropped — which is also what happens when the
//! client goes away and the runtime cancels the response body. The runtime notices a
//! vanished HTTP client only when a write to it fails, so an SSE relay is freed at its
//! next event or keep-alive comment, and a waiting long-poll at its timeout. (workerd's
//! `enable_request_signal` flag would tell sooner, but under Miniflare the signal of a
//! disconnecting client never fired, so nothing here depends on it.)

use futures_channel::mpsc::{unbounded, UnboundedReceiver, UnboundedSender};
use futures_util::StreamExt;
use wasm_bindgen::closure::Closure;
use wasm_bindgen::JsCast;
use worker::{web_sys, Env, WebSocket};

use crate::error::{close, Error, Result};
use crate::room::rpc::ConnectRequest;
use crate::router::{forward_connect, internal, room_refusal};

/// What the room sent on the internal socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// One WebSocket message (a frame or an array of frames).
    Text(String),
    /// The room closed the socket (or it failed: 1006).
    Closed {
        /// Close code.
        code: u16,
        /// Close reason.
        reason: String,
    },
}

type Listener<T> = Closure<dyn FnMut(T)>;

/// An open internal socket to a room.
pub struct Relay {
    ws: WebSocket,
    rx: UnboundedReceiver<Event>,
    listeners: Option<(
        Listener<web_sys::MessageEvent>,
        Listener<web_sys::CloseEvent>,
        Listener<web_sys::Event>,
    )>,
    ended: bool,
}

impl Relay {
    /// Connects `session` to its room.
    ///
    /// # Errors
    ///
    /// The room's refusal (`too_many_connections`) as the error the client is answered
    /// with; `Internal` for anything else.
    pub async fn open(env: &Env, tenant: Option<&str>, session: &ConnectRequest) -> Result<Self> {
        let mut resp = forward_connect(env, tenant, session).await?;
        if resp.status_code() != 101 {
            let status = resp.status_code();
            let body = resp.bytes().await.map_err(internal)?;
            return Err(room_refusal(&body).unwrap_or_else(|| {
                Error::Internal(format!("room refused a relay socket with {status}"))
            }));
        }
        let ws = resp
            .websocket()
            .ok_or_else(|| Error::Internal("room answered 101 without a socket".into()))?;
        let (tx, rx) = unbounded();
        let listeners = listen(&ws, &tx)?;
        ws.accept().map_err(internal)?;
        Ok(Relay {
            ws,
            rx,
            listeners: Some(listeners),
            ended: false,
        })
    }

    /// Closes the socket now (the room sees a normal close and forgets it).
    pub fn close(&self) {
        let _ = self.ws.close(Some(close::NORMAL), Some("relay done"));
    }

    /// The next event; `None` after the socket closed.
    pub async fn next(&mut self) -> Option<Event> {
        if self.ended {
            return None;
        }
        let event = self.rx.next().await;
        if !matches!(event, Some(Event::Text(_))) {
            self.ended = true;
        }
        event
    }

    /// Sends a frame to the room (a `received` receipt). A failed send means the socket
    /// is closing, which the next event reports.
    pub fn send(&self, text: &str) {
        let _ = self.ws.send_with_str(text);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // The client's stream ended (or the long-poll answered): the room sees a normal
        // close and forgets the socket. Closing an already closed socket is harmless.
        self.close();
        if let Some((message, closed, error)) = self.listeners.take() {
            let raw: &web_sys::WebSocket = self.ws.as_ref();
            let _ = raw
                .remove_event_listener_with_callback("message", message.as_ref().unchecked_ref());
            let _ =
                raw.remove_event_listener_with_callback("close", closed.as_ref().unchecked_ref());
            let _ =
                raw.remove_event_listener_with_callback("error", error.as_ref().unchecked_ref());
        }
    }
}

fn listen(
    ws: &WebSocket,
    tx: &UnboundedSender<Event>,
) -> Result<(
    Listener<web_sys::MessageEvent>,
    Listener<web_sys::CloseEvent>,
    Listener<web_sys::Event>,
)> {
    let raw: &web_sys::WebSocket = ws.as_ref();
    let on_message = {
        let tx = tx.clone();
        Closure::<dyn FnMut(web_sys::MessageEvent)>::new(move |e: web_sys::MessageEvent| {
            // The room sends text only; a send into a dropped relay is simply discarded.
            if let Some(text) = e.data().as_string() {
                let _ = tx.unbounded_send(Event::Text(text));
            }
        })
    };
    let on_close = {
        let tx = tx.clone();
        Closure::<dyn FnMut(web_sys::CloseEvent)>::new(move |e: web_sys::CloseEvent| {
            let _ = tx.unbounded_send(Event::Closed {
                code: e.code(),
                reason: e.reason(),
            });
        })
    };
    let on_error = {
        let tx = tx.clone();
        Closure::<dyn FnMut(web_sys::Event)>::new(move |_e: web_sys::Event| {
            let _ = tx.unbounded_send(Event::Closed {
                code: 1006,
                reason: String::new(),
            });
        })
    };
    let add = |name: &str, f: &JsValueRef| {
        raw.add_event_listener_with_callback(name, f.unchecked_ref())
            .map_err(|e| Error::Internal(format!("relay listener: {e:?}")))
    };
    add("message", on_message.as_ref())?;
    add("close", on_close.as_ref())?;
    add("error", on_error.as_ref())?;
    Ok((on_message, on_close, on_error))
}

type JsValueRef = wasm_bindgen::JsValue;
