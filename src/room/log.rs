//! The room's log in SQLite: schema, sequencing and exactly-once dedup.
//!
//! This is plain Rust over the small [`Sql`] trait, so the very same statements run in the
//! Durable Object (over `ctx.storage.sql`) and natively in tests (over rusqlite). The room
//! is the only writer of its log, and every method here is synchronous: the Durable Object
//! runtime commits all writes made without an intervening `await` as one atomic batch, so
//! an append (dedup row + message row + head) can never be half-applied.
//!
//! Storage format (schema version 1), documented in `docs/storage.md`:
//!
//! * `meta(key PRIMARY KEY, value)`: `schema_version`, `epoch`, `last_seq`.
//! * `events(id PRIMARY KEY, seq, ts)`: every accepted id with its seq and accept time (ms).
//! * `messages(seq PRIMARY KEY, frame)`: the serialized `message` frame, for replay.

use crate::error::{Error, Result};

/// Current storage schema version, stored in `meta.schema_version`.
pub const SCHEMA_VERSION: i64 = 1;

/// Prune old rows once every this many appends. Pruning on every write would double the
/// writes per publish; never pruning would let an idle-but-busy room grow without bound.
/// Running it as part of normal writes means no alarm has to wake an idle room to clean up.
pub const PRUNE_EVERY: u64 = 64;

/// A value bound to a `?` placeholder.
#[derive(Debug, Clone, Copy)]
pub enum Arg<'a> {
    /// An integer.
    Int(i64),
    /// A string.
    Text(&'a str),
}

/// A value read from a row.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    /// NULL.
    Null,
    /// An integer.
    Int(i64),
    /// A string.
    Text(String),
}

impl Cell {
    fn int(&self) -> Result<i64> {
        match self {
            Cell::Int(i) => Ok(*i),
            other => Err(Error::Internal(format!(
                "expected an integer, got {other:?}"
            ))),
        }
    }

    fn text(self) -> Result<String> {
        match self {
            Cell::Text(s) => Ok(s),
            other => Err(Error::Internal(format!("expected text, got {other:?}"))),
        }
    }
}

/// The SQL engine the log runs on.
pub trait Sql {
    /// Runs one statement with positional `?` arguments and returns every row.
    ///
    /// # Errors
    ///
    /// `Internal` with the engine's message.
    fn run(&self, query: &str, args: &[Arg<'_>]) -> Result<Vec<Vec<Cell>>>;

    /// Runs one statement that returns no rows and says whether it wrote anything (an
    /// `INSERT … ON CONFLICT DO NOTHING` that hit the conflict did not). Cheaper than
    /// [`Sql::run`] in the Durable Object: no row cursor crosses into Wasm.
    ///
    /// # Errors
    ///
    /// `Internal` with the engine's message.
    fn write(&self, query: &str, args: &[Arg<'_>]) -> Result<bool>;
}

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value)",
    "CREATE TABLE IF NOT EXISTS events (id TEXT PRIMARY KEY, seq INTEGER NOT NULL, ts INTEGER NOT NULL)",
    "CREATE INDEX IF NOT EXISTS events_by_ts ON events (ts)",
    "CREATE TABLE IF NOT EXISTS messages (seq INTEGER PRIMARY KEY, frame TEXT NOT NULL)",
    // The head advances with every stored message inside SQLite, instead of as a third
    // statement per publish from Wasm (each statement costs a runtime round trip). Code
    // that still updates `last_seq` itself writes the same value, so this is compatible
    // in both directions and needs no new schema version.
    "CREATE TRIGGER IF NOT EXISTS advance_head AFTER INSERT ON messages \
     BEGIN UPDATE meta SET value = NEW.seq WHERE key = 'last_seq'; END",
];

/// What the room keeps in memory about its log; reloaded from storage after a wake-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// Identifies this log; changes only if storage is lost.
    pub epoch: String,
    /// Last assigned sequence number (0 when empty).
    pub last_seq: u64,
}

/// The outcome of an append. A duplicate is a result, not an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// A new id: stored under this seq and to be fanned out.
    New(u64),
    /// A repeated id: the original seq; nothing stored, nothing to fan out.
    Duplicate(u64),
}

