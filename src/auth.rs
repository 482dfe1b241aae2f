//! Authentication: JWT verification (contract §3), room permissions, and HMAC request
//! signatures for the server API (contract §7). Plain Rust, no `worker` types, so every
//! rejection path is a native unit test.
//!
//! The current time is always passed in (`now`, unix seconds): the Worker reads the clock,
//! the tests pick it, and nothing here depends on a platform clock.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use hmac::{Hmac, Mac};
use jwt_compact::{
    alg::{Ed25519, Es256, Hs256, Hs256Key, Rsa, RsaPublicKey, StrongAlg, StrongKey},
    jwk::JsonWebKey,
    Algorithm, AlgorithmExt, Claims, TimeOptions, Token, UntrustedToken, ValidationError,
};
use serde::Deserialize;
use serde_json::value::RawValue;
use sha2::Sha256;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::protocol::{personal_owner, valid_room, valid_tenant};

/// Clock leeway for `exp`, `nbf` and `iat` (contract §3).
pub const LEEWAY_SECS: i64 = 30;
/// How far a signature's `t` may be from now (contract §7).
pub const SIGNATURE_WINDOW_SECS: i64 = 300;
/// Longest token accepted. Real tokens are well under 4 KiB; the bound keeps a hostile
/// header from costing a large base64 decode and JSON parse before rejection.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Largest `info` claim (contract §3).
pub const MAX_INFO_BYTES: usize = 1024;
/// Longest `sub` (contract §3).
pub const MAX_SUB_CHARS: usize = 128;

type Es256Key = <Es256 as Algorithm>::VerifyingKey;
type Ed25519Key = <Ed25519 as Algorithm>::VerifyingKey;

/// A public key from `JWT_PUBLIC_KEYS`, typed by the one algorithm it may verify.
/// Binding each key to exactly one algorithm is what stops algorithm-confusion attacks.
enum PublicKey {
    Rs256(StrongKey<RsaPublicKey>),
    Es256(Es256Key),
    EdDsa(Ed25519Key),
}

impl PublicKey {
    fn alg(&self) -> &'static str {
        match self {
            PublicKey::Rs256(_) => "RS256",
            PublicKey::Es256(_) => "ES256",
            PublicKey::EdDsa(_) => "EdDSA",
        }
    }
}

struct KeyEntry {
    kid: Option<String>,
    key: PublicKey,
}

/// Verifies tokens against the configured keys and claim requirements.
pub struct Verifier {
    hs256: Option<Hs256Key>,
    keys: Vec<KeyEntry>,
    issuer: Option<String>,
    audience: Option<String>,
}

/// Read/write permissions on one room.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Perms {
    /// May open a socket and receive.
    pub read: bool,
    /// May publish.
    pub write: bool,
}

/// A verified token: who, where, and what they may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// `sub`.
    pub user: String,
    /// `tenant`, namespacing every room this token touches.
    pub tenant: Option<String>,
    /// `rooms`: pattern → permissions.
    pub rooms: Vec<(String, Perms)>,
    /// `info` as JSON object text.
    pub info: Option<String>,
    /// `exp`, unix seconds.
    pub exp: i64,
    /// Whether `scope` contains `server`.
    pub server: bool,
}

impl Identity {
    /// The union of the permissions of every pattern that matches `room` — except in a
    /// personal room (`name@user`, docs/protocol.md §14), which its owner (the token whose
    /// `sub` is exactly `user`) may always read and may write with a matching `write`
    /// pattern, and which no pattern opens to anyone else: not `*`, not a prefix, not
    /// even its exact name.
    pub fn perms_for(&self, room: &str) -> Perms {
        let granted = self
            .rooms
            .iter()
            .filter(|(pattern, _)| pattern_matches(pattern, room))
            .fold(Perms::default(), |acc, (_, p)| Perms {
                read: acc.read || p.read,
                write: acc.write || p.write,
            });
        match personal_owner(room) {
            None => granted,
            // `valid_room`: the owner of a malformed name (`a@b@c`) is nobody.
            Some(owner) if owner == self.user && valid_room(room) => Perms {
                read: true,
                write: granted.write,
            },
            Some(_) => Perms::default(),
        }
    }
}

