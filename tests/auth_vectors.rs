//! Pins every acceptance and rejection path of `roomcast::auth::Verifier` (contract §3) as
//! table-driven vectors, run for each accepted algorithm: HS256, RS256, ES256 and EdDSA.
//!
//! Tokens are minted here with jwt-compact (`AlgorithmExt::token` for ordinary tokens,
//! `Algorithm::sign` over hand-written header/payload text for crafted ones) from the
//! test-only key pairs in `tests/fixtures/test-keys.json`, which were generated once with
//! node's `crypto.generateKeyPairSync` so that no test has to generate an RSA key.
//!
//! Every vector names the exact outcome: `Ok`, `Error::TokenExpired`, or
//! `Error::InvalidToken` whose message contains the reason, so a token rejected for the
//! wrong reason fails the test. `now` is fixed at [`NOW`]; `exp`/`nbf`/`iat` are relative
//! to it. `JWT_PUBLIC_KEYS` configuration errors are pinned as `Error::Misconfigured`
//! naming the variable.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

use jwt_compact::{
    alg::{Ed25519, Es256, Hs256, Hs256Key, Hs384, Hs384Key, Hs512, Hs512Key, Rsa},
    AlgorithmExt, Header, Renamed,
};
mod common;
use common::{
    b64, claims, config, default_keys, default_verifier, fixture, mint, mint_raw, mint_with,
    public_jwk, raw_header, segments, signers, verifier, Alg, Key, ALGS, ASYMMETRIC, NOW, SECRET,
};
use roomcast::auth::{
    pattern_matches, Identity, Perms, Verifier, LEEWAY_SECS, MAX_INFO_BYTES, MAX_SUB_CHARS,
    MAX_TOKEN_BYTES,
};
use roomcast::error::Error;
use serde_json::{json, Map, Value};

// ---------------------------------------------------------------------------------------
// Keys and claims (keys, configuration and minting are in tests/common)
// ---------------------------------------------------------------------------------------

// Key rotation is only exercised here, so its key ids stay beside its vectors.
impl Alg {
    /// The `kid` under which the "other" key of this type is published, in
    /// [`rotation_keys`].
    fn other_kid(self) -> &'static str {
        match self {
            Alg::Hs256 => unreachable!("HS256 has no kid"),
            Alg::Rs256 => "rsa-2",
            Alg::Es256 => "ec-2",
            Alg::EdDsa => "ed-2",
        }
    }
}

/// `JWT_PUBLIC_KEYS` with two keys of every type, as during a key rotation.
fn rotation_keys() -> String {
    json!({"keys": [
        public_jwk("rsa", "rsa-1"),
        public_jwk("rsa_other", "rsa-2"),
        public_jwk("ec", "ec-1"),
        public_jwk("ec_other", "ec-2"),
        public_jwk("ed", "ed-1"),
        public_jwk("ed_other", "ed-2"),
    ]})
    .to_string()
}

/// Minimal valid claims.
fn base_claims() -> Value {
    json!({
        "sub": "alice",
        "exp": NOW + 600,
        "iat": NOW - 10,
        "nbf": NOW - 10,
        "rooms": {"lobby": ["read"]},
    })
}

/// `base_claims` with `edit` applied.
fn edited(edit: impl FnOnce(&mut Map<String, Value>)) -> Value {
    let mut v = base_claims();
    edit(v.as_object_mut().expect("object"));
    v
}

/// Replaces the character at `index` with a different base64url character.
fn flip_char(s: &str, index: usize) -> String {
    let mut bytes = s.as_bytes().to_vec();
    bytes[index] = if bytes[index] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).expect("ascii")
}

// ---------------------------------------------------------------------------------------
// Expectations
// ---------------------------------------------------------------------------------------

/// The outcome a vector must produce.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// Accepted.
    Ok,
    /// `Error::TokenExpired`.
    Expired,
    /// `Error::InvalidToken` whose message contains this text.
    Invalid(&'static str),
}

#[track_caller]
fn assert_outcome(result: Result<Identity, Error>, expect: Expect, what: &str) {
    match (expect, &result) {
        (Expect::Ok, Ok(_)) => {}
        (Expect::Expired, Err(e @ Error::TokenExpired)) => {
            assert_eq!(e.code(), "token_expired", "{what}");
            assert_eq!(e.status(), 401, "{what}");
        }
        (Expect::Invalid(needle), _) => assert_invalid(result, needle, what),
        _ => panic!("{what}: expected {expect:?}, got {result:?}"),
    }
}

/// Asserts `Error::InvalidToken` whose message contains `needle`.
#[track_caller]
fn assert_invalid(result: Result<Identity, Error>, needle: &str, what: &str) {
    match &result {
        Err(e @ Error::InvalidToken(msg)) => {
            assert!(
                msg.contains(needle),
                "{what}: expected InvalidToken containing {needle:?}, got {msg:?}"
            );
            assert_eq!(e.code(), "invalid_token", "{what}");
            assert_eq!(e.status(), 401, "{what}");
        }
        _ => panic!("{what}: expected InvalidToken containing {needle:?}, got {result:?}"),
    }
}

#[track_caller]
fn assert_misconfigured(result: Result<Verifier, Error>, needle: &str, what: &str) {
    match result {
        Err(e @ Error::Misconfigured(_)) => {
            let msg = e.to_string();
            assert!(
                msg.contains("JWT_PUBLIC_KEYS"),
                "{what}: message must name JWT_PUBLIC_KEYS: {msg:?}"
            );
            assert!(
                msg.contains(needle),
                "{what}: expected {needle:?} in {msg:?}"
            );
            assert_eq!(e.code(), "misconfigured", "{what}");
            assert_eq!(e.status(), 500, "{what}");
        }
        Err(other) => panic!("{what}: expected Misconfigured, got {other:?}"),
        Ok(_) => panic!("{what}: expected Misconfigured, got a verifier"),
    }
}

// ---------------------------------------------------------------------------------------
// Valid tokens and the identity they yield
// ---------------------------------------------------------------------------------------

#[test]
fn base64url_helper_matches_jwt_compact() {
    // Crafted tokens rely on `b64`; it must agree with the library's encoding.
    for alg in ALGS {
        let token = mint(alg, &base_claims());
        let (header, _, _) = segments(&token);
        assert_eq!(header, b64(raw_header(alg).as_bytes()), "{alg:?}");
    }
    assert_eq!(b64(b""), "");
    assert_eq!(b64(b"f"), "Zg");
    assert_eq!(b64(b"fo"), "Zm8");
    assert_eq!(b64(b"foo"), "Zm9v");
    assert_eq!(b64(&[0xfb, 0xff]), "-_8");
}

