//! The `/metrics` collector: every family built fresh from state at scrape time, never from an upstream.
//!
//! Building families per scrape (instead of updating registered gauges) means an account removed
//! by a reload or a key that vanished upstream leaves no stale series, and a scrape never sees a
//! half-updated account: each account is read from one consistent snapshot.

use crate::providers::Unit;
use crate::proxy::Counters;
use crate::state::{AccountState, State};
use prometheus::core::{Collector, Desc};
use prometheus::proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::{Encoder, TextEncoder};
use rust_decimal::prelude::ToPrimitive;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};

/// `version` label of `creditwatch_build_info`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// `revision` label of `creditwatch_build_info` (the git commit built from, or `unknown`).
pub const REVISION: &str = env!("CREDITWATCH_REVISION");

const ACCOUNT: &[&str] = &["provider", "account"];
const POOL: &[&str] = &["provider", "account", "pool", "key"];
const PROXY: &[&str] = &["provider", "account", "model"];
const PROXY_KEY: &[&str] = &["provider", "account", "key"];
const KEY: &[&str] = &["provider", "account", "key"];
const ENDPOINT: &[&str] = &["provider", "account", "endpoint", "label"];

/// Name, help, type and labels of one family.
struct Spec {
    name: String,
    help: String,
    kind: MetricType,
    labels: Vec<&'static str>,
}

fn spec(
    name: impl Into<String>,
    help: impl Into<String>,
    kind: MetricType,
    labels: &[&'static str],
) -> Spec {
    Spec {
        name: name.into(),
        help: help.into(),
        kind,
        labels: labels.to_vec(),
    }
}

fn with(base: &[&'static str], extra: &'static str) -> Vec<&'static str> {
    let mut v = base.to_vec();
    v.push(extra);
    v
}

/// Every family the exporter can serve.
fn specs() -> &'static [Spec] {
    static SPECS: OnceLock<Vec<Spec>> = OnceLock::new();
    SPECS.get_or_init(|| {
        use MetricType::{COUNTER, GAUGE};
        let mut v = vec![
            spec("creditwatch_up", "1 if the last poll of the account succeeded, else 0.", GAUGE, ACCOUNT),
            spec("creditwatch_last_success_timestamp_seconds", "Unix time of the last successful poll.", GAUGE, ACCOUNT),
            spec("creditwatch_scrape_duration_seconds", "Duration of the last poll of the account's usage endpoint.", GAUGE, ACCOUNT),
            spec("creditwatch_scrape_errors_total", "Failed polls of the account, by reason.", COUNTER, &with(ACCOUNT, "reason")),
            spec("creditwatch_account_info", "Account metadata; always 1.", GAUGE, &with(ACCOUNT, "plan")),
            spec("creditwatch_remaining_ratio", "Remaining divided by the period's allocation, 0..1.", GAUGE, POOL),
            spec("creditwatch_period_start_timestamp_seconds", "Unix time the current billing period started.", GAUGE, POOL),
            spec("creditwatch_reset_timestamp_seconds", "Unix time of the next reset of the pool.", GAUGE, POOL),
            spec("creditwatch_exhaustion_timestamp_seconds", "Unix time the pool runs out at the forecast burn rate.", GAUGE, POOL),
            spec("creditwatch_exhausts_before_reset", "1 if the pool is projected to run out before its next reset, else 0.", GAUGE, POOL),
            spec("creditwatch_pool_available", "1 if the provider says the pool can be used now, else 0.", GAUGE, POOL),
            spec("creditwatch_proxy_requests_total", "Requests through the metering proxy, by served model and HTTP status code.", COUNTER, &with(PROXY, "code")),
            spec("creditwatch_proxy_cost_usd_total", "Spend through the metering proxy in USD, summed exactly from X-Flux-Cost-Usd.", COUNTER, PROXY),
            spec("creditwatch_proxy_unpriced_requests_total", "Successful proxied requests whose cost is unknown (streaming, or a missing or malformed cost header).", COUNTER, PROXY),
            spec("creditwatch_proxy_key_requests_total", "Requests through the metering proxy by key name (per-key attribution).", COUNTER, PROXY_KEY),
            spec("creditwatch_proxy_key_cost_usd_total", "Spend through the metering proxy in USD by key name (per-key attribution).", COUNTER, PROXY_KEY),
            spec("creditwatch_proxy_ledger_write_errors_total", "Failed commits of the proxy's spend ledger since start (costs are kept in memory and retried).", COUNTER, ACCOUNT),
            spec("creditwatch_key_expiry_timestamp_seconds", "Unix time the API key expires (absent when it never does).", GAUGE, KEY),
            spec("creditwatch_key_active", "1 if the provider says the API key is usable, else 0.", GAUGE, KEY),
            spec("creditwatch_key_requests_total", "Requests made with the API key, all time, as the provider counts them.", COUNTER, KEY),
            spec("creditwatch_key_spent_usd_total", "USD spent with the API key, all time, as the provider counts it.", COUNTER, KEY),
            spec("creditwatch_endpoint_calls", "Calls of the endpoint over the provider's lookback window.", GAUGE, ENDPOINT),
            spec("creditwatch_endpoint_credits", "Credits consumed by the endpoint over the provider's lookback window.", GAUGE, ENDPOINT),
            spec("creditwatch_build_info", "Build information; always 1.", GAUGE, &["version", "revision"]),
            spec("creditwatch_config_last_reload_successful", "1 if the last configuration load succeeded, else 0.", GAUGE, &[]),
            spec("creditwatch_config_last_reload_success_timestamp_seconds", "Unix time of the last successful configuration load.", GAUGE, &[]),
            spec("creditwatch_notifications_total", "Notification delivery attempts of the built-in alerter, by receiver and result (success or failure).", COUNTER, &["receiver", "result"]),
            spec("creditwatch_alerts", "Alerts of the built-in alerter, by name and state (pending or firing).", GAUGE, &["alertname", "state"]),
        ];
        for u in Unit::ALL {
            let u = u.as_str();
            v.push(spec(format!("creditwatch_remaining_{u}"), format!("Left in the pool now, in {u}."), GAUGE, POOL));
            v.push(spec(format!("creditwatch_used_{u}"), format!("Consumed in the current period as the provider counts it, in {u}."), GAUGE, POOL));
            v.push(spec(format!("creditwatch_limit_{u}"), format!("Allocation for the current period, in {u}."), GAUGE, POOL));
            v.push(spec(format!("creditwatch_consumed_{u}_total"), format!("Consumed since creditwatch first saw the pool, in {u}; not reset by period resets or top-ups."), COUNTER, POOL));
            v.push(spec(format!("creditwatch_burn_rate_{u}_per_second"), format!("Consumption rate in {u} per second over the window (\"period\" = average since the period start)."), GAUGE, &with(POOL, "window")));
            v.push(spec(format!("creditwatch_projected_remaining_at_reset_{u}"), format!("Projected {u} left at the next reset at the forecast burn rate; negative is a shortfall."), GAUGE, POOL));
        }
        v
    })
}

