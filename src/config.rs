//! Configuration: TOML types, `[defaults]`, secrets, and validation that reports every problem with its location.
//!
//! Parsing happens in three passes so `creditwatch check` can list every problem at once instead
//! of stopping at the first: the TOML syntax (recoverable, all syntax errors), then each section and
//! each `[[account]]` deserialized on its own (unknown keys collected with `serde_ignored`, type
//! errors located by span), then semantic checks that name the account.

use crate::alerting::config::AlertingConfig;
use crate::providers::{KeyNeed, ProviderSettings};
use crate::secret::Secret;
use chrono::NaiveDate;
use serde::Deserialize;
use serde::de::{DeserializeOwned, IntoDeserializer};
use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// Default address of the HTTP server.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9477";
/// The shortest poll interval accepted; tests run at this speed.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// Default cap on an upstream response body.
pub const DEFAULT_MAX_RESPONSE_BYTES: u64 = 1024 * 1024;

/// The validated configuration of the daemon.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Where the config came from, for messages.
    pub path: PathBuf,
    pub listen: SocketAddr,
    pub state_path: PathBuf,
    /// `enable_reload` as written; see [`Config::reload_enabled`] for the effective value.
    pub enable_reload: Option<bool>,
    /// How many polls may be in flight at once, across all accounts.
    pub max_concurrent_polls: usize,
    /// How long samples are kept in the store. `None` derives it from the longest burn window.
    pub retention: Option<Duration>,
    pub accounts: Vec<AccountConfig>,
    /// The built-in alerter (`[alerting]`); `None` leaves alerting to Prometheus.
    pub alerting: Option<AlertingConfig>,
    /// TLS and authentication of the web endpoints (`[web]`); off by default.
    pub web: crate::web::WebConfig,
}

/// One `[[account]]`, with `[defaults]` applied and its secret resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct AccountConfig {
    pub name: String,
    pub provider: ProviderSettings,
    pub key: Option<Secret>,
    pub key_source: Option<KeySource>,
    pub base_url: Option<String>,
    pub billing_anchor: Option<NaiveDate>,
    pub interval: Duration,
    pub timeout: Duration,
    /// Burn-rate windows exported, as written in the config (the text becomes the `window` label).
    pub burn_windows: Vec<Window>,
    /// The window whose burn rate drives projections.
    pub forecast_window: Window,
    pub max_response_bytes: u64,
    /// After a failure, the last good values are exported until the last success is this old;
    /// `None` keeps them until the next success.
    pub stale_after: Option<Duration>,
}

impl AccountConfig {
    /// Every secret the account holds: its key and any secret header values.
    pub fn secrets(&self) -> Vec<&Secret> {
        let mut v: Vec<&Secret> = self.key.iter().collect();
        v.extend(self.provider.secrets());
        v
    }

    /// Every window whose burn rate is computed: the exported ones plus the forecast window.
    pub fn all_windows(&self) -> Vec<Window> {
        let mut w = self.burn_windows.clone();
        if !w
            .iter()
            .any(|x| x.duration == self.forecast_window.duration)
        {
            w.push(self.forecast_window.clone());
        }
        w
    }
}

/// Where an account's key comes from (kept so messages can say which source failed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    Env(String),
    File(PathBuf),
    Literal,
}

/// A burn-rate window: its length, and the text the user wrote (`"24h"`), used as the label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// Shared by every pool's burn rate over this window ([`crate::forecast::Forecast::burn`]).
    pub label: Arc<str>,
    pub duration: Duration,
}

/// A configuration that cannot be used, with every problem found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: String,
    pub location: Location,
    pub message: String,
}

