//! The alerts of the product contract, evaluated from the exporter's own series with the same conditions as `alerts/creditwatch.rules.yml`.
//!
//! Evaluating the exposition (not internal structs) keeps the built-in alerter honest: it sees
//! exactly what Prometheus would scrape, so the two paths agree, and an alert whose series a
//! provider starts exporting (such as key expiry) works without touching this file.

use super::config::RuleConfig;
use crate::metrics::Exporter;
use chrono::{DateTime, Utc};
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

/// Label names and values, sorted.
pub type Labels = BTreeMap<String, String>;

/// Forecasts of a pool whose period started less than this long ago are not trusted.
pub const JUST_RESET: f64 = 3600.0;
/// Forecasts of an account whose last successful poll is older than this are stale.
pub const STALE_AFTER: f64 = 3600.0;

/// The six alerts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AlertName {
    CreditsExhaustionBeforeReset,
    CreditsExhaustionImminent,
    CreditsLow,
    CreditsExhausted,
    CreditwatchAccountDown,
    ApiKeyExpiringSoon,
}

/// The kind of threshold an alert takes besides `for` and `enabled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threshold {
    /// `remaining_ratio_below`
    RatioBelow,
    /// `within`
    Within,
}

impl AlertName {
    pub const ALL: [AlertName; 6] = [
        AlertName::CreditsExhaustionBeforeReset,
        AlertName::CreditsExhaustionImminent,
        AlertName::CreditsLow,
        AlertName::CreditsExhausted,
        AlertName::CreditwatchAccountDown,
        AlertName::ApiKeyExpiringSoon,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AlertName::CreditsExhaustionBeforeReset => "CreditsExhaustionBeforeReset",
            AlertName::CreditsExhaustionImminent => "CreditsExhaustionImminent",
            AlertName::CreditsLow => "CreditsLow",
            AlertName::CreditsExhausted => "CreditsExhausted",
            AlertName::CreditwatchAccountDown => "CreditwatchAccountDown",
            AlertName::ApiKeyExpiringSoon => "ApiKeyExpiringSoon",
        }
    }

    pub fn from_name(s: &str) -> Option<AlertName> {
        AlertName::ALL.into_iter().find(|a| a.as_str() == s)
    }

    pub fn severity(self) -> &'static str {
        match self {
            AlertName::CreditsExhaustionImminent | AlertName::CreditsExhausted => "critical",
            _ => "warning",
        }
    }

    pub fn threshold(self) -> Option<Threshold> {
        match self {
            AlertName::CreditsExhaustionBeforeReset | AlertName::CreditsLow => {
                Some(Threshold::RatioBelow)
            }
            AlertName::CreditsExhaustionImminent | AlertName::ApiKeyExpiringSoon => {
                Some(Threshold::Within)
            }
            _ => None,
        }
    }

    /// The keys `[alerting.rules.<name>]` accepts.
    pub fn keys(self) -> Vec<&'static str> {
        let mut k = vec!["enabled", "for"];
        match self.threshold() {
            Some(Threshold::RatioBelow) => k.push("remaining_ratio_below"),
            Some(Threshold::Within) => k.push("within"),
            None => {}
        }
        k
    }

    /// The maintainers' defaults: the same thresholds and `for:` as the shipped rules.
    pub fn defaults(self) -> RuleConfig {
        let m = |n: u64| Duration::from_secs(n * 60);
        let (for_, ratio_below, within) = match self {
            AlertName::CreditsExhaustionBeforeReset => (m(60), Some(0.5), None),
            AlertName::CreditsExhaustionImminent => (m(15), None, Some(m(24 * 60))),
            AlertName::CreditsLow => (m(15), Some(0.1), None),
            AlertName::CreditsExhausted => (m(5), None, None),
            AlertName::CreditwatchAccountDown => (m(30), None, None),
            AlertName::ApiKeyExpiringSoon => (m(60), None, Some(m(7 * 24 * 60))),
        };
        RuleConfig {
            enabled: true,
            for_,
            ratio_below,
            within,
        }
    }

    /// Whether the alert is about an account as a whole (its labels are provider and account).
    pub fn account_level(self) -> bool {
        self == AlertName::CreditwatchAccountDown
    }
}

// ---------------------------------------------------------------------------------------------

/// A label value, shared by every series that carries it: an account's name is held once
/// however many of its series an evaluation reads.
type Sym = Arc<str>;
type PoolKey = (Sym, Sym, Sym, Sym);
type AccountKey = (Sym, Sym);
type KeyKey = (Sym, Sym, Sym);

/// The units of the per-unit families (`creditwatch_remaining_credits`, `..._usd`).
const UNITS: [&str; 2] = ["credits", "usd"];

/// Calls `f` with each label name and unescaped value of `text` (what is between the braces of
/// a sample line); `None` when it is malformed. A value is copied only when it holds an escape.
fn each_label<'a>(mut rest: &'a str, mut f: impl FnMut(&'a str, Cow<'a, str>)) -> Option<()> {
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"")?;
        let mut unescaped: Option<String> = None;
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '\\') => {
                    let v = unescaped.get_or_insert_with(|| after[..i].to_string());
                    match chars.next()?.1 {
                        'n' => v.push('\n'),
                        c => v.push(c),
                    }
                }
                (i, '"') => break i,
                (_, c) => {
                    if let Some(v) = unescaped.as_mut() {
                        v.push(c);
                    }
                }
            }
        };
        f(
            key,
            unescaped.map_or(Cow::Borrowed(&after[..end]), Cow::Owned),
        );
        rest = after[end + 1..]
            .strip_prefix(',')
            .unwrap_or(&after[end + 1..]);
    }
    Some(())
}

