//! The sequencer's fan-out to its shards (docs/sharding.md): one queue per shard and a
//! pipeline of depth one, so a shard never has two batches in flight and receives the
//! room's traffic in seq order even though requests between objects may overtake each
//! other.
//!
//! Plain Rust: the Durable Object asks [`Fanout::next`] for a shard's next batch, sends
//! it, and reports the shard's answer with [`Fanout::answered`] (or a failure with
//! [`Fanout::failed`], which puts the batch back at the front).

use std::collections::VecDeque;

use super::shard::{Down, DownAnswer, DownItem};

/// Most items in one batch to a shard. A burst larger than this is sent as several
/// batches, one after the other; 1,000 matches the outbox's coalescing of one socket send.
pub const MAX_BATCH_ITEMS: usize = 1000;

/// One shard's queue.
#[derive(Debug, Default)]
struct Queue {
    items: VecDeque<DownItem>,
    /// The batch in flight, kept until answered so a failure can resend it.
    in_flight: Option<Down>,
    /// The last seq the shard said it delivered (or the stored `fanout_seq` after a
    /// restart, which every shard had reached).
    acked: u64,
    /// Its open sockets, as it last said.
    connections: usize,
}

/// The per-shard queues.
#[derive(Debug)]
pub struct Fanout {
    queues: Vec<Queue>,
}

impl Fanout {
    /// `shards` empty queues; every shard is known to have delivered `fanout_seq`.
    pub fn new(shards: u32, fanout_seq: u64) -> Self {
        Fanout {
            queues: (0..shards)
                .map(|_| Queue {
                    acked: fanout_seq,
                    ..Queue::default()
                })
                .collect(),
        }
    }

    /// Number of shards.
    pub fn shards(&self) -> u32 {
        self.queues.len() as u32
    }

    /// Queues `item` for every shard.
    pub fn push_all(&mut self, item: &DownItem) {
        for q in &mut self.queues {
            q.items.push_back(item.clone());
        }
    }

    /// Queues `item` for one shard.
    pub fn push(&mut self, shard: u32, item: DownItem) {
        if let Some(q) = self.queues.get_mut(shard as usize) {
            q.items.push_back(item);
        }
    }

    /// The next batch for `shard`, if it has none in flight and something is queued; it
    /// is then in flight until answered.
    pub fn next(&mut self, shard: u32) -> Option<Down> {
        let q = self.queues.get_mut(shard as usize)?;
        if q.in_flight.is_some() || q.items.is_empty() {
            return None;
        }
        let n = q.items.len().min(MAX_BATCH_ITEMS);
        let items: Vec<DownItem> = q.items.drain(..n).collect();
        let mut seqs = items.iter().filter_map(|i| match i {
            DownItem::Message { seq, .. } => Some(*seq),
            _ => None,
        });
        let (from_seq, to_seq) = match seqs.next() {
            Some(first) => (first, seqs.next_back().unwrap_or(first)),
            None => (q.acked + 1, q.acked),
        };
        let batch = Down {
            from_seq,
            to_seq,
            items,
        };
        q.in_flight = Some(batch.clone());
        Some(batch)
    }

    /// Shards with a batch ready to go now.
    pub fn ready(&self) -> Vec<u32> {
        (0..self.shards())
            .filter(|&i| {
                let q = &self.queues[i as usize];
                q.in_flight.is_none() && !q.items.is_empty()
            })
            .collect()
    }

    /// `shard` answered its batch in flight.
    pub fn answered(&mut self, shard: u32, answer: DownAnswer) {
        if let Some(q) = self.queues.get_mut(shard as usize) {
            q.in_flight = None;
            q.acked = q.acked.max(answer.delivered_seq);
            q.connections = answer.connections;
        }
    }

    /// `shard` could not be reached: its batch goes back to the front of its queue.
    pub fn failed(&mut self, shard: u32) {
        if let Some(q) = self.queues.get_mut(shard as usize) {
            if let Some(batch) = q.in_flight.take() {
                for item in batch.items.into_iter().rev() {
                    q.items.push_front(item);
                }
            }
        }
    }

    /// Records a shard's socket count (it says so with each request).
    pub fn connections_of(&mut self, shard: u32, n: usize) {
        if let Some(q) = self.queues.get_mut(shard as usize) {
            q.connections = n;
        }
    }

