//! The store against the real binary: a garbage or locked state file is moved aside and the daemon starts; `kill -9` mid-write, again and again, leaves a store that passes SQLite's integrity check with monotonic samples and consistent ledgers.

use crate::reload::{Daemon, free_port};
use crate::support::value;
use crate::upstream::Upstream;
use rusqlite::Connection;
use std::path::Path;
use std::time::Duration;

fn config(dir: &Path, up: &Upstream, accounts: usize) -> std::path::PathBuf {
    let mut text = format!(
        "listen = \"127.0.0.1:{}\"\nstate_path = \"s.db\"\n[defaults]\ninterval = \"1s\"\ntimeout = \"1s\"\n",
        free_port()
    );
    for i in 0..accounts {
        text += &format!(
            "[[account]]\nname = \"a{i}\"\nprovider = \"fluximage\"\napi_key = \"k\"\nbase_url = \"{}\"\nbilling_anchor = \"2026-01-15\"\n",
            up.base_url(&format!("a{i}"))
        );
    }
    let cfg = dir.join("c.toml");
    std::fs::write(&cfg, text).unwrap();
    cfg
}

fn up_is_one(m: &str) -> bool {
    value(m, "creditwatch_up", &["account=\"a0\""]) == Some(1.0)
}

/// Files in `dir` whose names start with `prefix`.
fn files_starting(dir: &Path, prefix: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_state_file_is_moved_aside_and_the_daemon_starts_fresh() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &up, 1);
    let garbage = "not a database at all\n".repeat(500);
    std::fs::write(dir.path().join("s.db"), &garbage).unwrap();
    let mut d = Daemon::start(&cfg, "info");
    d.wait_metrics("the first poll", up_is_one).await;
    let log = d.log();
    assert!(log.contains("STATE STORE UNUSABLE"), "{log}");
    assert!(log.contains("file is not a database"), "{log}");
    let aside = files_starting(dir.path(), "s.db.corrupt-");
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join(&aside[0])).unwrap(),
        garbage,
        "the old file is kept for inspection"
    );
    d.signal("TERM");
    assert_eq!(d.wait_exit(), Some(0));
    // The fresh store holds the new samples, and the next start leaves it alone.
    let conn = Connection::open(dir.path().join("s.db")).unwrap();
    let n: i64 = conn
        .query_row("SELECT COUNT(*) FROM samples", [], |r| r.get(0))
        .unwrap();
    assert!(n >= 2, "{n} samples");
    drop(conn);
    let mut d = Daemon::start(&cfg, "info");
    d.wait_metrics("the first poll after a restart", up_is_one)
        .await;
    assert!(!d.log().contains("UNUSABLE"), "{}", d.log());
    d.signal("TERM");
    assert_eq!(d.wait_exit(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_locked_by_another_process_is_moved_aside() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &up, 1);
    // Another process (this test) holds an exclusive lock on the store for as long as it runs.
    let holder = Connection::open(dir.path().join("s.db")).unwrap();
    holder
        .execute_batch(
            "PRAGMA locking_mode = EXCLUSIVE; BEGIN EXCLUSIVE; CREATE TABLE mine (x); INSERT INTO mine VALUES (1);",
        )
        .unwrap();
    let mut d = Daemon::start(&cfg, "info");
    d.wait_metrics("the first poll", up_is_one).await;
    let log = d.log();
    assert!(log.contains("STATE STORE UNUSABLE"), "{log}");
    assert!(log.contains("database is locked"), "{log}");
    assert_eq!(files_starting(dir.path(), "s.db.locked-").len(), 1);
    d.signal("TERM");
    assert_eq!(d.wait_exit(), Some(0));
    // The holder's data is intact in the file it holds.
    holder.execute_batch("COMMIT").unwrap();
    let n: i64 = holder
        .query_row("SELECT COUNT(*) FROM mine", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 1);
}

/// The samples and ledgers with their account and pool names: the store keys them by ids.
const NAMED_SAMPLES: &str = "CREATE TEMP VIEW named_samples AS
    SELECT a.name AS account, p.pool, p.key, s.ts_ms, s.consumed, s.used
    FROM samples s JOIN account_ids a ON a.id = s.account_id JOIN pool_ids p ON p.id = s.pool_id;
    CREATE TEMP VIEW named_ledgers AS
    SELECT a.name AS account, p.pool, p.key, l.last_ts_ms, l.consumed
    FROM ledgers l JOIN pool_ids p ON p.id = l.pool_id JOIN account_ids a ON a.id = p.account_id";