/// A sample line's family name, label text (between the braces; empty without them) and value.
fn split_sample(line: &str) -> Option<(&str, &str, f64)> {
    // The value is the last field and holds no space; label values may.
    let (series, value) = line.rsplit_once(' ')?;
    let value: f64 = value.parse().ok()?;
    match series.find('{') {
        None => Some((series, "", value)),
        Some(open) => Some((
            &series[..open],
            series[open + 1..].strip_suffix('}')?,
            value,
        )),
    }
}

/// One sample line of the text format: `name{k="v",...} value`, label values unescaped.
#[cfg(test)]
pub(crate) fn parse_sample(line: &str) -> Option<(&str, Labels, f64)> {
    let (name, text, value) = split_sample(line)?;
    let mut labels = Labels::new();
    each_label(text, |k, v| {
        labels.insert(k.to_string(), v.into_owned());
    })?;
    Some((name, labels, value))
}

/// How the alerts read a family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// By pool (provider, account, pool, key), in this slot of [`PoolRow::values`].
    Pool(usize),
    /// By account: provider, account.
    Account,
    /// By account, each series with its `reason`.
    Reasons,
    /// By API key: provider, account, key.
    Key,
}

/// The pool families the alerts read, each a slot of [`PoolRow::values`]; the per-unit ones
/// take one slot per unit, in the order of [`UNITS`].
const POOL_FAMILIES: [&str; 11] = [
    "creditwatch_remaining_ratio",
    "creditwatch_exhausts_before_reset",
    "creditwatch_exhaustion_timestamp_seconds",
    "creditwatch_reset_timestamp_seconds",
    "creditwatch_period_start_timestamp_seconds",
    "creditwatch_remaining_credits",
    "creditwatch_remaining_usd",
    "creditwatch_limit_credits",
    "creditwatch_limit_usd",
    "creditwatch_projected_remaining_at_reset_credits",
    "creditwatch_projected_remaining_at_reset_usd",
];
const RATIO: usize = 0;
const EXHAUSTS: usize = 1;
const EXHAUSTION: usize = 2;
const RESET: usize = 3;
const PERIOD_START: usize = 4;
/// The first slot of a per-unit family; its units follow.
const REMAINING: usize = 5;
const LIMIT: usize = 7;
const PROJECTED: usize = 9;

/// The families the alerts read, and how. Every other family is skipped when an exposition is
/// read: at 10,000 accounts the burn rates, totals and key counters alone are most of it.
fn shape(name: &str) -> Option<Shape> {
    if let Some(slot) = POOL_FAMILIES.iter().position(|f| *f == name) {
        return Some(Shape::Pool(slot));
    }
    match name {
        "creditwatch_up"
        | "creditwatch_last_success_timestamp_seconds"
        | "creditwatch_account_info" => Some(Shape::Account),
        "creditwatch_scrape_errors_total" => Some(Shape::Reasons),
        "creditwatch_key_active" | "creditwatch_key_expiry_timestamp_seconds" => Some(Shape::Key),
        _ => None,
    }
}

/// Every value the alerts read of one pool: slot `i` of `values` holds
/// [`POOL_FAMILIES`]`[i]` when bit `i` of `present` is set.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct PoolRow {
    present: u16,
    values: [f64; POOL_FAMILIES.len()],
}

impl PoolRow {
    fn get(&self, slot: usize) -> Option<f64> {
        (self.present & (1 << slot) != 0).then_some(self.values[slot])
    }

    /// A per-unit family's value and its unit (the last unit present, as a later series of
    /// the same pool would overwrite an earlier one).
    fn in_unit(&self, first: usize) -> Option<(f64, &'static str)> {
        UNITS
            .iter()
            .enumerate()
            .rev()
            .find_map(|(i, u)| self.get(first + i).map(|v| (v, *u)))
    }
}

/// The exporter's series that the alerts read, indexed as they are looked up: by pool, by
/// account and by key. A label a series lacks reads as empty, as in PromQL.
#[derive(Debug, Default, PartialEq)]
pub struct Samples {
    /// Every label value kept, once each.
    symbols: HashSet<Sym>,
    /// One row per pool with every pool family's value: at 10,000 accounts a map per family
    /// (and a merged copy per unit) was 27 MiB of hash tables at each evaluation's peak.
    pools: HashMap<PoolKey, PoolRow>,
    accounts: HashMap<String, HashMap<AccountKey, f64>>,
    /// Each account's series with their `reason`, in exposition order.
    reasons: HashMap<String, HashMap<AccountKey, Vec<(Sym, f64)>>>,
    /// In exposition order.
    keys: HashMap<String, Vec<(KeyKey, f64)>>,
}

/// What a family without series reads as.
static NO_ACCOUNTS: LazyLock<HashMap<AccountKey, f64>> = LazyLock::new(HashMap::new);

fn intern(symbols: &mut HashSet<Sym>, v: &str) -> Sym {
    if let Some(s) = symbols.get(v) {
        return s.clone();
    }
    let s: Sym = v.into();
    symbols.insert(s.clone());
    s
}

fn get(l: &Labels, k: &str) -> String {
    l.get(k).cloned().unwrap_or_default()
}

impl Samples {
    /// Reads the series of an exposition in the text format, as Prometheus would scrape them.
    /// Comment lines are skipped; a line that does not parse is skipped too (the exporter never
    /// writes one).
    pub fn from_exposition(text: &str) -> Samples {
        let mut s = Samples::default();
        for line in text.lines() {
            s.add_line(line);
        }
        s
    }