/// The name of every family the exporter can serve, for checks that dashboards and rules use
/// only metrics that exist.
pub fn family_names() -> Vec<&'static str> {
    specs().iter().map(|s| s.name.as_str()).collect()
}

fn spec_index() -> &'static HashMap<&'static str, usize> {
    static IDX: OnceLock<HashMap<&'static str, usize>> = OnceLock::new();
    IDX.get_or_init(|| {
        specs()
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.as_str(), i))
            .collect()
    })
}

/// Accumulates samples by family during one scrape.
#[derive(Default)]
struct Families {
    by_name: BTreeMap<&'static str, MetricFamily>,
}

impl Families {
    fn add(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        let spec = &specs()[*spec_index()
            .get(name)
            .unwrap_or_else(|| panic!("metric {name} has no spec"))];
        debug_assert_eq!(
            spec.labels,
            labels.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
            "labels of {name}"
        );
        let fam = self.by_name.entry(spec.name.as_str()).or_insert_with(|| {
            let mut f = MetricFamily::default();
            f.set_name(spec.name.clone());
            f.set_help(spec.help.clone());
            f.set_field_type(spec.kind);
            f
        });
        let mut m = Metric::default();
        m.set_label(
            labels
                .iter()
                .map(|(k, v)| {
                    let mut l = LabelPair::default();
                    l.set_name(k.to_string());
                    l.set_value(v.to_string());
                    l
                })
                .collect(),
        );
        match spec.kind {
            MetricType::COUNTER => {
                let mut c = Counter::default();
                c.set_value(value);
                m.set_counter(c);
            }
            _ => {
                let mut g = Gauge::default();
                g.set_value(value);
                m.set_gauge(g);
            }
        }
        fam.mut_metric().push(m);
    }
}

