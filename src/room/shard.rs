//! One logical room over many Durable Objects (docs/sharding.md): placement, the wire
//! types between a room's sequencer and its shards, and the shard's delivery order.
//!
//! Plain Rust like the rest of the core: the Durable Object glue (`room/mod.rs`,
//! `room/fanout.rs`) only carries these values over `fetch`.
//!
//! * Placement: a socket goes to shard `fnv1a(tenant/room, user) mod ROOM_SHARDS`, so all
//!   of a user's sockets share one shard (the per-user cap and presence stay local).
//! * Up (shard → sequencer): [`Up`], a batch of [`UpItem`]s, one batch in flight per shard
//!   so a shard's publishes are sequenced in the order its sockets sent them.
//! * Down (sequencer → shard): [`Down`], a batch of [`DownItem`]s in seq order, one batch
//!   in flight per shard ([`super::sequencer`]); [`Delivery`] drops repeats and finds gaps.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::protocol::From;

/// The Durable Object name of shard `i` of the room whose object key is `room_key`
/// (`tenant/room`). Neither a tenant nor a room name may contain `#`, so no ordinary room
/// key can collide with a shard's.
pub fn shard_key(room_key: &str, i: u32) -> String {
    format!("{room_key}#{i}")
}

/// Splits an object name into the room key and, for a shard, its index.
pub fn parse_key(name: &str) -> (&str, Option<u32>) {
    match name.rsplit_once('#') {
        Some((room, i)) => match i.parse::<u32>() {
            Ok(i) => (room, Some(i)),
            Err(_) => (name, None),
        },
        None => (name, None),
    }
}

/// The shard (0..`shards`) that holds `user`'s sockets in the room keyed `room_key`:
/// FNV-1a (64 bit) over the key, a 0 byte and the user. Stable across deploys and
/// platforms (no std hasher, whose seed may change), and cheap in the Worker.
pub fn placement(room_key: &str, user: &str, shards: u32) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in room_key
        .as_bytes()
        .iter()
        .chain(&[0u8])
        .chain(user.as_bytes())
    {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % u64::from(shards.max(1))) as u32
}

/// A shard's request to its sequencer: what its sockets did, in order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Up {
    /// The shard's index.
    pub shard: u32,
    /// Its open sockets (for `delivered` counts in publish answers).
    pub connections: usize,
    /// What happened, in order.
    pub items: Vec<UpItem>,
}

/// One thing a shard tells its sequencer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum UpItem {
    /// A durable publish from a socket (already admitted by the shard).
    Publish {
        /// Event id.
        id: String,
        /// Event name.
        event: String,
        /// Payload.
        data: Box<RawValue>,
        /// The publisher.
        from: From,
        /// The connection that skips it (`echo:false`).
        except: Option<String>,
    },
    /// An ephemeral publish from a socket.
    Ephemeral {
        /// The publisher's id, if any.
        id: Option<String>,
        /// Event name.
        event: String,
        /// Conflation key.
        key: Option<String>,
        /// Payload.
        data: Box<RawValue>,
        /// The publisher.
        from: From,
        /// The connection that skips it.
        except: Option<String>,
    },
    /// A socket joins: the sequencer answers with a [`DownItem::Welcome`] in the shard's
    /// delivery stream, exactly where the shard has delivered the welcome's `seq`.
    Join {
        /// The joining connection.
        conn: String,
        /// Its user.
        user: String,
        /// Its user's `info`.
        info: Option<String>,
        /// Whether this is the user's first socket in the room (a presence `join`).
        joined: bool,
        /// Resume.
        since: Option<u64>,
        /// Resume.
        epoch: Option<String>,
    },
    /// The users present through this shard, sent once after each start of the shard
    /// (first in its first batch): the sequencer announces `leave` for any it still counts
    /// on this shard that are gone — the shard restarted without its sockets.
    Users {
        /// The users.
        users: Vec<String>,
    },
    /// A user's last socket left (a presence `leave`).
    Leave {
        /// The connection that left.
        conn: String,
        /// Its user.
        user: String,
        /// Its user's `info`.
        info: Option<String>,
    },
}

