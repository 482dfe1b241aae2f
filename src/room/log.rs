//! The room's log in SQLite: schema, sequencing and exactly-once dedup.
//!
//! This is plain Rust over the small [`Sql`] trait, so the very same statements run in the
//! Durable Object (over `ctx.storage.sql`) and natively in tests (over rusqlite). The room
//! is the only writer of its log, and every method here is synchronous: the Durable Object
//! runtime commits all writes made without an intervening `await` as one atomic batch, so
//! an append (dedup row + message row + head) can never be half-applied.
//!
//! Storage format (schema version 2), documented in `docs/storage.md`:
//!
//! * `meta(key PRIMARY KEY, value)`: `schema_version`, `epoch`, `last_seq`.
//! * `events(id PRIMARY KEY, seq, ts)`: every accepted id with its seq and accept time (ms).
//! * `messages(seq PRIMARY KEY, id, event, data, from_user, from_conn, ts)`: each message
//!   as a neutral [`Record`], encoded to a wire format only at the edge (`codec`), so a
//!   second encoding costs an encoder, not a migration. Version 1 stored the v1 wire JSON
//!   itself; [`open`] migrates such rooms in place.
//! * `webhooks(n PRIMARY KEY, queued, body, dead)`: the webhook outbox (`webhooks`).

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::error::{Error, Result};
use crate::protocol::From;

/// Current storage schema version, stored in `meta.schema_version`.
pub const SCHEMA_VERSION: i64 = 3;

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
    /// SQL NULL.
    Null,
}

impl<'a> Arg<'a> {
    /// Text, or NULL for `None`.
    pub fn opt(text: Option<&'a str>) -> Self {
        text.map_or(Arg::Null, Arg::Text)
    }
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

