//! The Worker: routes, authentication and authorization, all before any Durable Object
//! is touched, so a bad token never wakes or bills a room (contract §1).

use std::cell::RefCell;
use std::rc::Rc;

use futures_util::future::join_all;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use wasm_bindgen::JsValue;
use worker::{event, Context, Env, Headers, Method, Request, RequestInit, Response, Stub, Url};

use crate::auth::{self, Identity, Verifier};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::protocol::{check_event, check_publish, check_room, null_raw, valid_tenant};
use crate::room::commands::disconnect::{DisconnectRequest, DisconnectResult, Target};
use crate::room::rpc::{self, ConnectRequest, PublishRequest, PublishResult, Transport};
use crate::room::shard::{placement, shard_key};
use crate::runtime::{error_response, json_response, log_line, now_ms};
use crate::transport;

/// The subprotocol a browser offers and the server answers (contract §4).
pub const SUBPROTOCOL: &str = "roomcast.v1";
/// Prefix of the subprotocol entry that carries the token.
pub const BEARER_PROTOCOL_PREFIX: &str = "roomcast.bearer.";
/// The Durable Object binding name in `wrangler.toml`.
pub const ROOMS_BINDING: &str = "ROOMS";
/// Most rooms in one `POST /v1/broadcast`. Each room is one Durable Object call from a
/// single Worker invocation; 100 stays well inside the per-invocation subrequest limit.
pub const MAX_BROADCAST_ROOMS: usize = 100;

#[event(start)]
fn start() {
    console_error_panic_hook::set_once();
}

#[event(fetch)]
async fn fetch(req: Request, env: Env, _ctx: Context) -> worker::Result<Response> {
    // The path only: the query may hold `access_token`, and headers hold tokens and
    // signatures, so neither is ever logged.
    let path = req.path();
    let method = req.method().to_string();
    let cors_origin = cors_origin(&req, &env, &path);
    let mut resp = match route(req, &env).await {
        Ok(resp) => resp,
        Err(e) => {
            let status = e.status().to_string();
            log_line(
                "reject",
                &[
                    ("method", &method),
                    ("path", &path),
                    ("status", &status),
                    ("code", e.code()),
                ],
            );
            error_response(&e)
        }
    };
    if let Some(origin) = cors_origin {
        transport::cors::decorate(resp.headers_mut(), &origin);
    }
    Ok(resp)
}

/// The `Origin` to answer with CORS headers: only on the client HTTP routes, and only
/// when it is allowed (a refused origin gets its `403` without them).
fn cors_origin(req: &Request, env: &Env, path: &str) -> Option<String> {
    if !transport::cors::applies(path) {
        return None;
    }
    let origin = header(req, "Origin")?;
    let (config, _) = load(env).ok()?;
    config.origin_allowed(&origin).then_some(origin)
}

async fn route(req: Request, env: &Env) -> Result<Response> {
    let url = req.url().map_err(internal)?;
    let path = url.path().to_string();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let method = req.method();
    match segments.as_slice() {
        ["healthz"] => {
            only(&method, &[Method::Get, Method::Head], "GET")?;
            Ok(Response::ok("ok").map_err(internal)?)
        }
        ["v1", "rooms", room, "ws"] => {
            only(&method, &[Method::Get], "GET")?;
            connect(&req, &url, env, room).await
        }
        // The client HTTP transports (docs/protocol.md §13); CORS is added in `fetch`.
        ["v1", "rooms", _, "events" | "poll" | "publish"] if method == Method::Options => {
            let (config, _) = load(env)?;
            transport::cors::preflight(&req, &config)
        }
        ["v1", "rooms", room, "events"] => {
            only(&method, &[Method::Get], "GET, OPTIONS")?;
            transport::sse::serve(&req, &url, env, room).await
        }
        ["v1", "rooms", room, "poll"] => {
            only(&method, &[Method::Get], "GET, OPTIONS")?;
            transport::poll::serve(&req, &url, env, room).await
        }
        ["v1", "rooms", room, "publish"] => {
            only(&method, &[Method::Post], "POST, OPTIONS")?;
            transport::publish::serve(req, &url, env, room).await
        }
        ["v1", "rooms", room, "messages"] => {
            only(&method, &[Method::Post, Method::Get], "GET, POST")?;
            if method == Method::Get {
                history(req, &url, env, room).await
            } else {
                publish(req, &url, env, room).await
            }
        }
        ["v1", "rooms", room, "disconnect"] => {
            only(&method, &[Method::Post], "POST")?;
            disconnect(req, &url, env, room).await
        }
        ["v1", "rooms", room] => {
            only(&method, &[Method::Get], "GET")?;
            info(req, &url, env, room).await
        }
        ["v1", "rooms", room, "webhooks"] => {
            only(&method, &[Method::Get], "GET")?;
            webhooks(req, &url, env, room, Method::Get, rpc::path::WEBHOOKS).await
        }
        ["v1", "rooms", room, "webhooks", "retry"] => {
            only(&method, &[Method::Post], "POST")?;
            webhooks(
                req,
                &url,
                env,
                room,
                Method::Post,
                rpc::path::WEBHOOKS_RETRY,
            )
            .await
        }
        ["v1", "dev", "token"] => dev_token(req, env).await,
        ["v1", "broadcast"] => {
            only(&method, &[Method::Post], "POST")?;
            broadcast(req, &url, env).await
        }
        _ => Err(Error::NotFound(path.clone())),
    }
}

