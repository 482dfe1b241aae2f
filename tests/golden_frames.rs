//! Pins the WebSocket wire format (contract §5) byte for byte.
//!
//! Server → client: every `roomcast::protocol::ServerFrame` variant is serialized and
//! compared with its exact JSON text (field order, `null`s, omitted optional fields, raw
//! `data`/`info` passthrough), so any change to what clients receive fails here.
//!
//! Client → server: golden client messages go through `roomcast::protocol::parse_message`
//! and the result is checked down to the error variant and the `id` it is reported with:
//! single frames, arrays, defaults (`data` → `null`, `echo` → false), ignored unknown
//! fields, `unknown_type`, `invalid_id`, `bad_frame` for non-JSON / non-objects, the empty
//! array and more than `MAX_BATCH` frames.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

use roomcast::error::Error;
use roomcast::protocol::{
    error_frame, parse_message, ClientFrame, From, Parsed, Presence, PresenceOp, PresenceUser,
    Publish, Resume, ServerFrame, MAX_BATCH,
};
use serde_json::value::RawValue;

fn raw(text: &str) -> Box<RawValue> {
    RawValue::from_string(text.to_string()).expect("valid JSON")
}

// ---------------------------------------------------------------------------------------
// Server → client
// ---------------------------------------------------------------------------------------