/// A sample as stored: account, pool, key, time, consumed total, used.
type SampleRow = (String, String, String, i64, f64, Option<f64>);
/// A ledger: account, pool, last time, total, and the newest sample's time and total.
type LedgerRow = (String, String, i64, f64, Option<i64>, Option<f64>);

/// Checks the store as a reader finds it: SQLite's full integrity check, then per pool that
/// timestamps rise, totals and the upstream's counter never go back, and the ledger points at
/// the pool's newest sample with the same total (a sample and its ledger are one transaction).
fn check_store(path: &Path) -> (i64, i64) {
    let conn = Connection::open(path).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    conn.execute_batch(NAMED_SAMPLES).unwrap();
    let mut stmt = conn
        .prepare("SELECT account, pool, key, ts_ms, consumed, used FROM named_samples ORDER BY account, pool, key, ts_ms")
        .unwrap();
    let rows: Vec<SampleRow> = stmt
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for w in rows.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        if (&a.0, &a.1, &a.2) != (&b.0, &b.1, &b.2) {
            continue;
        }
        assert!(b.3 > a.3, "timestamps rise: {a:?} {b:?}");
        assert!(b.4 >= a.4, "consumed never goes back: {a:?} {b:?}");
        if a.1 == "compression" {
            assert!(
                b.5 >= a.5,
                "the upstream's counter never goes back: {a:?} {b:?}"
            );
        }
    }
    let mut stmt = conn
        .prepare(
            "SELECT p.account, p.pool, p.last_ts_ms, p.consumed,
                    (SELECT MAX(ts_ms) FROM named_samples s WHERE s.account = p.account AND s.pool = p.pool AND s.key = p.key),
                    (SELECT consumed FROM named_samples s WHERE s.account = p.account AND s.pool = p.pool AND s.key = p.key AND s.ts_ms = p.last_ts_ms)
             FROM named_ledgers p",
        )
        .unwrap();
    let ledgers: Vec<LedgerRow> = stmt
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for l in &ledgers {
        assert_eq!(Some(l.2), l.4, "ledger at the newest sample: {l:?}");
        assert_eq!(Some(l.3), l.5, "ledger total is the newest sample's: {l:?}");
    }
    (rows.len() as i64, ledgers.len() as i64)
}

/// Seeds accounts `{prefix}0..{prefix}{accounts}` with `per_pool` samples per pool spread over
/// the past two days, so that the compaction every start runs is a long write transaction.
fn seed(path: &Path, prefix: &str, accounts: usize, per_pool: i64) {
    drop(creditwatch::store::Store::open(path).unwrap());
    let mut conn = Connection::open(path).unwrap();
    let tx = conn.transaction().unwrap();
    let now = chrono::Utc::now().timestamp_millis();
    let span = 2 * 86_400_000 - 120_000;
    for a in 0..accounts {
        let account = format!("{prefix}{a}");
        tx.execute(
            "INSERT INTO account_ids (name) VALUES (?1)",
            rusqlite::params![account],
        )
        .unwrap();
        let account_id = tx.last_insert_rowid();
        for pool in ["compression", "ai"] {
            tx.execute(
                "INSERT INTO pool_ids (account_id, pool, key) VALUES (?1, ?2, '')",
                rusqlite::params![account_id, pool],
            )
            .unwrap();
            let pool_id = tx.last_insert_rowid();
            let mut last = (0, 0.0, 0.0);
            for i in 0..per_pool {
                let ts = now - span + i * span / per_pool;
                let used = (i * 44 / per_pool) as f64;
                let consumed = i as f64 * 0.01;
                tx.execute(
                    "INSERT INTO samples (account_id, ts_ms, pool_id, used, remaining, limit_value, period_start_ms, consumed)
                     VALUES (?1, ?2, ?3, ?4, NULL, NULL, NULL, ?5)",
                    rusqlite::params![account_id, ts, pool_id, used, consumed],
                )
                .unwrap();
                last = (ts, used, consumed);
            }
            tx.execute(
                "INSERT INTO ledgers (pool_id, unit, first_seen_ms, last_ts_ms, consumed, used, remaining, limit_value, period_start_ms)
                 VALUES (?1, 'credits', ?2, ?2, ?3, ?4, NULL, NULL, NULL)",
                rusqlite::params![pool_id, last.0, last.2, last.1],
            )
            .unwrap();
        }
    }
    tx.commit().unwrap();
}

