//! Frames the room has queued for its sockets but not sent yet, and how one flush turns
//! them into one WebSocket message per socket: a single frame, or a JSON array of frames
//! (contract §5: "the server may coalesce").
//!
//! Why queue at all: in workerd a `send()` costs far more than its bytes — each one starts
//! a pump coroutine, waits on the output gate and writes through the socket stack (see
//! docs/performance.md) — so at 1→N fan-out the room's CPU is almost all per-send
//! overhead. The room flushes when its current burst of work is done (a zero-delay timer,
//! which workerd fires only once no other work is ready), so an idle room sends at once and
//! a busy one sends each socket one message per burst instead of one per frame.
//!
//! Order is per socket: every frame for a socket — broadcasts, acks, errors — goes through
//! the same queue while anything is queued, so a socket sees them in the order the room
//! produced them. A socket accepted mid-burst gets a `since` mark and receives only what
//! was queued after it joined (its `welcome` already counts the rest).
//!
//! Plain Rust with no runtime types, so it is unit-tested natively.

use std::collections::{HashMap, HashSet};

/// Most frames in one coalesced message; a socket with more queued leaves them in several
/// messages. Presence frames are ~60 bytes, so a join storm's batch fits in one message
/// per socket; why 1,000 rather than 100 is measured in docs/performance.md (the ramp).
pub const MAX_FRAMES_PER_MESSAGE: usize = 1000;

/// Most bytes in one coalesced message, so that coalescing never makes a message much
/// bigger than the largest single frame: a thousand frames of up to `MAX_MESSAGE_BYTES`
/// each could otherwise reach tens of megabytes, beyond what many clients accept. A frame larger than
/// this still leaves, alone.
pub const MAX_BYTES_PER_MESSAGE: usize = 256 * 1024;

/// How long presence frames may wait for a flush in a room with `sockets` sockets: a
/// quarter of a millisecond per socket, at most two seconds. Every flush costs one send
/// per socket, so this holds a join storm's presence traffic to about 4,000 sends a
/// second whatever the room's size (until the cap, at 8,000 sockets), while rooms of a
/// few sockets still see joins at once. (Pusher caps presence channels at 100 members;
/// here a 2,000-socket room shows a join within half a second.)
pub fn presence_delay_ms(sockets: usize) -> i64 {
    (sockets / 4).min(2000) as i64
}

/// Who a queued frame is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum To {
    /// Every socket, except the connection named (a publisher without `echo`).
    All { except: Option<String> },
    /// Every socket that receives presence events (it did not connect with
    /// `presence=off`), except the connection named (the one joining or leaving).
    Watchers { except: String },
    /// One connection (an ack or an error).
    One(String),
}

/// What makes two ephemeral messages the same signal (contract §B): the sender's
/// connection (`None` for the server API), the event and the optional key.
pub type Conflation = (Option<String>, String, Option<String>);

#[derive(Debug)]
struct Item {
    mark: u64,
    frame: String,
    to: To,
    /// An ephemeral message: may be conflated, and is the first thing a slow socket loses.
    ephemeral: bool,
    /// Replaced by a newer message of the same signal before it was sent.
    replaced: bool,
}

/// The queue.
#[derive(Debug, Default)]
pub struct Outbox {
    items: Vec<Item>,
    /// Mark of the next queued frame; only grows.
    next: u64,
    /// Where each queued ephemeral signal is, for conflation.
    signals: HashMap<Conflation, usize>,
}

impl Outbox {
    /// The mark for a socket accepted now: it receives frames queued from now on.
    pub fn mark(&self) -> u64 {
        self.next
    }

    /// Queues `frame` for `to`.
    pub fn push(&mut self, frame: String, to: To) {
        self.push_item(frame, to, false);
    }

    /// Queues an ephemeral message. A queued, unsent message of the same signal is
    /// replaced: a room that is behind sends the latest of each signal, not the backlog.
    /// The newer message takes the end of the queue (its place among other frames does
    /// not matter: ephemeral messages are unordered with respect to `seq`), so a socket
    /// that joined in between still gets it.
    pub fn push_ephemeral(&mut self, frame: String, to: To, signal: Conflation) {
        if let Some(&old) = self.signals.get(&signal) {
            if let Some(item) = self.items.get_mut(old) {
                item.replaced = true;
                item.frame = String::new();
            }
        }
        self.signals.insert(signal, self.items.len());
        self.push_item(frame, to, true);
    }