impl Appended {
    /// The message's seq, new or original.
    pub fn seq(self) -> u64 {
        match self {
            Appended::New(s) | Appended::Duplicate(s) => s,
        }
    }
}

/// Retention settings.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Message bodies kept for replay.
    pub history_limit: u32,
    /// How long an id is remembered, in ms.
    pub dedup_window_ms: i64,
}

/// Creates the schema if needed and loads the head, creating the epoch once.
///
/// # Errors
///
/// `Internal` when storage fails or holds a newer schema than this code understands.
pub fn open(sql: &dyn Sql, new_epoch: &dyn Fn() -> String) -> Result<Head> {
    for stmt in SCHEMA {
        sql.run(stmt, &[])?;
    }
    sql.run(
        "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)",
        &[Arg::Int(SCHEMA_VERSION)],
    )?;
    let version = meta(sql, "schema_version")?.int()?;
    if version > SCHEMA_VERSION {
        return Err(Error::Internal(format!(
            "room storage has schema version {version}, this build understands up to {SCHEMA_VERSION}"
        )));
    }
    // Version 1 is the first format: there is nothing to migrate yet. A later version adds
    // `if version < N { ...; UPDATE meta SET value = N ... }` steps here, in order.
    let epoch = new_epoch();
    sql.run(
        "INSERT OR IGNORE INTO meta (key, value) VALUES ('epoch', ?)",
        &[Arg::Text(&epoch)],
    )?;
    sql.run(
        "INSERT OR IGNORE INTO meta (key, value) VALUES ('last_seq', 0)",
        &[],
    )?;
    let epoch = meta(sql, "epoch")?.text()?;
    let last_seq = u64::try_from(meta(sql, "last_seq")?.int()?)
        .map_err(|_| Error::Internal("negative last_seq".into()))?;
    Ok(Head { epoch, last_seq })
}

fn meta(sql: &dyn Sql, key: &str) -> Result<Cell> {
    sql.run("SELECT value FROM meta WHERE key = ?", &[Arg::Text(key)])?
        .into_iter()
        .next()
        .and_then(|row| row.into_iter().next())
        .ok_or_else(|| Error::Internal(format!("meta.{key} is missing")))
}

/// Looks an id up in the dedup table.
///
/// # Errors
///
/// `Internal` when storage fails.
pub fn seen(sql: &dyn Sql, id: &str) -> Result<Option<u64>> {
    let rows = sql.run("SELECT seq FROM events WHERE id = ?", &[Arg::Text(id)])?;
    match rows.into_iter().next().and_then(|r| r.into_iter().next()) {
        None => Ok(None),
        Some(cell) => Ok(Some(cell.int()? as u64)),
    }
}

/// Appends a message unless its id was seen: assigns the next seq, stores the frame built
/// by `frame(seq)`, remembers the id, and advances the head.
///
/// Returns the outcome and, for a new message, the frame text to fan out.
///
/// # Errors
///
/// `Internal` when storage fails; the head is then left unchanged.
pub fn append(
    sql: &dyn Sql,
    head: &mut Head,
    retention: Retention,
    id: &str,
    now_ms: i64,
    frame: impl FnOnce(u64) -> String,
) -> Result<(Appended, Option<String>)> {
    let seq = head.last_seq + 1;
    let seq_arg = Arg::Int(seq as i64);
    // Claiming the id is the dedup check: a new id costs this statement and the message
    // insert (whose trigger advances `meta.last_seq`); a repeated one, this and a lookup.
    let claimed = sql.write(
        "INSERT INTO events (id, seq, ts) VALUES (?, ?, ?) ON CONFLICT (id) DO NOTHING",
        &[Arg::Text(id), seq_arg, Arg::Int(now_ms)],
    )?;
    if !claimed {
        let original = seen(sql, id)?
            .ok_or_else(|| Error::Internal(format!("event {id:?} conflicted but is not stored")))?;
        return Ok((Appended::Duplicate(original), None));
    }
    let text = frame(seq);
    sql.write(
        "INSERT INTO messages (seq, frame) VALUES (?, ?)",
        &[seq_arg, Arg::Text(&text)],
    )?;
    head.last_seq = seq;
    if seq.is_multiple_of(PRUNE_EVERY) {
        prune(sql, head, retention, now_ms)?;
    }
    Ok((Appended::New(seq), Some(text)))
}

