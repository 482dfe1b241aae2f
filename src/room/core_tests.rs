//! Native tests of the room's rules: [`RoomCore`] driven with real SQLite (rusqlite), a
//! fake clock, scripted frames and numbered socket handles, asserting on the effects.

use serde_json::{json, Value};

use super::commands::disconnect::{DisconnectRequest, Target};
use super::core::{Effect, Out, Published, RoomCore};
use super::log::tests::{lite, Lite, V1_ROOM};
use super::peer::Identity;
use super::rpc::{ClientPublish, ConnectRequest, PublishRequest, Transport};
use super::webhooks::{Delivery, Outcome};
use crate::auth::LEEWAY_SECS;
use crate::config::Limits;
use crate::error::Error;
use crate::protocol::null_raw;

type Fx = Vec<Effect<u32>>;

/// A room on an in-memory database, with a clock and socket handles 1, 2, 3, ….
struct Fixture {
    db: Lite,
    core: RoomCore<u32>,
    now: i64,
    next: u32,
    /// What each socket received through flushes and immediate sends, frame by frame.
    inbox: Vec<(u32, Value)>,
    /// WebSocket messages each socket received.
    messages: Vec<(u32, String)>,
    /// Sockets closed by the room, with their codes.
    closed: Vec<(u32, u16)>,
    alarms: Vec<i64>,
    /// Handles whose sends fail (the runtime refuses them).
    broken: Vec<u32>,
    /// Webhook batches the room asked to POST, oldest first.
    deliveries: Vec<Delivery>,
}

const NOW: i64 = 1_800_000_000_000;

fn limits() -> Limits {
    Limits::default()
}

impl Fixture {
    fn new(limits: Limits) -> Self {
        Self::on(lite(), limits)
    }

    fn on(db: Lite, limits: Limits) -> Self {
        let core = RoomCore::load(&db, limits, NOW, &|| "e_test".into(), Vec::new(), None)
            .unwrap_or_else(|e| panic!("load: {e}"));
        Fixture {
            db,
            core,
            now: NOW,
            next: 1,
            inbox: Vec::new(),
            messages: Vec::new(),
            closed: Vec::new(),
            alarms: Vec::new(),
            broken: Vec::new(),
            deliveries: Vec::new(),
        }
    }

    fn request(user: &str) -> ConnectRequest {
        ConnectRequest {
            room: "lobby".into(),
            user: user.into(),
            write: true,
            exp: NOW / 1000 + 600,
            info: None,
            subprotocol: false,
            since: None,
            epoch: None,
            presence: true,
            transport: Transport::WebSocket,
        }
    }

    /// Connects with `req`; returns the handle, or the refusal.
    fn try_connect(&mut self, req: ConnectRequest) -> Result<u32, Error> {
        let h = self.next;
        self.next += 1;
        let conn = format!("c_{h:016x}");
        let fx = self.core.connect(&self.db, self.now, h, conn, &req)?;
        self.apply(fx);
        Ok(h)
    }

    fn connect(&mut self, user: &str) -> u32 {
        self.try_connect(Self::request(user))
            .unwrap_or_else(|e| panic!("connect {user}: {e}"))
    }

    fn conn(h: u32) -> String {
        format!("c_{h:016x}")
    }

    fn record(&mut self, to: u32, text: &str) {
        self.messages.push((to, text.to_string()));
        match serde_json::from_str::<Value>(text) {
            Ok(Value::Array(frames)) => self.inbox.extend(frames.into_iter().map(|f| (to, f))),
            Ok(frame) => self.inbox.push((to, frame)),
            Err(e) => panic!("not JSON: {e}: {text}"),
        }
    }

    /// Applies effects like the Durable Object does (after committing the webhook events
    /// of the call, as its glue does); flushes run at once.
    fn apply(&mut self, mut fx: Fx) {
        fx.extend(self.core.commit(&self.db, self.now));
        let mut flush = false;
        for effect in fx {
            match effect {
                Effect::Send { to, text } => self.record(to, &text),
                Effect::Close { to, code, .. } => self.closed.push((to, code)),
                Effect::Attach { .. } | Effect::Log { .. } | Effect::Pump => {}
                Effect::Flush { .. } => flush = true,
                Effect::SetAlarm { at_ms } => self.alarms.push(at_ms),
                Effect::Deliver(batch) => self.deliveries.push(batch),
            }
        }
        if flush {
            self.flush();
        }
    }

    fn flush(&mut self) {
        let mut out: Vec<(u32, String)> = Vec::new();
        let broken = self.broken.clone();
        let fx = self.core.flush(self.now, &mut |h, o| {
            if broken.contains(h) {
                return false;
            }
            let msgs = match o {
                Out::Shared { messages, .. } | Out::Own(messages) => messages,
            };
            out.extend(msgs.iter().map(|m| (*h, m.clone())));
            true
        });
        for (h, m) in out {
            self.record(h, &m);
        }
        self.apply(fx);
    }

    /// Sends a text message from socket `h`, without flushing.
    fn send_raw(&mut self, h: u32, text: &str) -> Fx {
        self.core.message(&self.db, self.now, &Self::conn(h), text)
    }

    fn send(&mut self, h: u32, frame: Value) {
        let fx = self.send_raw(h, &frame.to_string());
        self.apply(fx);
    }

    fn publish(&mut self, h: u32, id: &str) {
        self.send(
            h,
            json!({"type":"publish","id":id,"event":"chat","data":{"id":id}}),
        );
    }

    fn frames(&self, h: u32, kind: &str) -> Vec<Value> {
        self.inbox
            .iter()
            .filter(|(to, f)| *to == h && f["type"] == kind)
            .map(|(_, f)| f.clone())
            .collect()
    }

    fn seqs(&self, h: u32) -> Vec<u64> {
        self.frames(h, "message")
            .iter()
            .filter_map(|f| f["seq"].as_u64())
            .collect()
    }

    fn close_code(&self, h: u32) -> Option<u16> {
        self.closed.iter().find(|(to, _)| *to == h).map(|(_, c)| *c)
    }

    fn http(&mut self, id: Option<&str>, ephemeral: bool) -> Published {
        let req = PublishRequest {
            room: "lobby".into(),
            id: id.map(str::to_string),
            event: "order".into(),
            data: null_raw(),
            exclude_conn: None,
            ephemeral,
            key: None,
            client: None,
            from: None,
        };
        let (published, fx) = self
            .core
            .publish(&self.db, self.now, &req)
            .unwrap_or_else(|e| panic!("publish: {e}"));
        self.apply(fx);
        published
    }

    fn rows(&self) -> (u64, u64) {
        (self.db.rows_read.get(), self.db.rows_written.get())
    }
}

// ---- admission and caps ----------------------------------------------------------------

#[test]
fn the_per_user_cap_counts_open_sockets_only() {
    let mut r = Fixture::new(Limits {
        max_connections_per_user: 2,
        ..limits()
    });
    let a1 = r.connect("alice");
    r.connect("alice");
    let third = r.try_connect(Fixture::request("alice"));
    assert!(
        matches!(third, Err(Error::TooManyConnections(_))),
        "{third:?}"
    );
    assert_eq!(
        r.core.connections(),
        2,
        "a refused socket leaves nothing behind"
    );
    r.connect("bob");
    let fx = r.core.closed(r.now, &Fixture::conn(a1));
    r.apply(fx);
    assert!(r.try_connect(Fixture::request("alice")).is_ok());
}

#[test]
fn welcome_lists_who_is_here_and_the_head() {
    let mut r = Fixture::new(limits());
    let a = r.connect("alice");
    r.publish(a, "m1");
    let b = r.connect("bob");
    let w = &r.frames(b, "welcome")[0];
    assert_eq!(w["seq"], 1);
    assert_eq!(w["epoch"], "e_test");
    assert_eq!(w["receipts"], true);
    assert_eq!(w["presence"]["count"], 2);
    assert_eq!(w["presence"]["users"][0]["user"], "alice");
    assert_eq!(
        w["resume"],
        json!({"requested":false,"recovered":false,"replayed":0})
    );
}

// ---- presence ------------------------------------------------------------------------------

#[test]
fn presence_is_per_user_and_respects_the_push_flag() {
    let mut r = Fixture::new(limits());
    let watcher = r.connect("w");
    let quiet = r
        .try_connect(ConnectRequest {
            presence: false,
            ..Fixture::request("q")
        })
        .unwrap_or_else(|e| panic!("{e}"));
    let a1 = r.connect("alice");
    let a2 = r.connect("alice");
    let joins: Vec<Value> = r.frames(watcher, "presence");
    assert_eq!(joins.len(), 2, "q and alice once each: {joins:?}");
    assert_eq!(
        (joins[1]["op"].as_str(), joins[1]["user"].as_str()),
        (Some("join"), Some("alice"))
    );
    assert!(
        r.frames(quiet, "presence").is_empty(),
        "presence=off gets no join/leave"
    );
    assert!(
        r.frames(a1, "presence")
            .iter()
            .all(|f| f["user"] != "alice"),
        "no join of oneself"
    );
    let fx = r.core.closed(r.now, &Fixture::conn(a1));
    r.apply(fx);
    assert_eq!(
        r.frames(watcher, "presence").len(),
        2,
        "alice still has a socket"
    );
    let fx = r.core.closed(r.now, &Fixture::conn(a2));
    r.apply(fx);
    let all = r.frames(watcher, "presence");
    assert_eq!(
        (all[2]["op"].as_str(), all[2]["user"].as_str()),
        (Some("leave"), Some("alice"))
    );
    assert!(r.frames(quiet, "presence").is_empty());
}

