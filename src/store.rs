//! The embedded store (SQLite in WAL mode): every successful reading as a sample, and each pool's ledger.
//!
//! `samples` is the history burn rates are computed from; old samples are downsampled
//! ([`Store::compact`]) and dropped past the retention ([`Store::prune`]), so it stays the same
//! size however long the daemon runs. `pools` is one row
//! per pool with its cumulative consumption and last observation, so `consumed_total` survives
//! restarts and pruning. Each poll's rows are written together, in a savepoint of a [`Batch`]: the
//! writer thread commits many polls in one batch, [`Store::record`] writes a batch of one. `proxy_totals` and
//! `proxy_requests` are the fluxrouter proxy's spend ledger and request log. The schema carries a
//! version (`PRAGMA user_version`) and a list of migrations, applied in order on open. `alerts` and
//! `notifications` hold the built-in alerter's state.

use crate::forecast::Point;
use crate::forecast::consumption::Observation;
use rusqlite::{Connection, OptionalExtension, params};
use rust_decimal::Decimal;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// How finely [`Store::compact`] keeps old history: a sample `age` old stands for at most
/// `age / COMPACT_RESOLUTION` of time.
pub const COMPACT_RESOLUTION: i64 = 128;

/// The schema version this build writes. Bump it by appending to `MIGRATIONS`.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// `MIGRATIONS[i]` takes the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: samples and pool ledgers.
    "CREATE TABLE samples (
        account TEXT NOT NULL,
        pool TEXT NOT NULL,
        key TEXT NOT NULL,
        ts_ms INTEGER NOT NULL,
        used REAL,
        remaining REAL,
        limit_value REAL,
        period_start_ms INTEGER,
        consumed REAL NOT NULL,
        PRIMARY KEY (account, pool, key, ts_ms)
    ) WITHOUT ROWID;
    CREATE INDEX samples_by_time ON samples (ts_ms);
    CREATE TABLE pools (
        account TEXT NOT NULL,
        pool TEXT NOT NULL,
        key TEXT NOT NULL,
        unit TEXT NOT NULL,
        first_seen_ms INTEGER NOT NULL,
        last_ts_ms INTEGER NOT NULL,
        consumed REAL NOT NULL,
        used REAL,
        remaining REAL,
        limit_value REAL,
        period_start_ms INTEGER,
        PRIMARY KEY (account, pool, key)
    ) WITHOUT ROWID;",
    // 2: the fluxrouter proxy's ledger. `proxy_totals` holds exact running totals (costs as
    // decimal text, never REAL) by period, model, status code and key name; `proxy_requests` logs
    // each metered request with its request id, and is pruned by age while the totals stay.
    "CREATE TABLE proxy_totals (
        account TEXT NOT NULL,
        period_start_ms INTEGER NOT NULL,
        model TEXT NOT NULL,
        code INTEGER NOT NULL,
        key TEXT NOT NULL,
        requests INTEGER NOT NULL,
        unpriced INTEGER NOT NULL,
        cost_usd TEXT NOT NULL,
        PRIMARY KEY (account, period_start_ms, model, code, key)
    ) WITHOUT ROWID;
    CREATE TABLE proxy_requests (
        account TEXT NOT NULL,
        ts_ms INTEGER NOT NULL,
        period_start_ms INTEGER NOT NULL,
        model TEXT NOT NULL,
        code INTEGER NOT NULL,
        key TEXT NOT NULL,
        key_hash TEXT,
        request_id TEXT,
        cost_usd TEXT,
        note TEXT
    );
    CREATE INDEX proxy_requests_by_time ON proxy_requests (ts_ms);
    CREATE INDEX proxy_requests_by_request_id ON proxy_requests (request_id);",
    // 3: the built-in alerter's alerts and what each receiver was last told, so a restart
    // neither pages again nor forgets a firing alert.
    "CREATE TABLE alerts (
        fingerprint TEXT PRIMARY KEY,
        alertname TEXT NOT NULL,
        labels TEXT NOT NULL,
        annotations TEXT NOT NULL,
        phase TEXT NOT NULL,
        active_at_ms INTEGER NOT NULL,
        fired_at_ms INTEGER,
        resolved_at_ms INTEGER
    ) WITHOUT ROWID;
    CREATE TABLE notifications (
        receiver TEXT NOT NULL,
        group_key TEXT NOT NULL,
        sent_at_ms INTEGER NOT NULL,
        firing TEXT NOT NULL,
        PRIMARY KEY (receiver, group_key)
    ) WITHOUT ROWID;",
    // 4: samples clustered by (account, time, pool) instead of (account, pool, key, time), with
    // accounts and pools named by integer ids. One poll's samples are then appended together at
    // the end of its account's range (a few pages) instead of each going into the page of its
    // own pool's history (a page per pool: 40 MB of write-ahead log for a poll of 10,000 keys),
    // a row no longer repeats the account, pool and key names, and pruning needs no index by
    // time. The burn windows' samples are read for all of an account's pools at once
    // ([`Batch::refill`]).
    "CREATE TABLE account_ids (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE
    );
    CREATE TABLE pool_ids (
        id INTEGER PRIMARY KEY,
        account_id INTEGER NOT NULL REFERENCES account_ids (id),
        pool TEXT NOT NULL,
        key TEXT NOT NULL,
        UNIQUE (account_id, pool, key)
    );
    INSERT INTO account_ids (name) SELECT DISTINCT account FROM samples ORDER BY account;
    INSERT INTO pool_ids (account_id, pool, key)
        SELECT DISTINCT a.id, s.pool, s.key FROM samples s JOIN account_ids a ON a.name = s.account
        ORDER BY 1, 2, 3;
    CREATE TABLE samples_v4 (
        account_id INTEGER NOT NULL,
        ts_ms INTEGER NOT NULL,
        pool_id INTEGER NOT NULL,
        used REAL,
        remaining REAL,
        limit_value REAL,
        period_start_ms INTEGER,
        consumed REAL NOT NULL,
        PRIMARY KEY (account_id, ts_ms, pool_id)
    ) WITHOUT ROWID;
    INSERT INTO samples_v4
        SELECT a.id, s.ts_ms, p.id, s.used, s.remaining, s.limit_value, s.period_start_ms, s.consumed
        FROM samples s JOIN account_ids a ON a.name = s.account
        JOIN pool_ids p ON p.account_id = a.id AND p.pool = s.pool AND p.key = s.key
        ORDER BY 1, 2, 3;
    DROP TABLE samples;
    ALTER TABLE samples_v4 RENAME TO samples;",
    // 5: the ledgers keyed by pool id as well: each poll updates every pool's ledger, and an
    // integer key is found without comparing names.
    "CREATE TABLE ledgers (
        pool_id INTEGER PRIMARY KEY REFERENCES pool_ids (id),
        unit TEXT NOT NULL,
        first_seen_ms INTEGER NOT NULL,
        last_ts_ms INTEGER NOT NULL,
        consumed REAL NOT NULL,
        used REAL,
        remaining REAL,
        limit_value REAL,
        period_start_ms INTEGER
    );
    INSERT OR IGNORE INTO account_ids (name) SELECT DISTINCT account FROM pools ORDER BY account;
    INSERT OR IGNORE INTO pool_ids (account_id, pool, key)
        SELECT a.id, p.pool, p.key FROM pools p JOIN account_ids a ON a.name = p.account
        ORDER BY 1, 2, 3;
    INSERT INTO ledgers
        SELECT i.id, p.unit, p.first_seen_ms, p.last_ts_ms, p.consumed, p.used, p.remaining,
               p.limit_value, p.period_start_ms
        FROM pools p JOIN account_ids a ON a.name = p.account
        JOIN pool_ids i ON i.account_id = a.id AND i.pool = p.pool AND i.key = p.key;
    DROP TABLE pools;",
];

/// A failure of the store, with the database path.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state store {path}: {source}")]
    Sqlite {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "state store {path} has schema version {found}, newer than this build understands ({SCHEMA_VERSION}); use a newer creditwatch or another state_path"
    )]
    TooNew { path: String, found: i64 },
    #[error("state store {path}: {detail}")]
    Corrupt { path: String, detail: String },
    /// A batch of writes could not begin or commit; every poll in it reports this.
    #[error("state store {path}: {detail}")]
    Batch { path: String, detail: String },
}

impl StoreError {
    /// `Some("corrupt" | "locked")` when the file itself is unusable and moving it aside lets
    /// the daemon start: not a database, damaged, or locked by another process.
    fn unusable_file(&self) -> Option<&'static str> {
        use rusqlite::ErrorCode as C;
        match self {
            StoreError::Corrupt { .. } => Some("corrupt"),
            StoreError::Sqlite {
                source: rusqlite::Error::SqliteFailure(f, _),
                ..
            } => match f.code {
                C::NotADatabase | C::DatabaseCorrupt => Some("corrupt"),
                C::DatabaseBusy | C::DatabaseLocked => Some("locked"),
                _ => None,
            },
            _ => None,
        }
    }
}

/// A store file that could not be used and was renamed so the daemon could start afresh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MovedAside {
    /// Why it could not be used.
    pub reason: String,
    /// Where it is now.
    pub to: PathBuf,
}

/// A pool within an account: its name and, for per-key pools, the key name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PoolId {
    pub pool: String,
    pub key: String,
}

/// A pool's running totals: what the next reading's consumption is computed against.
#[derive(Debug, Clone, PartialEq)]
pub struct Ledger {
    pub unit: String,
    pub first_seen_ms: i64,
    pub last_ts_ms: i64,
    /// Cumulative consumption since the pool was first seen (`consumed_total`).
    pub consumed: f64,
    pub last: Observation,
}

/// One sample to record.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleRow {
    pub id: PoolId,
    pub unit: String,
    pub ts_ms: i64,
    pub used: Option<f64>,
    pub remaining: Option<f64>,
    pub limit: Option<f64>,
    pub period_start_ms: Option<i64>,
    /// Cumulative consumption at this sample.
    pub consumed: f64,
}

/// The store's integer ids of one account and of its pools (samples are keyed by them), kept by
/// a writer between polls so that a poll looks none of them up. [`Batch::record`] fills it, and
/// empties it when a write fails: a rolled-back write may have taken new ids with it.
#[derive(Debug, Default)]
pub struct Ids {
    account: Option<i64>,
    pools: crate::smallmap::SmallMap<PoolId, i64>,
}

