//! The alert state machine: inactive → pending → firing → resolved, deduplicated by label fingerprint.

use super::config::RuleConfig;
use super::rules::{AlertName, Evaluation, Labels};
use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// A resolved alert is kept this long so receivers that were failing can still send the resolution.
pub const RESOLVED_RETENTION: Duration = Duration::from_secs(15 * 60);

/// Where an alert is in its life. (Inactive alerts are not kept.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Pending,
    Firing,
    Resolved,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "pending",
            Phase::Firing => "firing",
            Phase::Resolved => "resolved",
        }
    }

    pub fn parse(s: &str) -> Option<Phase> {
        [Phase::Pending, Phase::Firing, Phase::Resolved]
            .into_iter()
            .find(|p| p.as_str() == s)
    }
}

/// One alert instance.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    pub alert: AlertName,
    pub labels: Labels,
    pub annotations: Labels,
    /// Alertmanager's fingerprint of `labels`, as 16 hex digits.
    pub fingerprint: String,
    pub phase: Phase,
    /// When the condition started to hold (the start of pending).
    pub active_at: DateTime<Utc>,
    pub fired_at: Option<DateTime<Utc>>,
    pub resolved_at: Option<DateTime<Utc>>,
    pub value: f64,
}

/// The fingerprint Alertmanager and Prometheus give a label set: FNV-1a 64 over the sorted
/// names and values, each followed by 0xff.
pub fn fingerprint(labels: &Labels) -> String {
    const OFFSET: u64 = 14_695_981_039_346_656_037;
    const PRIME: u64 = 1_099_511_628_211;
    let mut h = OFFSET;
    let mut add = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(PRIME);
        }
    };
    for (k, v) in labels {
        add(k.as_bytes());
        add(&[0xff]);
        add(v.as_bytes());
        add(&[0xff]);
    }
    format!("{h:016x}")
}

/// Every known alert, by fingerprint.
#[derive(Debug, Default)]
pub struct Tracker {
    alerts: BTreeMap<String, Alert>,
}

impl Tracker {
    /// Resumes from alerts read back from the store.
    pub fn restore(alerts: Vec<Alert>) -> Tracker {
        Tracker {
            alerts: alerts
                .into_iter()
                .map(|a| (a.fingerprint.clone(), a))
                .collect(),
        }
    }

    pub fn alerts(&self) -> impl Iterator<Item = &Alert> {
        self.alerts.values()
    }

