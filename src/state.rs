//! In-memory state that `/metrics` and the landing page read: per-account poll status and the latest pools with forecasts.

use crate::config::Window;
use crate::forecast::Forecast;
use crate::forecast::schedule::Period;
use crate::providers::{ERROR_REASONS, EndpointUsage, KeyInfo, PoolReading};
use crate::proxy::Meter;
use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::watch;

/// Everything the exporter serves, updated by pollers and the reload path.
///
/// Each account's state sits behind its own pointer, and an update swaps in a new version of it
/// (copy-on-write): a scrape or a page render takes the pointers, 8 bytes an account, and reads
/// versions that no poll will change under it, instead of copying every account's state.
#[derive(Debug)]
pub struct State {
    accounts: RwLock<BTreeMap<Arc<str>, Arc<AccountState>>>,
    /// Bumped on every change, so waiters (tests, readiness) wake on events instead of polling.
    changes: watch::Sender<u64>,
    /// Accounts still waiting for their first poll; `/-/ready` answers 200 once it is empty.
    pending_first: RwLock<BTreeSet<String>>,
    reload: RwLock<ReloadStatus>,
    /// Running metering proxies by account: their address and the meter the exporter reads live.
    proxies: RwLock<BTreeMap<String, ProxyInfo>>,
    alerting: RwLock<AlertingStatus>,
}

/// A running metering proxy (fluxrouter accounts).
#[derive(Debug, Clone)]
pub struct ProxyInfo {
    /// The address it is bound to.
    pub addr: SocketAddr,
    pub meter: Arc<Meter>,
}

/// What the built-in alerter reports: notification counts per receiver, and its alerts.
#[derive(Debug, Clone, Default)]
pub struct AlertingStatus {
    /// Delivery attempts per configured receiver: (successes, failures).
    pub notifications: BTreeMap<String, (u64, u64)>,
    /// Snapshots each receiver has processed (lets tests wait for a receiver to catch up).
    pub rounds: BTreeMap<String, u64>,
    /// Evaluations done since start.
    pub evaluations: u64,
    /// `(alertname, phase)` of every alert after the last evaluation.
    pub alerts: Vec<(&'static str, &'static str)>,
    /// Whether the alerter is running.
    pub enabled: bool,
}

/// Outcome of the last config (re)load.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReloadStatus {
    pub last_successful: bool,
    pub last_success: Option<DateTime<Utc>>,
}

/// One account's status and its last successful snapshot.
#[derive(Debug, Clone)]
pub struct AccountState {
    pub name: Arc<str>,
    pub provider: &'static str,
    /// The account's `provider` and `account` labels as the exposition writes them, formatted
    /// once for the account's life instead of on every scrape.
    pub labels: Arc<str>,
    /// Polls attempted, successful or not.
    pub attempts: u64,
    pub up: bool,
    pub last_success: Option<DateTime<Utc>>,
    pub last_duration_seconds: Option<f64>,
    /// Failed polls by reason; every reason is present from the start so `rate()` works.
    pub errors: ErrorCounts,
    pub last_error: Option<String>,
    /// What the last successful poll produced; `None` before the first success.
    pub snapshot: Option<Arc<Snapshot>>,
    /// The poll interval and forecast window from the config, for the status page.
    pub interval: Option<Duration>,
    pub forecast_window: Option<Window>,
}

impl AccountState {
    pub fn new(name: &str, provider: &'static str) -> Self {
        AccountState {
            name: name.into(),
            provider,
            labels: crate::metrics::account_labels(provider, name).into(),
            attempts: 0,
            up: false,
            last_success: None,
            last_duration_seconds: None,
            errors: ErrorCounts::default(),
            last_error: None,
            snapshot: None,
            interval: None,
            forecast_window: None,
        }
    }
}

/// Failed polls by reason: one counter for each of [`ERROR_REASONS`], in that (alphabetical)
/// order. A fixed array rather than a map, so an account's state is one allocation and a new
/// version of it is cheap to make.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ErrorCounts([u64; ERROR_REASONS.len()]);

