//! The `/metrics` exposition: every family built fresh from state at scrape time, never from an upstream.
//!
//! Building families per scrape (instead of updating registered gauges) means an account removed
//! by a reload or a key that vanished upstream leaves no stale series, and a scrape never sees a
//! half-updated account: each account is read from one consistent snapshot.
//!
//! The text is written directly, family by family, in the Prometheus text format (version 0.0.4):
//! no intermediate protobuf families. A scrape first flattens every account into a compact
//! [`Table`] (label text escaped once per account, pool, key and endpoint, values copied into
//! rows), since forty families each walking scattered per-account state was what made large
//! expositions slow; scrapes that overlap can share one table ([`Exporter::sharing`]).
//! [`Exporter::stream`] hands the text out in chunks as it is written, so a scrape of ten
//! thousand accounts never holds the whole exposition in memory, and concurrent scrapes do not
//! multiply it.

use crate::providers::Unit;
use crate::proxy::Counters;
use crate::state::{AccountState, AlertingStatus, ReloadStatus, State};
use bytes::Bytes;
use rust_decimal::prelude::ToPrimitive;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

/// `version` label of `creditwatch_build_info`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// `revision` label of `creditwatch_build_info` (the git commit built from, or `unknown`).
pub const REVISION: &str = env!("CREDITWATCH_REVISION");

/// The content type of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// [`Exporter::stream`] hands out the text in chunks of about this size.
pub const CHUNK_BYTES: usize = 32 * 1024;

const ACCOUNT: &[&str] = &["provider", "account"];
const POOL: &[&str] = &["provider", "account", "pool", "key"];
const PROXY: &[&str] = &["provider", "account", "model"];
const PROXY_KEY: &[&str] = &["provider", "account", "key"];
const KEY: &[&str] = &["provider", "account", "key"];
const ENDPOINT: &[&str] = &["provider", "account", "endpoint", "label"];

/// A family's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MetricType {
    Counter,
    Gauge,
}

/// Where a family's samples come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Src {
    BuildInfo,
    ReloadOk,
    ReloadTime,
    Notifications,
    Alerts,
    Up,
    LastSuccess,
    ScrapeDuration,
    ScrapeErrors,
    AccountInfo,
    Remaining(Unit),
    Used(Unit),
    Limit(Unit),
    Ratio,
    Consumed(Unit),
    Burn(Unit),
    PeriodStart,
    Reset,
    Exhaustion,
    Projected(Unit),
    ExhaustsBeforeReset,
    PoolAvailable,
    KeyExpiry,
    KeyActive,
    KeyRequests,
    KeySpent,
    EndpointCalls,
    EndpointCredits,
    ProxyRequests,
    ProxyCost,
    ProxyUnpriced,
    ProxyKeyRequests,
    ProxyKeyCost,
    ProxyWriteErrors,
}

/// Name, help, type, labels and source of one family.
struct Spec {
    name: String,
    help: String,
    kind: MetricType,
    /// The label names every sample carries, in order (checked against the output by tests).
    #[cfg_attr(not(test), allow(dead_code))]
    labels: Vec<&'static str>,
    src: Src,
}

