//! `GET /v1/rooms/{room}/poll?since=S&epoch=E&timeout=T`: long-polling for durable
//! messages (docs/protocol.md §13).
//!
//! The Worker connects to the room like an SSE stream would, resuming from `since`/
//! `epoch` with `presence=off`, and reads: the `welcome` says whether the gap is
//! recoverable; a replay that follows is answered at once (up to [`MAX_POLL_MESSAGES`]);
//! otherwise the first room message holding durable messages is, or `"messages":[]` after
//! `T` seconds. Then the relay socket is closed. The room sees a short-lived socket that
//! it may hibernate with, so a waiting poll never keeps it awake.

use std::time::Duration;

use futures_util::future::{select, Either};
use futures_util::pin_mut;
use serde::Serialize;
use serde_json::value::RawValue;
use worker::{Delay, Env, Request, Response, Url};

use super::frames::{split, Welcome};
use super::relay::{Event, Relay};
use crate::error::{Error, Result};
use crate::protocol::check_room;
use crate::room::rpc::Transport;
use crate::router::{authorize_user, load, query, resume_query};
use crate::runtime::json_response;

/// Most messages in one answer (contract §D).
pub const MAX_POLL_MESSAGES: usize = 100;
/// Default `timeout`, seconds.
pub const DEFAULT_POLL_TIMEOUT_SECS: u64 = 25;
/// Longest `timeout`, seconds: under the 30 s idle timeout common in proxies.
pub const MAX_POLL_TIMEOUT_SECS: u64 = 30;

/// The answer.
#[derive(Debug, Serialize)]
pub struct PollAnswer {
    /// The room log's epoch.
    pub epoch: String,
    /// The room's last seq as far as this poll saw it.
    pub last_seq: u64,
    /// Whether the messages continue seamlessly from `since` (false: resync).
    pub recovered: bool,
    /// Durable `message` frames after `since`, in seq order.
    pub messages: Vec<Box<RawValue>>,
}

/// Whether the poll can answer yet.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Keep reading.
    More,
    /// Answer now.
    Done,
}

/// What the poll has read from the room so far.
#[derive(Debug, Default)]
pub struct Poll {
    welcome: Option<Welcome>,
    /// Replayed messages still to come.
    replay_left: u64,
    last_seq: u64,
    messages: Vec<Box<RawValue>>,
}

impl Poll {
    /// Reads one room message.
    pub fn feed(&mut self, message: &str) -> Step {
        for frame in split(message) {
            if let Some(w) = Welcome::parse(&frame) {
                self.last_seq = w.seq;
                self.replay_left = if w.resume.recovered {
                    w.resume.replayed
                } else {
                    0
                };
                let recovered = w.resume.recovered;
                self.welcome = Some(w);
                if !recovered {
                    return Step::Done;
                }
                continue;
            }
            let Some(seq) = frame.seq.filter(|_| frame.is_durable()) else {
                continue; // acks, errors, ephemeral and presence frames are not polled
            };
            self.replay_left = self.replay_left.saturating_sub(1);
            self.last_seq = self.last_seq.max(seq);
            if self.messages.len() < MAX_POLL_MESSAGES {
                if let Ok(raw) = RawValue::from_string(frame.text.to_string()) {
                    self.messages.push(raw);
                }
            }
        }
        let full = self.messages.len() >= MAX_POLL_MESSAGES;
        if self.welcome.is_some() && !self.messages.is_empty() && (self.replay_left == 0 || full) {
            Step::Done
        } else {
            Step::More
        }
    }

    /// The answer, if the welcome was read.
    pub fn answer(self) -> Option<PollAnswer> {
        let w = self.welcome?;
        Some(PollAnswer {
            epoch: w.epoch,
            last_seq: self.last_seq,
            recovered: w.resume.recovered,
            messages: self.messages,
        })
    }
}

/// The `timeout` parameter.
///
/// # Errors
///
/// `BadRequest` unless it is a whole number of seconds from 1 to 30.
pub fn timeout_secs(value: Option<&str>) -> Result<u64> {
    let Some(value) = value else {
        return Ok(DEFAULT_POLL_TIMEOUT_SECS);
    };
    value
        .parse::<u64>()
        .ok()
        .filter(|t| (1..=MAX_POLL_TIMEOUT_SECS).contains(t))
        .ok_or_else(|| {
            Error::BadRequest(format!(
                "timeout must be 1-{MAX_POLL_TIMEOUT_SECS} (seconds to wait for a message)"
            ))
        })
}