fn only(method: &Method, allowed: &[Method], allow: &'static str) -> Result<()> {
    if allowed.contains(method) {
        Ok(())
    } else {
        Err(Error::MethodNotAllowed(allow))
    }
}

thread_local! {
    /// The parsed configuration and verifier, built on the first request and reused for
    /// the isolate's life: a Worker's vars and secrets cannot change under a running
    /// isolate (a deploy or `wrangler secret put` starts new ones), and reading a dozen
    /// bindings and parsing a JWK Set on every request cost more than the request.
    static LOADED: RefCell<Option<(Rc<Config>, Rc<Verifier>)>> = const { RefCell::new(None) };
}

pub(crate) fn load(env: &Env) -> Result<(Rc<Config>, Rc<Verifier>)> {
    if let Some(loaded) = LOADED.with(|cell| cell.borrow().clone()) {
        return Ok(loaded);
    }
    // A malformed configuration is not cached: every request reports it until fixed.
    let config = Config::from_lookup(&|name| env.var(name).ok().map(|v| v.to_string()))?;
    let verifier = Rc::new(Verifier::new(&config)?);
    let loaded = (Rc::new(config), verifier);
    LOADED.with(|cell| *cell.borrow_mut() = Some(loaded.clone()));
    Ok(loaded)
}

pub(crate) fn header(req: &Request, name: &str) -> Option<String> {
    req.headers().get(name).ok().flatten()
}

pub(crate) fn query(url: &Url, name: &str) -> Option<String> {
    url.query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

fn now_secs() -> i64 {
    now_ms() / 1000
}

/// Where the socket token came from, in contract order; also whether the client offered
/// the `roomcast.v1` subprotocol (which the answer must then echo).
pub fn extract_token(
    protocols: Option<&str>,
    authorization: Option<&str>,
    access_token: Option<&str>,
) -> (Option<String>, bool) {
    let mut offered = false;
    let mut from_protocol = None;
    for p in protocols.unwrap_or("").split(',').map(str::trim) {
        if p == SUBPROTOCOL {
            offered = true;
        } else if let Some(t) = p.strip_prefix(BEARER_PROTOCOL_PREFIX) {
            from_protocol.get_or_insert_with(|| t.to_string());
        }
    }
    let token = from_protocol
        .or_else(|| bearer(authorization))
        .or_else(|| access_token.map(str::to_string))
        .filter(|t| !t.is_empty());
    (token, offered)
}

fn bearer(authorization: Option<&str>) -> Option<String> {
    let value = authorization?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_string())
}

/// The Durable Object key of a room: `tenant/room`. Neither part may contain `/`, so the
/// mapping is injective and no input can address another tenant's room.
pub fn room_key(tenant: Option<&str>, room: &str) -> String {
    format!("{}/{}", tenant.unwrap_or(""), room)
}

fn room_stub(env: &Env, tenant: Option<&str>, room: &str) -> Result<Stub> {
    let ns = env.durable_object(ROOMS_BINDING).map_err(internal)?;
    ns.get_by_name(&room_key(tenant, room)).map_err(internal)
}

/// The object that holds `user`'s sockets in `room`: the room's own object, or for a
/// room listed in `SHARDED_ROOMS` the user's shard (docs/sharding.md, "Placing a socket").
fn user_stub(env: &Env, tenant: Option<&str>, room: &str, user: &str) -> Result<Stub> {
    let (config, _) = load(env)?;
    let key = room_key(tenant, room);
    let name = match config.sharding.shards_for(room) {
        Some(n) => shard_key(&key, placement(&key, user, n)),
        None => key,
    };
    let ns = env.durable_object(ROOMS_BINDING).map_err(internal)?;
    ns.get_by_name(&name).map_err(internal)
}

fn internal_request(
    path: &str,
    method: Method,
    headers: Headers,
    body: Option<String>,
) -> Result<Request> {
    let mut init = RequestInit::new();
    init.with_method(method).with_headers(headers);
    if let Some(body) = body {
        init.with_body(Some(JsValue::from_str(&body)));
    }
    Request::new_with_init(&format!("https://room.internal{path}"), &init).map_err(internal)
}

