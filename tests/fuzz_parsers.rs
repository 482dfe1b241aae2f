//! Bounded property-based fuzzing of the three parsers that read attacker-controlled text:
//! the WebSocket frame parser (`protocol::parse_message`), JWT verification
//! (`auth::Verifier::verify`) and the server-API signature header
//! (`auth::verify_signature`).
//!
//! Every property has a fixed case count (`ProptestConfig::with_cases`, so
//! `PROPTEST_CASES` does not change it) chosen to keep the whole file well under a minute in
//! a debug build on two cores. Failures are persisted by proptest under
//! `proptest-regressions/` and replayed first on every run.
//!
//! | property                                | what it checks                                                 | cases |
//! |-----------------------------------------|----------------------------------------------------------------|------:|
//! | `frame_arbitrary_strings`               | any string: no panic, output invariants                        |  1024 |
//! | `frame_arbitrary_bytes_lossy`           | any bytes as lossy UTF-8: no panic, output invariants          |  1024 |
//! | `frame_structured_frames`               | frames with right/wrong/missing/duplicate/unknown fields: same |   768 |
//! | `frame_structured_json`                 | any JSON (1e999, -0, \ud800, 300-deep nesting): same           |   512 |
//! | `frame_well_formed_publish_round_trips` | a valid publish is `Ok`, keeps id, event, echo and data text   |   512 |
//! | `frame_single_equals_array_of_one`      | `x`, `[x]` and `x` inside a batch give the same verdict        |   384 |
//! | `frame_batch_size_bound`                | ≤ MAX_BATCH elements parse one by one; more are `BadFrame`     |    96 |
//! | `jwt_arbitrary_strings_never_verify`    | any string / token-shaped junk: no panic, never `Ok`           |  1024 |
//! | `jwt_single_byte_mutation_hs256`        | one changed byte never yields `Ok` with other claims           |   512 |
//! | `jwt_single_byte_mutation_es256`        | same, ES256                                                    |   192 |
//! | `jwt_single_byte_mutation_eddsa`        | same, EdDSA                                                    |   192 |
//! | `jwt_single_byte_mutation_rs256`        | same, one fixed RS256 token (RSA is slow in debug builds)      |    48 |
//! | `jwt_replaced_segments`                 | header/payload = base64url(arbitrary JSON): no panic; spliced  |   512 |
//! |                                         | under the old signature never verifies; re-signed, whatever    |       |
//! |                                         | verifies satisfies the `Identity` invariants; unreplaced       |       |
//! |                                         | segments verify to the original identity                       |       |
//! | `sig_arbitrary_headers`                 | any / structured header: no panic, `Ok` only if it carries the |  1536 |
//! |                                         | right signature for a `t` inside the window                    |       |
//! | `sig_correct_then_single_byte_mutation` | a correct signature verifies (window inclusive at ±300 s); one |   768 |
//! |                                         | changed byte of secret, method, path, body or header fails     |       |
//! | **total executions**                    |                                                                | **9104** |
//!
//! Plus two plain tests, `regression_*` (one execution each, total 9106), pinning the
//! inputs of the two bugs these properties found, fixed in `src/auth.rs`: a `t` near
//! `i64::MIN` in `Roomcast-Signature` overflowed `now - t` (a panic in debug builds; in
//! release builds `(now - t).abs()` wrapped to `i64::MIN` for `t = now + i64::MIN` and passed
//! the window check), and an `nbf` within the leeway of chrono's earliest date panicked
//! inside jwt-compact's `validate_maturity` (`nbf - leeway` overflowed).
//!
//! The total counts generated cases for a passing run. Each case calls the function under
//! test one or more times (for example, a JWT mutation case mints and verifies the original
//! token, then verifies the mutant). On top of these, every test first replays each seed
//! saved in `proptest-regressions/fuzz_parsers.txt`.

#![allow(clippy::unwrap_used, clippy::expect_used)]
// tests: a panic is a failed test

// proptest is a native-only dev-dependency; the wasm32 lint pass skips this file.
#![cfg(not(target_arch = "wasm32"))]

use std::sync::OnceLock;

use chrono::{DateTime, Utc};
use proptest::prelude::*;
use proptest::sample::{select, Index};
use proptest::strategy::Shuffle;
use proptest::test_runner::FileFailurePersistence;
mod common;
use common::{b64, default_verifier, mint, mint_raw, raw_header, segments, Alg, NOW};
use roomcast::auth::{
    sign, verify_signature, Identity, LEEWAY_SECS, MAX_INFO_BYTES, MAX_SUB_CHARS,
    SIGNATURE_WINDOW_SECS,
};
use roomcast::error::Error;
use roomcast::protocol::{
    parse_message, valid_id, valid_tenant, ClientFrame, Parsed, MAX_BATCH, MAX_EVENT_LEN,
};
use serde_json::value::RawValue;
use serde_json::{json, Value};

/// `ProptestConfig::with_cases(cases)`, with failures persisted to
/// `proptest-regressions/fuzz_parsers.txt` (proptest cannot place files for an integration
/// test next to a `lib.rs` on its own).
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/fuzz_parsers.txt",
        ))),
        ..ProptestConfig::with_cases(cases)
    }
}

// ---------------------------------------------------------------------------------------
// Generated JSON
// ---------------------------------------------------------------------------------------

/// A JSON value kept as text-level pieces, so that numbers and strings can be written in
/// forms `serde_json::Value` cannot hold (`1e999`, `-0`, `\ud800`, every char escaped).
#[derive(Clone, Debug)]
enum J {
    Null,
    Bool(bool),
    /// A number literal, verbatim (also used for any JSON text from a `Value`).
    Num(String),
    /// A string literal, quotes and escapes included, verbatim.
    Str(String),
    Arr(Vec<J>),
    /// Members as (key literal, value).
    Obj(Vec<(String, J)>),
    /// `depth` levels of `[` (or `{"k":` when the flag is set) around a value; rendered
    /// with a loop so that hundreds of levels cost no recursion here.
    Deep(usize, bool, Box<J>),
}

impl J {
    fn text(&self, ws: &str) -> String {
        let mut out = String::new();
        self.render(ws, &mut out);
        out
    }

