//! `POST /v1/rooms/{room}/disconnect` (docs/protocol.md §14): a backend ends every socket
//! of a user in the room, or one connection. Each gets an `error` frame with code
//! `disconnected`, the backend's reason and the close code the backend chose (so the
//! client need not wait for the close event, which can trail by seconds), then the close
//! with that code: 4403
//! by default ("stop", e.g. a user removed from a document), or a 4000–4399 code that
//! asks the client to come back (e.g. after its permissions changed).
//!
//! The close goes through the core's one drop path (`kick`), so it behaves like every
//! close the room starts itself: what was queued for the socket leaves first, the
//! attachment is marked gone (a wake-up does not restore it), and presence announces
//! `leave` when a user's last socket goes.
//!
//! A disconnect is not a ban: a client whose token still grants `read` may connect again.
//! Backends that mean "never again" stop issuing that user tokens for the room (and keep
//! `exp` short), and use 4403 so that the SDK does not try.
//!
//! The request is parsed and checked in the Worker ([`DisconnectRequest::from_body`]), so
//! a malformed one never wakes the room.

use serde::{Deserialize, Serialize};

use super::super::core::{Effect, RoomCore};
use crate::auth::MAX_SUB_CHARS;
use crate::error::{close, Error, Result};
use crate::protocol::{valid_id, ServerFrame};

/// Close code when the request names none: terminal, like any `forbidden`.
pub const DEFAULT_CODE: u16 = close::FORBIDDEN;
/// The codes a backend may choose: the application range of RFC 6455 §7.4.2 that the
/// protocol uses, whose split at 4400 the SDK obeys (4000–4399 reconnect, 4400–4999 stop).
pub const CODES: std::ops::RangeInclusive<u16> = 4000..=4999;
/// `error.message` when the request gives no reason.
pub const DEFAULT_REASON: &str = "disconnected by the server";
/// Longest reason, in UTF-8 bytes: what fits the reason of a WebSocket close frame
/// (125 bytes of payload less the 2-byte code, RFC 6455 §5.5), so a client may show it
/// wherever it would show a close reason.
pub const MAX_REASON_BYTES: usize = 123;

/// Which sockets to close.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// Every socket whose token's `sub` is this user.
    User(String),
    /// The connection with this id (`welcome.conn`).
    Conn(String),
}

/// A checked disconnect, as the Worker hands it to the room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DisconnectRequest {
    /// Which sockets.
    pub target: Target,
    /// Their close code, in [`CODES`].
    pub code: u16,
    /// The `error.message` they get before the close.
    pub reason: String,
}

/// The room's answer; also the HTTP API's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DisconnectResult {
    /// Sockets closed (0 when none matched: an unknown user is not an error).
    pub closed: usize,
}

/// The HTTP body as sent. Unknown fields are ignored, like everywhere in the API.
#[derive(Deserialize)]
struct Body {
    user: Option<String>,
    conn: Option<String>,
    code: Option<i64>,
    reason: Option<String>,
}

impl DisconnectRequest {
    /// Parses and checks the body of `POST /v1/rooms/{room}/disconnect`:
    /// `{"user":"alice"}` or `{"conn":"c_…"}` (exactly one), optional `"code"`
    /// (4000–4999, default 4403) and `"reason"` (1–123 bytes, default
    /// [`DEFAULT_REASON`]).
    ///
    /// # Errors
    ///
    /// `BadRequest` saying what is wrong: not a JSON object of that shape, neither or
    /// both of `user` and `conn`, a `user` that cannot be a `sub` (1–128 characters), a
    /// `conn` that is not an id, a code out of range, an empty or too long reason.
    pub fn from_body(body: &[u8]) -> Result<Self> {
        let body: Body = serde_json::from_slice(body)
            .map_err(|e| Error::BadRequest(format!("invalid JSON body: {e}")))?;
        let target = match (body.user, body.conn) {
            (Some(user), None) => {
                if user.is_empty() || user.chars().count() > MAX_SUB_CHARS {
                    return Err(Error::BadRequest(format!(
                        "user must be a token's sub: 1-{MAX_SUB_CHARS} characters"
                    )));
                }
                Target::User(user)
            }
            (None, Some(conn)) => {
                if !valid_id(&conn) {
                    return Err(Error::BadRequest(
                        "conn must be a connection id as welcome.conn gives it (c_…)".into(),
                    ));
                }
                Target::Conn(conn)
            }
            _ => {
                return Err(Error::BadRequest(
                    "send exactly one of \"user\" (every socket of that user in the room) and \"conn\" (one connection)".into(),
                ))
            }
        };
        let code = match body.code {
            None => DEFAULT_CODE,
            Some(c) => u16::try_from(c)
                .ok()
                .filter(|c| CODES.contains(c))
                .ok_or_else(|| {
                    Error::BadRequest(format!(
                        "code must be a close code from 4000 to 4999 (4000-4399: the client reconnects; 4400-4999: it stops), not {c}"
                    ))
                })?,
        };
        let reason = body.reason.unwrap_or_else(|| DEFAULT_REASON.to_string());
        if reason.is_empty() || reason.len() > MAX_REASON_BYTES {
            return Err(Error::BadRequest(format!(
                "reason must be 1-{MAX_REASON_BYTES} bytes of UTF-8 (a WebSocket close reason's limit), not {}",
                reason.len()
            )));
        }
        Ok(DisconnectRequest {
            target,
            code,
            reason,
        })
    }
}