impl Ids {
    /// The account's id, once a poll of it has been written.
    pub fn account(&self) -> Option<i64> {
        self.account
    }

    /// A pool's id, once a sample of it has been written.
    pub fn pool(&self, id: &PoolId) -> Option<i64> {
        self.pools.get(id).copied()
    }

    /// Every pool known, with its id.
    pub fn pools(&self) -> impl Iterator<Item = (&PoolId, i64)> {
        self.pools.iter().map(|(id, &p)| (id, p))
    }
}

/// One row of the proxy ledger: what a fluxrouter proxy served in one billing period for one
/// model, upstream status code and key name (empty without per-key attribution).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProxyKey {
    pub period_start_ms: i64,
    pub model: String,
    pub code: u16,
    pub key: String,
}

/// Running totals of one [`ProxyKey`]. Costs are exact decimals.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxyCount {
    pub requests: u64,
    pub unpriced: u64,
    pub cost: Decimal,
}

impl ProxyCount {
    pub fn add(&mut self, other: &ProxyCount) {
        self.requests += other.requests;
        self.unpriced += other.unpriced;
        self.cost += other.cost;
    }
}

/// One metered request in the proxy's request log. Never holds an Authorization value: at most
/// the short hash used for per-key attribution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyLogRow {
    pub ts_ms: i64,
    pub key: ProxyKey,
    pub key_hash: Option<String>,
    pub request_id: Option<String>,
    /// The cost added to the ledger, as decimal text; `None` when unpriced.
    pub cost: Option<Decimal>,
    /// Why a request is unpriced (e.g. the malformed header value), for later diagnosis.
    pub note: Option<String>,
}

/// One alert of the built-in alerter, as stored (labels and annotations as JSON objects).
#[derive(Debug, Clone, PartialEq)]
pub struct AlertRow {
    pub fingerprint: String,
    pub alertname: String,
    pub labels: String,
    pub annotations: String,
    pub phase: String,
    pub active_at_ms: i64,
    pub fired_at_ms: Option<i64>,
    pub resolved_at_ms: Option<i64>,
}

/// What a receiver was last told about one group: when, and which alerts were firing (JSON).
#[derive(Debug, Clone, PartialEq)]
pub struct NotificationRow {
    pub group_key: String,
    pub sent_at_ms: i64,
    pub firing: String,
}

