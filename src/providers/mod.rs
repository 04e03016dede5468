//! Providers: the closed set of account kinds, what a poll returns, and how a poll fails.
//!
//! A provider turns one upstream response into a [`Reading`]: pools with their used, remaining and
//! limit values and their reset schedule. It never touches metrics, the store or the clock; the
//! core turns readings into samples, forecasts and series. Adding a provider means one new file
//! here, one variant in [`ProviderSettings`], and one fixture test.

pub mod floow;
pub mod fluximage;
pub mod fluxrouter;
pub mod http_json;
pub mod imagerouter;

use crate::config::{AccountConfig, EnvLookup, Tracked, deserialize_tracking};
use crate::forecast::consumption::ConsumptionRule;
use crate::forecast::schedule::Schedule;
use crate::http::HttpClient;
use crate::proxy::Meter;
use crate::secret::Secret;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use std::path::Path;
use std::time::Duration;
use toml::Spanned;
use toml::de::DeValue;

/// The unit a pool is counted in; each metric family carries one unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unit {
    Credits,
    Usd,
}

impl Unit {
    pub fn as_str(self) -> &'static str {
        match self {
            Unit::Credits => "credits",
            Unit::Usd => "usd",
        }
    }

    pub const ALL: [Unit; 2] = [Unit::Credits, Unit::Usd];
}

/// Everything one successful poll of an account returned.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Reading {
    /// The plan name, where the provider reports one (`creditwatch_account_info{plan}`).
    pub plan: Option<String>,
    pub pools: Vec<PoolReading>,
    /// The account's API keys, where the provider lists them (ImageRouter).
    pub keys: Vec<KeyInfo>,
    /// Usage by endpoint over the provider's lookback window (Floow).
    pub endpoints: Vec<EndpointUsage>,
    /// Consumption the provider reports for the past (Floow's daily series), by pool.
    pub history: Vec<PoolHistory>,
}

/// One API key of an account.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyInfo {
    /// The key's name, made unique within the account (the `key` label).
    pub key: String,
    pub active: bool,
    /// When the provider rejects the key automatically; `None` when it never expires.
    pub expires_at: Option<DateTime<Utc>>,
    /// Requests made with the key, all time.
    pub requests: f64,
    /// USD spent with the key, all time.
    pub spent_usd: Option<f64>,
}

/// Calls and credits of one endpoint over the provider's lookback window.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointUsage {
    /// The provider's internal action name.
    pub endpoint: String,
    /// Its display label.
    pub label: String,
    pub calls: f64,
    pub credits: f64,
}

/// Past consumption of one pool, as the provider reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolHistory {
    pub pool: String,
    pub key: String,
    /// Sorted by time, all before the reading.
    pub samples: Vec<PastSample>,
}

/// The state of a pool at a past instant, reconstructed from provider-reported history.
///
/// Cumulative consumption is not known in absolute terms, only relative to the reading, so a
/// past sample carries what was consumed between it and the reading; the core anchors that to
/// the pool's running total.
#[derive(Debug, Clone, PartialEq)]
pub struct PastSample {
    pub at: DateTime<Utc>,
    /// Consumed between `at` and the reading.
    pub consumed_after: f64,
    pub used: Option<f64>,
    pub remaining: Option<f64>,
    pub limit: Option<f64>,
}

/// One balance that can run out, as the provider reports it now.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolReading {
    /// Pool name (`compression`, `ai`, `balance`, ...).
    pub pool: String,
    /// API key name for per-key pools; empty for account-level pools.
    pub key: String,
    pub unit: Unit,
    /// Consumed in the current period, as the provider counts it.
    pub used: Option<f64>,
    /// Left now; `None` when unlimited or unknown.
    pub remaining: Option<f64>,
    /// Allocation for the current period; `None` when there is none.
    pub limit: Option<f64>,
    /// Whether the provider says the pool can be used now.
    pub available: Option<bool>,
    /// When the pool resets.
    pub schedule: Schedule,
    /// How consumption is read from successive readings of this pool.
    pub rule: ConsumptionRule,
    /// The exact running total of consumption, for providers that count it themselves (the
    /// fluxrouter proxy's ledger); `consumed_total` then follows it instead of `rule`.
    pub cumulative: Option<f64>,
}

impl PoolReading {
    /// A pool with no remaining and no limit has nothing to run out of.
    pub fn is_unlimited(&self) -> bool {
        self.remaining.is_none() && self.limit.is_none()
    }
}

