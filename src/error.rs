//! One error type for the whole product, and the single place that maps it to what a
//! client sees: an HTTP status, an `error.code` string, and (on a socket) a close code.
//!
//! Internal details are logged by the caller and never sent to clients: `Internal` always
//! renders as the generic message "internal error".

use serde::Serialize;

/// Everything that can go wrong in a request or a frame, as the contract names it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The room name in the path is not `[A-Za-z0-9_.:-]{1,128}`.
    #[error("{0}")]
    BadRoom(String),
    /// The WebSocket route was called without `Upgrade: websocket`.
    #[error("this route only accepts WebSocket upgrades (send `Upgrade: websocket`)")]
    UpgradeRequired,
    /// No token in the subprotocol, the `Authorization` header or `access_token`.
    #[error("no token: send `Sec-WebSocket-Protocol: roomcast.v1, roomcast.bearer.<jwt>`, `Authorization: Bearer <jwt>` or `?access_token=<jwt>`")]
    MissingToken,
    /// The token is malformed, badly signed, or fails a claim check other than expiry.
    #[error("{0}")]
    InvalidToken(String),
    /// The token's `exp` is in the past (beyond the clock leeway).
    #[error("the token has expired; get a fresh one")]
    TokenExpired,
    /// Authenticated, but not allowed to do this.
    #[error("{0}")]
    Forbidden(String),
    /// The browser's `Origin` is not in `ALLOWED_ORIGINS`.
    #[error("{0}")]
    OriginNotAllowed(String),
    /// The user already holds `MAX_CONNECTIONS_PER_USER` sockets in this room.
    #[error("{0}")]
    TooManyConnections(String),
    /// A server-API request is malformed; the message says what is wrong.
    #[error("{0}")]
    BadRequest(String),
    /// A server-API request carries no valid signature or service token.
    #[error("{0}")]
    Unauthorized(String),
    /// A body or frame exceeds `MAX_MESSAGE_BYTES` (or another documented size limit).
    #[error("{0}")]
    TooLarge(String),
    /// No such route.
    #[error("no such route: {0}")]
    NotFound(String),
    /// The route exists but not for this method; carries the `Allow` header value.
    #[error("method not allowed; this route accepts {0}")]
    MethodNotAllowed(&'static str),
    /// Required configuration is missing or malformed; names the variable.
    #[error("{0}")]
    Misconfigured(String),
    /// A WebSocket message is not a JSON frame (or array of frames) of a known shape.
    #[error("{0}")]
    BadFrame(String),
    /// A frame's `type` is not one the server knows.
    #[error("unknown frame type {0:?}; the client may send \"publish\" and \"received\"")]
    UnknownType(String),
    /// A publish `id` or `event` does not follow the contract's format.
    #[error("{0}")]
    InvalidId(String),
    /// A publish exceeded the connection's token bucket; retry after the given ms.
    #[error("publishing too fast: at most RATE_LIMIT_PER_SEC per second with bursts of RATE_LIMIT_BURST; retry after {0} ms")]
    RateLimited(u64),
    /// Something failed inside the Worker or the room; details are in the logs only.
    #[error("internal error")]
    Internal(String),
    /// A backend ended this connection (`POST /v1/rooms/{room}/disconnect`,
    /// docs/protocol.md §14); carries the backend's reason. Only ever sent as the `error`
    /// frame before the close the request chose, never as an HTTP answer.
    #[error("{0}")]
    Disconnected(String),
}

impl Error {
    /// The HTTP status this error is answered with.
    pub fn status(&self) -> u16 {
        match self {
            Error::BadRoom(_) | Error::BadRequest(_) | Error::BadFrame(_) => 400,
            Error::UnknownType(_) | Error::InvalidId(_) => 400,
            Error::UpgradeRequired => 426,
            Error::MissingToken | Error::InvalidToken(_) | Error::TokenExpired => 401,
            Error::Unauthorized(_) => 401,
            Error::Forbidden(_) | Error::OriginNotAllowed(_) | Error::Disconnected(_) => 403,
            Error::NotFound(_) => 404,
            Error::MethodNotAllowed(_) => 405,
            Error::TooLarge(_) => 413,
            Error::TooManyConnections(_) | Error::RateLimited(_) => 429,
            Error::Misconfigured(_) | Error::Internal(_) => 500,
        }
    }

