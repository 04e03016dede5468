//! Receivers: what is due to each (grouped by alertname, repeated, resolved), the payloads (Alertmanager webhook v4, Slack, Alertmanager API v2), and delivery with retries.
//!
//! Each receiver runs in its own task and reads the latest alert snapshot from a watch channel,
//! so a slow or failing receiver never delays the evaluation or the other receivers; it simply
//! catches up with the newest state. What a receiver was last told is kept in the store, so a
//! restart does not notify again what was already delivered.

use super::config::{ReceiverConfig, ReceiverKind};
use super::rules::Labels;
use super::state::{Alert, Phase};
use crate::clock::Clock;
use crate::http::HttpClient;
use crate::state::State;
use crate::store::{NotificationRow, Store};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How often firing alerts are sent to Alertmanager again (as Prometheus does).
pub const ALERTMANAGER_RESEND: Duration = Duration::from_secs(60);
/// Attempts per delivery, and the pause before the second one (doubling after).
pub const ATTEMPTS: u32 = 3;
pub const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// Timeout of one delivery attempt.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// After a delivery that failed every attempt, the receiver waits this long (doubling up to
/// [`MAX_PAUSE`]) before trying again.
pub const FIRST_PAUSE: Duration = Duration::from_secs(5);
pub const MAX_PAUSE: Duration = Duration::from_secs(300);

/// The alerts as of one evaluation, shared with every receiver.
#[derive(Debug, Clone)]
pub struct AlertSnapshot {
    pub at: DateTime<Utc>,
    pub alerts: Vec<Alert>,
    /// Base URL of this creditwatch (externalURL, generatorURL).
    pub external_url: String,
    /// `max(evaluation_interval, resend)`: how long a firing alert sent to Alertmanager stays
    /// valid without being sent again is four times this.
    pub resend_delta: Duration,
}

/// An alert as it was notified: enough to send its resolution later.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SentAlert {
    pub fingerprint: String,
    pub labels: Labels,
    pub annotations: Labels,
    pub starts_at: DateTime<Utc>,
}

impl SentAlert {
    fn of(a: &Alert) -> SentAlert {
        SentAlert {
            fingerprint: a.fingerprint.clone(),
            labels: a.labels.clone(),
            annotations: a.annotations.clone(),
            starts_at: a.active_at,
        }
    }
}

/// What a receiver last sent for one group.
#[derive(Debug, Clone, PartialEq)]
pub struct Sent {
    pub at: DateTime<Utc>,
    pub firing: Vec<SentAlert>,
}

/// One notification due to a receiver: a group's firing alerts and those resolved since the last one.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    pub group_key: String,
    pub group_labels: Labels,
    pub firing: Vec<SentAlert>,
    pub resolved: Vec<(SentAlert, DateTime<Utc>)>,
}

fn group_of(kind: ReceiverKind, a: &Labels) -> (String, Labels) {
    match kind {
        // Alertmanager groups by itself; everything goes in one request.
        ReceiverKind::Alertmanager => (String::new(), Labels::new()),
        _ => {
            let name = a.get("alertname").cloned().unwrap_or_default();
            (
                format!("{{}}:{{alertname={name:?}}}"),
                Labels::from([("alertname".to_string(), name)]),
            )
        }
    }
}