    /// Writes the value; `ws` goes between tokens, never before or after the value.
    fn render(&self, ws: &str, out: &mut String) {
        match self {
            J::Null => out.push_str("null"),
            J::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            J::Num(s) | J::Str(s) => out.push_str(s),
            J::Arr(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(ws);
                    item.render(ws, out);
                }
                out.push_str(ws);
                out.push(']');
            }
            J::Obj(members) => render_members(members, ws, out),
            J::Deep(depth, obj, inner) => {
                for _ in 0..*depth {
                    out.push_str(if *obj { "{\"k\":" } else { "[" });
                    out.push_str(ws);
                }
                inner.render(ws, out);
                for _ in 0..*depth {
                    out.push_str(ws);
                    out.push(if *obj { '}' } else { ']' });
                }
            }
        }
    }
}

fn render_members(members: &[(String, J)], ws: &str, out: &mut String) {
    out.push('{');
    for (i, (key, value)) in members.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(ws);
        out.push_str(key);
        out.push_str(ws);
        out.push(':');
        out.push_str(ws);
        value.render(ws, out);
    }
    out.push_str(ws);
    out.push('}');
}

/// A JSON string literal with the ordinary (minimal) escaping.
fn lit(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

/// A JSON string literal with every character written as `\uXXXX` (surrogate pairs above
/// the BMP).
fn lit_escaped(s: &str) -> String {
    let mut out = String::from("\"");
    let mut units = [0u16; 2];
    for c in s.chars() {
        for unit in c.encode_utf16(&mut units) {
            out.push_str(&format!("\\u{unit:04x}"));
        }
    }
    out.push('"');
    out
}

fn any_text(max: usize) -> BoxedStrategy<String> {
    prop::collection::vec(any::<char>(), 0..=max)
        .prop_map(String::from_iter)
        .boxed()
}

fn str_lit() -> BoxedStrategy<String> {
    prop_oneof![
        4 => any_text(24).prop_map(|s| lit(&s)),
        2 => any_text(12).prop_map(|s| lit_escaped(&s)),
        2 => "[a-z]{0,8}".prop_map(|s| lit(&s)),
        1 => select(vec![
            r#""\ud800""#,
            r#""\udfff""#,
            r#""\ud83d\ude00""#,
            r#""\u0000""#,
            r#""\/\b\f\n\r\t\\\"""#,
            "\"\u{feff}\"",
        ])
        .prop_map(str::to_string),
    ]
    .boxed()
}

fn num_lit() -> BoxedStrategy<String> {
    prop_oneof![
        2 => any::<i64>().prop_map(|n| n.to_string()),
        1 => any::<u64>().prop_map(|n| n.to_string()),
        2 => any::<f64>().prop_map(|f| if f.is_finite() { format!("{f:?}") } else { "0".into() }),
        2 => select(vec![
            "1e999", "-1e999", "1E+999", "1e-999", "-0", "0", "-0.0", "0e0", "-0E-0", "1E+2",
            "4.9e-324", "1.7976931348623157e308", "18446744073709551616",
            "-9223372036854775809", "123456789012345678901234567890.5e-3",
        ])
        .prop_map(str::to_string),
        1 => "-?[1-9][0-9]{0,300}(\\.[0-9]{1,20})?([eE][+-]?[0-9]{1,4})?",
    ]
    .boxed()
}

fn key_lit() -> BoxedStrategy<String> {
    prop_oneof![
        3 => select(vec!["type", "id", "event", "data", "echo", "k", "sub", "exp", "alg"])
            .prop_map(lit),
        1 => select(vec!["type", "id", "event"]).prop_map(lit_escaped),
        2 => str_lit(),
    ]
    .boxed()
}

fn json_leaf() -> BoxedStrategy<J> {
    prop_oneof![
        1 => Just(J::Null),
        1 => any::<bool>().prop_map(J::Bool),
        3 => num_lit().prop_map(J::Num),
        3 => str_lit().prop_map(J::Str),
    ]
    .boxed()
}

/// Arbitrary JSON: a few levels of mixed arrays and objects, any of which may be a run of
/// up to 300 nested arrays or objects.
fn json() -> BoxedStrategy<J> {
    json_leaf()
        .prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                3 => prop::collection::vec(inner.clone(), 0..6).prop_map(J::Arr),
                3 => prop::collection::vec((key_lit(), inner.clone()), 0..6).prop_map(J::Obj),
                1 => (1usize..=300, any::<bool>(), inner)
                    .prop_map(|(depth, obj, j)| J::Deep(depth, obj, Box::new(j))),
            ]
        })
        .boxed()
}

fn whitespace() -> BoxedStrategy<&'static str> {
    select(vec!["", "", " ", "\n", " \t\r\n "]).boxed()
}

// ---------------------------------------------------------------------------------------
// Frames
// ---------------------------------------------------------------------------------------

/// `[A-Za-z0-9_.:-]{1,128}`.
fn valid_id_str() -> BoxedStrategy<String> {
    prop_oneof![
        3 => "[A-Za-z0-9_.:-]{1,16}",
        1 => "[A-Za-z0-9_.:-]{120,128}",
    ]
    .boxed()
}

/// 1–64 arbitrary chars (controls, astral, anything).
fn valid_event_str() -> BoxedStrategy<String> {
    prop_oneof![
        3 => prop::collection::vec(any::<char>(), 1..=12).prop_map(String::from_iter),
        1 => prop::collection::vec(any::<char>(), 60..=MAX_EVENT_LEN).prop_map(String::from_iter),
    ]
    .boxed()
}

/// A string rendered plainly or with every char escaped.
fn rendered(s: BoxedStrategy<String>) -> BoxedStrategy<String> {
    (s, any::<bool>())
        .prop_map(|(s, esc)| if esc { lit_escaped(&s) } else { lit(&s) })
        .boxed()
}

/// An object's members in a random order: `extras` plus each named field that is present.
fn shuffled_members<const N: usize>(
    mut members: Vec<(String, J)>,
    fields: [(&str, Option<J>); N],
) -> Shuffle<Just<Vec<(String, J)>>> {
    members.extend(
        fields
            .into_iter()
            .filter_map(|(name, v)| Some((lit(name), v?))),
    );
    Just(members).prop_shuffle()
}