    fn push_item(&mut self, frame: String, to: To, ephemeral: bool) {
        self.items.push(Item {
            mark: self.next,
            frame,
            to,
            ephemeral,
            replaced: false,
        });
        self.next += 1;
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Takes everything queued as one batch.
    pub fn take(&mut self) -> Batch {
        self.signals.clear();
        Batch::new(std::mem::take(&mut self.items))
    }

    /// The messages queued for one socket (accepted at mark `since`), for a socket about
    /// to be closed: it gets them before its close frame, and is then no longer among the
    /// sockets a flush sends to.
    pub fn pending_for(&self, conn: &str, since: u64, watches: bool) -> Vec<String> {
        messages(
            self.items
                .iter()
                .filter(|i| !i.replaced && i.mark >= since && reaches(&i.to, conn, watches))
                .map(|i| i.frame.as_str()),
        )
    }
}

/// What one socket gets from a batch.
#[derive(Debug, PartialEq, Eq)]
pub enum Payload {
    /// The batch's shared messages for its kind of socket ([`Batch::shared`]): the common
    /// case, converted to JS strings once for every such socket.
    Shared,
    /// Messages of its own (it is named by an item, or joined mid-batch).
    Own(Vec<String>),
    /// Nothing in this batch is for it.
    Nothing,
}

/// Frames taken from the queue together.
#[derive(Debug)]
pub struct Batch {
    items: Vec<Item>,
    /// Connections named by any item: they may need a message of their own.
    named: HashSet<String>,
    /// The messages for every other socket that was there before the batch began.
    shared: Vec<String>,
    /// The same for sockets that opted out of presence events, when that differs (the
    /// batch holds presence frames).
    quiet: Option<Vec<String>>,
    /// Whether any item is ephemeral (a slow socket may then be sent less).
    has_ephemeral: bool,
    /// Frames in the shared messages: for sockets that opted out of presence, and for
    /// those that receive it.
    shared_frames: [usize; 2],
}

impl Batch {
    fn new(mut items: Vec<Item>) -> Batch {
        items.retain(|i| !i.replaced);
        let mut named = HashSet::new();
        for item in &items {
            match &item.to {
                To::All { except: Some(c) } | To::Watchers { except: c } | To::One(c) => {
                    named.insert(c.clone());
                }
                To::All { except: None } => {}
            }
        }
        let shared = messages(
            items
                .iter()
                .filter(|i| !matches!(i.to, To::One(_)))
                .map(|i| i.frame.as_str()),
        );
        let quiet = items
            .iter()
            .any(|i| matches!(i.to, To::Watchers { .. }))
            .then(|| {
                messages(
                    items
                        .iter()
                        .filter(|i| matches!(i.to, To::All { .. }))
                        .map(|i| i.frame.as_str()),
                )
            });
        let has_ephemeral = items.iter().any(|i| i.ephemeral);
        let all = items
            .iter()
            .filter(|i| matches!(i.to, To::All { .. }))
            .count();
        let watched = items.iter().filter(|i| !matches!(i.to, To::One(_))).count();
        Batch {
            items,
            named,
            shared,
            quiet,
            has_ephemeral,
            shared_frames: [all, watched],
        }
    }

    /// Whether the batch holds no frames.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// How many frames the batch holds.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// The messages for sockets that get [`Payload::Shared`] — those that receive
    /// presence events when `watches`, the others otherwise; empty when no frame is for
    /// every such socket.
    pub fn shared(&self, watches: bool) -> &[String] {
        match (&self.quiet, watches) {
            (Some(quiet), false) => quiet,
            _ => &self.shared,
        }
    }

    /// What the socket `conn`, accepted at mark `since`, gets from this batch; `watches`
    /// says whether it receives presence events.
    pub fn payload(&self, conn: &str, since: u64, watches: bool) -> Payload {
        let first = self.items.first().map_or(u64::MAX, |i| i.mark);
        if since <= first && !self.named.contains(conn) {
            return if self.shared(watches).is_empty() {
                Payload::Nothing
            } else {
                Payload::Shared
            };
        }
        self.own(conn, since, watches, true)
    }

    /// How many frames `payload` (this batch's, for that socket) carries.
    pub fn frames(&self, payload: &Payload, conn: &str, since: u64, watches: bool) -> usize {
        match payload {
            Payload::Shared => self.shared_frames[usize::from(watches)],
            Payload::Nothing => 0,
            Payload::Own(_) => self
                .items
                .iter()
                .filter(|i| i.mark >= since && reaches(&i.to, conn, watches))
                .count(),
        }
    }