fn secs(t: chrono::DateTime<chrono::Utc>) -> f64 {
    t.timestamp_millis() as f64 / 1000.0
}

fn bool_f(b: bool) -> f64 {
    if b { 1.0 } else { 0.0 }
}

fn account_families(f: &mut Families, name: &str, a: &AccountState) {
    let base = [("provider", a.provider), ("account", name)];
    if a.attempts > 0 {
        f.add("creditwatch_up", &base, bool_f(a.up));
    }
    if let Some(d) = a.last_duration_seconds {
        f.add("creditwatch_scrape_duration_seconds", &base, d);
    }
    for (reason, n) in &a.errors {
        f.add(
            "creditwatch_scrape_errors_total",
            &[base[0], base[1], ("reason", reason)],
            *n as f64,
        );
    }
    // Kept when stale values are dropped: it is what tells how old they were.
    if let Some(t) = a.last_success {
        f.add("creditwatch_last_success_timestamp_seconds", &base, secs(t));
    }
    let Some(snap) = &a.snapshot else { return };
    f.add(
        "creditwatch_account_info",
        &[
            base[0],
            base[1],
            ("plan", snap.plan.as_deref().unwrap_or("")),
        ],
        1.0,
    );
    for p in &snap.pools {
        let r = &p.reading;
        let u = r.unit.as_str();
        let l = [
            base[0],
            base[1],
            ("pool", r.pool.as_str()),
            ("key", r.key.as_str()),
        ];
        if let Some(v) = r.remaining {
            f.add(&format!("creditwatch_remaining_{u}"), &l, v);
        }
        if let Some(v) = r.used {
            f.add(&format!("creditwatch_used_{u}"), &l, v);
        }
        if let Some(v) = r.limit {
            f.add(&format!("creditwatch_limit_{u}"), &l, v);
        }
        if let (Some(rem), Some(lim)) = (r.remaining, r.limit)
            && lim > 0.0
        {
            f.add(
                "creditwatch_remaining_ratio",
                &l,
                (rem / lim).clamp(0.0, 1.0),
            );
        }
        f.add(
            &format!("creditwatch_consumed_{u}_total"),
            &l,
            p.consumed_total,
        );
        let burn = format!("creditwatch_burn_rate_{u}_per_second");
        for (window, v) in &p.forecast.burn {
            f.add(&burn, &[l[0], l[1], l[2], l[3], ("window", window)], *v);
        }
        if let Some(v) = p.forecast.burn_period {
            f.add(&burn, &[l[0], l[1], l[2], l[3], ("window", "period")], v);
        }
        if let Some(period) = p.period {
            f.add(
                "creditwatch_period_start_timestamp_seconds",
                &l,
                secs(period.start),
            );
            f.add("creditwatch_reset_timestamp_seconds", &l, secs(period.end));
        }
        if let Some(v) = p.forecast.exhaustion {
            f.add("creditwatch_exhaustion_timestamp_seconds", &l, v);
        }
        if let Some(v) = p.forecast.projected_remaining_at_reset {
            f.add(
                &format!("creditwatch_projected_remaining_at_reset_{u}"),
                &l,
                v,
            );
        }
        if let Some(v) = p.forecast.exhausts_before_reset {
            f.add("creditwatch_exhausts_before_reset", &l, bool_f(v));
        }
        if let Some(v) = r.available {
            f.add("creditwatch_pool_available", &l, bool_f(v));
        }
    }
    for k in &snap.keys {
        let l = [base[0], base[1], ("key", k.key.as_str())];
        if let Some(t) = k.expires_at {
            f.add("creditwatch_key_expiry_timestamp_seconds", &l, secs(t));
        }
        f.add("creditwatch_key_active", &l, bool_f(k.active));
        f.add("creditwatch_key_requests_total", &l, k.requests);
        if let Some(v) = k.spent_usd {
            f.add("creditwatch_key_spent_usd_total", &l, v);
        }
    }
    for e in &snap.endpoints {
        let l = [
            base[0],
            base[1],
            ("endpoint", e.endpoint.as_str()),
            ("label", e.label.as_str()),
        ];
        f.add("creditwatch_endpoint_calls", &l, e.calls);
        f.add("creditwatch_endpoint_credits", &l, e.credits);
    }
}

