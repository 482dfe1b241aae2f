//! Test-only key material and clock shared by the native test crates
//! (`auth_vectors.rs`, `fuzz_parsers.rs`). Each crate uses a subset.
#![allow(dead_code)]

use std::sync::OnceLock;

use chrono::DateTime;
use jwt_compact::jwk::JsonWebKey;
use jwt_compact::Claims;
use serde_json::{Map, Value};

/// The fixed "current time" of every vector, unix seconds.
pub const NOW: i64 = 1_800_000_000;
/// `JWT_SECRET` of the default configuration (test-only).
pub const SECRET: &str = "test-only-hs256-secret-0123456789abcdef";
const FIXTURE: &str = include_str!("../fixtures/test-keys.json");

/// The key fixture (generated once with node; test-only keys).
pub fn fixture() -> &'static Value {
    static F: OnceLock<Value> = OnceLock::new();
    F.get_or_init(|| serde_json::from_str(FIXTURE).expect("tests/fixtures/test-keys.json"))
}

/// The private JWK `name` from the fixture.
pub fn private_jwk(name: &str) -> JsonWebKey<'static> {
    serde_json::from_value(fixture()[name]["private"].clone()).expect("private JWK")
}

/// The public JWK `name` from the fixture, with `kid` added.
pub fn public_jwk(name: &str, kid: &str) -> Value {
    let mut v = fixture()[name]["public"].clone();
    assert!(v.is_object(), "fixture has no public key {name}");
    v["kid"] = kid.into();
    v
}

/// Unpadded base64url, written out so that hand-crafted tokens depend on nothing but std.
pub fn b64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

/// Turns a JSON object into jwt-compact claims: integer `exp`/`nbf`/`iat` become the
/// standard time claims; everything else (including a non-integer `exp`, for malformed
/// vectors) stays in the custom part, which serializes flat beside them.
pub fn claims(v: &Value) -> Claims<Map<String, Value>> {
    let mut map = v.as_object().expect("claims must be an object").clone();
    let mut time = |name: &str| {
        let secs = map.get(name).and_then(Value::as_i64)?;
        map.remove(name);
        Some(DateTime::from_timestamp(secs, 0).expect("timestamp in range"))
    };
    let expiration = time("exp");
    let not_before = time("nbf");
    let issued_at = time("iat");
    let mut c = Claims::new(map);
    c.expiration = expiration;
    c.not_before = not_before;
    c.issued_at = issued_at;
    c
}