/// Where a problem is: a position in the file, an account, an alert receiver, or the file as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    At { line: usize, col: usize },
    Account(String),
    Receiver(String),
    File,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.location {
            Location::At { line, col } => write!(f, "{}:{line}:{col}: {}", self.file, self.message),
            Location::Account(a) => write!(f, "{}: account {a:?}: {}", self.file, self.message),
            Location::Receiver(r) => write!(f, "{}: receiver {r:?}: {}", self.file, self.message),
            Location::File => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

/// Something worth telling the operator that does not make the config invalid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning(pub String);

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Reads environment variables; injectable so tests need not touch the process environment.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process environment.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

impl Config {
    /// Whether `POST /-/reload` is served when listening on `listen`: as configured, else on
    /// for loopback addresses and when the web endpoints require credentials.
    pub fn reload_enabled(&self, listen: SocketAddr) -> bool {
        self.enable_reload
            .unwrap_or_else(|| listen.ip().is_loopback() || self.web.requires_auth())
    }

    /// How long samples are kept: as configured, else twice the longest burn window and at least
    /// two days.
    pub fn retention(&self) -> Duration {
        self.retention.unwrap_or_else(|| {
            let longest = self
                .accounts
                .iter()
                .flat_map(|a| a.all_windows())
                .map(|w| w.duration)
                .max()
                .unwrap_or(Duration::ZERO);
            (longest * 2).max(Duration::from_secs(2 * 86_400))
        })
    }

    /// Reads and validates a config file, resolving secrets from the process environment.
    pub fn load(path: &Path) -> Result<(Config, Vec<Warning>), ConfigError> {
        let file = path.display().to_string();
        let src = std::fs::read_to_string(path).map_err(|e| ConfigError {
            problems: vec![Problem {
                file: file.clone(),
                location: Location::File,
                message: format!("cannot read config file: {e}"),
            }],
        })?;
        let base_dir = path.parent().unwrap_or(Path::new("."));
        Config::parse(&src, path, base_dir, &process_env)
    }

    /// Parses and validates config text. `path` is used in messages and relative key files are
    /// resolved against `base_dir`.
    pub fn parse(
        src: &str,
        path: &Path,
        base_dir: &Path,
        env: EnvLookup<'_>,
    ) -> Result<(Config, Vec<Warning>), ConfigError> {
        let mut p = Parser {
            src,
            file: path.display().to_string(),
            problems: Vec::new(),
            warnings: Vec::new(),
            labels: BTreeSet::new(),
        };
        let cfg = p.run(path, base_dir, env);
        match cfg {
            Some(cfg) if p.problems.is_empty() => Ok((cfg, p.warnings)),
            _ => Err(ConfigError {
                problems: p.problems,
            }),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Raw serde types. Unknown keys are not rejected by serde here: `serde_ignored` collects them so
// every one is reported with its position, and account keys can be split between the common part
// and the provider's own settings.

#[derive(Deserialize, Default)]
struct RawTop {
    listen: Option<Spanned<String>>,
    state_path: Option<PathBuf>,
    enable_reload: Option<bool>,
    max_concurrent_polls: Option<Spanned<usize>>,
    retention: Option<HumanDuration>,
    #[serde(default)]
    defaults: RawDefaults,
}

#[derive(Deserialize, Default, Clone)]
struct RawDefaults {
    interval: Option<HumanDuration>,
    timeout: Option<HumanDuration>,
    burn_windows: Option<Vec<HumanDuration>>,
    forecast_window: Option<HumanDuration>,
    max_response_bytes: Option<u64>,
    stale_after: Option<HumanDuration>,
}

#[derive(Deserialize)]
struct RawAccount {
    name: String,
    provider: Spanned<String>,
    api_key_env: Option<String>,
    api_key_file: Option<PathBuf>,
    api_key: Option<String>,
    base_url: Option<Spanned<String>>,
    billing_anchor: Option<Spanned<DateInput>>,
    interval: Option<HumanDuration>,
    timeout: Option<HumanDuration>,
    burn_windows: Option<Vec<HumanDuration>>,
    forecast_window: Option<HumanDuration>,
    max_response_bytes: Option<u64>,
    stale_after: Option<HumanDuration>,
}

/// A date written either as a TOML date (`2026-01-15`) or a string (`"2026-01-15"`).
#[derive(Deserialize, Clone)]
#[serde(untagged)]
enum DateInput {
    Text(String),
    Toml(toml::value::Datetime),
}

impl DateInput {
    fn to_date(&self) -> Result<NaiveDate, String> {
        match self {
            DateInput::Text(s) => NaiveDate::parse_from_str(s, "%Y-%m-%d")
                .map_err(|e| format!("invalid date {s:?}: {e} (expected YYYY-MM-DD)")),
            DateInput::Toml(dt) => match (dt.date, dt.time) {
                (Some(d), None) => {
                    NaiveDate::from_ymd_opt(d.year.into(), d.month.into(), d.day.into())
                        .ok_or_else(|| format!("invalid date {dt}"))
                }
                _ => Err(format!("expected a date like 2026-01-15, found {dt}")),
            },
        }
    }
}

/// A humantime duration (`"5m"`, `"1h30m"`), keeping the text as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HumanDuration {
    pub text: String,
    pub duration: Duration,
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string such as \"30s\", \"5m\" or \"24h\"")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<HumanDuration, E> {
                let duration = humantime::parse_duration(s.trim())
                    .map_err(|e| E::custom(format!("invalid duration {s:?}: {e}")))?;
                Ok(HumanDuration {
                    text: s.trim().to_string(),
                    duration,
                })
            }
        }
        d.deserialize_str(V)
    }
}

