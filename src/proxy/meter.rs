//! The proxy's meter: exact in-memory totals mirrored in the store, and a writer thread that commits costs in groups.
//!
//! Every metered request becomes a message to one writer thread per account. The thread drains
//! whatever is queued, applies it to the in-memory totals (what `/metrics` and the poll read), and
//! commits it in one SQLite transaction (group commit: under load one commit covers many
//! requests). A priced response is released to its client only after its commit reply, so a
//! `kill -9` never loses a cost already served. If the store fails, the totals stay right in
//! memory and the writer retries the pending deltas until a commit succeeds.

use super::cost::Pricing;
use crate::store::{ProxyCount, ProxyKey, ProxyLogRow, Store, StoreError};
use rust_decimal::Decimal;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// At most this many requests are committed in one transaction.
const MAX_BATCH: usize = 4096;
/// While commits fail, the writer retries this often even when no request arrives.
const RETRY_EVERY: Duration = Duration::from_secs(1);
/// While commits fail, request log rows beyond this many are dropped (the totals never are).
const MAX_PENDING_LOG: usize = 100_000;
/// While commits fail, the error is logged at most this often.
const ERROR_LOG_EVERY: Duration = Duration::from_secs(60);

/// One request as the meter sees it. Holds no Authorization value.
#[derive(Debug, Clone, PartialEq)]
pub struct Metered {
    pub ts_ms: i64,
    pub key: ProxyKey,
    pub pricing: Pricing,
    pub request_id: Option<String>,
    pub key_hash: Option<String>,
}

impl Metered {
    fn delta(&self) -> ProxyCount {
        let mut c = ProxyCount {
            requests: 1,
            ..ProxyCount::default()
        };
        match &self.pricing {
            Pricing::Priced(d) => c.cost = *d,
            Pricing::Unpriced(_) => c.unpriced = 1,
            Pricing::Unbilled => {}
        }
        c
    }

    /// The request log row: for every request that carried a cost header or a request id.
    fn log_row(&self) -> Option<ProxyLogRow> {
        let (cost, note) = match &self.pricing {
            Pricing::Priced(d) => (Some(*d), None),
            Pricing::Unpriced(u @ super::cost::Unpriced::Malformed { .. }) => {
                (None, Some(u.note()))
            }
            Pricing::Unpriced(u) if self.request_id.is_some() => (None, Some(u.note())),
            _ if self.request_id.is_some() => (None, None),
            _ => return None,
        };
        Some(ProxyLogRow {
            ts_ms: self.ts_ms,
            key: self.key.clone(),
            key_hash: self.key_hash.clone(),
            request_id: self.request_id.clone(),
            cost,
            note,
        })
    }
}

/// The answer to a recorded request: `Err` with the store's message when the commit failed (the
/// cost is then held in memory and retried).
pub type Committed = Result<(), String>;

enum Msg {
    Record(Metered, Option<oneshot::Sender<Committed>>),
    Flush(oneshot::Sender<bool>),
}

struct Shared {
    account: String,
    store: Store,
    totals: Mutex<BTreeMap<ProxyKey, ProxyCount>>,
    write_errors: AtomicU64,
}

/// An account's meter. Dropping it lets the writer thread finish what is queued and exit.
pub struct Meter {
    shared: Arc<Shared>,
    tx: Mutex<mpsc::Sender<Msg>>,
}

impl std::fmt::Debug for Meter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Meter")
            .field("account", &self.shared.account)
            .finish()
    }
}

/// The proxy series of one account, as `/metrics` exports them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counters {
    /// Requests by (model, status code).
    pub requests: BTreeMap<(String, u16), u64>,
    /// Cost by model (every model seen, 0 when none of its requests was priced).
    pub cost: BTreeMap<String, Decimal>,
    /// Unpriced requests by model (every model seen).
    pub unpriced: BTreeMap<String, u64>,
    /// Requests and cost by key name, when per-key attribution is configured.
    pub by_key: BTreeMap<String, (u64, Decimal)>,
    /// Failed ledger commits since start.
    pub write_errors: u64,
}