/// The notifications due to `receiver` given the snapshot and what it was last told.
pub fn due(
    receiver: &ReceiverConfig,
    snap: &AlertSnapshot,
    log: &BTreeMap<String, Sent>,
) -> Vec<Notification> {
    let repeat = match receiver.kind {
        ReceiverKind::Alertmanager => ALERTMANAGER_RESEND,
        _ => receiver.repeat_interval,
    };
    let mut groups: BTreeMap<String, (Labels, Vec<&Alert>)> = BTreeMap::new();
    for a in &snap.alerts {
        if receiver.matches(&a.labels) {
            let (key, labels) = group_of(receiver.kind, &a.labels);
            let g = groups.entry(key).or_insert_with(|| (labels, Vec::new()));
            g.1.push(a);
        }
    }
    let keys: BTreeSet<&String> = groups.keys().chain(log.keys()).collect();
    let mut out = Vec::new();
    for key in keys {
        let alerts = groups.get(key).map(|g| g.1.as_slice()).unwrap_or(&[]);
        let firing: Vec<SentAlert> = alerts
            .iter()
            .filter(|a| a.phase == Phase::Firing)
            .map(|a| SentAlert::of(a))
            .collect();
        let now_fps: BTreeSet<&str> = firing.iter().map(|a| a.fingerprint.as_str()).collect();
        let last = log.get(key);
        let last_fps: BTreeSet<&str> = last
            .map(|l| l.firing.iter().map(|a| a.fingerprint.as_str()).collect())
            .unwrap_or_default();
        let repeat_due = !firing.is_empty()
            && last.is_none_or(|l| (snap.at - l.at).to_std().unwrap_or_default() >= repeat);
        if now_fps == last_fps && !repeat_due {
            continue;
        }
        // Whatever was notified as firing and is not any more is resolved now (or when the
        // alert says it was, if it is still known).
        let resolved = last
            .map(|l| {
                l.firing
                    .iter()
                    .filter(|a| !now_fps.contains(a.fingerprint.as_str()))
                    .map(|a| {
                        let known = alerts.iter().find(|x| x.fingerprint == a.fingerprint);
                        let mut sent = a.clone();
                        if let Some(k) = known {
                            sent.annotations = k.annotations.clone();
                        }
                        let when = known.and_then(|k| k.resolved_at).unwrap_or(snap.at);
                        (sent, when)
                    })
                    .collect()
            })
            .unwrap_or_default();
        let group_labels = groups.get(key).map(|g| g.0.clone()).unwrap_or_else(|| {
            last.and_then(|l| l.firing.first())
                .map(|a| group_of(receiver.kind, &a.labels).1)
                .unwrap_or_default()
        });
        out.push(Notification {
            group_key: key.clone(),
            group_labels,
            firing,
            resolved,
        });
    }
    out
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Labels (or annotations) shared, with the same value, by every map.
fn common<'a>(maps: impl Iterator<Item = &'a Labels>) -> Labels {
    let mut acc: Option<Labels> = None;
    for m in maps {
        acc = Some(match acc {
            None => m.clone(),
            Some(c) => c.into_iter().filter(|(k, v)| m.get(k) == Some(v)).collect(),
        });
    }
    acc.unwrap_or_default()
}

fn generator_url(external: &str) -> String {
    format!("{external}/")
}

/// The Alertmanager webhook payload (version 4), so existing webhook consumers work unchanged.
pub fn webhook_payload(receiver: &str, n: &Notification, external_url: &str) -> Value {
    let mut alerts = Vec::new();
    for a in &n.firing {
        alerts.push(json!({
            "status": "firing",
            "labels": a.labels,
            "annotations": a.annotations,
            "startsAt": rfc3339(a.starts_at),
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": generator_url(external_url),
            "fingerprint": a.fingerprint,
        }));
    }
    for (a, at) in &n.resolved {
        alerts.push(json!({
            "status": "resolved",
            "labels": a.labels,
            "annotations": a.annotations,
            "startsAt": rfc3339(a.starts_at),
            "endsAt": rfc3339(*at),
            "generatorURL": generator_url(external_url),
            "fingerprint": a.fingerprint,
        }));
    }
    let all = n.firing.iter().chain(n.resolved.iter().map(|(a, _)| a));
    let common_labels = common(all.clone().map(|a| &a.labels));
    let common_annotations = common(all.map(|a| &a.annotations));
    json!({
        "version": "4",
        "groupKey": n.group_key,
        "truncatedAlerts": 0,
        "status": if n.firing.is_empty() { "resolved" } else { "firing" },
        "receiver": receiver,
        "groupLabels": n.group_labels,
        "commonLabels": common_labels,
        "commonAnnotations": common_annotations,
        "externalURL": external_url,
        "alerts": alerts,
    })
}