fn spec(
    name: impl Into<String>,
    help: impl Into<String>,
    kind: MetricType,
    labels: &[&'static str],
    src: Src,
) -> Spec {
    Spec {
        name: name.into(),
        help: help.into(),
        kind,
        labels: labels.to_vec(),
        src,
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
        use MetricType::{Counter as COUNTER, Gauge as GAUGE};
        let mut v = vec![
            spec("creditwatch_up", "1 if the last poll of the account succeeded, else 0.", GAUGE, ACCOUNT, Src::Up),
            spec("creditwatch_last_success_timestamp_seconds", "Unix time of the last successful poll.", GAUGE, ACCOUNT, Src::LastSuccess),
            spec("creditwatch_scrape_duration_seconds", "Duration of the last poll of the account's usage endpoint.", GAUGE, ACCOUNT, Src::ScrapeDuration),
            spec("creditwatch_scrape_errors_total", "Failed polls of the account, by reason.", COUNTER, &with(ACCOUNT, "reason"), Src::ScrapeErrors),
            spec("creditwatch_account_info", "Account metadata; always 1.", GAUGE, &with(ACCOUNT, "plan"), Src::AccountInfo),
            spec("creditwatch_remaining_ratio", "Remaining divided by the period's allocation, 0..1.", GAUGE, POOL, Src::Ratio),
            spec("creditwatch_period_start_timestamp_seconds", "Unix time the current billing period started.", GAUGE, POOL, Src::PeriodStart),
            spec("creditwatch_reset_timestamp_seconds", "Unix time of the next reset of the pool.", GAUGE, POOL, Src::Reset),
            spec("creditwatch_exhaustion_timestamp_seconds", "Unix time the pool runs out at the forecast burn rate.", GAUGE, POOL, Src::Exhaustion),
            spec("creditwatch_exhausts_before_reset", "1 if the pool is projected to run out before its next reset, else 0.", GAUGE, POOL, Src::ExhaustsBeforeReset),
            spec("creditwatch_pool_available", "1 if the provider says the pool can be used now, else 0.", GAUGE, POOL, Src::PoolAvailable),
            spec("creditwatch_proxy_requests_total", "Requests through the metering proxy, by served model and HTTP status code.", COUNTER, &with(PROXY, "code"), Src::ProxyRequests),
            spec("creditwatch_proxy_cost_usd_total", "Spend through the metering proxy in USD, summed exactly from X-Flux-Cost-Usd.", COUNTER, PROXY, Src::ProxyCost),
            spec("creditwatch_proxy_unpriced_requests_total", "Successful proxied requests whose cost is unknown (streaming, or a missing or malformed cost header).", COUNTER, PROXY, Src::ProxyUnpriced),
            spec("creditwatch_proxy_key_requests_total", "Requests through the metering proxy by key name (per-key attribution).", COUNTER, PROXY_KEY, Src::ProxyKeyRequests),
            spec("creditwatch_proxy_key_cost_usd_total", "Spend through the metering proxy in USD by key name (per-key attribution).", COUNTER, PROXY_KEY, Src::ProxyKeyCost),
            spec("creditwatch_proxy_ledger_write_errors_total", "Failed commits of the proxy's spend ledger since start (costs are kept in memory and retried).", COUNTER, ACCOUNT, Src::ProxyWriteErrors),
            spec("creditwatch_key_expiry_timestamp_seconds", "Unix time the API key expires (absent when it never does).", GAUGE, KEY, Src::KeyExpiry),
            spec("creditwatch_key_active", "1 if the provider says the API key is usable, else 0.", GAUGE, KEY, Src::KeyActive),
            spec("creditwatch_key_requests_total", "Requests made with the API key, all time, as the provider counts them.", COUNTER, KEY, Src::KeyRequests),
            spec("creditwatch_key_spent_usd_total", "USD spent with the API key, all time, as the provider counts it.", COUNTER, KEY, Src::KeySpent),
            spec("creditwatch_endpoint_calls", "Calls of the endpoint over the provider's lookback window.", GAUGE, ENDPOINT, Src::EndpointCalls),
            spec("creditwatch_endpoint_credits", "Credits consumed by the endpoint over the provider's lookback window.", GAUGE, ENDPOINT, Src::EndpointCredits),
            spec("creditwatch_build_info", "Build information; always 1.", GAUGE, &["version", "revision"], Src::BuildInfo),
            spec("creditwatch_config_last_reload_successful", "1 if the last configuration load succeeded, else 0.", GAUGE, &[], Src::ReloadOk),
            spec("creditwatch_config_last_reload_success_timestamp_seconds", "Unix time of the last successful configuration load.", GAUGE, &[], Src::ReloadTime),
            spec("creditwatch_notifications_total", "Notification delivery attempts of the built-in alerter, by receiver and result (success or failure).", COUNTER, &["receiver", "result"], Src::Notifications),
            spec("creditwatch_alerts", "Alerts of the built-in alerter, by name and state (pending or firing).", GAUGE, &["alertname", "state"], Src::Alerts),
        ];
        for unit in Unit::ALL {
            let u = unit.as_str();
            v.push(spec(format!("creditwatch_remaining_{u}"), format!("Left in the pool now, in {u}."), GAUGE, POOL, Src::Remaining(unit)));
            v.push(spec(format!("creditwatch_used_{u}"), format!("Consumed in the current period as the provider counts it, in {u}."), GAUGE, POOL, Src::Used(unit)));
            v.push(spec(format!("creditwatch_limit_{u}"), format!("Allocation for the current period, in {u}."), GAUGE, POOL, Src::Limit(unit)));
            v.push(spec(format!("creditwatch_consumed_{u}_total"), format!("Consumed since creditwatch first saw the pool, in {u}; not reset by period resets or top-ups."), COUNTER, POOL, Src::Consumed(unit)));
            v.push(spec(format!("creditwatch_burn_rate_{u}_per_second"), format!("Consumption rate in {u} per second over the window (\"period\" = average since the period start)."), GAUGE, &with(POOL, "window"), Src::Burn(unit)));
            v.push(spec(format!("creditwatch_projected_remaining_at_reset_{u}"), format!("Projected {u} left at the next reset at the forecast burn rate; negative is a shortfall."), GAUGE, POOL, Src::Projected(unit)));
        }
        v
    })
}

/// The name of every family the exporter can serve, for checks that dashboards and rules use
/// only metrics that exist.
pub fn family_names() -> Vec<&'static str> {
    specs().iter().map(|s| s.name.as_str()).collect()
}

/// Families in exposition order (by name), each with its `# HELP` and `# TYPE` lines.
fn ordered() -> &'static [(&'static Spec, String)] {
    static ORDER: OnceLock<Vec<(&'static Spec, String)>> = OnceLock::new();
    ORDER.get_or_init(|| {
        let mut v: Vec<&'static Spec> = specs().iter().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v.into_iter()
            .map(|s| {
                let mut help = String::with_capacity(s.help.len());
                escape_into(&mut help, &s.help, false);
                let kind = match s.kind {
                    MetricType::Counter => "counter",
                    MetricType::Gauge => "gauge",
                };
                let header = format!("# HELP {} {help}\n# TYPE {} {kind}\n", s.name, s.name);
                (s, header)
            })
            .collect()
    })
}

/// Appends `v` escaped as the text format asks: `\` and newline always, `"` in label values.
fn escape_into(out: &mut String, v: &str, quote: bool) {
    if !v
        .bytes()
        .any(|b| b == b'\\' || b == b'\n' || (quote && b == b'"'))
    {
        out.push_str(v);
        return;
    }
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quote => out.push_str("\\\""),
            c => out.push(c),
        }
    }
}

/// Appends `name="value"`, preceded by a comma unless `out` is empty.
fn push_label(out: &mut String, name: &str, value: &str) {
    if !out.is_empty() {
        out.push(',');
    }
    push_escaped_pair(out, name, value);
}

/// Appends `,name="value"`.
fn push_pair(out: &mut String, name: &str, value: &str) {
    out.push(',');
    push_escaped_pair(out, name, value);
}

/// Appends `name="value"` with the value escaped.
fn push_escaped_pair(out: &mut String, name: &str, value: &str) {
    out.push_str(name);
    out.push_str("=\"");
    escape_into(out, value, true);
    out.push('"');
}

fn labels(pairs: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (k, v) in pairs {
        push_label(&mut out, k, v);
    }
    out
}

/// An account's `provider` and `account` labels as every one of its samples starts with them;
/// [`State`] keeps this text with the account ([`AccountState::labels`]).
pub fn account_labels(provider: &str, account: &str) -> String {
    labels(&[("provider", provider), ("account", account)])
}