    /// The contract's `error.code` string.
    pub fn code(&self) -> &'static str {
        match self {
            Error::BadRoom(_) => "bad_room",
            Error::UpgradeRequired => "upgrade_required",
            Error::MissingToken => "missing_token",
            Error::InvalidToken(_) => "invalid_token",
            Error::TokenExpired => "token_expired",
            Error::Forbidden(_) => "forbidden",
            Error::OriginNotAllowed(_) => "origin_not_allowed",
            Error::TooManyConnections(_) => "too_many_connections",
            Error::BadRequest(_) => "bad_request",
            Error::Unauthorized(_) => "unauthorized",
            Error::TooLarge(_) => "too_large",
            Error::NotFound(_) => "not_found",
            Error::MethodNotAllowed(_) => "method_not_allowed",
            Error::Misconfigured(_) => "misconfigured",
            Error::BadFrame(_) => "bad_frame",
            Error::UnknownType(_) => "unknown_type",
            Error::InvalidId(_) => "invalid_id",
            Error::RateLimited(_) => "rate_limited",
            Error::Internal(_) => "internal",
            Error::Disconnected(_) => "disconnected",
        }
    }

    /// The close code a socket gets when this error ends it by itself, or `None` when the
    /// error is recoverable and the socket stays open (contract §5). Errors that close only
    /// when repeated (bad frames, oversized messages, rate limiting) are counted by the room.
    pub fn close_code(&self) -> Option<u16> {
        match self {
            Error::TokenExpired => Some(close::TOKEN_EXPIRED),
            _ => None,
        }
    }

    /// The close code that carries this refusal of an upgrade to a browser, which cannot
    /// see HTTP statuses (docs/protocol.md §10), or `None` for errors that keep their
    /// HTTP answer (`upgrade_required`, `misconfigured`, `internal`, …).
    pub fn browser_close_code(&self) -> Option<u16> {
        match self {
            Error::MissingToken | Error::InvalidToken(_) | Error::TokenExpired => {
                Some(close::TOKEN_EXPIRED)
            }
            Error::Forbidden(_) | Error::OriginNotAllowed(_) => Some(close::FORBIDDEN),
            Error::TooManyConnections(_) => Some(close::TOO_MANY_CONNECTIONS),
            Error::BadRoom(_) | Error::BadRequest(_) => Some(close::PROTOCOL_ERROR),
            _ => None,
        }
    }

    /// For `rate_limited`: how long the client should wait.
    pub fn retry_after_ms(&self) -> Option<u64> {
        match self {
            Error::RateLimited(ms) => Some(*ms),
            _ => None,
        }
    }

    /// Whether this error counts as an invalid frame toward the 4400 protocol-error close.
    pub fn is_bad_frame(&self) -> bool {
        matches!(
            self,
            Error::BadFrame(_) | Error::UnknownType(_) | Error::InvalidId(_)
        )
    }

    /// Whether the 401 answer carries `WWW-Authenticate` (the three token errors).
    pub fn is_token_error(&self) -> bool {
        matches!(
            self,
            Error::MissingToken | Error::InvalidToken(_) | Error::TokenExpired
        )
    }

    /// The JSON body every rejection carries: `{"error":{"code":"...","message":"..."}}`.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.code(),
                message: self.to_string(),
                retry_after_ms: self.retry_after_ms(),
            },
        }
    }
}

/// The JSON body of every HTTP rejection.
#[derive(Debug, Serialize)]
pub struct ErrorBody {
    /// The error itself.
    pub error: ErrorDetail,
}

/// `code` and `message` of an error, as sent to clients.
#[derive(Debug, Serialize)]
pub struct ErrorDetail {
    /// The contract's error code.
    pub code: &'static str,
    /// A message a developer can act on.
    pub message: String,
    /// For `rate_limited`: how long to wait before retrying, in ms (the HTTP answer also
    /// carries `Retry-After` in whole seconds, rounded up).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

/// WebSocket close codes from contract §5 and the v1.1 additions (docs/protocol.md).
pub mod close {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// Message too big (repeatedly).
    pub const TOO_BIG: u16 = 1009;
    /// Internal error: reconnect with backoff.
    pub const INTERNAL: u16 = 1011;
    /// Token expired: fetch a fresh token, then reconnect.
    pub const TOKEN_EXPIRED: u16 = 4001;
    /// Sustained rate limiting.
    pub const RATE_LIMITED: u16 = 4008;
    /// Too slow: the socket did not read what the room sent it (docs/protocol.md §12);
    /// reconnect with backoff and resume.
    pub const TOO_SLOW: u16 = 4009;
    /// Too many connections for this user in this room (a refused browser upgrade, §10).
    pub const TOO_MANY_CONNECTIONS: u16 = 4029;
    /// Protocol error (repeated bad frames) or a refused bad request: terminal.
    pub const PROTOCOL_ERROR: u16 = 4400;
    /// Forbidden: terminal.
    pub const FORBIDDEN: u16 = 4403;
}

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_details_never_reach_the_client() {
        let e = Error::Internal("sqlite: disk I/O error at /var/x".into());
        assert_eq!(e.to_string(), "internal error");
        assert_eq!(e.body().error.code, "internal");
        assert_eq!(e.status(), 500);
    }

    #[test]
    fn contract_statuses() {
        assert_eq!(Error::BadRoom("x".into()).status(), 400);
        assert_eq!(Error::UpgradeRequired.status(), 426);
        assert_eq!(Error::MissingToken.status(), 401);
        assert_eq!(Error::Forbidden("x".into()).status(), 403);
        assert_eq!(Error::OriginNotAllowed("x".into()).status(), 403);
        assert_eq!(Error::TooManyConnections("x".into()).status(), 429);
        assert_eq!(Error::TooLarge("x".into()).status(), 413);
        assert_eq!(Error::TokenExpired.close_code(), Some(4001));
        assert!(Error::BadFrame("x".into()).close_code().is_none());
    }
}
