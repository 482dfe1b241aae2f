//! Typed configuration, read from Worker vars and secrets (contract §2).
//!
//! Parsing takes a lookup function instead of `worker::Env` so that it runs natively in
//! unit tests; `router` and `room` pass a closure over the real `Env`. An empty value counts
//! as unset, because `wrangler` and `.dev.vars` make it easy to leave `NAME=` behind.

use crate::error::{Error, Result};

/// Default for `MAX_MESSAGE_BYTES`: 64 KiB, a frame size every browser and proxy handles.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 65_536;
/// Default for `HISTORY_LIMIT`: messages kept per room for replay and history.
pub const DEFAULT_HISTORY_LIMIT: u32 = 1_000;
/// Default for `DEDUP_WINDOW_SECS`: one day covers any realistic client retry horizon.
pub const DEFAULT_DEDUP_WINDOW_SECS: u64 = 86_400;
/// Default for `MAX_CONNECTIONS_PER_USER` (per room).
pub const DEFAULT_MAX_CONNECTIONS_PER_USER: u32 = 10;
/// Default for `RATE_LIMIT_PER_SEC`.
pub const DEFAULT_RATE_LIMIT_PER_SEC: u32 = 20;
/// Default for `RATE_LIMIT_BURST`.
pub const DEFAULT_RATE_LIMIT_BURST: u32 = 40;

/// Default for `MAX_PENDING_BYTES`: 1 MiB a socket may leave unread before the room drops
/// its ephemeral messages and then closes it with 4009 (contract §C).
pub const DEFAULT_MAX_PENDING_BYTES: usize = 1 << 20;

/// Default for `SSE_KEEPALIVE_SECS`: the longest an SSE stream goes without a byte (a
/// comment line), under the 30 s idle timeout common in proxies and load balancers.
pub const DEFAULT_SSE_KEEPALIVE_SECS: u64 = 25;

/// Default for `METRICS_INTERVAL_SECS`: one Analytics Engine data point per room per minute
/// at most (docs/operating.md), enough for per-minute dashboards.
pub const DEFAULT_METRICS_INTERVAL_SECS: u64 = 60;

/// `METRICS_INTERVAL_SECS`, read by the Worker (which refuses every request while it is
/// malformed) and by each room.
///
/// # Errors
///
/// `Misconfigured` when it is not a positive integer.
pub fn metrics_interval_secs(get: &dyn Fn(&str) -> Option<String>) -> Result<u64> {
    number(get, "METRICS_INTERVAL_SECS", DEFAULT_METRICS_INTERVAL_SECS)
}

/// Default for `ROOM_SHARDS`: shard objects per sharded room (docs/sharding.md).
pub const DEFAULT_ROOM_SHARDS: u32 = 8;
/// Largest `ROOM_SHARDS`: the sequencer sends every burst to every shard, so its cost per
/// message grows with the count; 64 shards already hold 64 × 32,768 sockets.
pub const MAX_ROOM_SHARDS: u32 = 64;

/// Which rooms are served by many Durable Objects (`SHARDED_ROOMS`, `ROOM_SHARDS`):
/// docs/sharding.md. The room objects read it too (a sequencer must know it is one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sharding {
    /// Room-name patterns, like a token's `rooms`: exact, `prefix*` or `*`.
    pub patterns: Vec<String>,
    /// Shard objects per sharded room, 1..=[`MAX_ROOM_SHARDS`].
    pub shards: u32,
}

impl Default for Sharding {
    fn default() -> Self {
        Sharding {
            patterns: Vec::new(),
            shards: DEFAULT_ROOM_SHARDS,
        }
    }
}

impl Sharding {
    /// Reads `SHARDED_ROOMS` (comma list of patterns; unset: no room is sharded) and
    /// `ROOM_SHARDS`.
    ///
    /// # Errors
    ///
    /// `Misconfigured` naming the variable when `ROOM_SHARDS` is not in 1..=64 or a
    /// pattern has a `*` anywhere but at its end.
    pub fn from_lookup(get: &dyn Fn(&str) -> Option<String>) -> Result<Self> {
        let shards = number(get, "ROOM_SHARDS", DEFAULT_ROOM_SHARDS)?;
        if shards > MAX_ROOM_SHARDS {
            return Err(Error::Misconfigured(format!(
                "ROOM_SHARDS must be 1-{MAX_ROOM_SHARDS}, got {shards}"
            )));
        }
        let mut patterns = Vec::new();
        for p in get("SHARDED_ROOMS").unwrap_or_default().split(',') {
            let p = p.trim();
            if p.is_empty() {
                continue;
            }
            if p.trim_end_matches('*').contains('*') {
                return Err(Error::Misconfigured(format!(
                    "SHARDED_ROOMS patterns are a room name, a prefix ending in * or *, got {p:?}"
                )));
            }
            patterns.push(p.to_string());
        }
        Ok(Sharding { patterns, shards })
    }