/// Appends a sample value as the shortest text that reads back as the same `f64`, never in
/// exponent notation: as Rust's `Display` writes it. Whole numbers go through itoa and other
/// values through ryu, both several times faster than `Display` (where two 17-digit texts both
/// read back, ryu may pick the other last digit); a value that ryu would write with an exponent
/// (tiny or huge) goes through `Display`.
fn push_value(out: &mut String, v: f64) {
    if v.is_finite() && v.fract() == 0.0 && v.abs() < 1e15 && !(v == 0.0 && v.is_sign_negative()) {
        out.push_str(itoa::Buffer::new().format(v as i64));
        return;
    }
    if v.is_finite() && v.fract() != 0.0 {
        let mut buf = ryu::Buffer::new();
        let s = buf.format_finite(v);
        if !s.contains('e') {
            out.push_str(s);
            return;
        }
    }
    let _ = write!(out, "{v}");
}

fn secs(t: chrono::DateTime<chrono::Utc>) -> f64 {
    t.timestamp_millis() as f64 / 1000.0
}

fn bool_f(b: bool) -> f64 {
    if b { 1.0 } else { 0.0 }
}

/// The exposition being written, handed out in chunks when streaming.
struct Out<'a> {
    buf: String,
    sink: Option<&'a mut dyn FnMut(Bytes) -> bool>,
    /// The receiver went away: stop writing.
    closed: bool,
}

impl Out<'_> {
    /// One sample: `name{labels own,extra="value"} value`. `labels` and `own` are written as
    /// they are (already escaped); `own` is empty or starts with a comma.
    fn sample(&mut self, name: &str, labels: &str, own: &str, extra: &[(&str, &str)], value: f64) {
        let b = &mut self.buf;
        b.push_str(name);
        if !labels.is_empty() || !extra.is_empty() {
            b.push('{');
            b.push_str(labels);
            b.push_str(own);
            let mut first = labels.is_empty();
            for (k, v) in extra {
                if !first {
                    b.push(',');
                }
                first = false;
                push_escaped_pair(b, k, v);
            }
            b.push('}');
        }
        b.push(' ');
        push_value(b, value);
        b.push('\n');
    }

    /// Hands out what has been written once it reaches [`CHUNK_BYTES`].
    fn maybe_flush(&mut self) {
        if self.buf.len() >= CHUNK_BYTES {
            self.flush();
        }
    }

    fn flush(&mut self) {
        let Some(sink) = self.sink.as_mut() else {
            return;
        };
        if self.buf.is_empty() || self.closed {
            return;
        }
        let chunk = std::mem::replace(&mut self.buf, String::with_capacity(CHUNK_BYTES + 4096));
        if !sink(Bytes::from(chunk)) {
            self.closed = true;
        }
    }
}

/// Everything one scrape reads, taken from the state once.
struct Scrape {
    reload: ReloadStatus,
    alerting: AlertingStatus,
    /// A fluxrouter account's proxy counters and its `provider`/`account` labels.
    proxies: Vec<(Counters, String)>,
}

impl Scrape {
    fn take(state: &State) -> Scrape {
        let proxies = state
            .proxies()
            .into_iter()
            .map(|(name, p)| (p.meter.counters(), account_labels("fluxrouter", &name)))
            .collect();
        Scrape {
            reload: state.reload_status(),
            alerting: state.alerting(),
            proxies,
        }
    }

    /// Writes every sample of one family; false when it has none.
    fn family(&self, table: &Table, out: &mut Out<'_>, spec: &Spec) -> bool {
        let name = spec.name.as_str();
        let mut any = false;
        let mut emit = |out: &mut Out<'_>, labels: &str, own: &str, extra: &[(&str, &str)], v| {
            out.sample(name, labels, own, extra, v);
            // After each sample, not only each account: one account may hold 10,000 pools.
            out.maybe_flush();
            any = true;
        };
        match spec.src {
            Src::BuildInfo => emit(
                out,
                &labels(&[("version", VERSION), ("revision", REVISION)]),
                "",
                &[],
                1.0,
            ),
            Src::ReloadOk => emit(out, "", "", &[], bool_f(self.reload.last_successful)),
            Src::ReloadTime => {
                if let Some(t) = self.reload.last_success {
                    emit(out, "", "", &[], secs(t));
                }
            }
            Src::Notifications => {
                for (receiver, (ok, failed)) in &self.alerting.notifications {
                    for (result, n) in [("success", ok), ("failure", failed)] {
                        let l = labels(&[("receiver", receiver), ("result", result)]);
                        emit(out, &l, "", &[], *n as f64);
                    }
                }
            }
            Src::Alerts => {
                if self.alerting.enabled {
                    let mut counts: BTreeMap<(&str, &str), u64> = BTreeMap::new();
                    for (name, phase) in &self.alerting.alerts {
                        if *phase != "resolved" {
                            *counts.entry((name, phase)).or_default() += 1;
                        }
                    }
                    for ((name, phase), n) in counts {
                        let l = labels(&[("alertname", name), ("state", phase)]);
                        emit(out, &l, "", &[], n as f64);
                    }
                }
            }
            Src::ProxyRequests
            | Src::ProxyCost
            | Src::ProxyUnpriced
            | Src::ProxyKeyRequests
            | Src::ProxyKeyCost
            | Src::ProxyWriteErrors => {
                for (c, l) in &self.proxies {
                    proxy_samples(spec.src, c, l, &mut emit, out);
                    if out.closed {
                        break;
                    }
                }
            }
            src => table.family(src, &mut emit, out),
        }
        any
    }
}

/// Writes one sample: the name is the family's; labels come as the account's (or the sample's
/// whole label text), the row's own (pre-escaped, each starting with a comma, or empty), and
/// extra pairs to escape.
type Emit<'e> = dyn FnMut(&mut Out<'_>, &str, &str, &[(&str, &str)], f64) + 'e;

/// A stretch of [`Table::text`].
#[derive(Debug, Clone, Copy)]
struct Span {
    start: u32,
    end: u32,
}