    /// Reads the exporter's series as it writes them, chunk by chunk: neither the whole
    /// exposition (40 MiB at 10,000 accounts) nor the families no alert reads are ever held.
    /// The pools' table has room for `pools` pools from the start (the last evaluation's count,
    /// or 0), so it is allocated once instead of growing by doubling with the old and new
    /// tables both held at each step.
    pub fn from_exporter(exporter: &Exporter, pools: usize) -> Samples {
        let mut s = Samples {
            pools: HashMap::with_capacity(pools),
            ..Samples::default()
        };
        // What follows the last line end seen. Each chunk is whole UTF-8 text and, as written,
        // ends at a line end; only the first is relied on.
        let mut carry = String::new();
        exporter.stream(|chunk| {
            carry.push_str(&String::from_utf8_lossy(&chunk));
            let cut = carry.rfind('\n').map_or(0, |i| i + 1);
            for line in carry[..cut].lines() {
                s.add_line(line);
            }
            carry.drain(..cut);
            true
        });
        for line in carry.lines() {
            s.add_line(line);
        }
        s
    }

    fn add_line(&mut self, line: &str) {
        if line.is_empty() || line.starts_with('#') {
            return;
        }
        let Some((name, text, value)) = split_sample(line) else {
            return;
        };
        let Some(shape) = shape(name) else { return };
        let empty = intern(&mut self.symbols, "");
        let [mut provider, mut account, mut pool, mut key, mut reason] =
            std::array::from_fn(|_| empty.clone());
        let symbols = &mut self.symbols;
        let parsed = each_label(text, |k, v| {
            let slot = match k {
                "provider" => &mut provider,
                "account" => &mut account,
                "pool" => &mut pool,
                "key" => &mut key,
                "reason" => &mut reason,
                _ => return,
            };
            *slot = intern(symbols, &v);
        });
        if parsed.is_none() {
            return;
        }
        if let Shape::Pool(slot) = shape {
            let row = self
                .pools
                .entry((provider, account, pool, key))
                .or_default();
            row.present |= 1 << slot;
            row.values[slot] = value;
            return;
        }
        let name = name.to_string();
        match shape {
            Shape::Pool(_) => unreachable!("handled above"),
            Shape::Account => {
                let m = self.accounts.entry(name).or_default();
                m.insert((provider, account), value);
            }
            Shape::Reasons => {
                let m = self.reasons.entry(name).or_default();
                m.entry((provider, account))
                    .or_default()
                    .push((reason, value));
            }
            Shape::Key => {
                let v = self.keys.entry(name).or_default();
                v.push(((provider, account, key), value));
            }
        }
    }

    /// Adds one series (for tests). As when reading an exposition, a series of a family no
    /// alert reads is dropped.
    pub fn push(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        let mut line = name.to_string();
        if !labels.is_empty() {
            line.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    line.push(',');
                }
                line.push_str(k);
                line.push_str("=\"");
                for c in v.chars() {
                    match c {
                        '\\' => line.push_str("\\\\"),
                        '\n' => line.push_str("\\n"),
                        '"' => line.push_str("\\\""),
                        c => line.push(c),
                    }
                }
                line.push('"');
            }
            line.push('}');
        }
        line.push_str(&format!(" {value}"));
        self.add_line(&line);
    }

    /// How many pools have a value of any pool family.
    pub fn pool_count(&self) -> usize {
        self.pools.len()
    }

    /// One pool's values.
    fn pool(&self, p: &PoolKey) -> Option<&PoolRow> {
        self.pools.get(p)
    }

    /// Every pool for which `value` reads something from its row (with [`PoolRow::get`] or
    /// [`PoolRow::in_unit`]), with what it read, sorted by the pool's labels.
    fn sorted<T>(&self, value: impl Fn(&PoolRow) -> Option<T>) -> Vec<(&PoolKey, T)> {
        let mut v: Vec<(&PoolKey, T)> = self
            .pools
            .iter()
            .filter_map(|(k, row)| Some((k, value(row)?)))
            .collect();
        v.sort_by(|a, b| a.0.cmp(b.0));
        v
    }

    /// The pool families that have at least one series.
    #[cfg(test)]
    fn pool_families(&self) -> Vec<&'static str> {
        let seen = self.pools.values().fold(0, |m, r| m | r.present);
        (0..POOL_FAMILIES.len())
            .filter(|i| seen & (1 << i) != 0)
            .map(|i| POOL_FAMILIES[i])
            .collect()
    }

    /// A pool family's value of one pool (for tests).
    #[cfg(test)]
    fn pool_value(&self, name: &str, p: &PoolKey) -> Option<f64> {
        let Some(Shape::Pool(slot)) = shape(name) else {
            panic!("{name} is not a pool family")
        };
        self.pool(p)?.get(slot)
    }

    fn by_account(&self, name: &str) -> &HashMap<AccountKey, f64> {
        debug_assert_eq!(shape(name), Some(Shape::Account), "{name}");
        self.accounts.get(name).unwrap_or(&NO_ACCOUNTS)
    }

    fn accounts_in(&self, name: &str) -> BTreeSet<AccountKey> {
        match shape(name) {
            Some(Shape::Reasons) => self
                .reasons
                .get(name)
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default(),
            _ => self.by_account(name).keys().cloned().collect(),
        }
    }

    /// One account's series of a family with a `reason` label: `(reason, value)`.
    fn reasons(&self, name: &str, account: &AccountKey) -> &[(Sym, f64)] {
        debug_assert_eq!(shape(name), Some(Shape::Reasons), "{name}");
        self.reasons
            .get(name)
            .and_then(|m| m.get(account))
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// A family by API key, in exposition order.
    fn by_key(&self, name: &str) -> &[(KeyKey, f64)] {
        debug_assert_eq!(shape(name), Some(Shape::Key), "{name}");
        self.keys.get(name).map(Vec::as_slice).unwrap_or(&[])
    }
}