    /// How many shards serve `room`, or `None` when it is an ordinary room.
    pub fn shards_for(&self, room: &str) -> Option<u32> {
        self.patterns
            .iter()
            .any(|p| crate::auth::pattern_matches(p, room))
            .then_some(self.shards)
    }
}

/// Numeric limits; the room reads these too, so they are a separate, `Copy` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted client frame or HTTP body, in bytes.
    pub max_message_bytes: usize,
    /// Messages kept per room for replay and history.
    pub history_limit: u32,
    /// How long an event id is remembered, in seconds.
    pub dedup_window_secs: u64,
    /// Sockets per user per room.
    pub max_connections_per_user: u32,
    /// Publish token-bucket refill rate per connection.
    pub rate_limit_per_sec: u32,
    /// Publish token-bucket size per connection.
    pub rate_limit_burst: u32,
    /// Unread bytes a socket may accumulate before it is treated as a slow consumer.
    pub max_pending_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            history_limit: DEFAULT_HISTORY_LIMIT,
            dedup_window_secs: DEFAULT_DEDUP_WINDOW_SECS,
            max_connections_per_user: DEFAULT_MAX_CONNECTIONS_PER_USER,
            rate_limit_per_sec: DEFAULT_RATE_LIMIT_PER_SEC,
            rate_limit_burst: DEFAULT_RATE_LIMIT_BURST,
            max_pending_bytes: DEFAULT_MAX_PENDING_BYTES,
        }
    }
}

impl Limits {
    /// Reads the numeric limits, falling back to the documented defaults when unset.
    ///
    /// # Errors
    ///
    /// `Misconfigured` naming the variable when a value is not a positive integer.
    pub fn from_lookup(get: &dyn Fn(&str) -> Option<String>) -> Result<Self> {
        let d = Limits::default();
        Ok(Limits {
            max_message_bytes: number(get, "MAX_MESSAGE_BYTES", d.max_message_bytes)?,
            history_limit: number(get, "HISTORY_LIMIT", d.history_limit)?,
            dedup_window_secs: number(get, "DEDUP_WINDOW_SECS", d.dedup_window_secs)?,
            max_connections_per_user: number(
                get,
                "MAX_CONNECTIONS_PER_USER",
                d.max_connections_per_user,
            )?,
            rate_limit_per_sec: number(get, "RATE_LIMIT_PER_SEC", d.rate_limit_per_sec)?,
            rate_limit_burst: number(get, "RATE_LIMIT_BURST", d.rate_limit_burst)?,
            max_pending_bytes: number(get, "MAX_PENDING_BYTES", d.max_pending_bytes)?,
        })
    }
}

/// Default for `WEBHOOK_MAX_BATCH`.
pub const DEFAULT_WEBHOOK_MAX_BATCH: u32 = 100;
/// Default for `WEBHOOK_MAX_AGE_SECS`: a receiver may be down for a day without loss.
pub const DEFAULT_WEBHOOK_MAX_AGE_SECS: u64 = 86_400;
/// Largest `WEBHOOK_MAX_BATCH`: a batch is one request body, and 1,000 events of up to
/// `MAX_MESSAGE_BYTES` each is already tens of megabytes.
pub const MAX_WEBHOOK_BATCH: u32 = 1000;

/// Which kinds of room events are forwarded (`WEBHOOK_EVENTS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HookKinds {
    /// Durable messages.
    pub message: bool,
    /// Presence joins and leaves.
    pub presence: bool,
    /// The room becoming occupied or vacated.
    pub room: bool,
}

/// Webhooks to the application's backend (docs/protocol.md §15); present when
/// `WEBHOOK_URL` is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhooks {
    /// Where events are POSTed (http or https).
    pub url: String,
    /// The URL's path and query, as signed.
    pub path_and_query: String,
    /// HMAC key for `Roomcast-Signature`.
    pub secret: String,
    /// Which kinds are forwarded.
    pub kinds: HookKinds,
    /// `event`-name patterns of messages to forward: exact, `prefix*` or `*`.
    pub message_events: Vec<String>,
    /// Events per request.
    pub max_batch: u32,
    /// How long an undeliverable event is retried before it becomes dead, in seconds.
    pub max_age_secs: u64,
}