/// The values a pool's families read, as indexes of [`PoolRow::values`] and bits of
/// [`PoolRow::bits`] (set when the value is present).
#[derive(Debug, Clone, Copy)]
enum PoolValue {
    Remaining,
    Used,
    Limit,
    Consumed,
    PeriodStart,
    Reset,
    Exhaustion,
    Projected,
    BurnPeriod,
}

const POOL_VALUES: usize = 9;
/// Bits of [`PoolRow::bits`] past the values': whether each yes/no value is present, and what it is.
const EXHAUSTS_KNOWN: u16 = 1 << 9;
const EXHAUSTS: u16 = 1 << 10;
const AVAILABLE_KNOWN: u16 = 1 << 11;
const AVAILABLE: u16 = 1 << 12;

/// One account's account-level samples.
struct AccountRow {
    /// Its `provider` and `account` labels.
    labels: Span,
    /// `None` until the first poll was attempted.
    up: Option<bool>,
    last_success: Option<f64>,
    duration: Option<f64>,
    errors: crate::state::ErrorCounts,
    /// `,plan="…"`, escaped; `None` before the first successful poll.
    plan: Option<Span>,
}

/// One pool's samples: its own labels and every value its families write.
struct PoolRow {
    /// Index of its account in [`Table::accounts`], whose labels come first.
    account: u32,
    /// `,pool="…",key="…"`, escaped.
    labels: Span,
    unit: Unit,
    bits: u16,
    values: [f64; POOL_VALUES],
    /// Its burn rates per window: `burn_len` entries of [`Table::burn`] from `burn_start`.
    burn_start: u32,
    burn_len: u16,
}

/// Reads one family's value of a pool row.
type PoolRead = fn(&PoolRow) -> Option<f64>;

impl PoolRow {
    fn get(&self, v: PoolValue) -> Option<f64> {
        (self.bits & (1 << v as u16) != 0).then(|| self.values[v as usize])
    }

    fn flag(&self, known: u16, yes: u16) -> Option<f64> {
        (self.bits & known != 0).then(|| bool_f(self.bits & yes != 0))
    }

    fn ratio(&self) -> Option<f64> {
        match (self.get(PoolValue::Remaining), self.get(PoolValue::Limit)) {
            (Some(rem), Some(lim)) if lim > 0.0 => Some((rem / lim).clamp(0.0, 1.0)),
            _ => None,
        }
    }
}

/// One API key's or endpoint's samples: its own labels after its account's, and up to four
/// values with a bit each for presence.
struct ItemRow {
    account: u32,
    labels: Span,
    present: u16,
    values: [f64; 4],
}

/// Each present value in its slot, and bit `i` set where slot `i` is present.
fn packed<const N: usize>(slots: [Option<f64>; N]) -> (u16, [f64; N]) {
    let mut bits = 0;
    let mut values = [0.0; N];
    for (i, x) in slots.into_iter().enumerate() {
        if let Some(x) = x {
            bits |= 1 << i;
            values[i] = x;
        }
    }
    (bits, values)
}

/// How many rows and bytes the last scrape's table held, so the next one allocates once.
#[derive(Debug, Default, Clone, Copy)]
struct Sizes {
    text: usize,
    pools: usize,
    keys: usize,
    endpoints: usize,
    burn: usize,
}

/// Every account's samples, flattened once per scrape into contiguous rows.
///
/// The text format wants each family's samples together, so the exposition is written family
/// by family, and some forty families read every account. Walking the accounts' own states for
/// each family meant forty passes over pointers scattered across the heap: past a few thousand
/// accounts the state no longer stays in cache between passes (the exposition written meanwhile
/// evicts it), and rendering cost grew 38-fold for 10-fold the accounts. One pass copies what
/// the families need into these rows, with each pool's, key's and endpoint's labels escaped once
/// instead of once per family; the families then read the rows in order, which the cache
/// prefetches. The rows are kept small (about 100 bytes a pool with its burn rates, labels
/// apart): at 10,000 accounts a table is about 5 MiB, held while its scrape sends.
///
/// The table owns what it holds (it points into no account's state), so scrapes that overlap
/// can share one ([`Exporter::sharing`]).
struct Table {
    /// When it was built, for sharing.
    built: Instant,
    /// The label text of every row, back to back.
    text: String,
    accounts: Vec<AccountRow>,
    pools: Vec<PoolRow>,
    keys: Vec<ItemRow>,
    endpoints: Vec<ItemRow>,
    /// Every pool's burn rates by window: an index into `windows`, and the rate.
    burn: Vec<(u32, f64)>,
    /// The burn windows' labels, each once, and where each is in `windows`.
    windows: Vec<Arc<str>>,
    window_index: foldhash::HashMap<Arc<str>, u32>,
}