/// Whether a `rooms` pattern matches a room: exact, a prefix ending in `*`, or `*`.
pub fn pattern_matches(pattern: &str, room: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => room.starts_with(prefix),
        None => pattern == room,
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

/// Claims beyond `exp`/`nbf`/`iat`, which jwt-compact parses itself.
#[derive(Deserialize)]
struct Custom {
    sub: Option<String>,
    iss: Option<String>,
    aud: Option<Audience>,
    tenant: Option<String>,
    rooms: Option<BTreeMap<String, Vec<String>>>,
    // A `Value`, not a `RawValue`: jwt-compact flattens these claims, and serde's
    // flatten buffers content, which a `RawValue` cannot be read from.
    info: Option<serde_json::Value>,
    scope: Option<String>,
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::InvalidToken(msg.into())
}

impl Verifier {
    /// Builds a verifier from the configuration, parsing `JWT_PUBLIC_KEYS` once.
    ///
    /// # Errors
    ///
    /// `Misconfigured` naming `JWT_PUBLIC_KEYS` when it is not a JWK Set of RSA (≥ 2048
    /// bits), P-256 or Ed25519 public keys.
    pub fn new(config: &Config) -> Result<Self> {
        let keys = match &config.jwt_public_keys {
            None => Vec::new(),
            Some(text) => parse_jwks(text)?,
        };
        Ok(Verifier {
            hs256: config
                .jwt_secret
                .as_ref()
                .map(|s| Hs256Key::new(s.as_bytes())),
            keys,
            issuer: config.jwt_issuer.clone(),
            audience: config.jwt_audience.clone(),
        })
    }

    /// Verifies a token's signature and claims at time `now` (unix seconds).
    ///
    /// # Errors
    ///
    /// `TokenExpired` when `exp` is past (beyond the leeway); `InvalidToken` with the
    /// reason for every other failure: malformed, `alg:none`, unknown or mismatched
    /// algorithm, unknown `kid`, bad signature, `nbf`/`iat` in the future, wrong
    /// `iss`/`aud`, or a missing or malformed claim.
    pub fn verify(&self, token: &str, now: i64) -> Result<Identity> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(invalid(format!(
                "token is larger than {MAX_TOKEN_BYTES} bytes"
            )));
        }
        let untrusted =
            UntrustedToken::new(token).map_err(|e| invalid(format!("malformed token: {e}")))?;
        let alg = untrusted.algorithm();
        let kid = untrusted.header().key_id.as_deref();
        let verified: Token<Custom> = match alg {
            "HS256" => {
                let key = self.hs256.as_ref().ok_or_else(|| {
                    invalid("HS256 tokens are not accepted here: JWT_SECRET is not set")
                })?;
                check(Hs256.validator(key).validate(&untrusted))?
            }
            "RS256" | "ES256" | "EdDSA" => self.verify_with_jwks(&untrusted, alg, kid)?,
            "none" | "None" | "NONE" => {
                return Err(invalid("unsigned tokens (alg \"none\") are never accepted"))
            }
            other => {
                let shown: String = other.chars().take(16).collect();
                return Err(invalid(format!(
                    "unsupported algorithm {shown:?}; use HS256, RS256, ES256 or EdDSA"
                )));
            }
        };
        self.check_claims(verified.claims(), now)
    }

    fn verify_with_jwks(
        &self,
        token: &UntrustedToken<'_>,
        alg: &str,
        kid: Option<&str>,
    ) -> Result<Token<Custom>> {
        let candidates: Vec<&KeyEntry> = match kid {
            Some(kid) => {
                let entry = self
                    .keys
                    .iter()
                    .find(|k| k.kid.as_deref() == Some(kid))
                    .ok_or_else(|| {
                        let shown: String = kid.chars().take(64).collect();
                        invalid(format!("no key with kid {shown:?} in JWT_PUBLIC_KEYS"))
                    })?;
                if entry.key.alg() != alg {
                    return Err(invalid(format!(
                        "key {kid:?} is for {} but the token says {alg}",
                        entry.key.alg()
                    )));
                }
                vec![entry]
            }
            None => self.keys.iter().filter(|k| k.key.alg() == alg).collect(),
        };
        if candidates.is_empty() {
            return Err(invalid(format!(
                "{alg} tokens are not accepted here: JWT_PUBLIC_KEYS has no {alg} key"
            )));
        }
        let mut last = invalid("signature does not verify");
        for entry in candidates {
            let result = match &entry.key {
                PublicKey::Rs256(k) => StrongAlg(Rsa::rs256()).validator(k).validate(token),
                PublicKey::Es256(k) => Es256.validator(k).validate(token),
                PublicKey::EdDsa(k) => Ed25519.validator(k).validate(token),
            };
            match check(result) {
                Ok(t) => return Ok(t),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn check_claims(&self, claims: &Claims<Custom>, now: i64) -> Result<Identity> {
        let clock = DateTime::<Utc>::from_timestamp(now, 0).unwrap_or(DateTime::<Utc>::MIN_UTC);
        let options = TimeOptions::new(Duration::seconds(LEEWAY_SECS), move || clock);
        match claims.validate_expiration(&options) {
            Ok(_) => {}
            Err(ValidationError::Expired) => return Err(Error::TokenExpired),
            Err(_) => return Err(invalid("the token has no exp claim; exp is required")),
        }
        // Compared in seconds, like `iat`: jwt-compact's `validate_maturity` computes
        // `nbf - leeway`, which panics for an `nbf` within the leeway of chrono's minimum.
        if let Some(nbf) = claims.not_before {
            if nbf.timestamp() > now + LEEWAY_SECS {
                return Err(invalid("the token is not valid yet (nbf is in the future)"));
            }
        }
        if let Some(iat) = claims.issued_at {
            if iat.timestamp() > now + LEEWAY_SECS {
                return Err(invalid("the token was issued in the future (iat)"));
            }
        }
        let c = &claims.custom;
        if let Some(want) = &self.issuer {
            if c.iss.as_deref() != Some(want.as_str()) {
                return Err(invalid(format!("iss must be {want:?}")));
            }
        }
        if let Some(want) = &self.audience {
            let ok = match &c.aud {
                Some(Audience::One(a)) => a == want,
                Some(Audience::Many(list)) => list.iter().any(|a| a == want),
                None => false,
            };
            if !ok {
                return Err(invalid(format!("aud must contain {want:?}")));
            }
        }
        let user = match &c.sub {
            Some(s) if !s.is_empty() && s.chars().count() <= MAX_SUB_CHARS => s.clone(),
            _ => return Err(invalid("sub is required: a user id of 1-128 characters")),
        };
        if let Some(t) = &c.tenant {
            if !valid_tenant(t) {
                return Err(invalid(
                    "tenant must be 1-64 characters from A-Z a-z 0-9 _ . -",
                ));
            }
        }
        let info = match &c.info {
            None => None,
            Some(value) => {
                if !value.is_object() {
                    return Err(invalid("info must be a JSON object"));
                }
                let text = value.to_string();
                if text.len() > MAX_INFO_BYTES {
                    return Err(invalid(format!(
                        "info is larger than {MAX_INFO_BYTES} bytes"
                    )));
                }
                Some(text)
            }
        };
        let mut rooms = Vec::new();
        for (pattern, perms) in c.rooms.iter().flatten() {
            let mut p = Perms::default();
            for perm in perms {
                match perm.as_str() {
                    "read" => p.read = true,
                    "write" => p.write = true,
                    other => {
                        return Err(invalid(format!(
                            "unknown permission {other:?} in rooms; use \"read\" and \"write\""
                        )))
                    }
                }
            }
            rooms.push((pattern.clone(), p));
        }
        let server = c
            .scope
            .as_deref()
            .is_some_and(|s| s.split_whitespace().any(|w| w == "server"));
        let exp = claims.expiration.map(|e| e.timestamp()).unwrap_or(now);
        Ok(Identity {
            user,
            tenant: c.tenant.clone(),
            rooms,
            info,
            exp,
            server,
        })
    }
}

/// Maps jwt-compact's validation errors to ours. Claims-level errors are checked later,
/// by `check_claims`, so only integrity and shape failures arrive here.
fn check<T>(result: std::result::Result<T, ValidationError>) -> Result<T> {
    result.map_err(|e| match e {
        ValidationError::AlgorithmMismatch { expected, actual } => invalid(format!(
            "algorithm mismatch: the key is for {expected}, the token says {actual}"
        )),
        ValidationError::InvalidSignature | ValidationError::InvalidSignatureLen { .. } => {
            invalid("signature does not verify")
        }
        ValidationError::MalformedSignature(_) => invalid("malformed signature"),
        ValidationError::MalformedClaims(e) => invalid(format!("malformed claims: {e}")),
        other => invalid(format!("invalid token: {other}")),
    })
}

#[derive(Deserialize)]
struct JwkSet<'a> {
    #[serde(borrow)]
    keys: Vec<&'a RawValue>,
}

#[derive(Deserialize)]
struct JwkMeta {
    kid: Option<String>,
    alg: Option<String>,
}

fn parse_jwks(text: &str) -> Result<Vec<KeyEntry>> {
    let bad = |msg: String| Error::Misconfigured(format!("JWT_PUBLIC_KEYS: {msg}"));
    let set: JwkSet = serde_json::from_str(text)
        .map_err(|e| bad(format!("must be a JWK Set {{\"keys\":[...]}}: {e}")))?;
    let mut out = Vec::with_capacity(set.keys.len());
    for (i, raw) in set.keys.iter().enumerate() {
        let meta: JwkMeta =
            serde_json::from_str(raw.get()).map_err(|e| bad(format!("key #{i}: {e}")))?;
        let jwk: JsonWebKey =
            serde_json::from_str(raw.get()).map_err(|e| bad(format!("key #{i}: {e}")))?;
        let key = match &jwk {
            JsonWebKey::Rsa { .. } => {
                let k = RsaPublicKey::try_from(&jwk).map_err(|e| bad(format!("key #{i}: {e}")))?;
                PublicKey::Rs256(
                    StrongKey::try_from(k).map_err(|_| {
                        bad(format!("key #{i}: RSA keys must have at least 2048 bits"))
                    })?,
                )
            }
            JsonWebKey::EllipticCurve { .. } => PublicKey::Es256(
                Es256Key::try_from(&jwk).map_err(|e| bad(format!("key #{i}: {e}")))?,
            ),
            JsonWebKey::KeyPair { .. } => PublicKey::EdDsa(
                Ed25519Key::try_from(&jwk).map_err(|e| bad(format!("key #{i}: {e}")))?,
            ),
            _ => {
                return Err(bad(format!(
                    "key #{i}: only RSA, EC P-256 and OKP Ed25519 public keys are supported"
                )))
            }
        };
        if let Some(alg) = &meta.alg {
            if alg != key.alg() {
                return Err(bad(format!(
                    "key #{i} says alg {alg:?} but its key type is for {}",
                    key.alg()
                )));
            }
        }
        out.push(KeyEntry { kid: meta.kid, key });
    }
    Ok(out)
}

/// Rooms a dev token may use: the demo's, nothing else.
pub const DEV_ROOM_PATTERN: &str = "demo-*";
/// Lifetime of a dev token.
pub const DEV_TOKEN_TTL_SECS: i64 = 600;

#[derive(serde::Serialize)]
struct DevClaims<'a> {
    sub: &'a str,
    rooms: BTreeMap<&'static str, [&'static str; 2]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    info: Option<&'a serde_json::Value>,
}

