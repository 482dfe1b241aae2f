//! Pins the `Roomcast-Signature` scheme of the server API (contract §7) through
//! `roomcast::auth::sign` and `roomcast::auth::verify_signature`:
//!
//! * the exact signed message, `t + "\n" + METHOD + "\n" + path_and_query + "\n" + body`,
//!   by known-answer vectors whose hex was computed independently of this crate (with
//!   `openssl dgst -sha256 -hmac` and node's `crypto.createHmac`), so a change to the
//!   message format, the encoding or the hash fails here;
//! * the ±300 s window, inclusive at 300 s and exclusive at 301 s, in both directions;
//! * that every signed part (method, path, query, body, secret) is bound by the MAC;
//! * header parsing: malformed headers, several `v1=` values (key rotation), ignored
//!   unknown entries.
//!
//! Every rejection is `Error::Unauthorized` (401, `unauthorized`) with a message saying
//! which of "malformed", "stale" or "does not match" applies.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

use roomcast::auth::{sign, verify_signature, SIGNATURE_WINDOW_SECS};
use roomcast::error::Error;

/// Known-answer vector 1: a publish, as a backend would sign it.
const SECRET: &[u8] = b"test-only-api-secret";
const T: i64 = 1_800_000_000;
const METHOD: &str = "POST";
const PATH: &str = "/v1/rooms/doc-42/messages?tenant=acme";
const BODY: &[u8] = br#"{"id":"evt_1","event":"order.updated","data":{"n":1}}"#;
/// `printf '1800000000\nPOST\n/v1/rooms/doc-42/messages?tenant=acme\n{"id":"evt_1","event":"order.updated","data":{"n":1}}' | openssl dgst -sha256 -hmac 'test-only-api-secret'`
const EXPECTED: &str = "705a97962e8365d01264854f6197d3d1df1334c09a47e1ace496d6a6ca488909";

/// Known-answer vector 2: a GET with an empty body (the message ends in "\n").
const GET_PATH: &str = "/v1/rooms/doc-42/messages?since=0&limit=100&tenant=acme";
/// node: `createHmac('sha256','test-only-api-secret').update('1800000000\nGET\n<GET_PATH>\n')`
const GET_EXPECTED: &str = "bf469f1d2ac437421d13d3f91c509d9c14b3289545165f3f96dfa022ec6a8642";

/// Known-answer vector 3: binary key and body bytes are used as-is (no text re-encoding).
const BIN_SECRET: &[u8] = &[0x00, 0x01, 0x02, 0xff];
const BIN_T: i64 = 1_700_000_000;
const BIN_BODY: &[u8] = &[0xff, 0x00, 0x0a, 0xc3];
/// node: `createHmac('sha256', Buffer.from([0,1,2,255]))
///   .update(Buffer.concat([Buffer.from('1700000000\nPOST\n/v1/broadcast\n'), Buffer.from([0xff,0,0x0a,0xc3])]))`
const BIN_EXPECTED: &str = "7e93869010a35f8e990179544a4554f00379f125ab625777b44ea899e771d3e2";

fn header(t: i64, sig: &str) -> String {
    format!("t={t},v1={sig}")
}

#[track_caller]
fn assert_unauthorized(result: roomcast::error::Result<()>, needle: &str, what: &str) {
    match result {
        Err(e @ Error::Unauthorized(_)) => {
            let msg = e.to_string();
            assert!(
                msg.contains(needle),
                "{what}: expected {needle:?} in {msg:?}"
            );
            assert_eq!(e.status(), 401, "{what}");
            assert_eq!(e.code(), "unauthorized", "{what}");
        }
        other => panic!("{what}: expected Unauthorized containing {needle:?}, got {other:?}"),
    }
}

const MALFORMED: &str = "malformed Roomcast-Signature";
const STALE: &str = "away from server time";
const MISMATCH: &str = "signature does not match";

#[test]
fn known_answer_vectors() {
    assert_eq!(sign(SECRET, T, METHOD, PATH, BODY).unwrap(), EXPECTED);
    assert_eq!(sign(SECRET, T, "GET", GET_PATH, b"").unwrap(), GET_EXPECTED);
    assert_eq!(
        sign(BIN_SECRET, BIN_T, "POST", "/v1/broadcast", BIN_BODY).unwrap(),
        BIN_EXPECTED
    );
    // And the verifier accepts exactly these independently computed signatures.
    verify_signature(SECRET, &header(T, EXPECTED), METHOD, PATH, BODY, T).unwrap();
    verify_signature(SECRET, &header(T, GET_EXPECTED), "GET", GET_PATH, b"", T).unwrap();
    verify_signature(
        BIN_SECRET,
        &header(BIN_T, BIN_EXPECTED),
        "POST",
        "/v1/broadcast",
        BIN_BODY,
        BIN_T,
    )
    .unwrap();
}

