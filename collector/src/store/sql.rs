//! The seam between the store's logic and a database engine: a transaction
//! that runs SQL with positional arguments and returns rows of plain
//! values. The store, the fleet view and rollouts are written once against
//! it, in SQL both engines speak (`INSERT ... ON CONFLICT`, `RETURNING`,
//! row values); each engine is one file behind [`Backend`] with its own
//! schema and migrations ([`super::sqlite`], [`super::postgres`]).
//!
//! Statements are written with `?1`, `?2`... placeholders (SQLite's); the
//! PostgreSQL backend rewrites them to `$1`, `$2` once per statement.

/// What an engine failed with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SqlError {
    /// SQLite's error.
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL's error (with its SQLSTATE and detail when the server
    /// sent one).
    #[error("{}", postgres_text(.0))]
    Postgres(#[from] postgres::Error),
    /// No connection from the pool in time (the server is down or every
    /// connection is busy).
    #[error("no database connection: {0}")]
    Pool(#[from] r2d2::Error),
    /// A column did not hold what the statement's reader expected.
    #[error("unexpected column value: {0}")]
    Decode(String),
}

fn postgres_text(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!(
            "{} ({}){}",
            db.message(),
            db.code().code(),
            db.detail().map(|d| format!(": {d}")).unwrap_or_default()
        ),
        None => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                text.push_str(&format!(": {s}"));
                source = s.source();
            }
            text
        }
    }
}

impl SqlError {
    /// Whether running the whole transaction again can succeed: a deadlock
    /// or serialization failure between collectors sharing PostgreSQL, or
    /// SQLite busy past its timeout.
    pub fn is_transient(&self) -> bool {
        match self {
            SqlError::Postgres(e) => e.code().is_some_and(|c| {
                *c == postgres::error::SqlState::T_R_DEADLOCK_DETECTED
                    || *c == postgres::error::SqlState::T_R_SERIALIZATION_FAILURE
            }),
            SqlError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => {
                e.code == rusqlite::ErrorCode::DatabaseBusy
            }
            _ => false,
        }
    }
}

/// An argument of a statement, borrowed.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Arg<'a> {
    Null,
    Int(i64),
    Bool(bool),
    Text(&'a str),
    Blob(&'a [u8]),
}

impl From<i64> for Arg<'_> {
    fn from(v: i64) -> Self {
        Arg::Int(v)
    }
}

impl From<bool> for Arg<'_> {
    fn from(v: bool) -> Self {
        Arg::Bool(v)
    }
}

impl<'a> From<&'a str> for Arg<'a> {
    fn from(v: &'a str) -> Self {
        Arg::Text(v)
    }
}

impl<'a> From<&'a String> for Arg<'a> {
    fn from(v: &'a String) -> Self {
        Arg::Text(v)
    }
}

impl<'a> From<&'a [u8]> for Arg<'a> {
    fn from(v: &'a [u8]) -> Self {
        Arg::Blob(v)
    }
}

impl<'a, T: Into<Arg<'a>>> From<Option<T>> for Arg<'a> {
    fn from(v: Option<T>) -> Self {
        v.map_or(Arg::Null, Into::into)
    }
}

/// `args![a, b, ...]`: a statement's arguments.
macro_rules! args {
    ($($a:expr),* $(,)?) => { &[$($crate::store::sql::Arg::from($a)),*] };
}
pub(crate) use args;

/// A value read from a column.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Null,
    Int(i64),
    Bool(bool),
    Text(String),
    Blob(Vec<u8>),
}

/// One record to store, already checked.
#[derive(Debug, Clone)]
pub struct Row<'a> {
    /// The record's id.
    pub id: String,
    /// Its pipeline.
    pub pipeline: String,
    /// Its sequence number.
    pub seq: i64,
    /// The record as JSON text, as it was sent (borrowed from the batch
    /// rather than copied: a batch can be tens of MiB).
    pub body: &'a str,
}

/// One row of a query's answer.
#[derive(Debug)]
pub(crate) struct SqlRow(pub(crate) Vec<Value>);

impl SqlRow {
    fn at(&self, i: usize) -> Result<&Value, SqlError> {
        self.0
            .get(i)
            .ok_or_else(|| SqlError::Decode(format!("no column {i}")))
    }

    pub(crate) fn int(&self, i: usize) -> Result<i64, SqlError> {
        match self.at(i)? {
            Value::Int(v) => Ok(*v),
            Value::Bool(b) => Ok(*b as i64),
            other => Err(SqlError::Decode(format!(
                "column {i}: {other:?}, not an integer"
            ))),
        }
    }

    pub(crate) fn opt_int(&self, i: usize) -> Result<Option<i64>, SqlError> {
        match self.at(i)? {
            Value::Null => Ok(None),
            _ => self.int(i).map(Some),
        }
    }

    pub(crate) fn opt_text(&self, i: usize) -> Result<Option<String>, SqlError> {
        match self.at(i)? {
            Value::Null => Ok(None),
            Value::Text(s) => Ok(Some(s.clone())),
            // SQLite returns text stored in a BLOB column as a blob.
            Value::Blob(b) => String::from_utf8(b.clone())
                .map(Some)
                .map_err(|_| SqlError::Decode(format!("column {i}: not UTF-8"))),
            other => Err(SqlError::Decode(format!("column {i}: {other:?}, not text"))),
        }
    }

    pub(crate) fn text(&self, i: usize) -> Result<String, SqlError> {
        self.opt_text(i)?
            .ok_or_else(|| SqlError::Decode(format!("column {i}: NULL, not text")))
    }

    pub(crate) fn blob(&self, i: usize) -> Result<Vec<u8>, SqlError> {
        match self.at(i)? {
            Value::Blob(b) => Ok(b.clone()),
            Value::Text(s) => Ok(s.clone().into_bytes()),
            other => Err(SqlError::Decode(format!(
                "column {i}: {other:?}, not bytes"
            ))),
        }
    }
}

/// A transaction. Dropped without [`Tx::commit`], it rolls back.
pub(crate) trait Tx {
    /// Run a statement; the number of rows it changed.
    fn exec(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<u64, SqlError>;

    /// Run a query; every row of its answer.
    fn query(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<Vec<SqlRow>, SqlError>;

    /// At most one row of a query's answer.
    fn query_opt(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<Option<SqlRow>, SqlError> {
        Ok(self.query(sql, args)?.into_iter().next())
    }

    /// Insert `rows` of `device`'s batch `key` into `results`, skipping
    /// ids already stored: for each row, whether it was inserted. (The hot
    /// path: one statement per batch where the engine allows.) Rows with
    /// the same id in one batch: the first is inserted, the others not.
    fn insert_results(
        &mut self,
        device: &str,
        key: &str,
        now: i64,
        rows: &[Row<'_>],
    ) -> Result<Vec<bool>, SqlError>;

    /// Make rollout changes one at a time among collectors sharing the
    /// database, until this transaction ends.
    fn lock_rollouts(&mut self) -> Result<(), SqlError>;

    /// Make everything durable.
    fn commit(self: Box<Self>) -> Result<(), SqlError>;
}

/// A database engine.
pub(crate) trait Backend: Send + Sync {
    /// Begin a transaction.
    fn begin(&self) -> Result<Box<dyn Tx + '_>, SqlError>;
}