/// Why a poll failed. Each variant maps to one `reason` label of `creditwatch_scrape_errors_total`.
/// Messages never contain a secret or a URL with credentials.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PollError {
    #[error("authentication rejected (HTTP {status}){}", detail_suffix(.detail))]
    Auth { status: u16, detail: Option<String> },
    #[error("upstream answered HTTP {status}{}", detail_suffix(.detail))]
    Http { status: u16, detail: Option<String> },
    #[error("no response within {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("rate limited (HTTP 429){}{}", .retry_after.map(|d| format!(", retry after {}", humantime::format_duration(d))).unwrap_or_default(), detail_suffix(.detail))]
    RateLimited {
        retry_after: Option<Duration>,
        detail: Option<String>,
    },
    #[error("invalid response: {0}")]
    Parse(String),
}

fn detail_suffix(d: &Option<String>) -> String {
    d.as_ref().map(|d| format!(": {d}")).unwrap_or_default()
}

/// The `reason` label values, in exposition order.
pub const ERROR_REASONS: [&str; 6] = [
    "auth",
    "connect",
    "http",
    "parse",
    "rate_limited",
    "timeout",
];

impl PollError {
    pub fn reason(&self) -> &'static str {
        match self {
            PollError::Auth { .. } => "auth",
            PollError::Http { .. } => "http",
            PollError::Timeout(_) => "timeout",
            PollError::Connect(_) => "connect",
            PollError::RateLimited { .. } => "rate_limited",
            PollError::Parse(_) => "parse",
        }
    }

    pub fn parse(msg: impl Into<String>) -> Self {
        PollError::Parse(msg.into())
    }
}

/// Whether an account of this provider needs an API key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyNeed {
    Required,
    Optional,
    None,
}

/// What a poll may use: the shared HTTP client, the account's config, the time of the poll, and
/// the account's proxy meter for providers that meter traffic themselves.
pub struct PollContext<'a> {
    pub http: &'a HttpClient,
    pub account: &'a AccountConfig,
    pub now: DateTime<Utc>,
    pub meter: Option<&'a Meter>,
}

/// Each provider's own settings (the provider keys of an `[[account]]`); one variant per provider.
/// The large ones are boxed: every account's config holds this enum, and it is as large as its
/// largest variant.
#[derive(Debug, Clone, PartialEq)]
pub enum ProviderSettings {
    Fluximage(fluximage::Settings),
    Fluxrouter(Box<fluxrouter::Settings>),
    Imagerouter(imagerouter::Settings),
    Floow(floow::Settings),
    HttpJson(Box<http_json::Settings>),
}