// ---- publish, dedup, seq -------------------------------------------------------------------

#[test]
fn publishes_are_sequenced_deduplicated_and_acked_after_their_fan_out() {
    let mut r = Fixture::new(limits());
    let a = r.connect("alice");
    let b = r.connect("bob");
    let c = r.connect("carol");
    r.publish(a, "x1");
    r.publish(b, "x2");
    r.publish(c, "x1"); // the same id from another socket
    assert_eq!(r.seqs(b), vec![1]);
    assert_eq!(r.seqs(c), vec![1, 2]);
    assert_eq!(r.seqs(a), vec![2], "no echo by default");
    let acks = r.frames(c, "ack");
    assert_eq!(
        acks,
        vec![json!({"type":"ack","id":"x1","seq":1,"duplicate":true})]
    );
    // The server API shares the id space.
    match r.http(Some("x2"), false) {
        Published::Durable(p) => assert_eq!((p.seq, p.duplicate, p.delivered), (2, true, 0)),
        other => panic!("{other:?}"),
    }
    match r.http(Some("x3"), false) {
        Published::Durable(p) => assert_eq!((p.seq, p.duplicate, p.delivered), (3, false, 3)),
        other => panic!("{other:?}"),
    }
    assert_eq!(r.seqs(a), vec![2, 3]);
    // Echo puts the sender's own message ahead of its ack.
    r.send(
        a,
        json!({"type":"publish","id":"x4","event":"chat","echo":true}),
    );
    let mine: Vec<&Value> = r
        .inbox
        .iter()
        .filter(|(h, _)| *h == a)
        .map(|(_, f)| f)
        .collect();
    let n = mine.len();
    assert_eq!(
        (mine[n - 2]["type"].as_str(), mine[n - 2]["seq"].as_u64()),
        (Some("message"), Some(4))
    );
    assert_eq!(mine[n - 1]["type"], "ack");
    assert_eq!(r.core.head().last_seq, 4);
}

#[test]
fn a_token_without_write_or_past_its_expiry_cannot_publish() {
    let mut r = Fixture::new(limits());
    let reader = r
        .try_connect(ConnectRequest {
            write: false,
            ..Fixture::request("reader")
        })
        .unwrap_or_else(|e| panic!("{e}"));
    let other = r.connect("other");
    r.publish(reader, "r1");
    assert_eq!(r.frames(reader, "error")[0]["code"], "forbidden");
    assert!(r.seqs(other).is_empty());
    let late = r
        .try_connect(ConnectRequest {
            exp: NOW / 1000 + 10,
            ..Fixture::request("late")
        })
        .unwrap_or_else(|e| panic!("{e}"));
    r.now += (11 + LEEWAY_SECS) * 1000;
    r.publish(late, "l1");
    assert_eq!(r.frames(late, "error")[0]["code"], "token_expired");
    assert_eq!(r.close_code(late), Some(4001));
    assert!(r.core.peer(&Fixture::conn(late)).is_none());
}

// ---- strikes and kicks ---------------------------------------------------------------------

#[test]
fn repeated_bad_frames_and_oversized_messages_close_the_socket() {
    let mut r = Fixture::new(Limits {
        max_message_bytes: 100,
        ..limits()
    });
    let a = r.connect("alice");
    for i in 1..=10 {
        let fx = r.send_raw(a, "not json");
        r.apply(fx);
        let errors = r.frames(a, "error").len();
        assert_eq!(errors, i, "each bad frame is answered");
        assert_eq!(
            r.close_code(a).is_some(),
            i == 10,
            "closed at the 10th, not before"
        );
    }
    assert_eq!(r.close_code(a), Some(4400));
    let b = r.connect("bob");
    let big = format!(
        "{{\"type\":\"publish\",\"id\":\"a\",\"event\":\"e\",\"data\":\"{}\"}}",
        "x".repeat(200)
    );
    for _ in 0..3 {
        let fx = r.send_raw(b, &big);
        r.apply(fx);
    }
    assert_eq!(
        r.frames(b, "error")
            .iter()
            .filter(|f| f["code"] == "too_large")
            .count(),
        3
    );
    assert_eq!(r.close_code(b), Some(1009));
    let fx = r.core.binary(r.now, &Fixture::conn(b));
    assert!(fx.is_empty(), "a closed socket's later messages do nothing");
}

/// The bug this design fixes by construction: a socket kicked with 4008 in the middle of
/// an array frame must not publish the rest of the array.
#[test]
fn a_socket_kicked_inside_an_array_publishes_nothing_after_the_kick() {
    let mut r = Fixture::new(Limits {
        rate_limit_burst: 5,
        rate_limit_per_sec: 1,
        ..limits()
    });
    let spammer = r.connect("spam");
    let victim = r.connect("victim");
    let frames: Vec<Value> = (0..100)
        .map(|i| json!({"type":"publish","id":format!("s{i}"),"event":"chat"}))
        .collect();
    r.send(spammer, Value::Array(frames));
    // 5 accepted (the burst), 5 refused with rate_limited, the 6th refusal closes.
    assert_eq!(r.seqs(victim), vec![1, 2, 3, 4, 5]);
    let errors = r.frames(spammer, "error");
    assert_eq!(errors.len(), 6, "{errors:?}");
    assert!(errors.iter().all(|e| e["code"] == "rate_limited"));
    assert_eq!(r.frames(spammer, "ack").len(), 5);
    assert_eq!(r.close_code(spammer), Some(4008));
    assert!(
        r.core.peer(&Fixture::conn(spammer)).is_none(),
        "no state left behind"
    );
    assert_eq!(r.core.head().last_seq, 5);
    // Anything it still manages to send is ignored.
    r.publish(spammer, "late");
    assert_eq!(r.core.head().last_seq, 5);
    // The victim's own limits are untouched.
    r.publish(victim, "v1");
    assert_eq!(r.frames(victim, "ack")[0]["seq"], 6);
}

#[test]
fn an_accepted_publish_resets_the_strikes() {
    let mut r = Fixture::new(Limits {
        rate_limit_burst: 2,
        rate_limit_per_sec: 1,
        ..limits()
    });
    let a = r.connect("alice");
    for round in 0..3 {
        for i in 0..4 {
            r.publish(a, &format!("r{round}-{i}"));
        }
        r.now += 2000; // refill: the next round starts with an accepted publish
    }
    assert_eq!(
        r.close_code(a),
        None,
        "two refusals per burst never reach the kick"
    );
    assert_eq!(r.frames(a, "ack").len(), 6);
}

// ---- expiry --------------------------------------------------------------------------------

#[test]
fn the_alarm_follows_the_earliest_expiry_and_closes_in_groups() {
    let mut r = Fixture::new(limits());
    let base = NOW / 1000;
    let at = |exp: i64| (exp + LEEWAY_SECS + 1) * 1000;
    let conn_exp = |r: &mut Fixture, user: &str, exp: i64| {
        r.try_connect(ConnectRequest {
            exp,
            ..Fixture::request(user)
        })
        .unwrap_or_else(|e| panic!("{e}"))
    };
    let late = conn_exp(&mut r, "late", base + 200);
    assert_eq!(r.alarms, vec![at(base + 200)]);
    let first = conn_exp(&mut r, "first", base + 100);
    let soon = conn_exp(&mut r, "soon", base + 103);
    assert_eq!(
        r.alarms,
        vec![at(base + 200), at(base + 100)],
        "only an earlier expiry moves the alarm"
    );
    r.now = at(base + 100);
    let fx = r.core.alarm(&r.db, r.now);
    r.apply(fx);
    // Both expire within EXPIRY_COALESCE_SECS of the alarm: one wake-up closes both.
    assert_eq!(r.close_code(first), Some(4001));
    assert_eq!(r.close_code(soon), Some(4001));
    assert_eq!(r.frames(first, "error")[0]["code"], "token_expired");
    assert_eq!(r.close_code(late), None);
    assert_eq!(
        r.alarms.last(),
        Some(&at(base + 200)),
        "rescheduled for the next expiry"
    );
    r.now = at(base + 200);
    let fx = r.core.alarm(&r.db, r.now);
    r.apply(fx);
    assert_eq!(r.close_code(late), Some(4001));
    assert_eq!(r.alarms.len(), 3, "nothing left to wake for");
}

#[test]
fn a_failed_alarm_is_set_again_by_the_next_connect() {
    let mut r = Fixture::new(limits());
    r.connect("a");
    assert_eq!(r.alarms.len(), 1);
    r.connect("b");
    assert_eq!(r.alarms.len(), 1, "same expiry: no second write");
    r.core.alarm_failed();
    r.connect("c");
    assert_eq!(r.alarms.len(), 2);
}

// ---- ephemeral messages and conflation ---------------------------------------------------