    fn opt_text(self) -> Result<Option<String>> {
        match self {
            Cell::Null => Ok(None),
            other => other.text().map(Some),
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

/// The tables of the current version. `IF NOT EXISTS` throughout: this runs on every
/// open (after each wake-up), and must be a no-op for a room already at this version.
const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS events (id TEXT PRIMARY KEY, seq INTEGER NOT NULL, ts INTEGER NOT NULL)",
    "CREATE INDEX IF NOT EXISTS events_by_ts ON events (ts)",
    MESSAGES_TABLE,
    ADVANCE_HEAD,
    super::webhooks::TABLE,
    super::webhooks::ADVANCE,
];

const MESSAGES_TABLE: &str = "CREATE TABLE IF NOT EXISTS messages (seq INTEGER PRIMARY KEY, id TEXT NOT NULL, event TEXT NOT NULL, data TEXT NOT NULL, from_user TEXT, from_conn TEXT, ts INTEGER NOT NULL)";

/// The head advances with every stored message inside SQLite, instead of as a third
/// statement per publish from Wasm (each statement costs a runtime round trip).
const ADVANCE_HEAD: &str = "CREATE TRIGGER IF NOT EXISTS advance_head AFTER INSERT ON messages \
     BEGIN UPDATE meta SET value = NEW.seq WHERE key = 'last_seq'; END";

/// What the room keeps in memory about its log; reloaded from storage after a wake-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// Identifies this log; changes only if storage is lost.
    pub epoch: String,
    /// Last assigned sequence number (0 when empty).
    pub last_seq: u64,
}

/// One stored message, independent of any wire format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Per-room sequence number.
    pub seq: u64,
    /// Event id (the dedup key).
    pub id: String,
    /// Event name.
    pub event: String,
    /// Payload as raw JSON text, exactly as published.
    pub data: String,
    /// Sender; `None` for server broadcasts.
    pub from: Option<From>,
    /// Acceptance time, ms since the unix epoch.
    pub ts: i64,
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

/// The object's name (`tenant/room`), kept in `meta` because the runtime does not tell an
/// object woken by its alarm alone which name it was created under (`state.id().name()` is
/// empty then), and webhook bodies, metrics and log lines need the room. `given` is what
/// the runtime said: stored once when known, read back when not.
pub fn object_name(sql: &dyn Sql, given: Option<String>) -> Option<String> {
    match given.filter(|n| !n.is_empty()) {
        Some(name) => Some(name),
        None => {
            let rows = sql
                .run("SELECT value FROM meta WHERE key = 'object_name'", &[])
                .ok()?;
            match rows.into_iter().next()?.into_iter().next()? {
                Cell::Text(name) => Some(name),
                _ => None,
            }
        }
    }
}

/// Stores the object's name for [`object_name`] (once: later calls write nothing).
///
/// # Errors
///
/// `Internal` when storage fails.
pub fn remember_name(sql: &dyn Sql, name: &str) -> Result<()> {
    if !name.is_empty() {
        sql.write(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('object_name', ?)",
            &[Arg::Text(name)],
        )?;
    }
    Ok(())
}

/// Creates the schema if needed, migrates older versions in place, and loads the head,
/// creating the epoch once.
///
/// # Errors
///
/// `Internal` when storage fails or holds a newer schema than this code understands.
pub fn open(sql: &dyn Sql, new_epoch: &dyn Fn() -> String) -> Result<Head> {
    sql.write(
        "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value)",
        &[],
    )?;
    let stored = match meta(sql, "schema_version")? {
        None => None,
        Some(v) => Some(v.int()?),
    };
    if let Some(version) = stored {
        if version > SCHEMA_VERSION {
            return Err(Error::Internal(format!(
                "room storage has schema version {version}, this build understands up to {SCHEMA_VERSION}"
            )));
        }
        // Migrations run in order, each taking the room one version up. Version 3 only
        // added the webhook outbox, which the schema below creates.
        if version < 2 {
            migrate_v1(sql)?;
        }
    }
    for stmt in SCHEMA {
        sql.write(stmt, &[])?;
    }
    if stored != Some(SCHEMA_VERSION) {
        sql.write(
            "INSERT INTO meta (key, value) VALUES ('schema_version', ?) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            &[Arg::Int(SCHEMA_VERSION)],
        )?;
    }
    let epoch = new_epoch();
    sql.write(
        "INSERT OR IGNORE INTO meta (key, value) VALUES ('epoch', ?)",
        &[Arg::Text(&epoch)],
    )?;
    sql.write(
        "INSERT OR IGNORE INTO meta (key, value) VALUES ('last_seq', 0)",
        &[],
    )?;
    let missing = |key: &str| Error::Internal(format!("meta.{key} is missing"));
    let epoch = meta(sql, "epoch")?
        .ok_or_else(|| missing("epoch"))?
        .text()?;
    let last_seq = meta(sql, "last_seq")?
        .ok_or_else(|| missing("last_seq"))?
        .int()?;
    let last_seq =
        u64::try_from(last_seq).map_err(|_| Error::Internal("negative last_seq".into()))?;
    Ok(Head { epoch, last_seq })
}

/// A `message` frame as version 1 stored it (the v1 wire JSON), read for migration.
#[derive(Deserialize)]
struct V1Frame<'a> {
    id: String,
    event: String,
    #[serde(borrow)]
    data: &'a RawValue,
    from: Option<From>,
    ts: i64,
}

/// Version 1 → 2: every stored frame becomes a record. `data` is kept as the raw text
/// the frame carried, so replays and history stay byte for byte what v1 sent. Runs
/// without an `await`, so the runtime commits it as one write: a room is either still at
/// version 1 or fully at version 2.
fn migrate_v1(sql: &dyn Sql) -> Result<()> {
    sql.write("DROP TRIGGER IF EXISTS advance_head", &[])?;
    sql.write("ALTER TABLE messages RENAME TO messages_v1", &[])?;
    sql.write(MESSAGES_TABLE, &[])?;
    let rows = sql.run("SELECT seq, frame FROM messages_v1 ORDER BY seq", &[])?;
    for row in rows {
        let mut cells = row.into_iter();
        let seq = cells.next().unwrap_or(Cell::Null).int()?;
        let frame = cells.next().unwrap_or(Cell::Null).text()?;
        let f: V1Frame = serde_json::from_str(&frame)
            .map_err(|e| Error::Internal(format!("version 1 message {seq} does not parse: {e}")))?;
        let (user, conn) = match &f.from {
            Some(from) => (Some(from.user.as_str()), Some(from.conn.as_str())),
            None => (None, None),
        };
        sql.write(
            "INSERT INTO messages (seq, id, event, data, from_user, from_conn, ts) VALUES (?, ?, ?, ?, ?, ?, ?)",
            &[
                Arg::Int(seq),
                Arg::Text(&f.id),
                Arg::Text(&f.event),
                Arg::Text(f.data.get()),
                Arg::opt(user),
                Arg::opt(conn),
                Arg::Int(f.ts),
            ],
        )?;
    }
    sql.write("DROP TABLE messages_v1", &[])?;
    Ok(())
}