impl Table {
    fn build(accounts: &[Arc<AccountState>], hint: Sizes) -> Table {
        let mut t = Table {
            built: Instant::now(),
            text: String::with_capacity(hint.text),
            accounts: Vec::with_capacity(accounts.len()),
            pools: Vec::with_capacity(hint.pools),
            keys: Vec::with_capacity(hint.keys),
            endpoints: Vec::with_capacity(hint.endpoints),
            burn: Vec::with_capacity(hint.burn),
            windows: Vec::new(),
            window_index: Default::default(),
        };
        for a in accounts {
            let index = t.accounts.len() as u32;
            let labels = t.span(|text| text.push_str(&a.labels));
            let snap = a.snapshot.as_deref();
            let plan = snap
                .map(|s| t.span(|text| push_pair(text, "plan", s.plan.as_deref().unwrap_or(""))));
            t.accounts.push(AccountRow {
                labels,
                up: (a.attempts > 0).then_some(a.up),
                last_success: a.last_success.map(secs),
                duration: a.last_duration_seconds,
                errors: a.errors,
                plan,
            });
            let Some(snap) = snap else { continue };
            for p in &snap.pools {
                let r = &p.reading;
                let labels = t.span(|text| {
                    push_pair(text, "pool", &r.pool);
                    push_pair(text, "key", &r.key);
                });
                let f = &p.forecast;
                let burn_start = t.burn.len() as u32;
                for (window, v) in &f.burn {
                    let w = t.window(window);
                    t.burn.push((w, *v));
                }
                let mut slots = [None; POOL_VALUES];
                for (v, x) in [
                    (PoolValue::Remaining, r.remaining),
                    (PoolValue::Used, r.used),
                    (PoolValue::Limit, r.limit),
                    (PoolValue::Consumed, Some(p.consumed_total)),
                    (PoolValue::PeriodStart, p.period.map(|q| secs(q.start))),
                    (PoolValue::Reset, p.period.map(|q| secs(q.end))),
                    (PoolValue::Exhaustion, f.exhaustion),
                    (PoolValue::Projected, f.projected_remaining_at_reset),
                    (PoolValue::BurnPeriod, f.burn_period),
                ] {
                    slots[v as usize] = x;
                }
                let (bits, values) = packed(slots);
                let mut row = PoolRow {
                    account: index,
                    labels,
                    unit: r.unit,
                    bits,
                    values,
                    burn_start,
                    burn_len: f.burn.len() as u16,
                };
                for (x, known, yes) in [
                    (f.exhausts_before_reset, EXHAUSTS_KNOWN, EXHAUSTS),
                    (r.available, AVAILABLE_KNOWN, AVAILABLE),
                ] {
                    if let Some(x) = x {
                        row.bits |= known | if x { yes } else { 0 };
                    }
                }
                t.pools.push(row);
            }
            for k in &snap.keys {
                let labels = t.span(|text| push_pair(text, "key", &k.key));
                let values = [
                    k.expires_at.map(secs),
                    Some(bool_f(k.active)),
                    Some(k.requests),
                    k.spent_usd,
                ];
                t.keys.push(ItemRow::new(index, labels, values));
            }
            for e in &snap.endpoints {
                let labels = t.span(|text| {
                    push_pair(text, "endpoint", &e.endpoint);
                    push_pair(text, "label", &e.label);
                });
                let values = [Some(e.calls), Some(e.credits), None, None];
                t.endpoints.push(ItemRow::new(index, labels, values));
            }
        }
        t
    }

    fn sizes(&self) -> Sizes {
        Sizes {
            text: self.text.len(),
            pools: self.pools.len(),
            keys: self.keys.len(),
            endpoints: self.endpoints.len(),
            burn: self.burn.len(),
        }
    }

    /// The index of a burn window's label in `windows` (every account's config holds its own
    /// copy of the labels, so they are told apart by text).
    fn window(&mut self, label: &Arc<str>) -> u32 {
        if let Some(i) = self.window_index.get(label) {
            return *i;
        }
        let i = self.windows.len() as u32;
        self.windows.push(label.clone());
        self.window_index.insert(label.clone(), i);
        i
    }

    /// Appends label text with `write` and returns where it went.
    fn span(&mut self, write: impl FnOnce(&mut String)) -> Span {
        let start = self.text.len() as u32;
        write(&mut self.text);
        Span {
            start,
            end: self.text.len() as u32,
        }
    }

    fn text(&self, s: Span) -> &str {
        &self.text[s.start as usize..s.end as usize]
    }

    /// The labels of a row of `account`: the account's, and the row's own.
    fn labels(&self, account: u32, own: Span) -> (&str, &str) {
        (
            self.text(self.accounts[account as usize].labels),
            self.text(own),
        )
    }