/// Handle to the store; cheap to clone. Calls block, so async code runs them on the blocking pool.
#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
    path: String,
    /// Bumped whenever samples are deleted (compaction, pruning), so that what a reader keeps of
    /// the history in memory knows to read it again ([`Store::generation`]).
    generation: Arc<AtomicU64>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens (creating if needed) the store at `path`, in WAL mode, migrated to the current schema.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let shown = path.display().to_string();
        let conn = Connection::open(path).map_err(|source| StoreError::Sqlite {
            path: shown.clone(),
            source,
        })?;
        Store::init(conn, shown)
    }

    /// Opens the store at `path` like [`Store::open`], and also proves it usable: its pages pass
    /// SQLite's `quick_check` and a write transaction can be taken. A file that is not a
    /// database, is corrupt, or is locked by another process is moved aside (with its `-wal`
    /// and `-shm`, to `<path>.corrupt-<unix time>` or `<path>.locked-<unix time>`) and a fresh
    /// store is created in its place, so a bad file never makes the daemon crash-loop. A store
    /// from a newer build, or one that cannot be opened at all (permissions, a missing
    /// directory), is an error: moving it would not help, or would destroy good data.
    pub fn open_or_recover(
        path: &Path,
        now_unix: i64,
    ) -> Result<(Store, Option<MovedAside>), StoreError> {
        let err = match Store::open_checked(path) {
            Ok(s) => return Ok((s, None)),
            Err(e) => e,
        };
        let Some(kind) = err.unusable_file() else {
            return Err(err);
        };
        let mut to = path.as_os_str().to_owned();
        to.push(format!(".{kind}-{now_unix}"));
        let to = PathBuf::from(to);
        for suffix in ["", "-wal", "-shm"] {
            let mut from = path.as_os_str().to_owned();
            from.push(suffix);
            let mut dest = to.as_os_str().to_owned();
            dest.push(suffix);
            match std::fs::rename(&from, &dest) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && !suffix.is_empty() => {}
                Err(e) => {
                    return Err(StoreError::Corrupt {
                        path: path.display().to_string(),
                        detail: format!(
                            "{err}; and it cannot be moved aside to {}: {e}",
                            PathBuf::from(dest).display()
                        ),
                    });
                }
            }
        }
        let store = Store::open_checked(path)?;
        Ok((
            store,
            Some(MovedAside {
                reason: err.to_string(),
                to,
            }),
        ))
    }

    fn open_checked(path: &Path) -> Result<Store, StoreError> {
        let store = Store::open(path)?;
        {
            let conn = store.conn();
            let check: String = conn
                .query_row("PRAGMA quick_check", [], |r| r.get(0))
                .map_err(|e| store.err(e))?;
            if check != "ok" {
                return Err(StoreError::Corrupt {
                    path: store.path.clone(),
                    detail: format!("integrity check failed: {check}"),
                });
            }
            // A lock held by another process shows only when writing.
            conn.execute_batch("BEGIN IMMEDIATE; ROLLBACK;")
                .map_err(|e| store.err(e))?;
        }
        Ok(store)
    }

    /// A store that lives in memory only (for `creditwatch once` and tests).
    pub fn in_memory() -> Store {
        let conn = Connection::open_in_memory().expect("in-memory SQLite opens");
        Store::init(conn, ":memory:".into()).expect("in-memory store initializes")
    }

    fn init(conn: Connection, path: String) -> Result<Store, StoreError> {
        let err = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        // First, so that a lock held for a moment by another process is waited for rather than
        // taken for a locked store.
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(err)?;
        // WAL keeps readers and the writer out of each other's way; NORMAL sync is durable
        // against a killed process (the WAL is on disk), which is the failure that matters here.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(err)?;
        // Keep each prepared statement's plan: without this, a statement with a range on a bound
        // value (`ts_ms < ?`) is compiled again whenever the value changes, which was the largest
        // cost of a poll. The plans follow the primary key either way.
        conn.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
            true,
        )
        .map_err(err)?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(err)?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                path,
                found: version,
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            conn.execute_batch(&format!(
                "BEGIN; {sql}; PRAGMA user_version = {}; COMMIT;",
                i + 1
            ))
            .map_err(err)?;
        }
        Ok(Store {
            conn: Arc::new(Mutex::new(conn)),
            path,
            generation: Arc::new(AtomicU64::new(0)),
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written (transactions roll
        // back), so a poisoned lock is safe to keep using.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn err(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    pub fn schema_version(&self) -> Result<i64, StoreError> {
        self.conn()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| self.err(e))
    }

    /// Every pool ledger of an account.
    pub fn ledgers(&self, account: &str) -> Result<BTreeMap<PoolId, Ledger>, StoreError> {
        let mut out = BTreeMap::new();
        ledgers_in(&self.conn(), account, |_, _, id, ledger| {
            out.insert(id, ledger);
        })
        .map_err(|e| self.err(e))?;
        Ok(out)
    }

    /// Records one poll's samples and moves each pool's ledger forward, atomically.
    pub fn record(&self, account: &str, rows: &[SampleRow]) -> Result<(), StoreError> {
        self.record_with_history(account, rows, &[])
    }

    /// Like [`Store::record`], also adding `history`: samples reconstructed from what the
    /// provider reported about the past. They never replace a recorded sample and never move a
    /// ledger.
    pub fn record_with_history(
        &self,
        account: &str,
        rows: &[SampleRow],
        history: &[SampleRow],
    ) -> Result<(), StoreError> {
        // A batch of one: its savepoint undoes a partial write, and the commit is its own.
        let (written, committed) =
            self.batch(|b| b.record(account, &mut Ids::default(), rows, history));
        written.and(committed)
    }

    /// How many times samples have been deleted since the store was opened. History kept in
    /// memory from before a change may hold samples the store no longer has; reading again
    /// keeps the burn what the store alone would give.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Runs `f` inside one write transaction and commits it, so that many accounts' polls cost
    /// one commit (the write-ahead log gets each page they touch once per batch, not once per
    /// poll). [`Batch::record`] puts each poll's writes in a savepoint, so one failing poll does
    /// not undo the others. The commit's result is returned beside `f`'s.
    pub fn batch<T>(&self, f: impl FnOnce(&Batch<'_>) -> T) -> (T, Result<(), StoreError>) {
        let conn = self.conn();
        let begun = conn.execute_batch("BEGIN");
        let batch = Batch {
            conn: &conn,
            store: self,
            broken: begun.as_ref().err().map(|e| e.to_string()),
            insert: RefCell::new(None),
            ledger: RefCell::new(None),
        };
        let out = f(&batch);
        drop(batch);
        let committed = match begun {
            Err(e) => Err(self.err(e)),
            Ok(()) => conn.execute_batch("COMMIT").map_err(|e| {
                let _ = conn.execute_batch("ROLLBACK");
                self.err(e)
            }),
        };
        (out, committed)
    }

    /// A pool's cumulative-consumption history since `since_ms`, oldest first, preceded by the
    /// last sample before `since_ms` when there is one: the burn over a window interpolates the
    /// consumption at the window's start from the samples on either side of it.
    pub fn points(
        &self,
        account: &str,
        id: &PoolId,
        since_ms: i64,
    ) -> Result<Vec<Point>, StoreError> {
        let conn = self.conn();
        let Some((a, p)) = find_ids(&conn, account, id).map_err(|e| self.err(e))? else {
            return Ok(Vec::new());
        };
        let mut stmt = conn
            .prepare_cached(
                "SELECT ts_ms, consumed FROM (
                   SELECT ts_ms, consumed FROM samples
                   WHERE account_id = ?1 AND pool_id = ?2 AND ts_ms < ?3
                   ORDER BY ts_ms DESC LIMIT 1)
                 UNION ALL
                 SELECT ts_ms, consumed FROM samples
                 WHERE account_id = ?1 AND pool_id = ?2 AND ts_ms >= ?3
                 ORDER BY ts_ms",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![a, p, since_ms], |r| {
                Ok(Point {
                    t: r.get::<_, i64>(0)? as f64 / 1000.0,
                    consumed: r.get(1)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// The few samples of a pool that the burn over each window ending at `now_ms` reads: for
    /// each window start, the last sample before it and the first at or after it, plus the last
    /// sample at or before `now_ms`. Oldest first, without duplicates.
    ///
    /// [`crate::forecast::burn_rate`] gives the same answer from these as from every sample since
    /// the longest window's start ([`Store::points`]): it only ever reads the samples around a
    /// window's start and the last one. Each lookup walks the account's samples from that
    /// instant until it meets one of the pool's, a step per pool of the account; the writer
    /// reads them for all pools at once instead ([`Batch::refill`]).
    pub fn window_points(
        &self,
        account: &str,
        id: &PoolId,
        now_ms: i64,
        window_starts_ms: &[i64],
    ) -> Result<Vec<Point>, StoreError> {
        window_points_in(&self.conn(), account, id, now_ms, window_starts_ms)
            .map_err(|e| self.err(e))
    }

    /// A pool's `remaining` over `[since_ms, until_ms]` as `(ts_ms, remaining)`, oldest first, for
    /// the status page chart. At most `max_points` points: the window is cut into that many equal
    /// buckets and each keeps its latest sample, so the answer stays small however often the
    /// account is polled. The scan walks the account's samples over the window.
    ///
    /// The page reads its charts with [`Store::remaining_histories`]; this one-pool query, the
    /// plainest statement of what a chart shows, is kept as the reference that is tested against.
    #[cfg(test)]
    pub fn remaining_history(
        &self,
        account: &str,
        id: &PoolId,
        since_ms: i64,
        until_ms: i64,
        max_points: usize,
    ) -> Result<Vec<(i64, f64)>, StoreError> {
        // ceil((span + 1) / max_points) keeps the bucket count at or under `max_points`.
        let n = max_points.max(1) as i64;
        let bucket = ((until_ms - since_ms).max(0) + n) / n;
        let conn = self.conn();
        let Some((a, p)) = find_ids(&conn, account, id).map_err(|e| self.err(e))? else {
            return Ok(Vec::new());
        };
        // SQLite takes the bare `remaining` from the row that holds the MAX(ts_ms) of the group.
        let mut stmt = conn
            .prepare_cached(
                "SELECT MAX(ts_ms), remaining FROM samples
                 WHERE account_id = ?1 AND pool_id = ?2 AND ts_ms >= ?3 AND ts_ms <= ?4
                   AND remaining IS NOT NULL
                 GROUP BY (ts_ms - ?3) / ?5 ORDER BY 1",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![a, p, since_ms, until_ms, bucket], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, f64>(1)?))
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// `remaining_history` of several pools of one account, in the order of `pools`
    /// (empty for a pool the store has no sample of), read in one walk of the account's samples.
    ///
    /// Samples are keyed by (account, time, pool), so a query for one pool walks every pool's
    /// samples over the window: the status page's 100 cards of a 10,000-key account took 21 s,
    /// a query each. An account with few pools is now walked once for all of its cards. For one
    /// with many (`SEEK_POOLS` or more) the walk would still be millions of rows, so each
    /// bucket is found by seeking instead: the latest poll in the bucket, then each card's row
    /// of that poll by its key, going back to earlier polls in the bucket only for a pool that
    /// poll did not write. Both give exactly what `remaining_history` gives.
    pub fn remaining_histories(
        &self,
        account: &str,
        pools: &[PoolId],
        since_ms: i64,
        until_ms: i64,
        max_points: usize,
    ) -> Result<Vec<Vec<(i64, f64)>>, StoreError> {
        let conn = self.conn();
        let mut ids = Vec::with_capacity(pools.len());
        let mut account_id = None;
        for id in pools {
            let found = find_ids(&conn, account, id).map_err(|e| self.err(e))?;
            account_id = account_id.or(found.map(|(a, _)| a));
            ids.push(found.map(|(_, p)| p));
        }
        let Some(account_id) = account_id else {
            return Ok(vec![Vec::new(); pools.len()]);
        };
        let known: i64 = conn
            .prepare_cached("SELECT COUNT(*) FROM pool_ids WHERE account_id = ?1")
            .and_then(|mut s| s.query_row([account_id], |r| r.get(0)))
            .map_err(|e| self.err(e))?;
        let walk = if known < SEEK_POOLS {
            HistoryWalk::Scan
        } else {
            HistoryWalk::Seek
        };
        histories_in(
            &conn, account_id, &ids, since_ms, until_ms, max_points, walk,
        )
        .map_err(|e| self.err(e))
    }

    /// Every proxy ledger row of an account.
    pub fn proxy_totals(
        &self,
        account: &str,
    ) -> Result<BTreeMap<ProxyKey, ProxyCount>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "SELECT period_start_ms, model, code, key, requests, unpriced, cost_usd
                 FROM proxy_totals WHERE account = ?1",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![account], |r| {
                Ok((
                    ProxyKey {
                        period_start_ms: r.get(0)?,
                        model: r.get(1)?,
                        code: r.get(2)?,
                        key: r.get(3)?,
                    },
                    r.get::<_, i64>(4)?,
                    r.get::<_, i64>(5)?,
                    r.get::<_, String>(6)?,
                ))
            })
            .map_err(|e| self.err(e))?;
        let mut out = BTreeMap::new();
        for row in rows {
            let (key, requests, unpriced, cost) = row.map_err(|e| self.err(e))?;
            let cost = Decimal::from_str(&cost).map_err(|e| StoreError::Corrupt {
                path: self.path.clone(),
                detail: format!("proxy ledger of account {account:?} holds cost {cost:?}: {e}"),
            })?;
            out.insert(
                key,
                ProxyCount {
                    requests: requests.max(0) as u64,
                    unpriced: unpriced.max(0) as u64,
                    cost,
                },
            );
        }
        Ok(out)
    }

    /// Adds `deltas` to the proxy ledger and appends `log` to the request log, atomically. Costs
    /// are added as decimals in Rust (SQLite would sum text as floating point).
    pub fn record_proxy(
        &self,
        account: &str,
        deltas: &BTreeMap<ProxyKey, ProxyCount>,
        log: &[ProxyLogRow],
    ) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        {
            let mut get = tx
                .prepare_cached(
                    "SELECT requests, unpriced, cost_usd FROM proxy_totals
                     WHERE account = ?1 AND period_start_ms = ?2 AND model = ?3 AND code = ?4 AND key = ?5",
                )
                .map_err(|e| self.err(e))?;
            let mut put = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO proxy_totals
                     (account, period_start_ms, model, code, key, requests, unpriced, cost_usd)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )
                .map_err(|e| self.err(e))?;
            for (k, d) in deltas {
                let current: Option<(i64, i64, String)> = get
                    .query_row(
                        params![account, k.period_start_ms, k.model, k.code, k.key],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                    )
                    .optional()
                    .map_err(|e| self.err(e))?;
                let mut total = ProxyCount::default();
                if let Some((requests, unpriced, cost)) = current {
                    total.requests = requests.max(0) as u64;
                    total.unpriced = unpriced.max(0) as u64;
                    total.cost = Decimal::from_str(&cost).map_err(|e| StoreError::Corrupt {
                        path: self.path.clone(),
                        detail: format!(
                            "proxy ledger of account {account:?} holds cost {cost:?}: {e}"
                        ),
                    })?;
                }
                total.add(d);
                put.execute(params![
                    account,
                    k.period_start_ms,
                    k.model,
                    k.code,
                    k.key,
                    total.requests as i64,
                    total.unpriced as i64,
                    total.cost.normalize().to_string()
                ])
                .map_err(|e| self.err(e))?;
            }
            let mut ins = tx
                .prepare_cached(
                    "INSERT INTO proxy_requests
                     (account, ts_ms, period_start_ms, model, code, key, key_hash, request_id, cost_usd, note)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                )
                .map_err(|e| self.err(e))?;
            for r in log {
                ins.execute(params![
                    account,
                    r.ts_ms,
                    r.key.period_start_ms,
                    r.key.model,
                    r.key.code,
                    r.key.key,
                    r.key_hash,
                    r.request_id,
                    r.cost.map(|c| c.normalize().to_string()),
                    r.note
                ])
                .map_err(|e| self.err(e))?;
            }
        }
        tx.commit().map_err(|e| self.err(e))
    }

    /// The proxy request log of an account since `since_ms`, oldest first.
    pub fn proxy_log(&self, account: &str, since_ms: i64) -> Result<Vec<ProxyLogRow>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "SELECT ts_ms, period_start_ms, model, code, key, key_hash, request_id, cost_usd, note
                 FROM proxy_requests WHERE account = ?1 AND ts_ms >= ?2 ORDER BY ts_ms, rowid",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![account, since_ms], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    ProxyKey {
                        period_start_ms: r.get(1)?,
                        model: r.get(2)?,
                        code: r.get(3)?,
                        key: r.get(4)?,
                    },
                    r.get::<_, Option<String>>(5)?,
                    r.get::<_, Option<String>>(6)?,
                    r.get::<_, Option<String>>(7)?,
                    r.get::<_, Option<String>>(8)?,
                ))
            })
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (ts_ms, key, key_hash, request_id, cost, note) = row.map_err(|e| self.err(e))?;
            let cost = match cost {
                None => None,
                Some(c) => Some(Decimal::from_str(&c).map_err(|e| StoreError::Corrupt {
                    path: self.path.clone(),
                    detail: format!("proxy request log holds cost {c:?}: {e}"),
                })?),
            };
            out.push(ProxyLogRow {
                ts_ms,
                key,
                key_hash,
                request_id,
                cost,
                note,
            });
        }
        Ok(out)
    }

    /// Deletes an account's proxy request log entries older than `before_ms`; totals are kept.
    pub fn prune_proxy_log(&self, account: &str, before_ms: i64) -> Result<usize, StoreError> {
        self.conn()
            .execute(
                "DELETE FROM proxy_requests WHERE account = ?1 AND ts_ms < ?2",
                params![account, before_ms],
            )
            .map_err(|e| self.err(e))
    }

    /// Number of samples stored for an account (all pools).
    pub fn sample_count(&self, account: &str) -> Result<i64, StoreError> {
        self.conn()
            .query_row(
                "SELECT COUNT(*) FROM samples
                 WHERE account_id = (SELECT id FROM account_ids WHERE name = ?1)",
                params![account],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))
    }

    /// Number of samples stored, all accounts.
    pub fn total_samples(&self) -> Result<i64, StoreError> {
        self.conn()
            .query_row("SELECT COUNT(*) FROM samples", [], |r| r.get(0))
            .map_err(|e| self.err(e))
    }

    /// Size of the database in bytes (pages in use or free, the WAL's pages included).
    pub fn size_bytes(&self) -> Result<i64, StoreError> {
        self.conn()
            .query_row(
                "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
                [],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))
    }

    /// Deletes samples older than `before_ms`, except each pool's newest sample: after a long
    /// gap it is what the first new reading's consumption is spread over. Ledgers are kept.
    /// Returns how many samples were deleted.
    pub fn prune(&self, before_ms: i64) -> Result<usize, StoreError> {
        self.thin(|ts| prune_victims(ts, before_ms))
    }

    /// Downsamples old history so its size grows with the logarithm of its age, not linearly.
    ///
    /// A sample `age` old is kept only if it is the newest in its bucket of
    /// `2^floor(log2(age / COMPACT_RESOLUTION))` ms (aligned on multiples of the bucket size), or
    /// the pool's oldest sample. A burn window of length `W` interpolates its start between
    /// samples at most `W / COMPACT_RESOLUTION` apart, and a constant burn is unaffected. Each
    /// doubling of age holds at most `COMPACT_RESOLUTION + 1` samples per pool, so with a
    /// retention `R` a pool keeps about `COMPACT_RESOLUTION * log2(R / (COMPACT_RESOLUTION *
    /// interval))` samples plus the recent ones at full resolution, however long it runs.
    /// Buckets nest (each is two halves of the next size), so compacting again as samples age is
    /// consistent. Returns how many samples were deleted.
    pub fn compact(&self, now_ms: i64) -> Result<usize, StoreError> {
        self.thin(|ts| compaction_victims(ts, now_ms))
    }

    /// Deletes, in one transaction, the samples `victims` picks from each pool's sample times
    /// (oldest first). An account's samples are read in one pass of its range and grouped by
    /// pool in memory: they are clustered by time, so SQL asking for "the pool's newest sample"
    /// per row would walk the account's range once per row.
    fn thin(&self, victims: impl Fn(&[i64]) -> Vec<i64>) -> Result<usize, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        let run = || -> rusqlite::Result<usize> {
            let accounts: Vec<i64> = tx
                .prepare("SELECT id FROM account_ids")?
                .query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            let mut read = tx.prepare_cached(
                "SELECT pool_id, ts_ms FROM samples WHERE account_id = ?1 ORDER BY ts_ms",
            )?;
            let mut del = tx.prepare_cached(
                "DELETE FROM samples WHERE account_id = ?1 AND ts_ms = ?2 AND pool_id = ?3",
            )?;
            let mut deleted = 0;
            for a in accounts {
                let mut by_pool: HashMap<i64, Vec<i64>> = HashMap::new();
                let mut rows = read.query(params![a])?;
                while let Some(r) = rows.next()? {
                    by_pool.entry(r.get(0)?).or_default().push(r.get(1)?);
                }
                for (p, ts) in &by_pool {
                    for t in victims(ts) {
                        deleted += del.execute(params![a, t, p])?;
                    }
                }
            }
            Ok(deleted)
        };
        let deleted = run().map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))?;
        if deleted > 0 {
            // Under the lock, so a writer that takes it next sees the change.
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        Ok(deleted)
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    /// Holds the store's connection, for tests that need the writer to wait.
    #[cfg(test)]
    pub(crate) fn hold_for_test(&self) -> MutexGuard<'_, Connection> {
        self.conn()
    }

    /// Runs raw SQL, for tests that break the store on purpose.
    #[cfg(test)]
    pub(crate) fn execute_for_test(&self, sql: &str) {
        self.conn().execute_batch(sql).expect("test SQL runs");
    }

    /// Every alert of the built-in alerter.
    pub fn alerts(&self) -> Result<Vec<AlertRow>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "SELECT fingerprint, alertname, labels, annotations, phase, active_at_ms, fired_at_ms, resolved_at_ms
                 FROM alerts ORDER BY fingerprint",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(AlertRow {
                    fingerprint: r.get(0)?,
                    alertname: r.get(1)?,
                    labels: r.get(2)?,
                    annotations: r.get(3)?,
                    phase: r.get(4)?,
                    active_at_ms: r.get(5)?,
                    fired_at_ms: r.get(6)?,
                    resolved_at_ms: r.get(7)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// Replaces the alerter's alerts with `rows`, atomically.
    pub fn save_alerts(&self, rows: &[AlertRow]) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        tx.execute("DELETE FROM alerts", [])
            .map_err(|e| self.err(e))?;
        {
            let mut ins = tx
                .prepare_cached(
                    "INSERT INTO alerts (fingerprint, alertname, labels, annotations, phase, active_at_ms, fired_at_ms, resolved_at_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )
                .map_err(|e| self.err(e))?;
            for r in rows {
                ins.execute(params![
                    r.fingerprint,
                    r.alertname,
                    r.labels,
                    r.annotations,
                    r.phase,
                    r.active_at_ms,
                    r.fired_at_ms,
                    r.resolved_at_ms
                ])
                .map_err(|e| self.err(e))?;
            }
        }
        tx.commit().map_err(|e| self.err(e))
    }

    /// What `receiver` was last told, by group.
    pub fn notifications(&self, receiver: &str) -> Result<Vec<NotificationRow>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "SELECT group_key, sent_at_ms, firing FROM notifications WHERE receiver = ?1 ORDER BY group_key",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![receiver], |r| {
                Ok(NotificationRow {
                    group_key: r.get(0)?,
                    sent_at_ms: r.get(1)?,
                    firing: r.get(2)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// Records a delivered notification; a group with nothing firing any more is deleted.
    pub fn record_notification(
        &self,
        receiver: &str,
        row: &NotificationRow,
        still_firing: bool,
    ) -> Result<(), StoreError> {
        let conn = self.conn();
        let r = if still_firing {
            conn.execute(
                "INSERT INTO notifications (receiver, group_key, sent_at_ms, firing) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (receiver, group_key) DO UPDATE SET sent_at_ms = excluded.sent_at_ms, firing = excluded.firing",
                params![receiver, row.group_key, row.sent_at_ms, row.firing],
            )
        } else {
            conn.execute(
                "DELETE FROM notifications WHERE receiver = ?1 AND group_key = ?2",
                params![receiver, row.group_key],
            )
        };
        r.map(|_| ()).map_err(|e| self.err(e))
    }
}

/// A sample as `(ts_ms, consumed)`.
pub type TsValue = (i64, f64);

/// One write transaction shared by many polls ([`Store::batch`]). Reads see the batch's own
/// writes.
pub struct Batch<'a> {
    conn: &'a Connection,
    store: &'a Store,
    /// Why the transaction could not begin; every write then fails with it.
    broken: Option<String>,
    // The sample and ledger statements, prepared once per batch rather than looked up per row.
    insert: RefCell<Option<rusqlite::CachedStatement<'a>>>,
    ledger: RefCell<Option<rusqlite::CachedStatement<'a>>>,
}

impl Batch<'_> {
    /// Every pool ledger of an account.
    /// Every pool ledger of an account, by pool id; `ids` learns the ids of the account and
    /// its pools.
    pub fn ledgers(
        &self,
        account: &str,
        ids: &mut Ids,
    ) -> Result<crate::smallmap::SmallMap<i64, Ledger>, StoreError> {
        let mut out = crate::smallmap::SmallMap::new();
        ledgers_in(self.conn, account, |a, p, id, ledger| {
            ids.account = Some(a);
            ids.pools.insert(id, p);
            out.insert(p, ledger);
        })
        .map_err(|e| self.store.err(e))?;
        Ok(out)
    }

    /// Records one poll as [`Store::record_with_history`] does, inside a savepoint: if any of its
    /// writes fails, none of them stays and the rest of the batch is unaffected. `ids` holds the
    /// account's ids known so far and gains those this write creates; it is emptied if the
    /// write fails.
    pub fn record(
        &self,
        account: &str,
        ids: &mut Ids,
        rows: &[SampleRow],
        history: &[SampleRow],
    ) -> Result<(), StoreError> {
        if let Some(why) = &self.broken {
            return Err(StoreError::Batch {
                path: self.store.path.clone(),
                detail: format!("cannot begin a transaction: {why}"),
            });
        }
        let run = |sql: &str| {
            self.conn
                .prepare_cached(sql)
                .and_then(|mut s| s.execute([]))
        };
        run("SAVEPOINT poll").map_err(|e| self.store.err(e))?;
        let written = (|| -> rusqlite::Result<()> {
            let account_id = match ids.account {
                Some(a) => a,
                None => {
                    let a = create_account_id(self.conn, account)?;
                    ids.account = Some(a);
                    a
                }
            };
            let mut pool_id = |id: &PoolId| -> rusqlite::Result<i64> {
                if let Some(&p) = ids.pools.get(id) {
                    return Ok(p);
                }
                let p = create_pool_id(self.conn, account_id, id)?;
                ids.pools.insert(id.clone(), p);
                Ok(p)
            };
            if !history.is_empty() {
                let mut past = self.conn.prepare_cached(
                    "INSERT OR IGNORE INTO samples
                     (account_id, ts_ms, pool_id, used, remaining, limit_value, period_start_ms, consumed)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )?;
                for r in history {
                    insert_sample(&mut past, account_id, pool_id(&r.id)?, r)?;
                }
            }
            let mut insert = self.insert.borrow_mut();
            let mut ledger = self.ledger.borrow_mut();
            if insert.is_none() {
                *insert = Some(self.conn.prepare_cached(INSERT_SAMPLE)?);
                *ledger = Some(self.conn.prepare_cached(UPSERT_LEDGER)?);
            }
            let (insert, ledger) = (insert.as_mut().expect("set"), ledger.as_mut().expect("set"));
            for r in rows {
                let p = pool_id(&r.id)?;
                insert_sample(insert, account_id, p, r)?;
                write_ledger(ledger, p, r)?;
            }
            Ok(())
        })();
        match written {
            Ok(()) => run("RELEASE poll").map(drop).map_err(|e| {
                *ids = Ids::default();
                self.store.err(e)
            }),
            Err(e) => {
                let _ = run("ROLLBACK TO poll");
                let _ = run("RELEASE poll");
                *ids = Ids::default();
                Err(self.store.err(e))
            }
        }
    }

    /// What [`Store::window_points`] gives, read within the batch.
    pub fn window_points(
        &self,
        account: &str,
        id: &PoolId,
        now_ms: i64,
        window_starts_ms: &[i64],
    ) -> Result<Vec<Point>, StoreError> {
        window_points_in(self.conn, account, id, now_ms, window_starts_ms)
            .map_err(|e| self.store.err(e))
    }

    /// The samples of each of `pools` (ids of the pools of account `account_id`) around
    /// `from_ms`, as `(ts_ms, consumed)`: the last one before it, then up to `after` from
    /// `from_ms` on, oldest first. Every pool asked for has an entry.
    ///
    /// Samples are clustered by time within an account, so this walks the account's samples
    /// once backwards from `from_ms` until every pool has its sample before it, and once forwards
    /// until every pool has `after` samples: about `after + 1` polls' rows when the pools are
    /// polled together. A pool with no sample before `from_ms` (new since) makes the backward
    /// walk go to the account's oldest sample, once.
    pub fn refill(
        &self,
        account_id: i64,
        pools: &foldhash::HashSet<i64>,
        from_ms: i64,
        after: usize,
    ) -> Result<foldhash::HashMap<i64, Around>, StoreError> {
        let run = || -> rusqlite::Result<_> {
            let mut out: foldhash::HashMap<i64, Around> =
                pools.iter().map(|&p| (p, (None, Vec::new()))).collect();
            let mut missing = out.len();
            let mut back = self.conn.prepare_cached(
                "SELECT pool_id, ts_ms, consumed FROM samples
                 WHERE account_id = ?1 AND ts_ms < ?2 ORDER BY ts_ms DESC",
            )?;
            let mut rows = back.query(params![account_id, from_ms])?;
            while missing > 0 {
                let Some(r) = rows.next()? else { break };
                if let Some((before @ None, _)) = out.get_mut(&r.get(0)?) {
                    *before = Some((r.get(1)?, r.get(2)?));
                    missing -= 1;
                }
            }
            let mut short = if after == 0 { 0 } else { out.len() };
            let mut forward = self.conn.prepare_cached(
                "SELECT pool_id, ts_ms, consumed FROM samples
                 WHERE account_id = ?1 AND ts_ms >= ?2 ORDER BY ts_ms",
            )?;
            let mut rows = forward.query(params![account_id, from_ms])?;
            while short > 0 {
                let Some(r) = rows.next()? else { break };
                if let Some((_, run)) = out.get_mut(&r.get(0)?)
                    && run.len() < after
                {
                    run.push((r.get(1)?, r.get(2)?));
                    if run.len() == after {
                        short -= 1;
                    }
                }
            }
            Ok(out)
        };
        run().map_err(|e| self.store.err(e))
    }
}