fn meta(sql: &dyn Sql, key: &str) -> Result<Option<Cell>> {
    Ok(sql
        .run("SELECT value FROM meta WHERE key = ?", &[Arg::Text(key)])?
        .into_iter()
        .next()
        .and_then(|row| row.into_iter().next()))
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

/// What a publish asks the log to store; the log assigns `seq`.
#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    /// Event id (the dedup key).
    pub id: &'a str,
    /// Event name.
    pub event: &'a str,
    /// Payload, raw JSON.
    pub data: &'a str,
    /// Sender; `None` for server broadcasts.
    pub from: Option<&'a From>,
    /// Acceptance time, ms.
    pub ts: i64,
}

/// Appends a message unless its id was seen: assigns the next seq, stores the record,
/// remembers the id, and advances the head.
///
/// # Errors
///
/// `Internal` when storage fails; the head is then left unchanged.
pub fn append(
    sql: &dyn Sql,
    head: &mut Head,
    retention: Retention,
    entry: Entry<'_>,
) -> Result<Appended> {
    let seq = head.last_seq + 1;
    let seq_arg = Arg::Int(seq as i64);
    // Claiming the id is the dedup check: a new id costs this statement and the message
    // insert (whose trigger advances `meta.last_seq`); a repeated one, this and a lookup.
    let claimed = sql.write(
        "INSERT INTO events (id, seq, ts) VALUES (?, ?, ?) ON CONFLICT (id) DO NOTHING",
        &[Arg::Text(entry.id), seq_arg, Arg::Int(entry.ts)],
    )?;
    if !claimed {
        let original = seen(sql, entry.id)?.ok_or_else(|| {
            Error::Internal(format!("event {:?} conflicted but is not stored", entry.id))
        })?;
        return Ok(Appended::Duplicate(original));
    }
    sql.write(
        "INSERT INTO messages (seq, id, event, data, from_user, from_conn, ts) VALUES (?, ?, ?, ?, ?, ?, ?)",
        &[
            seq_arg,
            Arg::Text(entry.id),
            Arg::Text(entry.event),
            Arg::Text(entry.data),
            Arg::opt(entry.from.map(|f| f.user.as_str())),
            Arg::opt(entry.from.map(|f| f.conn.as_str())),
            Arg::Int(entry.ts),
        ],
    )?;
    head.last_seq = seq;
    if seq.is_multiple_of(PRUNE_EVERY) {
        prune(sql, head, retention, entry.ts)?;
    }
    Ok(Appended::New(seq))
}

/// Stored records with `seq > since`, in order, at most `limit` of them.
///
/// # Errors
///
/// `Internal` when storage fails.
pub fn read_after(sql: &dyn Sql, since: u64, limit: u32) -> Result<Vec<Record>> {
    sql.run(
        "SELECT seq, id, event, data, from_user, from_conn, ts FROM messages WHERE seq > ? ORDER BY seq LIMIT ?",
        &[Arg::Int(since as i64), Arg::Int(i64::from(limit))],
    )?
    .into_iter()
    .map(|row| {
        let mut c = row.into_iter();
        let mut next = || c.next().unwrap_or(Cell::Null);
        let seq = next().int()? as u64;
        let id = next().text()?;
        let event = next().text()?;
        let data = next().text()?;
        let user = next().opt_text()?;
        let conn = next().opt_text()?;
        let ts = next().int()?;
        let from = match (user, conn) {
            (Some(user), Some(conn)) => Some(From { user, conn }),
            _ => None,
        };
        Ok(Record {
            seq,
            id,
            event,
            data,
            from,
            ts,
        })
    })
    .collect()
}