/// Mints an HS256 user token for the local demo: read+write on `demo-*` rooms only, for
/// ten minutes. Only reachable when `DEV_TOKENS` is set (see `router`).
///
/// # Errors
///
/// `BadRequest` for an invalid `sub` or `info`; `Internal` if signing fails.
pub fn mint_dev_token(
    secret: &str,
    sub: &str,
    info: Option<&serde_json::Value>,
    now: i64,
) -> Result<String> {
    if sub.is_empty() || sub.chars().count() > MAX_SUB_CHARS {
        return Err(Error::BadRequest("sub must be 1-128 characters".into()));
    }
    if let Some(info) = info {
        if !info.is_object() || info.to_string().len() > MAX_INFO_BYTES {
            return Err(Error::BadRequest(format!(
                "info must be a JSON object of at most {MAX_INFO_BYTES} bytes"
            )));
        }
    }
    let at = |t: i64| DateTime::<Utc>::from_timestamp(t, 0);
    let mut claims = Claims::new(DevClaims {
        sub,
        rooms: BTreeMap::from([(DEV_ROOM_PATTERN, ["read", "write"])]),
        info,
    });
    claims.issued_at = at(now);
    claims.expiration = at(now + DEV_TOKEN_TTL_SECS);
    let header = jwt_compact::Header::empty().with_token_type("JWT");
    Hs256
        .token(&header, &claims, &Hs256Key::new(secret.as_bytes()))
        .map_err(|e| Error::Internal(format!("sign dev token: {e}")))
}