/// A pool's samples around an instant ([`Batch::refill`]): the last before it, and a run from it on.
pub type Around = (Option<TsValue>, Vec<TsValue>);

const INSERT_SAMPLE: &str = "INSERT OR REPLACE INTO samples
     (account_id, ts_ms, pool_id, used, remaining, limit_value, period_start_ms, consumed)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";

const UPSERT_LEDGER: &str = "INSERT INTO ledgers
     (pool_id, unit, first_seen_ms, last_ts_ms, consumed, used, remaining, limit_value, period_start_ms)
     VALUES (?1, ?2, ?3, ?3, ?4, ?5, ?6, ?7, ?8)
     ON CONFLICT (pool_id) DO UPDATE SET
       unit = excluded.unit, last_ts_ms = excluded.last_ts_ms, consumed = excluded.consumed,
       used = excluded.used, remaining = excluded.remaining,
       limit_value = excluded.limit_value, period_start_ms = excluded.period_start_ms";

const SAMPLE_BEFORE: &str = "SELECT ts_ms, consumed FROM samples
     WHERE account_id = ?1 AND pool_id = ?2 AND ts_ms < ?3
     ORDER BY ts_ms DESC LIMIT 1";

/// An account with at least this many pools has its chart histories read by seeking rather
/// than by walking its samples ([`Store::remaining_histories`]). A walk reads every pool's row of
/// every poll in the window; seeking costs two lookups a card per bucket, each about as much as
/// reading a few dozen rows in order.
const SEEK_POOLS: i64 = 256;