impl Webhooks {
    /// Reads the webhook settings; `None` when `WEBHOOK_URL` is unset.
    ///
    /// # Errors
    ///
    /// `Misconfigured` naming the variable: a URL that is not http(s), a missing
    /// `WEBHOOK_SECRET`, an unknown kind or a bad number.
    pub fn from_lookup(get: &dyn Fn(&str) -> Option<String>) -> Result<Option<Self>> {
        let text = |name: &str| {
            get(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let Some(raw) = text("WEBHOOK_URL") else {
            return Ok(None);
        };
        let bad = |why: &str| Error::Misconfigured(format!("WEBHOOK_URL {why}, got {raw:?}"));
        let url = worker::Url::parse(&raw).map_err(|_| bad("must be an absolute URL"))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(bad("must be an http:// or https:// URL with a host"));
        }
        let secret = text("WEBHOOK_SECRET").ok_or_else(|| {
            Error::Misconfigured(
                "WEBHOOK_URL is set but WEBHOOK_SECRET is not: every webhook is signed with it"
                    .into(),
            )
        })?;
        let mut kinds = HookKinds::default();
        for kind in text("WEBHOOK_EVENTS")
            .as_deref()
            .unwrap_or("message")
            .split(',')
        {
            match kind.trim() {
                "message" => kinds.message = true,
                "presence" => kinds.presence = true,
                "room" => kinds.room = true,
                "" => {}
                other => {
                    return Err(Error::Misconfigured(format!(
                        "WEBHOOK_EVENTS lists {other:?}; the kinds are message, presence and room"
                    )))
                }
            }
        }
        let message_events = text("WEBHOOK_MESSAGE_EVENTS")
            .as_deref()
            .unwrap_or("*")
            .split(',')
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty())
            .collect::<Vec<_>>();
        if let Some(bad) = message_events
            .iter()
            .find(|p| p.strip_suffix('*').unwrap_or(p).contains('*'))
        {
            return Err(Error::Misconfigured(format!(
                "WEBHOOK_MESSAGE_EVENTS pattern {bad:?}: use an exact name, a prefix ending in *, or *"
            )));
        }
        let max_batch = number(get, "WEBHOOK_MAX_BATCH", DEFAULT_WEBHOOK_MAX_BATCH)?;
        if max_batch > MAX_WEBHOOK_BATCH {
            return Err(Error::Misconfigured(format!(
                "WEBHOOK_MAX_BATCH must be at most {MAX_WEBHOOK_BATCH}, got {max_batch}"
            )));
        }
        let path_and_query = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_string(),
        };
        Ok(Some(Webhooks {
            url: url.to_string(),
            path_and_query,
            secret,
            kinds,
            message_events,
            max_batch,
            max_age_secs: number(get, "WEBHOOK_MAX_AGE_SECS", DEFAULT_WEBHOOK_MAX_AGE_SECS)?,
        }))
    }

    /// Whether a message with this `event` name is forwarded.
    pub fn forwards_event(&self, event: &str) -> bool {
        self.message_events
            .iter()
            .any(|p| match p.strip_suffix('*') {
                Some(prefix) => event.starts_with(prefix),
                None => p == event,
            })
    }
}

/// Everything the Worker needs to authenticate and route a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// HS256 key for user and service tokens.
    pub jwt_secret: Option<String>,
    /// JWK Set (JSON text) for RS256 / ES256 / EdDSA tokens; parsed by `auth::Verifier`.
    pub jwt_public_keys: Option<String>,
    /// Required `iss`, when set.
    pub jwt_issuer: Option<String>,
    /// Required `aud` member, when set.
    pub jwt_audience: Option<String>,
    /// HMAC key for signed server-API requests.
    pub api_secret: Option<String>,
    /// Allowed browser origins; `None` allows any.
    pub allowed_origins: Option<Vec<String>>,
    /// `DEV_TOKENS=1`: serve `POST /v1/dev/token` for the local demo. Never set it in
    /// production: anyone could mint tokens for `demo-*` rooms.
    pub dev_tokens: bool,
    /// Seconds between keep-alive comments on an SSE stream (docs/protocol.md §13).
    pub sse_keepalive_secs: u64,
    /// Numeric limits.
    pub limits: Limits,
    /// Webhooks to the backend, when configured.
    pub webhooks: Option<Webhooks>,
    /// Seconds between a room's Analytics Engine data points, when `METRICS` is bound.
    pub metrics_interval_secs: u64,
    /// Rooms served by many objects.
    pub sharding: Sharding,
}