impl ProviderSettings {
    /// Provider names accepted in `provider = "..."`.
    pub const NAMES: &'static [&'static str] = &[
        "fluximage",
        "imagerouter",
        "floow",
        "fluxrouter",
        "http_json",
    ];

    /// Deserializes the provider's own keys from an account table. `None` for an unknown
    /// provider; otherwise the settings (or a located type error) and the keys it did not use.
    pub(crate) fn from_toml(name: &str, value: Spanned<DeValue<'_>>) -> Option<Tracked<Self>> {
        fn wrap<T>(
            (r, ignored): Tracked<T>,
            f: fn(T) -> ProviderSettings,
        ) -> Tracked<ProviderSettings> {
            (r.map(f), ignored)
        }
        Some(match name {
            "fluximage" => wrap(deserialize_tracking(value), ProviderSettings::Fluximage),
            "fluxrouter" => wrap(deserialize_tracking(value), |s| {
                ProviderSettings::Fluxrouter(Box::new(s))
            }),
            "imagerouter" => wrap(deserialize_tracking(value), ProviderSettings::Imagerouter),
            "floow" => wrap(deserialize_tracking(value), ProviderSettings::Floow),
            "http_json" => wrap(deserialize_tracking(value), |s| {
                ProviderSettings::HttpJson(Box::new(s))
            }),
            _ => return None,
        })
    }

    /// The `provider` label value.
    pub fn name(&self) -> &'static str {
        match self {
            ProviderSettings::Fluximage(_) => "fluximage",
            ProviderSettings::Fluxrouter(_) => "fluxrouter",
            ProviderSettings::Imagerouter(_) => "imagerouter",
            ProviderSettings::Floow(_) => "floow",
            ProviderSettings::HttpJson(_) => "http_json",
        }
    }

    pub fn key_need(&self) -> KeyNeed {
        match self {
            ProviderSettings::Fluximage(_) => KeyNeed::Required,
            ProviderSettings::Fluxrouter(s) => s.key_need(),
            ProviderSettings::Imagerouter(_) => KeyNeed::Required,
            ProviderSettings::Floow(_) => KeyNeed::Required,
            // Many JSON endpoints authenticate with their own headers, or not at all.
            ProviderSettings::HttpJson(_) => KeyNeed::Optional,
        }
    }

    /// Resolves secrets the provider's own settings refer to (http_json header values read
    /// from the environment or a file). Each message names what to fix.
    pub fn resolve_secrets(&mut self, env: EnvLookup<'_>, base_dir: &Path) -> Vec<String> {
        match self {
            ProviderSettings::HttpJson(s) => s.resolve_secrets(env, base_dir),
            _ => Vec::new(),
        }
    }

    /// Provider-specific checks of a parsed account; each message names what to fix.
    pub fn validate(&self, account: &AccountConfig) -> Vec<String> {
        match self {
            ProviderSettings::Fluximage(s) => s.validate(account),
            ProviderSettings::Fluxrouter(s) => s.validate(account),
            ProviderSettings::Imagerouter(s) => s.validate(account),
            ProviderSettings::Floow(s) => s.validate(account),
            ProviderSettings::HttpJson(s) => s.validate(account),
        }
    }

    /// Things worth telling the operator about a valid account.
    pub fn warnings(&self, account: &AccountConfig) -> Vec<String> {
        match self {
            ProviderSettings::Floow(s) => s.warnings(account),
            _ => Vec::new(),
        }
    }

    /// Secrets held in the provider's own settings (http_json header values).
    pub fn secrets(&self) -> Vec<&Secret> {
        match self {
            ProviderSettings::HttpJson(s) => s.secrets().collect(),
            _ => Vec::new(),
        }
    }

    /// Polls the upstream once.
    pub async fn poll(&self, ctx: &PollContext<'_>) -> Result<Reading, PollError> {
        match self {
            ProviderSettings::Fluximage(s) => s.poll(ctx).await,
            ProviderSettings::Imagerouter(s) => s.poll(ctx).await,
            ProviderSettings::Floow(s) => s.poll(ctx).await,
            ProviderSettings::HttpJson(s) => s.poll(ctx).await,
            ProviderSettings::Fluxrouter(s) => s.poll(ctx).await,
        }
    }

    /// The metering proxy this account runs, if its provider has one.
    pub fn proxy(&self) -> Option<&fluxrouter::Settings> {
        match self {
            ProviderSettings::Fluxrouter(s) => Some(s),
            _ => None,
        }
    }
}

/// Checks a count read from a payload: finite, not negative and not absurdly large, so a hostile
/// or broken upstream can never become a wrong number on a dashboard.
pub fn checked_amount(field: impl std::fmt::Display, v: f64) -> Result<f64, PollError> {
    const MAX: f64 = MAX_AMOUNT;
    if !v.is_finite() {
        return Err(PollError::parse(format!(
            "field `{field}` is not a finite number"
        )));
    }
    if v < 0.0 {
        return Err(PollError::parse(format!(
            "field `{field}` is negative ({v})"
        )));
    }
    if v > MAX {
        return Err(PollError::parse(format!(
            "field `{field}` is implausibly large ({v:e})"
        )));
    }
    Ok(v)
}

/// Parses a money amount sent as a decimal string (`"25.5000"`) exactly. Only plain decimal
/// notation is accepted: `NaN`, `inf`, exponents, signs, separators and empty strings are refused
/// with the field named, so they can never become a value.
pub fn parse_decimal(field: impl std::fmt::Display, s: &str) -> Result<Decimal, PollError> {
    let bad = |why: &str| {
        PollError::parse(format!(
            "field `{field}` is {why} ({:?}); expected a decimal string like \"25.5000\"",
            crate::http::sanitize(s)
        ))
    };
    if let Some(rest) = s.strip_prefix('-')
        && is_plain_decimal(rest)
    {
        return Err(bad("negative"));
    }
    if !is_plain_decimal(s) {
        return Err(bad("not a decimal number"));
    }
    let d = Decimal::from_str_exact(s).map_err(|_| bad("out of range"))?;
    checked_amount(&field, decimal_to_f64(d))?;
    Ok(d)
}

/// `digits[.digits]`, nothing else.
fn is_plain_decimal(s: &str) -> bool {
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (s, None),
    };
    let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    digits(int) && frac.is_none_or(digits)
}

