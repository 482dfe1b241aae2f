//! `POST /v1/rooms/{room}/publish`: a client publishes over HTTP with its user token
//! (docs/protocol.md §13), for transports that cannot send frames upstream (SSE,
//! long-poll). The body is the v1 `publish` frame without `type`; the room applies the
//! same validation, id space and exactly-once rule as to every other publish, and a
//! per-user token bucket.

use serde::Deserialize;
use serde_json::value::RawValue;
use worker::{Env, Request, Response, Url};

use crate::error::{Error, Result};
use crate::protocol::{check_publish, check_room, null_raw};
use crate::room::rpc::{ClientPublish, PublishRequest};
use crate::router::{authorize_user, header, internal, load, publish_to_room};

/// The body: a `publish` frame without `type`.
#[derive(Debug, Deserialize)]
pub struct Body {
    /// Required for durable messages, optional for ephemeral ones.
    #[serde(default)]
    pub id: Option<String>,
    /// Event name.
    pub event: String,
    /// Payload; `null` when absent.
    #[serde(default = "null_raw")]
    pub data: Box<RawValue>,
    /// Fan out only (contract §B).
    #[serde(default)]
    pub ephemeral: bool,
    /// Conflation key of an ephemeral message.
    #[serde(default)]
    pub key: Option<String>,
    /// The client's own connection (its SSE stream's `welcome.conn`), so that its
    /// message is from that connection and skips it unless `echo`, as on a WebSocket.
    #[serde(default)]
    pub conn: Option<String>,
    /// Whether `conn` also receives the message.
    #[serde(default)]
    pub echo: bool,
}

/// Reads and checks a body.
///
/// # Errors
///
/// `TooLarge` over `max` bytes; `BadRequest` when it is not such a JSON object;
/// `InvalidId` for an id, event or key the contract refuses (the code a socket's `error`
/// frame would carry).
pub fn parse(body: &[u8], max: usize) -> Result<Body> {
    if body.len() > max {
        return Err(Error::TooLarge(format!(
            "body is {} bytes; MAX_MESSAGE_BYTES is {max}",
            body.len()
        )));
    }
    let body: Body = serde_json::from_slice(body).map_err(|e| {
        Error::BadRequest(format!(
            "the body must be a publish frame without \"type\": {{\"id\",\"event\",\"data\"}}: {e}"
        ))
    })?;
    check_publish(
        body.id.as_deref(),
        &body.event,
        body.key.as_deref(),
        body.ephemeral,
    )?;
    Ok(body)
}

/// `POST /v1/rooms/{room}/publish`.
///
/// # Errors
///
/// The socket route's token and origin rejections, `forbidden` without `write`, the
/// body's errors ([`parse`]), and the room's `rate_limited` (429 with `Retry-After`).
pub async fn serve(mut req: Request, url: &Url, env: &Env, room: &str) -> Result<Response> {
    check_room(room)?;
    let (config, verifier) = load(env)?;
    let user = authorize_user(&req, url, &config, &verifier, room)?;
    user.require_write(room)?;
    let max = config.limits.max_message_bytes;
    if let Some(len) = header(&req, "Content-Length").and_then(|v| v.parse::<usize>().ok()) {
        if len > max {
            return Err(Error::TooLarge(format!(
                "body is {len} bytes; MAX_MESSAGE_BYTES is {max}"
            )));
        }
    }
    let bytes = req.bytes().await.map_err(internal)?;
    let body = parse(&bytes, max)?;
    let request = PublishRequest {
        room: room.to_string(),
        id: body.id,
        event: body.event,
        data: body.data,
        exclude_conn: None,
        ephemeral: body.ephemeral,
        key: body.key,
        client: Some(ClientPublish {
            user: user.identity.user.clone(),
            conn: body.conn,
            echo: body.echo,
        }),
        from: None,
    };
    let mut answer = publish_to_room(env, user.tenant.as_deref(), &request).await?;
    // The room's answer has the runtime's immutable headers; the Worker adds CORS, so
    // pass on a copy.
    let status = answer.status_code();
    let text = answer.bytes().await.map_err(internal)?;
    Ok(Response::builder()
        .with_status(status)
        .with_headers(answer.headers().clone())
        .fixed(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_follow_the_publish_frame() {
        let b = parse(br#"{"id":"a1","event":"chat","data":{"t":"hi"}}"#, 1000)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (b.id.as_deref(), b.data.get(), b.ephemeral),
            (Some("a1"), r#"{"t":"hi"}"#, false)
        );
        let e = parse(br#"{"event":"cursor","ephemeral":true,"key":"k"}"#, 1000)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((e.id, e.data.get()), (None, "null"));
        let code = |body: &[u8]| parse(body, 64).err().map(|e| e.code());
        assert_eq!(
            code(br#"{"event":"chat"}"#),
            Some("invalid_id"),
            "durable needs an id"
        );
        assert_eq!(code(br#"{"id":"a b","event":"chat"}"#), Some("invalid_id"));
        assert_eq!(code(br#"{"id":"a","event":""}"#), Some("invalid_id"));
        assert_eq!(code(b"[1]"), Some("bad_request"));
        assert_eq!(
            code(br#"{"id":"a","event":"e","ephemeral":"yes"}"#),
            Some("bad_request")
        );
        assert_eq!(code(&[b' '; 65]), Some("too_large"));
    }
}