/// Confines a token to its tenant: a `tenant` query parameter may only repeat it.
fn tenant_of(identity: &Identity, url: &Url) -> Result<Option<String>> {
    match (query(url, "tenant"), &identity.tenant) {
        (None, t) => Ok(t.clone()),
        (Some(q), Some(t)) if &q == t => Ok(Some(q)),
        (Some(q), _) => Err(Error::Forbidden(format!(
            "this token is not valid for tenant {:?}",
            q.chars().take(64).collect::<String>()
        ))),
    }
}

/// `GET /v1/rooms/{room}/ws`. A browser sees neither the status nor the body of a refused
/// upgrade (only close 1006), so when the client offered `roomcast.v1` a refusal from v1
/// §4 is delivered over a socket the Worker accepts itself: one `error` frame, then a close
/// code the client can act on (docs/protocol.md §10). Other transports keep the plain
/// HTTP answers, and so does `upgrade_required`, which has no socket to answer on.
async fn connect(req: &Request, url: &Url, env: &Env, room: &str) -> Result<Response> {
    let upgrade = header(req, "Upgrade").is_some_and(|u| u.eq_ignore_ascii_case("websocket"));
    let (_, offered) = extract_token(header(req, "Sec-WebSocket-Protocol").as_deref(), None, None);
    let answer = open_socket(req, url, env, room).await;
    if !(upgrade && offered) {
        return answer;
    }
    match answer {
        Err(e) => match Error::browser_close_code(&e) {
            Some(code) => refuse_over_socket(req, &e, code),
            None => Err(e),
        },
        // The room refuses too (`too_many_connections`) with a plain HTTP answer, which a
        // browser could not read either.
        Ok(resp) if resp.status_code() != 101 => relay_room_refusal(req, resp).await,
        Ok(resp) => Ok(resp),
    }
}

/// Accepts the browser's socket in the Worker (no Durable Object is involved), sends the
/// refusal as one `error` frame and closes with `code`. The queued frame and close go out
/// once the runtime completes the handshake.
fn refuse_over_socket(req: &Request, err: &Error, code: u16) -> Result<Response> {
    // The same line `fetch` writes for an HTTP rejection, plus the close code: the
    // answer is a 101 now, but it is still a refusal.
    log_line(
        "reject",
        &[
            ("method", "GET"),
            ("path", &req.path()),
            ("status", &err.status().to_string()),
            ("code", err.code()),
            ("close", &code.to_string()),
        ],
    );
    let pair = worker::WebSocketPair::new().map_err(internal)?;
    pair.server.accept().map_err(internal)?;
    pair.server
        .send_with_str(crate::protocol::error_frame(None, err))
        .map_err(internal)?;
    pair.server
        .close(Some(code), Some(err.code()))
        .map_err(internal)?;
    let mut resp = Response::from_websocket(pair.client).map_err(internal)?;
    resp.headers_mut()
        .set("Sec-WebSocket-Protocol", SUBPROTOCOL)
        .map_err(internal)?;
    Ok(resp)
}

/// A room's non-101 answer to a browser upgrade: a refusal from v1 §4 (the room decides
/// `too_many_connections`) goes over a socket like the Worker's own; anything else is
/// passed on with its status, headers and body.
async fn relay_room_refusal(req: &Request, mut resp: Response) -> Result<Response> {
    let status = resp.status_code();
    let body = resp.bytes().await.map_err(internal)?;
    if let Some(err) = room_refusal(&body) {
        if let Some(code) = Error::browser_close_code(&err) {
            return refuse_over_socket(req, &err, code);
        }
    }
    Ok(Response::builder()
        .with_status(status)
        .with_headers(resp.headers().clone())
        .fixed(body))
}

/// The error in a room's JSON error body (`{"error":{"code","message"}}`), for the codes
/// that have a browser close code.
pub(crate) fn room_refusal(body: &[u8]) -> Option<Error> {
    #[derive(Deserialize)]
    struct Body {
        error: Detail,
    }
    #[derive(Deserialize)]
    struct Detail {
        code: String,
        message: String,
    }
    let Body { error } = serde_json::from_slice(body).ok()?;
    let m = error.message;
    Some(match error.code.as_str() {
        "too_many_connections" => Error::TooManyConnections(m),
        "forbidden" => Error::Forbidden(m),
        "origin_not_allowed" => Error::OriginNotAllowed(m),
        "bad_room" => Error::BadRoom(m),
        "bad_request" => Error::BadRequest(m),
        "invalid_token" => Error::InvalidToken(m),
        "token_expired" => Error::TokenExpired,
        "missing_token" => Error::MissingToken,
        _ => return None,
    })
}

