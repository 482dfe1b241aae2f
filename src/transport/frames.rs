//! The room's WebSocket messages as the relays see them: one frame or a JSON array of
//! frames (the room coalesces, docs/protocol.md §9), each with the few fields a relay
//! looks at. Everything else in a frame is passed on byte for byte.

use serde::Deserialize;
use serde_json::value::RawValue;

/// One frame of a room message: its text and the fields a relay routes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The frame's JSON, exactly as the room sent it.
    pub text: &'a str,
    /// Its `type`.
    pub kind: String,
    /// Its `seq`, for durable messages only (ephemeral messages have none).
    pub seq: Option<u64>,
}

impl Frame<'_> {
    /// Whether this is a durable (sequenced) `message`.
    pub fn is_durable(&self) -> bool {
        self.kind == "message" && self.seq.is_some()
    }
}

#[derive(Deserialize)]
struct Head {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    seq: Option<u64>,
}

/// The frames of one room message, in order. The room only sends well-formed frames; an
/// element that does not parse (which would be a room bug) is skipped rather than passed
/// on half-understood.
pub fn split(message: &str) -> Vec<Frame<'_>> {
    let items: Vec<&RawValue> = if message.trim_start().starts_with('[') {
        serde_json::from_str(message).unwrap_or_default()
    } else {
        match serde_json::from_str::<&RawValue>(message) {
            Ok(one) => vec![one],
            Err(_) => Vec::new(),
        }
    };
    items
        .into_iter()
        .filter_map(|raw| {
            let text = raw.get();
            let head: Head = serde_json::from_str(text).ok()?;
            // `seq` of a `welcome` is the room's head, not a message's.
            let seq = if head.kind == "message" {
                head.seq
            } else {
                None
            };
            Some(Frame {
                text,
                kind: head.kind,
                seq,
            })
        })
        .collect()
}

/// The fields of `welcome` a relay needs.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Welcome {
    /// The relay socket's connection id.
    pub conn: String,
    /// The room log's epoch.
    pub epoch: String,
    /// The room's last seq when the socket joined.
    pub seq: u64,
    /// The resume outcome.
    pub resume: ResumeOutcome,
}

/// `welcome.resume`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub struct ResumeOutcome {
    /// Whether `since`/`epoch` were sent.
    pub requested: bool,
    /// Whether every missed message follows.
    pub recovered: bool,
    /// How many follow.
    pub replayed: u64,
}

impl Welcome {
    /// Reads a `welcome` frame.
    pub fn parse(frame: &Frame<'_>) -> Option<Welcome> {
        (frame.kind == "welcome")
            .then(|| serde_json::from_str(frame.text).ok())
            .flatten()
    }

    /// The last seq the client holds once this welcome is read: what it resumed from when
    /// the replay follows (each replayed message then moves it on), else the room's head
    /// (a client that did not recover resyncs from its own source of truth).
    pub fn holds(&self) -> u64 {
        self.seq.saturating_sub(self.resume.replayed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_frames_and_arrays_split_into_frames_with_their_routing_fields() {
        let one = r#"{"type":"ack","id":"a","seq":3,"duplicate":false}"#;
        assert_eq!(
            split(one),
            vec![Frame {
                text: one,
                kind: "ack".into(),
                seq: None
            }]
        );
        let batch = r#"[{"type":"message","seq":7,"id":"x","event":"e","data":{"k":[1,2]},"from":null,"ts":1},{"type":"message","ephemeral":true,"event":"c","data":1,"from":null,"ts":2},{"type":"presence","op":"join","user":"u","info":{}}]"#;
        let frames = split(batch);
        assert_eq!(frames.len(), 3);
        assert_eq!(
            frames[0].text,
            r#"{"type":"message","seq":7,"id":"x","event":"e","data":{"k":[1,2]},"from":null,"ts":1}"#
        );
        assert!(frames[0].is_durable());
        assert_eq!(frames[0].seq, Some(7));
        assert!(!frames[1].is_durable(), "ephemeral messages carry no seq");
        assert_eq!(frames[2].kind, "presence");
        assert!(split("not json").is_empty());
        assert!(split("pong").is_empty());
    }

    #[test]
    fn a_welcome_says_which_seq_the_client_holds() {
        let text = r#"{"type":"welcome","room":"r","conn":"c_1","user":"u","epoch":"e_1","seq":10,"resume":{"requested":true,"recovered":true,"replayed":4},"presence":{"count":0,"users":[]},"receipts":true}"#;
        let frames = split(text);
        assert_eq!(frames[0].seq, None, "a welcome's seq is not a message's");
        let w = Welcome::parse(&frames[0]).unwrap_or_else(|| panic!("welcome"));
        assert_eq!(
            (w.conn.as_str(), w.epoch.as_str(), w.holds()),
            ("c_1", "e_1", 6)
        );
        let fresh = text.replace(
            r#""recovered":true,"replayed":4"#,
            r#""recovered":false,"replayed":0"#,
        );
        let w = Welcome::parse(&split(&fresh)[0]).unwrap_or_else(|| panic!("welcome"));
        assert_eq!(w.holds(), 10);
    }
}