/// Verifies a `Roomcast-Signature` header (contract §7).
///
/// `msg = t + "\n" + METHOD + "\n" + path_and_query + "\n" + body`, HMAC-SHA256 with
/// `secret`, hex-encoded. Several `v1=` entries are allowed (one matching is enough), which
/// lets a backend sign with old and new secrets during a rotation.
///
/// # Errors
///
/// `Unauthorized` saying whether the header is malformed, stale, or does not match.
pub fn verify_signature(
    secret: &[u8],
    header: &str,
    method: &str,
    path_and_query: &str,
    body: &[u8],
    now: i64,
) -> Result<()> {
    let malformed = || {
        Error::Unauthorized(
            "malformed Roomcast-Signature: expected t=<unix seconds>,v1=<hex HMAC-SHA256>".into(),
        )
    };
    let mut t: Option<i64> = None;
    let mut sigs: Vec<Vec<u8>> = Vec::new();
    for part in header.split(',') {
        let (k, v) = part.trim().split_once('=').ok_or_else(malformed)?;
        match k {
            "t" => t = Some(v.parse().map_err(|_| malformed())?),
            "v1" => sigs.push(hex::decode(v).map_err(|_| malformed())?),
            _ => {}
        }
    }
    let t = t.ok_or_else(malformed)?;
    if sigs.is_empty() {
        return Err(malformed());
    }
    // In i128: `t` is the client's, and `now - t` overflows i64 for `t` near i64::MIN.
    let skew = i128::from(now) - i128::from(t);
    if skew.abs() > i128::from(SIGNATURE_WINDOW_SECS) {
        return Err(Error::Unauthorized(format!(
            "signature timestamp is {skew}s away from server time; it must be within ±{SIGNATURE_WINDOW_SECS}s (check the clock and sign each request fresh)"
        )));
    }
    let mac = signing_mac(secret, t, method, path_and_query, body)?;
    // `verify_slice` compares in constant time.
    if sigs.iter().any(|s| mac.clone().verify_slice(s).is_ok()) {
        Ok(())
    } else {
        Err(Error::Unauthorized(
            "signature does not match: sign t\\nMETHOD\\npath?query\\nbody with API_SECRET".into(),
        ))
    }
}