/// A Slack incoming-webhook message: a text line and one colored attachment per alert.
pub fn slack_payload(n: &Notification) -> Value {
    let name = n.group_labels.get("alertname").cloned().unwrap_or_default();
    let text = if n.firing.is_empty() {
        format!("[RESOLVED] {name}")
    } else {
        format!("[FIRING:{}] {name}", n.firing.len())
    };
    let attachment = |a: &SentAlert, resolved: bool| {
        let severity = a.labels.get("severity").map(String::as_str).unwrap_or("");
        let color = match (resolved, severity) {
            (true, _) => "good",
            (false, "critical") => "danger",
            (false, _) => "warning",
        };
        let summary = a.annotations.get("summary").cloned().unwrap_or_default();
        let mut body = a
            .annotations
            .get("description")
            .cloned()
            .unwrap_or_default();
        if let Some(url) = a.annotations.get("runbook_url") {
            body.push_str(&format!("\n<{url}|Runbook>"));
        }
        json!({
            "color": color,
            "title": format!("{}{summary}", if resolved { "Resolved: " } else { "" }),
            "text": body,
            "fields": [
                { "title": "severity", "value": severity, "short": true },
                { "title": "account", "value": a.labels.get("account").cloned().unwrap_or_default(), "short": true },
            ],
            "footer": "creditwatch",
        })
    };
    let attachments: Vec<Value> = n
        .firing
        .iter()
        .map(|a| attachment(a, false))
        .chain(n.resolved.iter().map(|(a, _)| attachment(a, true)))
        .collect();
    json!({ "text": text, "attachments": attachments })
}

/// The body of `POST /api/v2/alerts`: firing alerts valid for four resend periods (so
/// Alertmanager resolves them by itself if creditwatch dies), resolved ones with their end.
pub fn alertmanager_payload(n: &Notification, snap: &AlertSnapshot) -> Value {
    let valid_until =
        snap.at + chrono::Duration::from_std(snap.resend_delta * 4).expect("in range");
    let one = |a: &SentAlert, ends: DateTime<Utc>| {
        json!({
            "labels": a.labels,
            "annotations": a.annotations,
            "startsAt": rfc3339(a.starts_at),
            "endsAt": rfc3339(ends),
            "generatorURL": generator_url(&snap.external_url),
        })
    };
    Value::Array(
        n.firing
            .iter()
            .map(|a| one(a, valid_until))
            .chain(n.resolved.iter().map(|(a, at)| one(a, *at)))
            .collect(),
    )
}

/// A delivery that failed: the HTTP status or the transport error, never the URL.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("receiver answered HTTP {0}")]
    Status(u16),
    #[error("{0}")]
    Transport(String),
}

/// Everything one receiver's task needs.
pub struct Worker {
    pub receiver: ReceiverConfig,
    pub http: HttpClient,
    pub store: Store,
    pub state: Arc<State>,
    pub clock: Arc<dyn Clock>,
}

impl Worker {
    fn load_log(&self) -> BTreeMap<String, Sent> {
        let rows = self
            .store
            .notifications(&self.receiver.name)
            .unwrap_or_else(|e| {
                tracing::error!(receiver = %self.receiver.name, error = %e, "cannot read the notification log; notifying as if new");
                Vec::new()
            });
        rows.into_iter()
            .filter_map(|r| {
                let firing = serde_json::from_str(&r.firing).ok()?;
                Some((
                    r.group_key,
                    Sent {
                        at: DateTime::from_timestamp_millis(r.sent_at_ms)?,
                        firing,
                    },
                ))
            })
            .collect()
    }