/// An alert whose condition holds now, with its labels, value and annotations.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub alert: AlertName,
    pub labels: Labels,
    pub value: f64,
    pub annotations: Labels,
}

/// One evaluation's result.
#[derive(Debug, Default)]
pub struct Evaluation {
    pub candidates: Vec<Candidate>,
    /// Accounts that are configured but have no successful poll since start: their pool and key
    /// alerts keep their state (unknown is not "resolved").
    pub held_pools: BTreeSet<AccountKey>,
    /// Accounts not polled yet since start: CreditwatchAccountDown keeps its state.
    pub held_accounts: BTreeSet<AccountKey>,
}

impl Evaluation {
    /// Whether an existing alert with these labels must keep its state this round.
    pub fn is_held(&self, alert: AlertName, labels: &Labels) -> bool {
        let key: AccountKey = (
            get(labels, "provider").into(),
            get(labels, "account").into(),
        );
        if alert.account_level() {
            self.held_accounts.contains(&key)
        } else {
            self.held_pools.contains(&key)
        }
    }
}

/// Formats like Prometheus's `humanize`: 4 significant digits with an SI prefix.
pub fn humanize(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let big = [
        ("", 1.0),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
    ];
    let small = [("m", 1e-3), ("u", 1e-6), ("n", 1e-9)];
    let a = v.abs();
    let (prefix, scale) = if a >= 1.0 {
        *big.iter().rev().find(|(_, s)| a >= *s).expect("a >= 1")
    } else {
        *small.iter().find(|(_, s)| a >= *s).unwrap_or(&("n", 1e-9))
    };
    format!("{}{prefix}", g4(v / scale))
}