/// Authenticates and authorizes a socket upgrade, then hands it to the room.
async fn open_socket(req: &Request, url: &Url, env: &Env, room: &str) -> Result<Response> {
    check_room(room)?;
    let upgrade = header(req, "Upgrade").unwrap_or_default();
    if !upgrade.eq_ignore_ascii_case("websocket") {
        return Err(Error::UpgradeRequired);
    }
    let (config, verifier) = load(env)?;
    let user = authorize_user(req, url, &config, &verifier, room)?;
    user.require_read(room)?;
    let (since, epoch) = resume_query(url)?;
    let session = user.session(
        room,
        since,
        epoch,
        presence_query(url)?,
        Transport::WebSocket,
    );
    forward_connect(env, user.tenant.as_deref(), &session).await
}

/// A user token verified for one room: who, in which tenant, with which rights.
pub struct UserAccess {
    /// The verified token.
    pub identity: Identity,
    /// The tenant the request acts in (the token's).
    pub tenant: Option<String>,
    /// `read`/`write` on the room.
    pub perms: auth::Perms,
    /// Whether the client offered the `roomcast.v1` subprotocol.
    pub offered: bool,
}

impl UserAccess {
    /// # Errors
    ///
    /// `Forbidden` without `read` on `room`.
    pub fn require_read(&self, room: &str) -> Result<()> {
        if self.perms.read {
            Ok(())
        } else {
            Err(Error::Forbidden(format!(
                "this token has no \"read\" permission on room {room:?}"
            )))
        }
    }

    /// # Errors
    ///
    /// `Forbidden` without `write` on `room`.
    pub fn require_write(&self, room: &str) -> Result<()> {
        if self.perms.write {
            Ok(())
        } else {
            Err(Error::Forbidden(format!(
                "this token has no \"write\" permission on room {room:?}"
            )))
        }
    }

    /// The verified session the room is handed on connect.
    pub fn session(
        &self,
        room: &str,
        since: Option<u64>,
        epoch: Option<String>,
        presence: bool,
        transport: Transport,
    ) -> ConnectRequest {
        ConnectRequest {
            room: room.to_string(),
            user: self.identity.user.clone(),
            write: self.perms.write,
            exp: self.identity.exp,
            info: self.identity.info.clone(),
            subprotocol: self.offered && transport == Transport::WebSocket,
            since,
            epoch,
            presence,
            transport,
        }
    }
}

/// Refuses a browser `Origin` that `ALLOWED_ORIGINS` does not list.
///
/// # Errors
///
/// `OriginNotAllowed`.
pub fn check_origin(req: &Request, config: &Config) -> Result<()> {
    match header(req, "Origin") {
        Some(origin) if !config.origin_allowed(&origin) => Err(Error::OriginNotAllowed(format!(
            "origin {:?} is not in ALLOWED_ORIGINS",
            origin.chars().take(128).collect::<String>()
        ))),
        _ => Ok(()),
    }
}

/// The checks every user route shares (socket, SSE, long-poll, client publish), in this
/// order: origin, token present, token valid, not a service token, tenant.
///
/// # Errors
///
/// `OriginNotAllowed`, `MissingToken`, `InvalidToken`, `TokenExpired`, `Forbidden`.
pub fn authorize_user(
    req: &Request,
    url: &Url,
    config: &Config,
    verifier: &Verifier,
    room: &str,
) -> Result<UserAccess> {
    check_origin(req, config)?;
    let (token, offered) = extract_token(
        header(req, "Sec-WebSocket-Protocol").as_deref(),
        header(req, "Authorization").as_deref(),
        query(url, "access_token").as_deref(),
    );
    let token = token.ok_or(Error::MissingToken)?;
    let identity = verifier.verify(&token, now_secs())?;
    if identity.server {
        return Err(Error::Forbidden(
            "service tokens (scope \"server\") cannot join rooms as clients; use a user token with a rooms claim".into(),
        ));
    }
    let tenant = tenant_of(&identity, url)?;
    let perms = identity.perms_for(room);
    Ok(UserAccess {
        identity,
        tenant,
        perms,
        offered,
    })
}

/// `?since=&epoch=` (docs/protocol.md §6).
///
/// # Errors
///
/// `BadRequest` when `since` is not a non-negative integer.
pub fn resume_query(url: &Url) -> Result<(Option<u64>, Option<String>)> {
    let since = match query(url, "since") {
        None => None,
        Some(s) => Some(s.parse::<u64>().map_err(|_| {
            Error::BadRequest("since must be a non-negative integer (the last seq you saw)".into())
        })?),
    };
    Ok((since, query(url, "epoch")))
}