    /// Writes one account-level, pool, key or endpoint family.
    fn family(&self, src: Src, emit: &mut Emit<'_>, out: &mut Out<'_>) {
        let pool_value: Option<(Option<Unit>, PoolRead)> = match src {
            Src::Remaining(u) => Some((Some(u), |p| p.get(PoolValue::Remaining))),
            Src::Used(u) => Some((Some(u), |p| p.get(PoolValue::Used))),
            Src::Limit(u) => Some((Some(u), |p| p.get(PoolValue::Limit))),
            Src::Consumed(u) => Some((Some(u), |p| p.get(PoolValue::Consumed))),
            Src::Projected(u) => Some((Some(u), |p| p.get(PoolValue::Projected))),
            Src::Ratio => Some((None, |p| p.ratio())),
            Src::PeriodStart => Some((None, |p| p.get(PoolValue::PeriodStart))),
            Src::Reset => Some((None, |p| p.get(PoolValue::Reset))),
            Src::Exhaustion => Some((None, |p| p.get(PoolValue::Exhaustion))),
            Src::ExhaustsBeforeReset => Some((None, |p| p.flag(EXHAUSTS_KNOWN, EXHAUSTS))),
            Src::PoolAvailable => Some((None, |p| p.flag(AVAILABLE_KNOWN, AVAILABLE))),
            _ => None,
        };
        if let Some((unit, value)) = pool_value {
            for p in &self.pools {
                if unit.is_some_and(|u| u != p.unit) {
                    continue;
                }
                if let Some(x) = value(p) {
                    let (a, own) = self.labels(p.account, p.labels);
                    emit(out, a, own, &[], x);
                    if out.closed {
                        return;
                    }
                }
            }
            return;
        }
        match src {
            Src::Up
            | Src::ScrapeDuration
            | Src::LastSuccess
            | Src::ScrapeErrors
            | Src::AccountInfo => {
                for a in &self.accounts {
                    let l = self.text(a.labels);
                    match src {
                        Src::ScrapeErrors => {
                            for (reason, n) in a.errors.iter() {
                                emit(out, l, "", &[("reason", reason)], n as f64);
                            }
                        }
                        Src::AccountInfo => {
                            if let Some(plan) = a.plan {
                                emit(out, l, self.text(plan), &[], 1.0);
                            }
                        }
                        _ => {
                            // Last success is kept when stale values are dropped: it is what
                            // tells how old they were.
                            let v = match src {
                                Src::Up => a.up.map(bool_f),
                                Src::ScrapeDuration => a.duration,
                                _ => a.last_success,
                            };
                            if let Some(v) = v {
                                emit(out, l, "", &[], v);
                            }
                        }
                    }
                    if out.closed {
                        return;
                    }
                }
            }
            Src::Burn(u) => {
                for p in self.pools.iter().filter(|p| p.unit == u) {
                    let (a, own) = self.labels(p.account, p.labels);
                    let start = p.burn_start as usize;
                    for (w, v) in &self.burn[start..start + p.burn_len as usize] {
                        emit(out, a, own, &[("window", &self.windows[*w as usize])], *v);
                    }
                    if let Some(v) = p.get(PoolValue::BurnPeriod) {
                        emit(out, a, own, &[("window", "period")], v);
                    }
                    if out.closed {
                        return;
                    }
                }
            }
            Src::KeyExpiry
            | Src::KeyActive
            | Src::KeyRequests
            | Src::KeySpent
            | Src::EndpointCalls
            | Src::EndpointCredits => {
                let (rows, i) = match src {
                    Src::KeyExpiry => (&self.keys, 0),
                    Src::KeyActive => (&self.keys, 1),
                    Src::KeyRequests => (&self.keys, 2),
                    Src::KeySpent => (&self.keys, 3),
                    Src::EndpointCalls => (&self.endpoints, 0),
                    _ => (&self.endpoints, 1),
                };
                for r in rows {
                    if r.present & (1 << i) != 0 {
                        let (a, own) = self.labels(r.account, r.labels);
                        emit(out, a, own, &[], r.values[i]);
                        if out.closed {
                            return;
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

impl ItemRow {
    fn new(account: u32, labels: Span, slots: [Option<f64>; 4]) -> ItemRow {
        let (present, values) = packed(slots);
        ItemRow {
            account,
            labels,
            present,
            values,
        }
    }
}

/// The proxy series of one fluxrouter account, read live from its meter: they move with every
/// request, not only at polls, and start from the ledger's totals after a restart.
fn proxy_samples(src: Src, c: &Counters, account: &str, emit: &mut Emit<'_>, out: &mut Out<'_>) {
    let with = |pairs: &[(&str, &str)]| {
        let mut l = account.to_string();
        for (k, v) in pairs {
            push_label(&mut l, k, v);
        }
        l
    };
    let usd = |d: &rust_decimal::Decimal| d.to_f64().unwrap_or(f64::MAX);
    match src {
        Src::ProxyRequests => {
            for ((model, code), n) in &c.requests {
                let l = with(&[("model", model), ("code", &code.to_string())]);
                emit(out, &l, "", &[], *n as f64);
            }
        }
        Src::ProxyCost => {
            for (model, cost) in &c.cost {
                emit(out, &with(&[("model", model)]), "", &[], usd(cost));
            }
        }
        Src::ProxyUnpriced => {
            for (model, n) in &c.unpriced {
                emit(out, &with(&[("model", model)]), "", &[], *n as f64);
            }
        }
        Src::ProxyKeyRequests | Src::ProxyKeyCost => {
            for (key, (n, cost)) in &c.by_key {
                let v = if src == Src::ProxyKeyRequests {
                    *n as f64
                } else {
                    usd(cost)
                };
                emit(out, &with(&[("key", key)]), "", &[], v);
            }
        }
        Src::ProxyWriteErrors => emit(out, account, "", &[], c.write_errors as f64),
        _ => {}
    }
}

/// The exporter: renders the exposition from [`State`] on demand. Cheap to clone.
#[derive(Clone)]
pub struct Exporter {
    state: Arc<State>,
    /// The last scrape's table, while a scrape still uses it, and its size.
    last: Arc<Mutex<Last>>,
    /// How old a table in use may be for a new scrape to share it; zero never shares.
    share_for: Duration,
}

/// The last [`Table`] built by an [`Exporter`].
#[derive(Default)]
struct Last {
    /// Alive while a scrape is still writing from it.
    table: Weak<Table>,
    /// Its size, which the next table allocates at once, with a little room to grow (a vector
    /// grown by doubling can hold twice what it needs).
    sizes: Sizes,
}

/// How old a table may be for an overlapping scrape to share it ([`Exporter::sharing`]).
pub const SHARE_TABLE_FOR: Duration = Duration::from_secs(1);

impl Exporter {
    pub fn new(state: Arc<State>) -> Self {
        Exporter {
            state,
            last: Arc::default(),
            share_for: Duration::ZERO,
        }
    }

    /// An exporter whose scrapes share one [`Table`] when they overlap: a scrape that starts
    /// while another is still writing from a table built less than `age` ago writes from that
    /// table too. At 10,000 accounts a table is about 5 MiB, held for as long as its scrape
    /// takes to send; concurrent scrapers (a Prometheus pair, a dashboard and an agent) each
    /// held their own. The accounts' values a shared scrape writes are then at most `age` old
    /// (the proxy counters, reload and alerting status are always read anew).
    pub fn sharing(mut self, age: Duration) -> Self {
        self.share_for = age;
        self
    }

    /// The table to write from: the last one if a scrape still uses it and it is young enough
    /// to share, else a new one. Built under the lock, so scrapes arriving meanwhile wait for
    /// it and share it rather than build their own.
    fn table(&self) -> Arc<Table> {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = last.table.upgrade()
            && t.built.elapsed() < self.share_for
        {
            return t;
        }
        let room = |n: usize| n + n / 32;
        let hint = last.sizes;
        let table = Arc::new(Table::build(
            &self.state.accounts(),
            Sizes {
                text: room(hint.text),
                pools: room(hint.pools),
                keys: room(hint.keys),
                endpoints: room(hint.endpoints),
                burn: room(hint.burn),
            },
        ));
        last.sizes = table.sizes();
        last.table = Arc::downgrade(&table);
        table
    }

    /// The exposition text of every family.
    pub fn render(&self) -> String {
        let mut out = Out {
            buf: String::new(),
            sink: None,
            closed: false,
        };
        self.write(&mut out);
        out.buf
    }

    /// Writes the exposition into `send` in chunks of about [`CHUNK_BYTES`], in order. Stops
    /// early when `send` returns false (the client went away).
    pub fn stream(&self, mut send: impl FnMut(Bytes) -> bool) {
        let mut out = Out {
            buf: String::with_capacity(CHUNK_BYTES + 4096),
            sink: Some(&mut send),
            closed: false,
        };
        self.write(&mut out);
        out.flush();
    }

    fn write(&self, out: &mut Out<'_>) {
        let table = self.table();
        let scrape = Scrape::take(&self.state);
        for (spec, header) in ordered() {
            let mark = out.buf.len();
            out.buf.push_str(header);
            // A family is flushed mid-way only once it has samples, so an empty one can always
            // be taken back.
            if !scrape.family(&table, out, spec) {
                out.buf.truncate(mark);
            }
            out.maybe_flush();
            if out.closed {
                return;
            }
        }
    }

    /// The content type of [`Exporter::render`]'s output.
    pub fn content_type() -> &'static str {
        CONTENT_TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerting::rules::parse_sample;
    use crate::config::Config;
    use crate::ingest::ingest;
    use crate::providers::{ProviderSettings, fluximage, imagerouter};
    use crate::store::Store;
    use chrono::{TimeZone, Utc};
    use std::path::Path;

    /// A state with a Fluximage account polled twice, an ImageRouter account whose key names
    /// need escaping, and an account that has only failed.
    fn state() -> Arc<State> {
        let text = r#"
[[account]]
name = "images"
provider = "fluximage"
api_key = "k"
billing_anchor = "2026-01-15"

[[account]]
name = "router \"eu\""
provider = "imagerouter"
api_key = "k"

[[account]]
name = "down"
provider = "fluximage"
api_key = "k"
billing_anchor = "2026-01-15"
"#;
        let (config, _) =
            Config::parse(text, Path::new("t.toml"), Path::new("."), &|_| None).unwrap();
        let store = Store::in_memory();
        let state = State::new();
        state.set_reload(true, Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap());
        for a in &config.accounts {
            state.add_account(&a.name, a.provider.name(), true);
        }
        let t0 = Utc.with_ymd_and_hms(2026, 11, 20, 12, 0, 0).unwrap();
        for (i, t) in [t0, t0 + chrono::Duration::hours(3)]
            .into_iter()
            .enumerate()
        {
            let flux = format!(
                r#"{{"plan":"starter","compressor_used":{},"compressor_limit":200,"ia_credits_used":{},"ia_credits_monthly":200,"ia_topup_credits":0,"ia_credits_remaining":{},"canCompress":true,"canUseIA":true}}"#,
                10 + 5 * i,
                20 + 7 * i,
                180 - 7 * i
            );
            let anchor = config.accounts[0].billing_anchor.unwrap();
            let r = fluximage::parse(flux.as_bytes(), anchor).unwrap();
            let (snap, err) = ingest(&store, &config.accounts[0], r, t);
            assert!(err.is_none());
            state.record_success("images", 0.25, snap);

            let keys = format!(
                r#"{{"remaining_credits":"25.5000","credit_usage":"{}","total_deposits":"30.0000","usage_by_api_key":[
                {{"api_key_id":"a1","api_key_name":"back\\slash \"quoted\"\nnew line","credit_usage":"1.0000","total_requests":7,"created_at":null,"is_active":true,"spend_limit":"5.0000","spend_limit_period":"day","period_spend":"{}","period_start":"2026-11-20T00:00:00.000Z","expires_at":"2027-01-01T00:00:00.000Z"}}]}}"#,
                4.5 + i as f64,
                0.5 + i as f64
            );
            let ProviderSettings::Imagerouter(s) = &config.accounts[1].provider else {
                unreachable!()
            };
            let r = imagerouter::parse(keys.as_bytes(), t, s.per_key).unwrap();
            let (snap, err) = ingest(&store, &config.accounts[1], r, t);
            assert!(err.is_none());
            state.record_success("router \"eu\"", 0.5, snap);
        }
        state.record_failure("down", 0.1, "timeout", "no answer".into());
        state
    }

    #[test]
    fn every_sample_carries_its_familys_labels_escaped_and_reads_back() {
        let state = state();
        let text = Exporter::new(state).render();
        let specs: BTreeMap<&str, &Spec> = specs().iter().map(|s| (s.name.as_str(), s)).collect();
        let mut names = Vec::new();
        let mut current = "";
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                current = rest.split(' ').next().unwrap();
                names.push(current);
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let (name, labels, _) = parse_sample(line).unwrap_or_else(|| panic!("{line}"));
            assert_eq!(name, current, "{line} outside its family");
            let want: Vec<&str> = specs[name].labels.to_vec();
            let mut got: Vec<&str> = labels.keys().map(String::as_str).collect();
            let mut sorted = want.clone();
            sorted.sort();
            got.sort();
            assert_eq!(got, sorted, "{line}");
        }
        // Families are sorted by name and each appears once.
        let mut sorted = names.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(names, sorted);
        // The key name with a backslash, quotes and a newline is escaped and reads back intact.
        assert!(
            text.contains(r#"key="back\\slash \"quoted\"\nnew line""#),
            "{text}"
        );
        assert!(text.contains(r#"account="router \"eu\"""#));
        let spend = text
            .lines()
            .find(|l| l.starts_with("creditwatch_limit_usd{") && l.contains("key_spend"))
            .unwrap();
        let (_, labels, v) = parse_sample(spend).unwrap();
        assert_eq!(labels["key"], "back\\slash \"quoted\"\nnew line");
        assert_eq!(labels["account"], "router \"eu\"");
        assert_eq!(v, 5.0);
        // The account that only failed has its status series and no values.
        assert!(text.contains("creditwatch_up{provider=\"fluximage\",account=\"down\"} 0\n"));
        assert!(!text.contains("account=\"down\",pool="));
    }

    /// Rows are flattened per scrape and point back to their account by index: each pool's and
    /// key's samples must carry the labels of the account that holds it, every pool once per
    /// family, past an account with no snapshot (`down` sorts first).
    #[test]
    fn each_pool_and_key_sample_carries_its_own_accounts_labels() {
        let state = state();
        let text = Exporter::new(state.clone()).render();
        let mut consumed = Vec::new();
        let mut keys = 0;
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, labels, v) = parse_sample(line).unwrap();
            let Some(account) = labels.get("account") else {
                continue;
            };
            let a = state.account(account).unwrap();
            assert_eq!(labels["provider"], a.provider, "{line}");
            if let Some(pool) = labels.get("pool") {
                let snap = a
                    .snapshot
                    .clone()
                    .expect("a pool sample of an account polled");
                let p = snap
                    .pools
                    .iter()
                    .find(|p| &p.reading.pool == pool && p.reading.key == labels["key"])
                    .unwrap_or_else(|| panic!("{line}: not a pool of {account}"));
                if name.starts_with("creditwatch_consumed_") {
                    assert_eq!(v, p.consumed_total, "{line}");
                    consumed.push((account.clone(), pool.clone(), labels["key"].clone()));
                }
            } else if name == "creditwatch_key_requests_total" {
                let snap = a.snapshot.clone().unwrap();
                let k = snap.keys.iter().find(|k| k.key == labels["key"]).unwrap();
                assert_eq!(v, k.requests, "{line}");
                keys += 1;
            }
        }
        let mut want = Vec::new();
        for a in state.accounts() {
            for p in a.snapshot.iter().flat_map(|s| &s.pools) {
                want.push((
                    a.name.to_string(),
                    p.reading.pool.clone(),
                    p.reading.key.clone(),
                ));
            }
        }
        consumed.sort();
        want.sort();
        assert_eq!(consumed, want);
        assert_eq!(keys, 1);
    }

    /// A scrape that starts while another is still writing from a young table shares it (and
    /// writes the accounts as that table holds them); once no scrape uses it, or it is older
    /// than the exporter allows, the next scrape reads the state anew. An exporter that does not
    /// share always reads it anew.
    #[test]
    fn overlapping_scrapes_share_a_young_table_and_only_them() {
        let state = state();
        let up = |text: &str| {
            text.contains("creditwatch_up{provider=\"fluximage\",account=\"down\"} 1\n")
        };
        let shared = Exporter::new(state.clone()).sharing(Duration::from_secs(3600));
        let alone = Exporter::new(state.clone());
        let in_flight = shared.table();
        state.record_success(
            "down",
            0.1,
            (*state.account("images").unwrap().snapshot.unwrap()).clone(),
        );
        assert!(
            !up(&shared.render()),
            "the scrape in flight's table is shared"
        );
        assert!(
            up(&alone.render()),
            "an exporter that does not share reads the state"
        );
        drop(in_flight);
        assert!(
            up(&shared.render()),
            "no scrape uses the old table: read anew"
        );

        let young = Exporter::new(state.clone()).sharing(Duration::from_millis(1));
        let in_flight = young.table();
        state.record_failure("down", 0.1, "timeout", "no answer".into());
        std::thread::sleep(Duration::from_millis(5));
        assert!(
            !up(&young.render()),
            "a table older than allowed is not shared"
        );
        drop(in_flight);
    }

    #[test]
    fn streamed_chunks_add_up_to_the_rendered_text() {
        let state = state();
        // Enough accounts for several chunks.
        let snap = state.account("images").unwrap().snapshot.unwrap();
        for i in 0..3000 {
            let name = format!("copy-{i:04}");
            state.add_account(&name, "fluximage", false);
            state.record_success(&name, 0.1, (*snap).clone());
        }
        let exporter = Exporter::new(state);
        let whole = exporter.render();
        let mut chunks = Vec::new();
        exporter.stream(|c| {
            chunks.push(c);
            true
        });
        assert!(chunks.len() > 3, "{} chunks", chunks.len());
        assert!(chunks.iter().all(|c| c.len() < 2 * CHUNK_BYTES));
        let joined: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        assert_eq!(String::from_utf8(joined).unwrap(), whole);

        // A receiver that goes away stops the writer.
        let mut n = 0;
        exporter.stream(|_| {
            n += 1;
            false
        });
        assert_eq!(n, 1);
    }

    #[test]
    fn values_format_as_rust_formats_f64() {
        for v in [
            0.0,
            -0.0,
            1.0,
            -5.0,
            0.9,
            1795262400.0,
            1800316800.5,
            646.1538461538462,
            0.00008012820512820513,
            1e15,
            1e21,
            -1e300,
            f64::MAX,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ] {
            let mut s = String::new();
            push_value(&mut s, v);
            assert_eq!(s, v.to_string());
        }
        // Values of every magnitude, from a fixed pseudo-random sequence, and values of the
        // size exported (amounts, rates, timestamps).
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let scaled = (x >> 11) as f64 / (1u64 << 53) as f64 * 10f64.powi((x % 24) as i32 - 12);
            for v in [f64::from_bits(x), scaled] {
                let mut s = String::new();
                push_value(&mut s, v);
                let std = v.to_string();
                if v.is_nan() {
                    assert_eq!(s, std);
                    continue;
                }
                // Reads back exactly, never with an exponent, and as short as the standard
                // text; where several texts of that length read back (17 digits), the last
                // digit may differ.
                assert_eq!(
                    s.parse::<f64>().unwrap().to_bits(),
                    v.to_bits(),
                    "{s} {x:#x}"
                );
                assert!(!s.contains('e'), "{s}");
                assert_eq!(s.len(), std.len(), "{s} vs {std}");
                assert_eq!(s[..s.len() - 1], std[..std.len() - 1], "{s} vs {std}");
            }
        }
    }
}