/// The answer to a resume request (contract §6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resumed {
    /// Everything after `since` is retained: these records, in order (possibly none).
    Recovered(Vec<Record>),
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
    let complete = rows.len() as u64 == missed && rows.first().map(|r| r.seq) == Some(since + 1);
    if complete {
        Ok(Resumed::Recovered(rows))
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
#[allow(clippy::unwrap_used)] // test helpers: a panic is a failed test
pub(crate) mod tests {
    use super::*;
    use rusqlite::{types::ValueRef, Connection};
    use std::cell::Cell as Counter;

    /// The log over a real SQLite engine (rusqlite, bundled), counting rows like the
    /// Durable Object's cursors do (rows returned / rows changed).
    pub struct Lite {
        pub conn: Connection,
        pub rows_read: Counter<u64>,
        pub rows_written: Counter<u64>,
    }

    fn values(args: &[Arg<'_>]) -> Vec<rusqlite::types::Value> {
        args.iter()
            .map(|a| match a {
                Arg::Int(i) => rusqlite::types::Value::Integer(*i),
                Arg::Text(s) => rusqlite::types::Value::Text(s.to_string()),
                Arg::Null => rusqlite::types::Value::Null,
            })
            .collect()
    }

    impl Sql for Lite {
        fn run(&self, query: &str, args: &[Arg<'_>]) -> Result<Vec<Vec<Cell>>> {
            let fail = |e: rusqlite::Error| Error::Internal(e.to_string());
            let mut stmt = self.conn.prepare(query).map_err(fail)?;
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
            self.rows_read.set(self.rows_read.get() + out.len() as u64);
            Ok(out)
        }

        fn write(&self, query: &str, args: &[Arg<'_>]) -> Result<bool> {
            let fail = |e: rusqlite::Error| Error::Internal(e.to_string());
            // `total_changes` counts every row written, triggers included, and nothing for
            // DDL (`execute`'s own count repeats the last INSERT's after a CREATE).
            let before = self.conn.total_changes();
            self.conn
                .execute(query, rusqlite::params_from_iter(values(args)))
                .map_err(fail)?;
            let changed = self.conn.total_changes() - before;
            self.rows_written.set(self.rows_written.get() + changed);
            Ok(changed > 0)
        }
    }

    pub fn lite() -> Lite {
        Lite {
            conn: Connection::open_in_memory().unwrap(),
            rows_read: Counter::new(0),
            rows_written: Counter::new(0),
        }
    }

    const KEEP: Retention = Retention {
        history_limit: 1000,
        dedup_window_ms: 86_400_000,
    };

    fn entry<'a>(id: &'a str, data: &'a str, ts: i64) -> Entry<'a> {
        Entry {
            id,
            event: "chat",
            data,
            from: None,
            ts,
        }
    }

    fn seqs(records: &[Record]) -> Vec<u64> {
        records.iter().map(|r| r.seq).collect()
    }

    #[test]
    fn the_object_name_is_kept_for_wake_ups_that_do_not_carry_it() {
        let db = lite();
        assert_eq!(object_name(&db, None), None, "no table yet: nothing known");
        open(&db, &|| "e".into()).unwrap();
        assert_eq!(object_name(&db, Some(String::new())), None);
        remember_name(&db, "acme/lobby").unwrap();
        remember_name(&db, "acme/other").unwrap(); // once: the first name stays
        assert_eq!(object_name(&db, None).as_deref(), Some("acme/lobby"));
        assert_eq!(
            object_name(&db, Some(String::new())).as_deref(),
            Some("acme/lobby")
        );
        assert_eq!(
            object_name(&db, Some("acme/lobby".into())).as_deref(),
            Some("acme/lobby")
        );
    }

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
        let a = append(&db, &mut head, KEEP, entry("a", "1", 1)).unwrap();
        let b = append(&db, &mut head, KEEP, entry("b", "2", 2)).unwrap();
        let a2 = append(&db, &mut head, KEEP, entry("a", "3", 3)).unwrap();
        assert_eq!(
            (a, b, a2),
            (Appended::New(1), Appended::New(2), Appended::Duplicate(1))
        );
        assert_eq!(head.last_seq, 2);
        // The duplicate stored nothing: the first payload stays.
        let stored = read_after(&db, 0, 10).unwrap();
        assert_eq!(seqs(&stored), vec![1, 2]);
        assert_eq!(stored[0].data, "1");
        // A fresh open (a wake-up or restart) sees the same head and the same ids.
        let mut again = open(&db, &|| "other".into()).unwrap();
        assert_eq!(again, head);
        let c = append(&db, &mut again, KEEP, entry("a", "4", 4)).unwrap();
        assert_eq!(c, Appended::Duplicate(1));
        let d = append(&db, &mut again, KEEP, entry("c", "5", 5)).unwrap();
        assert_eq!(d, Appended::New(3));
    }

    #[test]
    fn records_keep_sender_and_raw_data() {
        let db = lite();
        let mut head = open(&db, &|| "e".into()).unwrap();
        let alice = From {
            user: "alice".into(),
            conn: "c_1".into(),
        };
        let e = Entry {
            id: "x",
            event: "cursor.move",
            data: r#"{"n":1e999, "s":"é"}"#,
            from: Some(&alice),
            ts: 42,
        };
        append(&db, &mut head, KEEP, e).unwrap();
        let got = read_after(&db, 0, 1).unwrap();
        assert_eq!(
            got,
            vec![Record {
                seq: 1,
                id: "x".into(),
                event: "cursor.move".into(),
                data: r#"{"n":1e999, "s":"é"}"#.into(),
                from: Some(alice),
                ts: 42,
            }]
        );
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
            let id = format!("id{i}");
            append(&db, &mut head, r, entry(&id, "0", i as i64 * 100)).unwrap();
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
    fn reopening_writes_nothing() {
        let db = lite();
        open(&db, &|| "e".into()).unwrap();
        let before = db.rows_written.get();
        open(&db, &|| "other".into()).unwrap();
        assert_eq!(db.rows_written.get(), before, "a wake-up must not write");
    }

    #[test]
    fn resume_bounds() {
        let db = lite();
        let mut head = open(&db, &|| "e".into()).unwrap();
        for i in 0..30 {
            let id = format!("id{i}");
            append(&db, &mut head, KEEP, entry(&id, "0", i)).unwrap();
        }
        let recovered = |since| match resume(&db, &head, since, "e", 10).unwrap() {
            Resumed::Recovered(r) => Some(seqs(&r)),
            Resumed::Lost => None,
        };
        assert_eq!(recovered(25), Some((26..=30).collect()));
        assert_eq!(recovered(30), Some(vec![]));
        assert_eq!(recovered(19), None, "11 missed > 10");
        assert_eq!(recovered(20), Some((21..=30).collect()));
        assert_eq!(resume(&db, &head, 25, "other", 10).unwrap(), Resumed::Lost);
        assert_eq!(resume(&db, &head, 31, "e", 10).unwrap(), Resumed::Lost);
        // Once pruning took part of the gap, the resume is lost even within the limit.
        db.run("DELETE FROM messages WHERE seq <= 26", &[]).unwrap();
        assert_eq!(resume(&db, &head, 25, "e", 10).unwrap(), Resumed::Lost);
    }

    fn schema(db: &Lite) -> Vec<String> {
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
        rows.iter()
            .map(|r| r.iter().map(text).collect::<Vec<_>>().join(" | "))
            .collect()
    }

    /// Pins the storage format: a change to the schema fails here first, and must come
    /// with a new SCHEMA_VERSION, a migration step in `open`, and docs/storage.md.
    #[test]
    fn schema_is_pinned() {
        let db = lite();
        open(&db, &|| "e".into()).unwrap();
        assert_eq!(
            schema(&db),
            vec![
                "trigger | advance_head | CREATE TRIGGER advance_head AFTER INSERT ON messages BEGIN UPDATE meta SET value = NEW.seq WHERE key = 'last_seq'; END",
                "trigger | advance_webhook | CREATE TRIGGER advance_webhook AFTER INSERT ON webhooks BEGIN UPDATE meta SET value = NEW.n WHERE key = 'webhook_n'; END",
                "table | events | CREATE TABLE events (id TEXT PRIMARY KEY, seq INTEGER NOT NULL, ts INTEGER NOT NULL)",
                "index | events_by_ts | CREATE INDEX events_by_ts ON events (ts)",
                "table | messages | CREATE TABLE messages (seq INTEGER PRIMARY KEY, id TEXT NOT NULL, event TEXT NOT NULL, data TEXT NOT NULL, from_user TEXT, from_conn TEXT, ts INTEGER NOT NULL)",
                "table | meta | CREATE TABLE meta (key TEXT PRIMARY KEY, value)",
                "table | webhooks | CREATE TABLE webhooks (n INTEGER PRIMARY KEY, queued INTEGER NOT NULL, body TEXT NOT NULL, dead INTEGER NOT NULL DEFAULT 0)",
            ]
        );
        assert_eq!(SCHEMA_VERSION, 3);
        let version = db
            .run("SELECT value FROM meta WHERE key = 'schema_version'", &[])
            .unwrap();
        assert_eq!(version, vec![vec![Cell::Int(3)]]);
    }

    /// The literal rows a version-1 room holds (schema and frames as v1 wrote them).
    pub const V1_ROOM: &[&str] = &[
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value)",
        "CREATE TABLE events (id TEXT PRIMARY KEY, seq INTEGER NOT NULL, ts INTEGER NOT NULL)",
        "CREATE INDEX events_by_ts ON events (ts)",
        "CREATE TABLE messages (seq INTEGER PRIMARY KEY, frame TEXT NOT NULL)",
        "CREATE TRIGGER advance_head AFTER INSERT ON messages BEGIN UPDATE meta SET value = NEW.seq WHERE key = 'last_seq'; END",
        "INSERT INTO meta VALUES ('schema_version', 1), ('epoch', 'e_00000000000000aa'), ('last_seq', 2)",
        "INSERT INTO events VALUES ('first', 1, 1000), ('second', 2, 2000)",
        r#"INSERT INTO messages VALUES (1, '{"type":"message","seq":1,"id":"first","event":"chat","data":{"text":"hi","n":1e999},"from":{"user":"alice","conn":"c_00000000000000a1"},"ts":1000}'), (2, '{"type":"message","seq":2,"id":"second","event":"order.updated","data":null,"from":null,"ts":2000}')"#,
    ];

    /// A room written by schema version 1 (as these literal rows) is migrated in place:
    /// its epoch, head, dedup ids and retained messages survive, raw `data` included,
    /// the schema becomes exactly the current one, and new appends continue the seq.
    #[test]
    fn version_1_rooms_migrate_in_place() {
        let db = lite();
        for stmt in V1_ROOM {
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
        let fresh = lite();
        open(&fresh, &|| "e".into()).unwrap();
        assert_eq!(
            schema(&db),
            schema(&fresh),
            "migrated schema = current schema"
        );
        let dup = append(&db, &mut head, KEEP, entry("first", "0", 3000)).unwrap();
        assert_eq!(dup, Appended::Duplicate(1));
        let new = append(&db, &mut head, KEEP, entry("third", "3", 3000)).unwrap();
        assert_eq!(new, Appended::New(3));
        let Resumed::Recovered(all) = resume(&db, &head, 0, "e_00000000000000aa", 10).unwrap()
        else {
            panic!("v1 history lost in the migration")
        };
        assert_eq!(seqs(&all), vec![1, 2, 3]);
        assert_eq!(all[0].data, r#"{"text":"hi","n":1e999}"#);
        assert_eq!(
            all[0].from,
            Some(From {
                user: "alice".into(),
                conn: "c_00000000000000a1".into()
            })
        );
        assert_eq!(
            (all[1].event.as_str(), all[1].data.as_str()),
            ("order.updated", "null")
        );
        assert_eq!(all[1].from, None);
        // Opening again is a no-op: already at the current version.
        assert_eq!(open(&db, &|| "x".into()).unwrap(), head);
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
            /// within them replays exactly the missed records.
            #[test]
            fn log_invariants(ops in proptest::collection::vec(op(), 1..300)) {
                let db = lite();
                let mut head = open(&db, &|| "e".into()).unwrap();
                let mut now: i64 = 0;
                let mut last_seq = 0u64;
                // id -> (seq, accepted at)
                let mut accepted: HashMap<String, (u64, i64)> = HashMap::new();
                let mut payloads: HashMap<u64, String> = HashMap::new();
                for op in ops {
                    match op {
                        Op::Publish(n, dt) => {
                            now += i64::from(dt);
                            let id = format!("id{n}");
                            let data = format!("\"{id}@{now}\"");
                            let out = append(&db, &mut head, R, entry(&id, &data, now)).unwrap();
                            match (out, accepted.get(&id)) {
                                (Appended::Duplicate(seq), Some((orig, _))) => {
                                    prop_assert_eq!(seq, *orig);
                                }
                                (Appended::Duplicate(_), None) => prop_assert!(false, "duplicate of an unseen id"),
                                (Appended::New(seq), prev) => {
                                    if let Some((_, at)) = prev {
                                        prop_assert!(now - at > R.dedup_window_ms, "id re-accepted inside the window");
                                    }
                                    prop_assert_eq!(seq, last_seq + 1, "gapless");
                                    last_seq = seq;
                                    payloads.insert(seq, data);
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
                            let got: Vec<(u64, String)> = got.into_iter().map(|r| (r.seq, r.data)).collect();
                            let want: Vec<(u64, String)> = (since + 1..=last_seq).map(|s| (s, payloads[&s].clone())).collect();
                            prop_assert_eq!(got, want);
                        }
                        Resumed::Lost => prop_assert!(false, "retained window lost"),
                    }
                }
            }
        }
    }
}