/// Stored frames with `seq > since`, in order, at most `limit` of them.
///
/// # Errors
///
/// `Internal` when storage fails.
pub fn read_after(sql: &dyn Sql, since: u64, limit: u32) -> Result<Vec<(u64, String)>> {
    sql.run(
        "SELECT seq, frame FROM messages WHERE seq > ? ORDER BY seq LIMIT ?",
        &[Arg::Int(since as i64), Arg::Int(i64::from(limit))],
    )?
    .into_iter()
    .map(|row| {
        let mut cells = row.into_iter();
        let seq = cells.next().unwrap_or(Cell::Null).int()? as u64;
        let frame = cells.next().unwrap_or(Cell::Null).text()?;
        Ok((seq, frame))
    })
    .collect()
}

/// The answer to a resume request (contract §6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resumed {
    /// Everything after `since` is retained: these frames, in order (possibly none).
    Recovered(Vec<String>),
    /// Wrong epoch, a `since` beyond the log, or messages no longer retained.
    Lost,
}

/// Decides a resume: the epoch must match and every message after `since` must still be
/// retained (at most `history_limit` of them, which also bounds the replay).
///
/// # Errors
///
/// `Internal` when storage fails.
pub fn resume(
    sql: &dyn Sql,
    head: &Head,
    since: u64,
    epoch: &str,
    history_limit: u32,
) -> Result<Resumed> {
    if epoch != head.epoch || since > head.last_seq {
        return Ok(Resumed::Lost);
    }
    let missed = head.last_seq - since;
    if missed == 0 {
        return Ok(Resumed::Recovered(Vec::new()));
    }
    if missed > u64::from(history_limit) {
        return Ok(Resumed::Lost);
    }
    let rows = read_after(sql, since, history_limit)?;
    // Gapless means the first retained row must be `since + 1` and there must be exactly
    // `missed` of them; anything else means pruning already took part of the gap.
    let complete = rows.len() as u64 == missed && rows.first().map(|(s, _)| *s) == Some(since + 1);
    if complete {
        Ok(Resumed::Recovered(
            rows.into_iter().map(|(_, f)| f).collect(),
        ))
    } else {
        Ok(Resumed::Lost)
    }
}

/// Drops message bodies beyond `history_limit` and ids older than the dedup window.
///
/// # Errors
///
/// `Internal` when storage fails.
pub fn prune(sql: &dyn Sql, head: &Head, retention: Retention, now_ms: i64) -> Result<()> {
    let keep_from = head.last_seq as i64 - i64::from(retention.history_limit);
    sql.write(
        "DELETE FROM messages WHERE seq <= ?",
        &[Arg::Int(keep_from)],
    )?;
    sql.write(
        "DELETE FROM events WHERE ts < ?",
        &[Arg::Int(now_ms.saturating_sub(retention.dedup_window_ms))],
    )?;
    Ok(())
}

#[cfg(all(test, not(target_arch = "wasm32")))]
pub(crate) mod tests {
    use super::*;
    use rusqlite::{types::ValueRef, Connection};

    /// The log over a real SQLite engine (rusqlite, bundled).
    pub struct Lite(pub Connection);