#[test]
fn ephemeral_messages_touch_no_storage_and_no_sequence() {
    let mut r = Fixture::new(limits());
    let a = r.connect("alice");
    let b = r.connect("bob");
    let rows = r.rows();
    r.send(
        a,
        json!({"type":"publish","ephemeral":true,"event":"cursor","data":{"x":1}}),
    );
    r.send(
        a,
        json!({"type":"publish","ephemeral":true,"id":"t1","event":"typing"}),
    );
    r.send(
        a,
        json!({"type":"publish","ephemeral":true,"id":"t1","event":"typing"}),
    );
    match r.http(None, true) {
        Published::Ephemeral(e) => assert_eq!(e.delivered, 2),
        other => panic!("{other:?}"),
    }
    assert_eq!(r.rows(), rows, "no row read or written");
    assert_eq!(r.core.head().last_seq, 0);
    let got = r.frames(b, "message");
    assert_eq!(
        got.len(),
        4,
        "the same id twice is delivered twice: {got:?}"
    );
    assert!(got
        .iter()
        .all(|m| m["ephemeral"] == true && m.get("seq").is_none()));
    assert_eq!(got[0]["data"], json!({"x":1}));
    assert_eq!(got[0]["from"]["user"], "alice");
    assert_eq!(got[3]["from"], Value::Null);
    assert_eq!(
        r.frames(a, "ack"),
        vec![json!({"type":"ack","id":"t1","ephemeral":true}); 2]
    );
}

#[test]
fn a_room_that_is_behind_sends_the_latest_signal_of_each_sender() {
    let mut r = Fixture::new(Limits {
        rate_limit_per_sec: 1000,
        rate_limit_burst: 1000,
        ..limits()
    });
    let a = r.connect("alice");
    let c = r.connect("carol");
    let b = r.connect("bob");
    // A burst arrives before the flush runs (the room is behind): nothing is flushed in
    // between, so everything is still queued together.
    let mut fx = Vec::new();
    for i in 0..500 {
        let frame = json!({"type":"publish","ephemeral":true,"event":"cursor","data":{"i":i}});
        fx.extend(r.send_raw(a, &frame.to_string()));
        r.now += 1; // 500 cursor moves at 1 kHz
    }
    let carol = json!({"type":"publish","ephemeral":true,"event":"cursor","data":{"carol":1}});
    fx.extend(r.send_raw(c, &carol.to_string()));
    let pen =
        json!({"type":"publish","ephemeral":true,"event":"cursor","key":"pen","data":{"pen":1}});
    fx.extend(r.send_raw(a, &pen.to_string()));
    r.apply(fx);
    let got = r.frames(b, "message");
    let alice: Vec<&Value> = got
        .iter()
        .filter(|m| m["from"]["user"] == "alice" && m.get("key").is_none())
        .collect();
    assert_eq!(
        alice.len(),
        1,
        "one cursor per sender, not the backlog: {got:?}"
    );
    assert_eq!(alice[0]["data"]["i"], 499, "the final position");
    assert_eq!(
        got.iter().filter(|m| m["from"]["user"] == "carol").count(),
        1
    );
    assert_eq!(
        got.iter().filter(|m| m["key"] == "pen").count(),
        1,
        "another key is another signal"
    );
    assert_eq!(
        r.messages.iter().filter(|(h, _)| *h == b).count(),
        2,
        "welcome + one message"
    );
}

// ---- slow consumers ------------------------------------------------------------------------

fn kib(n: usize) -> String {
    "x".repeat(n * 1024)
}

#[test]
fn a_reader_that_reports_its_reads_is_bounded_exactly() {
    let mut r = Fixture::new(Limits {
        max_pending_bytes: 64 * 1024,
        ..limits()
    });
    let publisher = r.connect("pub");
    let reader = r.connect("reader");
    let stalled = r.connect("stalled");
    let received = |r: &mut Fixture, h: u32| {
        let n = r.messages.iter().filter(|(to, _)| *to == h).count();
        r.send(h, json!({"type":"received","messages":n}));
    };
    received(&mut r, reader);
    received(&mut r, stalled); // it read its welcome, then stops reading
    for i in 0..10 {
        r.send(
            publisher,
            json!({"type":"publish","id":format!("p{i}"),"event":"e","data":kib(10)}),
        );
        received(&mut r, reader);
        r.now += 100;
    }
    assert_eq!(
        r.seqs(reader),
        (1..=10).collect::<Vec<u64>>(),
        "a reader that keeps up gets everything"
    );
    assert_eq!(r.close_code(reader), None);
    // 64 KiB unread is the bound: the stalled socket was sent messages while it had less
    // unread (seven of 10 KiB), and closed at the next one.
    assert_eq!(r.seqs(stalled), (1..=7).collect::<Vec<u64>>());
    assert_eq!(r.close_code(stalled), Some(4009));
    assert!(r.core.peer(&Fixture::conn(stalled)).is_none());
}

#[test]
fn a_slow_socket_loses_its_ephemeral_messages_before_it_is_closed() {
    let mut r = Fixture::new(Limits {
        max_pending_bytes: 16 * 1024,
        ..limits()
    });
    let publisher = r.connect("pub");
    let slow = r.connect("slow");
    r.send(slow, json!({"type":"received","messages":1}));
    r.send(
        publisher,
        json!({"type":"publish","id":"d1","event":"e","data":kib(12)}),
    );
    // 12 KiB unread of 16: a 6 KiB cursor no longer fits, a 1 KiB durable message does.
    let mut fx = r.send_raw(
        publisher,
        &json!({"type":"publish","ephemeral":true,"event":"cursor","data":kib(6)}).to_string(),
    );
    fx.extend(r.send_raw(
        publisher,
        &json!({"type":"publish","id":"d2","event":"e","data":kib(1)}).to_string(),
    ));
    r.apply(fx);
    assert_eq!(r.seqs(slow), vec![1, 2]);
    assert!(r
        .frames(slow, "message")
        .iter()
        .all(|m| m.get("ephemeral").is_none()));
    assert_eq!(r.close_code(slow), None);
    // 13 KiB unread: still under the bound, so the next one is sent (17 KiB unread)…
    r.send(
        publisher,
        json!({"type":"publish","id":"d3","event":"e","data":kib(4)}),
    );
    assert_eq!(r.close_code(slow), None);
    // …and the one after that finds it over the bound: closed instead.
    r.send(
        publisher,
        json!({"type":"publish","id":"d4","event":"e","data":kib(1)}),
    );
    assert_eq!(r.close_code(slow), Some(4009), "over the bound: closed");
    assert_eq!(r.seqs(slow), vec![1, 2, 3]);
}

#[test]
fn a_reader_that_keeps_up_takes_a_catch_up_batch_bigger_than_the_bound() {
    let mut r = Fixture::new(Limits {
        max_pending_bytes: 16 * 1024,
        ..limits()
    });
    let publisher = r.connect("pub");
    let reader = r.connect("reader");
    r.send(reader, json!({"type":"received","messages":1}));
    // A stalled room catches up: five 8 KiB messages queued before one flush.
    let mut fx = Vec::new();
    for i in 0..5 {
        let frame = json!({"type":"publish","id":format!("c{i}"),"event":"e","data":kib(8)});
        fx.extend(r.send_raw(publisher, &frame.to_string()));
    }
    r.apply(fx);
    assert_eq!(r.seqs(reader), (1..=5).collect::<Vec<u64>>());
    assert_eq!(
        r.close_code(reader),
        None,
        "nothing was unread before the batch"
    );
    // It reads them and reports it: the next message is sent.
    let n = r.messages.iter().filter(|(h, _)| *h == reader).count();
    r.send(reader, json!({"type":"received","messages":n}));
    r.publish(publisher, "after");
    assert_eq!(r.seqs(reader).len(), 6);
    assert_eq!(r.close_code(reader), None);
}

#[test]
fn a_reader_without_receipts_is_estimated_to_drain_twice_the_bound_per_second() {
    let mut r = Fixture::new(Limits {
        max_pending_bytes: 10 * 1024,
        ..limits()
    });
    let publisher = r.connect("pub");
    // This socket never sends `received`. 19 KiB a second is within the 20 KiB the
    // estimate assumes it drains: never closed.
    let plain = r.connect("plain");
    for i in 0..20 {
        let frame = json!({"type":"publish","id":format!("a{i}"),"event":"e","data":kib(19)});
        r.send(publisher, frame);
        r.now += 1000;
    }
    assert_eq!(r.close_code(plain), None);
    // A burst beyond 8 × the bound within a second is not.
    for i in 0..10 {
        let frame = json!({"type":"publish","id":format!("b{i}"),"event":"e","data":kib(19)});
        r.send(publisher, frame);
    }
    assert_eq!(r.close_code(plain), Some(4009));
    assert_eq!(
        r.seqs(plain).len(),
        25,
        "20 paced + 5 of the burst (sent while under 80 KiB unread)"
    );
}

// ---- disconnects from the server API ------------------------------------------------------

fn disconnect_request(target: Target, code: u16, reason: &str) -> DisconnectRequest {
    DisconnectRequest {
        target,
        code,
        reason: reason.into(),
    }
}