impl Meter {
    /// Loads the account's ledger from the store and starts its writer thread.
    pub fn open(store: Store, account: &str) -> Result<Arc<Meter>, StoreError> {
        let totals = store.proxy_totals(account)?;
        let shared = Arc::new(Shared {
            account: account.to_string(),
            store,
            totals: Mutex::new(totals),
            write_errors: AtomicU64::new(0),
        });
        let (tx, rx) = mpsc::channel();
        let s = shared.clone();
        std::thread::Builder::new()
            .name(format!("ledger {account}"))
            .spawn(move || writer(s, rx))
            .expect("the ledger writer thread starts");
        Ok(Arc::new(Meter {
            shared,
            tx: Mutex::new(tx),
        }))
    }

    fn send(&self, msg: Msg) {
        // Memory first, and here rather than on the writer thread: a scrape that follows a
        // response always counts its request, whatever the store is doing.
        if let Msg::Record(m, _) = &msg {
            self.totals()
                .entry(m.key.clone())
                .or_default()
                .add(&m.delta());
        }
        // The writer only exits once every sender is gone, so this cannot fail while `self` lives.
        let _ = self.tx.lock().unwrap_or_else(|p| p.into_inner()).send(msg);
    }

    /// Records a request; the receiver answers once it is committed to the store.
    pub fn record(&self, m: Metered) -> oneshot::Receiver<Committed> {
        let (tx, rx) = oneshot::channel();
        self.send(Msg::Record(m, Some(tx)));
        rx
    }

    /// Records a request without waiting for the commit (for requests that add no cost).
    pub fn record_detached(&self, m: Metered) {
        self.send(Msg::Record(m, None));
    }

    /// Waits until everything recorded so far is committed; `false` if the store is failing.
    pub async fn flush(&self) -> bool {
        let (tx, rx) = oneshot::channel();
        self.send(Msg::Flush(tx));
        rx.await.unwrap_or(false)
    }

    fn totals(&self) -> std::sync::MutexGuard<'_, BTreeMap<ProxyKey, ProxyCount>> {
        self.shared.totals.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Spend of the periods that start in `[start_ms, end_ms)`: the current billing period's.
    pub fn spend_between(&self, start_ms: i64, end_ms: i64) -> Decimal {
        self.totals()
            .iter()
            .filter(|(k, _)| k.period_start_ms >= start_ms && k.period_start_ms < end_ms)
            .map(|(_, c)| c.cost)
            .sum::<Decimal>()
            .normalize()
    }

    /// Everything spent through the proxy since its ledger began.
    pub fn lifetime_cost(&self) -> Decimal {
        self.totals()
            .values()
            .map(|c| c.cost)
            .sum::<Decimal>()
            .normalize()
    }

    /// The counters `/metrics` exports, summed over periods.
    pub fn counters(&self) -> Counters {
        let mut out = Counters {
            write_errors: self.shared.write_errors.load(Ordering::Relaxed),
            ..Counters::default()
        };
        for (k, c) in self.totals().iter() {
            *out.requests.entry((k.model.clone(), k.code)).or_default() += c.requests;
            *out.cost.entry(k.model.clone()).or_default() += c.cost;
            *out.unpriced.entry(k.model.clone()).or_default() += c.unpriced;
            if !k.key.is_empty() {
                let e = out.by_key.entry(k.key.clone()).or_default();
                e.0 += c.requests;
                e.1 += c.cost;
            }
        }
        for c in out.cost.values_mut() {
            *c = c.normalize();
        }
        out
    }
}