/// `?presence=on|off` (docs/protocol.md §4).
///
/// # Errors
///
/// `BadRequest` for anything but `on` and `off`.
pub fn presence_query(url: &Url) -> Result<bool> {
    match query(url, "presence").as_deref() {
        None | Some("on") => Ok(true),
        Some("off") => Ok(false),
        Some(other) => Err(Error::BadRequest(format!(
            "presence must be \"on\" or \"off\" (off: this connection gets no join/leave frames), not {:?}",
            other.chars().take(32).collect::<String>()
        ))),
    }
}

/// Hands a verified session to its room as an internal WebSocket upgrade and returns the
/// room's answer (101 with the socket, or its refusal).
///
/// # Errors
///
/// `Internal` when the room cannot be reached.
pub async fn forward_connect(
    env: &Env,
    tenant: Option<&str>,
    session: &ConnectRequest,
) -> Result<Response> {
    let headers = Headers::new();
    headers.set("Upgrade", "websocket").map_err(internal)?;
    let json = serde_json::to_string(session).map_err(|e| Error::Internal(e.to_string()))?;
    headers.set(rpc::SESSION_HEADER, &json).map_err(internal)?;
    let forward = internal_request(rpc::path::CONNECT, Method::Get, headers, None)?;
    user_stub(env, tenant, &session.room, &session.user)?
        .fetch_with_request(forward)
        .await
        .map_err(internal)
}

/// Authenticates a server-API request and reads its body. Returns the tenant the request
/// acts in and the body bytes.
async fn server_auth(
    req: &mut Request,
    url: &Url,
    config: &Config,
    verifier: &Verifier,
) -> Result<(Option<String>, Vec<u8>)> {
    let max = config.limits.max_message_bytes;
    let too_large =
        |n: usize| Error::TooLarge(format!("body is {n} bytes; MAX_MESSAGE_BYTES is {max}"));
    if let Some(len) = header(req, "Content-Length").and_then(|v| v.parse::<usize>().ok()) {
        if len > max {
            return Err(too_large(len));
        }
    }
    let body = req.bytes().await.map_err(internal)?;
    if body.len() > max {
        return Err(too_large(body.len()));
    }
    if let Some(token) = bearer(header(req, "Authorization").as_deref()) {
        let identity = verifier.verify(&token, now_secs()).map_err(|e| match e {
            Error::TokenExpired => Error::Unauthorized("the service token has expired".into()),
            Error::InvalidToken(m) => Error::Unauthorized(format!("invalid service token: {m}")),
            other => other,
        })?;
        if !identity.server {
            return Err(Error::Forbidden(
                "the server API needs a service token whose scope contains \"server\"".into(),
            ));
        }
        let tenant = tenant_of(&identity, url)?;
        return Ok((tenant, body));
    }
    if let Some(signature) = header(req, "Roomcast-Signature") {
        let secret = config.api_secret.as_ref().ok_or_else(|| {
            Error::Misconfigured(
                "signed requests need API_SECRET, which is not set (or use a service JWT)".into(),
            )
        })?;
        let path_and_query = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_string(),
        };
        let method = req.method().to_string();
        auth::verify_signature(
            secret.as_bytes(),
            &signature,
            &method,
            &path_and_query,
            &body,
            now_secs(),
        )?;
        let tenant = query(url, "tenant");
        if let Some(t) = &tenant {
            if !valid_tenant(t) {
                return Err(Error::BadRequest(
                    "tenant must be 1-64 characters from A-Z a-z 0-9 _ . -".into(),
                ));
            }
        }
        return Ok((tenant, body));
    }
    Err(Error::Unauthorized(
        "send `Authorization: Bearer <service JWT>` or `Roomcast-Signature: t=...,v1=...`".into(),
    ))
}

#[derive(Deserialize)]
struct PublishBody {
    id: Option<String>,
    event: String,
    #[serde(default = "null_raw")]
    data: Box<RawValue>,
    exclude_conn: Option<String>,
    #[serde(default)]
    ephemeral: bool,
    key: Option<String>,
}

#[derive(Deserialize)]
struct BroadcastBody {
    rooms: Vec<String>,
    id: Option<String>,
    event: String,
    #[serde(default = "null_raw")]
    data: Box<RawValue>,
    #[serde(default)]
    ephemeral: bool,
}

/// The event id from the body or the `Idempotency-Key` header; they must agree.
fn event_id(body_id: Option<String>, req: &Request) -> Result<String> {
    let key = header(req, "Idempotency-Key");
    match (body_id, key) {
        (Some(a), Some(b)) if a != b => Err(Error::BadRequest(
            "body id and Idempotency-Key differ; send one, or the same value in both".into(),
        )),
        (Some(id), _) | (None, Some(id)) => Ok(id),
        (None, None) => Err(Error::BadRequest(
            "an event id is required: set \"id\" in the body or the Idempotency-Key header (keep it stable across retries)".into(),
        )),
    }
}

