//! CORS for the client HTTP routes (SSE, long-poll, HTTP publish): a page on an allowed
//! origin (any origin while `ALLOWED_ORIGINS` is unset) may call them and read their
//! answers, including refusals, whose JSON body tells it what to do.
//!
//! Credentials are tokens (`Authorization` or `access_token`), never cookies, so the
//! answers do not allow credentials and a page cannot ride on a user's session.

use worker::{Headers, Request, Response};

use crate::config::Config;
use crate::error::Result;
use crate::router::{check_origin, header, internal};

/// Methods the client HTTP routes accept.
pub const METHODS: &str = "GET, POST, OPTIONS";
/// Request headers a page may send to them.
pub const REQUEST_HEADERS: &str = "Authorization, Content-Type, Last-Event-ID, Idempotency-Key";
/// How long a browser may cache a preflight answer, in seconds.
pub const MAX_AGE_SECS: &str = "600";

/// Whether `path` is one of the client HTTP routes (`/v1/rooms/{room}/events|poll|publish`).
pub fn applies(path: &str) -> bool {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    matches!(
        segments.as_slice(),
        ["v1", "rooms", _, "events" | "poll" | "publish"]
    )
}

/// Adds the CORS answer headers for the request's `Origin`, when it is allowed.
pub fn decorate(headers: &mut Headers, origin: &str) {
    let _ = headers.set("Access-Control-Allow-Origin", origin);
    let _ = headers.append("Vary", "Origin");
    let _ = headers.set("Access-Control-Expose-Headers", "Retry-After");
}

/// The answer to a preflight (`OPTIONS`): `204` naming what may be sent, or the usual
/// `403 origin_not_allowed`.
///
/// # Errors
///
/// `OriginNotAllowed`; `Internal` when the response cannot be built.
pub fn preflight(req: &Request, config: &Config) -> Result<Response> {
    check_origin(req, config)?;
    let headers = Headers::new();
    headers
        .set("Access-Control-Allow-Methods", METHODS)
        .map_err(internal)?;
    let asked = header(req, "Access-Control-Request-Headers");
    headers
        .set(
            "Access-Control-Allow-Headers",
            asked.as_deref().unwrap_or(REQUEST_HEADERS),
        )
        .map_err(internal)?;
    headers
        .set("Access-Control-Max-Age", MAX_AGE_SECS)
        .map_err(internal)?;
    Ok(Response::builder()
        .with_status(204)
        .with_headers(headers)
        .empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_client_http_routes_answer_cors() {
        assert!(applies("/v1/rooms/lobby/events"));
        assert!(applies("/v1/rooms/lobby/poll"));
        assert!(applies("/v1/rooms/lobby/publish"));
        assert!(!applies("/v1/rooms/lobby/messages"));
        assert!(!applies("/v1/rooms/lobby/ws"));
        assert!(!applies("/v1/rooms/lobby"));
    }
}