/// The f64 nearest to a decimal, so "4.2000" exports exactly as 4.2 does.
pub fn decimal_to_f64(d: Decimal) -> f64 {
    // Exact in both: one correctly rounded division gives the nearest f64 (the fast path of
    // decimal-to-binary conversion). Amounts nearly always get here.
    const EXACT: [f64; 23] = [
        1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
        1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
    ];
    let m = d.mantissa();
    if m.unsigned_abs() < 1 << 53
        && let Some(p) = EXACT.get(d.scale() as usize)
    {
        return m as f64 / p;
    }
    // Otherwise through the decimal's text, which parses correctly rounded; written on the
    // stack, since a 10,000-key body has tens of thousands of amounts.
    struct Buf([u8; 64], usize);
    impl std::fmt::Write for Buf {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            let end = self.1 + s.len();
            self.0
                .get_mut(self.1..end)
                .ok_or(std::fmt::Error)?
                .copy_from_slice(s.as_bytes());
            self.1 = end;
            Ok(())
        }
    }
    let mut buf = Buf([0; 64], 0);
    let text = match std::fmt::write(&mut buf, format_args!("{}", d.normalize())) {
        Ok(()) => std::str::from_utf8(&buf.0[..buf.1]).ok(),
        Err(_) => None,
    };
    match text {
        Some(t) => t.parse(),
        // Longer than any decimal's text; kept correct all the same.
        None => d.normalize().to_string().parse(),
    }
    .expect("a decimal's text is a valid f64")
}

/// Deserializes a JSON body, naming the field in the error (`field \`x\`: invalid type ...`).
///
/// Deeply nested JSON cannot exhaust the stack: fields the target type does not use are skipped
/// without recursion, and serde_json refuses more than 128 levels where it does recurse.
pub fn parse_json<'de, T: serde::Deserialize<'de>>(body: &'de [u8]) -> Result<T, PollError> {
    // Tracking the path costs as much as the parse itself: only a body that fails is parsed
    // again to name the field.
    // Checked as UTF-8 once, with the standard library's fast path for ASCII, rather than string
    // by string as `from_slice` does. A body that is not UTF-8 gets `from_slice`'s error below.
    if let Ok(text) = std::str::from_utf8(body)
        && let Ok(v) = serde_json::from_str(text)
    {
        return Ok(v);
    }
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            let at = if path == "." || path.contains('?') {
                String::new()
            } else {
                format!(" at field `{path}`")
            };
            PollError::parse(format!("body is not valid JSON{at} ({inner})"))
        } else if path == "." {
            PollError::parse(inner.to_string())
        } else {
            PollError::parse(format!("field `{path}`: {inner}"))
        }
    })
}

/// Longest label value taken from an upstream (plan and key names); longer ones are cut.
pub const MAX_LABEL_CHARS: usize = 128;
/// Largest magnitude accepted for an amount: beyond this a number is a bug, not a balance.
pub const MAX_AMOUNT: f64 = 1e15;

/// A label value from an upstream: control characters become spaces, surrounding space is
/// trimmed and the length is bounded, so a hostile upstream cannot bloat or garble `/metrics`.
pub fn label_value(s: &str) -> String {
    let cleaned: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    cleaned.trim().chars().take(MAX_LABEL_CHARS).collect()
}

/// [`label_value`] in place, copying only when something changes: nearly every value from an
/// upstream is clean already, and a reading may hold tens of thousands.
fn clean_label(s: &mut String) {
    let clean =
        s.len() <= MAX_LABEL_CHARS && !s.chars().any(char::is_control) && s.trim().len() == s.len();
    if !clean {
        *s = label_value(s);
    }
}

/// Whether no item repeats. Label values nearly always are distinct, and then [`unique`] (or a
/// provider's own naming of repeats) would change nothing: checked on borrowed values.
fn distinct<T: Eq + std::hash::Hash>(mut items: impl Iterator<Item = T>) -> bool {
    let mut seen = std::collections::HashSet::with_capacity(items.size_hint().0);
    items.all(|it| seen.insert(it))
}

/// A plausible amount: finite and within [`MAX_AMOUNT`].
fn plausible(v: f64) -> bool {
    v.is_finite() && v.abs() <= MAX_AMOUNT
}