fn bad_body(e: serde_json::Error) -> Error {
    Error::BadRequest(format!("invalid JSON body: {e}"))
}

fn validate_event(id: &str, event: &str) -> Result<()> {
    check_event(id, event).map_err(|e| Error::BadRequest(e.to_string()))
}

/// The id of a server-API publish: required for durable messages; optional for ephemeral
/// ones (an id given either way is checked and must agree with `Idempotency-Key`).
fn publish_id(body_id: Option<String>, ephemeral: bool, req: &Request) -> Result<Option<String>> {
    if ephemeral && body_id.is_none() && header(req, "Idempotency-Key").is_none() {
        return Ok(None);
    }
    event_id(body_id, req).map(Some)
}

pub(crate) async fn publish_to_room(
    env: &Env,
    tenant: Option<&str>,
    request: &PublishRequest,
) -> Result<Response> {
    let json = serde_json::to_string(request).map_err(|e| Error::Internal(e.to_string()))?;
    let headers = Headers::new();
    headers
        .set("Content-Type", "application/json")
        .map_err(internal)?;
    let forward = internal_request(rpc::path::PUBLISH, Method::Post, headers, Some(json))?;
    // A client's publish goes where its sockets are (the shard resolves `conn`); the
    // server API's goes to the room (a sharded room's sequencer).
    let stub = match &request.client {
        Some(client) => user_stub(env, tenant, &request.room, &client.user)?,
        None => room_stub(env, tenant, &request.room)?,
    };
    stub.fetch_with_request(forward).await.map_err(internal)
}

async fn publish(mut req: Request, url: &Url, env: &Env, room: &str) -> Result<Response> {
    check_room(room)?;
    let (config, verifier) = load(env)?;
    let (tenant, body) = server_auth(&mut req, url, &config, &verifier).await?;
    let body: PublishBody = serde_json::from_slice(&body).map_err(bad_body)?;
    let id = publish_id(body.id, body.ephemeral, &req)?;
    check_publish(
        id.as_deref(),
        &body.event,
        body.key.as_deref(),
        body.ephemeral,
    )
    .map_err(|e| Error::BadRequest(e.to_string()))?;
    let request = PublishRequest {
        room: room.to_string(),
        id,
        event: body.event,
        data: body.data,
        exclude_conn: body.exclude_conn,
        ephemeral: body.ephemeral,
        key: body.key,
        client: None,
        from: None,
    };
    publish_to_room(env, tenant.as_deref(), &request).await
}

#[derive(Serialize)]
#[serde(untagged)]
enum BroadcastResult {
    Ok {
        room: String,
        seq: u64,
        duplicate: bool,
    },
    Failed {
        room: String,
        error: crate::error::ErrorDetail,
    },
}

#[derive(Serialize)]
struct BroadcastResponse {
    results: Vec<BroadcastResult>,
}

async fn broadcast(mut req: Request, url: &Url, env: &Env) -> Result<Response> {
    let (config, verifier) = load(env)?;
    let (tenant, body) = server_auth(&mut req, url, &config, &verifier).await?;
    let body: BroadcastBody = serde_json::from_slice(&body).map_err(bad_body)?;
    if body.rooms.is_empty() || body.rooms.len() > MAX_BROADCAST_ROOMS {
        return Err(Error::BadRequest(format!(
            "rooms must list 1-{MAX_BROADCAST_ROOMS} room names, got {}",
            body.rooms.len()
        )));
    }
    if body.ephemeral {
        return Err(Error::BadRequest(
            "ephemeral messages are published per room (POST /v1/rooms/{room}/messages); /v1/broadcast stores and sequences".into(),
        ));
    }
    let id = event_id(body.id, &req)?;
    validate_event(&id, &body.event)?;
    let tenant = tenant.as_deref();
    let calls = body.rooms.iter().map(|room| {
        let request = PublishRequest {
            room: room.clone(),
            id: Some(id.clone()),
            event: body.event.clone(),
            data: body.data.clone(),
            exclude_conn: None,
            ephemeral: false,
            key: None,
            client: None,
            from: None,
        };
        async move {
            check_room(&request.room)?;
            let mut resp = publish_to_room(env, tenant, &request).await?;
            let text = resp.text().await.map_err(internal)?;
            if resp.status_code() != 200 {
                return Err(Error::Internal(format!(
                    "room answered {}: {text}",
                    resp.status_code()
                )));
            }
            serde_json::from_str::<PublishResult>(&text).map_err(|e| Error::Internal(e.to_string()))
        }
    });
    let results: Vec<BroadcastResult> = join_all(calls)
        .await
        .into_iter()
        .zip(body.rooms.iter())
        .map(|(result, room)| match result {
            Ok(r) => BroadcastResult::Ok {
                room: r.room,
                seq: r.seq,
                duplicate: r.duplicate,
            },
            Err(e) => {
                if let Error::Internal(detail) = &e {
                    crate::runtime::log_line("broadcast.room_failed", &[("detail", detail)]);
                }
                BroadcastResult::Failed {
                    room: room.clone(),
                    error: e.body().error,
                }
            }
        })
        .collect();
    json_response(200, &BroadcastResponse { results })
}