impl HumanDuration {
    /// The window, its label taken from (or added to) `labels`.
    fn window(&self, labels: &mut BTreeSet<Arc<str>>) -> Window {
        let label = match labels.get(self.text.as_str()) {
            Some(l) => l.clone(),
            None => {
                let l: Arc<str> = self.text.as_str().into();
                labels.insert(l.clone());
                l
            }
        };
        Window {
            label,
            duration: self.duration,
        }
    }
}

// ---------------------------------------------------------------------------------------------

pub(crate) struct Parser<'s> {
    src: &'s str,
    file: String,
    problems: Vec<Problem>,
    warnings: Vec<Warning>,
    /// Window labels handed out so far: accounts that name the same window (most inherit
    /// `[defaults]`) share one label instead of holding a copy each.
    labels: BTreeSet<Arc<str>>,
}

/// One step of a path into the TOML tree, used to find where an ignored key was written.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Seg {
    Key(String),
    Index(usize),
}

fn path_segments(path: &serde_ignored::Path<'_>, out: &mut Vec<Seg>) {
    use serde_ignored::Path as P;
    match path {
        P::Root => {}
        P::Seq { parent, index } => {
            path_segments(parent, out);
            out.push(Seg::Index(*index));
        }
        P::Map { parent, key } => {
            path_segments(parent, out);
            out.push(Seg::Key(key.clone()));
        }
        P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => {
            path_segments(parent, out)
        }
    }
}

/// The span of the key (or element) that `path` names inside `value`.
pub(crate) fn span_of(value: &Spanned<DeValue<'_>>, path: &[Seg]) -> Option<Range<usize>> {
    let (first, rest) = path.split_first()?;
    match (value.get_ref(), first) {
        (DeValue::Table(t), Seg::Key(k)) => {
            let (key, v) = t
                .iter()
                .find(|(key, _)| key.get_ref().as_ref() == k.as_str())?;
            if rest.is_empty() {
                Some(key.span())
            } else {
                span_of(v, rest)
            }
        }
        (DeValue::Array(a), Seg::Index(i)) => {
            let v = a.get(*i)?;
            if rest.is_empty() {
                Some(v.span())
            } else {
                span_of(v, rest)
            }
        }
        _ => None,
    }
}

