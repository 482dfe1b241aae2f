//! Test-only key material, clock, token minting and verifier configuration shared by the
//! native test crates (`auth_vectors.rs`, `fuzz_parsers.rs`). Each crate uses a subset.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::OnceLock;

use chrono::DateTime;
use jwt_compact::alg::{Ed25519, Es256, Hs256, Hs256Key, Rsa, RsaPrivateKey};
use jwt_compact::jwk::JsonWebKey;
use jwt_compact::{Algorithm, AlgorithmExt, AlgorithmSignature, Claims, Header};
use roomcast::auth::Verifier;
use roomcast::config::Config;
use serde_json::{json, Map, Value};

/// The fixed "current time" of every vector, unix seconds.
pub const NOW: i64 = 1_800_000_000;
/// `JWT_SECRET` of the default configuration (test-only).
pub const SECRET: &str = "test-only-hs256-secret-0123456789abcdef";
/// A different HS256 secret, for "signed with the wrong key".
pub const OTHER_SECRET: &str = "test-only-some-other-secret-fedcba9876543210";
const FIXTURE: &str = include_str!("../fixtures/test-keys.json");

// ---------------------------------------------------------------------------------------
// Key fixture
// ---------------------------------------------------------------------------------------

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

pub type EsSigningKey = <Es256 as Algorithm>::SigningKey;
pub type EdSigningKey = <Ed25519 as Algorithm>::SigningKey;

/// Every signing key of the fixture: the configured one of each algorithm and another key
/// of the same type that the default configuration does not know.
pub struct Signers {
    pub hs: Hs256Key,
    pub hs_other: Hs256Key,
    pub rsa: RsaPrivateKey,
    pub rsa_other: RsaPrivateKey,
    pub ec: EsSigningKey,
    pub ec_other: EsSigningKey,
    pub ed: EdSigningKey,
    pub ed_other: EdSigningKey,
}

/// The signing keys, parsed once.
pub fn signers() -> &'static Signers {
    static S: OnceLock<Signers> = OnceLock::new();
    S.get_or_init(|| Signers {
        hs: Hs256Key::new(SECRET),
        hs_other: Hs256Key::new(OTHER_SECRET),
        rsa: RsaPrivateKey::try_from(&private_jwk("rsa")).expect("rsa"),
        rsa_other: RsaPrivateKey::try_from(&private_jwk("rsa_other")).expect("rsa_other"),
        ec: EsSigningKey::try_from(&private_jwk("ec")).expect("ec"),
        ec_other: EsSigningKey::try_from(&private_jwk("ec_other")).expect("ec_other"),
        ed: EdSigningKey::try_from(&private_jwk("ed")).expect("ed"),
        ed_other: EdSigningKey::try_from(&private_jwk("ed_other")).expect("ed_other"),
    })
}

// ---------------------------------------------------------------------------------------
// Algorithms and the default configuration
// ---------------------------------------------------------------------------------------

/// The accepted algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    Hs256,
    Rs256,
    Es256,
    EdDsa,
}

pub const ALGS: [Alg; 4] = [Alg::Hs256, Alg::Rs256, Alg::Es256, Alg::EdDsa];
pub const ASYMMETRIC: [Alg; 3] = [Alg::Rs256, Alg::Es256, Alg::EdDsa];

impl Alg {
    /// The `alg` header value.
    pub fn name(self) -> &'static str {
        match self {
            Alg::Hs256 => "HS256",
            Alg::Rs256 => "RS256",
            Alg::Es256 => "ES256",
            Alg::EdDsa => "EdDSA",
        }
    }

    /// The `kid` of this algorithm's key in [`default_keys`].
    pub fn kid(self) -> Option<&'static str> {
        match self {
            Alg::Hs256 => None,
            Alg::Rs256 => Some("rsa-1"),
            Alg::Es256 => Some("ec-1"),
            Alg::EdDsa => Some("ed-1"),
        }
    }
}

/// Which signing key of an algorithm to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    /// The configured one (`JWT_SECRET` / the default `JWT_PUBLIC_KEYS` entry).
    Main,
    /// Another key of the same type, not in the default configuration.
    Other,
}