/// The sequencer's answer to one [`UpItem`], in the same order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum UpResult {
    /// A durable publish was sequenced (or was a duplicate of `seq`).
    Published {
        /// Assigned or original seq.
        seq: u64,
        /// Whether the id had been seen.
        duplicate: bool,
    },
    /// Nothing to report (ephemeral, join, leave).
    Done,
    /// The item failed (storage); the client is told `internal` and may retry.
    Failed,
}

/// A batch of the room's traffic for one shard. `from_seq..=to_seq` is the range of
/// durable seqs the batch covers (`to_seq < from_seq` when it holds none): the shard
/// checks it against what it delivered before.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Down {
    /// First durable seq covered.
    pub from_seq: u64,
    /// Last durable seq covered.
    pub to_seq: u64,
    /// The items, in the room's order.
    pub items: Vec<DownItem>,
}

/// One item of a [`Down`] batch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum DownItem {
    /// A durable message frame.
    Message {
        /// Its seq.
        seq: u64,
        /// The `message` frame.
        frame: Box<RawValue>,
        /// The connection that skips it.
        except: Option<String>,
    },
    /// An ephemeral frame.
    Ephemeral {
        /// The frame.
        frame: Box<RawValue>,
        /// The connection that skips it.
        except: Option<String>,
        /// Conflation: publisher connection, event, key.
        conflation: (Option<String>, String, Option<String>),
    },
    /// A presence frame, for sockets that receive presence but `except`.
    Presence {
        /// The frame.
        frame: Box<RawValue>,
        /// The connection it is about.
        except: String,
    },
    /// The answer to a [`UpItem::Join`] of this shard.
    Welcome(Welcome),
    /// The `ack` of a publish from this shard, right behind its message.
    Ack {
        /// The publisher's connection.
        conn: String,
        /// The `ack` frame.
        frame: Box<RawValue>,
    },
}

/// What a joining socket needs from the sequencer, placed in the shard's delivery stream
/// right after message `seq`: every message up to `seq` reached the shard before it,
/// every later one after it, so the socket gets the replay and then live traffic, each
/// seq once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Welcome {
    /// The joining connection.
    pub conn: String,
    /// The log's epoch.
    pub epoch: String,
    /// The head when the join was sequenced.
    pub seq: u64,
    /// Whether a resume was asked for.
    pub requested: bool,
    /// Whether it succeeded.
    pub recovered: bool,
    /// The replay: `message` frames after `since` up to `seq`.
    pub replay: Vec<Box<RawValue>>,
    /// Users present in the room.
    pub count: usize,
    /// The first of them, with their `info`.
    pub users: Vec<(String, Box<RawValue>)>,
}

/// A shard's answer to a [`Down`] batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownAnswer {
    /// The last seq the shard has delivered.
    pub delivered_seq: u64,
    /// Its open sockets.
    pub connections: usize,
}

/// How a shard takes a batch, given what it delivered before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Take {
    /// Deliver these items (repeats already removed), then the head is `to_seq`.
    Deliver(Vec<DownItem>),
    /// Messages `after + 1 .. from_seq` are missing: fill them from the sequencer's
    /// history first, then take the batch again.
    Gap {
        /// What the shard delivered last.
        after: u64,
        /// The batch's first seq.
        from_seq: u64,
    },
}

impl PartialEq for DownItem {
    fn eq(&self, other: &Self) -> bool {
        serde_json::to_string(self).ok() == serde_json::to_string(other).ok()
    }
}
impl Eq for DownItem {}

/// The shard's side of the order: `delivered_seq` (stored once per batch) decides what
/// is new, what is a repeat and where a gap is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Delivery {
    /// The last seq delivered to this shard's sockets.
    pub delivered_seq: u64,
}