/// `v` made unique among `seen` by a ` #2`, ` #3`, ... suffix.
///
/// A hash set: a reading can hold tens of thousands of keys sharing long prefixes, which made an
/// ordered set's comparisons a fifth of a 10,000-key poll.
fn unique(
    seen: &mut std::collections::HashSet<(String, String)>,
    scope: &str,
    v: String,
) -> String {
    let mut out = v.clone();
    let mut n = 1;
    while !seen.insert((scope.to_string(), out.clone())) {
        n += 1;
        out = format!("{v} #{n}");
    }
    out
}

impl Reading {
    /// Replaces any secret an upstream echoed into a label value (see [`Secret::redact`]).
    pub fn redact(&mut self, secrets: &[&Secret]) {
        if secrets.is_empty() {
            return;
        }
        if let Some(p) = &mut self.plan {
            Secret::scrub(p, secrets);
        }
        for p in &mut self.pools {
            Secret::scrub(&mut p.key, secrets);
        }
        for k in &mut self.keys {
            Secret::scrub(&mut k.key, secrets);
        }
        for e in &mut self.endpoints {
            Secret::scrub(&mut e.label, secrets);
        }
    }

    /// The core's own check of what a provider returned, whatever the provider: every amount is
    /// a finite number within [`MAX_AMOUNT`], label values are cleaned by [`label_value`], and no
    /// two series share their labels (a repeat gets a ` #2`, ` #3` suffix), so the exposition
    /// stays valid whatever the upstream sent.
    pub fn checked(mut self) -> Result<Reading, PollError> {
        let bad = |what: String, field: &str, v: f64| {
            PollError::parse(format!("{what}: {field} is not a plausible amount ({v:e})"))
        };
        self.plan = self.plan.as_deref().map(label_value);
        for p in &mut self.pools {
            // Named only when something is wrong: a reading may hold thousands of pools.
            let what = || {
                if p.key.is_empty() {
                    format!("pool `{}`", label_value(&p.pool))
                } else {
                    format!(
                        "pool `{}` key `{}`",
                        label_value(&p.pool),
                        label_value(&p.key)
                    )
                }
            };
            for (field, v) in [
                ("used", p.used),
                ("remaining", p.remaining),
                ("limit", p.limit),
                ("cumulative", p.cumulative),
            ] {
                if let Some(v) = v
                    && !plausible(v)
                {
                    return Err(bad(what(), field, v));
                }
            }
            clean_label(&mut p.pool);
            clean_label(&mut p.key);
        }
        if !distinct(self.pools.iter().map(|p| (p.pool.as_str(), p.key.as_str()))) {
            let mut seen = std::collections::HashSet::new();
            for p in &mut self.pools {
                p.key = unique(&mut seen, &p.pool, std::mem::take(&mut p.key));
            }
        }
        for k in &mut self.keys {
            let what = || format!("key `{}`", label_value(&k.key));
            for (field, v) in [("requests", Some(k.requests)), ("spent", k.spent_usd)] {
                if let Some(v) = v
                    && !plausible(v)
                {
                    return Err(bad(what(), field, v));
                }
            }
            clean_label(&mut k.key);
        }
        if !distinct(self.keys.iter().map(|k| ("", k.key.as_str()))) {
            let mut seen = std::collections::HashSet::new();
            for k in &mut self.keys {
                k.key = unique(&mut seen, "", std::mem::take(&mut k.key));
            }
        }
        for e in &mut self.endpoints {
            let what = || format!("endpoint `{}`", label_value(&e.endpoint));
            for (field, v) in [("calls", e.calls), ("credits", e.credits)] {
                if !plausible(v) {
                    return Err(bad(what(), field, v));
                }
            }
            clean_label(&mut e.endpoint);
            clean_label(&mut e.label);
        }
        if !distinct(
            self.endpoints
                .iter()
                .map(|e| (e.endpoint.as_str(), e.label.as_str())),
        ) {
            let mut seen = std::collections::HashSet::new();
            for e in &mut self.endpoints {
                e.label = unique(&mut seen, &e.endpoint, std::mem::take(&mut e.label));
            }
        }
        for h in &self.history {
            for s in &h.samples {
                let what = || format!("history of pool `{}`", label_value(&h.pool));
                for (field, v) in [
                    ("consumed", Some(s.consumed_after)),
                    ("used", s.used),
                    ("remaining", s.remaining),
                    ("limit", s.limit),
                ] {
                    if let Some(v) = v
                        && !plausible(v)
                    {
                        return Err(bad(what(), field, v));
                    }
                }
            }
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forecast::schedule::Schedule;

    /// A decimal becomes the f64 nearest to its value: the one its text parses to, down to the
    /// widest decimals (28 fractional digits) and the largest.
    #[test]
    fn decimals_become_the_nearest_f64() {
        for text in [
            "0",
            "25.5000",
            "0.1",
            "1234567.89",
            "0.1000000000000000000000000001",
            "7922816251426433759354395033.5",
            "79228162514264337593543950335",
        ] {
            let d = Decimal::from_str_exact(text).unwrap();
            assert_eq!(decimal_to_f64(d), text.parse::<f64>().unwrap(), "{text}");
        }
        // Either side of the division's limits (2^53, 10^22), and many in between.
        let mut seed: u64 = 11;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            seed
        };
        let edges = [
            0,
            1,
            9_007_199_254_740_991,
            9_007_199_254_740_992,
            u64::MAX >> 1,
        ];
        for i in 0..200_000u64 {
            let r = next();
            let m = match edges.get(i as usize % 50) {
                Some(&e) => e as i64,
                None => (r >> (r % 40)) as i64 >> 1,
            };
            let m = if next() % 2 == 0 { m } else { -m };
            let scale = (next() % 29) as u32;
            let d = Decimal::new(m, scale);
            let text = d.to_string();
            assert_eq!(decimal_to_f64(d), text.parse::<f64>().unwrap(), "{text}");
        }
    }

    fn pool(key: &str, used: f64) -> PoolReading {
        PoolReading {
            pool: "balance".into(),
            key: key.into(),
            unit: Unit::Usd,
            used: Some(used),
            remaining: Some(1.0),
            limit: None,
            available: None,
            schedule: Schedule::Never,
            rule: ConsumptionRule::Used,
            cumulative: None,
        }
    }

    #[test]
    fn cleaning_in_place_gives_label_value() {
        let x = |n| "x".repeat(n);
        for text in [
            String::new(),
            " ".into(),
            "abc".into(),
            " abc".into(),
            "abc\t".into(),
            "a\u{7}b".into(),
            "\u{85}a".into(),
            x(128),
            x(129),
            x(127) + " ",
            "é".repeat(64),
            "é".repeat(65),
            "é".repeat(200),
        ] {
            let mut cleaned = text.clone();
            clean_label(&mut cleaned);
            assert_eq!(cleaned, label_value(&text), "{text:?}");
        }
        // The same key in two pools is no repeat; cleaning that makes two values equal is.
        let mut other = pool("k", 1.0);
        other.pool = "other".into();
        let r = Reading {
            pools: vec![pool("k", 1.0), other, pool("k ", 1.0)],
            keys: ["k", "k\n", "j"]
                .map(|k| KeyInfo {
                    key: k.into(),
                    active: true,
                    expires_at: None,
                    requests: 0.0,
                    spent_usd: None,
                })
                .into(),
            ..Default::default()
        }
        .checked()
        .unwrap();
        let pools: Vec<&str> = r.pools.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(pools, ["k", "k", "k #2"]);
        let keys: Vec<&str> = r.keys.iter().map(|k| k.key.as_str()).collect();
        assert_eq!(keys, ["k", "k #2", "j"]);
    }

    #[test]
    fn checked_cleans_labels_and_refuses_implausible_amounts() {
        let r = Reading {
            plan: Some(format!(" pro\n{}", "x".repeat(500))),
            pools: vec![pool("a\u{0}b", 1.0), pool("a b", 2.0), pool("a b", 3.0)],
            ..Default::default()
        }
        .checked()
        .unwrap();
        assert_eq!(r.plan.as_ref().unwrap().chars().count(), MAX_LABEL_CHARS);
        assert!(r.plan.unwrap().starts_with("pro xxx"));
        let keys: Vec<&str> = r.pools.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["a b", "a b #2", "a b #3"]);
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 1e308, -2e15] {
            let e = Reading {
                plan: None,
                pools: vec![pool("k", bad)],
                ..Default::default()
            }
            .checked()
            .unwrap_err();
            assert_eq!(e.reason(), "parse");
            assert!(
                e.to_string().starts_with(
                    "invalid response: pool `balance` key `k`: used is not a plausible amount"
                ),
                "{e}"
            );
        }
    }

    #[test]
    fn deep_nesting_is_refused_at_the_recursion_limit_without_overflowing() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let e = parse_json::<serde_json::Value>(deep.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("recursion limit exceeded"), "{e}");
        let e =
            parse_json::<serde_json::Value>(format!("{{\"a\": {deep}}}").as_bytes()).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("invalid response: body is not valid JSON at field `a"),
            "{e}"
        );
    }
}
