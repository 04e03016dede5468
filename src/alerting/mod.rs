//! The built-in alerter: evaluates the six alerts from the exporter's own series, tracks their state in the store, and notifies receivers.
//!
//! Every `evaluation_interval` the alerter reads the same series `/metrics` serves, evaluates the
//! conditions of the shipped Prometheus rules ([`rules`]), moves each alert through pending,
//! firing and resolved ([`state`]), persists any change, and publishes a snapshot that each
//! receiver's task turns into notifications ([`notify`]).

pub mod config;
pub mod notify;
pub mod rules;
pub mod state;

use crate::clock::Clock;
use crate::http::HttpClient;
use crate::metrics::Exporter;
use crate::state::State as AppState;
use crate::store::{AlertRow, Store};
use config::AlertingConfig;
use notify::{ALERTMANAGER_RESEND, AlertSnapshot, Worker};
use rules::{AlertName, Samples};
use state::{Alert, Phase, Tracker};
use std::sync::Arc;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// What the alerter shares with the rest of the daemon.
#[derive(Clone)]
pub struct Deps {
    pub http: HttpClient,
    pub store: Store,
    pub state: Arc<AppState>,
    pub clock: Arc<dyn Clock>,
}

/// A running alerter; stop it with [`Alerter::stop`] (on shutdown, or to apply a new config).
pub struct Alerter {
    pub config: AlertingConfig,
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Alerter {
    /// Starts evaluating and notifying. `default_external_url` is used when the config has no
    /// `external_url` (normally `http://<listen address>`).
    pub fn start(
        config: AlertingConfig,
        deps: Deps,
        default_external_url: String,
        cancel: CancellationToken,
    ) -> Alerter {
        let external_url = config.external_url.clone().unwrap_or(default_external_url);
        deps.state.set_receivers(Some(
            config.receivers.iter().map(|r| r.name.clone()).collect(),
        ));
        let (tx, rx) = watch::channel(None);
        let mut tasks = Vec::new();
        for r in &config.receivers {
            let w = Worker {
                receiver: r.clone(),
                http: deps.http.clone(),
                store: deps.store.clone(),
                state: deps.state.clone(),
                clock: deps.clock.clone(),
            };
            tasks.push(tokio::spawn(w.run(rx.clone(), cancel.clone())));
        }
        tasks.push(tokio::spawn(evaluate_loop(
            config.clone(),
            deps,
            external_url,
            tx,
            cancel.clone(),
        )));
        Alerter {
            config,
            cancel,
            tasks,
        }
    }

    /// Stops the evaluation and every receiver, waiting for them to finish.
    pub async fn stop(self) {
        self.cancel.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

fn to_row(a: &Alert) -> AlertRow {
    AlertRow {
        fingerprint: a.fingerprint.clone(),
        alertname: a.alert.as_str().to_string(),
        labels: serde_json::to_string(&a.labels).expect("serializable"),
        annotations: serde_json::to_string(&a.annotations).expect("serializable"),
        phase: a.phase.as_str().to_string(),
        active_at_ms: a.active_at.timestamp_millis(),
        fired_at_ms: a.fired_at.map(|t| t.timestamp_millis()),
        resolved_at_ms: a.resolved_at.map(|t| t.timestamp_millis()),
    }
}

fn from_row(r: AlertRow) -> Option<Alert> {
    Some(Alert {
        alert: AlertName::from_name(&r.alertname)?,
        labels: serde_json::from_str(&r.labels).ok()?,
        annotations: serde_json::from_str(&r.annotations).ok()?,
        fingerprint: r.fingerprint,
        phase: Phase::parse(&r.phase)?,
        active_at: chrono::DateTime::from_timestamp_millis(r.active_at_ms)?,
        fired_at: r
            .fired_at_ms
            .and_then(chrono::DateTime::from_timestamp_millis),
        resolved_at: r
            .resolved_at_ms
            .and_then(chrono::DateTime::from_timestamp_millis),
        value: f64::NAN,
    })
}

async fn evaluate_loop(
    config: AlertingConfig,
    deps: Deps,
    external_url: String,
    tx: watch::Sender<Option<Arc<AlertSnapshot>>>,
    cancel: CancellationToken,
) {
    let store = deps.store.clone();
    let restored = tokio::task::spawn_blocking(move || store.alerts())
        .await
        .expect("store read does not panic")
        .unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot read alert state from the store; starting empty");
            Vec::new()
        });
    let mut tracker = Tracker::restore(restored.into_iter().filter_map(from_row).collect());
    let exporter = Exporter::new(deps.state.clone());
    let mut tick = tokio::time::interval(config.evaluation_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let resend_delta = config.evaluation_interval.max(ALERTMANAGER_RESEND);
    // The last evaluation's pool count, so the next one sizes its table once.
    let mut pools = 0;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = deps.clock.now();
        // Off the runtime's workers: at 10,000 accounts this reads 400,000 series.
        let reader = exporter.clone();
        let samples = tokio::task::spawn_blocking(move || Samples::from_exporter(&reader, pools))
            .await
            .expect("reading the exposition does not panic");
        pools = samples.pool_count();
        let ev = rules::evaluate(
            &samples,
            now.timestamp_millis() as f64 / 1000.0,
            &config.rules,
            &external_url,
        );
        if tracker.update(now, &ev, &config.rules) {
            let rows: Vec<AlertRow> = tracker.alerts().map(to_row).collect();
            let store = deps.store.clone();
            match tokio::task::spawn_blocking(move || store.save_alerts(&rows)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "cannot save alert state"),
                Err(e) => tracing::error!(error = %e, "saving alert state failed"),
            }
            for a in tracker.alerts() {
                tracing::debug!(alert = a.alert.as_str(), fingerprint = %a.fingerprint, phase = a.phase.as_str(), "alert state");
            }
        }
        let alerts: Vec<Alert> = tracker.alerts().cloned().collect();
        deps.state.set_alerts(
            alerts
                .iter()
                .map(|a| (a.alert.as_str(), a.phase.as_str()))
                .collect(),
        );
        let _ = tx.send(Some(Arc::new(AlertSnapshot {
            at: now,
            alerts,
            external_url: external_url.clone(),
            resend_delta,
        })));
    }
}