impl Fixture {
    /// `POST /v1/rooms/{room}/disconnect`; returns how many it closed.
    fn disconnect(&mut self, req: &DisconnectRequest) -> usize {
        let (result, fx) = self.core.disconnect(self.now, req);
        self.apply(fx);
        result.closed
    }

    fn leaves(&self, h: u32) -> Vec<Value> {
        self.frames(h, "presence")
            .into_iter()
            .filter(|f| f["op"] == "leave")
            .collect()
    }
}

#[test]
fn a_user_disconnect_closes_every_socket_of_that_user_after_its_error_frame() {
    let mut r = Fixture::new(limits());
    let watcher = r.connect("w");
    let a1 = r.connect("alice");
    let a2 = r.connect("alice");
    let bob = r.connect("bob");
    let req = disconnect_request(Target::User("alice".into()), 4403, "removed from the board");
    assert_eq!(r.disconnect(&req), 2);
    for h in [a1, a2] {
        assert_eq!(r.close_code(h), Some(4403));
        let last = r
            .inbox
            .iter()
            .rev()
            .find(|(to, _)| *to == h)
            .map(|(_, f)| f);
        assert_eq!(
            last,
            Some(
                &json!({"type":"error","code":"disconnected","message":"removed from the board","close":4403})
            )
        );
        assert!(r.core.peer(&Fixture::conn(h)).is_none());
    }
    assert_eq!(r.close_code(bob), None);
    assert_eq!(r.core.connections(), 2);
    // One leave for the user, when the last of its sockets went; bob saw it too.
    for h in [watcher, bob] {
        let leaves = r.leaves(h);
        assert_eq!(leaves.len(), 1, "{leaves:?}");
        assert_eq!(leaves[0]["user"], "alice");
    }
    // What they might still send is not read; nobody else is touched.
    let fx = r.send_raw(a1, r#"{"type":"publish","id":"late","event":"e"}"#);
    assert!(fx.is_empty(), "{fx:?}");
    r.publish(bob, "after");
    assert_eq!(r.seqs(watcher), vec![1]);
    // An unknown user, or one already gone, closes nothing.
    assert_eq!(r.disconnect(&req), 0);
    let nobody = disconnect_request(Target::User("nobody".into()), 4403, "x");
    assert_eq!(r.disconnect(&nobody), 0);
    assert_eq!(r.closed.len(), 2);
}

#[test]
fn a_conn_disconnect_closes_that_connection_only_with_the_chosen_code() {
    let mut r = Fixture::new(limits());
    let watcher = r.connect("w");
    let a1 = r.connect("alice");
    let a2 = r.connect("alice");
    let req = disconnect_request(Target::Conn(Fixture::conn(a1)), 4000, "permissions changed");
    assert_eq!(r.disconnect(&req), 1);
    assert_eq!(r.close_code(a1), Some(4000));
    assert_eq!(r.close_code(a2), None);
    assert!(r.core.peer(&Fixture::conn(a2)).is_some());
    assert!(
        r.leaves(watcher).is_empty(),
        "alice is still here on her other socket"
    );
    let unknown = disconnect_request(Target::Conn("c_ffffffffffffffff".into()), 4000, "x");
    assert_eq!(r.disconnect(&unknown), 0);
    // A user's name is not a connection id, nor the other way round.
    let by_name = disconnect_request(Target::Conn("alice".into()), 4000, "x");
    assert_eq!(r.disconnect(&by_name), 0);
    let by_conn = disconnect_request(Target::User(Fixture::conn(a2)), 4000, "x");
    assert_eq!(r.disconnect(&by_conn), 0);
    assert_eq!(r.closed.len(), 1);
}

#[test]
fn a_disconnected_socket_gets_what_was_queued_then_the_error_then_the_close_and_stays_gone() {
    let mut r = Fixture::new(limits());
    let a = r.connect("alice");
    let b = r.connect("bob");
    // A message still queued (not flushed) when the disconnect arrives.
    let queued = r.send_raw(b, r#"{"type":"publish","id":"q1","event":"e"}"#);
    assert!(queued.iter().any(|e| matches!(e, Effect::Flush { .. })));
    let req = disconnect_request(Target::User("alice".into()), 4401, "bye");
    let (result, fx) = r.core.disconnect(r.now, &req);
    assert_eq!(result.closed, 1);
    let for_a: Vec<String> = fx
        .iter()
        .filter_map(|e| match e {
            Effect::Send { to, text } if *to == a => Some(text.clone()),
            Effect::Attach { to, identity } if *to == a => Some(format!("gone={}", identity.gone)),
            Effect::Close { to, code, reason } if *to == a => {
                Some(format!("close {code} {reason}"))
            }
            _ => None,
        })
        .collect();
    assert_eq!(for_a.len(), 4, "{for_a:?}");
    assert!(for_a[0].contains(r#""id":"q1""#), "{for_a:?}");
    assert_eq!(
        for_a[1],
        r#"{"type":"error","code":"disconnected","message":"bye","close":4401}"#
    );
    assert_eq!(for_a[2], "gone=true");
    assert_eq!(for_a[3], "close 4401 disconnected");
    assert!(fx.iter().any(|e| matches!(
        e,
        Effect::Log { event: "socket.kick", fields } if fields.contains(&("code", "4401".to_string()))
    )));
    r.apply(queued);
    r.apply(fx);
    // The queued message was sent to alice once (by the drop), and to nobody twice.
    let q1 = |h: u32| {
        r.frames(h, "message")
            .iter()
            .filter(|f| f["id"] == "q1")
            .count()
    };
    assert_eq!((q1(a), q1(b)), (1, 0));
}

// ---- runtime failures, restore, migration ------------------------------------------------

#[test]
fn a_socket_whose_send_fails_is_dropped_and_its_user_leaves() {
    let mut r = Fixture::new(limits());
    let watcher = r.connect("w");
    let broken = r.connect("broken");
    let publisher = r.connect("p");
    r.broken.push(broken);
    r.publish(publisher, "m1");
    assert_eq!(r.close_code(broken), Some(1011));
    assert!(r.core.peer(&Fixture::conn(broken)).is_none());
    let leaves: Vec<Value> = r
        .frames(watcher, "presence")
        .into_iter()
        .filter(|f| f["op"] == "leave")
        .collect();
    assert_eq!(leaves.len(), 1);
    assert_eq!(leaves[0]["user"], "broken");
}

#[test]
fn a_woken_room_is_rebuilt_from_its_sockets_and_storage() {
    let mut r = Fixture::new(limits());
    let a = r.connect("alice");
    r.publish(a, "m1");
    let ids: Vec<(u32, Identity)> = r
        .core
        .peers
        .iter()
        .map(|p| (p.handle, p.id.clone()))
        .collect();
    let gone = Identity {
        conn: "c_gone".into(),
        gone: true,
        ..ids[0].1.clone()
    };
    let mut sockets = ids.clone();
    sockets.push((99, gone));
    let core = RoomCore::load(
        &r.db,
        limits(),
        NOW,
        &|| "e_other".into(),
        sockets,
        Some(NOW + 5000),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(core.head().epoch, "e_test");
    assert_eq!(core.head().last_seq, 1);
    assert_eq!(
        core.connections(),
        1,
        "a socket the room closed is not restored"
    );
    assert!(core.peer("c_gone").is_none());
}

#[test]
fn a_version_1_room_resumes_across_the_upgrade() {
    let db = lite();
    for stmt in V1_ROOM {
        db.conn
            .execute_batch(stmt)
            .unwrap_or_else(|e| panic!("{stmt}: {e}"));
    }
    let mut r = Fixture::on(db, limits());
    let resumed = r
        .try_connect(ConnectRequest {
            since: Some(1),
            epoch: Some("e_00000000000000aa".into()),
            ..Fixture::request("bob")
        })
        .unwrap_or_else(|e| panic!("{e}"));
    let w = &r.frames(resumed, "welcome")[0];
    assert_eq!(w["epoch"], "e_00000000000000aa");
    assert_eq!(w["seq"], 2);
    assert_eq!(
        w["resume"],
        json!({"requested":true,"recovered":true,"replayed":1})
    );
    // The replayed frame is byte for byte what version 1 stored and fanned out.
    let replay = &r
        .messages
        .iter()
        .filter(|(h, _)| *h == resumed)
        .nth(1)
        .map(|(_, m)| m.clone());
    assert_eq!(
        replay.as_deref(),
        Some(
            r#"{"type":"message","seq":2,"id":"second","event":"order.updated","data":null,"from":null,"ts":2000}"#
        )
    );
    let a = r.connect("alice");
    r.publish(a, "third");
    assert_eq!(r.seqs(resumed), vec![2, 3], "gapless across the upgrade");
    // Ids from before the upgrade are still deduplicated.
    r.publish(a, "first");
    assert_eq!(
        r.frames(a, "ack")[1],
        json!({"type":"ack","id":"first","seq":1,"duplicate":true})
    );
}

// ---- webhooks -----------------------------------------------------------------------------

fn hooks(events: &str, max_batch: u32) -> crate::config::Webhooks {
    let vars = [
        ("WEBHOOK_URL", "http://127.0.0.1:9/hook"),
        ("WEBHOOK_SECRET", "s"),
        ("WEBHOOK_EVENTS", events),
        ("WEBHOOK_MESSAGE_EVENTS", "chat,order.*"),
        ("WEBHOOK_MAX_AGE_SECS", "60"),
    ];
    let batch = max_batch.to_string();
    let get = |name: &str| {
        if name == "WEBHOOK_MAX_BATCH" {
            return Some(batch.clone());
        }
        vars.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    };
    crate::config::Webhooks::from_lookup(&get)
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("configured"))
}

fn with_hooks(events: &str, max_batch: u32) -> Fixture {
    let mut r = Fixture::new(Limits {
        rate_limit_burst: 1000,
        rate_limit_per_sec: 1000,
        ..limits()
    });
    let fx = r
        .core
        .start(&r.db, r.now, "acme/lobby", Some(hooks(events, max_batch)))
        .unwrap_or_else(|e| panic!("{e}"));
    r.apply(fx);
    r
}

/// Fires the alarm and returns the batch it asked to POST, as parsed JSON.
fn fire(r: &mut Fixture) -> Option<(u64, Value)> {
    let fx = r.core.alarm(&r.db, r.now);
    r.apply(fx);
    let batch = r.deliveries.pop()?;
    let body = serde_json::from_str(&batch.body).unwrap_or_else(|e| panic!("{e}"));
    Some((batch.upto, body))
}

fn answer(r: &mut Fixture, upto: u64, outcome: Outcome, jitter: f64) {
    let fx = r.core.delivered(&r.db, r.now, upto, &outcome, jitter);
    r.apply(fx);
}

fn kinds(body: &Value) -> Vec<String> {
    body["events"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .map(|e| {
                    format!(
                        "{}:{}",
                        e["kind"].as_str().unwrap_or("?"),
                        e["op"].as_str().or(e["event"].as_str()).unwrap_or("?")
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn webhook_events_are_recorded_with_what_they_describe_and_filtered() {
    let mut r = with_hooks("message,presence,room", 100);
    let a = r.connect("alice");
    assert_eq!(
        r.alarms.last(),
        Some(&NOW),
        "the first event asks for a delivery at once"
    );
    let b = r.connect("bob");
    r.publish(a, "m1"); // event "chat": forwarded
    r.send(a, json!({"type":"publish","id":"m2","event":"cursor.move"})); // not in the patterns
    r.send(
        a,
        json!({"type":"publish","id":"m3","event":"order.paid","data":{"n":1}}),
    );
    r.send(a, json!({"type":"publish","ephemeral":true,"event":"chat"})); // never forwarded
    r.publish(b, "m1"); // a duplicate: nothing new
    for h in [a, b] {
        let fx = r.core.closed(r.now, &Fixture::conn(h));
        r.apply(fx);
    }
    let (upto, body) = fire(&mut r).unwrap_or_else(|| panic!("a batch"));
    assert_eq!(
        (body["room"].as_str(), body["tenant"].as_str()),
        (Some("lobby"), Some("acme"))
    );
    assert_eq!(
        kinds(&body),
        vec![
            "presence:join",
            "room:occupied",
            "presence:join",
            "message:chat",
            "message:order.paid",
            "presence:leave",
            "presence:leave",
            "room:vacated"
        ]
    );
    let wids: Vec<&str> = body["events"]
        .as_array()
        .map(|e| e.iter().filter_map(|e| e["wid"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(
        wids,
        (1..=8).map(|n| format!("e_test:{n}")).collect::<Vec<_>>()
    );
    assert_eq!(upto, 8);
    let paid = &body["events"][4];
    assert_eq!(
        (paid["seq"].as_u64(), paid["id"].as_str()),
        (Some(3), Some("m3"))
    );
    assert_eq!(paid["from"]["user"], "alice");
    assert!(r.deliveries.is_empty());
}

#[test]
fn by_default_only_messages_are_forwarded() {
    let mut r = with_hooks("message", 100);
    let a = r.connect("alice");
    assert!(
        r.alarms.is_empty() || r.alarms == vec![(NOW / 1000 + 600 + LEEWAY_SECS + 1) * 1000],
        "no webhook yet: {:?}",
        r.alarms
    );
    r.publish(a, "only");
    let (_, body) = fire(&mut r).unwrap_or_else(|| panic!("a batch"));
    assert_eq!(kinds(&body), vec!["message:chat"]);
}

#[test]
fn failed_deliveries_back_off_and_batches_go_in_order_once_taken() {
    let mut r = with_hooks("message", 2);
    let a = r.connect("alice");
    for i in 0..5 {
        r.publish(a, &format!("m{i}"));
    }
    let (upto, first) = fire(&mut r).unwrap_or_else(|| panic!("a batch"));
    assert_eq!((upto, kinds(&first).len()), (2, 2));
    // While a batch is in flight, new events do not start another delivery.
    r.publish(a, "late");
    assert!(r.deliveries.is_empty());
    // Three failures: 1 s, 2 s, 4 s (full jitter here), the same batch each time.
    for (i, delay) in [1000, 2000, 4000].into_iter().enumerate() {
        let outcome = if i == 1 {
            Outcome::Failed("no answer within 10000 ms".into())
        } else {
            Outcome::Status(500)
        };
        answer(&mut r, upto, outcome, 1.0);
        let status = r
            .core
            .webhook_status(&r.db)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(status.next_attempt_ms, Some(r.now + delay));
        assert_eq!(status.attempts, i as u32 + 1);
        assert_eq!(status.pending, 6);
        r.now += delay;
        let (again, body) = fire(&mut r).unwrap_or_else(|| panic!("a retry"));
        assert_eq!((again, &body["events"]), (upto, &first["events"]));
    }
    assert_eq!(
        r.core
            .webhook_status(&r.db)
            .map(|s| s.last_error)
            .ok()
            .flatten()
            .as_deref(),
        Some("HTTP 500")
    );
    // Taken: the next batch follows at once, without waiting for an alarm.
    answer(&mut r, upto, Outcome::Status(204), 0.5);
    let next = r
        .deliveries
        .pop()
        .unwrap_or_else(|| panic!("the next batch"));
    assert_eq!(next.upto, 4);
    answer(&mut r, next.upto, Outcome::Status(200), 0.5);
    let last = r
        .deliveries
        .pop()
        .unwrap_or_else(|| panic!("the last batch"));
    assert_eq!((last.upto, last.count), (6, 2));
    answer(&mut r, last.upto, Outcome::Status(200), 0.5);
    assert!(r.deliveries.is_empty());
    let status = r
        .core
        .webhook_status(&r.db)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (
            status.pending,
            status.dead,
            status.attempts,
            status.last_error
        ),
        (0, 0, 0, None)
    );
}

#[test]
fn undeliverable_events_die_after_the_max_age_and_the_retry_route_revives_them() {
    let mut r = with_hooks("message", 100);
    let a = r.connect("alice");
    r.publish(a, "old");
    let (upto, _) = fire(&mut r).unwrap_or_else(|| panic!("a batch"));
    r.now += 61_000; // past WEBHOOK_MAX_AGE_SECS (60)
    answer(&mut r, upto, Outcome::Status(503), 0.0);
    let status = r
        .core
        .webhook_status(&r.db)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((status.pending, status.dead), (0, 1));
    r.now += 1000;
    assert!(fire(&mut r).is_none(), "dead events are not sent");
    r.publish(a, "new");
    let (_, body) = fire(&mut r).unwrap_or_else(|| panic!("new events still flow"));
    assert_eq!(body["events"][0]["id"], "new");
    answer(&mut r, 2, Outcome::Status(200), 0.0);
    let (n, fx) = r
        .core
        .webhook_retry(&r.db, r.now)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(n, 1);
    r.apply(fx);
    let (_, body) = fire(&mut r).unwrap_or_else(|| panic!("the revived event"));
    assert_eq!(body["events"][0]["id"], "old");
    assert_eq!(
        body["events"][0]["wid"], "e_test:1",
        "same wid: receivers dedupe by it"
    );
}

#[test]
fn a_restarted_room_delivers_what_it_had_stored() {
    let mut r = with_hooks("message", 100);
    let a = r.connect("alice");
    r.publish(a, "before");
    // The process dies with the event stored and undelivered; a new core starts over it.
    let mut core: RoomCore<u32> =
        RoomCore::load(&r.db, limits(), r.now, &|| "x".into(), Vec::new(), None)
            .unwrap_or_else(|e| panic!("{e}"));
    let fx = core
        .start(&r.db, r.now, "acme/lobby", Some(hooks("message", 100)))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        fx.iter()
            .any(|f| matches!(f, Effect::SetAlarm { at_ms } if *at_ms == r.now)),
        "{fx:?}"
    );
    let fx = core.alarm(&r.db, r.now);
    let batch = fx.iter().find_map(|f| match f {
        Effect::Deliver(b) => Some(b.clone()),
        _ => None,
    });
    assert!(batch.is_some_and(|b| b.body.contains(r#""id":"before""#)));
}

#[test]
fn a_room_woken_for_a_retry_keeps_backing_off_where_it_was() {
    let mut r = with_hooks("message", 100);
    let a = r.connect("alice");
    r.publish(a, "m");
    // Four failures in a row: the fifth wait is 16 s (full jitter here).
    for _ in 0..4 {
        let (upto, _) = fire(&mut r).unwrap_or_else(|| panic!("a batch"));
        answer(&mut r, upto, Outcome::Status(503), 1.0);
        let next = r
            .core
            .webhook_status(&r.db)
            .ok()
            .and_then(|s| s.next_attempt_ms);
        r.now = next.unwrap_or_else(|| panic!("a retry"));
    }
    let (upto, _) = fire(&mut r).unwrap_or_else(|| panic!("a batch"));
    answer(&mut r, upto, Outcome::Status(503), 1.0);
    let due = r.now + 16_000;
    // Evicted while it waits (~10 s idle): a new core over the same storage, as when the
    // alarm wakes it, goes on with the fifth wait instead of starting over at 1 s.
    let restart = |db: &Lite, now: i64| {
        let mut core: RoomCore<u32> =
            RoomCore::load(db, limits(), now, &|| "x".into(), Vec::new(), Some(due))
                .unwrap_or_else(|e| panic!("{e}"));
        let fx = core
            .start(db, now, "acme/lobby", Some(hooks("message", 100)))
            .unwrap_or_else(|e| panic!("{e}"));
        (core, fx)
    };
    let (core, fx) = restart(&r.db, r.now + 10_000);
    assert!(
        !fx.iter().any(|f| matches!(f, Effect::SetAlarm { .. })),
        "the stored alarm is the retry: {fx:?}"
    );
    let status = core.webhook_status(&r.db).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (
            status.attempts,
            status.next_attempt_ms,
            status.last_error.as_deref()
        ),
        (5, Some(due), Some("HTTP 503"))
    );
    // Woken by that alarm: it delivers, and a success forgets the stored state.
    let (mut core, _) = restart(&r.db, due);
    let fx = core.alarm(&r.db, due);
    let batch = fx
        .iter()
        .find_map(|f| match f {
            Effect::Deliver(b) => Some(b.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("the retry at {due}: {fx:?}"));
    core.delivered(&r.db, due, batch.upto, &Outcome::Status(200), 0.0);
    let (core, _) = restart(&r.db, due + 1);
    let status = core.webhook_status(&r.db).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (status.attempts, status.last_error, status.pending),
        (0, None, 0)
    );
}

// ---- what an operator sees ----------------------------------------------------------------

#[test]
fn counters_follow_what_happened_since_the_start() {
    let mut r = Fixture::new(Limits {
        rate_limit_burst: 2,
        rate_limit_per_sec: 1,
        max_connections_per_user: 1,
        ..limits()
    });
    let a = r.connect("alice");
    let b = r.connect("bob");
    assert!(r.try_connect(Fixture::request("bob")).is_err());
    r.publish(a, "m1");
    r.publish(b, "m1"); // duplicate
    r.send(
        a,
        json!({"type":"publish","ephemeral":true,"event":"cursor"}),
    );
    r.send(b, json!({"type":"nope"}));
    let frames: Vec<Value> = (0..5)
        .map(|i| json!({"type":"publish","id":format!("x{i}"),"event":"e"}))
        .collect();
    r.send(a, Value::Array(frames)); // refused until kicked with 4008
    let c = &r.core.counters;
    assert_eq!(
        (
            c.messages,
            c.duplicates,
            c.ephemeral,
            c.connects,
            c.peak_connections
        ),
        (1, 1, 1, 2, 2)
    );
    assert_eq!(c.rejections.get("too_many_connections"), Some(&1));
    assert_eq!(c.rejections.get("unknown_type"), Some(&1));
    assert_eq!(c.rejections.get("rate_limited"), Some(&2));
    assert_eq!(c.kicks.get(&4008), Some(&1));
    // m1 to bob, the cursor to bob, the ack-free duplicate: two frames reached other sockets,
    // plus each socket's own acks and errors.
    assert!(c.deliveries >= 2 && c.sends >= 2, "{c:?}");
    assert_eq!(c.since_ms, NOW);
    let info = r.core.info(&r.db, "lobby".into(), Default::default());
    assert_eq!(info.counters, r.core.counters);
    assert!(
        info.webhooks.is_none(),
        "no webhook backlog without webhooks"
    );
}

#[test]
fn a_room_that_falls_behind_does_not_close_readers_that_keep_up_with_it() {
    let mut r = Fixture::new(Limits {
        max_pending_bytes: 16 * 1024,
        rate_limit_burst: 1000,
        rate_limit_per_sec: 1000,
        ..limits()
    });
    let publisher = r.connect("pub");
    let readers: Vec<u32> = (0..3).map(|i| r.connect(&format!("r{i}"))).collect();
    let stalled = r.connect("stalled");
    for &h in readers.iter().chain([&stalled]) {
        r.send(h, json!({"type":"received","messages":1}));
    }
    // The room is behind: receipts wait behind its backlog, so every reader's unread grows
    // together past the bound, batch after batch.
    for i in 0..6 {
        let frame = json!({"type":"publish","id":format!("b{i}"),"event":"e","data":kib(10)});
        r.send(publisher, frame);
    }
    for &h in readers.iter().chain([&stalled]) {
        assert_eq!(
            r.close_code(h),
            None,
            "all equally behind: nobody is the slow one"
        );
        assert_eq!(r.seqs(h).len(), 6);
    }
    // The room catches up: the readers' receipts arrive; the stalled one's never does.
    for &h in &readers {
        let n = r.messages.iter().filter(|(to, _)| *to == h).count();
        r.send(h, json!({"type":"received","messages":n}));
    }
    for i in 0..3 {
        let frame = json!({"type":"publish","id":format!("c{i}"),"event":"e","data":kib(10)});
        r.send(publisher, frame);
        for &h in &readers {
            let n = r.messages.iter().filter(|(to, _)| *to == h).count();
            r.send(h, json!({"type":"received","messages":n}));
        }
    }
    assert_eq!(
        r.close_code(stalled),
        Some(4009),
        "behind its peers by more than the bound"
    );
    for &h in &readers {
        assert_eq!(r.close_code(h), None);
        assert_eq!(r.seqs(h).len(), 9);
    }
}

// ---- client HTTP publishes and relay sockets (docs/protocol.md §13) ----------------------

impl Fixture {
    fn client_publish(
        &mut self,
        user: &str,
        id: Option<&str>,
        conn: Option<String>,
        echo: bool,
    ) -> Result<Published, Error> {
        let req = PublishRequest {
            room: "lobby".into(),
            id: id.map(str::to_string),
            event: "chat".into(),
            data: null_raw(),
            exclude_conn: None,
            ephemeral: id.is_none(),
            key: None,
            client: Some(ClientPublish {
                user: user.into(),
                conn,
                echo,
            }),
            from: None,
        };
        let (published, fx) = self.core.publish(&self.db, self.now, &req)?;
        self.apply(fx);
        Ok(published)
    }
}

fn durable(p: Result<Published, Error>) -> (u64, bool) {
    match p {
        Ok(Published::Durable(r)) => (r.seq, r.duplicate),
        other => panic!("expected a durable result, got {other:?}"),
    }
}

#[test]
fn client_http_publishes_share_the_id_space_and_name_the_user() {
    let mut r = Fixture::new(limits());
    let a = r.connect("alice");
    let b = r.connect("bob");
    r.publish(a, "x1");
    assert_eq!(
        durable(r.client_publish("bob", Some("x1"), None, false)),
        (1, true),
        "an id first sent over a socket is a duplicate over HTTP"
    );
    assert_eq!(
        durable(r.client_publish("bob", Some("h1"), None, false)),
        (2, false)
    );
    assert_eq!(
        durable(r.client_publish("carol", Some("h1"), None, false)),
        (2, true)
    );
    r.publish(a, "h1");
    let acks = r.frames(a, "ack");
    assert_eq!(
        (acks[1]["seq"].as_u64(), acks[1]["duplicate"].as_bool()),
        (Some(2), Some(true))
    );
    let m = &r.frames(a, "message")[0];
    assert_eq!(m["from"], json!({"user":"bob","conn":"h_bob"}));
    assert_eq!(
        r.seqs(b),
        vec![1, 2],
        "without a conn of its own, bob receives it too"
    );
}

#[test]
fn a_client_naming_its_own_stream_is_skipped_unless_it_asks_for_an_echo() {
    let mut r = Fixture::new(limits());
    let stream = r.connect("bob");
    let other = r.connect("alice");
    let own = Some(Fixture::conn(stream));
    durable(r.client_publish("bob", Some("m1"), own.clone(), false));
    assert_eq!(r.seqs(stream), Vec::<u64>::new());
    assert_eq!(
        r.frames(other, "message")[0]["from"]["conn"],
        Fixture::conn(stream).as_str()
    );
    durable(r.client_publish("bob", Some("m2"), own, true));
    assert_eq!(r.seqs(stream), vec![2]);
    // Another user's connection is not taken: the message is from h_mallory, skips no one.
    durable(r.client_publish("mallory", Some("m3"), Some(Fixture::conn(other)), false));
    let last = r.frames(other, "message").pop().unwrap_or_default();
    assert_eq!(last["from"], json!({"user":"mallory","conn":"h_mallory"}));
    // Ephemeral HTTP publishes are from the user too, and take no seq.
    let e = r.client_publish("bob", None, None, false);
    assert!(
        matches!(e, Ok(Published::Ephemeral(ref x)) if x.delivered == 2),
        "{e:?}"
    );
    assert_eq!(r.core.head().last_seq, 3);
}

#[test]
fn client_http_publishes_are_rate_limited_per_user() {
    let mut r = Fixture::new(Limits {
        rate_limit_per_sec: 2,
        rate_limit_burst: 3,
        ..limits()
    });
    let ws = r.connect("alice");
    for i in 0..3 {
        durable(r.client_publish("alice", Some(&format!("a{i}")), None, false));
    }
    let refused = r.client_publish("alice", Some("a3"), None, false);
    assert!(
        matches!(refused, Err(Error::RateLimited(500))),
        "{refused:?}"
    );
    assert_eq!(r.core.head().last_seq, 3, "a refused publish takes no seq");
    // Another user has a bucket of their own, and so do alice's sockets.
    durable(r.client_publish("bob", Some("b0"), None, false));
    r.publish(ws, "w0");
    assert_eq!(r.frames(ws, "ack").len(), 1);
    r.now += 500;
    assert_eq!(
        durable(r.client_publish("alice", Some("a3"), None, false)),
        (6, false)
    );
    assert!(
        r.client_publish("alice", None, None, false).is_err(),
        "ephemeral ones count too"
    );
}

#[test]
fn the_http_buckets_forget_full_ones_when_many_users_publish() {
    let mut r = Fixture::new(limits());
    for i in 0..1100 {
        r.client_publish(&format!("u{i}"), None, None, false)
            .unwrap_or_else(|e| panic!("{e}"));
        r.now += 100;
    }
    assert!(
        r.core.http_buckets_len() <= 1024,
        "{}",
        r.core.http_buckets_len()
    );
}

#[test]
fn a_poll_relay_counts_against_the_cap_but_is_not_shown_in_presence() {
    let mut r = Fixture::new(Limits {
        max_connections_per_user: 2,
        ..limits()
    });
    let watcher = r.connect("w");
    let poll = r
        .try_connect(ConnectRequest {
            presence: false,
            transport: Transport::Poll,
            ..Fixture::request("p")
        })
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        r.frames(watcher, "presence").is_empty(),
        "a poll does not join"
    );
    let sse = r
        .try_connect(ConnectRequest {
            transport: Transport::Sse,
            ..Fixture::request("p")
        })
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.frames(watcher, "presence").len(), 1, "an SSE stream does");
    let w = &r.frames(sse, "welcome")[0];
    assert_eq!(w["presence"]["count"], 2, "w and p (through its stream)");
    let third = r.try_connect(ConnectRequest {
        transport: Transport::Poll,
        ..Fixture::request("p")
    });
    assert!(
        matches!(third, Err(Error::TooManyConnections(_))),
        "{third:?}"
    );
    let fx = r.core.closed(r.now, &Fixture::conn(poll));
    r.apply(fx);
    assert_eq!(r.frames(watcher, "presence").len(), 1, "nor does it leave");
    assert_eq!(
        r.core
            .info(&r.db, "lobby".into(), Default::default())
            .users
            .len(),
        2
    );
}

// ---- a sharded room: a sequencer core and shard cores, batches carried by hand ----------

/// A sharded room in memory: the sequencer and its shards, each its own core and SQLite,
/// and socket handles numbered across all shards (handle `h` lives on one shard).
struct Cluster {
    seq: Fixture,
    shards: Vec<Fixture>,
    /// Handle → shard.
    home: Vec<(u32, usize)>,
    next: u32,
}

impl Cluster {
    fn new(n: u32) -> Self {
        let mut seq = Fixture::new(limits());
        let fx = seq
            .core
            .become_sequencer(&seq.db, NOW, "/lobby", n)
            .unwrap_or_else(|e| panic!("{e}"));
        seq.apply(fx);
        let shards = (0..n)
            .map(|i| {
                let mut f = Fixture::new(limits());
                f.core
                    .become_shard(&f.db, &format!("/lobby#{i}"), i)
                    .unwrap_or_else(|e| panic!("{e}"));
                f
            })
            .collect();
        Cluster {
            seq,
            shards,
            home: Vec::new(),
            next: 1,
        }
    }

    /// Connects `user` on `shard` (the Worker's placement is tested in `shard`), and
    /// carries batches until the welcome is there.
    fn connect(&mut self, shard: usize, req: ConnectRequest) -> u32 {
        let h = self.next;
        self.next += 1;
        let f = &mut self.shards[shard];
        let fx = f
            .core
            .connect(&f.db, f.now, h, Fixture::conn(h), &req)
            .unwrap_or_else(|e| panic!("{e}"));
        f.apply(fx);
        self.home.push((h, shard));
        self.run();
        h
    }

    fn shard_of(&self, h: u32) -> usize {
        self.home
            .iter()
            .find(|(x, _)| *x == h)
            .map_or_else(|| panic!("no socket {h}"), |(_, s)| *s)
    }

    fn publish(&mut self, h: u32, id: &str, echo: bool) {
        let s = self.shard_of(h);
        self.shards[s].send(
            h,
            json!({"type":"publish","id":id,"event":"chat","data":{},"echo":echo}),
        );
    }

    /// One shard's batch up and the answer back; false when it had none.
    fn up(&mut self, s: usize) -> bool {
        let Some(up) = self.shards[s].core.take_up() else {
            return false;
        };
        let (results, fx) = self.seq.core.up(&self.seq.db, self.seq.now, up);
        self.seq.apply(fx);
        let f = &mut self.shards[s];
        let fx = f.core.up_answered(f.now, Some(results));
        f.apply(fx);
        true
    }

    /// One batch down to shard `s` and its answer back; false when it had none.
    fn down(&mut self, s: usize) -> bool {
        let Some(batch) = self.seq.core.take_down(s as u32) else {
            return false;
        };
        self.deliver(s, batch);
        true
    }

    fn deliver(&mut self, s: usize, batch: super::shard::Down) {
        let f = &mut self.shards[s];
        let answer = match f.core.deliver(&f.db, f.now, batch.clone()) {
            Ok(super::sharded::Delivered::Done(a, fx)) => {
                f.apply(fx);
                Some(a)
            }
            Ok(super::sharded::Delivered::Gap { after, before }) => {
                let fill = self
                    .seq
                    .core
                    .fill(&self.seq.db, after, before)
                    .unwrap_or_else(|e| panic!("{e}"));
                let f = &mut self.shards[s];
                let mut last = None;
                for b in [fill, batch] {
                    match f.core.deliver_anyway(&f.db, f.now, b) {
                        Ok(super::sharded::Delivered::Done(a, fx)) => {
                            f.apply(fx);
                            last = Some(a);
                        }
                        other => panic!("after a fill: {other:?}"),
                    }
                }
                last
            }
            Err(e) => panic!("{e}"),
        };
        let fx = self.seq.core.shard_answered(&self.seq.db, s as u32, answer);
        self.seq.apply(fx);
    }

    /// Carries batches both ways until nothing moves.
    fn run(&mut self) {
        loop {
            let mut moved = false;
            for s in 0..self.shards.len() {
                moved |= self.up(s);
                moved |= self.down(s);
            }
            if !moved {
                return;
            }
        }
    }

    fn inbox(&self, h: u32) -> Vec<Value> {
        let s = self.shard_of(h);
        self.shards[s]
            .inbox
            .iter()
            .filter(|(to, _)| *to == h)
            .map(|(_, f)| f.clone())
            .collect()
    }

    fn seqs(&self, h: u32) -> Vec<u64> {
        self.shards[self.shard_of(h)].seqs(h)
    }
}

#[test]
fn sharded_sockets_on_every_shard_see_one_gapless_order_acks_behind_their_message() {
    let mut c = Cluster::new(3);
    let socks: Vec<u32> = (0..6)
        .map(|i| c.connect(i % 3, Fixture::request(&format!("u{i}"))))
        .collect();
    // Publishes from three shards interleave before any batch moves.
    for round in 0..4 {
        for (k, &h) in socks.iter().take(3).enumerate() {
            c.publish(h, &format!("m{k}-{round}"), true);
        }
    }
    c.run();
    let order: Vec<String> = c
        .inbox(socks[5])
        .iter()
        .filter(|f| f["type"] == "message")
        .map(|f| f["id"].as_str().unwrap_or_default().to_string())
        .collect();
    for &h in &socks {
        assert_eq!(c.seqs(h), (1..=12).collect::<Vec<u64>>(), "socket {h}");
        let ids: Vec<String> = c
            .inbox(h)
            .iter()
            .filter(|f| f["type"] == "message")
            .map(|f| f["id"].as_str().unwrap_or_default().to_string())
            .collect();
        assert_eq!(ids, order, "socket {h}: one order");
    }
    // Each publisher's own messages in its sending order, and each ack after its message.
    for (k, &h) in socks.iter().take(3).enumerate() {
        let mine: Vec<&String> = order
            .iter()
            .filter(|id| id.starts_with(&format!("m{k}-")))
            .collect();
        assert_eq!(mine.len(), 4);
        assert!(mine.windows(2).all(|w| w[0] < w[1]), "{mine:?}");
        let frames = c.inbox(h);
        for (at, ack) in frames
            .iter()
            .enumerate()
            .filter(|(_, f)| f["type"] == "ack")
        {
            let msg = frames
                .iter()
                .position(|f| f["type"] == "message" && f["seq"] == ack["seq"]);
            assert!(msg.is_some_and(|m| m < at), "ack {ack} after its message");
        }
    }
    assert_eq!(c.seq.core.fanout_seq(), Some(12));
}

#[test]
fn sharded_echo_false_skips_only_the_publisher_across_shards() {
    let mut c = Cluster::new(2);
    let a = c.connect(0, Fixture::request("a"));
    let b = c.connect(1, Fixture::request("b"));
    c.publish(a, "quiet", false);
    c.run();
    assert_eq!(c.seqs(a), Vec::<u64>::new());
    assert_eq!(c.seqs(b), vec![1]);
    let acks: Vec<Value> = c
        .inbox(a)
        .into_iter()
        .filter(|f| f["type"] == "ack")
        .collect();
    assert_eq!(
        acks,
        vec![json!({"type":"ack","id":"quiet","seq":1,"duplicate":false})]
    );
    // A duplicate from the other shard: the original seq, nothing fanned out.
    c.publish(b, "quiet", false);
    c.run();
    assert_eq!(c.seqs(b), vec![1]);
    let dup = c.inbox(b).into_iter().find(|f| f["type"] == "ack");
    assert_eq!(dup.map(|f| f["duplicate"].clone()), Some(json!(true)));
}

#[test]
fn sharded_join_while_batches_are_queued_gets_replay_then_live_each_seq_once() {
    let mut c = Cluster::new(2);
    let a = c.connect(0, Fixture::request("a"));
    let first = c.connect(1, Fixture::request("first"));
    for i in 0..3 {
        c.publish(a, &format!("x{i}"), false);
    }
    // The publishes are sequenced, but shard 1 has not received them yet.
    assert!(c.up(0));
    // A socket resuming from seq 1 joins shard 1 now; its welcome is queued behind 1..3.
    let h = c.next;
    c.next += 1;
    let f = &mut c.shards[1];
    let req = ConnectRequest {
        since: Some(1),
        epoch: Some("e_test".into()),
        ..Fixture::request("late")
    };
    let fx = f
        .core
        .connect(&f.db, f.now, h, Fixture::conn(h), &req)
        .unwrap_or_else(|e| panic!("{e}"));
    f.apply(fx);
    c.home.push((h, 1));
    // Frames it sends before its welcome wait for it.
    c.publish(h, "early", false);
    c.run();
    let frames = c.inbox(h);
    assert_eq!(frames[0]["type"], "welcome");
    assert_eq!(frames[0]["seq"], 3);
    assert_eq!(
        frames[0]["resume"],
        json!({"requested":true,"recovered":true,"replayed":2})
    );
    assert_eq!(c.seqs(h), vec![2, 3], "the replay, then nothing twice");
    assert!(frames
        .iter()
        .any(|f| f["type"] == "ack" && f["id"] == "early"));
    assert_eq!(c.seqs(first), vec![1, 2, 3, 4]);
    let presence = c.shards[0].frames(a, "presence");
    assert_eq!(
        presence
            .iter()
            .map(|p| p["user"].clone())
            .collect::<Vec<_>>(),
        vec![json!("first"), json!("late")]
    );
}

#[test]
fn sharded_sequencer_restart_resends_and_shards_drop_repeats() {
    let mut c = Cluster::new(2);
    let a = c.connect(0, Fixture::request("a"));
    let b = c.connect(1, Fixture::request("b"));
    for i in 0..3 {
        c.publish(a, &format!("y{i}"), false);
    }
    c.run();
    c.publish(a, "y3", false);
    assert!(c.up(0));
    // The sequencer stops with seq 4 stored but not fanned out: a new core over the same
    // storage queues everything after the stored fanout_seq again, ahead of anything new.
    let db = std::mem::replace(&mut c.seq.db, lite());
    c.seq = Fixture::on(db, limits());
    let fx = c
        .seq
        .core
        .become_sequencer(&c.seq.db, NOW, "/lobby", 2)
        .unwrap_or_else(|e| panic!("{e}"));
    c.seq.apply(fx);
    c.run();
    assert_eq!(
        c.seqs(b),
        vec![1, 2, 3, 4],
        "4 resent, 1..3 dropped as repeats"
    );
    assert_eq!(c.seq.core.fanout_seq(), Some(4));
    // A batch that vanished on its way (the shard never got 5..6) makes the next one a
    // gap at the shard, which fills it from the sequencer's history first.
    c.publish(a, "y4", false);
    c.publish(a, "y5", false);
    assert!(c.up(0));
    assert!(c.down(0));
    let lost = c.seq.core.take_down(1).map(|d| (d.from_seq, d.to_seq));
    assert_eq!(lost, Some((5, 6)));
    let fx = c.seq.core.shard_answered(
        &c.seq.db,
        1,
        Some(super::shard::DownAnswer {
            delivered_seq: 4,
            connections: 1,
        }),
    );
    c.seq.apply(fx);
    c.publish(a, "y6", false);
    c.run();
    assert_eq!(c.seqs(b), vec![1, 2, 3, 4, 5, 6, 7], "5..6 filled, then 7");
    assert_eq!(c.seq.core.fanout_seq(), Some(7));
}

#[test]
fn sharded_presence_survives_the_sequencer_and_a_restarted_shard_reports_its_users() {
    let mut c = Cluster::new(2);
    let _a = c.connect(0, Fixture::request("a"));
    let b = c.connect(1, Fixture::request("b"));
    c.run();
    // The sequencer starts again (evicted while idle): presence comes back from storage.
    let db = std::mem::replace(&mut c.seq.db, lite());
    c.seq = Fixture::on(db, limits());
    let fx = c
        .seq
        .core
        .become_sequencer(&c.seq.db, NOW, "/lobby", 2)
        .unwrap_or_else(|e| panic!("{e}"));
    c.seq.apply(fx);
    let late = c.connect(1, Fixture::request("late"));
    let w = &c.inbox(late)[0];
    assert_eq!(w["presence"]["count"], 3, "{w}");
    // Shard 0 restarts without its sockets (a deploy): its first batch lists its users,
    // and the sequencer announces that `a` left.
    let db = std::mem::replace(&mut c.shards[0].db, lite());
    c.shards[0] = Fixture::on(db, limits());
    let f = &mut c.shards[0];
    f.core
        .become_shard(&f.db, "/lobby#0", 0)
        .unwrap_or_else(|e| panic!("{e}"));
    f.next = 100;
    c.next = 100;
    let _fresh = c.connect(0, Fixture::request("fresh"));
    let ops: Vec<(Value, Value)> = c.shards[1]
        .frames(b, "presence")
        .iter()
        .map(|p| (p["op"].clone(), p["user"].clone()))
        .collect();
    assert!(ops.contains(&(json!("leave"), json!("a"))), "{ops:?}");
    assert!(ops.contains(&(json!("join"), json!("fresh"))), "{ops:?}");
}

#[test]
fn sharded_a_room_that_becomes_sharded_keeps_its_log_and_starts_its_shards_at_the_head() {
    let mut plain = Fixture::new(limits());
    let a = plain.connect("a");
    for i in 0..3 {
        plain.publish(a, &format!("old{i}"));
    }
    // The next deploy lists the room in SHARDED_ROOMS: the same object is its sequencer.
    let mut c = Cluster::new(2);
    let db = std::mem::replace(&mut plain.db, lite());
    c.seq = Fixture::on(db, limits());
    let fx = c
        .seq
        .core
        .become_sequencer(&c.seq.db, NOW, "/lobby", 2)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        !fx.iter().any(|e| matches!(e, Effect::Pump)),
        "nothing to resend"
    );
    c.seq.apply(fx);
    let b = c.connect(1, Fixture::request("b"));
    let w = &c.inbox(b)[0];
    assert_eq!(
        (w["seq"].clone(), w["epoch"].clone()),
        (json!(3), json!("e_test"))
    );
    let d = c.connect(0, Fixture::request("d"));
    c.publish(d, "new", false);
    c.run();
    assert_eq!(c.seqs(b), vec![4], "no old message, then the new one");
}

#[test]
fn sharded_a_join_the_sequencer_did_not_take_closes_the_socket() {
    let mut c = Cluster::new(1);
    let f = &mut c.shards[0];
    let fx = f
        .core
        .connect(&f.db, f.now, 9, Fixture::conn(9), &Fixture::request("x"))
        .unwrap_or_else(|e| panic!("{e}"));
    f.apply(fx);
    assert!(f.core.take_up().is_some());
    let fx = f.core.up_answered(f.now, None);
    f.apply(fx);
    assert_eq!(f.closed, vec![(9, crate::error::close::INTERNAL)]);
    // Its user is no longer counted: a new socket of the same user joins afresh.
    let h = c.connect(0, Fixture::request("x"));
    assert_eq!(c.inbox(h)[0]["presence"]["count"], 1);
}