async fn history(mut req: Request, url: &Url, env: &Env, room: &str) -> Result<Response> {
    check_room(room)?;
    let (config, verifier) = load(env)?;
    let (tenant, _) = server_auth(&mut req, url, &config, &verifier).await?;
    let number = |name: &str, default: u64| -> Result<u64> {
        match query(url, name) {
            None => Ok(default),
            Some(v) => v
                .parse::<u64>()
                .map_err(|_| Error::BadRequest(format!("{name} must be a non-negative integer"))),
        }
    };
    let since = number("since", 0)?;
    let limit = number("limit", u64::from(rpc::DEFAULT_HISTORY_PAGE))?;
    if limit == 0 || limit > u64::from(rpc::MAX_HISTORY_PAGE) {
        return Err(Error::BadRequest(format!(
            "limit must be 1-{}",
            rpc::MAX_HISTORY_PAGE
        )));
    }
    let path = format!("{}?since={since}&limit={limit}", rpc::path::HISTORY);
    room_get(env, tenant.as_deref(), room, &path).await
}

#[derive(Deserialize)]
struct DevTokenBody {
    sub: String,
    info: Option<serde_json::Value>,
}

/// `POST /v1/dev/token` — exists only when `DEV_TOKENS` is set (local development);
/// otherwise it is a plain 404, indistinguishable from any unknown route.
async fn dev_token(mut req: Request, env: &Env) -> Result<Response> {
    let config = Config::from_lookup(&|name| env.var(name).ok().map(|v| v.to_string()))?;
    let secret = match (&config.jwt_secret, config.dev_tokens) {
        (Some(secret), true) => secret.clone(),
        _ => return Err(Error::NotFound(req.path())),
    };
    only(&req.method(), &[Method::Post], "POST")?;
    let body = req.bytes().await.map_err(internal)?;
    if body.len() > 4096 {
        return Err(Error::TooLarge(
            "dev token requests are at most 4096 bytes".into(),
        ));
    }
    let body: DevTokenBody = serde_json::from_slice(&body).map_err(bad_body)?;
    let token = auth::mint_dev_token(&secret, &body.sub, body.info.as_ref(), now_secs())?;
    json_response(
        200,
        &serde_json::json!({ "token": token, "rooms": auth::DEV_ROOM_PATTERN }),
    )
}

async fn info(mut req: Request, url: &Url, env: &Env, room: &str) -> Result<Response> {
    check_room(room)?;
    let (config, verifier) = load(env)?;
    let (tenant, _) = server_auth(&mut req, url, &config, &verifier).await?;
    room_get(
        env,
        tenant.as_deref(),
        room,
        &format!("{}?room={room}", rpc::path::INFO),
    )
    .await
}

/// `POST /v1/rooms/{room}/disconnect` (docs/protocol.md §14): the body is checked here,
/// so a malformed request never wakes the room; the room closes the sockets and answers
/// `{"closed":N}`.
async fn disconnect(mut req: Request, url: &Url, env: &Env, room: &str) -> Result<Response> {
    check_room(room)?;
    let (config, verifier) = load(env)?;
    let (tenant, body) = server_auth(&mut req, url, &config, &verifier).await?;
    let request = DisconnectRequest::from_body(&body)?;
    let json = serde_json::to_string(&request).map_err(|e| Error::Internal(e.to_string()))?;
    let headers = Headers::new();
    headers
        .set("Content-Type", "application/json")
        .map_err(internal)?;
    let tenant = tenant.as_deref();
    let shards = match (&request.target, config.sharding.shards_for(room)) {
        (_, None) => None,
        (Target::User(user), Some(_)) => {
            let forward =
                internal_request(rpc::path::DISCONNECT, Method::Post, headers, Some(json))?;
            return user_stub(env, tenant, room, user)?
                .fetch_with_request(forward)
                .await
                .map_err(internal);
        }
        (Target::Conn(_), Some(n)) => Some(n),
    };
    let Some(n) = shards else {
        let forward = internal_request(rpc::path::DISCONNECT, Method::Post, headers, Some(json))?;
        return room_stub(env, tenant, room)?
            .fetch_with_request(forward)
            .await
            .map_err(internal);
    };
    // A connection id does not say which shard holds it: ask them all.
    let key = room_key(tenant, room);
    let ns = env.durable_object(ROOMS_BINDING).map_err(internal)?;
    let calls = (0..n).map(|i| {
        let (ns, json, name) = (&ns, json.clone(), shard_key(&key, i));
        async move {
            let headers = Headers::new();
            headers
                .set("Content-Type", "application/json")
                .map_err(internal)?;
            let forward =
                internal_request(rpc::path::DISCONNECT, Method::Post, headers, Some(json))?;
            let mut resp = ns
                .get_by_name(&name)
                .map_err(internal)?
                .fetch_with_request(forward)
                .await
                .map_err(internal)?;
            let text = resp.text().await.map_err(internal)?;
            serde_json::from_str::<DisconnectResult>(&text)
                .map_err(|e| Error::Internal(format!("shard {i} disconnect: {e}")))
        }
    });
    let mut closed = 0;
    for answer in join_all(calls).await {
        closed += answer?.closed;
    }
    json_response(200, &DisconnectResult { closed })
}

