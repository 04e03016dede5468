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
#[derive(Debug)]
pub struct State {
    accounts: RwLock<BTreeMap<String, AccountState>>,
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
    pub provider: &'static str,
    /// Polls attempted, successful or not.
    pub attempts: u64,
    pub up: bool,
    pub last_success: Option<DateTime<Utc>>,
    pub last_duration_seconds: Option<f64>,
    /// Failed polls by reason; every reason is present from the start so `rate()` works.
    pub errors: BTreeMap<&'static str, u64>,
    pub last_error: Option<String>,
    /// What the last successful poll produced; `None` before the first success.
    pub snapshot: Option<Arc<Snapshot>>,
    /// The poll interval and forecast window from the config, for the status page.
    pub interval: Option<Duration>,
    pub forecast_window: Option<Window>,
}

impl AccountState {
    pub fn new(provider: &'static str) -> Self {
        AccountState {
            provider,
            attempts: 0,
            up: false,
            last_success: None,
            last_duration_seconds: None,
            errors: ERROR_REASONS.iter().map(|r| (*r, 0)).collect(),
            last_error: None,
            snapshot: None,
            interval: None,
            forecast_window: None,
        }
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
        self.accounts
            .write()
            .unwrap()
            .insert(name.to_string(), AccountState::new(provider));
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
                accounts.insert(name.to_string(), AccountState::new(provider));
            }
        }
        drop(accounts);
        self.changed();
    }

    /// Records the account's poll interval and forecast window (shown by the status page).
    pub fn set_schedule(&self, name: &str, interval: Duration, forecast_window: Window) {
        if let Some(a) = self.accounts.write().unwrap().get_mut(name) {
            a.interval = Some(interval);
            a.forecast_window = Some(forecast_window);
        }
        self.changed();
    }

    pub fn remove_account(&self, name: &str) {
        self.accounts.write().unwrap().remove(name);
        self.pending_first.write().unwrap().remove(name);
        self.changed();
    }

    pub fn record_success(&self, name: &str, duration: f64, snapshot: Snapshot) {
        if let Some(a) = self.accounts.write().unwrap().get_mut(name) {
            a.attempts += 1;
            a.up = true;
            a.last_success = Some(snapshot.at);
            a.last_duration_seconds = Some(duration);
            a.last_error = None;
            a.snapshot = Some(Arc::new(snapshot));
        }
        self.pending_first.write().unwrap().remove(name);
        self.changed();
    }

    pub fn record_failure(&self, name: &str, duration: f64, reason: &'static str, message: String) {
        if let Some(a) = self.accounts.write().unwrap().get_mut(name) {
            a.attempts += 1;
            a.up = false;
            a.last_duration_seconds = Some(duration);
            *a.errors.entry(reason).or_insert(0) += 1;
            a.last_error = Some(message);
        }
        self.pending_first.write().unwrap().remove(name);
        self.changed();
    }

    /// Drops the account's last good values (`stale_after` passed): it keeps exporting `up`, the
    /// error counters and the last success time, but no value that could be read as current.
    pub fn expire(&self, name: &str) {
        if let Some(a) = self.accounts.write().unwrap().get_mut(name) {
            a.snapshot = None;
        }
        self.changed();
    }

    /// A consistent copy of every account, for one scrape or one page render.
    pub fn accounts(&self) -> BTreeMap<String, AccountState> {
        self.accounts.read().unwrap().clone()
    }

    pub fn account(&self, name: &str) -> Option<AccountState> {
        self.accounts.read().unwrap().get(name).cloned()
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