/// How [`histories_in`] reads an account's samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HistoryWalk {
    /// Every sample of the account in the window, in order.
    Scan,
    /// Per bucket, the latest poll and each wanted pool's row of it by key.
    Seek,
}

/// The chart histories of an account's pools `ids` (`None`: never recorded): per pool, the
/// latest sample with a `remaining` in each of `max_points` equal buckets of
/// `[since_ms, until_ms]`, oldest first.
fn histories_in(
    conn: &Connection,
    account_id: i64,
    ids: &[Option<i64>],
    since_ms: i64,
    until_ms: i64,
    max_points: usize,
    walk: HistoryWalk,
) -> rusqlite::Result<Vec<Vec<(i64, f64)>>> {
    let mut out = vec![Vec::new(); ids.len()];
    if until_ms < since_ms {
        return Ok(out);
    }
    // As in `remaining_history`: ceil((span + 1) / max_points) ms a bucket.
    let n = max_points.max(1) as i64;
    let bucket = (until_ms - since_ms + n) / n;
    let wanted: Vec<(usize, i64)> = ids
        .iter()
        .enumerate()
        .filter_map(|(i, id)| Some((i, (*id)?)))
        .collect();
    match walk {
        HistoryWalk::Scan => {
            let by_id: HashMap<i64, usize> = wanted.iter().map(|&(i, p)| (p, i)).collect();
            let mut stmt = conn.prepare_cached(
                "SELECT ts_ms, pool_id, remaining FROM samples
                 WHERE account_id = ?1 AND ts_ms >= ?2 AND ts_ms <= ?3 AND remaining IS NOT NULL",
            )?;
            let mut rows = stmt.query(params![account_id, since_ms, until_ms])?;
            // In key order, so by time: a later sample in a pool's last bucket replaces it.
            while let Some(r) = rows.next()? {
                let Some(&i) = by_id.get(&r.get::<_, i64>(1)?) else {
                    continue;
                };
                let (ts, v): (i64, f64) = (r.get(0)?, r.get(2)?);
                let points = &mut out[i];
                match points.last_mut() {
                    Some(last) if (last.0 - since_ms) / bucket == (ts - since_ms) / bucket => {
                        *last = (ts, v)
                    }
                    _ => points.push((ts, v)),
                }
            }
        }
        HistoryWalk::Seek => {
            let mut latest = conn.prepare_cached(
                "SELECT ts_ms FROM samples WHERE account_id = ?1 AND ts_ms >= ?2 AND ts_ms <= ?3
                 ORDER BY ts_ms DESC LIMIT 1",
            )?;
            let mut value = conn.prepare_cached(
                "SELECT remaining FROM samples
                 WHERE account_id = ?1 AND ts_ms = ?2 AND pool_id = ?3 AND remaining IS NOT NULL",
            )?;
            let mut left = Vec::with_capacity(wanted.len());
            let mut lo = since_ms;
            while lo <= until_ms {
                let hi = lo.saturating_add(bucket - 1).min(until_ms);
                left.clear();
                left.extend_from_slice(&wanted);
                let mut top = hi;
                while !left.is_empty() {
                    let Some(ts) = latest
                        .query_row(params![account_id, lo, top], |r| r.get::<_, i64>(0))
                        .optional()?
                    else {
                        break;
                    };
                    let mut keep = Vec::with_capacity(left.len());
                    for &(i, pool) in &left {
                        match value
                            .query_row(params![account_id, ts, pool], |r| r.get::<_, f64>(0))
                            .optional()?
                        {
                            Some(v) => out[i].push((ts, v)),
                            None => keep.push((i, pool)),
                        }
                    }
                    left = keep;
                    top = ts - 1;
                }
                lo = match lo.checked_add(bucket) {
                    Some(next) => next,
                    None => break,
                };
            }
        }
    }
    Ok(out)
}

/// The ids of an account's pool, if the store has any sample of it.
fn find_ids(conn: &Connection, account: &str, id: &PoolId) -> rusqlite::Result<Option<(i64, i64)>> {
    conn.prepare_cached(
        "SELECT a.id, p.id FROM account_ids a JOIN pool_ids p ON p.account_id = a.id
         WHERE a.name = ?1 AND p.pool = ?2 AND p.key = ?3",
    )?
    .query_row(params![account, id.pool, id.key], |r| {
        Ok((r.get(0)?, r.get(1)?))
    })
    .optional()
}

fn create_account_id(conn: &Connection, account: &str) -> rusqlite::Result<i64> {
    let found = conn
        .prepare_cached("SELECT id FROM account_ids WHERE name = ?1")?
        .query_row(params![account], |r| r.get(0))
        .optional()?;
    if let Some(id) = found {
        return Ok(id);
    }
    conn.prepare_cached("INSERT INTO account_ids (name) VALUES (?1)")?
        .execute(params![account])?;
    Ok(conn.last_insert_rowid())
}

fn create_pool_id(conn: &Connection, account_id: i64, id: &PoolId) -> rusqlite::Result<i64> {
    let found = conn
        .prepare_cached("SELECT id FROM pool_ids WHERE account_id = ?1 AND pool = ?2 AND key = ?3")?
        .query_row(params![account_id, id.pool, id.key], |r| r.get(0))
        .optional()?;
    if let Some(p) = found {
        return Ok(p);
    }
    conn.prepare_cached("INSERT INTO pool_ids (account_id, pool, key) VALUES (?1, ?2, ?3)")?
        .execute(params![account_id, id.pool, id.key])?;
    Ok(conn.last_insert_rowid())
}