impl ErrorCounts {
    /// Counts one failure; `reason` is one of [`ERROR_REASONS`].
    pub fn add(&mut self, reason: &str) {
        match ERROR_REASONS.iter().position(|r| *r == reason) {
            Some(i) => self.0[i] += 1,
            None => debug_assert!(false, "unknown error reason {reason:?}"),
        }
    }

    /// Failures of one reason; `None` for a reason that is not one of [`ERROR_REASONS`].
    pub fn get(&self, reason: &str) -> Option<u64> {
        let i = ERROR_REASONS.iter().position(|r| *r == reason)?;
        Some(self.0[i])
    }

    /// Every reason with its count, in the order of [`ERROR_REASONS`].
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        ERROR_REASONS.iter().copied().zip(self.0.iter().copied())
    }
}

impl std::ops::Index<&str> for ErrorCounts {
    type Output = u64;

    /// Panics on a reason that is not one of [`ERROR_REASONS`], as a map lookup would.
    fn index(&self, reason: &str) -> &u64 {
        let i = ERROR_REASONS
            .iter()
            .position(|r| *r == reason)
            .unwrap_or_else(|| panic!("unknown error reason {reason:?}"));
        &self.0[i]
    }
}

/// The result of one successful poll, with everything derived from it.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub at: DateTime<Utc>,
    pub plan: Option<String>,
    pub pools: Vec<PoolState>,
    /// The account's API keys as last listed; a key that vanished upstream is simply absent.
    pub keys: Vec<KeyInfo>,
    pub endpoints: Vec<EndpointUsage>,
}

/// One pool as last read, with its running total and forecast.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolState {
    pub reading: PoolReading,
    pub consumed_total: f64,
    pub period: Option<Period>,
    pub forecast: Forecast,
}

impl Default for State {
    fn default() -> Self {
        State {
            accounts: RwLock::default(),
            changes: watch::channel(0).0,
            pending_first: RwLock::default(),
            reload: RwLock::default(),
            proxies: RwLock::default(),
            alerting: RwLock::default(),
        }
    }
}

impl State {
    pub fn new() -> Arc<State> {
        Arc::new(State::default())
    }

    fn changed(&self) {
        self.changes.send_modify(|v| *v += 1);
    }

    /// Applies `f` to a new version of the account's state (or to the current one in place when
    /// nothing else holds it); a scrape that took the old version keeps reading it unchanged.
    fn update(&self, name: &str, f: impl FnOnce(&mut AccountState)) {
        if let Some(a) = self.accounts.write().unwrap().get_mut(name) {
            f(Arc::make_mut(a));
        }
    }