/// The writer thread: group commits, in-memory totals, retries.
fn writer(shared: Arc<Shared>, rx: mpsc::Receiver<Msg>) {
    let mut pending: BTreeMap<ProxyKey, ProxyCount> = BTreeMap::new();
    let mut pending_log: Vec<ProxyLogRow> = Vec::new();
    let mut failing_since: Option<Instant> = None;
    let mut last_error_log: Option<Instant> = None;
    let mut dropped_log_rows: u64 = 0;
    loop {
        let first = if pending.is_empty() && pending_log.is_empty() {
            match rx.recv() {
                Ok(m) => Some(m),
                Err(_) => return,
            }
        } else {
            match rx.recv_timeout(RETRY_EVERY) {
                Ok(m) => Some(m),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => {
                    // Last chance: one final attempt, then the retries are abandoned.
                    if let Err(e) =
                        shared
                            .store
                            .record_proxy(&shared.account, &pending, &pending_log)
                    {
                        tracing::error!(account = %shared.account, error = %e, "proxy ledger: pending costs could not be written before exit");
                    }
                    return;
                }
            }
        };
        let mut waiters = Vec::new();
        let mut flushes = Vec::new();
        let mut fresh: BTreeMap<ProxyKey, ProxyCount> = BTreeMap::new();
        let mut n = 0;
        for msg in first
            .into_iter()
            .chain(std::iter::from_fn(|| rx.try_recv().ok()))
        {
            match msg {
                Msg::Record(m, reply) => {
                    fresh.entry(m.key.clone()).or_default().add(&m.delta());
                    if let Some(row) = m.log_row() {
                        pending_log.push(row);
                    }
                    if let Some(r) = reply {
                        waiters.push(r);
                    }
                    n += 1;
                }
                Msg::Flush(r) => flushes.push(r),
            }
            if n >= MAX_BATCH {
                break;
            }
        }
        // The in-memory totals were updated by `Meter::send`; only the store is behind.
        for (k, d) in fresh {
            pending.entry(k).or_default().add(&d);
        }
        if pending_log.len() > MAX_PENDING_LOG {
            let excess = pending_log.len() - MAX_PENDING_LOG;
            pending_log.drain(..excess);
            dropped_log_rows += excess as u64;
        }
        let result = if pending.is_empty() && pending_log.is_empty() {
            Ok(())
        } else {
            shared
                .store
                .record_proxy(&shared.account, &pending, &pending_log)
        };
        let reply = match result {
            Ok(()) => {
                pending.clear();
                pending_log.clear();
                if let Some(since) = failing_since.take() {
                    tracing::info!(account = %shared.account, failed_for = ?since.elapsed(), dropped_log_rows, "proxy ledger writes recovered; pending totals committed");
                    dropped_log_rows = 0;
                }
                Ok(())
            }
            Err(e) => {
                shared.write_errors.fetch_add(1, Ordering::Relaxed);
                failing_since.get_or_insert_with(Instant::now);
                if last_error_log.is_none_or(|t| t.elapsed() >= ERROR_LOG_EVERY) {
                    last_error_log = Some(Instant::now());
                    tracing::error!(account = %shared.account, error = %e, pending_rows = pending.len(), "proxy ledger write failed; costs are kept in memory and retried");
                }
                Err(e.to_string())
            }
        };
        for w in waiters {
            let _ = w.send(reply.clone());
        }
        for f in flushes {
            let _ = f.send(reply.is_ok());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::cost::Unpriced;

    fn m(model: &str, code: u16, pricing: Pricing) -> Metered {
        Metered {
            ts_ms: 1,
            key: ProxyKey {
                period_start_ms: 0,
                model: model.into(),
                code,
                key: String::new(),
            },
            pricing,
            request_id: Some("r".into()),
            key_hash: None,
        }
    }

    #[tokio::test]
    async fn commits_before_answering_and_reloads_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let store = Store::open(&path).unwrap();
        let meter = Meter::open(store.clone(), "a").unwrap();
        let cost: Decimal = "0.000412".parse().unwrap();
        let mut waits = Vec::new();
        for _ in 0..1000 {
            waits.push(meter.record(m("lite", 200, Pricing::Priced(cost))));
        }
        meter.record_detached(m("lite", 200, Pricing::Unpriced(Unpriced::Streaming)));
        meter.record_detached(m("pro", 429, Pricing::Unbilled));
        for w in waits {
            assert_eq!(w.await.unwrap(), Ok(()));
        }
        assert!(meter.flush().await);
        // A thousand float additions of 0.000412 drift; the ledger does not.
        assert_ne!((0..1000).map(|_| 0.000412_f64).sum::<f64>(), 0.412);
        assert_eq!(meter.lifetime_cost().to_string(), "0.412");
        drop(meter);
        let again = Meter::open(Store::open(&path).unwrap(), "a").unwrap();
        let c = again.counters();
        assert_eq!(c.cost["lite"].to_string(), "0.412");
        assert_eq!(c.cost["pro"], Decimal::ZERO);
        assert_eq!(c.requests[&("lite".to_string(), 200)], 1001);
        assert_eq!(c.requests[&("pro".to_string(), 429)], 1);
        assert_eq!((c.unpriced["lite"], c.unpriced["pro"]), (1, 0));
        assert_eq!(again.spend_between(0, 1).to_string(), "0.412");
        assert_eq!(again.spend_between(1, 2), Decimal::ZERO);
        // Every priced request is in the log with its request id; the unbilled 429 is too.
        assert_eq!(store.proxy_log("a", 0).unwrap().len(), 1002);
    }
}
