//! Simulated history: polls at a manual clock through the daemon's own ingest, store and hourly maintenance, without waiting for real time to pass.
//!
//! Each simulated poll takes the body the fake upstream would serve at that instant, parses it
//! with the provider's own parser and ingests it as the daemon's writer thread does
//! ([`creditwatch::ingest::Tracker`], in batches of one wave of polls), exactly as a live poll is
//! ingested after its HTTP round trip. Every simulated hour the store is compacted and
//! pruned as the daemon's supervisor does. Accounts are polled at staggered instants within each
//! interval, as independent pollers would be.

use crate::upstream;
use chrono::{DateTime, Utc};
use creditwatch::config::AccountConfig;
use creditwatch::ingest::{Job, Tracker};
use creditwatch::providers::{ProviderSettings, Reading, floow, fluximage, imagerouter};
use creditwatch::state::State;
use creditwatch::store::Store;
use std::time::Duration;

/// What a live poll of account `index` at `now` would read.
pub fn reading(account: &AccountConfig, index: usize, keys: usize, now: DateTime<Utc>) -> Reading {
    let anchor = || account.billing_anchor.expect("generated with an anchor");
    let r = match &account.provider {
        ProviderSettings::Fluximage(_) => {
            fluximage::parse(upstream::fluximage(index, now).as_bytes(), anchor())
        }
        ProviderSettings::Imagerouter(s) => imagerouter::parse(
            upstream::imagerouter(index, now, s.per_key, keys).as_bytes(),
            now,
            s.per_key,
        ),
        ProviderSettings::Floow(s) => floow::parse(
            upstream::floow(index, now, s.request_days(account)).as_bytes(),
            now,
            anchor(),
            s.monthly_allowance,
        ),
        other => panic!("the simulation has no payloads for {}", other.name()),
    };
    r.unwrap_or_else(|e| panic!("account {index}: the fake payload parses: {e}"))
}

/// Polls every account every `step` from `start` to `end` (exclusive), ingesting into `store`
/// and, when given, updating `state` as the poller does. Calls `hourly(t)` after each simulated
/// hour's maintenance.
#[allow(clippy::too_many_arguments)]
pub fn run(
    accounts: &[(usize, AccountConfig)],
    keys: usize,
    store: &Store,
    state: Option<&State>,
    retention: Duration,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    step: Duration,
    mut hourly: impl FnMut(DateTime<Utc>),
) {
    if let Some(state) = state {
        for (_, a) in accounts {
            state.add_account(&a.name, a.provider.name(), false);
        }
    }
    let step_ms = step.as_millis() as i64;
    let n = accounts.len().max(1) as i64;
    let retention = chrono::Duration::from_std(retention).expect("retention in range");
    let mut next_maintenance = start + chrono::Duration::hours(1);
    let mut tracker = Tracker::default();
    let mut pending: Vec<Job> = Vec::new();
    // Polls that finish together reach the writer together: a wave of `max_concurrent_polls`.
    let flush = |tracker: &mut Tracker, pending: &mut Vec<Job>| {
        let names: Vec<String> = pending.iter().map(|j| j.account.name.clone()).collect();
        let outcomes = tracker.ingest_batch(store, std::mem::take(pending));
        for (name, (snapshot, err)) in names.into_iter().zip(outcomes) {
            if let Some(e) = err {
                panic!("simulated ingest failed: {e}");
            }
            if let Some(state) = state {
                state.record_success(&name, 0.05, snapshot);
            }
        }
    };
    let mut round = start;
    while round < end {
        for (k, (index, account)) in accounts.iter().enumerate() {
            let now = round + chrono::Duration::milliseconds(step_ms * k as i64 / n);
            if now >= next_maintenance {
                flush(&mut tracker, &mut pending);
                maintain(store, next_maintenance, retention);
                hourly(next_maintenance);
                next_maintenance += chrono::Duration::hours(1);
            }
            pending.push(Job {
                account: std::sync::Arc::new(account.clone()),
                reading: reading(account, *index, keys, now),
                now,
            });
            if pending.len() >= WAVE {
                flush(&mut tracker, &mut pending);
            }
        }
        round += chrono::Duration::milliseconds(step_ms);
    }
    flush(&mut tracker, &mut pending);
    while next_maintenance <= end {
        maintain(store, next_maintenance, retention);
        hourly(next_maintenance);
        next_maintenance += chrono::Duration::hours(1);
    }
}

/// Polls per simulated batch: the default `max_concurrent_polls`.
const WAVE: usize = 64;

/// The daemon's hourly maintenance.
fn maintain(store: &Store, now: DateTime<Utc>, retention: chrono::Duration) {
    store
        .compact(now.timestamp_millis())
        .expect("compaction works");
    store
        .prune((now - retention).timestamp_millis())
        .expect("pruning works");
}
