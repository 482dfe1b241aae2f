//! What a socket carries across hibernation: its attachment.
//!
//! The attachment is the only per-socket state that survives eviction, so it holds
//! everything a message handler needs without asking anyone: ids and claims, never payloads
//! (workerd caps an attachment at 2 KiB, and `info` is capped at 1 KiB for that reason).

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use wasm_bindgen::JsValue;
use worker::web_sys;
use worker::worker_sys::ext::WebSocketExt;

use crate::auth::LEEWAY_SECS;

/// A socket's attachment.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Session {
    /// Connection id, `c_` + 16 hex digits.
    pub conn: String,
    /// The token's `sub`.
    pub user: String,
    /// Whether the token grants `write`.
    pub write: bool,
    /// Token expiry, unix seconds.
    pub exp: i64,
    /// The token's `info` as JSON object text.
    pub info: Option<String>,
    /// Whether the socket receives presence `join`/`leave` frames (it did not connect
    /// with `presence=off`). Left out of the attachment when true, the default, which is
    /// also what attachments written before the option existed mean.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub presence: bool,
    /// Set once the room has said goodbye to this socket (closed it, or announced its
    /// `leave`), so that a later close or error event does not announce it twice.
    #[serde(default)]
    pub gone: bool,
}

fn yes() -> bool {
    true
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_true(b: &bool) -> bool {
    *b
}

impl Session {
    /// The session attached to a socket, if any.
    ///
    /// Stored as JSON text: reading a string attachment is one runtime call and a parse
    /// in Wasm, where an object attachment costs a runtime call per field through
    /// `serde_wasm_bindgen` — and this runs for every message a client sends. Object
    /// attachments written by earlier versions are still read.
    pub fn of(ws: &worker::WebSocket) -> Option<Session> {
        let raw: &web_sys::WebSocket = ws.as_ref();
        let value = raw.deserialize_attachment().ok()?;
        match value.as_string() {
            Some(text) => serde_json::from_str(&text).ok(),
            None if value.is_null() || value.is_undefined() => None,
            None => ws.deserialize_attachment::<Session>().ok().flatten(),
        }
    }

    /// Attaches this session to a socket (see [`Session::of`]).
    ///
    /// # Errors
    ///
    /// The runtime's error, e.g. when the attachment exceeds its 2 KiB limit.
    pub fn attach(&self, ws: &worker::WebSocket) -> crate::error::Result<()> {
        let text = serde_json::to_string(self)
            .map_err(|e| crate::error::Error::Internal(format!("session: {e}")))?;
        let raw: &web_sys::WebSocket = ws.as_ref();
        raw.serialize_attachment(JsValue::from_str(&text))
            .map_err(|e| crate::error::Error::Internal(format!("attachment: {e:?}")))
    }

    /// Whether the token behind this socket has expired, allowing the clock leeway.
    pub fn expired(&self, now_secs: i64) -> bool {
        now_secs > self.exp + LEEWAY_SECS
    }

    /// The `info` as raw JSON, `{}` when the token had none.
    pub fn info_raw(&self) -> Box<RawValue> {
        info_raw(self.info.as_deref())
    }
}

/// `info` text as raw JSON, `{}` when absent or (defensively) not valid JSON.
pub fn info_raw(info: Option<&str>) -> Box<RawValue> {
    info.and_then(|s| RawValue::from_string(s.to_string()).ok())
        .unwrap_or_else(|| {
            RawValue::from_string("{}".into()).unwrap_or_else(|_| unreachable!("{{}} is JSON"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_allows_leeway() {
        let s = Session {
            conn: "c_1".into(),
            user: "u".into(),
            write: true,
            exp: 1000,
            info: None,
            presence: true,
            gone: false,
        };
        assert!(!s.expired(1000 + LEEWAY_SECS));
        assert!(s.expired(1001 + LEEWAY_SECS));
        assert_eq!(s.info_raw().get(), "{}");
    }

    #[test]
    fn presence_defaults_on_and_only_off_is_stored() {
        let old = r#"{"conn":"c_1","user":"u","write":true,"exp":1,"info":null}"#;
        let s: Session = serde_json::from_str(old).unwrap_or_else(|e| panic!("{e}"));
        assert!(s.presence && !s.gone);
        let on = serde_json::to_string(&s).unwrap_or_default();
        assert!(!on.contains("presence"), "{on}");
        let off = Session {
            presence: false,
            ..s
        };
        let text = serde_json::to_string(&off).unwrap_or_default();
        assert!(text.contains(r#""presence":false"#), "{text}");
        assert_eq!(serde_json::from_str::<Session>(&text).ok(), Some(off));
    }
}