impl<H: Clone> RoomCore<H> {
    /// Closes every socket the request names, each after its `error` frame, and says how
    /// many.
    pub fn disconnect(
        &mut self,
        now: i64,
        req: &DisconnectRequest,
    ) -> (DisconnectResult, Vec<Effect<H>>) {
        let conns: Vec<String> = self
            .peers
            .iter()
            .filter(|p| match &req.target {
                Target::User(user) => &p.id.user == user,
                Target::Conn(conn) => &p.id.conn == conn,
            })
            .map(|p| p.id.conn.clone())
            .collect();
        let mut fx = Vec::new();
        let err = Error::Disconnected(req.reason.clone());
        let last = ServerFrame::Disconnected {
            code: err.code(),
            message: &req.reason,
            close: req.code,
        }
        .to_json();
        for conn in &conns {
            // The close reason is the error code, as for every close the room starts
            // after an error frame (docs/protocol.md §10); the text is in the frame.
            self.kick(
                &mut fx,
                now,
                conn,
                req.code,
                "disconnected by the server API",
                "disconnected",
                last.clone(),
            );
        }
        (
            DisconnectResult {
                closed: conns.len(),
            },
            fx,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<DisconnectRequest> {
        DisconnectRequest::from_body(body.as_bytes())
    }

    #[test]
    fn bodies_name_exactly_one_target_with_a_code_and_a_reason() {
        assert_eq!(
            parse(r#"{"user":"alice"}"#),
            Ok(DisconnectRequest {
                target: Target::User("alice".into()),
                code: 4403,
                reason: DEFAULT_REASON.into(),
            })
        );
        assert_eq!(
            parse(r#"{"conn":"c_00ff","code":4000,"reason":"permissions changed","x":1}"#),
            Ok(DisconnectRequest {
                target: Target::Conn("c_00ff".into()),
                code: 4000,
                reason: "permissions changed".into(),
            })
        );
        let longest = "é".repeat(61) + "x";
        assert_eq!(longest.len(), MAX_REASON_BYTES);
        let ok = parse(&format!(
            r#"{{"user":"u","code":4999,"reason":"{longest}"}}"#
        ));
        assert_eq!(ok.map(|r| r.reason), Ok(longest.clone()));
        for bad in [
            "",
            "[]",
            "{}",
            r#"{"user":"a","conn":"c_1"}"#,
            r#"{"user":null,"conn":null}"#,
            r#"{"user":""}"#,
            r#"{"user":5}"#,
            r#"{"conn":"has space"}"#,
            r#"{"user":"a","code":3999}"#,
            r#"{"user":"a","code":5000}"#,
            r#"{"user":"a","code":1000}"#,
            r#"{"user":"a","code":-4403}"#,
            r#"{"user":"a","code":4403.5}"#,
            r#"{"user":"a","code":"4403"}"#,
            r#"{"user":"a","reason":""}"#,
            r#"{"user":"a","reason":7}"#,
        ] {
            assert!(
                matches!(parse(bad), Err(Error::BadRequest(_))),
                "{bad}: {:?}",
                parse(bad)
            );
        }
        let too_long = format!(r#"{{"user":"u","reason":"{longest}x"}}"#);
        assert!(matches!(parse(&too_long), Err(Error::BadRequest(_))));
        let long_user = format!(r#"{{"user":"{}"}}"#, "u".repeat(MAX_SUB_CHARS + 1));
        assert!(matches!(parse(&long_user), Err(Error::BadRequest(_))));
    }
}