    /// Waits until `cond` holds, re-checking after every state change.
    pub async fn wait_until(&self, mut cond: impl FnMut(&State) -> bool) {
        let mut rx = self.changes.subscribe();
        loop {
            if cond(self) {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Registers an account (replacing any previous state) and marks it as awaiting a first poll
    /// when `gate_readiness` is set.
    pub fn add_account(&self, name: &str, provider: &'static str, gate_readiness: bool) {
        let a = AccountState::new(name, provider);
        self.accounts
            .write()
            .unwrap()
            .insert(a.name.clone(), Arc::new(a));
        if gate_readiness {
            self.pending_first.write().unwrap().insert(name.to_string());
        }
        self.changed();
    }

    /// Keeps an account's status, counters and last values across a change of its config (a
    /// rotated key, a new interval), so its counters never reset; starts it afresh when it is new
    /// or its provider changed.
    pub fn keep_or_add_account(&self, name: &str, provider: &'static str) {
        let mut accounts = self.accounts.write().unwrap();
        match accounts.get(name) {
            Some(a) if a.provider == provider => {}
            _ => {
                let a = AccountState::new(name, provider);
                accounts.insert(a.name.clone(), Arc::new(a));
            }
        }
        drop(accounts);
        self.changed();
    }

    /// Records the account's poll interval and forecast window (shown by the status page).
    pub fn set_schedule(&self, name: &str, interval: Duration, forecast_window: Window) {
        self.update(name, |a| {
            a.interval = Some(interval);
            a.forecast_window = Some(forecast_window);
        });
        self.changed();
    }

    pub fn remove_account(&self, name: &str) {
        self.accounts.write().unwrap().remove(name);
        self.pending_first.write().unwrap().remove(name);
        self.changed();
    }

    pub fn record_success(&self, name: &str, duration: f64, snapshot: Snapshot) {
        let snapshot = Arc::new(snapshot);
        self.update(name, |a| {
            a.attempts += 1;
            a.up = true;
            a.last_success = Some(snapshot.at);
            a.last_duration_seconds = Some(duration);
            a.last_error = None;
            a.snapshot = Some(snapshot);
        });
        self.pending_first.write().unwrap().remove(name);
        self.changed();
    }

    pub fn record_failure(&self, name: &str, duration: f64, reason: &'static str, message: String) {
        self.update(name, |a| {
            a.attempts += 1;
            a.up = false;
            a.last_duration_seconds = Some(duration);
            a.errors.add(reason);
            a.last_error = Some(message);
        });
        self.pending_first.write().unwrap().remove(name);
        self.changed();
    }

    /// Drops the account's last good values (`stale_after` passed): it keeps exporting `up`, the
    /// error counters and the last success time, but no value that could be read as current.
    pub fn expire(&self, name: &str) {
        self.update(name, |a| a.snapshot = None);
        self.changed();
    }

    /// Every account, in name order, for one scrape or one page render: pointers to the current
    /// versions, which later updates replace rather than change, so what is read stays
    /// consistent without copying any account's state.
    pub fn accounts(&self) -> Vec<Arc<AccountState>> {
        self.accounts.read().unwrap().values().cloned().collect()
    }

    pub fn account(&self, name: &str) -> Option<AccountState> {
        self.accounts
            .read()
            .unwrap()
            .get(name)
            .map(|a| AccountState::clone(a))
    }

    pub fn is_ready(&self) -> bool {
        self.pending_first.read().unwrap().is_empty()
    }

    pub fn pending(&self) -> Vec<String> {
        self.pending_first.read().unwrap().iter().cloned().collect()
    }

    pub fn set_reload(&self, ok: bool, at: DateTime<Utc>) {
        let mut r = self.reload.write().unwrap();
        r.last_successful = ok;
        if ok {
            r.last_success = Some(at);
        }
        drop(r);
        self.changed();
    }

    pub fn reload_status(&self) -> ReloadStatus {
        *self.reload.read().unwrap()
    }

    /// Registers (or replaces) an account's running proxy.
    pub fn set_proxy(&self, name: &str, info: ProxyInfo) {
        self.proxies.write().unwrap().insert(name.to_string(), info);
        self.changed();
    }

    pub fn remove_proxy(&self, name: &str) {
        self.proxies.write().unwrap().remove(name);
        self.changed();
    }

    pub fn proxy(&self, name: &str) -> Option<ProxyInfo> {
        self.proxies.read().unwrap().get(name).cloned()
    }

    pub fn proxies(&self) -> BTreeMap<String, ProxyInfo> {
        self.proxies.read().unwrap().clone()
    }

    /// Sets the configured receivers (the alerter is on when `Some`), keeping the counts of
    /// receivers that stay.
    pub fn set_receivers(&self, names: Option<Vec<String>>) {
        let mut a = self.alerting.write().unwrap();
        a.enabled = names.is_some();
        let names = names.unwrap_or_default();
        a.notifications.retain(|k, _| names.contains(k));
        a.rounds.retain(|k, _| names.contains(k));
        for n in names {
            a.notifications.entry(n.clone()).or_insert((0, 0));
            a.rounds.entry(n).or_insert(0);
        }
        if !a.enabled {
            a.alerts.clear();
        }
        drop(a);
        self.changed();
    }

    /// Counts one delivery attempt to `receiver`.
    pub fn count_notification(&self, receiver: &str, ok: bool) {
        if let Some(c) = self
            .alerting
            .write()
            .unwrap()
            .notifications
            .get_mut(receiver)
        {
            if ok {
                c.0 += 1;
            } else {
                c.1 += 1;
            }
        }
        self.changed();
    }

    /// Marks that `receiver` has processed one more snapshot.
    pub fn notifier_round(&self, receiver: &str) {
        if let Some(n) = self.alerting.write().unwrap().rounds.get_mut(receiver) {
            *n += 1;
        }
        self.changed();
    }

    /// Records one evaluation's alerts.
    pub fn set_alerts(&self, alerts: Vec<(&'static str, &'static str)>) {
        let mut a = self.alerting.write().unwrap();
        a.evaluations += 1;
        a.alerts = alerts;
        drop(a);
        self.changed();
    }

    pub fn alerting(&self) -> AlertingStatus {
        self.alerting.read().unwrap().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn snapshot(at: DateTime<Utc>) -> Snapshot {
        Snapshot {
            at,
            plan: Some("pro".into()),
            pools: Vec::new(),
            keys: Vec::new(),
            endpoints: Vec::new(),
        }
    }

    /// A scrape takes pointers to the accounts' states, not copies; a poll during the scrape
    /// makes a new version of its account, and the scrape keeps reading the old one.
    #[test]
    fn readers_share_each_accounts_state_and_updates_replace_it() {
        let t = Utc.with_ymd_and_hms(2026, 11, 20, 12, 0, 0).unwrap();
        let state = State::new();
        state.add_account("b", "fluximage", false);
        state.add_account("a", "imagerouter", false);
        state.record_success("a", 0.25, snapshot(t));

        let first = state.accounts();
        let second = state.accounts();
        let names: Vec<&str> = first.iter().map(|a| &*a.name).collect();
        assert_eq!(names, ["a", "b"]);
        for (x, y) in first.iter().zip(&second) {
            assert!(Arc::ptr_eq(x, y), "two readers share {}", x.name);
        }
        assert_eq!(&*first[0].labels, r#"provider="imagerouter",account="a""#);

        state.record_failure("a", 0.5, "timeout", "no answer".into());
        let third = state.accounts();
        assert!(!Arc::ptr_eq(&first[0], &third[0]));
        assert!(Arc::ptr_eq(&first[1], &third[1]), "b did not change");
        // The earlier reader's version is as it was; the new one has the failure.
        assert!(first[0].up && first[0].errors["timeout"] == 0);
        assert_eq!(first[0].last_duration_seconds, Some(0.25));
        assert!(!third[0].up && third[0].errors["timeout"] == 1);
        assert_eq!(third[0].last_error.as_deref(), Some("no answer"));
        // The last good values stay shared between the versions.
        assert!(Arc::ptr_eq(
            first[0].snapshot.as_ref().unwrap(),
            third[0].snapshot.as_ref().unwrap()
        ));

        // With no reader left, an update changes the account where it is.
        let at = Arc::as_ptr(&third[0]);
        drop((first, second, third));
        state.record_failure("a", 0.5, "http", "HTTP 503".into());
        let now = state.accounts();
        assert_eq!(Arc::as_ptr(&now[0]), at);
        assert_eq!(now[0].errors["http"], 1);
    }

    #[test]
    fn error_counts_list_every_reason_in_order() {
        let mut e = ErrorCounts::default();
        e.add("rate_limited");
        e.add("auth");
        e.add("rate_limited");
        let all: Vec<(&str, u64)> = e.iter().collect();
        assert_eq!(
            all,
            [
                ("auth", 1),
                ("connect", 0),
                ("http", 0),
                ("parse", 0),
                ("rate_limited", 2),
                ("timeout", 0)
            ]
        );
        assert_eq!(e.get("rate_limited"), Some(2));
        assert_eq!(e.get("nope"), None);
        // Sorted, as the exposition lists them.
        let mut sorted = ERROR_REASONS;
        sorted.sort();
        assert_eq!(sorted, ERROR_REASONS);
    }
}