    fn values(args: &[Arg<'_>]) -> Vec<rusqlite::types::Value> {
        args.iter()
            .map(|a| match a {
                Arg::Int(i) => rusqlite::types::Value::Integer(*i),
                Arg::Text(s) => rusqlite::types::Value::Text(s.to_string()),
            })
            .collect()
    }

    impl Sql for Lite {
        fn run(&self, query: &str, args: &[Arg<'_>]) -> Result<Vec<Vec<Cell>>> {
            let fail = |e: rusqlite::Error| Error::Internal(e.to_string());
            let mut stmt = self.0.prepare(query).map_err(fail)?;
            let n = stmt.column_count();
            let mut rows = stmt
                .query(rusqlite::params_from_iter(values(args)))
                .map_err(fail)?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().map_err(fail)? {
                let mut cells = Vec::with_capacity(n);
                for i in 0..n {
                    cells.push(match row.get_ref(i).map_err(fail)? {
                        ValueRef::Integer(v) => Cell::Int(v),
                        ValueRef::Text(t) => Cell::Text(String::from_utf8_lossy(t).into()),
                        _ => Cell::Null,
                    });
                }
                out.push(cells);
            }
            Ok(out)
        }

        fn write(&self, query: &str, args: &[Arg<'_>]) -> Result<bool> {
            let fail = |e: rusqlite::Error| Error::Internal(e.to_string());
            let changed = self
                .0
                .execute(query, rusqlite::params_from_iter(values(args)))
                .map_err(fail)?;
            Ok(changed > 0)
        }
    }

    pub fn lite() -> Lite {
        Lite(Connection::open_in_memory().unwrap())
    }

    const KEEP: Retention = Retention {
        history_limit: 1000,
        dedup_window_ms: 86_400_000,
    };

    #[test]
    fn epoch_is_created_once() {
        let db = lite();
        let a = open(&db, &|| "e_first".into()).unwrap();
        let b = open(&db, &|| "e_second".into()).unwrap();
        assert_eq!(a.epoch, "e_first");
        assert_eq!(b, a);
    }

    #[test]
    fn gapless_seq_and_dedup() {
        let db = lite();
        let mut head = open(&db, &|| "e".into()).unwrap();
        let (a, fa) = append(&db, &mut head, KEEP, "a", 1, |s| format!("m{s}")).unwrap();
        let (b, _) = append(&db, &mut head, KEEP, "b", 2, |s| format!("m{s}")).unwrap();
        let (a2, fa2) = append(&db, &mut head, KEEP, "a", 3, |_| unreachable!()).unwrap();
        assert_eq!(
            (a, b, a2),
            (Appended::New(1), Appended::New(2), Appended::Duplicate(1))
        );
        assert_eq!(fa.as_deref(), Some("m1"));
        assert!(fa2.is_none());
        assert_eq!(head.last_seq, 2);
        // A fresh open (a wake-up or restart) sees the same head and the same ids.
        let mut again = open(&db, &|| "other".into()).unwrap();
        assert_eq!(again, head);
        let (c, _) = append(&db, &mut again, KEEP, "a", 4, |_| unreachable!()).unwrap();
        assert_eq!(c, Appended::Duplicate(1));
        let (d, _) = append(&db, &mut again, KEEP, "c", 5, |s| format!("m{s}")).unwrap();
        assert_eq!(d, Appended::New(3));
    }

    #[test]
    fn pruning_keeps_the_window() {
        let db = lite();
        let mut head = open(&db, &|| "e".into()).unwrap();
        let r = Retention {
            history_limit: 10,
            dedup_window_ms: 1_000,
        };
        for i in 0..PRUNE_EVERY {
            append(&db, &mut head, r, &format!("id{i}"), i as i64 * 100, |s| {
                s.to_string()
            })
            .unwrap();
        }
        let kept = db
            .run("SELECT count(*), min(seq) FROM messages", &[])
            .unwrap();
        assert_eq!(
            kept[0],
            vec![Cell::Int(10), Cell::Int(PRUNE_EVERY as i64 - 9)]
        );
        // Ids accepted within the last second (ts >= 6300 - 1000) are still duplicates.
        let last = PRUNE_EVERY - 1;
        assert_eq!(seen(&db, &format!("id{last}")).unwrap(), Some(PRUNE_EVERY));
        assert_eq!(seen(&db, "id0").unwrap(), None);
    }

    #[test]
    fn newer_schema_is_refused() {
        let db = lite();
        open(&db, &|| "e".into()).unwrap();
        db.run(
            "UPDATE meta SET value = 99 WHERE key = 'schema_version'",
            &[],
        )
        .unwrap();
        assert!(matches!(open(&db, &|| "e".into()), Err(Error::Internal(_))));
    }

    #[test]
    fn resume_bounds() {
        let db = lite();
        let mut head = open(&db, &|| "e".into()).unwrap();
        for i in 0..30 {
            append(&db, &mut head, KEEP, &format!("id{i}"), i, |s| {
                format!("m{s}")
            })
            .unwrap();
        }
        let r = resume(&db, &head, 25, "e", 10).unwrap();
        assert_eq!(
            r,
            Resumed::Recovered((26..=30).map(|s| format!("m{s}")).collect())
        );
        assert_eq!(
            resume(&db, &head, 30, "e", 10).unwrap(),
            Resumed::Recovered(vec![])
        );
        assert_eq!(
            resume(&db, &head, 19, "e", 10).unwrap(),
            Resumed::Lost,
            "11 missed > 10"
        );
        assert!(
            matches!(resume(&db, &head, 20, "e", 10).unwrap(), Resumed::Recovered(f) if f.len() == 10)
        );
        assert_eq!(resume(&db, &head, 25, "other", 10).unwrap(), Resumed::Lost);
        assert_eq!(resume(&db, &head, 31, "e", 10).unwrap(), Resumed::Lost);
        // Once pruning took part of the gap, the resume is lost even within the limit.
        db.run("DELETE FROM messages WHERE seq <= 26", &[]).unwrap();
        assert_eq!(resume(&db, &head, 25, "e", 10).unwrap(), Resumed::Lost);
    }

    /// Pins the storage format: a change to the schema fails here first, and must come
    /// with a new SCHEMA_VERSION, a migration step in `open`, and docs/storage.md.
    #[test]
    fn schema_is_pinned() {
        let db = lite();
        open(&db, &|| "e".into()).unwrap();
        let rows = db
            .run(
                "SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY name",
                &[],
            )
            .unwrap();
        let text = |c: &Cell| match c {
            Cell::Text(t) => t.clone(),
            other => format!("{other:?}"),
        };
        let got: Vec<String> = rows
            .iter()
            .map(|r| r.iter().map(text).collect::<Vec<_>>().join(" | "))
            .collect();
        assert_eq!(
            got,
            vec![
                "trigger | advance_head | CREATE TRIGGER advance_head AFTER INSERT ON messages BEGIN UPDATE meta SET value = NEW.seq WHERE key = 'last_seq'; END",
                "table | events | CREATE TABLE events (id TEXT PRIMARY KEY, seq INTEGER NOT NULL, ts INTEGER NOT NULL)",
                "index | events_by_ts | CREATE INDEX events_by_ts ON events (ts)",
                "table | messages | CREATE TABLE messages (seq INTEGER PRIMARY KEY, frame TEXT NOT NULL)",
                "table | meta | CREATE TABLE meta (key TEXT PRIMARY KEY, value)",
            ]
        );
        assert_eq!(SCHEMA_VERSION, 1);
    }

    /// A room written by schema version 1 (as these literal rows) stays readable: its
    /// epoch, head, dedup ids and retained frames survive an upgrade of the code.
    #[test]
    fn version_1_data_stays_readable() {
        let db = lite();
        for stmt in [
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value)",
            "CREATE TABLE events (id TEXT PRIMARY KEY, seq INTEGER NOT NULL, ts INTEGER NOT NULL)",
            "CREATE INDEX events_by_ts ON events (ts)",
            "CREATE TABLE messages (seq INTEGER PRIMARY KEY, frame TEXT NOT NULL)",
            "INSERT INTO meta VALUES ('schema_version', 1), ('epoch', 'e_00000000000000aa'), ('last_seq', 2)",
            "INSERT INTO events VALUES ('first', 1, 1000), ('second', 2, 2000)",
            r#"INSERT INTO messages VALUES (1, '{"type":"message","seq":1}'), (2, '{"type":"message","seq":2}')"#,
        ] {
            db.run(stmt, &[]).unwrap();
        }
        let mut head = open(&db, &|| "e_new".into()).unwrap();
        assert_eq!(
            head,
            Head {
                epoch: "e_00000000000000aa".into(),
                last_seq: 2
            }
        );
        let (dup, _) = append(&db, &mut head, KEEP, "first", 3000, |_| unreachable!()).unwrap();
        assert_eq!(dup, Appended::Duplicate(1));
        let (new, _) = append(&db, &mut head, KEEP, "third", 3000, |s| s.to_string()).unwrap();
        assert_eq!(new, Appended::New(3));
        assert_eq!(
            resume(&db, &head, 0, "e_00000000000000aa", 10).unwrap(),
            Resumed::Recovered(vec![
                r#"{"type":"message","seq":1}"#.into(),
                r#"{"type":"message","seq":2}"#.into(),
                "3".into()
            ])
        );
    }

    mod props {
        use super::*;
        use proptest::prelude::*;
        use std::collections::HashMap;

        #[derive(Debug, Clone)]
        enum Op {
            /// Publish id `n` after `dt` ms.
            Publish(u8, u16),
            /// Force a prune after `dt` ms.
            Prune(u16),
            /// Drop the in-memory head and reopen (a wake-up or restart).
            Reopen,
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                8 => (0u8..40, 0u16..400).prop_map(|(n, dt)| Op::Publish(n, dt)),
                1 => (0u16..3000).prop_map(Op::Prune),
                1 => Just(Op::Reopen),
            ]
        }

        const R: Retention = Retention {
            history_limit: 16,
            dedup_window_ms: 2_000,
        };

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            /// Over random publishes, duplicates, prunes and reopens: seqs are gapless,
            /// an id accepted within the window is always a duplicate with its original
            /// seq, the last HISTORY_LIMIT messages are always retained, and a resume
            /// within them replays exactly the missed frames.
            #[test]
            fn log_invariants(ops in proptest::collection::vec(op(), 1..300)) {
                let db = lite();
                let mut head = open(&db, &|| "e".into()).unwrap();
                let mut now: i64 = 0;
                let mut last_seq = 0u64;
                // id -> (seq, accepted at)
                let mut accepted: HashMap<String, (u64, i64)> = HashMap::new();
                let mut frames: HashMap<u64, String> = HashMap::new();
                for op in ops {
                    match op {
                        Op::Publish(n, dt) => {
                            now += i64::from(dt);
                            let id = format!("id{n}");
                            let (out, frame) = append(&db, &mut head, R, &id, now, |s| format!("f{s}:{id}")).unwrap();
                            match (out, accepted.get(&id)) {
                                (Appended::Duplicate(seq), Some((orig, _))) => {
                                    prop_assert_eq!(seq, *orig);
                                    prop_assert!(frame.is_none());
                                }
                                (Appended::Duplicate(_), None) => prop_assert!(false, "duplicate of an unseen id"),
                                (Appended::New(seq), prev) => {
                                    if let Some((_, at)) = prev {
                                        prop_assert!(now - at > R.dedup_window_ms, "id re-accepted inside the window");
                                    }
                                    prop_assert_eq!(seq, last_seq + 1, "gapless");
                                    last_seq = seq;
                                    let f = frame.unwrap();
                                    frames.insert(seq, f);
                                    accepted.insert(id, (seq, now));
                                }
                            }
                        }
                        Op::Prune(dt) => {
                            now += i64::from(dt);
                            prune(&db, &head, R, now).unwrap();
                        }
                        Op::Reopen => {
                            head = open(&db, &|| "new".into()).unwrap();
                            prop_assert_eq!(&head.epoch, "e");
                        }
                    }
                    prop_assert_eq!(head.last_seq, last_seq);
                    // Retention: the last HISTORY_LIMIT messages are always there.
                    let keep = last_seq.min(u64::from(R.history_limit));
                    let since = last_seq - keep;
                    match resume(&db, &head, since, "e", R.history_limit).unwrap() {
                        Resumed::Recovered(got) => {
                            let want: Vec<String> = (since + 1..=last_seq).map(|s| frames[&s].clone()).collect();
                            prop_assert_eq!(got, want);
                        }
                        Resumed::Lost => prop_assert!(false, "retained window lost"),
                    }
                }
            }
        }
    }
}