    /// [`Batch::payload`] without the ephemeral messages: what a socket that is behind
    /// still gets (contract §C). `None` when that is the same as its full payload.
    pub fn without_ephemeral(&self, conn: &str, since: u64, watches: bool) -> Option<Payload> {
        self.has_ephemeral
            .then(|| self.own(conn, since, watches, false))
    }

    fn own(&self, conn: &str, since: u64, watches: bool, ephemeral: bool) -> Payload {
        let own = messages(
            self.items
                .iter()
                .filter(|i| (ephemeral || !i.ephemeral) && i.mark >= since)
                .filter(|i| reaches(&i.to, conn, watches))
                .map(|i| i.frame.as_str()),
        );
        if own.is_empty() {
            Payload::Nothing
        } else {
            Payload::Own(own)
        }
    }
}

/// Total bytes of some messages.
pub fn bytes(messages: &[String]) -> u64 {
    messages.iter().map(|m| m.len() as u64).sum()
}

fn reaches(to: &To, conn: &str, watches: bool) -> bool {
    match to {
        To::All { except } => except.as_deref() != Some(conn),
        To::Watchers { except } => watches && except != conn,
        To::One(c) => c == conn,
    }
}

/// The WebSocket messages carrying `frames`, in order: chunks of at most
/// [`MAX_FRAMES_PER_MESSAGE`] frames and [`MAX_BYTES_PER_MESSAGE`] bytes (unless one
/// frame alone is bigger), a lone frame as itself, several as a JSON array.
/// Also used for replays, which are coalesced the same way.
pub fn messages<'a>(frames: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut out = Vec::new();
    let mut chunk: Vec<&str> = Vec::new();
    let mut bytes = 0;
    for frame in frames {
        let full = chunk.len() == MAX_FRAMES_PER_MESSAGE
            || (!chunk.is_empty() && bytes + frame.len() + 1 > MAX_BYTES_PER_MESSAGE);
        if full {
            out.push(join(&chunk));
            chunk.clear();
            bytes = 1;
        }
        bytes += frame.len() + 1;
        chunk.push(frame);
    }
    if !chunk.is_empty() {
        out.push(join(&chunk));
    }
    out
}

