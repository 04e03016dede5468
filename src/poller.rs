//! The per-account poll loop, and the ingest step that turns a reading into samples, totals and forecasts.

use crate::clock::Clock;
use crate::config::AccountConfig;
use crate::forecast::consumption::{Observation, consumed_between};
use crate::forecast::{ForecastInput, forecast};
use crate::http::HttpClient;
use crate::providers::{PollContext, PollError, Reading};
use crate::state::{PoolState, Snapshot, State};
use crate::store::{PoolId, SampleRow, Store, StoreError};
use chrono::{DateTime, Utc};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// What every poller shares.
#[derive(Clone)]
pub struct PollerDeps {
    pub http: HttpClient,
    pub store: Store,
    pub state: Arc<State>,
    pub clock: Arc<dyn Clock>,
    /// Bounds the polls in flight across all accounts (`max_concurrent_polls`).
    pub limit: Arc<Semaphore>,
}

/// Polls one account until cancelled: once at start, then every `interval`. A failed poll waits
/// the interval too, or longer when the upstream asked for it with Retry-After.
pub async fn run(account: Arc<AccountConfig>, deps: PollerDeps, cancel: CancellationToken) {
    loop {
        let outcome = tokio::select! {
            _ = cancel.cancelled() => return,
            r = poll_once(&account, &deps) => r,
        };
        let wait = match &outcome {
            Err(PollError::RateLimited {
                retry_after: Some(d),
                ..
            }) => (*d).max(account.interval),
            _ => account.interval,
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// One poll: fetch, ingest, update state. Errors are recorded in state and logged, never raised
/// past the account.
pub async fn poll_once(account: &AccountConfig, deps: &PollerDeps) -> Result<(), PollError> {
    let permit = deps.limit.acquire().await.expect("semaphore never closed");
    let now = deps.clock.now();
    let started = Instant::now();
    let proxy = deps.state.proxy(&account.name);
    let ctx = PollContext {
        http: &deps.http,
        account,
        now,
        meter: proxy.as_ref().map(|p| p.meter.as_ref()),
    };
    let result = match tokio::time::timeout(account.timeout, account.provider.poll(&ctx)).await {
        Ok(Err(PollError::Timeout(_))) | Err(_) => Err(PollError::Timeout(account.timeout)),
        Ok(r) => r,
    };
    let duration = started.elapsed().as_secs_f64();
    drop(permit);

    match result {
        Ok(reading) => {
            let store = deps.store.clone();
            let acc = account.clone();
            let (mut snapshot, store_error) =
                tokio::task::spawn_blocking(move || ingest(&store, &acc, reading, now))
                    .await
                    .expect("ingest does not panic");
            if let Some(e) = store_error {
                keep_totals(&mut snapshot, &deps.state, &account.name);
                // The values are still right; only history could not be written. Serve them and
                // say so loudly; the next successful write picks up where this one left off.
                tracing::error!(account = %account.name, error = %e, "could not record poll in the state store");
            }
            tracing::debug!(account = %account.name, duration, pools = snapshot.pools.len(), "poll succeeded");
            deps.state.record_success(&account.name, duration, snapshot);
            Ok(())
        }
        Err(e) => {
            tracing::warn!(account = %account.name, provider = account.provider.name(), reason = e.reason(), error = %e, "poll failed");
            deps.state
                .record_failure(&account.name, duration, e.reason(), e.to_string());
            Err(e)
        }
    }
}

/// After a store error the totals may have been computed without the ledger: never let a pool's
/// `consumed_total` go below what was last served.
fn keep_totals(snapshot: &mut Snapshot, state: &State, account: &str) {
    let Some(prev) = state.account(account).and_then(|a| a.snapshot) else {
        return;
    };
    for pool in &mut snapshot.pools {
        let before = prev
            .pools
            .iter()
            .find(|p| p.reading.pool == pool.reading.pool && p.reading.key == pool.reading.key);
        if let Some(before) = before {
            pool.consumed_total = pool.consumed_total.max(before.consumed_total);
        }
    }
}

/// Turns a reading taken at `now` into samples (written to the store) and a snapshot with
/// running totals and forecasts. A store error is returned beside the snapshot, whose totals are
/// then computed from what the store last held.
pub fn ingest(
    store: &Store,
    account: &AccountConfig,
    reading: Reading,
    now: DateTime<Utc>,
) -> (Snapshot, Option<StoreError>) {
    let now_ms = now.timestamp_millis();
    // Without the ledgers the totals cannot be continued: write nothing rather than overwrite
    // them with totals that restart from 0.
    let (ledgers, ledger_error) = match store.ledgers(&account.name) {
        Ok(l) => (l, None),
        Err(e) => (Default::default(), Some(e)),
    };
    let mut rows = Vec::with_capacity(reading.pools.len());
    let mut periods = Vec::with_capacity(reading.pools.len());
    for pool in &reading.pools {
        let id = PoolId {
            pool: pool.pool.clone(),
            key: pool.key.clone(),
        };
        let period = pool.schedule.period_at(now);
        let obs = Observation {
            used: pool.used,
            remaining: pool.remaining,
            period_start_ms: period.map(|p| p.start.timestamp_millis()),
        };
        let consumed = match (ledgers.get(&id), pool.cumulative) {
            // The provider's own exact total; never below what was already exported.
            (Some(l), Some(total)) => total.max(l.consumed),
            (None, Some(total)) => total,
            // A reading older than the ledger (clock stepped back) adds nothing.
            (Some(l), None) if l.last_ts_ms >= now_ms => l.consumed,
            (Some(l), None) => l.consumed + consumed_between(&l.last, &obs, pool.rule),
            (None, None) => 0.0,
        };
        rows.push(SampleRow {
            id,
            unit: pool.unit.as_str().to_string(),
            ts_ms: now_ms,
            used: pool.used,
            remaining: pool.remaining,
            limit: pool.limit,
            period_start_ms: obs.period_start_ms,
            consumed,
        });
        periods.push(period);
    }
    let windows = account.all_windows();
    let longest = windows
        .iter()
        .map(|w| w.duration)
        .max()
        .unwrap_or(Duration::from_secs(3600));
    let since = now_ms - longest.as_millis() as i64;
    let past = crate::backfill::rows(&reading, &rows, &ledgers, now_ms, since);
    let write = match ledger_error {
        Some(e) => Err(e),
        None => store.record_with_history(&account.name, &rows, &past),
    };
    let mut pools = Vec::with_capacity(rows.len());
    for ((pool, row), period) in reading.pools.into_iter().zip(rows).zip(periods) {
        let points = store
            .points(&account.name, &row.id, since)
            .unwrap_or_default();
        let f = forecast(&ForecastInput {
            points: &points,
            windows: &account.burn_windows,
            forecast_window: &account.forecast_window,
            used: pool.used,
            remaining: pool.remaining,
            period,
            now,
        });
        pools.push(PoolState {
            reading: pool,
            consumed_total: row.consumed,
            period,
            forecast: f,
        });
    }
    let snapshot = Snapshot {
        at: now,
        plan: reading.plan,
        pools,
        keys: reading.keys,
        endpoints: reading.endpoints,
    };
    (snapshot, write.err())
}