/// The times a compaction at `now_ms` deletes from one pool's sample times `ts` (oldest first):
/// within each tier of age, all but the newest sample of each bucket, never the oldest sample.
/// See [`Store::compact`].
fn compaction_victims(ts: &[i64], now_ms: i64) -> Vec<i64> {
    let Some(&oldest) = ts.first() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    // Buckets under a second would not merge samples taken at least a second apart.
    let mut bucket: i64 = 1024;
    while COMPACT_RESOLUTION * bucket <= now_ms - oldest {
        // Ages [R * bucket, 2 * R * bucket) use this bucket size; the last tier takes
        // everything older.
        let newest = now_ms - COMPACT_RESOLUTION * bucket;
        let older = now_ms - 2 * COMPACT_RESOLUTION * bucket;
        let from = if older < oldest { i64::MIN } else { older };
        let lo = ts.partition_point(|&t| t <= from);
        let hi = ts.partition_point(|&t| t <= newest);
        let tier = &ts[lo..hi];
        for (i, &t) in tier.iter().enumerate() {
            // Not the newest of its bucket: the next sample of the tier shares the bucket.
            let shared = tier.get(i + 1).is_some_and(|&n| n / bucket == t / bucket);
            if shared && t != oldest {
                out.push(t);
            }
        }
        bucket *= 2;
    }
    out
}

/// The times pruning before `before_ms` deletes from one pool's sample times `ts` (oldest
/// first): every one older than `before_ms` but the newest.
fn prune_victims(ts: &[i64], before_ms: i64) -> Vec<i64> {
    let keep_newest = ts.len().saturating_sub(1);
    ts[..keep_newest]
        .iter()
        .copied()
        .filter(|&t| t < before_ms)
        .collect()
}

/// Calls `each(account_id, pool_id, pool, ledger)` for every pool ledger of an account.
fn ledgers_in(
    conn: &Connection,
    account: &str,
    mut each: impl FnMut(i64, i64, PoolId, Ledger),
) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached(
        "SELECT i.pool, i.key, l.unit, l.first_seen_ms, l.last_ts_ms, l.consumed, l.used,
                l.remaining, l.period_start_ms, a.id, i.id
         FROM account_ids a JOIN pool_ids i ON i.account_id = a.id
         JOIN ledgers l ON l.pool_id = i.id
         WHERE a.name = ?1",
    )?;
    let mut rows = stmt.query(params![account])?;
    while let Some(r) = rows.next()? {
        let id = PoolId {
            pool: r.get(0)?,
            key: r.get(1)?,
        };
        let ledger = Ledger {
            unit: r.get(2)?,
            first_seen_ms: r.get(3)?,
            last_ts_ms: r.get(4)?,
            consumed: r.get(5)?,
            last: Observation {
                used: r.get(6)?,
                remaining: r.get(7)?,
                period_start_ms: r.get(8)?,
            },
        };
        each(r.get(9)?, r.get(10)?, id, ledger);
    }
    Ok(())
}

/// Binds a sample's columns, in the order of both sample inserts, and runs the statement.
fn insert_sample(
    stmt: &mut rusqlite::Statement<'_>,
    account_id: i64,
    pool_id: i64,
    r: &SampleRow,
) -> rusqlite::Result<usize> {
    stmt.execute(params![
        account_id,
        r.ts_ms,
        pool_id,
        r.used,
        r.remaining,
        r.limit,
        r.period_start_ms,
        r.consumed
    ])
}

fn write_ledger(
    ledger: &mut rusqlite::Statement<'_>,
    pool_id: i64,
    r: &SampleRow,
) -> rusqlite::Result<()> {
    ledger.execute(params![
        pool_id,
        r.unit,
        r.ts_ms,
        r.consumed,
        r.used,
        r.remaining,
        r.limit,
        r.period_start_ms
    ])?;
    Ok(())
}

fn window_points_in(
    conn: &Connection,
    account: &str,
    id: &PoolId,
    now_ms: i64,
    window_starts_ms: &[i64],
) -> rusqlite::Result<Vec<Point>> {
    let point = |r: &rusqlite::Row<'_>| {
        Ok(Point {
            t: r.get::<_, i64>(0)? as f64 / 1000.0,
            consumed: r.get(1)?,
        })
    };
    let Some((a, p)) = find_ids(conn, account, id)? else {
        return Ok(Vec::new());
    };
    let mut before = conn.prepare_cached(SAMPLE_BEFORE)?;
    let mut at_or_after = conn.prepare_cached(
        "SELECT ts_ms, consumed FROM samples
         WHERE account_id = ?1 AND pool_id = ?2 AND ts_ms >= ?3
         ORDER BY ts_ms LIMIT 1",
    )?;
    let find = |stmt: &mut rusqlite::CachedStatement<'_>, ts: i64| {
        stmt.query_row(params![a, p, ts], point).optional()
    };
    let mut out = Vec::with_capacity(2 * window_starts_ms.len() + 1);
    // The last sample at or before now is the last one before now + 1 ms.
    out.extend(find(&mut before, now_ms.saturating_add(1))?);
    for &from in window_starts_ms {
        out.extend(find(&mut before, from)?);
        out.extend(find(&mut at_or_after, from)?);
    }
    out.sort_by(|a, b| a.t.total_cmp(&b.t));
    out.dedup_by(|a, b| a.t == b.t);
    Ok(out)
}