pub(crate) fn display_path(path: &[Seg]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

/// A deserialized value (or its located type error) and every key path it did not use.
pub(crate) type Tracked<T> = (Result<T, toml::de::Error>, Vec<Vec<Seg>>);

/// Deserializes `value`, returning the value (if its types are right) and every ignored key path.
pub(crate) fn deserialize_tracking<T: DeserializeOwned>(value: Spanned<DeValue<'_>>) -> Tracked<T> {
    let mut ignored = Vec::new();
    let r = serde_ignored::deserialize(value.into_deserializer(), |p| {
        let mut segs = Vec::new();
        path_segments(&p, &mut segs);
        ignored.push(segs);
    });
    (r, ignored)
}

impl Parser<'_> {
    fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.src.len());
        let before = &self.src[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
        let col = before[line_start..].chars().count() + 1;
        (line, col)
    }

    pub(crate) fn at(&mut self, span: Option<Range<usize>>, message: impl Into<String>) {
        let location = match span {
            Some(r) => {
                let (line, col) = self.line_col(r.start);
                Location::At { line, col }
            }
            None => Location::File,
        };
        self.problems.push(Problem {
            file: self.file.clone(),
            location,
            message: message.into(),
        });
    }

    fn account(&mut self, name: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            file: self.file.clone(),
            location: Location::Account(name.to_string()),
            message: message.into(),
        });
    }

    pub(crate) fn receiver(&mut self, name: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            file: self.file.clone(),
            location: Location::Receiver(name.to_string()),
            message: message.into(),
        });
    }

    pub(crate) fn warn(&mut self, message: String) {
        self.warnings.push(Warning(message));
    }

    pub(crate) fn toml_error(&mut self, e: &toml::de::Error) {
        let msg = e.message().trim().to_string();
        self.at(e.span(), msg);
    }

    fn run(&mut self, path: &Path, base_dir: &Path, env: EnvLookup<'_>) -> Option<Config> {
        let (root, syntax) = DeTable::parse_recoverable(self.src);
        if !syntax.is_empty() {
            for e in &syntax {
                self.toml_error(e);
            }
            return None;
        }
        let root_span = root.span();
        let mut root = root.into_inner();

        // `[[account]]` entries are handled one by one; everything else deserializes as RawTop.
        let mut account_values = Vec::new();
        let mut account_key_span = None;
        if let Some(key) = root.keys().find(|k| k.get_ref() == "account").cloned() {
            account_key_span = Some(key.span());
            let v = root.remove(&key).expect("key present");
            match v.into_inner() {
                DeValue::Array(items) => account_values = items.into_iter().collect(),
                _ => self.at(
                    Some(key.span()),
                    "`account` must be an array of tables: write each one as [[account]]",
                ),
            }
        }
        // `[alerting]` is its own section, parsed (and its unknown keys reported) on its own.
        let alerting_value = root
            .keys()
            .find(|k| k.get_ref() == "alerting")
            .cloned()
            .map(|k| (k.span(), root.remove(&k).expect("key present")));
        let web_value = root
            .keys()
            .find(|k| k.get_ref() == "web")
            .cloned()
            .map(|k| (k.span(), root.remove(&k).expect("key present")));
        let rest = Spanned::new(root_span, DeValue::Table(root));
        let (top, ignored) = deserialize_tracking::<RawTop>(rest.clone());
        for segs in ignored {
            let span = span_of(&rest, &segs);
            self.at(span, format!("unknown key `{}`", display_path(&segs)));
        }
        let top = match top {
            Ok(t) => t,
            Err(e) => {
                self.toml_error(&e);
                RawTop::default()
            }
        };

        let listen = match &top.listen {
            None => DEFAULT_LISTEN.parse().expect("valid default"),
            Some(s) => match parse_listen(s.get_ref()) {
                Ok(a) => a,
                Err(m) => {
                    self.at(Some(s.span()), m);
                    DEFAULT_LISTEN.parse().expect("valid default")
                }
            },
        };
        let max_concurrent_polls = match &top.max_concurrent_polls {
            None => 64,
            Some(n) if *n.get_ref() == 0 => {
                self.at(Some(n.span()), "max_concurrent_polls must be at least 1");
                1
            }
            Some(n) => *n.get_ref(),
        };
        let defaults = top.defaults.clone();

        let mut accounts = Vec::new();
        if account_values.is_empty() && account_key_span.is_none() {
            self.problems.push(Problem {
                file: self.file.clone(),
                location: Location::File,
                message: "no [[account]] configured: add at least one account to watch".into(),
            });
        }
        for (i, value) in account_values.into_iter().enumerate() {
            if let Some(a) = self.account_entry(i, value, &defaults, base_dir, env) {
                accounts.push(a);
            }
        }

        let mut seen = BTreeSet::new();
        for a in &accounts {
            if !seen.insert(a.name.clone()) {
                let name = a.name.clone();
                self.account(
                    &name,
                    "duplicate account name: each account needs a unique name",
                );
            }
        }

        // Two listeners cannot share a port: each proxy needs its own, apart from `listen`.
        let mut taken: Vec<(SocketAddr, String)> = vec![(listen, "listen".to_string())];
        for a in &accounts {
            let Some(addr) = a.provider.proxy().map(|s| s.proxy_listen.0) else {
                continue;
            };
            if let Some((_, other)) = taken.iter().find(|(t, _)| addresses_clash(*t, addr)) {
                let message = format!("proxy_listen {addr} is already used by {other}");
                let name = a.name.clone();
                self.account(&name, message);
            }
            taken.push((addr, format!("the proxy of account {:?}", a.name)));
        }

        let alerting = alerting_value.and_then(|(span, value)| {
            crate::alerting::config::parse(self, span, value, base_dir, env)
        });

        let web = web_value
            .map(|(span, value)| crate::web::parse(self, span, value, base_dir))
            .unwrap_or_default();

        let enable_reload = top.enable_reload;
        Some(Config {
            path: path.to_path_buf(),
            listen,
            state_path: top
                .state_path
                .clone()
                .unwrap_or_else(|| PathBuf::from("creditwatch.db")),
            enable_reload,
            max_concurrent_polls,
            retention: top.retention.as_ref().map(|d| d.duration),
            accounts,
            alerting,
            web,
        })
    }

    fn account_entry(
        &mut self,
        index: usize,
        value: Spanned<DeValue<'_>>,
        defaults: &RawDefaults,
        base_dir: &Path,
        env: EnvLookup<'_>,
    ) -> Option<AccountConfig> {
        let entry_span = value.span();
        if !matches!(value.get_ref(), DeValue::Table(_)) {
            self.at(Some(entry_span), "each [[account]] entry must be a table");
            return None;
        }
        let (common, common_ignored) = deserialize_tracking::<RawAccount>(value.clone());
        let common = match common {
            Ok(c) => c,
            Err(e) => {
                // Still report keys that no provider knows, so one pass shows every problem.
                let msg = e.message().trim();
                let span = e.span().or(Some(entry_span.clone()));
                self.at(span, format!("account #{}: {msg}", index + 1));
                return None;
            }
        };
        let name = common.name.clone();
        if name.trim().is_empty() {
            self.at(Some(entry_span.clone()), "account name must not be empty");
        }
        if name.chars().any(char::is_control) {
            self.at(
                Some(entry_span.clone()),
                format!("account name {name:?} contains a control character"),
            );
        }

        let provider_name = common.provider.get_ref().as_str();
        let mut settings = match ProviderSettings::from_toml(provider_name, value.clone()) {
            None => {
                self.at(
                    Some(common.provider.span()),
                    format!(
                        "unknown provider {provider_name:?}, expected one of: {}",
                        ProviderSettings::NAMES.join(", ")
                    ),
                );
                return None;
            }
            Some((Err(e), _)) => {
                self.toml_error(&e);
                None
            }
            Some((Ok(s), provider_ignored)) => {
                // A key is unknown when neither the common account keys nor the provider's own
                // settings use it.
                let common_top: BTreeSet<&Seg> =
                    common_ignored.iter().filter_map(|p| p.first()).collect();
                let provider_top: BTreeSet<&Seg> =
                    provider_ignored.iter().filter_map(|p| p.first()).collect();
                for p in &provider_ignored {
                    if let Some(first) = p.first()
                        && common_top.contains(first)
                        && (p.len() > 1 || provider_top.contains(first))
                    {
                        let span = span_of(&value, p);
                        self.at(
                            span,
                            format!(
                                "unknown key `{}` for provider {provider_name}",
                                display_path(p)
                            ),
                        );
                    }
                }
                for p in &common_ignored {
                    if p.len() > 1 && !provider_top.contains(&p[0]) {
                        let span = span_of(&value, p);
                        self.at(span, format!("unknown key `{}`", display_path(p)));
                    }
                }
                Some(s)
            }
        }?;

        let pick = |own: &Option<HumanDuration>, def: &Option<HumanDuration>, fallback: &str| {
            own.clone()
                .or_else(|| def.clone())
                .unwrap_or_else(|| HumanDuration {
                    text: fallback.to_string(),
                    duration: humantime::parse_duration(fallback).expect("valid default"),
                })
        };
        let interval = pick(&common.interval, &defaults.interval, "5m").duration;
        let timeout = pick(&common.timeout, &defaults.timeout, "15s").duration;
        let forecast_window = pick(&common.forecast_window, &defaults.forecast_window, "24h");
        let burn_windows: Vec<HumanDuration> = common
            .burn_windows
            .clone()
            .or_else(|| defaults.burn_windows.clone())
            .unwrap_or_else(|| {
                ["1h", "24h"]
                    .iter()
                    .map(|t| HumanDuration {
                        text: t.to_string(),
                        duration: humantime::parse_duration(t).expect("valid default"),
                    })
                    .collect()
            });

        if interval < MIN_INTERVAL {
            self.account(
                &name,
                format!(
                    "interval {} is shorter than the minimum of 1s",
                    humantime::format_duration(interval)
                ),
            );
        }
        if timeout.is_zero() {
            self.account(&name, "timeout must be greater than 0");
        } else if timeout > interval && interval >= MIN_INTERVAL {
            self.account(
                &name,
                format!(
                    "timeout {} is longer than interval {}: a poll could still be running when the next is due",
                    humantime::format_duration(timeout),
                    humantime::format_duration(interval)
                ),
            );
        }
        for w in burn_windows.iter().chain(std::iter::once(&forecast_window)) {
            if w.duration < Duration::from_secs(1) {
                self.account(
                    &name,
                    format!("burn window {:?} must be at least 1s", w.text),
                );
            }
        }
        let mut labels = BTreeSet::new();
        for w in &burn_windows {
            if w.text == "period" {
                self.account(
                    &name,
                    "burn window \"period\" is built in (the average since the period start); remove it from burn_windows",
                );
            }
            if !labels.insert(w.duration) {
                self.account(&name, format!("burn window {:?} is listed twice", w.text));
            }
        }

        let stale_after = common
            .stale_after
            .as_ref()
            .or(defaults.stale_after.as_ref())
            .map(|d| d.duration);
        if let Some(s) = stale_after
            && s < interval + timeout
        {
            self.account(
                &name,
                format!(
                    "stale_after {} must be at least interval + timeout ({}): values would vanish between healthy polls",
                    humantime::format_duration(s),
                    humantime::format_duration(interval + timeout)
                ),
            );
        }

        let base_url = match &common.base_url {
            None => None,
            Some(u) => match reqwest::Url::parse(u.get_ref()) {
                Ok(url) if matches!(url.scheme(), "http" | "https") => {
                    Some(u.get_ref().trim_end_matches('/').to_string())
                }
                Ok(url) => {
                    self.at(
                        Some(u.span()),
                        format!("base_url must be http or https, not {:?}", url.scheme()),
                    );
                    None
                }
                Err(e) => {
                    self.at(
                        Some(u.span()),
                        format!("invalid base_url {:?}: {e}", u.get_ref()),
                    );
                    None
                }
            },
        };
        let billing_anchor = match &common.billing_anchor {
            None => None,
            Some(d) => match d.get_ref().to_date() {
                Ok(d) => Some(d),
                Err(m) => {
                    self.at(Some(d.span()), m);
                    None
                }
            },
        };

        let (key, key_source) =
            self.resolve_key(&name, &common, settings.key_need(), base_dir, env);
        for message in settings.resolve_secrets(env, base_dir) {
            self.account(&name, message);
        }

        let burn_windows = burn_windows
            .iter()
            .map(|w| w.window(&mut self.labels))
            .collect();
        let forecast_window = forecast_window.window(&mut self.labels);
        let account = AccountConfig {
            name: name.clone(),
            provider: settings,
            key,
            key_source,
            base_url,
            billing_anchor,
            interval,
            timeout,
            burn_windows,
            forecast_window,
            max_response_bytes: common
                .max_response_bytes
                .or(defaults.max_response_bytes)
                .unwrap_or(DEFAULT_MAX_RESPONSE_BYTES),
            stale_after,
        };
        for message in account.provider.validate(&account) {
            self.account(&name, message);
        }
        for w in account.provider.warnings(&account) {
            self.warnings
                .push(Warning(format!("account {name:?}: {w}")));
        }
        Some(account)
    }

    fn resolve_key(
        &mut self,
        name: &str,
        raw: &RawAccount,
        need: KeyNeed,
        base_dir: &Path,
        env: EnvLookup<'_>,
    ) -> (Option<Secret>, Option<KeySource>) {
        let given = [
            raw.api_key_env.is_some(),
            raw.api_key_file.is_some(),
            raw.api_key.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if given > 1 {
            self.account(
                name,
                "set exactly one of api_key_env, api_key_file or api_key, not several",
            );
            return (None, None);
        }
        if given == 0 {
            if need == KeyNeed::Required {
                self.account(
                    name,
                    "no API key: set one of api_key_env, api_key_file or api_key",
                );
            }
            return (None, None);
        }
        if need == KeyNeed::None {
            self.account(
                name,
                "this provider takes no API key (its proxy passes each client's own Authorization through); remove api_key_env / api_key_file / api_key",
            );
            return (None, None);
        }
        if let Some(var) = &raw.api_key_env {
            return match env(var) {
                Some(v) if !v.trim().is_empty() => (
                    Some(Secret::new(v.trim())),
                    Some(KeySource::Env(var.clone())),
                ),
                Some(_) => {
                    self.account(name, format!("environment variable {var} is empty"));
                    (None, None)
                }
                None => {
                    self.account(name, format!("environment variable {var} is not set"));
                    (None, None)
                }
            };
        }
        if let Some(file) = &raw.api_key_file {
            let path = if file.is_absolute() {
                file.clone()
            } else {
                base_dir.join(file)
            };
            return match std::fs::read_to_string(&path) {
                Ok(v) if !v.trim().is_empty() => {
                    if world_readable(&path) {
                        self.warnings.push(Warning(format!(
                            "account {name:?}: key file {} is readable by every user; chmod 600 it",
                            path.display()
                        )));
                    }
                    (Some(Secret::new(v.trim())), Some(KeySource::File(path)))
                }
                Ok(_) => {
                    self.account(name, format!("key file {} is empty", path.display()));
                    (None, None)
                }
                Err(e) => {
                    self.account(
                        name,
                        format!("cannot read key file {}: {e}", path.display()),
                    );
                    (None, None)
                }
            };
        }
        let literal = raw.api_key.as_deref().unwrap_or_default();
        if literal.trim().is_empty() {
            self.account(name, "api_key is empty");
            return (None, None);
        }
        self.warnings.push(Warning(format!(
            "account {name:?}: api_key is written in the config file; prefer api_key_env or api_key_file"
        )));
        (Some(Secret::new(literal.trim())), Some(KeySource::Literal))
    }
}