/// `GET /v1/rooms/{room}/webhooks` and `POST /v1/rooms/{room}/webhooks/retry`.
async fn webhooks(
    mut req: Request,
    url: &Url,
    env: &Env,
    room: &str,
    method: Method,
    path: &str,
) -> Result<Response> {
    check_room(room)?;
    let (config, verifier) = load(env)?;
    let (tenant, _) = server_auth(&mut req, url, &config, &verifier).await?;
    let forward = internal_request(path, method, Headers::new(), None)?;
    room_stub(env, tenant.as_deref(), room)?
        .fetch_with_request(forward)
        .await
        .map_err(internal)
}

/// Forwards a read-only request to a room and returns its answer as is.
async fn room_get(env: &Env, tenant: Option<&str>, room: &str, path: &str) -> Result<Response> {
    let forward = internal_request(path, Method::Get, Headers::new(), None)?;
    room_stub(env, tenant, room)?
        .fetch_with_request(forward)
        .await
        .map_err(internal)
}

pub(crate) fn internal(e: worker::Error) -> Error {
    Error::Internal(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_transports_in_contract_order() {
        let (t, offered) = extract_token(
            Some("roomcast.v1, roomcast.bearer.AAA"),
            Some("Bearer BBB"),
            Some("CCC"),
        );
        assert_eq!((t.as_deref(), offered), (Some("AAA"), true));
        let (t, offered) = extract_token(None, Some("bearer BBB"), Some("CCC"));
        assert_eq!((t.as_deref(), offered), (Some("BBB"), false));
        let (t, _) = extract_token(Some("roomcast.v1"), Some("Basic xyz"), Some("CCC"));
        assert_eq!(t.as_deref(), Some("CCC"));
        let (t, _) = extract_token(None, None, Some(""));
        assert_eq!(t, None);
    }

    #[test]
    fn browser_close_codes_follow_the_status_classes() {
        let cases = [
            (Error::MissingToken, Some(4001)),
            (Error::InvalidToken("x".into()), Some(4001)),
            (Error::TokenExpired, Some(4001)),
            (Error::Forbidden("x".into()), Some(4403)),
            (Error::OriginNotAllowed("x".into()), Some(4403)),
            (Error::TooManyConnections("x".into()), Some(4029)),
            (Error::BadRoom("x".into()), Some(4400)),
            (Error::BadRequest("x".into()), Some(4400)),
            (Error::UpgradeRequired, None),
            (Error::Misconfigured("x".into()), None),
            (Error::Internal("x".into()), None),
        ];
        for (err, code) in cases {
            assert_eq!(Error::browser_close_code(&err), code, "{err:?}");
        }
    }

    #[test]
    fn room_refusals_are_read_from_the_error_body() {
        let body = br#"{"error":{"code":"too_many_connections","message":"user \"a\" has 10"}}"#;
        assert_eq!(
            room_refusal(body),
            Some(Error::TooManyConnections(r#"user "a" has 10"#.into()))
        );
        let internal = br#"{"error":{"code":"internal","message":"internal error"}}"#;
        assert_eq!(room_refusal(internal), None);
        assert_eq!(room_refusal(b"not json"), None);
    }

    #[test]
    fn room_keys_are_injective() {
        assert_eq!(room_key(None, "a"), "/a");
        assert_eq!(room_key(Some("t"), "a"), "t/a");
        assert_ne!(room_key(Some("t"), "a"), room_key(None, "t/a"));
    }
}