#[test]
fn valid_token_yields_the_full_identity() {
    let full = json!({
        "sub": "alice",
        "exp": NOW + 600,
        "iat": NOW - 5,
        "nbf": NOW - 5,
        "tenant": "acme.prod-1",
        "rooms": {"lobby": ["read"], "doc-*": ["read", "write"]},
        "info": {"name": "Alice"},
        "scope": "presence server",
    });
    let expected = Identity {
        user: "alice".into(),
        tenant: Some("acme.prod-1".into()),
        rooms: vec![
            (
                "doc-*".into(),
                Perms {
                    read: true,
                    write: true,
                },
            ),
            (
                "lobby".into(),
                Perms {
                    read: true,
                    write: false,
                },
            ),
        ],
        info: Some(r#"{"name":"Alice"}"#.into()),
        exp: NOW + 600,
        server: true,
    };
    for alg in ALGS {
        let id = default_verifier()
            .verify(&mint(alg, &full), NOW)
            .unwrap_or_else(|e| panic!("{alg:?}: {e:?}"));
        assert_eq!(id, expected, "{alg:?}");
        assert_eq!(
            id.perms_for("doc-42"),
            Perms {
                read: true,
                write: true
            },
            "{alg:?}"
        );
        assert_eq!(
            id.perms_for("lobby"),
            Perms {
                read: true,
                write: false
            },
            "{alg:?}"
        );
        assert_eq!(id.perms_for("other"), Perms::default(), "{alg:?}");
    }
}

#[test]
fn minimal_token_yields_a_minimal_identity() {
    let minimal = json!({"sub": "u1", "exp": NOW + 1});
    for alg in ALGS {
        let id = default_verifier()
            .verify(&mint(alg, &minimal), NOW)
            .unwrap_or_else(|e| panic!("{alg:?}: {e:?}"));
        assert_eq!(
            id,
            Identity {
                user: "u1".into(),
                tenant: None,
                rooms: vec![],
                info: None,
                exp: NOW + 1,
                server: false,
            },
            "{alg:?}"
        );
        assert_eq!(id.perms_for("lobby"), Perms::default(), "{alg:?}");
    }
}

#[test]
fn info_is_the_tokens_json_object() {
    // `info` comes back as JSON object text equal, as JSON, to the token's `info`,
    // whatever the whitespace and key order of the token.
    let info = r#"{ "z": 1,  "a": [true, null, -2.5], "nested": {"k": "v\u00e9"} }"#;
    let payload = format!(r#"{{"sub":"alice","exp":{},"info":{info}}}"#, NOW + 60);
    let want: Value = serde_json::from_str(info).unwrap();
    for alg in ALGS {
        let token = mint_raw(alg, &raw_header(alg), &payload);
        let id = default_verifier()
            .verify(&token, NOW)
            .unwrap_or_else(|e| panic!("{alg:?}: {e:?}"));
        let text = id.info.expect("info present");
        assert!(text.starts_with('{'), "{alg:?}: {text}");
        let got: Value = serde_json::from_str(&text).expect("info is JSON");
        assert_eq!(got, want, "{alg:?}");
    }
}

#[test]
fn scope_server_is_a_whole_word() {
    let cases: &[(Option<&str>, bool)] = &[
        (Some("server"), true),
        (Some("read server write"), true),
        (Some("  server  "), true),
        (Some("servers"), false),
        (Some("Server"), false),
        (Some("server:read"), false),
        (Some(""), false),
        (None, false),
    ];
    for alg in ALGS {
        for (scope, server) in cases {
            let c = edited(|m| {
                if let Some(s) = scope {
                    m.insert("scope".into(), (*s).into());
                }
            });
            let id = default_verifier()
                .verify(&mint(alg, &c), NOW)
                .unwrap_or_else(|e| panic!("{alg:?} {scope:?}: {e:?}"));
            assert_eq!(id.server, *server, "{alg:?} scope {scope:?}");
        }
    }
}

#[test]
fn kid_is_optional_when_the_algorithm_has_a_key() {
    for alg in ASYMMETRIC {
        let token = mint_with(alg, Key::Main, None, &base_claims());
        assert_outcome(
            default_verifier().verify(&token, NOW),
            Expect::Ok,
            alg.name(),
        );
    }
}

// ---------------------------------------------------------------------------------------
// Claim vectors, for every algorithm
// ---------------------------------------------------------------------------------------

struct ClaimCase {
    name: &'static str,
    claims: Value,
    expect: Expect,
}

fn case(name: &'static str, claims: Value, expect: Expect) -> ClaimCase {
    ClaimCase {
        name,
        claims,
        expect,
    }
}

fn set(key: &'static str, value: Value) -> Value {
    edited(|m| {
        m.insert(key.into(), value);
    })
}

fn unset(key: &'static str) -> Value {
    edited(|m| {
        m.remove(key);
    })
}

/// An `info` object whose JSON text is exactly `len` bytes: `{"k":"xxx…"}`.
fn info_of_len(len: usize) -> Value {
    let v = json!({"k": "x".repeat(len - 8)});
    assert_eq!(v.to_string().len(), len);
    v
}

fn claim_cases() -> Vec<ClaimCase> {
    use Expect::{Expired, Invalid, Ok};
    const NO_EXP: &str = "no exp claim";
    const NBF: &str = "not valid yet (nbf";
    const IAT: &str = "issued in the future (iat)";
    const SUB: &str = "sub is required";
    const TENANT: &str = "tenant must be 1-64 characters";
    const INFO_OBJECT: &str = "info must be a JSON object";
    const MALFORMED: &str = "malformed claims";
    // The contract's leeway, written out so that changing the constant fails here.
    let lee = 30;
    assert_eq!(LEEWAY_SECS, lee);
    vec![
        case("baseline", base_claims(), Ok),
        // exp: required, 30 s leeway, past → TokenExpired.
        case("exp missing", unset("exp"), Invalid(NO_EXP)),
        case("exp null", set("exp", Value::Null), Invalid(MALFORMED)),
        case("exp now", set("exp", json!(NOW)), Ok),
        case("exp 1 s past", set("exp", json!(NOW - 1)), Ok),
        case("exp past within leeway", set("exp", json!(NOW - lee)), Ok),
        case(
            "exp past beyond leeway",
            set("exp", json!(NOW - lee - 1)),
            Expired,
        ),
        case("exp an hour past", set("exp", json!(NOW - 3600)), Expired),
        case("exp at the epoch", set("exp", json!(0)), Expired),
        case(
            "exp a string",
            set("exp", json!("2030-01-01")),
            Invalid(MALFORMED),
        ),
        // nbf: checked when present.
        case("nbf absent", unset("nbf"), Ok),
        case("nbf now", set("nbf", json!(NOW)), Ok),
        case("nbf future within leeway", set("nbf", json!(NOW + lee)), Ok),
        case(
            "nbf future beyond leeway",
            set("nbf", json!(NOW + lee + 1)),
            Invalid(NBF),
        ),
        case(
            "nbf a day ahead",
            set("nbf", json!(NOW + 86_400)),
            Invalid(NBF),
        ),
        // iat: checked when present.
        case("iat absent", unset("iat"), Ok),
        case("iat long ago", set("iat", json!(NOW - 86_400 * 365)), Ok),
        case("iat future within leeway", set("iat", json!(NOW + lee)), Ok),
        case(
            "iat future beyond leeway",
            set("iat", json!(NOW + lee + 1)),
            Invalid(IAT),
        ),
        // sub: required, 1-128 characters (characters, not bytes).
        case("sub missing", unset("sub"), Invalid(SUB)),
        case("sub null", set("sub", Value::Null), Invalid(SUB)),
        case("sub empty", set("sub", json!("")), Invalid(SUB)),
        case(
            "sub 128 chars",
            set("sub", json!("u".repeat(MAX_SUB_CHARS))),
            Ok,
        ),
        case(
            "sub 129 chars",
            set("sub", json!("u".repeat(MAX_SUB_CHARS + 1))),
            Invalid(SUB),
        ),
        case(
            "sub 128 two-byte chars",
            set("sub", json!("é".repeat(128))),
            Ok,
        ),
        case(
            "sub 129 two-byte chars",
            set("sub", json!("é".repeat(129))),
            Invalid(SUB),
        ),
        case("sub a number", set("sub", json!(42)), Invalid(MALFORMED)),
        // tenant: optional, [A-Za-z0-9_.-]{1,64}.
        case("tenant absent", unset("tenant"), Ok),
        case("tenant valid", set("tenant", json!("Acme_1.prod-2")), Ok),
        case("tenant 64 chars", set("tenant", json!("t".repeat(64))), Ok),
        case(
            "tenant 65 chars",
            set("tenant", json!("t".repeat(65))),
            Invalid(TENANT),
        ),
        case("tenant empty", set("tenant", json!("")), Invalid(TENANT)),
        case(
            "tenant with colon",
            set("tenant", json!("acme:prod")),
            Invalid(TENANT),
        ),
        case(
            "tenant with slash",
            set("tenant", json!("acme/prod")),
            Invalid(TENANT),
        ),
        case(
            "tenant with space",
            set("tenant", json!("acme prod")),
            Invalid(TENANT),
        ),
        case(
            "tenant with percent",
            set("tenant", json!("acme%2F")),
            Invalid(TENANT),
        ),
        case(
            "tenant non-ascii",
            set("tenant", json!("äcme")),
            Invalid(TENANT),
        ),
        case(
            "tenant a number",
            set("tenant", json!(7)),
            Invalid(MALFORMED),
        ),
        // info: optional JSON object of at most 1 KiB.
        case("info object", set("info", json!({"name": "A"})), Ok),
        case("info empty object", set("info", json!({})), Ok),
        case("info null", set("info", Value::Null), Ok),
        case(
            "info a number",
            set("info", json!(42)),
            Invalid(INFO_OBJECT),
        ),
        case(
            "info a string",
            set("info", json!("{}")),
            Invalid(INFO_OBJECT),
        ),
        case(
            "info an array",
            set("info", json!([{}])),
            Invalid(INFO_OBJECT),
        ),
        case(
            "info a bool",
            set("info", json!(true)),
            Invalid(INFO_OBJECT),
        ),
        case(
            "info 1024 bytes",
            set("info", info_of_len(MAX_INFO_BYTES)),
            Ok,
        ),
        case(
            "info 1025 bytes",
            set("info", info_of_len(MAX_INFO_BYTES + 1)),
            Invalid("info is larger than 1024 bytes"),
        ),
        // rooms: pattern → ["read" | "write"].
        case("rooms absent", unset("rooms"), Ok),
        case("rooms empty", set("rooms", json!({})), Ok),
        case("rooms empty perms", set("rooms", json!({"lobby": []})), Ok),
        case(
            "rooms unknown permission",
            set("rooms", json!({"lobby": ["read", "admin"]})),
            Invalid("unknown permission \"admin\" in rooms"),
        ),
        case(
            "rooms permission wrong case",
            set("rooms", json!({"lobby": ["READ"]})),
            Invalid("unknown permission \"READ\""),
        ),
        case(
            "rooms permission empty",
            set("rooms", json!({"lobby": [""]})),
            Invalid("unknown permission \"\""),
        ),
        case(
            "rooms an array",
            set("rooms", json!(["lobby"])),
            Invalid(MALFORMED),
        ),
        case(
            "rooms perms a string",
            set("rooms", json!({"lobby": "read"})),
            Invalid(MALFORMED),
        ),
        case(
            "rooms perm a number",
            set("rooms", json!({"lobby": [1]})),
            Invalid(MALFORMED),
        ),
        // scope and unconfigured iss/aud.
        case(
            "scope a list",
            set("scope", json!(["server"])),
            Invalid(MALFORMED),
        ),
        case(
            "iss ignored when not configured",
            set("iss", json!("anyone")),
            Ok,
        ),
        case(
            "aud ignored when not configured",
            set("aud", json!(["x"])),
            Ok,
        ),
        case("unknown claims ignored", set("jti", json!("abc")), Ok),
    ]
}

#[test]
fn claim_vectors_for_every_algorithm() {
    let cases = claim_cases();
    for alg in ALGS {
        for c in &cases {
            let token = mint(alg, &c.claims);
            let what = format!("{alg:?} / {}", c.name);
            assert_outcome(default_verifier().verify(&token, NOW), c.expect, &what);
        }
    }
}

#[test]
fn accepted_claims_are_reported_exactly() {
    for alg in ALGS {
        let v = default_verifier();
        let id = v
            .verify(&mint(alg, &set("exp", json!(NOW - LEEWAY_SECS))), NOW)
            .unwrap();
        assert_eq!(
            id.exp,
            NOW - LEEWAY_SECS,
            "{alg:?}: exp is the claim, not now"
        );
        let id = v
            .verify(&mint(alg, &set("sub", json!("é".repeat(128)))), NOW)
            .unwrap();
        assert_eq!(id.user, "é".repeat(128), "{alg:?}");
        let id = v
            .verify(&mint(alg, &set("info", Value::Null)), NOW)
            .unwrap();
        assert_eq!(id.info, None, "{alg:?}: info null is absent");
        let id = v.verify(&mint(alg, &set("info", json!({}))), NOW).unwrap();
        assert_eq!(id.info.as_deref(), Some("{}"), "{alg:?}");
        let id = v
            .verify(&mint(alg, &set("rooms", json!({"lobby": []}))), NOW)
            .unwrap();
        assert_eq!(
            id.rooms,
            vec![("lobby".to_string(), Perms::default())],
            "{alg:?}"
        );
    }
}

#[test]
fn expiry_is_relative_to_the_given_now() {
    // The same token, verified at different times: `now` is the only clock.
    for alg in ALGS {
        let token = mint(alg, &set("exp", json!(NOW)));
        let v = default_verifier();
        assert_outcome(v.verify(&token, NOW + LEEWAY_SECS), Expect::Ok, alg.name());
        assert_outcome(
            v.verify(&token, NOW + LEEWAY_SECS + 1),
            Expect::Expired,
            alg.name(),
        );
        // Expiry outranks every later claim check.
        let bad = edited(|m| {
            m.insert("exp".into(), json!(NOW - 3600));
            m.remove("sub");
            m.insert("tenant".into(), json!("a/b"));
        });
        assert_outcome(v.verify(&mint(alg, &bad), NOW), Expect::Expired, alg.name());
    }
}

// ---------------------------------------------------------------------------------------
// iss / aud when configured
// ---------------------------------------------------------------------------------------

/// Configuration variables set on top of the default configuration.
type Overrides<'a> = &'a [(&'a str, &'a str)];

#[test]
fn issuer_and_audience_vectors() {
    use Expect::{Invalid, Ok};
    const ISS: &str = "iss must be \"https://auth.example\"";
    const AUD: &str = "aud must contain \"roomcast\"";
    let both = [
        ("JWT_ISSUER", "https://auth.example"),
        ("JWT_AUDIENCE", "roomcast"),
    ];
    let with = |iss: Option<Value>, aud: Option<Value>| {
        edited(|m| {
            if let Some(i) = iss {
                m.insert("iss".into(), i);
            }
            if let Some(a) = aud {
                m.insert("aud".into(), a);
            }
        })
    };
    let good_iss = || Some(json!("https://auth.example"));
    let good_aud = || Some(json!("roomcast"));
    let vectors: Vec<(&str, Overrides, Value, Expect)> = vec![
        (
            "both match, aud a string",
            &both,
            with(good_iss(), good_aud()),
            Ok,
        ),
        (
            "aud an array containing it",
            &both,
            with(good_iss(), Some(json!(["other", "roomcast"]))),
            Ok,
        ),
        (
            "aud a one-element array",
            &both,
            with(good_iss(), Some(json!(["roomcast"]))),
            Ok,
        ),
        ("iss missing", &both, with(None, good_aud()), Invalid(ISS)),
        (
            "iss null",
            &both,
            with(Some(Value::Null), good_aud()),
            Invalid(ISS),
        ),
        (
            "iss wrong",
            &both,
            with(Some(json!("https://evil.example")), good_aud()),
            Invalid(ISS),
        ),
        (
            "iss differs in case",
            &both,
            with(Some(json!("https://AUTH.example")), good_aud()),
            Invalid(ISS),
        ),
        (
            "iss with trailing slash",
            &both,
            with(Some(json!("https://auth.example/")), good_aud()),
            Invalid(ISS),
        ),
        ("aud missing", &both, with(good_iss(), None), Invalid(AUD)),
        (
            "aud wrong string",
            &both,
            with(good_iss(), Some(json!("roomcast2"))),
            Invalid(AUD),
        ),
        (
            "aud prefix only",
            &both,
            with(good_iss(), Some(json!("room"))),
            Invalid(AUD),
        ),
        (
            "aud array without it",
            &both,
            with(good_iss(), Some(json!(["a", "b"]))),
            Invalid(AUD),
        ),
        (
            "aud empty array",
            &both,
            with(good_iss(), Some(json!([]))),
            Invalid(AUD),
        ),
        (
            "aud a number",
            &both,
            with(good_iss(), Some(json!(1))),
            Invalid("malformed claims"),
        ),
        (
            "only JWT_ISSUER: aud not needed",
            &[("JWT_ISSUER", "https://auth.example")],
            with(good_iss(), None),
            Ok,
        ),
        (
            "only JWT_ISSUER: iss still required",
            &[("JWT_ISSUER", "https://auth.example")],
            with(None, good_aud()),
            Invalid(ISS),
        ),
        (
            "only JWT_AUDIENCE: iss not needed",
            &[("JWT_AUDIENCE", "roomcast")],
            with(None, good_aud()),
            Ok,
        ),
        (
            "only JWT_AUDIENCE: aud still required",
            &[("JWT_AUDIENCE", "roomcast")],
            with(good_iss(), None),
            Invalid(AUD),
        ),
        (
            "empty JWT_ISSUER counts as unset",
            &[("JWT_ISSUER", " ")],
            with(None, None),
            Ok,
        ),
    ];
    for (name, overrides, claims, expect) in &vectors {
        let v = verifier(overrides);
        for alg in ALGS {
            let what = format!("{alg:?} / {name}");
            assert_outcome(v.verify(&mint(alg, claims), NOW), *expect, &what);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Token-level vectors: algorithm, key, integrity, shape, size
// ---------------------------------------------------------------------------------------

#[test]
fn alg_none_is_never_accepted() {
    let payload = b64(base_claims().to_string().as_bytes());
    let genuine_sig = segments(&mint(Alg::Hs256, &base_claims())).2.to_string();
    let verifiers = [
        ("both configured", verifier(&[])),
        ("HS only", verifier(&[("JWT_PUBLIC_KEYS", "")])),
        ("keys only", verifier(&[("JWT_SECRET", "")])),
    ];
    for (config_name, v) in &verifiers {
        for (alg, needle) in [
            ("none", "alg \"none\""),
            ("None", "alg \"none\""),
            ("NONE", "alg \"none\""),
            ("nOnE", "unsupported algorithm \"nOnE\""),
        ] {
            for header in [
                json!({"alg": alg}),
                json!({"alg": alg, "typ": "JWT"}),
                json!({"alg": alg, "kid": "rsa-1"}),
            ] {
                let head = b64(header.to_string().as_bytes());
                for sig in ["", genuine_sig.as_str()] {
                    let token = format!("{head}.{payload}.{sig}");
                    let what = format!("{config_name} / {header} / sig {:?}", sig.len());
                    assert_outcome(v.verify(&token, NOW), Expect::Invalid(needle), &what);
                }
            }
        }
    }
}

#[test]
fn unknown_algorithms_are_rejected_even_when_genuinely_signed() {
    let s = signers();
    let header = Header::empty();
    let c = claims(&base_claims());
    let rsa_header = Header::empty().with_key_id("rsa-1");
    let tokens: Vec<(&str, String)> = vec![
        (
            "HS384",
            Hs384.token(&header, &c, &Hs384Key::new(SECRET)).unwrap(),
        ),
        (
            "HS512",
            Hs512.token(&header, &c, &Hs512Key::new(SECRET)).unwrap(),
        ),
        (
            "RS384",
            Rsa::rs384().token(&rsa_header, &c, &s.rsa).unwrap(),
        ),
        (
            "RS512",
            Rsa::rs512().token(&rsa_header, &c, &s.rsa).unwrap(),
        ),
        (
            "PS256",
            Rsa::ps256().token(&rsa_header, &c, &s.rsa).unwrap(),
        ),
        (
            "PS512",
            Rsa::ps512().token(&rsa_header, &c, &s.rsa).unwrap(),
        ),
        // Genuine signatures under names the verifier does not know.
        (
            "hs256",
            Renamed::new(Hs256, "hs256")
                .token(&header, &c, &s.hs)
                .unwrap(),
        ),
        (
            "ES384",
            Renamed::new(Es256, "ES384")
                .token(&header, &c, &s.ec)
                .unwrap(),
        ),
        (
            "ES256K",
            Renamed::new(Es256, "ES256K")
                .token(&header, &c, &s.ec)
                .unwrap(),
        ),
        (
            "Ed25519",
            Renamed::new(Ed25519, "Ed25519")
                .token(&header, &c, &s.ed)
                .unwrap(),
        ),
        (
            "EDDSA",
            Renamed::new(Ed25519, "EDDSA")
                .token(&header, &c, &s.ed)
                .unwrap(),
        ),
        (
            "empty",
            Renamed::new(Hs256, "").token(&header, &c, &s.hs).unwrap(),
        ),
    ];
    for (name, token) in &tokens {
        let alg = if *name == "empty" { "" } else { name };
        let needle = format!("unsupported algorithm {alg:?}");
        assert_invalid(default_verifier().verify(token, NOW), &needle, name);
    }
    // An absurd algorithm name is not echoed back in full.
    let long = "X".repeat(500);
    let head = b64(json!({ "alg": long }).to_string().as_bytes());
    let token = format!("{head}.{}.", b64(base_claims().to_string().as_bytes()));
    match default_verifier().verify(&token, NOW) {
        Err(Error::InvalidToken(msg)) => {
            assert!(msg.contains("unsupported algorithm"), "{msg}");
            assert!(
                msg.len() < 200,
                "message echoes the whole alg: {} bytes",
                msg.len()
            );
        }
        other => panic!("long alg: {other:?}"),
    }
}

#[test]
fn hs256_is_rejected_when_jwt_secret_is_unset() {
    let keys_only = verifier(&[("JWT_SECRET", "")]);
    for claims in [base_claims(), set("scope", json!("server"))] {
        let token = mint(Alg::Hs256, &claims);
        assert_outcome(
            default_verifier().verify(&token, NOW),
            Expect::Ok,
            "with secret",
        );
        assert_outcome(
            keys_only.verify(&token, NOW),
            Expect::Invalid("JWT_SECRET is not set"),
            "without secret",
        );
    }
}

#[test]
fn hs256_with_the_wrong_secret_fails() {
    let token = mint_with(Alg::Hs256, Key::Other, None, &base_claims());
    assert_outcome(
        default_verifier().verify(&token, NOW),
        Expect::Invalid("signature does not verify"),
        "other secret",
    );
}

#[test]
fn hs_rs_key_confusion_fails() {
    // The classic attack: sign an HS256 token using the RSA *public* key material as the
    // HMAC secret, hoping the verifier feeds its RSA key to HMAC.
    let rsa_jwk = public_jwk("rsa", "rsa-1").to_string();
    let rsa_pem = fixture()["rsa"]["public_pem"]
        .as_str()
        .expect("pem")
        .to_string();
    let rsa_n = fixture()["rsa"]["public"]["n"]
        .as_str()
        .expect("n")
        .to_string();
    let keys_text = default_keys();
    let materials = [
        ("JWK text", rsa_jwk),
        ("PEM text", rsa_pem.clone()),
        (
            "PEM text without trailing newline",
            rsa_pem.trim_end().to_string(),
        ),
        ("modulus", rsa_n),
        ("JWT_PUBLIC_KEYS text", keys_text),
    ];
    let with_secret = default_verifier();
    let keys_only = verifier(&[("JWT_SECRET", "")]);
    let c = claims(&base_claims());
    for (name, material) in &materials {
        let key = Hs256Key::new(material.as_bytes());
        for header in [Header::empty(), Header::empty().with_key_id("rsa-1")] {
            let token = Hs256.token(&header, &c, &key).unwrap();
            assert_outcome(
                with_secret.verify(&token, NOW),
                Expect::Invalid("signature does not verify"),
                &format!("{name}, JWT_SECRET set"),
            );
            assert_outcome(
                keys_only.verify(&token, NOW),
                Expect::Invalid("JWT_SECRET is not set"),
                &format!("{name}, JWT_SECRET unset"),
            );
        }
    }
    // The reverse: an RS256 header over an HMAC signature.
    let forged = Renamed::new(Hs256, "RS256")
        .token(
            &Header::empty().with_key_id("rsa-1"),
            &c,
            &Hs256Key::new(SECRET),
        )
        .unwrap();
    assert_outcome(
        with_secret.verify(&forged, NOW),
        Expect::Invalid("signature does not verify"),
        "HMAC under an RS256 header",
    );
}

#[test]
fn kid_vectors() {
    let v = default_verifier();
    for alg in ASYMMETRIC {
        // kid pointing nowhere.
        for kid in ["nope", "", "RSA-1", "rsa-1 "] {
            let token = mint_with(alg, Key::Main, Some(kid), &base_claims());
            let needle = format!("no key with kid {kid:?} in JWT_PUBLIC_KEYS");
            assert_invalid(
                v.verify(&token, NOW),
                &needle,
                &format!("{alg:?} kid {kid:?}"),
            );
        }
        // kid of a key of another type: a mismatch, whatever the signature.
        for other in ASYMMETRIC.into_iter().filter(|o| *o != alg) {
            let kid = other.kid().unwrap();
            let token = mint_with(alg, Key::Main, Some(kid), &base_claims());
            let needle = format!(
                "key \"{kid}\" is for {} but the token says {}",
                other.name(),
                alg.name()
            );
            assert_invalid(
                v.verify(&token, NOW),
                &needle,
                &format!("{alg:?} with kid {kid}"),
            );
        }
    }
    // A huge kid is not echoed back in full.
    let kid = "k".repeat(1000);
    let token = mint_with(Alg::Rs256, Key::Main, Some(&kid), &base_claims());
    match v.verify(&token, NOW) {
        Err(Error::InvalidToken(msg)) => {
            assert!(msg.contains("no key with kid"), "{msg}");
            assert!(
                msg.len() < 200,
                "message echoes the whole kid: {} bytes",
                msg.len()
            );
        }
        other => panic!("long kid: {other:?}"),
    }
}

#[test]
fn asymmetric_tokens_need_a_key_of_their_type() {
    let secret_only = verifier(&[("JWT_PUBLIC_KEYS", "")]);
    let rsa_only = {
        let keys = json!({"keys": [public_jwk("rsa", "rsa-1")]}).to_string();
        verifier(&[("JWT_PUBLIC_KEYS", &keys)])
    };
    let empty_set = verifier(&[("JWT_PUBLIC_KEYS", r#"{"keys":[]}"#)]);
    for alg in ASYMMETRIC {
        let no_key = format!("JWT_PUBLIC_KEYS has no {} key", alg.name());
        let without_kid = mint_with(alg, Key::Main, None, &base_claims());
        let with_kid = mint(alg, &base_claims());
        let no_kid_msg = Expect::Invalid("no key with kid");
        assert_invalid(secret_only.verify(&without_kid, NOW), &no_key, "unset");
        assert_outcome(secret_only.verify(&with_kid, NOW), no_kid_msg, "unset, kid");
        assert_invalid(empty_set.verify(&without_kid, NOW), &no_key, "empty");
        if alg == Alg::Rs256 {
            assert_outcome(rsa_only.verify(&without_kid, NOW), Expect::Ok, "rsa only");
        } else {
            assert_invalid(rsa_only.verify(&without_kid, NOW), &no_key, "rsa only");
            assert_outcome(rsa_only.verify(&with_kid, NOW), no_kid_msg, "rsa only, kid");
        }
    }
}

#[test]
fn wrong_key_of_the_right_type_fails_and_rotation_works() {
    let rotating = verifier(&[("JWT_PUBLIC_KEYS", &rotation_keys())]);
    const BAD_SIG: Expect = Expect::Invalid("signature does not verify");
    for alg in ASYMMETRIC {
        let name = alg.name();
        // Not in the default set at all.
        let stranger = mint_with(alg, Key::Other, None, &base_claims());
        assert_outcome(default_verifier().verify(&stranger, NOW), BAD_SIG, name);
        // Claims the configured kid, signed by another key.
        let impostor = mint_with(alg, Key::Other, alg.kid(), &base_claims());
        assert_outcome(default_verifier().verify(&impostor, NOW), BAD_SIG, name);
        assert_outcome(rotating.verify(&impostor, NOW), BAD_SIG, name);
        // During a rotation both keys verify, by kid or by trying each key of the type.
        let new = mint_with(alg, Key::Other, Some(alg.other_kid()), &base_claims());
        assert_outcome(rotating.verify(&new, NOW), Expect::Ok, name);
        assert_outcome(rotating.verify(&stranger, NOW), Expect::Ok, name);
        let old = mint_with(alg, Key::Main, None, &base_claims());
        assert_outcome(rotating.verify(&old, NOW), Expect::Ok, name);
        // The new key's kid does not vouch for the old key's signature.
        let swapped = mint_with(alg, Key::Main, Some(alg.other_kid()), &base_claims());
        assert_outcome(rotating.verify(&swapped, NOW), BAD_SIG, name);
    }
}

#[test]
fn tampered_tokens_fail() {
    const BAD_SIG: Expect = Expect::Invalid("signature does not verify");
    let v = default_verifier();
    for alg in ALGS {
        let name = alg.name();
        let token = mint(alg, &base_claims());
        assert_outcome(v.verify(&token, NOW), Expect::Ok, name);
        let (h, p, s) = segments(&token);

        // Payload swapped for another (validly encoded) payload, signature kept.
        let escalated = mint(alg, &set("rooms", json!({"*": ["read", "write"]})));
        let (_, p2, _) = segments(&escalated);
        assert_outcome(v.verify(&format!("{h}.{p2}.{s}"), NOW), BAD_SIG, name);

        // One character of the payload changed, signature kept.
        let flipped = format!("{h}.{}.{s}", flip_char(p, p.len() / 2));
        assert_outcome(v.verify(&flipped, NOW), BAD_SIG, name);

        // Header changed (kid added / removed), signature kept.
        let other_header = match alg.kid() {
            Some(_) => b64(json!({"alg": name}).to_string().as_bytes()),
            None => b64(json!({"alg": name, "typ": "JWT"}).to_string().as_bytes()),
        };
        assert_outcome(
            v.verify(&format!("{other_header}.{p}.{s}"), NOW),
            BAD_SIG,
            name,
        );

        // Signature altered, emptied, shortened, or taken from another algorithm's token.
        let flipped_sig = format!("{h}.{p}.{}", flip_char(s, s.len() / 2));
        assert_outcome(
            v.verify(&flipped_sig, NOW),
            Expect::Invalid("signature"),
            name,
        );
        assert_outcome(
            v.verify(&format!("{h}.{p}."), NOW),
            Expect::Invalid("signature"),
            name,
        );
        // Four characters (three bytes) fewer, still canonical base64url.
        let short = format!("{h}.{p}.{}", &s[4..]);
        assert_outcome(v.verify(&short, NOW), Expect::Invalid("signature"), name);
        for other in ALGS.into_iter().filter(|o| *o != alg) {
            let other_token = mint(other, &base_claims());
            let (_, _, s2) = segments(&other_token);
            let mixed = format!("{h}.{p}.{s2}");
            assert_outcome(v.verify(&mixed, NOW), Expect::Invalid("signature"), name);
        }
    }
}

#[test]
fn truncated_and_garbage_tokens_are_malformed() {
    const MALFORMED: Expect = Expect::Invalid("malformed token");
    let v = default_verifier();
    for alg in ALGS {
        let token = mint(alg, &base_claims());
        let (h, p, _) = segments(&token);
        let name = alg.name();
        assert_outcome(v.verify(&format!("{h}.{p}"), NOW), MALFORMED, name);
        assert_outcome(v.verify(h, NOW), MALFORMED, name);
        let cut_in_payload = &token[..h.len() + 1 + p.len() / 2];
        assert_outcome(v.verify(cut_in_payload, NOW), MALFORMED, name);
        assert_outcome(v.verify(&format!("{token}.extra"), NOW), MALFORMED, name);
        assert_outcome(v.verify(&format!("Bearer {token}"), NOW), MALFORMED, name);
    }
    let not_json = b64(b"not json");
    let claims_b64 = b64(base_claims().to_string().as_bytes());
    let no_alg = b64(br#"{"typ":"JWT"}"#);
    let alg_number = b64(br#"{"alg":256}"#);
    for garbage in [
        "",
        ".",
        "..",
        "...",
        "garbage",
        "a.b.c",
        "eyJ.eyJ.",
        "!!!.???.***",
        "\u{0}\u{1}\u{2}",
        "é.é.é",
        &format!("{not_json}.{claims_b64}."),
        &format!("{no_alg}.{claims_b64}."),
        &format!("{alg_number}.{claims_b64}."),
    ] {
        assert_outcome(v.verify(garbage, NOW), MALFORMED, &format!("{garbage:?}"));
    }
    // A signed token whose payload is not a JSON object.
    for alg in ALGS {
        for payload in ["[]", "42", "\"sub\"", "{", ""] {
            let token = mint_raw(alg, &raw_header(alg), payload);
            assert_outcome(
                v.verify(&token, NOW),
                Expect::Invalid("malformed claims"),
                &format!("{alg:?} payload {payload:?}"),
            );
        }
    }
}

#[test]
fn oversized_tokens_are_rejected_before_parsing() {
    let larger = "token is larger than 8192 bytes";
    assert_eq!(MAX_TOKEN_BYTES, 8192);
    let v = default_verifier();
    // Validly signed, but too large.
    for alg in ALGS {
        let token = mint(alg, &set("pad", json!("x".repeat(MAX_TOKEN_BYTES))));
        assert!(token.len() > MAX_TOKEN_BYTES);
        assert_outcome(v.verify(&token, NOW), Expect::Invalid(larger), alg.name());
    }
    // The bound is on bytes and is checked before anything else: garbage of exactly the
    // limit gets as far as the parser, one byte more does not.
    let at_limit = "x".repeat(MAX_TOKEN_BYTES);
    assert_outcome(
        v.verify(&at_limit, NOW),
        Expect::Invalid("malformed token"),
        "limit",
    );
    let over = "x".repeat(MAX_TOKEN_BYTES + 1);
    assert_outcome(v.verify(&over, NOW), Expect::Invalid(larger), "limit + 1");
    let multibyte = "é".repeat(MAX_TOKEN_BYTES / 2 + 1);
    assert_outcome(
        v.verify(&multibyte, NOW),
        Expect::Invalid(larger),
        "bytes, not chars",
    );
    // A valid token of exactly MAX_TOKEN_BYTES is accepted; the next sizes up are not.
    let mut exact = None;
    let mut above = None;
    for pad in 5800..6200 {
        let token = mint(Alg::Hs256, &set("pad", json!("x".repeat(pad))));
        match token.len().cmp(&MAX_TOKEN_BYTES) {
            std::cmp::Ordering::Equal => exact = Some(token),
            std::cmp::Ordering::Greater if above.is_none() => above = Some(token),
            _ => {}
        }
    }
    let exact = exact.expect("some padding gives a token of exactly MAX_TOKEN_BYTES");
    assert_outcome(v.verify(&exact, NOW), Expect::Ok, "exactly the limit");
    let above = above.expect("some padding gives a token just over MAX_TOKEN_BYTES");
    assert!(above.len() <= MAX_TOKEN_BYTES + 3);
    assert_outcome(
        v.verify(&above, NOW),
        Expect::Invalid(larger),
        "just over the limit",
    );
}

// ---------------------------------------------------------------------------------------
// Room patterns
// ---------------------------------------------------------------------------------------

#[test]
fn room_patterns_union_over_matches() {
    const NONE: Perms = Perms {
        read: false,
        write: false,
    };
    const R: Perms = Perms {
        read: true,
        write: false,
    };
    const W: Perms = Perms {
        read: false,
        write: true,
    };
    const RW: Perms = Perms {
        read: true,
        write: true,
    };
    let rooms = json!({
        "doc-42": ["read"],
        "doc-*": ["write"],
        "lobby": ["read"],
        "pub*": ["read"],
        "team-a-*": [],
        "x:y": ["read", "write", "read"],
    });
    let expect: &[(&str, Perms)] = &[
        ("doc-42", RW), // exact read ∪ prefix write
        ("doc-43", W),
        ("doc-", W), // the prefix itself matches
        ("doc-42x", W),
        ("doc", NONE),
        ("Doc-42", NONE), // case-sensitive
        ("lobby", R),
        ("lobby2", NONE), // exact means exact
        ("lobb", NONE),
        ("pub", R),
        ("public", R),
        ("team-a-1", NONE), // an empty list grants nothing
        ("x:y", RW),
        ("x", NONE),
        ("", NONE),
    ];
    let wildcard = json!({"*": ["read"], "admin": ["write"]});
    let wildcard_expect: &[(&str, Perms)] =
        &[("anything", R), ("admin", RW), ("admin2", R), ("", R)];
    for alg in ALGS {
        let id = default_verifier()
            .verify(&mint(alg, &set("rooms", rooms.clone())), NOW)
            .unwrap_or_else(|e| panic!("{alg:?}: {e:?}"));
        for (room, perms) in expect {
            assert_eq!(id.perms_for(room), *perms, "{alg:?} room {room:?}");
        }
        let id = default_verifier()
            .verify(&mint(alg, &set("rooms", wildcard.clone())), NOW)
            .unwrap_or_else(|e| panic!("{alg:?}: {e:?}"));
        for (room, perms) in wildcard_expect {
            assert_eq!(id.perms_for(room), *perms, "{alg:?} wildcard room {room:?}");
        }
        let id = default_verifier()
            .verify(&mint(alg, &unset("rooms")), NOW)
            .unwrap_or_else(|e| panic!("{alg:?}: {e:?}"));
        assert_eq!(
            id.perms_for("lobby"),
            NONE,
            "{alg:?}: no rooms claim, no access"
        );
    }
}

#[test]
fn pattern_matching_vectors() {
    let vectors: &[(&str, &str, bool)] = &[
        ("*", "anything", true),
        ("*", "", true),
        ("lobby", "lobby", true),
        ("lobby", "lobby2", false),
        ("lobby", "lobb", false),
        ("lobby", "Lobby", false),
        ("doc-*", "doc-1", true),
        ("doc-*", "doc-", true),
        ("doc-*", "doc", false),
        ("doc-*", "xdoc-1", false),
        // Only a trailing `*` is a wildcard.
        ("*-doc", "a-doc", false),
        ("*-doc", "*-doc", true),
        ("d*c", "doc", false),
        ("d*c", "d*c", true),
        ("", "", true),
        ("", "a", false),
    ];
    for (pattern, room, matches) in vectors {
        assert_eq!(
            pattern_matches(pattern, room),
            *matches,
            "{pattern:?} vs {room:?}"
        );
    }
}

/// Personal rooms (`name@user`, docs/protocol.md §14): the owner reads without a pattern
/// and writes only with one; nobody else gets in through any pattern, however broad or
/// exact. `sub` must equal the part after `@` exactly.
#[test]
fn personal_rooms_open_to_their_owner_only() {
    const NONE: Perms = Perms {
        read: false,
        write: false,
    };
    const R: Perms = Perms {
        read: true,
        write: false,
    };
    const RW: Perms = Perms {
        read: true,
        write: true,
    };
    let sub = |user: &str, rooms: Value| {
        edited(|m| {
            m.insert("sub".into(), user.into());
            m.insert("rooms".into(), rooms);
        })
    };
    let everything = json!({"*": ["read", "write"]});
    let vectors: &[(&str, Value, &str, Perms)] = &[
        // The owner: read without any entry; write needs a pattern that grants it.
        ("alice", json!({}), "inbox@alice", R),
        ("alice", json!({"lobby": ["read"]}), "inbox@alice", R),
        ("alice", everything.clone(), "inbox@alice", RW),
        ("alice", json!({"inbox@*": ["write"]}), "inbox@alice", RW),
        ("alice", json!({"inbox@alice": ["read"]}), "inbox@alice", R),
        // Everyone else: no pattern opens it.
        ("bob", everything.clone(), "inbox@alice", NONE),
        (
            "bob",
            json!({"inbox@*": ["read", "write"]}),
            "inbox@alice",
            NONE,
        ),
        (
            "bob",
            json!({"inbox*": ["read", "write"]}),
            "inbox@alice",
            NONE,
        ),
        (
            "bob",
            json!({"inbox@alice": ["read", "write"]}),
            "inbox@alice",
            NONE,
        ),
        ("bob", json!({}), "inbox@alice", NONE),
        // The user part is compared exactly: no prefix, case or suffix games.
        ("alic", everything.clone(), "inbox@alice", NONE),
        ("alice2", everything.clone(), "inbox@alice", NONE),
        ("Alice", everything.clone(), "inbox@alice", NONE),
        ("alice", everything.clone(), "inbox@alice2", NONE),
        // A sub that cannot be a room-name suffix owns no room a client can name; the
        // part after the first `@` of a malformed name is never a match for anyone else.
        ("alice@example.com", everything.clone(), "inbox@alice", NONE),
        ("b@c", everything.clone(), "a@b@c", NONE),
        // Shared rooms are unchanged.
        ("bob", everything.clone(), "lobby", RW),
        ("bob", json!({}), "lobby", NONE),
    ];
    for alg in ALGS {
        for (user, rooms, room, perms) in vectors {
            let id = default_verifier()
                .verify(&mint(alg, &sub(user, rooms.clone())), NOW)
                .unwrap_or_else(|e| panic!("{alg:?}: {e:?}"));
            assert_eq!(
                id.perms_for(room),
                *perms,
                "{alg:?}: {user:?} with {rooms} on {room:?}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// JWT_PUBLIC_KEYS configuration errors
// ---------------------------------------------------------------------------------------

#[test]
fn jwt_public_keys_config_errors() {
    let with_alg = |name: &str, alg: &str| {
        let mut k = public_jwk(name, "k");
        k["alg"] = alg.into();
        k
    };
    let set_of = |keys: Vec<Value>| json!({ "keys": keys }).to_string();
    let vectors: Vec<(&str, String, &str)> = vec![
        ("not JSON", "not json".into(), "must be a JWK Set"),
        ("truncated JSON", r#"{"keys":["#.into(), "must be a JWK Set"),
        ("a bare array", "[]".into(), "must be a JWK Set"),
        (
            "an object without keys",
            r#"{"kid":"x"}"#.into(),
            "must be a JWK Set",
        ),
        (
            "a single JWK",
            public_jwk("rsa", "k").to_string(),
            "must be a JWK Set",
        ),
        (
            "keys not an array",
            r#"{"keys":{}}"#.into(),
            "must be a JWK Set",
        ),
        (
            "a key that is a number",
            r#"{"keys":[42]}"#.into(),
            "key #0",
        ),
        (
            "a key that is a string",
            r#"{"keys":["abc"]}"#.into(),
            "key #0",
        ),
        (
            "a key without kty",
            r#"{"keys":[{"n":"AQAB","e":"AQAB"}]}"#.into(),
            "key #0",
        ),
        (
            "RSA key of 1024 bits",
            set_of(vec![public_jwk("rsa_weak", "weak")]),
            "key #0: RSA keys must have at least 2048 bits",
        ),
        (
            "weak key after a good one",
            set_of(vec![
                public_jwk("rsa", "ok"),
                public_jwk("rsa_weak", "weak"),
            ]),
            "key #1: RSA keys must have at least 2048 bits",
        ),
        (
            "symmetric (oct) key",
            r#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#.into(),
            "key #0: only RSA, EC P-256 and OKP Ed25519 public keys are supported",
        ),
        (
            "unknown kty",
            r#"{"keys":[{"kty":"XYZ","x":"AA"}]}"#.into(),
            "key #0",
        ),
        (
            "EC P-384 key",
            set_of(vec![public_jwk_raw("ec_p384_public")]),
            "key #0",
        ),
        (
            "OKP X25519 key",
            set_of(vec![public_jwk_raw("x25519_public")]),
            "key #0",
        ),
        (
            "RSA key labelled ES256",
            set_of(vec![with_alg("rsa", "ES256")]),
            "key #0 says alg \"ES256\" but its key type is for RS256",
        ),
        (
            "EC key labelled RS256",
            set_of(vec![with_alg("ec", "RS256")]),
            "key #0 says alg \"RS256\" but its key type is for ES256",
        ),
        (
            "Ed25519 key labelled HS256",
            set_of(vec![with_alg("ed", "HS256")]),
            "key #0 says alg \"HS256\" but its key type is for EdDSA",
        ),
        (
            "RSA key with a broken modulus",
            r#"{"keys":[{"kty":"RSA","n":"!!","e":"AQAB"}]}"#.into(),
            "key #0",
        ),
    ];
    for (name, keys, needle) in &vectors {
        let config = config(&[("JWT_PUBLIC_KEYS", keys)]).unwrap_or_else(|e| {
            panic!("{name}: Config::from_lookup should defer key parsing: {e:?}")
        });
        assert_misconfigured(Verifier::new(&config), needle, name);
    }
}

/// A public JWK stored directly (not as a pair) in the fixture.
fn public_jwk_raw(name: &str) -> Value {
    let v = fixture()[name].clone();
    assert!(v.is_object(), "fixture has no key {name}");
    v
}

#[test]
fn jwt_public_keys_that_are_accepted() {
    // Correct `alg` labels, no labels, an empty set, and extra JWK members are all fine.
    let mut labelled = Vec::new();
    for (name, alg) in [("rsa", "RS256"), ("ec", "ES256"), ("ed", "EdDSA")] {
        let mut k = public_jwk(name, name);
        k["alg"] = alg.into();
        k["use"] = "sig".into();
        labelled.push(k);
    }
    let labelled = json!({ "keys": labelled }).to_string();
    let v = verifier(&[("JWT_PUBLIC_KEYS", &labelled)]);
    for alg in ASYMMETRIC {
        let token = mint_with(alg, Key::Main, None, &base_claims());
        assert_outcome(v.verify(&token, NOW), Expect::Ok, alg.name());
    }
    let empty = config(&[("JWT_PUBLIC_KEYS", r#"{"keys":[]}"#)]).unwrap();
    assert!(
        Verifier::new(&empty).is_ok(),
        "an empty set is a valid (if useless) set"
    );
}

#[test]
fn no_key_material_at_all_is_misconfigured() {
    let e = config(&[("JWT_SECRET", ""), ("JWT_PUBLIC_KEYS", "  ")]).unwrap_err();
    match &e {
        Error::Misconfigured(msg) => {
            assert!(
                msg.contains("JWT_SECRET") && msg.contains("JWT_PUBLIC_KEYS"),
                "{msg}"
            )
        }
        other => panic!("expected Misconfigured, got {other:?}"),
    }
}