impl Config {
    /// Reads and validates the whole configuration.
    ///
    /// # Errors
    ///
    /// `Misconfigured` naming the variable when a value is malformed, or when neither
    /// `JWT_SECRET` nor `JWT_PUBLIC_KEYS` is set (no token could ever be verified).
    pub fn from_lookup(get: &dyn Fn(&str) -> Option<String>) -> Result<Self> {
        let text = |name: &str| get(name).filter(|v| !v.trim().is_empty());
        let jwt_secret = text("JWT_SECRET");
        let jwt_public_keys = text("JWT_PUBLIC_KEYS");
        if jwt_secret.is_none() && jwt_public_keys.is_none() {
            return Err(Error::Misconfigured(
                "set JWT_SECRET (HS256) or JWT_PUBLIC_KEYS (a JWK Set): no token can be verified without one".into(),
            ));
        }
        let allowed_origins = text("ALLOWED_ORIGINS").map(|list| {
            list.split(',')
                .map(|o| o.trim().trim_end_matches('/').to_string())
                .filter(|o| !o.is_empty())
                .collect()
        });
        Ok(Config {
            jwt_secret,
            jwt_public_keys,
            jwt_issuer: text("JWT_ISSUER"),
            jwt_audience: text("JWT_AUDIENCE"),
            api_secret: text("API_SECRET"),
            allowed_origins,
            dev_tokens: matches!(text("DEV_TOKENS").as_deref(), Some("1" | "true")),
            sse_keepalive_secs: number(get, "SSE_KEEPALIVE_SECS", DEFAULT_SSE_KEEPALIVE_SECS)?,
            limits: Limits::from_lookup(get)?,
            webhooks: Webhooks::from_lookup(get)?,
            metrics_interval_secs: metrics_interval_secs(get)?,
            sharding: Sharding::from_lookup(get)?,
        })
    }

    /// Whether a browser `Origin` may open a socket.
    pub fn origin_allowed(&self, origin: &str) -> bool {
        match &self.allowed_origins {
            None => true,
            Some(list) => list.iter().any(|o| o == origin.trim_end_matches('/')),
        }
    }
}