#[test]
fn welcome_with_resume_and_presence() {
    let empty = raw("{}");
    let bob = raw(r#"{"name":"Bob"}"#);
    let frame = ServerFrame::Welcome {
        room: "doc-42",
        conn: "c_8f3a",
        user: "alice",
        epoch: "e_91kq",
        seq: 41,
        resume: Resume {
            requested: true,
            recovered: true,
            replayed: 3,
        },
        presence: Presence {
            count: 2,
            users: vec![
                PresenceUser {
                    user: "alice",
                    info: &empty,
                },
                PresenceUser {
                    user: "bob",
                    info: &bob,
                },
            ],
        },
        receipts: true,
    };
    assert_eq!(
        frame.to_json(),
        concat!(
            r#"{"type":"welcome","room":"doc-42","conn":"c_8f3a","user":"alice","epoch":"e_91kq","seq":41,"#,
            r#""resume":{"requested":true,"recovered":true,"replayed":3},"#,
            r#""presence":{"count":2,"users":[{"user":"alice","info":{}},{"user":"bob","info":{"name":"Bob"}}]},"receipts":true}"#
        )
    );
}

#[test]
fn welcome_fresh_connection() {
    let frame = ServerFrame::Welcome {
        room: "lobby",
        conn: "c_1",
        user: "u",
        epoch: "e_1",
        seq: 0,
        resume: Resume::default(),
        presence: Presence {
            count: 0,
            users: vec![],
        },
        receipts: true,
    };
    assert_eq!(
        frame.to_json(),
        r#"{"type":"welcome","room":"lobby","conn":"c_1","user":"u","epoch":"e_1","seq":0,"resume":{"requested":false,"recovered":false,"replayed":0},"presence":{"count":0,"users":[]},"receipts":true}"#
    );
}

#[test]
fn message_from_a_user() {
    let data = raw(r#"{"text":"hi"}"#);
    let frame = ServerFrame::Message {
        seq: 42,
        id: "01JD",
        event: "chat",
        data: &data,
        from: Some(From {
            user: "alice".into(),
            conn: "c_8f3a".into(),
        }),
        ts: 1_732_270_000_000,
    };
    assert_eq!(
        frame.to_json(),
        r#"{"type":"message","seq":42,"id":"01JD","event":"chat","data":{"text":"hi"},"from":{"user":"alice","conn":"c_8f3a"},"ts":1732270000000}"#
    );
}

#[test]
fn message_from_the_server_has_from_null() {
    let data = raw(r#"{"status":"shipped"}"#);
    let frame = ServerFrame::Message {
        seq: 7,
        id: "evt_1",
        event: "order.updated",
        data: &data,
        from: None,
        ts: 1_732_270_000_001,
    };
    assert_eq!(
        frame.to_json(),
        r#"{"type":"message","seq":7,"id":"evt_1","event":"order.updated","data":{"status":"shipped"},"from":null,"ts":1732270000001}"#
    );
}

#[test]
fn message_data_is_forwarded_verbatim() {
    // `data` is raw JSON text: whitespace, key order, number spelling and escapes are
    // exactly what the publisher sent.
    for data in [
        "null",
        "0",
        "-1.50e+3",
        "123456789012345678901234567890",
        r#""caf\u00e9 \"quoted\"""#,
        r#"[1, {"b":2,"a":1}, []]"#,
        r#"{ "z" : 1 , "a" : [ true , false ] }"#,
    ] {
        let data = raw(data);
        let frame = ServerFrame::Message {
            seq: 1,
            id: "a",
            event: "e",
            data: &data,
            from: None,
            ts: 0,
        };
        assert_eq!(
            frame.to_json(),
            format!(
                r#"{{"type":"message","seq":1,"id":"a","event":"e","data":{},"from":null,"ts":0}}"#,
                data.get()
            )
        );
    }
}

#[test]
fn message_strings_are_json_escaped() {
    let data = raw("{}");
    let frame = ServerFrame::Message {
        seq: 1,
        id: "a",
        event: "say \"hi\"\n\\ café",
        data: &data,
        from: Some(From {
            user: "é\u{1}".into(),
            conn: "c".into(),
        }),
        ts: 0,
    };
    assert_eq!(
        frame.to_json(),
        r#"{"type":"message","seq":1,"id":"a","event":"say \"hi\"\n\\ café","data":{},"from":{"user":"é\u0001","conn":"c"},"ts":0}"#
    );
}

#[test]
fn ack() {
    let fresh = ServerFrame::Ack {
        id: "01JD",
        seq: 42,
        duplicate: false,
    };
    assert_eq!(
        fresh.to_json(),
        r#"{"type":"ack","id":"01JD","seq":42,"duplicate":false}"#
    );
    let dup = ServerFrame::Ack {
        id: "01JD",
        seq: 42,
        duplicate: true,
    };
    assert_eq!(
        dup.to_json(),
        r#"{"type":"ack","id":"01JD","seq":42,"duplicate":true}"#
    );
}

#[test]
fn error_with_id_and_retry_after() {
    let frame = ServerFrame::Error {
        id: Some("01JD"),
        code: "rate_limited",
        message: "slow down".into(),
        retry_after_ms: Some(500),
    };
    assert_eq!(
        frame.to_json(),
        r#"{"type":"error","id":"01JD","code":"rate_limited","message":"slow down","retry_after_ms":500}"#
    );
}

#[test]
fn error_without_id_or_retry_after_omits_them() {
    let frame = ServerFrame::Error {
        id: None,
        code: "bad_frame",
        message: "nope".into(),
        retry_after_ms: None,
    };
    assert_eq!(
        frame.to_json(),
        r#"{"type":"error","code":"bad_frame","message":"nope"}"#
    );
    let with_id_only = ServerFrame::Error {
        id: Some("x"),
        code: "forbidden",
        message: "no write".into(),
        retry_after_ms: None,
    };
    assert_eq!(
        with_id_only.to_json(),
        r#"{"type":"error","id":"x","code":"forbidden","message":"no write"}"#
    );
    let retry_only = ServerFrame::Error {
        id: None,
        code: "rate_limited",
        message: "m".into(),
        retry_after_ms: Some(0),
    };
    assert_eq!(
        retry_only.to_json(),
        r#"{"type":"error","code":"rate_limited","message":"m","retry_after_ms":0}"#
    );
}

#[test]
fn error_frame_helper() {
    assert_eq!(
        error_frame(Some("s1"), &Error::UnknownType("subscribe".into())),
        r#"{"type":"error","id":"s1","code":"unknown_type","message":"unknown frame type \"subscribe\"; the client may send \"publish\" and \"received\""}"#
    );
    assert_eq!(
        error_frame(None, &Error::BadFrame("empty frame array".into())),
        r#"{"type":"error","code":"bad_frame","message":"empty frame array"}"#
    );
    assert_eq!(
        error_frame(Some("t1"), &Error::TokenExpired),
        r#"{"type":"error","id":"t1","code":"token_expired","message":"the token has expired; get a fresh one"}"#
    );
    // Internal details never reach a socket.
    assert_eq!(
        error_frame(None, &Error::Internal("sqlite: disk I/O at /var/x".into())),
        r#"{"type":"error","code":"internal","message":"internal error"}"#
    );
}

/// The frame a socket gets before a server-API disconnect closes it (docs/protocol.md
/// §14): the backend's reason is the message, verbatim (quotes escaped as JSON requires,
/// non-ASCII as it is), and `close` names the close code that follows.
#[test]
fn disconnected_error_frame() {
    let reason = "removed \"for now\" — sorry";
    let err = Error::Disconnected(reason.into());
    let frame = ServerFrame::Disconnected {
        code: err.code(),
        message: reason,
        close: 4403,
    };
    assert_eq!(
        frame.to_json(),
        r#"{"type":"error","code":"disconnected","message":"removed \"for now\" — sorry","close":4403}"#
    );
    assert_eq!(
        error_frame(None, &err),
        r#"{"type":"error","code":"disconnected","message":"removed \"for now\" — sorry"}"#
    );
}

#[test]
fn presence_join_and_leave() {
    let info = raw(r#"{"name":"Bob"}"#);
    let join = ServerFrame::Presence {
        op: PresenceOp::Join,
        user: "bob",
        info: &info,
    };
    assert_eq!(
        join.to_json(),
        r#"{"type":"presence","op":"join","user":"bob","info":{"name":"Bob"}}"#
    );
    let empty = raw("{}");
    let leave = ServerFrame::Presence {
        op: PresenceOp::Leave,
        user: "bob",
        info: &empty,
    };
    assert_eq!(
        leave.to_json(),
        r#"{"type":"presence","op":"leave","user":"bob","info":{}}"#
    );
}

#[test]
fn from_round_trips() {
    let f: From = serde_json::from_str(r#"{"user":"alice","conn":"c_8f3a"}"#).unwrap();
    assert_eq!(
        f,
        From {
            user: "alice".into(),
            conn: "c_8f3a".into()
        }
    );
    assert_eq!(
        serde_json::to_string(&f).unwrap(),
        r#"{"user":"alice","conn":"c_8f3a"}"#
    );
}

// ---------------------------------------------------------------------------------------
// Client → server
// ---------------------------------------------------------------------------------------

#[track_caller]
fn one(text: &str) -> Parsed {
    let mut frames = parse_message(text).unwrap_or_else(|e| panic!("{text:?}: {e:?}"));
    assert_eq!(frames.len(), 1, "{text:?}");
    frames.remove(0)
}

#[track_caller]
fn publish(parsed: &Parsed) -> &Publish {
    match parsed {
        Ok(ClientFrame::Publish(p)) => p,
        other => panic!("expected a publish, got {other:?}"),
    }
}

/// The error a frame was answered with: its id, contract code and variant.
#[track_caller]
fn frame_error(parsed: &Parsed) -> (Option<&str>, &Error) {
    match parsed {
        Err((id, e)) => (id.as_deref(), e),
        Ok(f) => panic!("expected an error, got {f:?}"),
    }
}

#[test]
fn ephemeral_message_and_ack() {
    let data = raw(r#"{"x":10,"y":20}"#);
    let frame = ServerFrame::Ephemeral {
        ephemeral: true,
        id: None,
        event: "cursor",
        key: None,
        data: &data,
        from: Some(From {
            user: "alice".into(),
            conn: "c_8f3a".into(),
        }),
        ts: 1_732_270_000_000,
    };
    assert_eq!(
        frame.to_json(),
        r#"{"type":"message","ephemeral":true,"event":"cursor","data":{"x":10,"y":20},"from":{"user":"alice","conn":"c_8f3a"},"ts":1732270000000}"#
    );
    let ack = ServerFrame::EphemeralAck {
        id: "t1",
        ephemeral: true,
    };
    assert_eq!(
        ack.to_json(),
        r#"{"type":"ack","id":"t1","ephemeral":true}"#
    );
}

#[test]
fn golden_ephemeral_publish_and_receipt() {
    let parsed =
        one(r#"{"type":"publish","ephemeral":true,"event":"cursor","key":"pen","data":{"x":1}}"#);
    let Ok(ClientFrame::Ephemeral(p)) = &parsed else {
        panic!("expected an ephemeral publish, got {parsed:?}")
    };
    assert_eq!(
        (p.id.as_deref(), p.event.as_str(), p.key.as_deref()),
        (None, "cursor", Some("pen"))
    );
    assert_eq!(p.data.get(), r#"{"x":1}"#);
    // `"ephemeral":false` is an ordinary publish, which needs an id (a missing field is a
    // malformed frame, as in v1).
    let durable = one(r#"{"type":"publish","ephemeral":false,"event":"e"}"#);
    let (id, e) = frame_error(&durable);
    assert_eq!((id, e.code()), (None, "bad_frame"));
    let odd = one(r#"{"type":"publish","ephemeral":"yes","id":"a","event":"e"}"#);
    assert_eq!(
        frame_error(&odd),
        (
            Some("a"),
            &Error::BadFrame("\"ephemeral\" must be true or false".into())
        )
    );
    let long_key = format!(
        r#"{{"type":"publish","ephemeral":true,"event":"e","key":"{}"}}"#,
        "k".repeat(65)
    );
    assert_eq!(frame_error(&one(&long_key)).1.code(), "invalid_id");
    let parsed = one(r#"{"type":"received","messages":42}"#);
    assert!(
        matches!(&parsed, Ok(ClientFrame::Received(r)) if r.messages == 42),
        "{parsed:?}"
    );
    let negative = one(r#"{"type":"received","messages":-1}"#);
    assert_eq!(frame_error(&negative).1.code(), "bad_frame");
}

#[test]
fn golden_publish() {
    let parsed =
        one(r#"{"type":"publish","id":"01JD","event":"chat","data":{"text":"hi"},"echo":false}"#);
    let p = publish(&parsed);
    assert_eq!(p.id, "01JD");
    assert_eq!(p.event, "chat");
    assert_eq!(p.data.get(), r#"{"text":"hi"}"#);
    assert!(!p.echo);
}

#[test]
fn publish_defaults_and_raw_data() {
    let p = one(r#"{"type":"publish","id":"a","event":"e"}"#);
    assert_eq!(publish(&p).data.get(), "null", "missing data is null");
    assert!(!publish(&p).echo, "echo defaults to false");

    let p = one(r#"{"type":"publish","id":"a","event":"e","data":null,"echo":true}"#);
    assert_eq!(publish(&p).data.get(), "null");
    assert!(publish(&p).echo);

    // data is kept as the exact text sent.
    for data in [
        r#"{ "z" : 1, "a" : [1.0, 2e3] }"#,
        "123456789012345678901234567890",
        r#""caf\u00e9""#,
        "[]",
        "false",
    ] {
        let text = format!(r#"{{"type":"publish","id":"a","event":"e","data":{data}}}"#);
        let p = one(&text);
        assert_eq!(publish(&p).data.get(), data);
    }

    // Field order does not matter.
    let p = one(r#"{"echo":true,"data":[1],"event":"e","id":"a","type":"publish"}"#);
    assert_eq!(publish(&p).data.get(), "[1]");
    assert!(publish(&p).echo);
}

#[test]
fn unknown_fields_are_ignored() {
    let p = one(
        r#"{"type":"publish","id":"a","event":"e","v":2,"meta":{"trace":[1,2]},"data":{"x":1},"future":null}"#,
    );
    assert_eq!(publish(&p).id, "a");
    assert_eq!(publish(&p).data.get(), r#"{"x":1}"#);
}

#[test]
fn arrays_of_frames_keep_order_and_isolate_errors() {
    let frames = parse_message(concat!(
        r#" [{"type":"publish","id":"a","event":"e","data":1},"#,
        r#"{"type":"subscribe","id":"b"},"#,
        r#"{"type":"publish","id":"bad id","event":"e"},"#,
        r#"42,"#,
        r#"{"type":"publish","id":"c","event":"e","echo":true}]"#,
    ))
    .unwrap();
    assert_eq!(frames.len(), 5);
    assert_eq!(publish(&frames[0]).id, "a");
    assert_eq!(publish(&frames[0]).data.get(), "1");
    assert!(
        matches!(frame_error(&frames[1]), (Some("b"), Error::UnknownType(t)) if t == "subscribe")
    );
    assert!(matches!(
        frame_error(&frames[2]),
        (None, Error::InvalidId(_))
    ));
    assert!(matches!(
        frame_error(&frames[3]),
        (None, Error::BadFrame(_))
    ));
    assert_eq!(publish(&frames[4]).id, "c");
    assert!(publish(&frames[4]).echo);

    let single = parse_message(r#"[{"type":"publish","id":"a","event":"e"}]"#).unwrap();
    assert_eq!(single.len(), 1);
    assert_eq!(publish(&single[0]).id, "a");
}

#[test]
fn unknown_type_carries_the_id() {
    let parsed = one(r#"{"type":"subscribe","id":"s1","room":"x"}"#);
    let (id, e) = frame_error(&parsed);
    assert_eq!(id, Some("s1"));
    assert_eq!(e, &Error::UnknownType("subscribe".into()));
    assert_eq!(e.code(), "unknown_type");

    // Without a valid id there is nothing to correlate.
    for text in [
        r#"{"type":"ack"}"#,
        r#"{"type":"ack","id":"has space"}"#,
        r#"{"type":"ack","id":7}"#,
        r#"{"type":"Publish","id":null}"#,
    ] {
        let parsed = one(text);
        assert!(
            matches!(frame_error(&parsed), (None, Error::UnknownType(_))),
            "{text}: {parsed:?}"
        );
    }
    // Type names are case-sensitive, and long ones are shortened in the error.
    assert!(matches!(
        frame_error(&one(r#"{"type":"PUBLISH","id":"a","event":"e"}"#)),
        (Some("a"), Error::UnknownType(t)) if t == "PUBLISH"
    ));
    let long = "x".repeat(100);
    let parsed = one(&format!(r#"{{"type":"{long}","id":"a"}}"#));
    assert!(matches!(frame_error(&parsed), (Some("a"), Error::UnknownType(t)) if t.len() == 32));
}

#[test]
fn bad_ids_and_events() {
    let cases: &[(&str, Option<&str>)] = &[
        (r#"{"type":"publish","id":"has space","event":"e"}"#, None),
        (r#"{"type":"publish","id":"","event":"e"}"#, None),
        (r#"{"type":"publish","id":"a/b","event":"e"}"#, None),
        (r#"{"type":"publish","id":"é","event":"e"}"#, None),
        // A valid id with a bad event is reported against that id.
        (r#"{"type":"publish","id":"ok","event":""}"#, Some("ok")),
    ];
    for (text, want_id) in cases {
        let parsed = one(text);
        let (id, e) = frame_error(&parsed);
        assert!(matches!(e, Error::InvalidId(_)), "{text}: {e:?}");
        assert_eq!(e.code(), "invalid_id", "{text}");
        assert_eq!(id, *want_id, "{text}");
    }
    let id_129 = format!(
        r#"{{"type":"publish","id":"{}","event":"e"}}"#,
        "a".repeat(129)
    );
    assert!(matches!(
        frame_error(&one(&id_129)),
        (None, Error::InvalidId(_))
    ));
    let id_128 = format!(
        r#"{{"type":"publish","id":"{}","event":"e"}}"#,
        "a".repeat(128)
    );
    assert_eq!(publish(&one(&id_128)).id.len(), 128);
    let id_chars = r#"{"type":"publish","id":"A-z_0.9:x","event":"e"}"#;
    assert_eq!(publish(&one(id_chars)).id, "A-z_0.9:x");

    let event_65 = format!(
        r#"{{"type":"publish","id":"a","event":"{}"}}"#,
        "e".repeat(65)
    );
    assert!(matches!(
        frame_error(&one(&event_65)),
        (Some("a"), Error::InvalidId(_))
    ));
    let event_64 = format!(
        r#"{{"type":"publish","id":"a","event":"{}"}}"#,
        "é".repeat(64)
    );
    assert_eq!(
        publish(&one(&event_64)).event,
        "é".repeat(64),
        "64 characters, not bytes"
    );
}

#[test]
fn wrongly_typed_fields_are_bad_frames() {
    let cases: &[(&str, Option<&str>)] = &[
        (r#"{"type":"publish","id":7,"event":"e"}"#, None),
        (r#"{"type":"publish","event":"e"}"#, None),
        (r#"{"type":"publish","id":"a"}"#, Some("a")),
        (r#"{"type":"publish","id":"a","event":1}"#, Some("a")),
        (
            r#"{"type":"publish","id":"a","event":"e","echo":"yes"}"#,
            Some("a"),
        ),
        (
            r#"{"type":"publish","id":"a","event":"e","echo":1}"#,
            Some("a"),
        ),
        (r#"{"id":"a","event":"e"}"#, Some("a")),
        (r#"{"type":null,"id":"a"}"#, Some("a")),
        (r#"{"type":1,"id":"a"}"#, None),
    ];
    for (text, want_id) in cases {
        let parsed = one(text);
        let (id, e) = frame_error(&parsed);
        assert!(matches!(e, Error::BadFrame(_)), "{text}: {e:?}");
        assert_eq!(e.code(), "bad_frame", "{text}");
        assert_eq!(id, *want_id, "{text}");
    }
}

#[test]
fn non_json_and_non_objects_are_bad_frames() {
    // A message that is not an array is one frame; when it is not a JSON object the
    // frame is answered with bad_frame and no id.
    for text in [
        "",
        "ping",
        "hello world",
        "{",
        "{\"type\":\"publish\"",
        "42",
        "\"publish\"",
        "null",
        "true",
        "\u{0}\u{1}\u{2}\u{fffd}",
        "\u{feff}{\"type\":\"publish\",\"id\":\"a\",\"event\":\"e\"}",
        r#"{"type":"publish","id":"a","event":"e"} trailing"#,
        r#"{"type":"publish","id":"a","event":"e"}{"type":"publish","id":"b","event":"e"}"#,
    ] {
        let parsed = one(text);
        assert!(
            matches!(frame_error(&parsed), (None, Error::BadFrame(_))),
            "{text:?}: {parsed:?}"
        );
    }
    // Elements of an array that are not objects, each answered on its own.
    let frames = parse_message(r#"[1,"x",null,[],true]"#).unwrap();
    assert_eq!(frames.len(), 5);
    for f in &frames {
        assert!(
            matches!(frame_error(f), (None, Error::BadFrame(_))),
            "{f:?}"
        );
    }
}

#[test]
fn arrays_are_not_frames() {
    // A frame is a JSON object. A JSON array inside a batch must not be read as a
    // publish by position (serde accepts sequences for structs).
    let frames = parse_message(r#"[["publish","evt_1","chat",{"x":1},true]]"#).unwrap();
    assert_eq!(frames.len(), 1);
    assert!(
        matches!(frame_error(&frames[0]), (None, Error::BadFrame(_))),
        "{:?}",
        frames[0]
    );
    let frames = parse_message(r#"[["publish","evt_1"]]"#).unwrap();
    assert!(
        matches!(frame_error(&frames[0]), (None, Error::BadFrame(_))),
        "{:?}",
        frames[0]
    );
}

#[test]
fn whole_message_errors() {
    let bad = |text: &str| match parse_message(text) {
        Err(e @ Error::BadFrame(_)) => e,
        other => panic!("{text:?}: expected a whole-message BadFrame, got {other:?}"),
    };
    assert_eq!(bad("[]").to_string(), "empty frame array");
    bad("  [ ]  ");
    bad("[1,");
    bad("[");
    bad(r#"[{"type":"publish","id":"a","event":"e"}"#);
    bad(r#"[{"type":"publish","id":"a","event":"e"}] trailing"#);
    bad("[\u{0}]");
}

#[test]
fn batch_limit() {
    let frame = |i: usize| format!(r#"{{"type":"publish","id":"id{i}","event":"e"}}"#);
    let batch = |n: usize| format!("[{}]", (0..n).map(frame).collect::<Vec<_>>().join(","));

    let at_limit = parse_message(&batch(MAX_BATCH)).unwrap();
    assert_eq!(at_limit.len(), MAX_BATCH);
    for (i, f) in at_limit.iter().enumerate() {
        assert_eq!(publish(f).id, format!("id{i}"));
    }
    match parse_message(&batch(MAX_BATCH + 1)) {
        Err(e @ Error::BadFrame(_)) => {
            assert_eq!(
                e.to_string(),
                format!(
                    "{} frames in one message; at most {MAX_BATCH} are allowed",
                    MAX_BATCH + 1
                )
            );
            assert_eq!(e.code(), "bad_frame");
        }
        other => panic!("expected BadFrame, got {other:?}"),
    }
    // Even cheap elements count.
    let junk = format!("[{}]", vec!["0"; MAX_BATCH + 1].join(","));
    assert!(matches!(parse_message(&junk), Err(Error::BadFrame(_))));
    assert_eq!(MAX_BATCH, 100);
}