    /// Sockets over all shards, as they last said.
    pub fn connections(&self) -> usize {
        self.queues.iter().map(|q| q.connections).sum()
    }

    /// The highest seq every shard has delivered.
    pub fn fanout_seq(&self) -> u64 {
        self.queues.iter().map(|q| q.acked).min().unwrap_or(0)
    }

    /// Shards idle (nothing queued or in flight) but behind `last_seq`: what a resend
    /// must cover, as (shard, the seq it delivered last).
    pub fn behind(&self, last_seq: u64) -> Vec<(u32, u64)> {
        (0..self.shards())
            .filter_map(|i| {
                let q = &self.queues[i as usize];
                (q.in_flight.is_none() && q.items.is_empty() && q.acked < last_seq)
                    .then_some((i, q.acked))
            })
            .collect()
    }

    /// Whether every queue is empty and nothing is in flight.
    pub fn idle(&self) -> bool {
        self.queues
            .iter()
            .all(|q| q.in_flight.is_none() && q.items.is_empty())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    fn msg(seq: u64) -> DownItem {
        DownItem::Message {
            seq,
            frame: RawValue::from_string(format!("{seq}")).unwrap(),
            except: None,
        }
    }

    #[test]
    fn one_batch_in_flight_per_shard() {
        let mut f = Fanout::new(2, 0);
        f.push_all(&msg(1));
        f.push_all(&msg(2));
        let b = f.next(0).unwrap();
        assert_eq!((b.from_seq, b.to_seq, b.items.len()), (1, 2, 2));
        f.push_all(&msg(3));
        assert!(f.next(0).is_none(), "shard 0 has a batch in flight");
        assert_eq!(f.ready(), [1]);
        let b1 = f.next(1).unwrap();
        assert_eq!((b1.from_seq, b1.to_seq), (1, 3));
        f.answered(
            0,
            DownAnswer {
                delivered_seq: 2,
                connections: 5,
            },
        );
        let b = f.next(0).unwrap();
        assert_eq!((b.from_seq, b.to_seq), (3, 3));
        assert_eq!(f.fanout_seq(), 0, "shard 1 has not answered");
        f.answered(
            1,
            DownAnswer {
                delivered_seq: 3,
                connections: 1,
            },
        );
        assert_eq!(f.fanout_seq(), 2);
        assert_eq!(f.connections(), 6);
    }

    #[test]
    fn a_failed_batch_is_sent_again_first() {
        let mut f = Fanout::new(1, 0);
        f.push_all(&msg(1));
        let _ = f.next(0).unwrap();
        f.push_all(&msg(2));
        f.failed(0);
        let b = f.next(0).unwrap();
        assert_eq!((b.from_seq, b.to_seq, b.items.len()), (1, 2, 2));
    }

    #[test]
    fn batches_without_messages_cover_no_seq() {
        let mut f = Fanout::new(1, 7);
        f.push(
            0,
            DownItem::Presence {
                frame: RawValue::from_string("{}".into()).unwrap(),
                except: "c".into(),
            },
        );
        let b = f.next(0).unwrap();
        assert!(b.to_seq < b.from_seq);
        assert_eq!(b.from_seq, 8);
    }

    #[test]
    fn idle_shards_behind_the_head_are_found() {
        let mut f = Fanout::new(2, 3);
        assert_eq!(f.behind(5), [(0, 3), (1, 3)]);
        f.push(1, msg(4));
        assert_eq!(f.behind(5), [(0, 3)]);
        assert!(!f.idle());
    }

    #[test]
    fn large_bursts_are_split() {
        let mut f = Fanout::new(1, 0);
        for s in 1..=(MAX_BATCH_ITEMS as u64 + 5) {
            f.push_all(&msg(s));
        }
        let b = f.next(0).unwrap();
        assert_eq!(b.items.len(), MAX_BATCH_ITEMS);
        f.answered(
            0,
            DownAnswer {
                delivered_seq: b.to_seq,
                connections: 0,
            },
        );
        let b = f.next(0).unwrap();
        assert_eq!(b.from_seq, MAX_BATCH_ITEMS as u64 + 1);
    }
}