/// The default `JWT_PUBLIC_KEYS`: one key per asymmetric algorithm, each with a `kid`.
pub fn default_keys() -> String {
    json!({"keys": [
        public_jwk("rsa", "rsa-1"),
        public_jwk("ec", "ec-1"),
        public_jwk("ed", "ed-1"),
    ]})
    .to_string()
}

/// Builds a configuration from `JWT_SECRET` = [`SECRET`] and the default keys, with
/// `overrides` applied on top (an empty value unsets a variable, as in `Config`).
///
/// # Errors
///
/// Whatever `Config::from_lookup` rejects.
pub fn config(overrides: &[(&str, &str)]) -> roomcast::error::Result<Config> {
    let mut vars: HashMap<String, String> = HashMap::new();
    vars.insert("JWT_SECRET".into(), SECRET.into());
    vars.insert("JWT_PUBLIC_KEYS".into(), default_keys());
    for (k, v) in overrides {
        vars.insert((*k).into(), (*v).into());
    }
    Config::from_lookup(&move |name: &str| vars.get(name).cloned())
}

/// A verifier for [`config`]`(overrides)`; panics if the configuration is rejected.
pub fn verifier(overrides: &[(&str, &str)]) -> Verifier {
    let config = config(overrides).expect("valid test configuration");
    Verifier::new(&config).unwrap_or_else(|e| panic!("test configuration rejected: {e:?}"))
}

/// The verifier of the default configuration, built once.
pub fn default_verifier() -> &'static Verifier {
    static V: OnceLock<Verifier> = OnceLock::new();
    V.get_or_init(|| verifier(&[]))
}

// ---------------------------------------------------------------------------------------
// Minting
// ---------------------------------------------------------------------------------------

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

/// Signs `claims_json` with the given algorithm and key through `AlgorithmExt::token`.
pub fn mint_with(alg: Alg, key: Key, kid: Option<&str>, claims_json: &Value) -> String {
    let s = signers();
    let header = match kid {
        Some(kid) => Header::empty().with_key_id(kid),
        None => Header::empty(),
    };
    let c = claims(claims_json);
    let other = key == Key::Other;
    let token = match alg {
        Alg::Hs256 => Hs256.token(&header, &c, if other { &s.hs_other } else { &s.hs }),
        Alg::Rs256 => Rsa::rs256().token(&header, &c, if other { &s.rsa_other } else { &s.rsa }),
        Alg::Es256 => Es256.token(&header, &c, if other { &s.ec_other } else { &s.ec }),
        Alg::EdDsa => Ed25519.token(&header, &c, if other { &s.ed_other } else { &s.ed }),
    };
    token.expect("signing a test token")
}

/// Signs `claims_json` with the configured key of `alg`, with its default `kid`.
pub fn mint(alg: Alg, claims_json: &Value) -> String {
    mint_with(alg, Key::Main, alg.kid(), claims_json)
}

/// Signs hand-written header and payload text verbatim with the configured key of `alg`,
/// through `Algorithm::sign`.
pub fn mint_raw(alg: Alg, header: &str, payload: &str) -> String {
    let s = signers();
    let input = format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()));
    let m = input.as_bytes();
    let sig: Vec<u8> = match alg {
        Alg::Hs256 => Hs256.sign(&s.hs, m).as_bytes().into_owned(),
        Alg::Rs256 => Rsa::rs256().sign(&s.rsa, m).as_bytes().into_owned(),
        Alg::Es256 => Es256.sign(&s.ec, m).as_bytes().into_owned(),
        Alg::EdDsa => Ed25519.sign(&s.ed, m).as_bytes().into_owned(),
    };
    format!("{input}.{}", b64(&sig))
}

/// The header text jwt-compact writes for `alg` with its default `kid`.
pub fn raw_header(alg: Alg) -> String {
    match alg.kid() {
        Some(kid) => json!({"alg": alg.name(), "kid": kid}).to_string(),
        None => json!({"alg": alg.name()}).to_string(),
    }
}

/// The three dot-separated segments of a token (header, payload, signature).
pub fn segments(token: &str) -> (&str, &str, &str) {
    let mut it = token.split('.');
    let parts = (
        it.next().expect("header"),
        it.next().expect("payload"),
        it.next().expect("signature"),
    );
    assert!(it.next().is_none(), "three segments");
    parts
}