#[test]
fn signature_is_lowercase_hex_of_32_bytes() {
    let sig = sign(SECRET, T, METHOD, PATH, BODY).unwrap();
    assert_eq!(sig.len(), 64);
    assert!(
        sig.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
        "{sig}"
    );
    // Uppercase hex decodes to the same bytes and is accepted.
    let upper = EXPECTED.to_ascii_uppercase();
    verify_signature(SECRET, &header(T, &upper), METHOD, PATH, BODY, T).unwrap();
}

#[test]
fn window_is_300_seconds_inclusive_both_ways() {
    assert_eq!(SIGNATURE_WINDOW_SECS, 300);
    let h = header(T, EXPECTED);
    let check = |now: i64| verify_signature(SECRET, &h, METHOD, PATH, BODY, now);
    for now in [T, T + 1, T - 1, T + 299, T - 299, T + 300, T - 300] {
        check(now).unwrap_or_else(|e| panic!("now = t{:+}: {e:?}", now - T));
    }
    for now in [
        T + 301,
        T - 301,
        T + 3600,
        T - 3600,
        0,
        i64::from(u32::MAX) * 2,
    ] {
        assert_unauthorized(check(now), STALE, &format!("now = t{:+}", now - T));
    }
    // The message states the window so that an operator can act on it.
    match check(T + 301) {
        Err(e) => assert!(e.to_string().contains("±300s"), "{e}"),
        Ok(()) => panic!("stale accepted"),
    }
}

#[test]
fn the_timestamp_is_signed() {
    // Moving `t` inside the window does not keep the signature valid.
    for t in [T - 1, T + 1, T + 300] {
        assert_unauthorized(
            verify_signature(SECRET, &header(t, EXPECTED), METHOD, PATH, BODY, T),
            MISMATCH,
            &format!("t moved to {t}"),
        );
    }
    // A fresh signature for each t verifies at that t.
    for t in [T - 300, T + 300] {
        let sig = sign(SECRET, t, METHOD, PATH, BODY).unwrap();
        verify_signature(SECRET, &header(t, &sig), METHOD, PATH, BODY, T).unwrap();
    }
}

/// `(what, secret, method, path_and_query, body)`.
type SignedCase<'a> = (&'a str, &'a [u8], &'a str, &'a str, &'a [u8]);

#[test]
fn every_signed_part_is_bound() {
    let h = header(T, EXPECTED);
    let cases: &[SignedCase] = &[
        ("wrong method", SECRET, "PUT", PATH, BODY),
        ("method in lowercase", SECRET, "post", PATH, BODY),
        ("GET instead of POST", SECRET, "GET", PATH, BODY),
        (
            "other room",
            SECRET,
            METHOD,
            "/v1/rooms/doc-43/messages?tenant=acme",
            BODY,
        ),
        (
            "path with trailing slash",
            SECRET,
            METHOD,
            "/v1/rooms/doc-42/messages/?tenant=acme",
            BODY,
        ),
        (
            "query dropped",
            SECRET,
            METHOD,
            "/v1/rooms/doc-42/messages",
            BODY,
        ),
        (
            "other tenant",
            SECRET,
            METHOD,
            "/v1/rooms/doc-42/messages?tenant=evil",
            BODY,
        ),
        (
            "query extended",
            SECRET,
            METHOD,
            "/v1/rooms/doc-42/messages?tenant=acme&x=1",
            BODY,
        ),
        (
            "empty query",
            SECRET,
            METHOD,
            "/v1/rooms/doc-42/messages?",
            BODY,
        ),
        (
            "body changed",
            SECRET,
            METHOD,
            PATH,
            br#"{"id":"evt_1","event":"order.updated","data":{"n":2}}"#,
        ),
        (
            "body reformatted",
            SECRET,
            METHOD,
            PATH,
            br#"{"id": "evt_1", "event": "order.updated", "data": {"n": 1}}"#,
        ),
        (
            "body with trailing newline",
            SECRET,
            METHOD,
            PATH,
            b"{\"id\":\"evt_1\",\"event\":\"order.updated\",\"data\":{\"n\":1}}\n",
        ),
        ("body empty", SECRET, METHOD, PATH, b""),
        (
            "other secret",
            b"test-only-api-secret-2",
            METHOD,
            PATH,
            BODY,
        ),
        (
            "secret with newline",
            b"test-only-api-secret\n",
            METHOD,
            PATH,
            BODY,
        ),
        ("empty secret", b"", METHOD, PATH, BODY),
    ];
    for (what, secret, method, path, body) in cases {
        assert_unauthorized(
            verify_signature(secret, &h, method, path, body, T),
            MISMATCH,
            what,
        );
    }
    // The message is plain concatenation with "\n" separators, exactly as specified (no
    // length prefixes): the separators are signed, and only the concatenation matters.
    let sig = sign(SECRET, T, "POST", "/a", b"b\nc").unwrap();
    assert_eq!(sig, sign(SECRET, T, "POST", "/a\nb", b"c").unwrap());
    assert_ne!(sig, sign(SECRET, T, "POST", "/a", b"bc").unwrap());
    assert_ne!(sig, sign(SECRET, T, "POST", "/ab", b"c").unwrap());
}

