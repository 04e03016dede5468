//! The per-account poll loop, and the ingest step that turns a reading into samples, totals and forecasts.

use crate::clock::Clock;
use crate::config::AccountConfig;
use crate::http::HttpClient;
use crate::ingest::{Job, Writer};
use crate::providers::{PollContext, PollError, Reading};
use crate::secret::Secret;
use crate::state::{Snapshot, State};
use crate::store::Store;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// What every poller shares.
#[derive(Clone)]
pub struct PollerDeps {
    pub http: HttpClient,
    pub store: Store,
    pub state: Arc<State>,
    pub clock: Arc<dyn Clock>,
    /// Bounds the polls in flight across all accounts (`max_concurrent_polls`).
    pub limit: Arc<Semaphore>,
    /// Records readings ([`crate::ingest`]): one thread, batching the store's writes.
    pub writer: Writer,
}

/// A failed poll is retried no sooner than this, whatever the backoff says.
pub const RETRY_FLOOR: Duration = Duration::from_secs(1);
/// The first retry after a failure comes after about `interval / BACKOFF_DIVISOR`; each further
/// consecutive failure doubles it, up to the interval.
pub const BACKOFF_DIVISOR: u32 = 16;
/// A `Retry-After` further away than this (or than the interval, when that is longer) is read as
/// this: a broken or hostile upstream cannot silence an account for days.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// How long to wait before the next poll of an account.
///
/// - After a success: the interval.
/// - After `auth`: the interval. Retrying sooner cannot fix a rejected key, and hammering an auth
///   endpoint can get a key locked.
/// - After any other failure, the `n`-th in a row: exponential backoff with equal jitter,
///   `b/2 + jitter·b/2` with `b = interval/16 · 2^(n-1)`, kept within [`RETRY_FLOOR`] and the
///   interval. A transient fault is retried within seconds; a lasting one settles at the
///   interval, so an account never polls more often than it would if it were healthy.
/// - After a 429 with `Retry-After`: never sooner than the upstream asked (capped by
///   [`MAX_RETRY_AFTER`] or the interval, whichever is longer), nor sooner than the backoff.
///
/// `jitter` is uniform in `[0, 1)`; it spreads retries of accounts that failed together.
pub fn next_wait(
    outcome: &Result<(), PollError>,
    consecutive_failures: u32,
    interval: Duration,
    jitter: f64,
) -> Duration {
    let backoff = || {
        let exp = consecutive_failures.saturating_sub(1).min(30);
        let b = (interval / BACKOFF_DIVISOR).saturating_mul(1u32 << exp.min(20));
        let b = b.min(interval);
        let d = b.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0));
        d.max(RETRY_FLOOR).min(interval)
    };
    match outcome {
        Ok(()) | Err(PollError::Auth { .. }) => interval,
        Err(PollError::RateLimited {
            retry_after: Some(d),
            ..
        }) => (*d).min(MAX_RETRY_AFTER.max(interval)).max(backoff()),
        Err(_) => backoff(),
    }
}

/// Polls one account until its task is aborted: once at start, then as [`next_wait`] says. With
/// `stale_after` set, the last good values are dropped once the last success is that old.
///
/// An idle poller is most of what an account costs at rest, so it holds little: `deps` is shared
/// by every poller, and it waits on its timer alone (it is stopped by aborting its task, which
/// drops a poll in flight just as a cancelled `select!` would).
pub async fn run(account: Arc<AccountConfig>, deps: Arc<PollerDeps>) {
    let mut failures: u32 = 0;
    let mut last_success: Option<tokio::time::Instant> = None;
    let mut expired = false;
    loop {
        // In a block of its own, so the outcome is not kept while the task sleeps.
        let wake = {
            // A slot among `max_concurrent_polls` first, then the poll: at start every account
            // is due at once, and a poll built before its turn would wait with its whole state.
            let permit = deps.limit.acquire().await.expect("semaphore never closed");
            let began = tokio::time::Instant::now();
            // Boxed: the poll's state (the HTTP client's futures) is most of this task's size,
            // and a task spends nearly all its life asleep between polls. Inline, every idle
            // account held about 1.7 KB for it.
            let outcome = Box::pin(poll_permitted(&account, &deps, permit)).await;
            if outcome.is_ok() {
                failures = 0;
                last_success = Some(tokio::time::Instant::now());
                expired = false;
            } else {
                failures = failures.saturating_add(1);
            }
            let wait = next_wait(&outcome, failures, account.interval, fastrand::f64());
            // A healthy account is polled every `interval` from the start of its last poll, not
            // from its end: time spent waiting for the writer does not stretch the interval, and
            // accounts whose first polls were spread out by `max_concurrent_polls` stay spread
            // out instead of coming due together again. Retries count from the failure.
            let from = if outcome.is_ok() {
                began
            } else {
                tokio::time::Instant::now()
            };
            from + wait
        };
        loop {
            // One timer, to whichever comes first: an idle task holds one `Sleep`, not two.
            let stale_at = match (account.stale_after, last_success) {
                (Some(s), Some(t)) if !expired => Some(t + s).filter(|at| *at < wake),
                _ => None,
            };
            tokio::time::sleep_until(stale_at.unwrap_or(wake)).await;
            if stale_at.is_none() {
                break;
            }
            expired = true;
            tracing::warn!(account = %account.name, "last successful poll is older than stale_after; its values are no longer exported");
            deps.state.expire(&account.name);
        }
    }
}