fn join(frames: &[&str]) -> String {
    match frames {
        [one] => (*one).to_string(),
        many => {
            let len = many.iter().map(|f| f.len() + 1).sum::<usize>() + 1;
            let mut out = String::with_capacity(len);
            out.push('[');
            for (i, f) in many.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(f);
            }
            out.push(']');
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> To {
        To::All { except: None }
    }

    /// The socket's messages from `batch`, joined with `|` (`None` when there are none).
    fn got(batch: &Batch, conn: &str, since: u64) -> Option<String> {
        got_as(batch, conn, since, true)
    }

    /// Like [`got`], for a socket that receives presence events only when `watches`.
    fn got_as(batch: &Batch, conn: &str, since: u64, watches: bool) -> Option<String> {
        let messages = match batch.payload(conn, since, watches) {
            Payload::Shared => batch.shared(watches).to_vec(),
            Payload::Own(m) => m,
            Payload::Nothing => return None,
        };
        Some(messages.join("|"))
    }

    #[test]
    fn presence_waits_longer_in_bigger_rooms_up_to_a_second() {
        assert_eq!(presence_delay_ms(3), 0);
        assert_eq!(presence_delay_ms(100), 25);
        assert_eq!(presence_delay_ms(2000), 500);
        assert_eq!(presence_delay_ms(32_768), 2000);
    }

    #[test]
    fn one_frame_leaves_as_itself() {
        let mut q = Outbox::default();
        q.push(r#"{"a":1}"#.into(), all());
        let b = q.take();
        assert!(q.is_empty());
        assert_eq!(b.payload("c_1", 0, true), Payload::Shared);
        assert_eq!(b.shared(true), [r#"{"a":1}"#.to_string()]);
    }

    #[test]
    fn a_burst_leaves_as_one_array_in_order() {
        let mut q = Outbox::default();
        for i in 0..3 {
            q.push(format!(r#"{{"n":{i}}}"#), all());
        }
        let b = q.take();
        assert_eq!(b.len(), 3);
        assert_eq!(
            got(&b, "c_1", 0).as_deref(),
            Some(r#"[{"n":0},{"n":1},{"n":2}]"#)
        );
    }

    #[test]
    fn the_publisher_is_skipped_and_gets_its_ack_after_earlier_frames() {
        let mut q = Outbox::default();
        q.push("{\"m\":1}".into(), all());
        q.push(
            "{\"m\":2}".into(),
            To::All {
                except: Some("c_pub".into()),
            },
        );
        q.push("{\"ack\":2}".into(), To::One("c_pub".into()));
        let b = q.take();
        assert_eq!(got(&b, "c_x", 0).as_deref(), Some("[{\"m\":1},{\"m\":2}]"));
        assert!(matches!(b.payload("c_pub", 0, true), Payload::Own(_)));
        assert_eq!(
            got(&b, "c_pub", 0).as_deref(),
            Some("[{\"m\":1},{\"ack\":2}]")
        );
    }

    #[test]
    fn a_socket_joining_mid_burst_gets_only_what_followed() {
        let mut q = Outbox::default();
        q.push("{\"m\":1}".into(), all());
        let since = q.mark();
        q.push("{\"m\":2}".into(), all());
        let b = q.take();
        assert_eq!(got(&b, "c_new", since).as_deref(), Some("{\"m\":2}"));
        assert_eq!(
            got(&b, "c_old", 0).as_deref(),
            Some("[{\"m\":1},{\"m\":2}]")
        );
        // Joined after everything in the batch: nothing.
        assert_eq!(b.payload("c_later", since + 1, true), Payload::Nothing);
    }

    #[test]
    fn big_frames_leave_in_messages_bounded_by_bytes() {
        let big = format!("\"{}\"", "x".repeat(100 * 1024));
        let huge = format!("\"{}\"", "y".repeat(MAX_BYTES_PER_MESSAGE + 10));
        let frames = [big.as_str(), big.as_str(), big.as_str(), huge.as_str(), "1"];
        let out = messages(frames);
        // Two 100 KiB frames fit in 256 KiB, a third does not; the oversized one goes
        // alone; the small one after it starts a new message.
        let counts: Vec<usize> = out
            .iter()
            .map(|m| match serde_json::from_str::<serde_json::Value>(m) {
                Ok(serde_json::Value::Array(a)) => a.len(),
                _ => 1,
            })
            .collect();
        assert_eq!(counts, vec![2, 1, 1, 1]);
        assert!(out.iter().take(2).all(|m| m.len() <= MAX_BYTES_PER_MESSAGE));
        assert_eq!(out[2], huge);
        assert_eq!(out[3], "1");
    }

    #[test]
    fn frames_for_one_socket_do_not_reach_others() {
        let mut q = Outbox::default();
        q.push("{\"err\":1}".into(), To::One("c_a".into()));
        let b = q.take();
        assert!(b.shared(true).is_empty());
        assert_eq!(b.payload("c_b", 0, true), Payload::Nothing);
        assert_eq!(got(&b, "c_a", 0).as_deref(), Some("{\"err\":1}"));
    }

    #[test]
    fn long_queues_leave_in_bounded_messages_per_socket() {
        let mut q = Outbox::default();
        for i in 0..(MAX_FRAMES_PER_MESSAGE * 2 + 1) {
            q.push(format!("{i}"), all());
            // Acks for the publisher do not eat into everyone else's messages.
            q.push(format!("\"ack{i}\""), To::One("c_pub".into()));
        }
        let b = q.take();
        assert!(q.is_empty());
        let sizes: Vec<usize> = b
            .shared(true)
            .iter()
            .map(|m| match serde_json::from_str::<serde_json::Value>(m) {
                Ok(serde_json::Value::Array(a)) => a.len(),
                _ => 1,
            })
            .collect();
        assert_eq!(
            sizes,
            vec![MAX_FRAMES_PER_MESSAGE, MAX_FRAMES_PER_MESSAGE, 1]
        );
        let mut seen = Vec::new();
        for m in b.shared(true) {
            match serde_json::from_str::<serde_json::Value>(m).unwrap_or_default() {
                serde_json::Value::Array(a) => seen.extend(a),
                other => seen.push(other),
            }
        }
        let expected: Vec<serde_json::Value> = (0..(MAX_FRAMES_PER_MESSAGE * 2 + 1))
            .map(|i| serde_json::Value::from(i as u64))
            .collect();
        assert_eq!(seen, expected);
        // The publisher's own messages interleave its acks: twice the frames, same bound.
        match b.payload("c_pub", 0, true) {
            Payload::Own(m) => assert_eq!(m.len(), 5),
            other => panic!("expected own messages, got {other:?}"),
        }
    }

    #[test]
    fn presence_frames_skip_sockets_that_opted_out_and_the_one_they_announce() {
        let mut q = Outbox::default();
        q.push("{\"m\":1}".into(), all());
        q.push(
            "{\"join\":\"c_new\"}".into(),
            To::Watchers {
                except: "c_new".into(),
            },
        );
        q.push("{\"m\":2}".into(), all());
        let b = q.take();
        assert_eq!(
            got_as(&b, "c_w", 0, true).as_deref(),
            Some("[{\"m\":1},{\"join\":\"c_new\"},{\"m\":2}]")
        );
        assert_eq!(b.payload("c_q", 0, false), Payload::Shared);
        assert_eq!(
            got_as(&b, "c_q", 0, false).as_deref(),
            Some("[{\"m\":1},{\"m\":2}]")
        );
        assert_eq!(
            got_as(&b, "c_new", 0, true).as_deref(),
            Some("[{\"m\":1},{\"m\":2}]")
        );
        // A batch of presence alone is nothing for a socket that opted out.
        let mut q = Outbox::default();
        q.push(
            "{\"leave\":1}".into(),
            To::Watchers {
                except: "c_gone".into(),
            },
        );
        let b = q.take();
        assert_eq!(b.payload("c_q", 0, false), Payload::Nothing);
        assert_eq!(got_as(&b, "c_w", 0, true).as_deref(), Some("{\"leave\":1}"));
    }

    fn signal(conn: &str, key: Option<&str>) -> Conflation {
        (Some(conn.into()), "cursor".into(), key.map(str::to_string))
    }

    #[test]
    fn a_newer_signal_replaces_the_queued_one() {
        let mut q = Outbox::default();
        q.push_ephemeral("{\"x\":1}".into(), all(), signal("c_a", None));
        q.push("{\"m\":1}".into(), all());
        q.push_ephemeral("{\"y\":1}".into(), all(), signal("c_b", None));
        q.push_ephemeral("{\"x\":2}".into(), all(), signal("c_a", None));
        // Another key is another signal.
        q.push_ephemeral("{\"k\":1}".into(), all(), signal("c_a", Some("pen")));
        q.push_ephemeral("{\"x\":3}".into(), all(), signal("c_a", None));
        let b = q.take();
        assert_eq!(
            got(&b, "c_z", 0).as_deref(),
            Some("[{\"m\":1},{\"y\":1},{\"k\":1},{\"x\":3}]")
        );
        // Once sent, a signal is not conflated with what comes next.
        q.push_ephemeral("{\"x\":4}".into(), all(), signal("c_a", None));
        assert_eq!(got(&q.take(), "c_z", 0).as_deref(), Some("{\"x\":4}"));
    }

    #[test]
    fn a_slow_socket_can_be_sent_the_durable_frames_only() {
        let mut q = Outbox::default();
        q.push_ephemeral("{\"e\":1}".into(), all(), signal("c_a", None));
        q.push("{\"m\":1}".into(), all());
        let b = q.take();
        assert_eq!(
            b.without_ephemeral("c_z", 0, true),
            Some(Payload::Own(vec!["{\"m\":1}".into()]))
        );
        let mut q = Outbox::default();
        q.push("{\"m\":1}".into(), all());
        assert_eq!(q.take().without_ephemeral("c_z", 0, true), None);
    }

    #[test]
    fn a_closing_socket_gets_what_was_queued_for_it() {
        let mut q = Outbox::default();
        q.push("{\"m\":1}".into(), all());
        let late = q.mark();
        q.push("{\"ack\":1}".into(), To::One("c_a".into()));
        q.push(
            "{\"m\":2}".into(),
            To::All {
                except: Some("c_a".into()),
            },
        );
        assert_eq!(
            q.pending_for("c_a", 0, true),
            vec!["[{\"m\":1},{\"ack\":1}]".to_string()]
        );
        assert_eq!(
            q.pending_for("c_b", late, true),
            vec!["{\"m\":2}".to_string()]
        );
        assert_eq!(bytes(&q.pending_for("c_b", 0, true)), 17);
    }
}