#[test]
fn several_v1_values_allow_rotation() {
    let old = sign(b"old-secret", T, METHOD, PATH, BODY).unwrap();
    let new = sign(b"new-secret", T, METHOD, PATH, BODY).unwrap();
    let both = format!("t={T},v1={old},v1={new}");
    let check = |secret: &[u8], h: &str| verify_signature(secret, h, METHOD, PATH, BODY, T);
    check(b"old-secret", &both).unwrap();
    check(b"new-secret", &both).unwrap();
    check(b"new-secret", &format!("t={T},v1={new},v1={old}")).unwrap();
    assert_unauthorized(check(b"third-secret", &both), MISMATCH, "neither matches");
    // A bogus entry next to a good one does not spoil it, whatever the order.
    let zeros = "00".repeat(32);
    check(b"new-secret", &format!("t={T},v1={zeros},v1={new}")).unwrap();
    check(b"new-secret", &format!("v1={new},t={T},v1={zeros}")).unwrap();
    let short = "ab".repeat(16);
    check(b"new-secret", &format!("t={T},v1={short},v1={new}")).unwrap();
    // Many wrong values are still wrong.
    let many = format!("t={T}{}", format!(",v1={zeros}").repeat(10));
    assert_unauthorized(check(b"new-secret", &many), MISMATCH, "ten wrong values");
}

#[test]
fn header_syntax_tolerances() {
    let ok = |h: &str| {
        verify_signature(SECRET, h, METHOD, PATH, BODY, T)
            .unwrap_or_else(|e| panic!("{h:?}: {e:?}"))
    };
    ok(&format!("t={T},v1={EXPECTED}"));
    ok(&format!("v1={EXPECTED},t={T}"));
    ok(&format!("t={T}, v1={EXPECTED}"));
    ok(&format!(" t={T} , v1={EXPECTED} "));
    // Unknown entries (future schemes) are ignored.
    ok(&format!("t={T},v0=deadbeef,v1={EXPECTED},v2=whatever"));
}

#[test]
fn malformed_headers() {
    let good = EXPECTED;
    let malformed = [
        String::new(),
        " ".into(),
        "garbage".into(),
        format!("t={T}"),
        format!("v1={good}"),
        format!("t={T},v0={good}"),
        format!("t=,v1={good}"),
        format!("t=now,v1={good}"),
        format!("t=1.8e9,v1={good}"),
        format!("t={T}.5,v1={good}"),
        format!("t= {T},v1={good}"),
        format!("t={T},v1=zz{}", &good[2..]),
        format!("t={T},v1={}", &good[1..]), // odd number of hex digits
        format!("t={T},v1=0x{good}"),
        format!("t={T},v1"),
        format!("t={T},,v1={good}"),
        format!("t={T};v1={good}"),
        format!("t={T} v1={good}"),
        format!("T={T},V1={good}"),
        format!("t={T},v1={good},"),
    ];
    for h in &malformed {
        assert_unauthorized(
            verify_signature(SECRET, h, METHOD, PATH, BODY, T),
            MALFORMED,
            &format!("{h:?}"),
        );
    }
    // Well-formed but of the wrong length: a mismatch, not a crash or an accept.
    for sig in ["", "00", &good[..62], &format!("{good}00")] {
        assert_unauthorized(
            verify_signature(SECRET, &header(T, sig), METHOD, PATH, BODY, T),
            MISMATCH,
            &format!("v1 of {} hex digits", sig.len()),
        );
    }
}

#[test]
fn staleness_is_reported_before_the_mac() {
    // A stale request learns only that it is stale, whatever its signature.
    let wrong = "00".repeat(32);
    for sig in [EXPECTED, wrong.as_str()] {
        assert_unauthorized(
            verify_signature(SECRET, &header(T, sig), METHOD, PATH, BODY, T + 301),
            STALE,
            sig,
        );
    }
}