/// `%.4g` without an exponent, trailing zeros trimmed.
fn g4(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let exp = v.abs().log10().floor() as i32;
    let decimals = (3 - exp).max(0) as usize;
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// A Unix time as `2026-11-21 12:00:00 UTC`.
pub fn timestamp(t: f64) -> String {
    DateTime::<Utc>::from_timestamp_millis((t * 1000.0).round() as i64)
        .map(|d| d.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| format!("{t}"))
}

/// A number of seconds like Prometheus's `humanizeDuration`: `2d 3h 4m 5s`.
pub fn duration(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    let (d, h, m, s) = (s / 86400, s / 3600 % 24, s / 60 % 60, s % 60);
    if d > 0 {
        format!("{d}d {h}h {m}m {s}s")
    } else if h > 0 {
        format!("{h}h {m}m {s}s")
    } else if m > 0 {
        format!("{m}m {s}s")
    } else {
        format!("{s}s")
    }
}

fn who(p: &PoolKey) -> String {
    let key = if p.3.is_empty() {
        String::new()
    } else {
        format!(", key {}", p.3)
    };
    format!("{} account {}, pool {}{key}", p.0, p.1, p.2)
}

fn pool_summary(p: &PoolKey, what: &str) -> String {
    let key = if p.3.is_empty() {
        String::new()
    } else {
        format!(" (key {})", p.3)
    };
    format!("{}: pool {}{key} {what}", p.1, p.2)
}

fn pool_labels(alert: AlertName, p: &PoolKey) -> Labels {
    let mut l = Labels::new();
    l.insert("alertname".into(), alert.as_str().into());
    l.insert("severity".into(), alert.severity().into());
    l.insert("provider".into(), p.0.to_string());
    l.insert("account".into(), p.1.to_string());
    l.insert("pool".into(), p.2.to_string());
    if !p.3.is_empty() {
        l.insert("key".into(), p.3.to_string());
    }
    l
}

fn annotations(summary: String, description: String, runbook: String) -> Labels {
    Labels::from([
        ("summary".to_string(), summary),
        ("description".to_string(), description),
        ("runbook_url".to_string(), runbook),
    ])
}

/// Evaluates every enabled alert at `now` (Unix seconds). `runbook_base` is the URL the
/// `/runbook` page is reached at.
pub fn evaluate(
    s: &Samples,
    now: f64,
    rules: &BTreeMap<AlertName, RuleConfig>,
    runbook_base: &str,
) -> Evaluation {
    let value = |p: &PoolKey, slot: usize| s.pool(p).and_then(|r| r.get(slot));
    let remaining = |p: &PoolKey| s.pool(p).and_then(|r| r.in_unit(REMAINING));
    let limit = |p: &PoolKey| s.pool(p).and_then(|r| r.in_unit(LIMIT));
    let projected = |p: &PoolKey| s.pool(p).and_then(|r| r.in_unit(PROJECTED));
    let reset = |p: &PoolKey| value(p, RESET);
    let last_success = s.by_account("creditwatch_last_success_timestamp_seconds");
    let up = s.by_account("creditwatch_up");

    let configured = s.accounts_in("creditwatch_scrape_errors_total");
    let with_data = s.accounts_in("creditwatch_account_info");
    let mut ev = Evaluation {
        held_pools: configured.difference(&with_data).cloned().collect(),
        held_accounts: configured
            .iter()
            .filter(|a| !up.contains_key(*a))
            .cloned()
            .collect(),
        ..Evaluation::default()
    };

    let runbook = |a: AlertName| format!("{runbook_base}/runbook#{}", a.as_str().to_lowercase());
    let account_of = |p: &PoolKey| (p.0.clone(), p.1.clone());
    let stale = |p: &PoolKey| {
        last_success
            .get(&account_of(p))
            .is_some_and(|t| now - t > STALE_AFTER)
    };
    let just_reset = |p: &PoolKey| value(p, PERIOD_START).is_some_and(|t| now - t < JUST_RESET);
    let enabled = |a: AlertName| rules.get(&a).filter(|r| r.enabled);
    let amount = |p: &PoolKey| {
        remaining(p)
            .map(|(v, u)| format!("{} {u}", humanize(v)))
            .unwrap_or_else(|| "unknown".into())
    };

    if let Some(rule) = enabled(AlertName::CreditsExhaustionBeforeReset) {
        let a = AlertName::CreditsExhaustionBeforeReset;
        let below = rule.ratio_below.unwrap_or(0.5);
        for (p, v) in s.sorted(|r| r.get(EXHAUSTS)) {
            let level = value(p, RATIO).is_none_or(|r| r < below);
            if v != 1.0 || !level || just_reset(p) || stale(p) {
                continue;
            }
            let burn = match (
                remaining(p),
                projected(p),
                reset(p),
                last_success.get(&account_of(p)),
            ) {
                (Some((r, _)), Some((pr, _)), Some(rs), Some(ls)) if rs > *ls => {
                    humanize(86400.0 * (r - pr) / (rs - ls))
                }
                _ => "an unknown amount".into(),
            };
            let mut d = format!(
                "{}: {} left, burning {burn} per day. At that rate it runs out ",
                who(p),
                amount(p)
            );
            match value(p, EXHAUSTION) {
                Some(t) => d.push_str(&format!("on {}", timestamp(t))),
                None => d.push_str("soon"),
            }
            if let Some(t) = reset(p) {
                d.push_str(&format!(", before it resets on {}", timestamp(t)));
            }
            if let Some((pr, _)) = projected(p) {
                d.push_str(&format!(" ({} short)", humanize(-pr)));
            }
            d.push_str(". Top up or raise the limit before then.");
            ev.candidates.push(Candidate {
                alert: a,
                labels: pool_labels(a, p),
                value: v,
                annotations: annotations(
                    pool_summary(p, "runs out before its reset"),
                    d,
                    runbook(a),
                ),
            });
        }
    }

    if let Some(rule) = enabled(AlertName::CreditsExhaustionImminent) {
        let a = AlertName::CreditsExhaustionImminent;
        let within = rule
            .within
            .unwrap_or(Duration::from_secs(86400))
            .as_secs_f64();
        for (p, t) in s.sorted(|r| r.get(EXHAUSTION)) {
            let left = t - now;
            let has_credits = remaining(p).is_some_and(|(r, _)| r > 0.0);
            let refill_first = reset(p).is_some_and(|r| r < t);
            if left >= within || !has_credits || refill_first || just_reset(p) || stale(p) {
                continue;
            }
            let burn = match (remaining(p), last_success.get(&account_of(p))) {
                (Some((r, _)), Some(ls)) if t > *ls => humanize(86400.0 * r / (t - ls)),
                _ => "an unknown amount".into(),
            };
            let mut d = format!(
                "{}: {} left, burning {burn} per day. At that rate it runs out on {} (in {})",
                who(p),
                amount(p),
                timestamp(t),
                duration(left)
            );
            if let Some(r) = reset(p) {
                d.push_str(&format!(", before it resets on {}", timestamp(r)));
            }
            d.push_str(". Top up or raise the limit now.");
            ev.candidates.push(Candidate {
                alert: a,
                labels: pool_labels(a, p),
                value: left,
                annotations: annotations(
                    pool_summary(p, &format!("runs out within {}", humanize_window(within))),
                    d,
                    runbook(a),
                ),
            });
        }
    }

    if let Some(rule) = enabled(AlertName::CreditsLow) {
        let a = AlertName::CreditsLow;
        let below = rule.ratio_below.unwrap_or(0.1);
        for (p, r) in s.sorted(|r| r.get(RATIO)) {
            if r >= below {
                continue;
            }
            let pct = |x: f64| format!("{}%", g4(x * 100.0));
            let mut d = format!("{}: {} left", who(p), amount(p));
            if let Some((l, _)) = limit(p) {
                d.push_str(&format!(" of {}", humanize(l)));
            }
            d.push_str(&format!(" ({})", pct(r)));
            if let Some(t) = reset(p) {
                d.push_str(&format!("; the pool resets on {}", timestamp(t)));
            }
            d.push('.');
            ev.candidates.push(Candidate {
                alert: a,
                labels: pool_labels(a, p),
                value: r,
                annotations: annotations(
                    pool_summary(p, &format!("is below {} ({} left)", pct(below), pct(r))),
                    d,
                    runbook(a),
                ),
            });
        }
    }

    if enabled(AlertName::CreditsExhausted).is_some() {
        let a = AlertName::CreditsExhausted;
        for (p, (r, _)) in s.sorted(|row| row.in_unit(REMAINING)) {
            if r > 0.0 {
                continue;
            }
            let mut d = format!(
                "{}: {} left; requests that need it are failing now",
                who(p),
                g4(r)
            );
            if let Some(t) = reset(p) {
                d.push_str(&format!(" until it resets on {}", timestamp(t)));
            }
            d.push('.');
            ev.candidates.push(Candidate {
                alert: a,
                labels: pool_labels(a, p),
                value: r,
                annotations: annotations(pool_summary(p, "is exhausted"), d, runbook(a)),
            });
        }
    }

    if let Some(rule) = enabled(AlertName::CreditwatchAccountDown) {
        let a = AlertName::CreditwatchAccountDown;
        let mut accounts: Vec<(&AccountKey, &f64)> = up.iter().collect();
        accounts.sort_by(|a, b| a.0.cmp(b.0));
        for ((provider, account), v) in accounts {
            if *v != 0.0 {
                continue;
            }
            let key = (provider.clone(), account.clone());
            let mut reasons: Vec<String> = s
                .reasons("creditwatch_scrape_errors_total", &key)
                .iter()
                .filter(|(_, v)| *v > 0.0)
                .map(|(reason, v)| format!("{reason} {}", humanize(*v)))
                .collect();
            reasons.sort();
            let mut d = format!(
                "Every poll of {provider} account {account} has failed for {}",
                duration(rule.for_.as_secs_f64())
            );
            if !reasons.is_empty() {
                d.push_str(&format!(
                    " (failures since start by reason: {})",
                    reasons.join(", ")
                ));
            }
            let last = last_success
                .get(&key)
                .map(|t| timestamp(*t))
                .unwrap_or_else(|| "never".into());
            d.push_str(&format!(
                ". Last successful poll: {last}. Its credits and forecasts are not being updated."
            ));
            let labels = Labels::from([
                ("alertname".to_string(), a.as_str().to_string()),
                ("severity".to_string(), a.severity().to_string()),
                ("provider".to_string(), provider.to_string()),
                ("account".to_string(), account.to_string()),
            ]);
            ev.candidates.push(Candidate {
                alert: a,
                labels,
                value: *v,
                annotations: annotations(
                    format!("{account}: creditwatch cannot poll the {provider} usage API"),
                    d,
                    runbook(a),
                ),
            });
        }
    }

    if let Some(rule) = enabled(AlertName::ApiKeyExpiringSoon) {
        let a = AlertName::ApiKeyExpiringSoon;
        let within = rule
            .within
            .unwrap_or(Duration::from_secs(7 * 86400))
            .as_secs_f64();
        let inactive: BTreeSet<&KeyKey> = s
            .by_key("creditwatch_key_active")
            .iter()
            .filter(|(_, v)| *v == 0.0)
            .map(|(k, _)| k)
            .collect();
        let mut keys: Vec<(&KeyKey, f64)> = s
            .by_key("creditwatch_key_expiry_timestamp_seconds")
            .iter()
            .map(|(k, v)| (k, *v))
            .collect();
        keys.sort_by(|x, y| x.0.cmp(y.0));
        for (k, t) in keys {
            let left = t - now;
            if left >= within || inactive.contains(k) {
                continue;
            }
            let (provider, account, key) = k;
            let when = if left > 0.0 {
                format!("expires in {}", duration(left))
            } else {
                "has expired".into()
            };
            let d = format!(
                "API key {key} of {provider} account {account} {when}, on {}. Rotate it before then.",
                timestamp(t)
            );
            let labels = Labels::from([
                ("alertname".to_string(), a.as_str().to_string()),
                ("severity".to_string(), a.severity().to_string()),
                ("provider".to_string(), provider.to_string()),
                ("account".to_string(), account.to_string()),
                ("key".to_string(), key.to_string()),
            ]);
            ev.candidates.push(Candidate {
                alert: a,
                labels,
                value: left,
                annotations: annotations(
                    format!(
                        "{account}: API key {key} expires within {}",
                        humanize_window(within)
                    ),
                    d,
                    runbook(a),
                ),
            });
        }
    }
    ev
}

/// A threshold window in words: `24 hours`, `7 days`, else humantime.
fn humanize_window(secs: f64) -> String {
    let s = secs.round() as u64;
    if s.is_multiple_of(86400) && s != 86400 {
        format!("{} days", s / 86400)
    } else if s.is_multiple_of(3600) {
        format!("{} hours", s / 3600)
    } else {
        humantime::format_duration(Duration::from_secs(s)).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> BTreeMap<AlertName, RuleConfig> {
        AlertName::ALL.iter().map(|a| (*a, a.defaults())).collect()
    }

    fn pool(account: &str, pool: &str) -> [(&'static str, String); 4] {
        [
            ("provider", "fluximage".into()),
            ("account", account.into()),
            ("pool", pool.into()),
            ("key", String::new()),
        ]
    }

    fn push(s: &mut Samples, name: &str, labels: &[(&'static str, String)], v: f64) {
        let l: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
        s.push(name, &l, v);
    }

    /// A state of `n` accounts, each with a pool whose forecast has burn rates, a key with an
    /// expiry, and failed polls.
    fn state(n: usize) -> Arc<crate::state::State> {
        use crate::forecast::Forecast;
        use crate::forecast::consumption::ConsumptionRule;
        use crate::forecast::schedule::Schedule;
        use crate::providers::{KeyInfo, PoolReading, Unit};
        use crate::state::{PoolState, Snapshot, State};
        let at = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let state = State::new();
        for i in 0..n {
            let name = format!("acct \"{i}\"");
            state.add_account(&name, "imagerouter", false);
            let pool = PoolState {
                reading: PoolReading {
                    pool: "key_spend".into(),
                    key: format!("key\\{i}"),
                    unit: Unit::Usd,
                    used: Some(1.0),
                    remaining: Some(i as f64 / 4.0),
                    limit: Some(10.0),
                    available: Some(true),
                    schedule: Schedule::Never,
                    rule: ConsumptionRule::Used,
                    cumulative: None,
                },
                consumed_total: 3.0,
                period: None,
                forecast: Forecast {
                    burn: vec![("1h".into(), 0.5), ("24h".into(), 0.25)],
                    exhaustion: Some(1_800_000_000.0 + i as f64),
                    ..Forecast::default()
                },
            };
            let key = KeyInfo {
                key: format!("key\\{i}"),
                active: i % 2 == 0,
                expires_at: Some(at),
                requests: 7.0,
                spent_usd: Some(1.5),
            };
            state.record_success(
                &name,
                0.1,
                Snapshot {
                    at,
                    plan: None,
                    pools: vec![pool],
                    keys: vec![key],
                    endpoints: Vec::new(),
                },
            );
            if i % 3 == 0 {
                state.record_failure(&name, 0.1, "http", "HTTP 503".into());
            }
        }
        state
    }

    #[test]
    fn the_exporter_read_in_chunks_gives_the_series_of_its_text() {
        let exporter = Exporter::new(state(2000));
        let mut chunks = 0;
        exporter.stream(|_| {
            chunks += 1;
            true
        });
        assert!(chunks > 3, "{chunks} chunks");
        let streamed = Samples::from_exporter(&exporter, 0);
        let text = exporter.render();
        assert_eq!(streamed, Samples::from_exposition(&text));
        // Escaped label values read back as written.
        let key: AccountKey = ("imagerouter".into(), "acct \"3\"".into());
        assert_eq!(
            streamed.reasons("creditwatch_scrape_errors_total", &key),
            [
                ("auth".into(), 0.0),
                ("connect".into(), 0.0),
                ("http".into(), 1.0),
                ("parse".into(), 0.0),
                ("rate_limited".into(), 0.0),
                ("timeout".into(), 0.0)
            ]
        );
        let pool: PoolKey = (
            "imagerouter".into(),
            "acct \"3\"".into(),
            "key_spend".into(),
            "key\\3".into(),
        );
        assert_eq!(
            streamed.pool_value("creditwatch_remaining_usd", &pool),
            Some(0.75)
        );
        assert_eq!(
            streamed.pool_value("creditwatch_remaining_ratio", &pool),
            Some(0.075)
        );
        assert_eq!(streamed.by_key("creditwatch_key_active").len(), 2000);
    }

    /// The per-unit slots hold their families in the order of `UNITS`, which `in_unit` relies on.
    #[test]
    fn per_unit_slots_follow_the_units() {
        for (first, prefix) in [
            (REMAINING, "creditwatch_remaining_"),
            (LIMIT, "creditwatch_limit_"),
            (PROJECTED, "creditwatch_projected_remaining_at_reset_"),
        ] {
            for (i, unit) in UNITS.iter().enumerate() {
                assert_eq!(POOL_FAMILIES[first + i], format!("{prefix}{unit}"));
            }
        }
        let row = PoolRow {
            present: 1 << REMAINING,
            values: [7.0; POOL_FAMILIES.len()],
        };
        assert_eq!(row.in_unit(REMAINING), Some((7.0, "credits")));
        assert_eq!(row.in_unit(LIMIT), None);
    }

    #[test]
    fn only_the_families_the_alerts_read_are_kept_and_label_values_are_shared() {
        let s = Samples::from_exporter(&Exporter::new(state(3)), 0);
        let mut kept: Vec<&str> = s
            .pool_families()
            .into_iter()
            .chain(s.accounts.keys().map(String::as_str))
            .chain(s.reasons.keys().map(String::as_str))
            .chain(s.keys.keys().map(String::as_str))
            .collect();
        kept.sort();
        assert_eq!(
            kept,
            [
                "creditwatch_account_info",
                "creditwatch_exhaustion_timestamp_seconds",
                "creditwatch_key_active",
                "creditwatch_key_expiry_timestamp_seconds",
                "creditwatch_last_success_timestamp_seconds",
                "creditwatch_limit_usd",
                "creditwatch_remaining_ratio",
                "creditwatch_remaining_usd",
                "creditwatch_scrape_errors_total",
                "creditwatch_up",
            ]
        );
        // One copy of each account's name, whichever family it is read from.
        let (up, _) = s
            .by_account("creditwatch_up")
            .iter()
            .find(|((_, a), _)| &**a == "acct \"1\"")
            .unwrap();
        let (pool, _) = s
            .sorted(|r| r.get(REMAINING + 1))
            .into_iter()
            .find(|((_, a, _, _), _)| &**a == "acct \"1\"")
            .unwrap();
        assert!(Arc::ptr_eq(&up.1, &pool.1));
    }

    /// The first scenario of alerts/tests/creditwatch.rules.test.yml, evaluated at 4200s: only
    /// images/ai alerts, with the same numbers in its description.
    #[test]
    fn before_reset_matches_the_shipped_rule_and_its_exclusions() {
        let mut s = Samples::default();
        for (account, last) in [("images", 4200.0), ("fresh", 4200.0), ("stale", 0.0)] {
            let acc = [
                ("provider", "fluximage".to_string()),
                ("account", account.to_string()),
            ];
            push(
                &mut s,
                "creditwatch_last_success_timestamp_seconds",
                &acc,
                last,
            );
        }
        let ai = pool("images", "ai");
        push(&mut s, "creditwatch_remaining_credits", &ai, 400.0);
        push(&mut s, "creditwatch_limit_credits", &ai, 1000.0);
        push(&mut s, "creditwatch_remaining_ratio", &ai, 0.4);
        push(
            &mut s,
            "creditwatch_projected_remaining_at_reset_credits",
            &ai,
            -200.0,
        );
        push(&mut s, "creditwatch_exhausts_before_reset", &ai, 1.0);
        push(
            &mut s,
            "creditwatch_exhaustion_timestamp_seconds",
            &ai,
            465_000.0,
        );
        push(
            &mut s,
            "creditwatch_reset_timestamp_seconds",
            &ai,
            695_400.0,
        );
        push(
            &mut s,
            "creditwatch_period_start_timestamp_seconds",
            &ai,
            -1_896_000.0,
        );
        for (account, p, ratio, start) in [
            ("images", "rich", 0.8, -1_896_000.0),
            ("fresh", "ai", 0.3, 3000.0),
            ("stale", "ai", 0.3, -1_896_000.0),
        ] {
            let l = pool(account, p);
            push(&mut s, "creditwatch_remaining_ratio", &l, ratio);
            push(&mut s, "creditwatch_exhausts_before_reset", &l, 1.0);
            push(
                &mut s,
                "creditwatch_period_start_timestamp_seconds",
                &l,
                start,
            );
        }
        let ev = evaluate(&s, 4200.0, &rules(), "http://cw:9477");
        let got: Vec<(AlertName, &str, &str)> = ev
            .candidates
            .iter()
            .map(|c| {
                (
                    c.alert,
                    c.labels["account"].as_str(),
                    c.labels["pool"].as_str(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [(AlertName::CreditsExhaustionBeforeReset, "images", "ai")]
        );
        let c = &ev.candidates[0];
        assert_eq!(
            c.annotations["summary"],
            "images: pool ai runs out before its reset"
        );
        assert_eq!(
            c.annotations["description"],
            "fluximage account images, pool ai: 400 credits left, burning 75 per day. At that rate it runs out on 1970-01-06 09:10:00 UTC, before it resets on 1970-01-09 01:10:00 UTC (200 short). Top up or raise the limit before then."
        );
        assert_eq!(
            c.annotations["runbook_url"],
            "http://cw:9477/runbook#creditsexhaustionbeforereset"
        );
    }

    /// The Imminent scenario of the promtool tests at 1800s: a resetting pool and a USD balance
    /// fire; a refill first, a far exhaustion and an empty pool do not.
    #[test]
    fn imminent_matches_the_shipped_rule() {
        let mut s = Samples::default();
        for (provider, account) in [("fluximage", "images"), ("imagerouter", "router")] {
            let acc = [
                ("provider", provider.to_string()),
                ("account", account.to_string()),
            ];
            push(
                &mut s,
                "creditwatch_last_success_timestamp_seconds",
                &acc,
                1200.0,
            );
        }
        for (p, remaining, exhaustion, reset) in [
            ("burst", 50.0, 44_400.0, Some(691_200.0)),
            ("refill", 50.0, 44_400.0, Some(10_000.0)),
            ("far", 300.0, 260_400.0, None),
            ("empty", 0.0, 1200.0, None),
        ] {
            let l = pool("images", p);
            push(&mut s, "creditwatch_remaining_credits", &l, remaining);
            push(
                &mut s,
                "creditwatch_exhaustion_timestamp_seconds",
                &l,
                exhaustion,
            );
            if let Some(r) = reset {
                push(&mut s, "creditwatch_reset_timestamp_seconds", &l, r);
                push(
                    &mut s,
                    "creditwatch_period_start_timestamp_seconds",
                    &l,
                    -1_900_800.0,
                );
            }
        }
        let b = [
            ("provider", "imagerouter".to_string()),
            ("account", "router".to_string()),
            ("pool", "balance".to_string()),
            ("key", String::new()),
        ];
        push(&mut s, "creditwatch_remaining_usd", &b, 20.0);
        push(
            &mut s,
            "creditwatch_exhaustion_timestamp_seconds",
            &b,
            8400.0,
        );
        let ev = evaluate(&s, 1800.0, &rules(), "");
        let imminent: Vec<&Candidate> = ev
            .candidates
            .iter()
            .filter(|c| c.alert == AlertName::CreditsExhaustionImminent)
            .collect();
        let descriptions: Vec<&str> = imminent
            .iter()
            .map(|c| c.annotations["description"].as_str())
            .collect();
        assert_eq!(
            descriptions,
            [
                "fluximage account images, pool burst: 50 credits left, burning 100 per day. At that rate it runs out on 1970-01-01 12:20:00 UTC (in 11h 50m 0s), before it resets on 1970-01-09 00:00:00 UTC. Top up or raise the limit now.",
                "imagerouter account router, pool balance: 20 usd left, burning 240 per day. At that rate it runs out on 1970-01-01 02:20:00 UTC (in 1h 50m 0s). Top up or raise the limit now.",
            ]
        );
        assert_eq!(imminent[0].labels["severity"], "critical");
    }

    #[test]
    fn key_expiry_skips_inactive_and_distant_keys() {
        let mut s = Samples::default();
        let key = |k: &str| {
            [
                ("provider", "imagerouter".to_string()),
                ("account", "router".to_string()),
                ("key", k.to_string()),
            ]
        };
        push(
            &mut s,
            "creditwatch_key_expiry_timestamp_seconds",
            &key("batch"),
            259_200.0,
        );
        push(&mut s, "creditwatch_key_active", &key("batch"), 1.0);
        push(
            &mut s,
            "creditwatch_key_expiry_timestamp_seconds",
            &key("retired"),
            259_200.0,
        );
        push(&mut s, "creditwatch_key_active", &key("retired"), 0.0);
        push(
            &mut s,
            "creditwatch_key_expiry_timestamp_seconds",
            &key("fresh"),
            2_592_000.0,
        );
        let ev = evaluate(&s, 3660.0, &rules(), "");
        assert_eq!(ev.candidates.len(), 1);
        let c = &ev.candidates[0];
        assert_eq!(c.labels["key"], "batch");
        assert_eq!(
            c.annotations["summary"],
            "router: API key batch expires within 7 days"
        );
        assert_eq!(
            c.annotations["description"],
            "API key batch of imagerouter account router expires in 2d 22h 59m 0s, on 1970-01-04 00:00:00 UTC. Rotate it before then."
        );
    }

    #[test]
    fn humanize_like_prometheus() {
        assert_eq!(humanize(1080.0), "1.08k");
        assert_eq!(humanize(432_000.0), "432k");
        assert_eq!(humanize(75.0), "75");
        assert_eq!(humanize(0.5), "500m");
        assert_eq!(humanize(0.0), "0");
        assert_eq!(duration(42_600.0), "11h 50m 0s");
    }
}