#[cfg(unix)]
pub(crate) fn world_readable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o004 != 0)
        .unwrap_or(false)
}

#[cfg(not(unix))]
pub(crate) fn world_readable(_: &Path) -> bool {
    false
}

/// Whether two listen addresses would take the same port (port 0 picks a free one: never).
fn addresses_clash(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port()
        && a.port() != 0
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// Parses `HOST:PORT` or `:PORT` (all interfaces).
pub fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    let full = if s.starts_with(':') {
        format!("0.0.0.0{s}")
    } else {
        s.to_string()
    };
    full.parse().map_err(|_| {
        format!("invalid listen address {s:?}: expected IP:PORT such as 127.0.0.1:9477 or :9477")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_with_env(src: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let lookup = move |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        Config::parse(src, Path::new("test.toml"), Path::new("."), &lookup).map(|(c, _)| c)
    }

    fn errors(src: &str) -> Vec<String> {
        match parse_with_env(src, &[("K", "secret-value")]) {
            Ok(_) => vec![],
            Err(e) => e.problems.iter().map(|p| p.to_string()).collect(),
        }
    }

    const OK: &str = r#"
[[account]]
name = "images"
provider = "fluximage"
api_key_env = "K"
billing_anchor = "2026-01-15"
"#;

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse_with_env(OK, &[("K", "secret-value")]).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:9477");
        assert!(
            c.reload_enabled(c.listen),
            "loopback listen enables reload by default"
        );
        let a = &c.accounts[0];
        assert_eq!(a.interval, Duration::from_secs(300));
        assert_eq!(a.timeout, Duration::from_secs(15));
        assert_eq!(&*a.burn_windows[1].label, "24h");
        assert_eq!(a.forecast_window.duration, Duration::from_secs(86400));
        assert_eq!(a.key.as_ref().unwrap().expose(), "secret-value");
        assert_eq!(a.billing_anchor, NaiveDate::from_ymd_opt(2026, 1, 15));
    }

    #[test]
    fn accounts_share_the_labels_of_the_windows_they_name() {
        let src = format!(
            "[defaults]\nburn_windows = [\"1h\", \"24h\"]\n{OK}\n[[account]]\nname = \"other\"\nprovider = \"imagerouter\"\napi_key_env = \"K\"\nburn_windows = [\"24h\", \"7d\"]\n"
        );
        let c = parse_with_env(&src, &[("K", "secret-value")]).unwrap();
        let (a, b) = (&c.accounts[0], &c.accounts[1]);
        let labels = |w: &[Window]| w.iter().map(|w| w.label.to_string()).collect::<Vec<_>>();
        assert_eq!(labels(&a.burn_windows), ["1h", "24h"]);
        assert_eq!(labels(&b.burn_windows), ["24h", "7d"]);
        // One "24h" for both accounts' burn windows and both forecast windows.
        let day = &a.burn_windows[1].label;
        for l in [
            &b.burn_windows[0].label,
            &a.forecast_window.label,
            &b.forecast_window.label,
        ] {
            assert!(Arc::ptr_eq(day, l));
        }
    }

    #[test]
    fn account_overrides_defaults() {
        let src = format!(
            "[defaults]\ninterval = \"1m\"\nburn_windows = [\"10m\"]\n{OK}interval = \"1s\"\ntimeout = \"1s\"\n"
        );
        let c = parse_with_env(&src, &[("K", "v")]).unwrap();
        assert_eq!(c.accounts[0].interval, Duration::from_secs(1));
        assert_eq!(c.accounts[0].burn_windows.len(), 1);
        assert_eq!(&*c.accounts[0].burn_windows[0].label, "10m");
    }

    #[test]
    fn unknown_keys_are_all_reported_with_positions() {
        let src = "listne = \"x\"\n[defaults]\nintervall = \"5m\"\n[[account]]\nname = \"a\"\nprovider = \"fluximage\"\napi_key_env = \"K\"\nbilling_anchor = \"2026-01-15\"\ncolour = 1\n";
        assert_eq!(
            errors(src),
            vec![
                "test.toml:3:1: unknown key `defaults.intervall`",
                "test.toml:1:1: unknown key `listne`",
                "test.toml:9:1: unknown key `colour` for provider fluximage",
            ]
        );
    }

    #[test]
    fn syntax_errors_have_line_and_column() {
        let e = errors("listen = \n");
        assert_eq!(e.len(), 1);
        assert!(e[0].starts_with("test.toml:1:10: "), "{e:?}");
    }

    #[test]
    fn type_errors_point_at_the_value() {
        let e = errors(&format!("{OK}interval = 5\n"));
        assert_eq!(e.len(), 1);
        assert!(
            e[0].starts_with("test.toml:7:12: account #1: invalid type: integer `5`"),
            "{e:?}"
        );
        let e = errors(&format!("{OK}interval = \"5 parsecs\"\n"));
        assert!(e[0].contains("invalid duration \"5 parsecs\""), "{e:?}");
    }

    #[test]
    fn semantic_errors_name_the_account() {
        let src = format!("{OK}interval = \"500ms\"\n{OK}");
        let e = errors(&src);
        assert!(
            e.contains(
                &"test.toml: account \"images\": interval 500ms is shorter than the minimum of 1s"
                    .to_string()
            ),
            "{e:?}"
        );
        assert!(e.contains(&"test.toml: account \"images\": duplicate account name: each account needs a unique name".to_string()), "{e:?}");
    }

    #[test]
    fn missing_env_and_unreadable_file_are_reported() {
        let src = OK.replace("api_key_env = \"K\"", "api_key_env = \"NOPE\"");
        assert_eq!(
            errors(&src),
            vec!["test.toml: account \"images\": environment variable NOPE is not set"]
        );
        let src = OK.replace("api_key_env = \"K\"", "api_key_file = \"/nonexistent/key\"");
        let e = errors(&src);
        assert!(
            e[0].starts_with(
                "test.toml: account \"images\": cannot read key file /nonexistent/key:"
            ),
            "{e:?}"
        );
    }

    #[test]
    fn exactly_one_key_source() {
        let src = OK.replace(
            "api_key_env = \"K\"",
            "api_key_env = \"K\"\napi_key = \"x\"",
        );
        assert_eq!(
            errors(&src),
            vec![
                "test.toml: account \"images\": set exactly one of api_key_env, api_key_file or api_key, not several"
            ]
        );
        let src = OK.replace("api_key_env = \"K\"", "");
        assert_eq!(
            errors(&src),
            vec![
                "test.toml: account \"images\": no API key: set one of api_key_env, api_key_file or api_key"
            ]
        );
    }

    #[test]
    fn literal_key_warns_and_never_prints() {
        let src = OK.replace("api_key_env = \"K\"", "api_key = \"flx_live_topsecret\"");
        let (c, warnings) =
            Config::parse(&src, Path::new("t.toml"), Path::new("."), &|_| None).unwrap();
        assert_eq!(warnings.len(), 1);
        assert!(!format!("{c:?}").contains("topsecret"));
        assert!(!warnings[0].0.contains("topsecret"));
    }

    #[test]
    fn unknown_provider_lists_the_known_ones() {
        let src = OK.replace("fluximage", "fluxomatic");
        let e = errors(&src);
        assert!(
            e[0].starts_with(
                "test.toml:4:12: unknown provider \"fluxomatic\", expected one of: fluximage"
            ),
            "{e:?}"
        );
    }

    #[test]
    fn toml_dates_and_strings_both_work_for_anchors() {
        let src = OK.replace("\"2026-01-15\"", "2026-01-31");
        let c = parse_with_env(&src, &[("K", "v")]).unwrap();
        assert_eq!(
            c.accounts[0].billing_anchor,
            NaiveDate::from_ymd_opt(2026, 1, 31)
        );
        let e = errors(&OK.replace("2026-01-15", "2026-02-30"));
        assert!(e[0].contains("invalid date \"2026-02-30\""), "{e:?}");
    }

    #[test]
    fn stale_after_must_outlast_a_healthy_poll() {
        let c = parse_with_env(OK, &[("K", "v")]).unwrap();
        assert_eq!(c.accounts[0].stale_after, None);
        let src = format!("[defaults]\nstale_after = \"1h\"\n{OK}");
        let c = parse_with_env(&src, &[("K", "v")]).unwrap();
        assert_eq!(c.accounts[0].stale_after, Some(Duration::from_secs(3600)));
        assert_eq!(
            errors(&format!("{OK}stale_after = \"5m\"\n")),
            vec![
                "test.toml: account \"images\": stale_after 5m must be at least interval + timeout (5m 15s): values would vanish between healthy polls"
            ]
        );
    }

    #[test]
    fn listen_forms() {
        assert_eq!(parse_listen(":9477").unwrap().to_string(), "0.0.0.0:9477");
        assert!(parse_listen("localhost").is_err());
        let c = parse_with_env(&format!("listen = \"0.0.0.0:9000\"\n{OK}"), &[("K", "v")]).unwrap();
        assert!(
            !c.reload_enabled(c.listen),
            "reload is off by default on a public address"
        );
    }
}