/// A frame-shaped object whose fields are each right, wrong, missing or duplicated.
fn frame() -> BoxedStrategy<J> {
    let ty = prop_oneof![
        8 => Just(lit("publish")),
        1 => Just(r#""publ\u0069sh""#.to_string()),
        1 => select(vec!["Publish", "", "subscribe", "publish "]).prop_map(lit),
        1 => str_lit(),
    ]
    .prop_map(J::Str);
    let ty = prop_oneof![8 => ty, 1 => json()];
    let id = prop_oneof![
        6 => rendered(valid_id_str()).prop_map(J::Str),
        1 => rendered(any_text(10)).prop_map(J::Str),
        1 => Just(J::Str(lit(&"x".repeat(129)))),
        1 => json(),
    ];
    let event = prop_oneof![
        6 => rendered(valid_event_str()).prop_map(J::Str),
        1 => Just(J::Str(lit(""))),
        1 => prop::collection::vec(any::<char>(), 65..=70)
            .prop_map(|c| J::Str(lit(&String::from_iter(c)))),
        1 => json(),
    ];
    let echo = prop_oneof![4 => any::<bool>().prop_map(J::Bool), 1 => json()];
    let extras = prop::collection::vec((key_lit(), json()), 0..3);
    (
        prop::option::weighted(0.9, ty),
        prop::option::weighted(0.9, id),
        prop::option::weighted(0.9, event),
        prop::option::weighted(0.7, json()),
        prop::option::weighted(0.5, echo),
        extras,
    )
        .prop_flat_map(|(ty, id, event, data, echo, extras)| {
            shuffled_members(
                extras,
                [
                    ("type", ty),
                    ("id", id),
                    ("event", event),
                    ("data", data),
                    ("echo", echo),
                ],
            )
        })
        .prop_map(J::Obj)
        .boxed()
}

/// What the parser must do with a message, whatever its input; returns its result.
fn checked_parse(text: &str) -> Result<roomcast::error::Result<Vec<Parsed>>, TestCaseError> {
    let result = parse_message(text);
    match &result {
        Err(e) => prop_assert!(
            matches!(e, Error::BadFrame(_)),
            "message-level error must be BadFrame, got {e:?}"
        ),
        Ok(items) => {
            prop_assert!(!items.is_empty());
            prop_assert!(items.len() <= MAX_BATCH, "{} frames", items.len());
            if !text.trim_start().starts_with('[') {
                prop_assert_eq!(items.len(), 1);
            }
            for item in items {
                check_parsed(item)?;
            }
        }
    }
    Ok(result)
}

/// [`checked_parse`], for the invariants only.
fn check_message(text: &str) -> Result<(), TestCaseError> {
    checked_parse(text).map(drop)
}

/// [`checked_parse`] for a message that must not be rejected as a whole.
fn parse_ok(text: &str) -> Result<Vec<Parsed>, TestCaseError> {
    checked_parse(text)?
        .map_err(|e| TestCaseError::fail(format!("message rejected as a whole: {e:?}")))
}

/// Invariants of one parsed frame.
fn check_parsed(item: &Parsed) -> Result<(), TestCaseError> {
    match item {
        Ok(ClientFrame::Publish(p)) => {
            prop_assert!(valid_id(&p.id), "accepted invalid id {:?}", p.id);
            let n = p.event.chars().count();
            prop_assert!((1..=MAX_EVENT_LEN).contains(&n), "event {:?}", p.event);
            let data = p.data.get();
            prop_assert!(
                serde_json::from_str::<&RawValue>(data).is_ok(),
                "data is not JSON: {data:?}"
            );
            prop_assert_eq!(data.trim(), data);
        }
        Ok(ClientFrame::Ephemeral(p)) => {
            if let Some(id) = &p.id {
                prop_assert!(valid_id(id), "accepted invalid id {id:?}");
            }
            let n = p.event.chars().count();
            prop_assert!((1..=MAX_EVENT_LEN).contains(&n), "event {:?}", p.event);
        }
        Ok(ClientFrame::Received(_)) => {}
        Err((id, e)) => {
            if let Some(id) = id {
                prop_assert!(valid_id(id), "error carries invalid id {id:?}");
            }
            prop_assert!(
                matches!(
                    e,
                    Error::BadFrame(_) | Error::UnknownType(_) | Error::InvalidId(_)
                ),
                "unexpected frame error {e:?}"
            );
        }
    }
    Ok(())
}

/// The verdict on one frame, comparable across single and batched parsing.
fn verdict(item: &Parsed) -> String {
    match item {
        Ok(ClientFrame::Publish(p)) => format!(
            "ok id={:?} event={:?} echo={} data={}",
            p.id,
            p.event,
            p.echo,
            p.data.get()
        ),
        Ok(ClientFrame::Ephemeral(p)) => format!(
            "ephemeral id={:?} event={:?} key={:?} data={}",
            p.id,
            p.event,
            p.key,
            p.data.get()
        ),
        Ok(ClientFrame::Received(r)) => format!("received {}", r.messages),
        Err((id, e)) => format!("err id={id:?} {e:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// Frame properties
// ---------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(1024))]

    #[test]
    fn frame_arbitrary_strings(text in prop_oneof![
        any::<String>(),
        any_text(64),
        "[\\[\\]{}\",:0-9a-z \\\\]{0,64}",
    ]) {
        check_message(&text)?;
    }
}

proptest! {
    #![proptest_config(config(1024))]

    #[test]
    fn frame_arbitrary_bytes_lossy(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        check_message(&String::from_utf8_lossy(&bytes))?;
    }
}

proptest! {
    #![proptest_config(config(768))]

    #[test]
    fn frame_structured_frames(f in frame(), ws in whitespace(), lead in whitespace()) {
        check_message(&format!("{lead}{}", f.text(ws)))?;
    }
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn frame_structured_json(j in json(), ws in whitespace()) {
        check_message(&j.text(ws))?;
    }
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn frame_well_formed_publish_round_trips(
        (text, id, event, echo, data_text) in (
            (valid_id_str(), any::<bool>()),
            (valid_event_str(), any::<bool>()),
            prop::option::of(any::<bool>()),
            prop::option::weighted(0.8, json()),
            prop::collection::vec(
                (
                    any_text(8).prop_filter("unknown field", |k| {
                        !["type", "id", "event", "data", "echo"].contains(&k.as_str())
                    }),
                    json(),
                ),
                0..3,
            ),
            whitespace(),
        )
            .prop_flat_map(|((id, id_esc), (event, ev_esc), echo, data, extras, ws)| {
                let render = |s: &str, esc: bool| if esc { lit_escaped(s) } else { lit(s) };
                let mut members: Vec<(String, J)> = extras
                    .into_iter()
                    .map(|(k, v)| (lit(&k), v))
                    .collect();
                members.push((lit("type"), J::Str(lit("publish"))));
                members.push((lit("id"), J::Str(render(&id, id_esc))));
                members.push((lit("event"), J::Str(render(&event, ev_esc))));
                if let Some(e) = echo {
                    members.push((lit("echo"), J::Bool(e)));
                }
                let data_text = data.as_ref().map_or_else(|| "null".to_string(), |d| d.text(ws));
                if let Some(d) = data {
                    members.push((lit("data"), d));
                }
                (Just(members).prop_shuffle(), Just((id, event, echo, data_text, ws)))
            })
            .prop_map(|(members, (id, event, echo, data_text, ws))| {
                let mut text = String::new();
                render_members(&members, ws, &mut text);
                (text, id, event, echo, data_text)
            })
    ) {
        let items = parse_ok(&text)?;
        prop_assert_eq!(items.len(), 1);
        match &items[0] {
            Ok(ClientFrame::Publish(p)) => {
                prop_assert_eq!(&p.id, &id);
                prop_assert_eq!(&p.event, &event);
                prop_assert_eq!(p.echo, echo.unwrap_or(false));
                prop_assert_eq!(p.data.get(), data_text.as_str());
            }
            other => prop_assert!(false, "well-formed publish not parsed as one: {other:?}"),
        }
    }
}

proptest! {
    #![proptest_config(config(384))]

    /// `x` alone and `[x]` (and `x` inside a larger batch) give the same verdict for any
    /// JSON value `x` that is not itself an array.
    #[test]
    fn frame_single_equals_array_of_one(
        frames in prop::collection::vec(
            prop_oneof![4 => frame(), 1 => json().prop_filter("not an array", |j| {
                !matches!(j, J::Arr(_) | J::Deep(_, false, _))
            })],
            1..5,
        ),
        ws in whitespace(),
    ) {
        let texts: Vec<String> = frames.iter().map(|f| f.text(ws)).collect();
        let singles: Vec<String> = texts
            .iter()
            .map(|t| {
                let items = parse_ok(t)?;
                prop_assert_eq!(items.len(), 1);
                Ok(verdict(&items[0]))
            })
            .collect::<Result<_, TestCaseError>>()?;
        let one = parse_ok(&format!("[{}]", texts[0]))?;
        prop_assert_eq!(one.len(), 1);
        prop_assert_eq!(verdict(&one[0]), singles[0].clone());
        let batch = parse_ok(&format!("[{ws}{}{ws}]", texts.join(&format!(",{ws}"))))?;
        let batched: Vec<String> = batch.iter().map(verdict).collect();
        prop_assert_eq!(batched, singles);
    }
}

proptest! {
    #![proptest_config(config(96))]

    /// Up to MAX_BATCH elements: one result per element. More: the whole message is a
    /// BadFrame, whatever the elements are.
    #[test]
    fn frame_batch_size_bound(
        n in prop_oneof![1..=MAX_BATCH, MAX_BATCH + 1..=MAX_BATCH + 50],
        element in prop_oneof![json_leaf(), frame()],
        ws in whitespace(),
    ) {
        let text = element.text(ws);
        let message = format!("[{}]", vec![text.as_str(); n].join(","));
        let result = parse_message(&message);
        if n > MAX_BATCH {
            prop_assert!(matches!(result, Err(Error::BadFrame(_))), "{n} frames: {result:?}");
        } else {
            let items = parse_ok(&message)?;
            prop_assert_eq!(items.len(), n);
        }
    }
}

// ---------------------------------------------------------------------------------------
// JWT (keys, configuration and minting are in tests/common)
// ---------------------------------------------------------------------------------------

/// The invariants of every `Identity` the verifier hands out at [`NOW`].
fn check_identity(id: &Identity) -> Result<(), TestCaseError> {
    let n = id.user.chars().count();
    prop_assert!((1..=MAX_SUB_CHARS).contains(&n), "sub {:?}", id.user);
    if let Some(t) = &id.tenant {
        prop_assert!(valid_tenant(t), "tenant {t:?}");
    }
    if let Some(info) = &id.info {
        prop_assert!(info.len() <= MAX_INFO_BYTES, "info is {} bytes", info.len());
        let v: Value = serde_json::from_str(info)
            .map_err(|e| TestCaseError::fail(format!("info is not JSON: {e}")))?;
        prop_assert!(v.is_object(), "info {info}");
    }
    prop_assert!(
        id.exp >= NOW - LEEWAY_SECS,
        "expired exp {} accepted",
        id.exp
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// JWT strategies
// ---------------------------------------------------------------------------------------

/// Valid claims for a token that verifies at [`NOW`].
fn good_claims() -> BoxedStrategy<Value> {
    (
        "\\PC{1,20}",
        prop::option::of("[A-Za-z0-9_.-]{1,16}"),
        prop::collection::btree_map(
            "[a-z0-9:*-]{1,10}",
            select(vec![
                vec!["read"],
                vec!["write"],
                vec!["read", "write"],
                vec![],
            ]),
            0..4,
        ),
        60i64..100_000,
        prop::option::of(0i64..600),
        prop::option::of(prop::collection::btree_map(
            "[a-z]{1,6}",
            "\\PC{0,12}",
            0..4,
        )),
        prop::option::of(select(vec!["server", "read server", "user"])),
    )
        .prop_map(|(sub, tenant, rooms, exp, age, info, scope)| {
            let mut c = json!({"sub": sub, "exp": NOW + exp, "rooms": rooms});
            if let Some(t) = tenant {
                c["tenant"] = t.into();
            }
            if let Some(age) = age {
                c["iat"] = (NOW - age).into();
                c["nbf"] = (NOW - age).into();
            }
            if let Some(info) = info {
                c["info"] = json!(info);
            }
            if let Some(scope) = scope {
                c["scope"] = scope.into();
            }
            c
        })
        .boxed()
}

/// One byte position and what to put there: another ASCII byte or any char.
#[derive(Debug, Clone)]
struct Mutation {
    at: Index,
    ascii: u8,
    ch: Option<char>,
}

fn mutation() -> BoxedStrategy<Mutation> {
    (
        any::<Index>(),
        1u8..128,
        prop::option::weighted(0.2, any::<char>()),
    )
        .prop_map(|(at, ascii, ch)| Mutation { at, ascii, ch })
        .boxed()
}

/// Applies `m` to an ASCII string: the byte at the position becomes a different byte
/// (`ascii` XORed in) or a char other than the original one. Returns the position too.
fn mutate_ascii(s: &str, m: &Mutation) -> (usize, String) {
    let i = m.at.index(s.len());
    let mut out = s.as_bytes()[..i].to_vec();
    let orig = s.as_bytes()[i];
    match m.ch {
        Some(c) if c != char::from(orig) => {
            out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes())
        }
        _ => out.push(orig ^ m.ascii),
    }
    out.extend_from_slice(&s.as_bytes()[i + 1..]);
    (
        i,
        String::from_utf8(out).expect("ASCII with one char replaced"),
    )
}

/// Asserts that a one-byte mutation of a token verifying to `original` is rejected, or,
/// if accepted, decodes to exactly the same claims (only possible in the signature
/// segment, where the signed text is unchanged).
fn check_mutation(token: &str, original: &Identity, m: &Mutation) -> Result<(), TestCaseError> {
    let (at, mutated) = mutate_ascii(token, m);
    prop_assert_ne!(&mutated, token);
    if let Ok(id) = default_verifier().verify(&mutated, NOW) {
        let sig_start = token.rfind('.').expect("three segments") + 1;
        prop_assert!(
            at >= sig_start,
            "mutation at {at} (signed part) accepted: {mutated}"
        );
        prop_assert_eq!(&id, original, "mutated token accepted with other claims");
    }
    Ok(())
}

/// Mints `c` with `alg`, checks that the fresh token verifies, then [`check_mutation`].
fn check_fresh_mutation(alg: Alg, c: &Value, m: &Mutation) -> Result<(), TestCaseError> {
    let token = mint(alg, c);
    let original = default_verifier()
        .verify(&token, NOW)
        .map_err(|e| TestCaseError::fail(format!("fresh {alg:?} token rejected: {e:?}")))?;
    check_mutation(&token, &original, m)
}

/// Edge timestamps: near [`NOW`], chrono's range ends, i64 ends, floats.
fn timestamp() -> BoxedStrategy<J> {
    let min = DateTime::<Utc>::MIN_UTC.timestamp();
    let max = DateTime::<Utc>::MAX_UTC.timestamp();
    prop_oneof![
        3 => (-1_000i64..1_000).prop_map(|d| (NOW + d).to_string()),
        2 => (min - 2..min + 3 * LEEWAY_SECS).prop_map(|t| t.to_string()),
        2 => (max - 3 * LEEWAY_SECS..max + 2).prop_map(|t| t.to_string()),
        1 => select(vec![i64::MIN, i64::MAX, 0, -1]).prop_map(|t| t.to_string()),
        1 => any::<i64>().prop_map(|t| t.to_string()),
        1 => select(vec!["1e999", "1.8e9", "1800000000.5", "-0", "18446744073709551615"])
            .prop_map(str::to_string),
    ]
    .prop_map(J::Num)
    .boxed()
}

/// Claims-shaped JSON whose every field may be right, wrong, or extreme.
fn crafted_payload() -> BoxedStrategy<String> {
    let sub = prop_oneof![
        4 => "\\PC{1,20}".prop_map(|s| J::Str(lit(&s))),
        1 => Just(J::Str(lit(&"u".repeat(MAX_SUB_CHARS + 1)))),
        1 => json(),
    ];
    let tenant = prop_oneof![
        3 => "[A-Za-z0-9_.-]{1,16}".prop_map(|s| J::Str(lit(&s))),
        1 => str_lit().prop_map(J::Str),
        1 => json(),
    ];
    let rooms = prop_oneof![
        3 => prop::collection::vec(
            (
                str_lit(),
                prop::collection::vec(
                    prop_oneof![
                        4 => select(vec!["read", "write"]).prop_map(|p| J::Str(lit(p))),
                        1 => json(),
                    ],
                    0..3,
                )
                .prop_map(J::Arr),
            ),
            0..3,
        )
        .prop_map(J::Obj),
        1 => json(),
    ];
    let info = prop_oneof![
        2 => prop::collection::vec((str_lit(), json()), 0..4).prop_map(J::Obj),
        1 => "[a-z]{1100,1200}".prop_map(|s| J::Obj(vec![(lit("k"), J::Str(lit(&s)))])),
        1 => json(),
    ];
    let aud = prop_oneof![
        str_lit().prop_map(J::Str),
        prop::collection::vec(str_lit().prop_map(J::Str), 0..3).prop_map(J::Arr),
        json(),
    ];
    let fields = (
        prop::option::weighted(0.9, sub),
        prop::option::weighted(0.8, timestamp()),
        prop::option::weighted(0.5, timestamp()),
        prop::option::weighted(0.5, timestamp()),
        prop::option::weighted(0.3, tenant),
        prop::option::weighted(0.6, rooms),
        prop::option::weighted(0.3, info),
        prop::option::weighted(0.2, aud),
        prop::option::weighted(0.3, prop_oneof![str_lit().prop_map(J::Str), json()]),
        prop::collection::vec((key_lit(), json()), 0..2),
    );
    let object = fields
        .prop_flat_map(
            |(sub, exp, nbf, iat, tenant, rooms, info, aud, scope, extras)| {
                shuffled_members(
                    extras,
                    [
                        ("sub", sub),
                        ("exp", exp),
                        ("nbf", nbf),
                        ("iat", iat),
                        ("tenant", tenant),
                        ("rooms", rooms),
                        ("info", info),
                        ("aud", aud),
                        ("scope", scope),
                    ],
                )
            },
        )
        .prop_map(J::Obj);
    (
        prop_oneof![3 => object, 3 => typed_payload(), 1 => json()],
        whitespace(),
    )
        .prop_map(|(j, ws)| j.text(ws))
        .boxed()
}

/// Well-typed claims whose time claims take edge values, so that most of them reach the
/// time and claim checks instead of failing to deserialize.
fn typed_payload() -> BoxedStrategy<J> {
    (
        good_claims(),
        prop::option::weighted(0.9, timestamp()),
        prop::option::weighted(0.6, timestamp()),
        prop::option::weighted(0.6, timestamp()),
    )
        .prop_map(|(base, exp, nbf, iat)| {
            let mut members: Vec<(String, J)> = base
                .as_object()
                .expect("object")
                .iter()
                .filter(|(k, _)| !["exp", "nbf", "iat"].contains(&k.as_str()))
                .map(|(k, v)| (lit(k), J::Num(v.to_string())))
                .collect();
            for (name, value) in [("exp", exp), ("nbf", nbf), ("iat", iat)] {
                if let Some(v) = value {
                    members.push((lit(name), v));
                }
            }
            J::Obj(members)
        })
        .boxed()
}

/// Header-shaped JSON: `alg` and `kid` right, wrong or absent, plus odd extra fields.
fn crafted_header() -> BoxedStrategy<String> {
    let alg = prop_oneof![
        6 => select(vec!["HS256", "ES256", "EdDSA", "RS256"]).prop_map(|a| J::Str(lit(a))),
        1 => select(vec!["none", "None", "HS384", "hs256", "", "ES256K", "EdDSA\u{0}"])
            .prop_map(|a| J::Str(lit(a))),
        1 => str_lit().prop_map(J::Str),
        1 => json(),
    ];
    let kid = prop_oneof![
        3 => select(vec!["ec-1", "ed-1", "rsa-1", "nope", ""]).prop_map(|k| J::Str(lit(k))),
        1 => json(),
    ];
    let extras = prop::collection::vec(
        (
            prop_oneof![
                select(vec!["typ", "cty", "crit", "jku", "x5t", "jwk"]).prop_map(lit),
                key_lit(),
            ],
            json(),
        ),
        0..3,
    );
    let object = (
        prop::option::weighted(0.95, alg),
        prop::option::weighted(0.6, kid),
        extras,
    )
        .prop_flat_map(|(alg, kid, extras)| shuffled_members(extras, [("alg", alg), ("kid", kid)]))
        .prop_map(J::Obj);
    (prop_oneof![8 => object, 1 => json()], whitespace())
        .prop_map(|(j, ws)| j.text(ws))
        .boxed()
}

// ---------------------------------------------------------------------------------------
// JWT properties
// ---------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(1024))]

    #[test]
    fn jwt_arbitrary_strings_never_verify(token in prop_oneof![
        2 => any::<String>(),
        2 => any_text(80),
        2 => "[A-Za-z0-9_=+/-]{0,60}\\.[A-Za-z0-9_-]{0,200}\\.[A-Za-z0-9_-]{0,120}",
        1 => "[A-Za-z0-9_.-]{0,40}",
        // A parseable header of each algorithm, with junk payload and signature.
        2 => (
            select(vec![
                r#"{"alg":"HS256"}"#, r#"{"alg":"ES256","kid":"ec-1"}"#,
                r#"{"alg":"EdDSA","kid":"ed-1"}"#, r#"{"alg":"RS256","kid":"rsa-1"}"#,
                r#"{"alg":"ES256"}"#, r#"{"alg":"none"}"#,
            ]),
            "[A-Za-z0-9_-]{0,200}",
            "[A-Za-z0-9_-]{0,360}",
        )
            .prop_map(|(h, p, s)| format!("{}.{p}.{s}", b64(h.as_bytes()))),
        1 => (any::<char>(), 8_000usize..8_400).prop_map(|(c, n)| c.to_string().repeat(n)),
    ]) {
        let result = default_verifier().verify(&token, NOW);
        prop_assert!(result.is_err(), "arbitrary string verified: {result:?}");
    }
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn jwt_single_byte_mutation_hs256(c in good_claims(), m in mutation()) {
        check_fresh_mutation(Alg::Hs256, &c, &m)?;
    }
}

proptest! {
    #![proptest_config(config(192))]

    #[test]
    fn jwt_single_byte_mutation_es256(c in good_claims(), m in mutation()) {
        check_fresh_mutation(Alg::Es256, &c, &m)?;
    }
}

proptest! {
    #![proptest_config(config(192))]

    #[test]
    fn jwt_single_byte_mutation_eddsa(c in good_claims(), m in mutation()) {
        check_fresh_mutation(Alg::EdDsa, &c, &m)?;
    }
}

/// One RS256 token, minted once: RSA signing is slow in a debug build.
fn rs256_token() -> &'static (String, Identity) {
    static T: OnceLock<(String, Identity)> = OnceLock::new();
    T.get_or_init(|| {
        let c = json!({
            "sub": "alice", "exp": NOW + 600, "iat": NOW - 10, "nbf": NOW - 10,
            "tenant": "acme", "rooms": {"doc-*": ["read", "write"]}, "info": {"name": "A"},
        });
        let token = mint(Alg::Rs256, &c);
        let id = default_verifier()
            .verify(&token, NOW)
            .expect("fresh RS256 token verifies");
        (token, id)
    })
}

proptest! {
    #![proptest_config(config(48))]

    #[test]
    fn jwt_single_byte_mutation_rs256(m in mutation()) {
        let (token, original) = rs256_token();
        check_mutation(token, original, &m)?;
    }
}

proptest! {
    #![proptest_config(config(512))]

    /// Header and/or payload replaced by base64url of arbitrary JSON. With the original
    /// signature the token must be rejected; re-signed (HS256 mostly, ES256 and EdDSA
    /// sometimes), whatever verifies must satisfy the `Identity` invariants. Where nothing
    /// was replaced, both the original and the re-signed token verify to the original
    /// identity, so a verifier that rejected everything would fail here.
    #[test]
    fn jwt_replaced_segments(
        base in good_claims(),
        header in prop::option::weighted(0.4, crafted_header()),
        payload in prop::option::weighted(0.9, crafted_payload()),
        signer in prop_oneof![6 => Just(Alg::Hs256), 1 => Just(Alg::Es256), 1 => Just(Alg::EdDsa)],
    ) {
        let token = mint(Alg::Hs256, &base);
        let original = default_verifier().verify(&token, NOW).expect("fresh HS256 token verifies");
        let (h, p, s) = segments(&token);
        let new_h = header.as_deref().map_or_else(|| h.to_string(), |t| b64(t.as_bytes()));
        let new_p = payload.as_deref().map_or_else(|| p.to_string(), |t| b64(t.as_bytes()));
        let spliced = format!("{new_h}.{new_p}.{s}");
        let result = default_verifier().verify(&spliced, NOW);
        if spliced == token {
            prop_assert_eq!(result, Ok(original.clone()));
        } else {
            prop_assert!(result.is_err(), "spliced token verified: {result:?}");
        }

        let unchanged = header.is_none() && payload.is_none();
        let header_text = header.unwrap_or_else(|| raw_header(signer));
        let payload_text = payload.unwrap_or_else(|| base.to_string());
        let resigned = mint_raw(signer, &header_text, &payload_text);
        let result = default_verifier().verify(&resigned, NOW);
        if unchanged {
            prop_assert_eq!(result, Ok(original), "re-signed original claims");
        } else if let Ok(id) = result {
            check_identity(&id)?;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Roomcast-Signature
// ---------------------------------------------------------------------------------------

const API_SECRET: &[u8] = b"test-only-api-secret";
const METHOD: &str = "POST";
const PATH: &str = "/v1/rooms/doc-42/messages?tenant=acme";
const BODY: &[u8] = br#"{"id":"evt_1","event":"e","data":1}"#;

/// Numeric `t` values: in and around the window, and at the ends of i64 (where `now - t`
/// overflows i64).
fn t_number() -> BoxedStrategy<String> {
    prop_oneof![
        3 => (-400i64..=400).prop_map(|d| (NOW + d).to_string()),
        1 => any::<i64>().prop_map(|t| t.to_string()),
        1 => select(vec![
            i64::MIN, i64::MIN + 1, i64::MAX, i64::MAX - 1, NOW - i64::MAX, NOW + i64::MIN, 0, -1,
        ])
        .prop_map(|t| t.to_string()),
        1 => (i64::MIN..i64::MIN + 2 * NOW).prop_map(|t| t.to_string()),
    ]
    .boxed()
}

/// `t` values: numbers, and text that is almost a number.
fn t_value() -> BoxedStrategy<String> {
    prop_oneof![
        3 => t_number(),
        1 => select(vec![
            "", "+1800000000", " 1800000000", "1800000000 ", "0x10", "1e9", "-",
            "99999999999999999999", "-99999999999999999999", "\u{ff11}\u{ff18}",
        ])
        .prop_map(str::to_string),
        1 => "\\PC{0,12}",
    ]
    .boxed()
}

/// Hex `v1` values: the right signature for some nearby `t` (either case), random hex.
fn v1_hex() -> BoxedStrategy<String> {
    prop_oneof![
        2 => (-400i64..=400).prop_map(|d| {
            sign(API_SECRET, NOW + d, METHOD, PATH, BODY).expect("sign")
        }),
        1 => (-400i64..=400).prop_map(|d| {
            sign(API_SECRET, NOW + d, METHOD, PATH, BODY).expect("sign").to_uppercase()
        }),
        2 => prop::collection::vec(any::<u8>(), 0..40).prop_map(hex::encode),
        1 => prop::collection::vec(any::<u8>(), 0..40).prop_map(hex::encode_upper),
    ]
    .boxed()
}

/// `v1` values: hex, and text that is almost hex.
fn v1_value() -> BoxedStrategy<String> {
    prop_oneof![
        3 => v1_hex(),
        1 => "[0-9a-fA-Fg ]{0,70}",
        1 => "\\PC{0,20}",
    ]
    .boxed()
}

/// One comma-separated entry, padded with whitespace. Well-formed entries are `t=<i64>`,
/// `v1=<hex>` or an ignored `key=value`; noisy ones may be anything.
fn header_part(noisy: bool) -> BoxedStrategy<String> {
    let part = if noisy {
        prop_oneof![
            3 => t_value().prop_map(|t| format!("t={t}")),
            3 => v1_value().prop_map(|v| format!("v1={v}")),
            1 => ("[a-z0-9 ]{0,3}", "\\PC{0,8}").prop_map(|(k, v)| format!("{k}={v}")),
            1 => "\\PC{0,10}",
        ]
        .boxed()
    } else {
        prop_oneof![
            3 => t_number().prop_map(|t| format!("t={t}")),
            3 => v1_hex().prop_map(|v| format!("v1={v}")),
            1 => ("[a-z]{2,3}", "[a-z0-9=]{0,8}").prop_map(|(k, v)| format!("{k}={v}")),
        ]
        .boxed()
    };
    (whitespace(), part, whitespace())
        .prop_map(|(a, p, b)| format!("{a}{p}{b}"))
        .boxed()
}

/// Whether `header` holds, for some `t=` it carries within the window, the signature of
/// the request at that `t`.
fn has_correct_signature(header: &str) -> bool {
    let lower = header.to_ascii_lowercase();
    header.split(',').any(|part| {
        let Some(("t", v)) = part.trim().split_once('=') else {
            return false;
        };
        let Ok(t) = v.parse::<i64>() else {
            return false;
        };
        i128::from(NOW).abs_diff(i128::from(t)) <= SIGNATURE_WINDOW_SECS.unsigned_abs().into()
            && lower.contains(&sign(API_SECRET, t, METHOD, PATH, BODY).expect("sign"))
    })
}

proptest! {
    #![proptest_config(config(1536))]

    #[test]
    fn sig_arbitrary_headers(header in prop_oneof![
        1 => any::<String>(),
        1 => any_text(100),
        3 => prop::collection::vec(header_part(false), 1..5).prop_map(|p| p.join(",")),
        2 => prop::collection::vec(header_part(true), 0..5).prop_map(|p| p.join(",")),
        // `t=` and its own signature, among other entries in any order.
        3 => (
            -2 * SIGNATURE_WINDOW_SECS..=2 * SIGNATURE_WINDOW_SECS,
            any::<bool>(),
            prop::collection::vec(header_part(false), 0..3),
        )
            .prop_flat_map(|(d, upper, mut parts)| {
                let sig = sign(API_SECRET, NOW + d, METHOD, PATH, BODY).expect("sign");
                parts.push(format!("t={}", NOW + d));
                parts.push(format!("v1={}", if upper { sig.to_uppercase() } else { sig }));
                Just(parts).prop_shuffle()
            })
            .prop_map(|p| p.join(",")),
    ]) {
        let result = verify_signature(API_SECRET, &header, METHOD, PATH, BODY, NOW);
        if result.is_ok() {
            prop_assert!(
                has_correct_signature(&header),
                "header without the right signature verified: {header:?}"
            );
        } else {
            prop_assert!(
                matches!(result, Err(Error::Unauthorized(_))),
                "rejection must be Unauthorized: {result:?}"
            );
        }
    }
}

/// A signed request and the one input to change.
#[derive(Debug, Clone)]
struct Signed {
    secret: Vec<u8>,
    t: i64,
    method: String,
    path: String,
    body: Vec<u8>,
}

proptest! {
    #![proptest_config(config(768))]

    #[test]
    fn sig_correct_then_single_byte_mutation(
        req in (
            prop::collection::vec(any::<u8>(), 0..100),
            -SIGNATURE_WINDOW_SECS..=SIGNATURE_WINDOW_SECS,
            "[A-Z]{1,8}",
            prop_oneof!["/[ -~]{0,60}", "/\\PC{0,30}"],
            prop::collection::vec(any::<u8>(), 0..300),
        )
            .prop_map(|(secret, d, method, path, body)| Signed {
                secret, t: NOW + d, method, path, body,
            }),
        target in 0usize..5,
        m in mutation(),
        delta in 1u8..=255,
    ) {
        let Signed { secret, t, method, path, body } = &req;
        let sig = sign(secret, *t, method, path, body).expect("sign");
        let header = format!("t={t},v1={sig}");
        let verify = |secret: &[u8], header: &str, method: &str, path: &str, body: &[u8]| {
            verify_signature(secret, header, method, path, body, NOW)
        };
        prop_assert_eq!(verify(secret, &header, method, path, body), Ok(()));
        // The window is inclusive at ±300 s and exclusive beyond, in both directions.
        let w = SIGNATURE_WINDOW_SECS;
        for (now, ok) in [(t - w, true), (t + w, true), (t - w - 1, false), (t + w + 1, false)] {
            prop_assert_eq!(
                verify_signature(secret, &header, method, path, body, now).is_ok(),
                ok,
                "now - t = {}", now - t
            );
        }

        let flip = |bytes: &[u8]| -> Vec<u8> {
            let mut b = bytes.to_vec();
            let i = m.at.index(b.len());
            b[i] ^= delta;
            b
        };
        let (result, may_pass) = match target {
            0 if !secret.is_empty() => (verify(&flip(secret), &header, method, path, body), false),
            1 => (verify(secret, &header, &mutate_ascii(method, &m).1, path, body), false),
            2 => {
                // Replace one char of the path by a different one (one byte when both are
                // ASCII).
                let mut chars: Vec<char> = path.chars().collect();
                let i = m.at.index(chars.len());
                let c = m.ch.unwrap_or(char::from(m.ascii));
                chars[i] = if c == chars[i] { if c == 'a' { 'b' } else { 'a' } } else { c };
                let p: String = chars.into_iter().collect();
                (verify(secret, &header, method, &p, body), false)
            }
            3 if !body.is_empty() => (verify(secret, &header, method, path, &flip(body)), false),
            _ => {
                // One byte of the header. Only changing the case of a hex digit of the
                // signature keeps it valid (hex decoding is case-insensitive).
                let (at, h) = mutate_ascii(&header, &m);
                let sig_start = header.len() - sig.len();
                let case_only = at >= sig_start
                    && h.len() == header.len()
                    && h.as_bytes()[at].eq_ignore_ascii_case(&header.as_bytes()[at]);
                (verify(secret, &h, method, path, body), case_only)
            }
        };
        if may_pass {
            prop_assert_eq!(result, Ok(()));
        } else {
            prop_assert!(
                matches!(result, Err(Error::Unauthorized(_))),
                "mutated request verified (target {target}): {result:?}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// Pinned regressions (found by the properties above)
// ---------------------------------------------------------------------------------------

/// `sig_arbitrary_headers`: `now - t` overflowed for `t` near `i64::MIN`.
#[test]
fn regression_signature_t_near_i64_min() {
    let sig = sign(API_SECRET, NOW, METHOD, PATH, BODY).expect("sign");
    for t in [i64::MIN, NOW + i64::MIN, NOW - i64::MAX - 1, i64::MIN + 1] {
        let header = format!("t={t},v1={sig}");
        let result = verify_signature(API_SECRET, &header, METHOD, PATH, BODY, NOW);
        assert!(
            matches!(&result, Err(Error::Unauthorized(m)) if m.contains("away from server time")),
            "t={t}: {result:?}"
        );
    }
}

/// `jwt_replaced_segments`: `nbf` within the leeway of chrono's minimum panicked.
#[test]
fn regression_nbf_at_chrono_minimum() {
    let min = DateTime::<Utc>::MIN_UTC.timestamp();
    for nbf in [min, min + LEEWAY_SECS - 1, min + LEEWAY_SECS] {
        let payload = json!({"sub": "a", "exp": NOW + 60, "nbf": nbf}).to_string();
        let token = mint_raw(Alg::Hs256, r#"{"alg":"HS256"}"#, &payload);
        let id = default_verifier().verify(&token, NOW);
        assert!(id.is_ok(), "nbf={nbf}: {id:?}");
    }
    // An nbf past the leeway is still rejected.
    let payload = json!({"sub": "a", "exp": NOW + 600, "nbf": NOW + LEEWAY_SECS + 1}).to_string();
    let token = mint_raw(Alg::Hs256, r#"{"alg":"HS256"}"#, &payload);
    let err = default_verifier()
        .verify(&token, NOW)
        .expect_err("nbf in the future");
    assert!(err.to_string().contains("not valid yet"), "{err}");
    let payload = json!({"sub": "a", "exp": NOW + 600, "nbf": NOW + LEEWAY_SECS}).to_string();
    let token = mint_raw(Alg::Hs256, r#"{"alg":"HS256"}"#, &payload);
    assert!(
        default_verifier().verify(&token, NOW).is_ok(),
        "nbf at the leeway edge"
    );
}
