//! `ctx.storage.sql` as the log's [`Sql`] engine, counting the rows every statement reads
//! and writes (the runtime's `rowsRead` / `rowsWritten`) for `GET /v1/rooms/{room}`.

use std::cell::Cell as Counter;

use worker::{SqlStorage, SqlStorageValue};

use super::log::{Arg, Cell, Sql};
use super::rpc::StorageStats;
use crate::error::{Error, Result};

/// Row totals since the object started.
#[derive(Debug, Default)]
pub struct Stats {
    rows_read: Counter<u64>,
    rows_written: Counter<u64>,
}

impl Stats {
    /// The totals as the info route reports them.
    pub fn get(&self) -> StorageStats {
        StorageStats {
            rows_read: self.rows_read.get(),
            rows_written: self.rows_written.get(),
        }
    }

    fn count(&self, cursor: &worker::SqlCursor) {
        self.rows_read
            .set(self.rows_read.get() + cursor.rows_read() as u64);
        self.rows_written
            .set(self.rows_written.get() + cursor.rows_written() as u64);
    }
}

/// The Durable Object's SQLite, with its counters.
pub struct DoSql<'a> {
    /// The storage handle.
    pub sql: SqlStorage,
    /// Where rows are counted.
    pub stats: &'a Stats,
}

impl DoSql<'_> {
    fn exec(&self, query: &str, args: &[Arg<'_>]) -> Result<worker::SqlCursor> {
        let bindings: Vec<SqlStorageValue> = args
            .iter()
            .map(|a| match a {
                Arg::Int(i) => SqlStorageValue::Integer(*i),
                Arg::Text(s) => SqlStorageValue::String((*s).to_string()),
                Arg::Null => SqlStorageValue::Null,
            })
            .collect();
        self.sql
            .exec(query, bindings)
            .map_err(|e| Error::Internal(format!("sql {query:?}: {e}")))
    }
}

impl Sql for DoSql<'_> {
    fn write(&self, query: &str, args: &[Arg<'_>]) -> Result<bool> {
        // A statement without result rows has run to completion when `exec` returns.
        let cursor = self.exec(query, args)?;
        self.stats.count(&cursor);
        Ok(cursor.rows_written() > 0)
    }

    fn run(&self, query: &str, args: &[Arg<'_>]) -> Result<Vec<Vec<Cell>>> {
        let cursor = self.exec(query, args)?;
        let mut rows = Vec::new();
        for row in cursor.raw() {
            let row = row.map_err(|e| Error::Internal(format!("sql row: {e}")))?;
            rows.push(
                row.into_iter()
                    .map(|v| match v {
                        SqlStorageValue::Integer(i) => Cell::Int(i),
                        // JS numbers arrive as floats; the log only stores integers < 2^53.
                        SqlStorageValue::Float(f) if f.fract() == 0.0 => Cell::Int(f as i64),
                        SqlStorageValue::String(s) => Cell::Text(s),
                        _ => Cell::Null,
                    })
                    .collect(),
            );
        }
        // The counters grow as the cursor is read, so they are taken after the last row.
        self.stats.count(&cursor);
        Ok(rows)
    }
}