    /// Delivers snapshots until cancelled.
    pub async fn run(
        self,
        mut rx: watch::Receiver<Option<Arc<AlertSnapshot>>>,
        cancel: CancellationToken,
    ) {
        let store = self.store.clone();
        let name = self.receiver.name.clone();
        let mut log = {
            let w = &self;
            w.load_log()
        };
        let mut failures = 0u32;
        let mut paused_until: Option<DateTime<Utc>> = None;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                r = rx.changed() => if r.is_err() { return },
            }
            let Some(snap) = rx.borrow_and_update().clone() else {
                continue;
            };
            if paused_until.is_some_and(|t| self.clock.now() < t) {
                self.state.notifier_round(&name);
                continue;
            }
            for n in due(&self.receiver, &snap, &log) {
                let r = tokio::select! {
                    _ = cancel.cancelled() => return,
                    r = self.deliver(&n, &snap) => r,
                };
                match r {
                    Ok(()) => {
                        failures = 0;
                        paused_until = None;
                        let still_firing = !n.firing.is_empty();
                        let row = NotificationRow {
                            group_key: n.group_key.clone(),
                            sent_at_ms: snap.at.timestamp_millis(),
                            firing: serde_json::to_string(&n.firing).expect("serializable"),
                        };
                        if still_firing {
                            log.insert(
                                n.group_key.clone(),
                                Sent {
                                    at: snap.at,
                                    firing: n.firing.clone(),
                                },
                            );
                        } else {
                            log.remove(&n.group_key);
                        }
                        let store = store.clone();
                        let rname = name.clone();
                        let w = tokio::task::spawn_blocking(move || {
                            store.record_notification(&rname, &row, still_firing)
                        })
                        .await;
                        if let Ok(Err(e)) = w {
                            tracing::error!(receiver = %name, error = %e, "cannot record a delivered notification");
                        }
                        tracing::info!(receiver = %name, group = %n.group_key, firing = n.firing.len(), resolved = n.resolved.len(), "notification delivered");
                    }
                    Err(e) => {
                        failures += 1;
                        let pause =
                            (FIRST_PAUSE * 2u32.saturating_pow(failures - 1)).min(MAX_PAUSE);
                        paused_until = Some(
                            self.clock.now() + chrono::Duration::from_std(pause).expect("in range"),
                        );
                        tracing::warn!(receiver = %name, kind = self.receiver.kind.as_str(), error = %e, retry_in = %humantime::format_duration(pause), "notification failed after {ATTEMPTS} attempts");
                        break;
                    }
                }
            }
            self.state.notifier_round(&name);
        }
    }

    /// One notification, with up to [`ATTEMPTS`] attempts and a doubling pause between them.
    async fn deliver(&self, n: &Notification, snap: &AlertSnapshot) -> Result<(), DeliveryError> {
        let body = match self.receiver.kind {
            ReceiverKind::Webhook => webhook_payload(&self.receiver.name, n, &snap.external_url),
            ReceiverKind::Slack => slack_payload(n),
            ReceiverKind::Alertmanager => alertmanager_payload(n, snap),
        }
        .to_string();
        let url = match self.receiver.kind {
            ReceiverKind::Alertmanager => format!(
                "{}/api/v2/alerts",
                self.receiver.url.expose().trim_end_matches('/')
            ),
            _ => self.receiver.url.expose().to_string(),
        };
        let mut backoff = FIRST_BACKOFF;
        let mut last = DeliveryError::Transport("not attempted".into());
        for attempt in 1..=ATTEMPTS {
            let r = self
                .http
                .client
                .post(&url)
                .timeout(ATTEMPT_TIMEOUT)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone())
                .send()
                .await;
            let ok = match r {
                Ok(resp) if resp.status().is_success() => Ok(()),
                Ok(resp) => Err(DeliveryError::Status(resp.status().as_u16())),
                Err(e) => Err(DeliveryError::Transport(e.without_url().to_string())),
            };
            self.state
                .count_notification(&self.receiver.name, ok.is_ok());
            match ok {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::debug!(receiver = %self.receiver.name, attempt, error = %e, "notification attempt failed");
                    last = e;
                }
            }
            if attempt < ATTEMPTS {
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
        }
        Err(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerting::rules::AlertName;
    use crate::alerting::state::fingerprint;
    use crate::config::KeySource;
    use crate::secret::Secret;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn alert(name: AlertName, account: &str, phase: Phase) -> Alert {
        let labels = Labels::from([
            ("alertname".to_string(), name.as_str().to_string()),
            ("severity".to_string(), name.severity().to_string()),
            ("provider".to_string(), "fluximage".to_string()),
            ("account".to_string(), account.to_string()),
            ("pool".to_string(), "ai".to_string()),
        ]);
        Alert {
            alert: name,
            fingerprint: fingerprint(&labels),
            annotations: Labels::from([
                (
                    "summary".to_string(),
                    format!("{account}: pool ai is exhausted"),
                ),
                ("description".to_string(), "0 left".to_string()),
                (
                    "runbook_url".to_string(),
                    "http://cw/runbook#creditsexhausted".to_string(),
                ),
            ]),
            labels,
            phase,
            active_at: at("2026-11-21T12:00:00Z"),
            fired_at: Some(at("2026-11-21T12:05:00Z")),
            resolved_at: None,
            value: 0.0,
        }
    }

    fn receiver(kind: ReceiverKind) -> ReceiverConfig {
        ReceiverConfig {
            name: "oncall".into(),
            kind,
            url: Secret::new("http://hook"),
            url_source: KeySource::Literal,
            matchers: BTreeMap::new(),
            repeat_interval: Duration::from_secs(3600),
        }
    }

    fn snap(t: &str, alerts: Vec<Alert>) -> AlertSnapshot {
        AlertSnapshot {
            at: at(t),
            alerts,
            external_url: "http://cw:9477".into(),
            resend_delta: Duration::from_secs(60),
        }
    }

    /// Applies `due` and records what was sent, as the worker does after a delivery.
    fn send(
        r: &ReceiverConfig,
        s: &AlertSnapshot,
        log: &mut BTreeMap<String, Sent>,
    ) -> Vec<Notification> {
        let d = due(r, s, log);
        for n in &d {
            if n.firing.is_empty() {
                log.remove(&n.group_key);
            } else {
                log.insert(
                    n.group_key.clone(),
                    Sent {
                        at: s.at,
                        firing: n.firing.clone(),
                    },
                );
            }
        }
        d
    }

    #[test]
    fn firing_is_sent_once_repeated_after_repeat_interval_and_resolved_once() {
        let r = receiver(ReceiverKind::Webhook);
        let mut log = BTreeMap::new();
        let pending = alert(AlertName::CreditsExhausted, "a", Phase::Pending);
        assert!(send(&r, &snap("2026-11-21T12:00:00Z", vec![pending]), &mut log).is_empty());
        let firing = alert(AlertName::CreditsExhausted, "a", Phase::Firing);
        let d = send(
            &r,
            &snap("2026-11-21T12:05:00Z", vec![firing.clone()]),
            &mut log,
        );
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].group_key, "{}:{alertname=\"CreditsExhausted\"}");
        assert_eq!(d[0].firing.len(), 1);
        // Same state within the repeat interval: nothing.
        assert!(
            send(
                &r,
                &snap("2026-11-21T12:30:00Z", vec![firing.clone()]),
                &mut log
            )
            .is_empty()
        );
        // A second alert in the same group: the group is notified with both.
        let other = alert(AlertName::CreditsExhausted, "b", Phase::Firing);
        let d = send(
            &r,
            &snap("2026-11-21T12:31:00Z", vec![firing.clone(), other.clone()]),
            &mut log,
        );
        assert_eq!(d[0].firing.len(), 2);
        // The repeat interval after the last notification: again.
        assert!(
            send(
                &r,
                &snap("2026-11-21T13:30:00Z", vec![firing.clone(), other.clone()]),
                &mut log
            )
            .is_empty()
        );
        let d = send(
            &r,
            &snap("2026-11-21T13:31:00Z", vec![firing.clone(), other.clone()]),
            &mut log,
        );
        assert_eq!(d.len(), 1, "repeat");
        // One resolves: the notification carries the firing one and the resolution.
        let mut resolved = firing.clone();
        resolved.phase = Phase::Resolved;
        resolved.resolved_at = Some(at("2026-11-21T13:40:00Z"));
        let d = send(
            &r,
            &snap(
                "2026-11-21T13:41:00Z",
                vec![resolved.clone(), other.clone()],
            ),
            &mut log,
        );
        assert_eq!(d[0].firing.len(), 1);
        assert_eq!(
            d[0].resolved,
            vec![(SentAlert::of(&firing), at("2026-11-21T13:40:00Z"))]
        );
        // The last one disappears altogether: resolved at the snapshot's time; then nothing.
        let d = send(&r, &snap("2026-11-21T14:00:00Z", vec![]), &mut log);
        assert_eq!(d[0].firing.len(), 0);
        assert_eq!(d[0].resolved[0].1, at("2026-11-21T14:00:00Z"));
        assert!(log.is_empty());
        assert!(send(&r, &snap("2026-11-21T14:01:00Z", vec![]), &mut log).is_empty());
    }

    #[test]
    fn match_filters_and_alertmanager_resends_every_minute() {
        let mut r = receiver(ReceiverKind::Alertmanager);
        r.matchers.insert("severity".into(), "critical".into());
        let mut log = BTreeMap::new();
        let crit = alert(AlertName::CreditsExhausted, "a", Phase::Firing);
        let warn = alert(AlertName::CreditsLow, "a", Phase::Firing);
        let d = send(
            &r,
            &snap("2026-11-21T12:00:00Z", vec![crit.clone(), warn.clone()]),
            &mut log,
        );
        assert_eq!(d.len(), 1, "one request for all groups");
        assert_eq!(d[0].firing.len(), 1, "only the critical alert matches");
        assert!(
            send(
                &r,
                &snap("2026-11-21T12:00:59Z", vec![crit.clone(), warn.clone()]),
                &mut log
            )
            .is_empty()
        );
        assert_eq!(
            send(
                &r,
                &snap("2026-11-21T12:01:00Z", vec![crit.clone(), warn]),
                &mut log
            )
            .len(),
            1
        );
        let s = snap("2026-11-21T12:01:00Z", vec![crit.clone()]);
        let body = alertmanager_payload(
            &due(&r, &snap("2026-11-21T12:02:00Z", vec![crit]), &log)[0],
            &s,
        );
        assert_eq!(
            body[0]["endsAt"], "2026-11-21T12:05:00.000Z",
            "valid for 4 resend periods"
        );
        assert_eq!(body[0]["startsAt"], "2026-11-21T12:00:00.000Z");
        assert_eq!(body[0]["labels"]["alertname"], "CreditsExhausted");
    }

    #[test]
    fn webhook_payload_is_alertmanager_version_4() {
        let firing = alert(AlertName::CreditsExhausted, "a", Phase::Firing);
        let other = alert(AlertName::CreditsExhausted, "b", Phase::Firing);
        let n = Notification {
            group_key: "{}:{alertname=\"CreditsExhausted\"}".into(),
            group_labels: Labels::from([("alertname".to_string(), "CreditsExhausted".to_string())]),
            firing: vec![SentAlert::of(&firing)],
            resolved: vec![(SentAlert::of(&other), at("2026-11-21T13:00:00Z"))],
        };
        let p = webhook_payload("oncall", &n, "http://cw:9477");
        assert_eq!(p["version"], "4");
        assert_eq!(p["status"], "firing");
        assert_eq!(p["receiver"], "oncall");
        assert_eq!(p["groupKey"], "{}:{alertname=\"CreditsExhausted\"}");
        assert_eq!(p["truncatedAlerts"], 0);
        assert_eq!(p["externalURL"], "http://cw:9477");
        assert_eq!(p["groupLabels"], json!({"alertname": "CreditsExhausted"}));
        // Common labels leave out the account, which differs.
        assert_eq!(
            p["commonLabels"],
            json!({"alertname": "CreditsExhausted", "pool": "ai", "provider": "fluximage", "severity": "critical"})
        );
        assert_eq!(
            p["commonAnnotations"],
            json!({"description": "0 left", "runbook_url": "http://cw/runbook#creditsexhausted"})
        );
        let a = &p["alerts"][0];
        assert_eq!(a["status"], "firing");
        assert_eq!(a["startsAt"], "2026-11-21T12:00:00.000Z");
        assert_eq!(a["endsAt"], "0001-01-01T00:00:00Z");
        assert_eq!(a["generatorURL"], "http://cw:9477/");
        assert_eq!(a["fingerprint"], firing.fingerprint);
        let r = &p["alerts"][1];
        assert_eq!(
            (r["status"].as_str(), r["endsAt"].as_str()),
            (Some("resolved"), Some("2026-11-21T13:00:00.000Z"))
        );
    }

    #[test]
    fn slack_payload_has_text_and_colored_attachments() {
        let firing = alert(AlertName::CreditsExhausted, "a", Phase::Firing);
        let warn = alert(AlertName::CreditsLow, "b", Phase::Firing);
        let n = Notification {
            group_key: String::new(),
            group_labels: Labels::from([("alertname".to_string(), "CreditsExhausted".to_string())]),
            firing: vec![SentAlert::of(&firing), SentAlert::of(&warn)],
            resolved: vec![(SentAlert::of(&firing), at("2026-11-21T13:00:00Z"))],
        };
        let p = slack_payload(&n);
        assert_eq!(p["text"], "[FIRING:2] CreditsExhausted");
        let colors: Vec<&str> = p["attachments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["color"].as_str().unwrap())
            .collect();
        assert_eq!(colors, ["danger", "warning", "good"]);
        assert_eq!(p["attachments"][0]["title"], "a: pool ai is exhausted");
        assert_eq!(
            p["attachments"][2]["title"],
            "Resolved: a: pool ai is exhausted"
        );
        assert!(
            p["attachments"][0]["text"]
                .as_str()
                .unwrap()
                .ends_with("<http://cw/runbook#creditsexhausted|Runbook>")
        );
    }
}