/// `GET /v1/rooms/{room}/poll`: the same checks as the socket route, then the wait.
///
/// # Errors
///
/// The socket route's rejections (docs/protocol.md §4), and `bad_request` for `timeout`.
pub async fn serve(req: &Request, url: &Url, env: &Env, room: &str) -> Result<Response> {
    check_room(room)?;
    let (config, verifier) = load(env)?;
    let user = authorize_user(req, url, &config, &verifier, room)?;
    user.require_read(room)?;
    let (since, epoch) = resume_query(url)?;
    let timeout = Duration::from_secs(timeout_secs(query(url, "timeout").as_deref())?);
    let session = user.session(room, since, epoch, false, Transport::Poll);
    let mut relay = Relay::open(env, user.tenant.as_deref(), &session).await?;
    let mut poll = Poll::default();
    let deadline = Delay::from(timeout);
    pin_mut!(deadline);
    loop {
        let event = {
            let next = relay.next();
            pin_mut!(next);
            match select(next, deadline.as_mut()).await {
                Either::Left((event, _)) => event,
                Either::Right(((), _)) => break,
            }
        };
        match event {
            Some(Event::Text(message)) => {
                if poll.feed(&message) == Step::Done {
                    break;
                }
            }
            // The room ended the socket (its token expired meanwhile, …): answer with
            // what was read; the next poll gets the reason as an HTTP answer.
            Some(Event::Closed { .. }) | None => break,
        }
    }
    drop(relay);
    let answer = poll
        .answer()
        .ok_or_else(|| Error::Internal("the room sent no welcome to a poll".into()))?;
    json_response(200, &answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn welcome(seq: u64, recovered: bool, replayed: u64) -> String {
        format!(
            r#"{{"type":"welcome","room":"r","conn":"c_1","user":"u","epoch":"e_1","seq":{seq},"resume":{{"requested":true,"recovered":{recovered},"replayed":{replayed}}},"presence":{{"count":0,"users":[]}},"receipts":true}}"#
        )
    }

    fn message(seq: u64) -> String {
        format!(
            r#"{{"type":"message","seq":{seq},"id":"m{seq}","event":"e","data":null,"from":null,"ts":1}}"#
        )
    }

    fn seqs(answer: &PollAnswer) -> Vec<u64> {
        answer
            .messages
            .iter()
            .filter_map(|m| serde_json::from_str::<serde_json::Value>(m.get()).ok())
            .filter_map(|v| v["seq"].as_u64())
            .collect()
    }

    #[test]
    fn a_replay_is_answered_at_once_and_capped() {
        let mut p = Poll::default();
        assert_eq!(p.feed(&welcome(150, true, 140)), Step::More);
        let batch: Vec<String> = (11..=150).map(message).collect();
        assert_eq!(p.feed(&format!("[{}]", batch.join(","))), Step::Done);
        let a = p.answer().unwrap_or_else(|| panic!("answer"));
        assert!(a.recovered);
        assert_eq!(a.last_seq, 150);
        assert_eq!(seqs(&a), (11..=110).collect::<Vec<_>>());
    }

    #[test]
    fn a_replay_split_over_messages_is_read_to_its_end() {
        let mut p = Poll::default();
        p.feed(&welcome(3, true, 2));
        assert_eq!(p.feed(&message(2)), Step::More);
        assert_eq!(p.feed(&message(3)), Step::Done);
        assert_eq!(
            seqs(&p.answer().unwrap_or_else(|| panic!("answer"))),
            vec![2, 3]
        );
    }

    #[test]
    fn with_nothing_missed_it_waits_for_the_first_durable_message() {
        let mut p = Poll::default();
        assert_eq!(p.feed(&welcome(7, true, 0)), Step::More);
        let noise = r#"[{"type":"message","ephemeral":true,"event":"c","data":1,"from":null,"ts":1},{"type":"presence","op":"join","user":"x","info":{}}]"#;
        assert_eq!(
            p.feed(noise),
            Step::More,
            "ephemeral and presence are not polled"
        );
        assert_eq!(
            p.feed(&format!("[{},{}]", message(8), message(9))),
            Step::Done
        );
        let a = p.answer().unwrap_or_else(|| panic!("answer"));
        assert_eq!((seqs(&a), a.last_seq), (vec![8, 9], 9));
    }

    #[test]
    fn a_lost_gap_answers_at_once_without_messages() {
        let mut p = Poll::default();
        assert_eq!(p.feed(&welcome(70, false, 0)), Step::Done);
        let a = p.answer().unwrap_or_else(|| panic!("answer"));
        assert_eq!((a.recovered, a.last_seq, a.messages.len()), (false, 70, 0));
        assert_eq!(
            serde_json::to_string(&a).unwrap_or_default(),
            r#"{"epoch":"e_1","last_seq":70,"recovered":false,"messages":[]}"#
        );
    }

    #[test]
    fn timeouts_are_whole_seconds_from_1_to_30() {
        assert_eq!(timeout_secs(None), Ok(25));
        assert_eq!(timeout_secs(Some("1")), Ok(1));
        assert_eq!(timeout_secs(Some("30")), Ok(30));
        for bad in ["0", "31", "2.5", "-1", ""] {
            assert!(timeout_secs(Some(bad)).is_err(), "{bad:?}");
        }
    }
}