fn number<T: std::str::FromStr + PartialOrd + Default>(
    get: &dyn Fn(&str) -> Option<String>,
    name: &str,
    default: T,
) -> Result<T> {
    match get(name).filter(|v| !v.trim().is_empty()) {
        None => Ok(default),
        Some(raw) => match raw.trim().parse::<T>() {
            Ok(v) if v > T::default() => Ok(v),
            _ => Err(Error::Misconfigured(format!(
                "{name} must be a positive integer, got {raw:?}"
            ))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn defaults_apply_when_unset() {
        let c = Config::from_lookup(&lookup(&[("JWT_SECRET", "s")])).unwrap();
        assert_eq!(c.limits, Limits::default());
        assert!(c.origin_allowed("https://anything.example"));
    }

    #[test]
    fn no_key_at_all_is_misconfigured() {
        let e = Config::from_lookup(&lookup(&[("JWT_SECRET", " ")])).unwrap_err();
        assert_eq!(e.code(), "misconfigured");
        assert!(e.to_string().contains("JWT_SECRET"));
    }

    #[test]
    fn malformed_number_names_the_variable() {
        let e = Config::from_lookup(&lookup(&[("JWT_SECRET", "s"), ("HISTORY_LIMIT", "lots")]))
            .unwrap_err();
        assert!(e.to_string().contains("HISTORY_LIMIT"));
        let e = Limits::from_lookup(&lookup(&[("MAX_MESSAGE_BYTES", "0")])).unwrap_err();
        assert!(e.to_string().contains("MAX_MESSAGE_BYTES"));
        let e = Config::from_lookup(&lookup(&[
            ("JWT_SECRET", "s"),
            ("METRICS_INTERVAL_SECS", "1m"),
        ]))
        .unwrap_err();
        assert_eq!(e.code(), "misconfigured");
        assert!(e.to_string().contains("METRICS_INTERVAL_SECS"));
        let c = Config::from_lookup(&lookup(&[("JWT_SECRET", "s")])).unwrap();
        assert_eq!(c.metrics_interval_secs, DEFAULT_METRICS_INTERVAL_SECS);
    }

    #[test]
    fn webhooks_are_validated_with_the_variable_named() {
        let get = |pairs: &[(&str, &str)]| Webhooks::from_lookup(&lookup(pairs));
        assert_eq!(get(&[]), Ok(None));
        let e = get(&[("WEBHOOK_URL", "https://b.example/hook")]).unwrap_err();
        assert!(e.to_string().contains("WEBHOOK_SECRET"), "{e}");
        let e = get(&[("WEBHOOK_URL", "ftp://b.example/"), ("WEBHOOK_SECRET", "s")]).unwrap_err();
        assert_eq!(e.code(), "misconfigured");
        assert!(e.to_string().contains("WEBHOOK_URL"));
        let e = get(&[("WEBHOOK_URL", "/relative"), ("WEBHOOK_SECRET", "s")]).unwrap_err();
        assert!(e.to_string().contains("WEBHOOK_URL"));
        let base = [
            ("WEBHOOK_URL", "http://127.0.0.1:9/in?x=1"),
            ("WEBHOOK_SECRET", "s"),
        ];
        let w = get(&base).unwrap().unwrap();
        assert_eq!(w.path_and_query, "/in?x=1");
        assert_eq!(
            w.kinds,
            HookKinds {
                message: true,
                ..HookKinds::default()
            }
        );
        assert_eq!((w.max_batch, w.max_age_secs), (100, 86_400));
        assert!(w.forwards_event("anything"));
        let mut pairs = base.to_vec();
        pairs.extend([
            ("WEBHOOK_EVENTS", "presence, room"),
            ("WEBHOOK_MESSAGE_EVENTS", "chat,order.*"),
        ]);
        let w = get(&pairs).unwrap().unwrap();
        assert_eq!(
            w.kinds,
            HookKinds {
                message: false,
                presence: true,
                room: true
            }
        );
        assert!(w.forwards_event("chat") && w.forwards_event("order.paid"));
        assert!(!w.forwards_event("chats") && !w.forwards_event("cursor"));
        for (name, value) in [
            ("WEBHOOK_EVENTS", "messages"),
            ("WEBHOOK_MESSAGE_EVENTS", "a*b"),
            ("WEBHOOK_MAX_BATCH", "0"),
            ("WEBHOOK_MAX_BATCH", "5000"),
            ("WEBHOOK_MAX_AGE_SECS", "soon"),
        ] {
            let mut pairs = base.to_vec();
            pairs.push((name, value));
            let e = get(&pairs).unwrap_err();
            assert!(e.to_string().contains(name), "{name}={value}: {e}");
        }
    }

    #[test]
    fn sharded_rooms_and_shard_count_are_validated() {
        let s = Sharding::from_lookup(&lookup(&[])).unwrap();
        assert_eq!((s.shards_for("a"), s.shards), (None, 8));
        let s = Sharding::from_lookup(&lookup(&[
            ("SHARDED_ROOMS", "big, live-*"),
            ("ROOM_SHARDS", "4"),
        ]))
        .unwrap();
        assert_eq!(s.shards_for("big"), Some(4));
        assert_eq!(s.shards_for("live-1"), Some(4));
        assert_eq!(s.shards_for("bigger"), None);
        let all = Sharding::from_lookup(&lookup(&[("SHARDED_ROOMS", "*")])).unwrap();
        assert_eq!(all.shards_for("anything"), Some(8));
        for (name, value) in [
            ("ROOM_SHARDS", "0"),
            ("ROOM_SHARDS", "65"),
            ("ROOM_SHARDS", "many"),
            ("SHARDED_ROOMS", "a*b"),
        ] {
            let e =
                Config::from_lookup(&lookup(&[("JWT_SECRET", "s"), (name, value)])).unwrap_err();
            assert_eq!(e.code(), "misconfigured");
            assert!(e.to_string().contains(name), "{name}={value}: {e}");
        }
    }

    #[test]
    fn origins_are_an_exact_allowlist() {
        let c = Config::from_lookup(&lookup(&[
            ("JWT_SECRET", "s"),
            ("ALLOWED_ORIGINS", "https://a.example, https://b.example/"),
        ]))
        .unwrap();
        assert!(c.origin_allowed("https://a.example"));
        assert!(c.origin_allowed("https://b.example"));
        assert!(!c.origin_allowed("https://a.example.evil"));
        assert!(!c.origin_allowed("http://a.example"));
    }
}
