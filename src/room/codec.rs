//! Records → wire frames. Storage holds neutral [`Record`]s; this is the one place that
//! turns them (and live messages) into the v1 JSON text a client receives, once per
//! message per batch. A second wire encoding would be a second function here, not a
//! migration of history.

use serde_json::value::RawValue;

use super::log::Record;
use crate::error::{Error, Result};
use crate::protocol::{From, ServerFrame};

/// A durable `message` frame.
pub fn message(
    seq: u64,
    id: &str,
    event: &str,
    data: &RawValue,
    from: Option<&From>,
    ts: i64,
) -> String {
    ServerFrame::Message {
        seq,
        id,
        event,
        data,
        from: from.cloned(),
        ts,
    }
    .to_json()
}

/// The `message` frame of a stored record, byte for byte what was fanned out when it was
/// published.
///
/// # Errors
///
/// `Internal` when the stored `data` is not JSON (storage corruption).
pub fn record(rec: &Record) -> Result<String> {
    let data: &RawValue = serde_json::from_str(&rec.data)
        .map_err(|e| Error::Internal(format!("stored data of seq {} is not JSON: {e}", rec.seq)))?;
    Ok(message(
        rec.seq,
        &rec.id,
        &rec.event,
        data,
        rec.from.as_ref(),
        rec.ts,
    ))
}

/// An ephemeral `message` frame (contract §B): no `seq`; `id` and `key` only when given.
pub fn ephemeral(
    id: Option<&str>,
    event: &str,
    key: Option<&str>,
    data: &RawValue,
    from: Option<&From>,
    ts: i64,
) -> String {
    ServerFrame::Ephemeral {
        ephemeral: true,
        id,
        event,
        key,
        data,
        from: from.cloned(),
        ts,
    }
    .to_json()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_encode_as_the_v1_message_frame() {
        let rec = Record {
            seq: 42,
            id: "01JD".into(),
            event: "chat".into(),
            data: r#"{"text":"hi", "n":1e999}"#.into(),
            from: Some(From {
                user: "alice".into(),
                conn: "c_8f3a".into(),
            }),
            ts: 1_732_270_000_000,
        };
        assert_eq!(
            record(&rec).unwrap_or_default(),
            r#"{"type":"message","seq":42,"id":"01JD","event":"chat","data":{"text":"hi", "n":1e999},"from":{"user":"alice","conn":"c_8f3a"},"ts":1732270000000}"#
        );
        let bad = Record {
            data: "{".into(),
            ..rec
        };
        assert!(matches!(record(&bad), Err(Error::Internal(_))));
    }

    #[test]
    fn ephemeral_frames_carry_no_seq() {
        let data = RawValue::from_string(r#"{"x":1}"#.into()).unwrap_or_else(|_| unreachable!());
        assert_eq!(
            ephemeral(None, "cursor", None, &data, None, 5),
            r#"{"type":"message","ephemeral":true,"event":"cursor","data":{"x":1},"from":null,"ts":5}"#
        );
        let from = From {
            user: "u".into(),
            conn: "c".into(),
        };
        assert_eq!(
            ephemeral(Some("i1"), "cursor", Some("pen"), &data, Some(&from), 5),
            r#"{"type":"message","ephemeral":true,"id":"i1","event":"cursor","key":"pen","data":{"x":1},"from":{"user":"u","conn":"c"},"ts":5}"#
        );
    }
}