/// Where the store lives, resolved against the config file's directory when relative.
pub fn resolve_path(state_path: &Path, config_path: &Path) -> PathBuf {
    if state_path.is_absolute() || state_path == Path::new(":memory:") {
        state_path.to_path_buf()
    } else {
        config_path
            .parent()
            .unwrap_or(Path::new("."))
            .join(state_path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(ts: i64, consumed: f64) -> SampleRow {
        SampleRow {
            id: PoolId {
                pool: "ai".into(),
                key: String::new(),
            },
            unit: "credits".into(),
            ts_ms: ts,
            used: Some(consumed),
            remaining: Some(100.0 - consumed),
            limit: Some(100.0),
            period_start_ms: Some(0),
            consumed,
        }
    }

    #[test]
    fn records_survive_reopen_and_prune_keeps_ledgers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        {
            let s = Store::open(&path).unwrap();
            s.record("a", &[row(1000, 1.0)]).unwrap();
            s.record("a", &[row(2000, 3.0)]).unwrap();
        }
        let s = Store::open(&path).unwrap();
        assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
        let id = PoolId {
            pool: "ai".into(),
            key: String::new(),
        };
        let pts = s.points("a", &id, 0).unwrap();
        assert_eq!(
            pts,
            vec![
                Point {
                    t: 1.0,
                    consumed: 1.0
                },
                Point {
                    t: 2.0,
                    consumed: 3.0
                }
            ]
        );
        let l = &s.ledgers("a").unwrap()[&id];
        assert_eq!(
            (l.first_seen_ms, l.last_ts_ms, l.consumed),
            (1000, 2000, 3.0)
        );
        assert_eq!(s.prune(1500).unwrap(), 1);
        assert_eq!(s.sample_count("a").unwrap(), 1);
        assert_eq!(s.ledgers("a").unwrap()[&id].consumed, 3.0);
        let mode: String = s
            .conn()
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }

    #[test]
    fn remaining_history_is_bounded_and_keeps_the_latest_sample_per_bucket() {
        let s = Store::in_memory();
        let id = PoolId {
            pool: "ai".into(),
            key: String::new(),
        };
        // 100 samples one second apart, remaining 100, 99, ..., 1; one in another pool.
        for i in 0..100 {
            s.record("a", &[row(i * 1000, i as f64)]).unwrap();
        }
        let mut other = row(50_500, 0.0);
        other.id.pool = "compression".into();
        s.record("a", &[other]).unwrap();
        let mut unlimited = row(50_600, 0.0);
        unlimited.remaining = None;
        s.record("a", &[unlimited]).unwrap();

        let all = s.remaining_history("a", &id, 0, 99_000, 1000).unwrap();
        assert_eq!(all.len(), 100);
        assert_eq!(all[0], (0, 100.0));
        assert_eq!(all[99], (99_000, 1.0));

        // 10 buckets of 9.901s: each keeps its last sample, in time order.
        let few = s.remaining_history("a", &id, 0, 99_000, 10).unwrap();
        assert_eq!(few.len(), 10, "{few:?}");
        assert_eq!(few.first(), Some(&(9_000, 91.0)));
        assert_eq!(few.last(), Some(&(99_000, 1.0)));
        assert!(few.windows(2).all(|w| w[0].0 < w[1].0));

        // The window bounds are inclusive and other pools never leak in.
        let window = s.remaining_history("a", &id, 40_000, 45_000, 100).unwrap();
        assert_eq!(window.len(), 6);
        assert_eq!(window[0], (40_000, 60.0));
        assert!(
            s.remaining_history("b", &id, 0, 99_000, 10)
                .unwrap()
                .is_empty()
        );
    }

    /// Both walks of `remaining_histories` give, for every pool at once, exactly what
    /// `remaining_history` gives for each: over random polls (pools appearing late, missing from
    /// some polls, without a `remaining` in others, and past samples at their own times), random
    /// windows and bucket counts.
    #[test]
    fn histories_of_many_pools_match_the_history_of_each() {
        let s = Store::in_memory();
        let mut rng = fastrand::Rng::with_seed(7);
        let pool = |i: usize| PoolId {
            pool: format!("p{i}"),
            key: if i.is_multiple_of(2) {
                String::new()
            } else {
                format!("k{i}")
            },
        };
        let mut ts = 0;
        for poll in 0..300 {
            ts += rng.i64(500..3000);
            let mut rows = Vec::new();
            for i in 0..6 {
                // Pool 5 appears half way; each pool misses one poll in ten.
                if (i == 5 && poll < 150) || rng.u8(0..10) == 0 {
                    continue;
                }
                let mut r = row(ts, rng.f64() * 50.0);
                r.id = pool(i);
                if rng.u8(0..8) == 0 {
                    r.remaining = None;
                }
                rows.push(r);
            }
            // Now and then, a sample of the past at a time of its own.
            let mut history = Vec::new();
            if poll % 25 == 0 && ts > 10_000 {
                let mut h = row(ts - rng.i64(1..10_000), 10.0);
                h.id = pool(rng.usize(0..6));
                history.push(h);
            }
            s.record_with_history("a", &rows, &history).unwrap();
            // Another account's samples at the same times never leak in.
            let mut other = row(ts, 1.0);
            other.id = pool(0);
            s.record("b", &[other]).unwrap();
        }
        // Pool 6 was never recorded.
        let ids: Vec<PoolId> = (0..7).map(pool).collect();
        for _ in 0..40 {
            let since = rng.i64(-5_000..ts);
            let until = since + rng.i64(-100..ts);
            let points = rng.usize(1..200);
            let each: Vec<Vec<(i64, f64)>> = ids
                .iter()
                .map(|id| s.remaining_history("a", id, since, until, points).unwrap())
                .collect();
            assert_eq!(
                s.remaining_histories("a", &ids, since, until, points)
                    .unwrap(),
                each
            );
            let conn = s.conn();
            let (a, _) = find_ids(&conn, "a", &ids[0]).unwrap().unwrap();
            let pool_ids: Vec<Option<i64>> = ids
                .iter()
                .map(|id| find_ids(&conn, "a", id).unwrap().map(|(_, p)| p))
                .collect();
            for walk in [HistoryWalk::Scan, HistoryWalk::Seek] {
                let got = histories_in(&conn, a, &pool_ids, since, until, points, walk).unwrap();
                assert_eq!(
                    got, each,
                    "{walk:?} since {since} until {until} points {points}"
                );
            }
        }
        assert!(each_is_nonempty(&s, &ids[..6], ts));
        assert_eq!(
            s.remaining_histories("nobody", &ids, 0, ts, 10).unwrap(),
            vec![Vec::new(); 7]
        );
    }

    /// The random store above has chart points for each pool it recorded (so the comparison is
    /// not of empty lists).
    fn each_is_nonempty(s: &Store, ids: &[PoolId], until: i64) -> bool {
        ids.iter().all(|id| {
            !s.remaining_history("a", id, 0, until, 50)
                .unwrap()
                .is_empty()
        })
    }

    #[test]
    fn proxy_ledger_adds_exact_decimals_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let k = ProxyKey {
            period_start_ms: 5,
            model: "flux-lite".into(),
            code: 200,
            key: String::new(),
        };
        let d = |requests, unpriced, cost: &str| {
            BTreeMap::from([(
                k.clone(),
                ProxyCount {
                    requests,
                    unpriced,
                    cost: cost.parse().unwrap(),
                },
            )])
        };
        {
            let s = Store::open(&path).unwrap();
            s.record_proxy("a", &d(1, 0, "0.1"), &[]).unwrap();
            let row = ProxyLogRow {
                ts_ms: 7,
                key: k.clone(),
                key_hash: None,
                request_id: Some("req_1".into()),
                cost: Some("0.2".parse().unwrap()),
                note: None,
            };
            s.record_proxy("a", &d(2, 1, "0.2"), std::slice::from_ref(&row))
                .unwrap();
            assert_eq!(s.proxy_log("a", 0).unwrap(), vec![row]);
            assert_eq!(s.prune_proxy_log("a", 8).unwrap(), 1);
        }
        let s = Store::open(&path).unwrap();
        let t = s.proxy_totals("a").unwrap();
        // 0.1 + 0.2 is 0.30000000000000004 in floating point; the ledger holds exactly 0.3.
        assert_eq!(t[&k].cost.to_string(), "0.3");
        assert_eq!((t[&k].requests, t[&k].unpriced), (3, 1));
        assert!(s.proxy_totals("b").unwrap().is_empty());
    }

    #[test]
    fn a_file_that_is_not_a_database_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let garbage = "this is not a database, it is a shopping list\n".repeat(200);
        std::fs::write(&path, &garbage).unwrap();
        let (s, moved) = Store::open_or_recover(&path, 1_790_000_000).unwrap();
        let moved = moved.expect("moved aside");
        assert_eq!(moved.to, dir.path().join("s.db.corrupt-1790000000"));
        assert!(
            moved.reason.contains("file is not a database"),
            "{}",
            moved.reason
        );
        assert_eq!(std::fs::read_to_string(&moved.to).unwrap(), garbage);
        s.record("a", &[row(1000, 1.0)]).unwrap();
        assert_eq!(s.total_samples().unwrap(), 1);
        drop(s);
        let (_, moved) = Store::open_or_recover(&path, 1_790_000_001).unwrap();
        assert_eq!(moved, None, "a good store is left alone");
    }

    #[test]
    fn damaged_pages_are_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        {
            let s = Store::open(&path).unwrap();
            for i in 0..2000 {
                s.record("a", &[row(i * 1000, i as f64)]).unwrap();
            }
            s.conn()
                .execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
                .unwrap();
        }
        // Overwrite pages in the middle of the file, leaving the header intact.
        let mut bytes = std::fs::read(&path).unwrap();
        assert!(bytes.len() > 40_000, "{}", bytes.len());
        for b in &mut bytes[8192..40_000] {
            *b = 0x5a;
        }
        std::fs::write(&path, bytes).unwrap();
        let (s, moved) = Store::open_or_recover(&path, 7).unwrap();
        let moved = moved.expect("moved aside");
        assert_eq!(moved.to, dir.path().join("s.db.corrupt-7"));
        assert_eq!(s.total_samples().unwrap(), 0);
    }

    #[test]
    fn an_unopenable_path_is_an_error_not_a_move() {
        let e = Store::open_or_recover(Path::new("/nonexistent/dir/s.db"), 1).unwrap_err();
        assert!(e.to_string().contains("unable to open"), "{e}");
    }

    #[test]
    fn refuses_a_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        Store::open(&path)
            .unwrap()
            .conn()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        let e = Store::open(&path).unwrap_err();
        assert!(e.to_string().contains("schema version 99"), "{e}");
    }

    fn ai() -> PoolId {
        PoolId {
            pool: "ai".into(),
            key: String::new(),
        }
    }

    #[test]
    fn points_start_with_the_sample_before_the_window() {
        let s = Store::in_memory();
        for (ts, c) in [(1000, 1.0), (2000, 2.0), (3000, 3.0), (4000, 4.0)] {
            s.record("a", &[row(ts, c)]).unwrap();
        }
        let t: Vec<f64> = s
            .points("a", &ai(), 2500)
            .unwrap()
            .iter()
            .map(|p| p.t)
            .collect();
        assert_eq!(t, vec![2.0, 3.0, 4.0]);
        let t: Vec<f64> = s
            .points("a", &ai(), 3000)
            .unwrap()
            .iter()
            .map(|p| p.t)
            .collect();
        assert_eq!(t, vec![2.0, 3.0, 4.0]);
        let t: Vec<f64> = s
            .points("a", &ai(), 0)
            .unwrap()
            .iter()
            .map(|p| p.t)
            .collect();
        assert_eq!(t, vec![1.0, 2.0, 3.0, 4.0]);
        assert!(s.points("b", &ai(), 0).unwrap().is_empty());
    }

    #[test]
    fn window_points_give_the_burn_of_the_whole_history() {
        let s = Store::in_memory();
        // Irregular polls with a gap, and one sample after "now" (a clock that stepped back).
        let mut t = 0i64;
        let mut c = 0.0;
        for i in 0..400i64 {
            t += 1_000 + (i * 7_919) % 5_000 + if i == 200 { 600_000 } else { 0 };
            c += ((i * 31) % 11) as f64;
            s.record("a", &[row(t, c)]).unwrap();
        }
        let last = t;
        let windows = [60_000i64, 300_000, 3_600_000, 10_000_000];
        for now in [last, last - 1, last - 250_000, last / 2, 5_000, 1, 0] {
            let all = s.points("a", &ai(), i64::MIN).unwrap();
            let starts: Vec<i64> = windows.iter().map(|w| now - w).collect();
            let few = s.window_points("a", &ai(), now, &starts).unwrap();
            assert!(few.len() <= 2 * windows.len() + 1);
            assert!(few.windows(2).all(|p| p[0].t < p[1].t), "{few:?}");
            for w in windows {
                let (w, n) = (w as f64 / 1000.0, now as f64 / 1000.0);
                assert_eq!(
                    crate::forecast::burn_rate(&few, w, n),
                    crate::forecast::burn_rate(&all, w, n),
                    "window {w} s at {n} s"
                );
            }
        }
        assert!(s.window_points("b", &ai(), last, &[0]).unwrap().is_empty());
    }

    /// A store written by schema 3 (samples and ledgers keyed by names) is migrated with every
    /// sample and ledger kept.
    #[test]
    fn samples_and_ledgers_of_schema_3_survive_the_migration() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        {
            let conn = Connection::open(&path).unwrap();
            for sql in &MIGRATIONS[..3] {
                conn.execute_batch(sql).unwrap();
            }
            conn.execute_batch(
                "PRAGMA user_version = 3;
                 INSERT INTO samples VALUES ('a', 'ai', '', 1000, 1, 99, 100, 0, 1);
                 INSERT INTO samples VALUES ('a', 'ai', '', 2000, 3, 97, 100, 0, 3);
                 INSERT INTO samples VALUES ('a', 'compression', '', 1500, NULL, NULL, NULL, NULL, 7);
                 INSERT INTO samples VALUES ('b', 'ai', 'k1', 1200, 5, 95, 100, 0, 5);
                 INSERT INTO pools VALUES ('a', 'ai', '', 'credits', 1000, 2000, 3, 3, 97, 100, 0);
                 INSERT INTO pools VALUES ('c', 'ai', '', 'credits', 500, 900, 8, 8, NULL, NULL, NULL);",
            )
            .unwrap();
        }
        let s = Store::open(&path).unwrap();
        assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
        let t = |account: &str, pool: &str, key: &str| -> Vec<(f64, f64)> {
            let id = PoolId {
                pool: pool.into(),
                key: key.into(),
            };
            s.points(account, &id, i64::MIN)
                .unwrap()
                .iter()
                .map(|p| (p.t, p.consumed))
                .collect()
        };
        assert_eq!(t("a", "ai", ""), vec![(1.0, 1.0), (2.0, 3.0)]);
        assert_eq!(t("a", "compression", ""), vec![(1.5, 7.0)]);
        assert_eq!(t("b", "ai", "k1"), vec![(1.2, 5.0)]);
        assert_eq!(s.total_samples().unwrap(), 4);
        // The ledgers too, including one of a pool whose samples were all pruned.
        let l = &s.ledgers("a").unwrap()[&ai()];
        assert_eq!(
            (l.first_seen_ms, l.last_ts_ms, l.consumed, l.last.remaining),
            (1000, 2000, 3.0, Some(97.0))
        );
        let l = &s.ledgers("c").unwrap()[&ai()];
        assert_eq!((l.first_seen_ms, l.last_ts_ms, l.consumed), (500, 900, 8.0));
        // New polls continue the migrated pools rather than start new ones.
        s.record("a", &[row(3000, 4.0)]).unwrap();
        assert_eq!(t("a", "ai", "").len(), 3);
        assert_eq!(s.sample_count("a").unwrap(), 4);
        assert_eq!(s.ledgers("a").unwrap()[&ai()].first_seen_ms, 1000);
        assert_eq!(s.ledgers("a").unwrap().len(), 1);
    }

    /// What [`Batch::refill`] reads for many pools in one walk is, for each, what the pool's own
    /// history gives: the last sample before the instant and the first few from it on.
    #[test]
    fn refill_gives_each_pool_its_own_samples_around_an_instant() {
        let s = Store::in_memory();
        let pool = |k: usize| PoolId {
            pool: "ai".into(),
            key: format!("k{k}"),
        };
        // Five pools polled irregularly: pool k is missing from every poll i with i % (k + 2)
        // == 0, pool 4 only appears from poll 60 on, and pool 3 stops at poll 80.
        for i in 1..=100i64 {
            let rows: Vec<SampleRow> = (0..5usize)
                .filter(|&k| i % (k as i64 + 2) != 0)
                .filter(|&k| k != 4 || i >= 60)
                .filter(|&k| k != 3 || i <= 80)
                .map(|k| {
                    let mut r = row(i * 1000 + (i * 37) % 500, (i * (k as i64 + 1)) as f64);
                    r.id = pool(k);
                    r
                })
                .collect();
            s.record("a", &rows).unwrap();
        }
        s.record("other", &[row(50_000, 1.0)]).unwrap();
        let mut ids = Ids::default();
        let account_id = s
            .batch(|b| {
                b.record("a", &mut ids, &[], &[]).unwrap();
                ids.account().unwrap()
            })
            .0;
        let all: Vec<Vec<TsValue>> = (0..5)
            .map(|k| {
                s.points("a", &pool(k), i64::MIN)
                    .unwrap()
                    .iter()
                    .map(|p| ((p.t * 1000.0).round() as i64, p.consumed))
                    .collect()
            })
            .collect();
        let id_of = |k: usize| find_ids(&s.conn(), "a", &pool(k)).unwrap().unwrap().1;
        // Instants between samples, and on samples: pool 4's first, pool 3's last, pool 0's 10th.
        let on = [all[4][0].0, all[3][all[3].len() - 1].0, all[0][10].0];
        let between = [
            0, 500, 1000, 30_250, 59_999, 60_400, 85_000, 99_000, 101_000, 200_000,
        ];
        for from in between.into_iter().chain(on) {
            for after in [0, 1, 3, 8] {
                let wanted: foldhash::HashSet<i64> = (0..5).map(id_of).collect();
                let (got, committed) = s.batch(|b| b.refill(account_id, &wanted, from, after));
                committed.unwrap();
                let got = got.unwrap();
                assert_eq!(got.len(), 5);
                for (k, history) in all.iter().enumerate() {
                    let before = history.iter().rev().find(|(t, _)| *t < from).copied();
                    let run: Vec<TsValue> = history
                        .iter()
                        .filter(|(t, _)| *t >= from)
                        .take(after)
                        .copied()
                        .collect();
                    assert_eq!(
                        got[&id_of(k)],
                        (before, run),
                        "pool {k} from {from} after {after}"
                    );
                }
            }
        }
    }

    #[test]
    fn prune_keeps_each_pools_newest_sample() {
        let s = Store::in_memory();
        let mut other = row(1500, 7.0);
        other.id.pool = "compression".into();
        s.record("a", &[row(1000, 1.0), other]).unwrap();
        s.record("a", &[row(2000, 2.0)]).unwrap();
        s.record("b", &[row(1200, 5.0)]).unwrap();
        // Everything is older than the cutoff; only the ai pool of "a" has an older sample.
        assert_eq!(s.prune(10_000).unwrap(), 1);
        assert_eq!(s.sample_count("a").unwrap(), 2);
        assert_eq!(s.sample_count("b").unwrap(), 1);
        assert_eq!(s.points("a", &ai(), 0).unwrap()[0].t, 2.0);
    }

    #[test]
    fn compaction_keeps_the_newest_sample_per_bucket_and_the_oldest() {
        let s = Store::in_memory();
        // One sample a second for 10 minutes, compacted at 600 s.
        for i in 0..=600 {
            s.record("a", &[row(i * 1000, i as f64)]).unwrap();
        }
        s.compact(600_000).unwrap();
        let t: Vec<i64> = s
            .points("a", &ai(), 0)
            .unwrap()
            .iter()
            .map(|p| p.t as i64)
            .collect();
        // Ages under 128 * 1.024 s = 131.072 s (t > 468.928) keep every sample: 469..=600.
        // Ages in [131.072, 262.144) s (t in (337.856, 468.928]) keep the newest per 1.024 s
        // bucket: 131 samples in 128 buckets (+1 where the tier's edge cuts a bucket). Ages in
        // [262.144, 524.288) s (t in (75.712, 337.856]) keep the newest per 2.048 s bucket: 128
        // (+1). The oldest tier (t <= 75.712) keeps the newest per 4.096 s bucket: 75 / 4.096 =
        // 18.3, so 18 or 19 (+1). The oldest sample (t = 0) stays.
        assert_eq!(t[0], 0);
        assert!((469..=600).all(|x| t.contains(&x)), "recent samples kept");
        let tier = |lo: i64, hi: i64| t.iter().filter(|x| **x >= lo && **x <= hi).count();
        assert!((128..=129).contains(&tier(338, 468)), "{}", tier(338, 468));
        assert!((128..=129).contains(&tier(76, 337)), "{}", tier(76, 337));
        assert!((18..=20).contains(&tier(1, 75)), "{}", tier(1, 75));
        // No two kept samples of a tier share a bucket.
        for (lo, hi, bucket) in [(338, 468, 1024), (76, 337, 2048), (1, 75, 4096)] {
            let b: Vec<i64> = t
                .iter()
                .filter(|x| **x >= lo && **x <= hi)
                .map(|x| x * 1000 / bucket)
                .collect();
            let mut d = b.clone();
            d.dedup();
            assert_eq!(b, d, "bucket {bucket}");
        }
        // Compacting again at the same instant changes nothing.
        assert_eq!(s.compact(600_000).unwrap(), 0);
    }

    /// Weeks of 1-minute polls of two pools through the store, compacted and pruned every hour
    /// as the daemon does (default retention for burn windows of 1h and 24h: 2 days). The number
    /// of samples and the file size stop growing once the retention is reached, and the burn over
    /// the longest window, read back from the compacted history, is still right.
    #[test]
    fn weeks_of_polls_stay_bounded_and_keep_the_burn() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("s.db")).unwrap();
        let retention_ms: i64 = 2 * 86_400_000;
        let start: i64 = 1_800_000_000_000;
        let minute: i64 = 60_000;
        let weeks = 3;
        // Consumption follows a daily cycle: rate(t) = 1 + 0.5 sin(2 pi t / 1 day) credits/s, so
        // consumed(t) = t + 0.5 * (1 - cos(2 pi t / day)) * day / (2 pi), t in seconds from start.
        let day = 86_400.0;
        let consumed = |t_ms: i64| {
            let t = (t_ms - start) as f64 / 1000.0;
            t + 0.5 * (1.0 - (2.0 * std::f64::consts::PI * t / day).cos()) * day
                / (2.0 * std::f64::consts::PI)
        };
        let mut per_week = Vec::new();
        let polls = weeks * 7 * 24 * 60;
        for i in 1..=polls {
            let now = start + i * minute;
            let c = consumed(now);
            let mut other = row(now, c / 2.0);
            other.id.pool = "compression".into();
            s.record("a", &[row(now, c), other]).unwrap();
            if i % 60 == 0 {
                s.compact(now).unwrap();
                s.prune(now - retention_ms).unwrap();
            }
            if i % (7 * 24 * 60) == 0 {
                per_week.push((s.sample_count("a").unwrap(), s.size_bytes().unwrap()));
            }
        }
        // Without compaction the retention alone would keep 2 days * 1440 = 2880 samples a pool.
        // With it: about 140 recent samples at full resolution (ages under 2.3 h, where buckets
        // are at most 32 s), 4 doublings of age of at most 129 samples (2.3 h to 37 h), and the
        // part of the 37-74 h doubling within the retention, about 41: about 700 a pool.
        eprintln!("samples and bytes at the end of each week: {per_week:?}");
        for (count, _) in &per_week {
            assert!(
                *count <= 2 * 720,
                "{count} samples for 2 pools: {per_week:?}"
            );
        }
        let (c1, b1) = per_week[0];
        let (c3, b3) = per_week[weeks as usize - 1];
        assert!((c3 - c1).abs() <= 4, "sample count grows: {per_week:?}");
        assert!(b3 <= b1 + b1 / 10, "store size grows: {per_week:?}");

        let now = start + polls * minute;
        for window in [3600.0, 86_400.0] {
            let w_ms = (window * 1000.0) as i64;
            let pts = s.points("a", &ai(), now - w_ms).unwrap();
            let got = crate::forecast::burn_rate(&pts, window, now as f64 / 1000.0).unwrap();
            let want = (consumed(now) - consumed(now - w_ms)) / window;
            assert!(
                (got - want).abs() <= 0.01 * want,
                "{window}s window: {got} vs {want}"
            );
        }
    }
}