impl Delivery {
    /// Sorts a batch: a gap when its first durable seq is beyond `delivered_seq + 1`,
    /// otherwise the items with every durable message at or below `delivered_seq`
    /// removed (ephemeral, presence and welcome items always pass: they carry no seq).
    pub fn take(&self, batch: Down) -> Take {
        let has_durable = batch.to_seq >= batch.from_seq && batch.to_seq > 0;
        if has_durable && batch.from_seq > self.delivered_seq + 1 {
            return Take::Gap {
                after: self.delivered_seq,
                from_seq: batch.from_seq,
            };
        }
        let head = self.delivered_seq;
        let items = batch
            .items
            .into_iter()
            .filter(|item| !matches!(item, DownItem::Message { seq, .. } if *seq <= head))
            .collect();
        Take::Deliver(items)
    }

    /// Records that message `seq` was delivered (seqs arrive in order).
    pub fn advance(&mut self, seq: u64) {
        self.delivered_seq = self.delivered_seq.max(seq);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn msg(seq: u64) -> DownItem {
        DownItem::Message {
            seq,
            frame: RawValue::from_string(format!(r#"{{"seq":{seq}}}"#)).unwrap(),
            except: None,
        }
    }

    fn batch(from: u64, to: u64) -> Down {
        Down {
            from_seq: from,
            to_seq: to,
            items: (from..=to).map(msg).collect(),
        }
    }

    fn seqs(take: &Take) -> Vec<u64> {
        match take {
            Take::Deliver(items) => items
                .iter()
                .filter_map(|i| match i {
                    DownItem::Message { seq, .. } => Some(*seq),
                    _ => None,
                })
                .collect(),
            Take::Gap { .. } => panic!("a gap"),
        }
    }

    #[test]
    fn in_order_batches_are_delivered_whole() {
        let mut d = Delivery::default();
        let t = d.take(batch(1, 3));
        assert_eq!(seqs(&t), [1, 2, 3]);
        d.advance(3);
        assert_eq!(seqs(&d.take(batch(4, 4))), [4]);
    }

    #[test]
    fn repeats_are_dropped_and_overlaps_trimmed() {
        let d = Delivery { delivered_seq: 5 };
        assert_eq!(seqs(&d.take(batch(2, 4))), Vec::<u64>::new());
        assert_eq!(seqs(&d.take(batch(4, 7))), [6, 7]);
    }

    #[test]
    fn a_gap_asks_for_a_fill_first() {
        let d = Delivery { delivered_seq: 5 };
        assert_eq!(
            d.take(batch(8, 9)),
            Take::Gap {
                after: 5,
                from_seq: 8
            }
        );
    }

    #[test]
    fn batches_without_messages_always_pass() {
        let d = Delivery { delivered_seq: 5 };
        let presence = Down {
            from_seq: 6,
            to_seq: 5,
            items: vec![DownItem::Presence {
                frame: RawValue::from_string("{}".into()).unwrap(),
                except: "c".into(),
            }],
        };
        assert!(matches!(d.take(presence), Take::Deliver(items) if items.len() == 1));
    }

    #[test]
    fn placement_is_stable_and_spread() {
        // Pinned: a change here moves every user of every sharded room at the next deploy.
        assert_eq!(placement("/big", "alice", 8), placement("/big", "alice", 8));
        let pinned: Vec<u32> = ["alice", "bob", "carol", "dave"]
            .iter()
            .map(|u| placement("/big", u, 8))
            .collect();
        assert_eq!(pinned, PINNED);
        let mut counts = [0u32; 8];
        for i in 0..8000 {
            counts[placement("t/room", &format!("user{i}"), 8) as usize] += 1;
        }
        for c in counts {
            assert!((800..1200).contains(&c), "uneven spread {counts:?}");
        }
        assert_eq!(placement("/a", "u", 1), 0);
    }

    const PINNED: [u32; 4] = [0, 3, 5, 2];

    #[test]
    fn keys_name_the_shard() {
        assert_eq!(shard_key("t/room", 3), "t/room#3");
        assert_eq!(parse_key("t/room#3"), ("t/room", Some(3)));
        assert_eq!(parse_key("t/room"), ("t/room", None));
        assert_eq!(parse_key("/a"), ("/a", None));
    }
}