/// How many samples the accounts whose names start with `prefix` hold.
fn seeded_samples(path: &Path, prefix: &str) -> i64 {
    Connection::open(path)
        .unwrap()
        .query_row(
            "SELECT COUNT(*) FROM samples s JOIN account_ids a ON a.id = s.account_id
             WHERE substr(a.name, 1, length(?1)) = ?1",
            [prefix],
            |r| r.get(0),
        )
        .unwrap()
}

/// Frames of a transaction that had not committed when the process died: the valid frames of
/// the write-ahead log after its last commit frame. SQLite ignores them on the next open.
fn uncommitted_wal_frames(db: &Path) -> usize {
    let mut wal_path = db.as_os_str().to_owned();
    wal_path.push("-wal");
    let Ok(wal) = std::fs::read(&wal_path) else {
        return 0;
    };
    if wal.len() < 32 {
        return 0;
    }
    let be = |b: &[u8]| u32::from_be_bytes(b.try_into().unwrap());
    let page = be(&wal[8..12]) as usize;
    let salts = &wal[16..24];
    let (mut off, mut since_commit) = (32, 0);
    while off + 24 + page <= wal.len() && &wal[off + 8..off + 16] == salts {
        since_commit = if be(&wal[off + 4..off + 8]) != 0 {
            0
        } else {
            since_commit + 1
        };
        off += 24 + page;
    }
    since_commit
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_write_again_and_again_leaves_a_readable_consistent_store() {
    const ACCOUNTS: usize = 100;
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &up, ACCOUNTS);
    let db = dir.path().join("s.db");
    let mut prefix = "a".to_string();
    seed(&db, &prefix, ACCOUNTS, 1500);
    check_store(&db);
    let mut ledgers_expected = 2 * ACCOUNTS as i64;
    let (mut rounds, mut mid_transaction) = (0, 0);
    // At least 10 kills, and on until 3 of them landed inside an open write transaction.
    while rounds < 10 || (mid_transaction < 3 && rounds < 30) {
        rounds += 1;
        let mut d = Daemon::start(&cfg, "info");
        // Each start compacts the seeded history (one transaction of a few hundred
        // milliseconds in a debug build) while 100 accounts poll and commit a transaction each
        // per second. Kill it at a random moment once the store is open.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !d.log().contains("creditwatch started") {
            assert!(std::time::Instant::now() < deadline, "{}", d.log());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(fastrand::u64(0..800))).await;
        d.child.kill().unwrap();
        d.child.wait().unwrap();
        if uncommitted_wal_frames(&db) > 0 {
            mid_transaction += 1;
        }
        assert!(
            !d.log().contains("UNUSABLE"),
            "round {rounds}: the store was found unusable after a kill:\n{}",
            d.log()
        );
        let (_, ledgers) = check_store(&db);
        assert_eq!(ledgers, ledgers_expected, "round {rounds}");
        // Once a compaction has gone through (whether or not it was logged before the kill),
        // give the next start old history to compact again (pools of accounts no longer
        // configured, which compaction covers too).
        if seeded_samples(&db, &prefix) < 2 * 1500 * ACCOUNTS as i64 {
            prefix = format!("gone{rounds}-");
            seed(&db, &prefix, ACCOUNTS, 1500);
            ledgers_expected += 2 * ACCOUNTS as i64;
        }
    }
    eprintln!("{mid_transaction} of {rounds} kills landed inside an open write transaction");
    assert!(
        mid_transaction >= 3,
        "only {mid_transaction} of {rounds} kills landed inside a write transaction"
    );
    assert!(files_starting(dir.path(), "s.db.").is_empty());
    // And the store still works: a clean run on it polls and shuts down.
    let mut d = Daemon::start(&cfg, "info");
    d.wait_metrics("polls after the last kill", up_is_one).await;
    d.signal("TERM");
    assert_eq!(d.wait_exit(), Some(0));
    check_store(&db);
}