/// One poll: fetch, ingest, update state. Errors are recorded in state and logged, never raised
/// past the account.
pub async fn poll_once(account: &Arc<AccountConfig>, deps: &PollerDeps) -> Result<(), PollError> {
    let permit = deps.limit.acquire().await.expect("semaphore never closed");
    poll_permitted(account, deps, permit).await
}

async fn poll_permitted(
    account: &Arc<AccountConfig>,
    deps: &PollerDeps,
    permit: tokio::sync::SemaphorePermit<'_>,
) -> Result<(), PollError> {
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
        Ok(r) => r.and_then(Reading::checked),
    };
    let duration = started.elapsed().as_secs_f64();
    drop(permit);

    match result {
        Ok(mut reading) => {
            reading.redact(&account.secrets());
            let job = Job {
                account: Arc::clone(account),
                reading,
                now,
            };
            // Usually answered before the write: the poll is served while its rows are
            // written, and the write's outcome is waited for after.
            let mut pending = deps.writer.submit(job);
            let (mut snapshot, answered_error) = pending.answer().await;
            if answered_error.is_some() {
                // An answer that already carries the error may have totals computed without
                // the ledgers (they could not be read): never serve them below what was served.
                keep_totals(&mut snapshot, &deps.state, &account.name);
            }
            tracing::debug!(account = %account.name, duration, pools = snapshot.pools.len(), "poll succeeded");
            deps.state.record_success(&account.name, duration, snapshot);
            // The values are still right; only history could not be written. They are served,
            // and the writer keeps the totals served as floors until a write succeeds.
            if let Some(e) = answered_error.or(pending.written().await) {
                tracing::error!(account = %account.name, error = %e, "could not record poll in the state store");
            }
            Ok(())
        }
        Err(e) => {
            // The message may quote the upstream, which may echo the key it was sent.
            let message = Secret::redact(&e.to_string(), &account.secrets());
            tracing::warn!(account = %account.name, provider = account.provider.name(), reason = e.reason(), error = %message, "poll failed");
            deps.state
                .record_failure(&account.name, duration, e.reason(), message);
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

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    fn http() -> Result<(), PollError> {
        Err(PollError::Http {
            status: 503,
            detail: None,
        })
    }

    fn limited(after: Option<Duration>) -> Result<(), PollError> {
        Err(PollError::RateLimited {
            retry_after: after,
            detail: None,
        })
    }

    /// A poller task sleeps between polls nearly all its life, so its size is what 10,000
    /// accounts cost at rest: the poll itself (the HTTP client's futures) must stay boxed, and
    /// be built only once the poll has its slot.
    #[tokio::test]
    async fn an_idle_poller_task_is_small() {
        let text = "[[account]]\nname = \"a\"\nprovider = \"imagerouter\"\napi_key = \"k\"\n";
        let (config, _) = crate::config::Config::parse(
            text,
            std::path::Path::new("t.toml"),
            std::path::Path::new("."),
            &|_| None,
        )
        .unwrap();
        let store = Store::in_memory();
        let deps = PollerDeps {
            http: HttpClient::new().unwrap(),
            store: store.clone(),
            state: State::new(),
            clock: Arc::new(crate::clock::SystemClock),
            limit: Arc::new(Semaphore::new(1)),
            writer: Writer::start(store),
        };
        let account = Arc::new(config.accounts[0].clone());
        let task = run(account.clone(), Arc::new(deps.clone()));
        let inline = poll_once(&account, &deps);
        // Boxed, the task holds a pointer to the poll rather than the poll itself, also while it
        // waits for a slot among `max_concurrent_polls` (as every account does at start).
        assert!(
            std::mem::size_of_val(&task) < std::mem::size_of_val(&inline),
            "{} bytes per idle account (the poll alone is {})",
            std::mem::size_of_val(&task),
            std::mem::size_of_val(&inline)
        );
    }

    /// A poll is served whether or not its write succeeds, and when the write failed the total
    /// served stays a floor for the next poll (here across a reset, which the older ledger alone
    /// would count as 5).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_poll_whose_write_fails_is_served_and_its_total_stays_a_floor() {
        use wiremock::matchers::path;
        use wiremock::{Mock, MockServer, ResponseTemplate};
        let server = MockServer::start().await;
        let text = format!(
            "[[account]]\nname = \"w\"\nprovider = \"fluximage\"\napi_key = \"k\"\nbilling_anchor = \"2026-01-15\"\nbase_url = \"{}\"\n",
            server.uri()
        );
        let (config, _) = crate::config::Config::parse(
            &text,
            std::path::Path::new("t.toml"),
            std::path::Path::new("."),
            &|_| None,
        )
        .unwrap();
        let store = Store::in_memory();
        let clock = Arc::new(crate::clock::ManualClock::new(
            chrono::TimeZone::with_ymd_and_hms(&chrono::Utc, 2026, 11, 20, 6, 0, 0).unwrap(),
        ));
        let deps = PollerDeps {
            http: HttpClient::new().unwrap(),
            store: store.clone(),
            state: State::new(),
            clock: clock.clone(),
            limit: Arc::new(Semaphore::new(1)),
            writer: Writer::start(store.clone()),
        };
        let account = Arc::new(config.accounts[0].clone());
        deps.state.add_account("w", "fluximage", true);
        let serve = |used: u32, topup: u32| {
            let body = format!(
                r#"{{"plan":"pro","compressor_used":0,"compressor_limit":5000,"ia_credits_used":{used},"ia_credits_monthly":5000,"ia_topup_credits":{topup},"ia_credits_remaining":{},"canCompress":true,"canUseIA":true}}"#,
                5000 + topup - used
            );
            Mock::given(path("/api/usage"))
                .respond_with(ResponseTemplate::new(200).set_body_string(body))
        };
        let ai_total = |deps: &PollerDeps| {
            let a = deps.state.account("w").unwrap();
            let snap = a.snapshot.unwrap();
            snap.pools
                .iter()
                .find(|p| p.reading.pool == "ai")
                .unwrap()
                .consumed_total
        };
        serve(10, 0).mount(&server).await;
        poll_once(&account, &deps).await.unwrap();
        deps.writer.flush().await;
        assert_eq!(store.sample_count("w").unwrap(), 2);
        store.execute_for_test(
            "CREATE TRIGGER refuse BEFORE INSERT ON samples
             BEGIN SELECT RAISE(ABORT, 'refused for the test'); END;",
        );
        server.reset().await;
        serve(30, 0).mount(&server).await;
        clock.advance(Duration::from_secs(300));
        poll_once(&account, &deps).await.unwrap();
        assert_eq!(ai_total(&deps), 20.0, "served although not recorded");
        deps.writer.flush().await;
        assert_eq!(store.sample_count("w").unwrap(), 2);
        store.execute_for_test("DROP TRIGGER refuse;");
        server.reset().await;
        serve(5, 0).mount(&server).await;
        clock.advance(Duration::from_secs(300));
        poll_once(&account, &deps).await.unwrap();
        assert_eq!(ai_total(&deps), 20.0);
        deps.writer.flush().await;
        assert_eq!(store.sample_count("w").unwrap(), 4);
    }

    #[test]
    fn success_and_auth_wait_the_interval() {
        assert_eq!(next_wait(&Ok(()), 0, S(300), 0.3), S(300));
        let auth = Err(PollError::Auth {
            status: 401,
            detail: None,
        });
        assert_eq!(next_wait(&auth, 4, S(300), 0.3), S(300));
    }

    #[test]
    fn failures_back_off_exponentially_with_jitter_up_to_the_interval() {
        // interval 5m: the first retry comes after 9.375s..18.75s, doubling per failure.
        let ms = |n, j| next_wait(&http(), n, S(300), j).as_millis();
        assert_eq!((ms(1, 0.0), ms(1, 1.0)), (9_375, 18_750));
        assert_eq!((ms(2, 0.0), ms(2, 1.0)), (18_750, 37_500));
        assert_eq!((ms(4, 0.0), ms(4, 0.5)), (75_000, 112_500));
        assert_eq!((ms(5, 0.0), ms(5, 1.0)), (150_000, 300_000));
        // Never later than the interval, however many failures.
        assert_eq!((ms(6, 0.0), ms(6, 1.0)), (150_000, 300_000));
        assert_eq!(ms(u32::MAX, 0.99), 298_500);
        for n in 1..40 {
            for j in [0.0, 0.25, 0.999] {
                let d = next_wait(&http(), n, S(300), j);
                assert!(d >= RETRY_FLOOR && d <= S(300), "{n} {j} {d:?}");
            }
        }
    }

    #[test]
    fn retries_never_come_faster_than_the_floor() {
        assert_eq!(next_wait(&http(), 1, S(1), 0.0), S(1));
        assert_eq!(next_wait(&http(), 1, S(10), 0.0), S(1));
        assert_eq!(
            next_wait(&http(), 3, S(10), 0.0),
            Duration::from_millis(1250)
        );
    }

    #[test]
    fn retry_after_is_honoured_within_bounds() {
        assert_eq!(next_wait(&limited(Some(S(120))), 1, S(60), 0.5), S(120));
        // Shorter than the backoff: the backoff wins.
        assert_eq!(
            next_wait(&limited(Some(S(1))), 1, S(300), 0.0),
            Duration::from_millis(9375)
        );
        // A date days away is read as an hour, or the interval when that is longer.
        assert_eq!(
            next_wait(&limited(Some(S(864_000))), 1, S(60), 0.5),
            S(3600)
        );
        assert_eq!(
            next_wait(&limited(Some(S(864_000))), 1, S(7200), 0.5),
            S(7200)
        );
        // No Retry-After: plain backoff.
        assert_eq!(
            next_wait(&limited(None), 1, S(300), 0.0),
            Duration::from_millis(9375)
        );
    }
}