/// The proxy series of one fluxrouter account, read live from its meter: they move with every
/// request, not only at polls, and start from the ledger's totals after a restart.
fn proxy_families(f: &mut Families, name: &str, c: &Counters) {
    let provider = "fluxrouter";
    for ((model, code), n) in &c.requests {
        f.add(
            "creditwatch_proxy_requests_total",
            &[
                ("provider", provider),
                ("account", name),
                ("model", model),
                ("code", &code.to_string()),
            ],
            *n as f64,
        );
    }
    for (model, cost) in &c.cost {
        f.add(
            "creditwatch_proxy_cost_usd_total",
            &[("provider", provider), ("account", name), ("model", model)],
            cost.to_f64().unwrap_or(f64::MAX),
        );
    }
    for (model, n) in &c.unpriced {
        f.add(
            "creditwatch_proxy_unpriced_requests_total",
            &[("provider", provider), ("account", name), ("model", model)],
            *n as f64,
        );
    }
    for (key, (n, cost)) in &c.by_key {
        let l = [
            ("provider", provider),
            ("account", name),
            ("key", key.as_str()),
        ];
        f.add("creditwatch_proxy_key_requests_total", &l, *n as f64);
        f.add(
            "creditwatch_proxy_key_cost_usd_total",
            &l,
            cost.to_f64().unwrap_or(f64::MAX),
        );
    }
    f.add(
        "creditwatch_proxy_ledger_write_errors_total",
        &[("provider", provider), ("account", name)],
        c.write_errors as f64,
    );
}

/// The exporter's collector. It can be registered in any `prometheus::Registry`.
pub struct Exporter {
    state: Arc<State>,
    descs: Vec<Desc>,
}

impl Exporter {
    pub fn new(state: Arc<State>) -> Self {
        let descs = specs()
            .iter()
            .map(|s| {
                Desc::new(
                    s.name.clone(),
                    s.help.clone(),
                    s.labels.iter().map(|l| l.to_string()).collect(),
                    HashMap::new(),
                )
                .expect("valid metric descriptor")
            })
            .collect();
        Exporter { state, descs }
    }

    /// The exposition text of every family.
    pub fn render(&self) -> String {
        let mut out = String::new();
        TextEncoder::new()
            .encode_utf8(&self.collect(), &mut out)
            .expect("families are well formed");
        out
    }

    /// The content type of [`Exporter::render`]'s output.
    pub fn content_type() -> String {
        TextEncoder::new().format_type().to_string()
    }
}

impl Collector for Exporter {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut f = Families::default();
        f.add(
            "creditwatch_build_info",
            &[("version", VERSION), ("revision", REVISION)],
            1.0,
        );
        let reload = self.state.reload_status();
        f.add(
            "creditwatch_config_last_reload_successful",
            &[],
            bool_f(reload.last_successful),
        );
        if let Some(t) = reload.last_success {
            f.add(
                "creditwatch_config_last_reload_success_timestamp_seconds",
                &[],
                secs(t),
            );
        }
        let alerting = self.state.alerting();
        for (receiver, (ok, failed)) in &alerting.notifications {
            for (result, n) in [("success", ok), ("failure", failed)] {
                f.add(
                    "creditwatch_notifications_total",
                    &[("receiver", receiver), ("result", result)],
                    *n as f64,
                );
            }
        }
        if alerting.enabled {
            let mut counts: BTreeMap<(&str, &str), u64> = BTreeMap::new();
            for (name, phase) in &alerting.alerts {
                if *phase != "resolved" {
                    *counts.entry((name, phase)).or_default() += 1;
                }
            }
            for ((name, phase), n) in counts {
                f.add(
                    "creditwatch_alerts",
                    &[("alertname", name), ("state", phase)],
                    n as f64,
                );
            }
        }
        for (name, a) in &self.state.accounts() {
            account_families(&mut f, name, a);
        }
        for (name, p) in &self.state.proxies() {
            proxy_families(&mut f, name, &p.meter.counters());
        }
        f.by_name.into_values().collect()
    }
}
