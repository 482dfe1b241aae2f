//! Small helpers at the edge between the core and the Workers runtime: the clock,
//! randomness, JSON responses and structured log lines.

use serde::Serialize;
use worker::{Headers, Response};

use crate::error::Error;

/// Milliseconds since the unix epoch, from the runtime's clock.
pub fn now_ms() -> i64 {
    // `Date.now()` directly: `worker::Date::now()` allocates a JS `Date` object per call,
    // which showed up in the publish-path profile (docs/performance.md).
    worker::js_sys::Date::now() as i64
}

/// A random id: `prefix` + 16 lowercase hex digits (64 bits, so collisions within a room
/// or across epochs are not a practical concern).
pub fn random_id(prefix: &str) -> String {
    let mut bytes = [0u8; 8];
    if getrandom::getrandom(&mut bytes).is_err() {
        // Only reachable if the runtime lost `crypto.getRandomValues`; fall back to the
        // clock so an id is still produced, and say so in the logs.
        log_line("runtime.no_randomness", &[]);
        bytes = (now_ms() as u64).to_le_bytes();
    }
    format!("{prefix}{}", hex::encode(bytes))
}

/// A random 32-bit number (for retry jitter).
pub fn random_u32() -> u32 {
    let mut bytes = [0u8; 4];
    if getrandom::getrandom(&mut bytes).is_err() {
        bytes = (now_ms() as u32).to_le_bytes();
    }
    u32::from_le_bytes(bytes)
}

/// A JSON response with the given status.
///
/// # Errors
///
/// `Internal` if the response cannot be built.
pub fn json_response<T: Serialize>(status: u16, body: &T) -> crate::error::Result<Response> {
    let text = serde_json::to_string(body).map_err(|e| Error::Internal(e.to_string()))?;
    let headers = Headers::new();
    headers
        .set("Content-Type", "application/json")
        .map_err(|e| Error::Internal(e.to_string()))?;
    Ok(Response::builder()
        .with_status(status)
        .with_headers(headers)
        .fixed(text.into_bytes()))
}

/// The HTTP answer to an error: status, JSON body and the headers the contract asks for.
/// Internal details go to the log, never to the client.
pub fn error_response(e: &Error) -> Response {
    if let Error::Internal(detail) | Error::Misconfigured(detail) = e {
        log_line("error", &[("code", e.code()), ("detail", detail)]);
    }
    let body = serde_json::to_string(&e.body()).unwrap_or_else(|_| {
        r#"{"error":{"code":"internal","message":"internal error"}}"#.to_string()
    });
    let headers = Headers::new();
    let _ = headers.set("Content-Type", "application/json");
    if e.is_token_error() {
        let _ = headers.set("WWW-Authenticate", r#"Bearer error="invalid_token""#);
    }
    if let Error::MethodNotAllowed(allow) = e {
        let _ = headers.set("Allow", allow);
    }
    if let Some(ms) = e.retry_after_ms() {
        let _ = headers.set("Retry-After", &ms.div_ceil(1000).max(1).to_string());
    }
    Response::builder()
        .with_status(e.status())
        .with_headers(headers)
        .fixed(body.into_bytes())
}

/// Writes one structured JSON log line (visible in `wrangler tail`). Callers pass only
/// ids, codes and reasons: never tokens, signatures or message bodies.
pub fn log_line(event: &str, fields: &[(&str, &str)]) {
    let mut map = serde_json::Map::new();
    map.insert("event".into(), event.into());
    for (k, v) in fields {
        map.insert((*k).into(), (*v).into());
    }
    worker::console_log!("{}", serde_json::Value::Object(map));
}