/// Computes the hex signature for a request; used by tests and tools that sign requests.
///
/// # Errors
///
/// `Internal` only if the HMAC cannot be keyed (it accepts any key length).
pub fn sign(
    secret: &[u8],
    t: i64,
    method: &str,
    path_and_query: &str,
    body: &[u8],
) -> Result<String> {
    let mac = signing_mac(secret, t, method, path_and_query, body)?;
    Ok(hex::encode(mac.finalize().into_bytes()))
}

fn signing_mac(
    secret: &[u8],
    t: i64,
    method: &str,
    path_and_query: &str,
    body: &[u8],
) -> Result<Hmac<Sha256>> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret)
        .map_err(|e| Error::Internal(format!("hmac key: {e}")))?;
    mac.update(t.to_string().as_bytes());
    mac.update(b"\n");
    mac.update(method.as_bytes());
    mac.update(b"\n");
    mac.update(path_and_query.as_bytes());
    mac.update(b"\n");
    mac.update(body);
    Ok(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_tokens_verify_and_only_cover_demo_rooms() {
        let config =
            Config::from_lookup(&|k| (k == "JWT_SECRET").then(|| "s3cret".to_string())).unwrap();
        let info = serde_json::json!({"name": "Ada"});
        let token = mint_dev_token("s3cret", "ada", Some(&info), 1_000).unwrap();
        let id = Verifier::new(&config)
            .unwrap()
            .verify(&token, 1_000)
            .unwrap();
        assert_eq!(id.user, "ada");
        assert_eq!(id.exp, 1_000 + DEV_TOKEN_TTL_SECS);
        assert_eq!(id.info.as_deref(), Some(r#"{"name":"Ada"}"#));
        assert!(id.perms_for("demo-board").write);
        assert!(!id.perms_for("payroll").read);
        assert!(mint_dev_token("s", "", None, 0).is_err());
        assert!(mint_dev_token("s", "a", Some(&serde_json::json!([1])), 0).is_err());
    }

    #[test]
    fn patterns() {
        assert!(pattern_matches("*", "anything"));
        assert!(pattern_matches("doc-*", "doc-42"));
        assert!(pattern_matches("doc-*", "doc-"));
        assert!(!pattern_matches("doc-*", "do"));
        assert!(pattern_matches("lobby", "lobby"));
        assert!(!pattern_matches("lobby", "lobby2"));
    }

    #[test]
    fn signature_roundtrip_and_window() {
        let sig = sign(b"k", 1000, "POST", "/v1/x?a=1", b"{}").unwrap();
        let h = format!("t=1000,v1={sig}");
        assert!(verify_signature(b"k", &h, "POST", "/v1/x?a=1", b"{}", 1299).is_ok());
        assert!(verify_signature(b"k", &h, "POST", "/v1/x?a=1", b"{}", 1301).is_err());
        assert!(verify_signature(b"k", &h, "POST", "/v1/x?a=2", b"{}", 1000).is_err());
        assert!(verify_signature(b"k", &h, "GET", "/v1/x?a=1", b"{}", 1000).is_err());
        assert!(verify_signature(b"k", &h, "POST", "/v1/x?a=1", b"{ }", 1000).is_err());
        assert!(verify_signature(b"other", &h, "POST", "/v1/x?a=1", b"{}", 1000).is_err());
        let rotated = format!("t=1000,v1={},v1={sig}", "00".repeat(32));
        assert!(verify_signature(b"k", &rotated, "POST", "/v1/x?a=1", b"{}", 1000).is_ok());
        for bad in [
            "",
            "t=1000",
            "v1=00",
            "t=x,v1=00",
            "t=1000,v1=zz",
            "garbage",
        ] {
            assert!(
                matches!(
                    verify_signature(b"k", bad, "POST", "/", b"", 1000),
                    Err(Error::Unauthorized(_))
                ),
                "{bad}"
            );
        }
    }
}