    /// Applies one evaluation made at `now`. Returns true when an alert changed phase, appeared
    /// or was dropped (what must be persisted).
    pub fn update(
        &mut self,
        now: DateTime<Utc>,
        ev: &Evaluation,
        rules: &BTreeMap<AlertName, RuleConfig>,
    ) -> bool {
        let mut changed = false;
        let mut seen = BTreeSet::new();
        for c in &ev.candidates {
            let fp = fingerprint(&c.labels);
            seen.insert(fp.clone());
            let for_ = rules.get(&c.alert).map(|r| r.for_).unwrap_or_default();
            let a = self.alerts.entry(fp.clone()).or_insert_with(|| {
                changed = true;
                Alert {
                    alert: c.alert,
                    labels: c.labels.clone(),
                    annotations: c.annotations.clone(),
                    fingerprint: fp,
                    phase: Phase::Pending,
                    active_at: now,
                    fired_at: None,
                    resolved_at: None,
                    value: c.value,
                }
            });
            a.annotations = c.annotations.clone();
            a.value = c.value;
            if a.phase == Phase::Resolved {
                // The condition is back: a new episode, pending again.
                a.phase = Phase::Pending;
                a.active_at = now;
                a.fired_at = None;
                a.resolved_at = None;
                changed = true;
            }
            if a.phase == Phase::Pending && (now - a.active_at).to_std().unwrap_or_default() >= for_
            {
                a.phase = Phase::Firing;
                a.fired_at = Some(now);
                changed = true;
            }
        }
        let retention = chrono::Duration::from_std(RESOLVED_RETENTION).expect("in range");
        self.alerts.retain(|fp, a| {
            if seen.contains(fp) || ev.is_held(a.alert, &a.labels) {
                return true;
            }
            match a.phase {
                Phase::Pending => {
                    changed = true;
                    false
                }
                Phase::Firing => {
                    a.phase = Phase::Resolved;
                    a.resolved_at = Some(now);
                    changed = true;
                    true
                }
                Phase::Resolved => {
                    let keep = a.resolved_at.is_some_and(|t| now - t < retention);
                    changed |= !keep;
                    keep
                }
            }
        });
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerting::rules::{Samples, evaluate};
    use crate::clock::{Clock, ManualClock};

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn rules() -> BTreeMap<AlertName, RuleConfig> {
        AlertName::ALL.iter().map(|a| (*a, a.defaults())).collect()
    }

    /// An exposition with one account `images` (polled at `now`) whose pool `ai` has `remaining`
    /// of 1000 credits left.
    fn samples(now: DateTime<Utc>, remaining: f64) -> Samples {
        let mut s = Samples::default();
        let acc = [("provider", "fluximage"), ("account", "images")];
        let pool = [
            ("provider", "fluximage"),
            ("account", "images"),
            ("pool", "ai"),
            ("key", ""),
        ];
        s.push(
            "creditwatch_scrape_errors_total",
            &[acc[0], acc[1], ("reason", "http")],
            0.0,
        );
        s.push("creditwatch_up", &acc, 1.0);
        s.push(
            "creditwatch_account_info",
            &[acc[0], acc[1], ("plan", "pro")],
            1.0,
        );
        s.push(
            "creditwatch_last_success_timestamp_seconds",
            &acc,
            now.timestamp() as f64,
        );
        s.push("creditwatch_remaining_credits", &pool, remaining);
        s.push("creditwatch_limit_credits", &pool, 1000.0);
        s.push("creditwatch_remaining_ratio", &pool, remaining / 1000.0);
        s
    }

    /// (alertname, phase) of every alert, sorted by name.
    fn phases(t: &Tracker) -> Vec<(String, Phase)> {
        let mut v: Vec<(String, Phase)> = t
            .alerts()
            .map(|a| (a.alert.as_str().to_string(), a.phase))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    fn find(t: &Tracker, name: AlertName) -> Alert {
        t.alerts().find(|a| a.alert == name).unwrap().clone()
    }

    #[test]
    fn pending_then_firing_after_for_then_resolved_and_forgotten() {
        let clock = ManualClock::new(at("2026-11-21T12:00:00Z"));
        let rules = rules();
        let mut t = Tracker::default();
        let step = |t: &mut Tracker, remaining: f64| {
            let now = clock.now();
            let ev = evaluate(
                &samples(now, remaining),
                now.timestamp() as f64,
                &rules,
                "http://cw",
            );
            t.update(now, &ev, &rules)
        };
        // Healthy: nothing at all.
        assert!(!step(&mut t, 900.0));
        assert!(phases(&t).is_empty());
        // Empty: CreditsExhausted (for 5m) and CreditsLow (for 15m) go pending.
        assert!(step(&mut t, 0.0));
        assert_eq!(
            phases(&t),
            vec![
                ("CreditsExhausted".into(), Phase::Pending),
                ("CreditsLow".into(), Phase::Pending)
            ]
        );
        let exhausted = find(&t, AlertName::CreditsExhausted);
        assert_eq!(exhausted.labels["severity"], "critical");
        assert_eq!(exhausted.labels["pool"], "ai");
        assert!(
            !exhausted.labels.contains_key("key"),
            "empty labels are left out"
        );
        assert_eq!(
            exhausted.annotations["runbook_url"],
            "http://cw/runbook#creditsexhausted"
        );
        clock.advance(Duration::from_secs(299));
        assert!(!step(&mut t, 0.0), "4m59s is not yet 5m");
        clock.advance(Duration::from_secs(1));
        assert!(step(&mut t, 0.0));
        assert_eq!(phases(&t)[0], ("CreditsExhausted".into(), Phase::Firing));
        let fired = find(&t, AlertName::CreditsExhausted);
        assert_eq!(fired.fired_at, Some(clock.now()));
        assert_eq!(fired.active_at, at("2026-11-21T12:00:00Z"));
        assert_eq!(
            fired.fingerprint, exhausted.fingerprint,
            "deduplicated by labels"
        );
        // A top-up: the firing alert resolves, the pending one is dropped without a trace.
        clock.advance(Duration::from_secs(60));
        assert!(step(&mut t, 500.0));
        assert_eq!(
            phases(&t),
            vec![("CreditsExhausted".into(), Phase::Resolved)]
        );
        // Resolved alerts are kept 15 minutes, then forgotten.
        clock.advance(Duration::from_secs(14 * 60));
        assert!(!step(&mut t, 500.0));
        clock.advance(Duration::from_secs(60));
        assert!(step(&mut t, 500.0));
        assert!(phases(&t).is_empty());
    }

    #[test]
    fn a_resolved_alert_that_comes_back_starts_pending_again() {
        let mut rules = rules();
        rules.get_mut(&AlertName::CreditsExhausted).unwrap().for_ = Duration::ZERO;
        let t0 = at("2026-11-21T12:00:00Z");
        let mut t = Tracker::default();
        let ev =
            |now: DateTime<Utc>, r| evaluate(&samples(now, r), now.timestamp() as f64, &rules, "");
        let exhausted = |t: &Tracker| find(t, AlertName::CreditsExhausted);
        t.update(t0, &ev(t0, 0.0), &rules);
        assert_eq!(exhausted(&t).phase, Phase::Firing, "for = 0 fires at once");
        let t1 = t0 + chrono::Duration::seconds(30);
        t.update(t1, &ev(t1, 10.0), &rules);
        assert_eq!(exhausted(&t).phase, Phase::Resolved);
        let t2 = t1 + chrono::Duration::seconds(30);
        t.update(t2, &ev(t2, 0.0), &rules);
        let a = exhausted(&t);
        assert_eq!(
            (a.phase, a.active_at, a.resolved_at),
            (Phase::Firing, t2, None)
        );
    }

    #[test]
    fn an_account_without_data_keeps_its_alerts() {
        let rules = rules();
        let t0 = at("2026-11-21T12:00:00Z");
        let mut t = Tracker::default();
        let ev = evaluate(&samples(t0, 0.0), t0.timestamp() as f64, &rules, "");
        t.update(t0, &ev, &rules);
        // After a restart the account is configured but not polled yet: its pool series are
        // missing, which says nothing about the pool, so nothing resolves.
        let mut s = Samples::default();
        s.push(
            "creditwatch_scrape_errors_total",
            &[
                ("provider", "fluximage"),
                ("account", "images"),
                ("reason", "http"),
            ],
            1.0,
        );
        let t1 = t0 + chrono::Duration::seconds(30);
        let ev = evaluate(&s, t1.timestamp() as f64, &rules, "");
        assert!(!t.update(t1, &ev, &rules));
        assert_eq!(phases(&t).len(), 2, "{:?}", phases(&t));
        // Removed from the config (no series at all): its alerts go away.
        let ev = evaluate(&Samples::default(), t1.timestamp() as f64, &rules, "");
        assert!(t.update(t1, &ev, &rules));
        assert!(phases(&t).is_empty(), "pending alerts are dropped");
    }

    #[test]
    fn fingerprints_match_alertmanager() {
        // Alertmanager/Prometheus model: LabelSet{"alertname":"X","severity":"critical"}.
        let l = Labels::from([
            ("alertname".to_string(), "X".to_string()),
            ("severity".to_string(), "critical".to_string()),
        ]);
        // FNV-1a 64 computed independently over "alertname\xffX\xffseverity\xffcritical\xff".
        let mut h: u64 = 0xcbf29ce484222325;
        for b in b"alertname\xffX\xffseverity\xffcritical\xff" {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x100000001b3);
        }
        assert_eq!(fingerprint(&l), format!("{h:016x}"));
        assert_eq!(fingerprint(&Labels::new()), "cbf29ce484222325");
    }
}
