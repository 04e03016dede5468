//! The `[alerting]` section: evaluation interval, per-alert overrides, and receivers with their secret URLs.
//!
//! It is parsed like the rest of the config: the section, each `[alerting.rules.<AlertName>]` and
//! each `[[alerting.receiver]]` are deserialized on their own (unknown keys located with
//! `serde_ignored`), then checked by name, so `creditwatch check` lists every problem at once.

use super::rules::{AlertName, Threshold};
use crate::config::{EnvLookup, HumanDuration, KeySource, Parser, Seg, display_path, span_of};
use crate::secret::Secret;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;
use toml::Spanned;
use toml::de::DeValue;

/// Default `evaluation_interval`.
pub const DEFAULT_EVALUATION_INTERVAL: Duration = Duration::from_secs(30);
/// Default `repeat_interval` of webhook and Slack receivers (Alertmanager's default).
pub const DEFAULT_REPEAT_INTERVAL: Duration = Duration::from_secs(4 * 3600);

/// The validated `[alerting]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertingConfig {
    pub evaluation_interval: Duration,
    /// Base URL of this creditwatch as on-call reaches it (runbook links, generatorURL).
    /// `None` means `http://<listen address>`.
    pub external_url: Option<String>,
    /// Every alert's effective settings (defaults with overrides applied).
    pub rules: BTreeMap<AlertName, RuleConfig>,
    pub receivers: Vec<ReceiverConfig>,
}

/// One alert's effective settings.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleConfig {
    pub enabled: bool,
    pub for_: Duration,
    /// `remaining_ratio_below` for the alerts that have it.
    pub ratio_below: Option<f64>,
    /// `within` for the alerts that have it.
    pub within: Option<Duration>,
}

/// How a receiver delivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiverKind {
    Webhook,
    Slack,
    Alertmanager,
}

impl ReceiverKind {
    pub const NAMES: [&'static str; 3] = ["webhook", "slack", "alertmanager"];

    pub fn as_str(self) -> &'static str {
        match self {
            ReceiverKind::Webhook => "webhook",
            ReceiverKind::Slack => "slack",
            ReceiverKind::Alertmanager => "alertmanager",
        }
    }
}

/// One `[[alerting.receiver]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceiverConfig {
    pub name: String,
    pub kind: ReceiverKind,
    /// The URL; a secret because webhook URLs (Slack's above all) carry their token.
    pub url: Secret,
    pub url_source: KeySource,
    /// Only alerts whose labels equal all of these are sent here.
    pub matchers: BTreeMap<String, String>,
    /// How often a still-firing group is notified again (webhook and Slack).
    pub repeat_interval: Duration,
}

impl ReceiverConfig {
    /// Whether an alert with `labels` goes to this receiver.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.matchers
            .iter()
            .all(|(k, v)| labels.get(k).map(String::as_str).unwrap_or("") == v)
    }
}

#[derive(Deserialize)]
struct RawAlerting {
    evaluation_interval: Option<Spanned<HumanDuration>>,
    external_url: Option<Spanned<String>>,
}

#[derive(Deserialize)]
struct RawRule {
    enabled: Option<bool>,
    #[serde(rename = "for")]
    for_: Option<HumanDuration>,
    remaining_ratio_below: Option<Spanned<f64>>,
    within: Option<Spanned<HumanDuration>>,
}

#[derive(Deserialize)]
struct RawReceiver {
    name: String,
    #[serde(rename = "type")]
    kind: Spanned<String>,
    url: Option<Spanned<String>>,
    url_env: Option<String>,
    url_file: Option<std::path::PathBuf>,
    #[serde(rename = "match", default)]
    matchers: BTreeMap<String, String>,
    repeat_interval: Option<Spanned<HumanDuration>>,
}

/// Removes `key` from `table`, returning its value and the span of the key.
fn take<'a>(
    table: &mut toml::de::DeTable<'a>,
    key: &str,
) -> Option<(std::ops::Range<usize>, Spanned<DeValue<'a>>)> {
    let k = table.keys().find(|k| k.get_ref() == key).cloned()?;
    let v = table.remove(&k)?;
    Some((k.span(), v))
}

/// Parses the `alerting` value of the config's root table.
pub(crate) fn parse(
    p: &mut Parser<'_>,
    key_span: std::ops::Range<usize>,
    value: Spanned<DeValue<'_>>,
    base_dir: &Path,
    env: EnvLookup<'_>,
) -> Option<AlertingConfig> {
    let span = value.span();
    let DeValue::Table(mut table) = value.into_inner() else {
        p.at(
            Some(key_span),
            "`alerting` must be a table: write it as [alerting]",
        );
        return None;
    };
    let rules_value = take(&mut table, "rules");
    let receiver_value = take(&mut table, "receiver");
    let rest = Spanned::new(span.clone(), DeValue::Table(table));
    let (raw, ignored) = crate::config::deserialize_tracking::<RawAlerting>(rest.clone());
    for segs in ignored {
        p.at(
            span_of(&rest, &segs),
            format!("unknown key `alerting.{}`", display_path(&segs)),
        );
    }
    let raw = match raw {
        Ok(r) => Some(r),
        Err(e) => {
            p.toml_error(&e);
            None
        }
    };
    let evaluation_interval = match raw.as_ref().and_then(|r| r.evaluation_interval.as_ref()) {
        None => DEFAULT_EVALUATION_INTERVAL,
        Some(d) if d.get_ref().duration < Duration::from_secs(1) => {
            p.at(
                Some(d.span()),
                "alerting.evaluation_interval must be at least 1s",
            );
            DEFAULT_EVALUATION_INTERVAL
        }
        Some(d) => d.get_ref().duration,
    };
    let external_url = match raw.as_ref().and_then(|r| r.external_url.as_ref()) {
        None => None,
        Some(u) => match reqwest::Url::parse(u.get_ref()) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => {
                Some(u.get_ref().trim_end_matches('/').to_string())
            }
            _ => {
                p.at(
                    Some(u.span()),
                    format!(
                        "alerting.external_url must be an http or https URL, not {:?}",
                        u.get_ref()
                    ),
                );
                None
            }
        },
    };

    let mut rules: BTreeMap<AlertName, RuleConfig> =
        AlertName::ALL.iter().map(|a| (*a, a.defaults())).collect();
    if let Some((rules_key, value)) = rules_value {
        parse_rules(p, rules_key, value, &mut rules);
    }

    let mut receivers = Vec::new();
    match receiver_value {
        None => p.at(
            Some(key_span),
            "[alerting] has no receiver: add at least one [[alerting.receiver]]",
        ),
        Some((k, v)) => match v.into_inner() {
            DeValue::Array(items) => {
                for (i, item) in items.into_iter().enumerate() {
                    if let Some(r) = parse_receiver(p, i, item, base_dir, env) {
                        receivers.push(r);
                    }
                }
            }
            _ => p.at(
                Some(k),
                "`alerting.receiver` must be an array of tables: write each one as [[alerting.receiver]]",
            ),
        },
    }
    let mut names = BTreeSet::new();
    for r in &receivers {
        if !names.insert(r.name.clone()) {
            p.receiver(
                &r.name,
                "duplicate receiver name: each receiver needs a unique name",
            );
        }
    }
    Some(AlertingConfig {
        evaluation_interval,
        external_url,
        rules,
        receivers,
    })
}

fn parse_rules(
    p: &mut Parser<'_>,
    rules_key: std::ops::Range<usize>,
    value: Spanned<DeValue<'_>>,
    rules: &mut BTreeMap<AlertName, RuleConfig>,
) {
    let DeValue::Table(table) = value.into_inner() else {
        p.at(
            Some(rules_key),
            "`alerting.rules` must be a table of [alerting.rules.<AlertName>] sections",
        );
        return;
    };
    for (key, v) in table {
        let name = key.get_ref().to_string();
        let Some(alert) = AlertName::from_name(&name) else {
            p.at(
                Some(key.span()),
                format!(
                    "unknown alert `{name}` in alerting.rules, expected one of: {}",
                    AlertName::ALL.map(|a| a.as_str()).join(", ")
                ),
            );
            continue;
        };
        if !matches!(v.get_ref(), DeValue::Table(_)) {
            p.at(
                Some(key.span()),
                format!("alerting.rules.{name} must be a table"),
            );
            continue;
        }
        let (raw, ignored) = crate::config::deserialize_tracking::<RawRule>(v.clone());
        for segs in ignored {
            p.at(
                span_of(&v, &segs),
                format!(
                    "unknown key `alerting.rules.{name}.{}` (keys: {})",
                    display_path(&segs),
                    alert.keys().join(", ")
                ),
            );
        }
        let raw = match raw {
            Ok(r) => r,
            Err(e) => {
                p.toml_error(&e);
                continue;
            }
        };
        let rule = rules.get_mut(&alert).expect("every alert has defaults");
        if let Some(e) = raw.enabled {
            rule.enabled = e;
        }
        if let Some(f) = raw.for_ {
            rule.for_ = f.duration;
        }
        if let Some(r) = raw.remaining_ratio_below {
            if alert.threshold() != Some(Threshold::RatioBelow) {
                p.at(
                    Some(r.span()),
                    format!(
                        "{name} has no remaining_ratio_below threshold (keys: {})",
                        alert.keys().join(", ")
                    ),
                );
            } else if !(r.get_ref() > &0.0 && r.get_ref() <= &1.0) {
                p.at(
                    Some(r.span()),
                    format!(
                        "remaining_ratio_below must be a fraction in (0, 1], such as 0.1 for 10%; found {}",
                        r.get_ref()
                    ),
                );
            } else {
                rule.ratio_below = Some(*r.get_ref());
            }
        }
        if let Some(w) = raw.within {
            if alert.threshold() != Some(Threshold::Within) {
                p.at(
                    Some(w.span()),
                    format!(
                        "{name} has no within threshold (keys: {})",
                        alert.keys().join(", ")
                    ),
                );
            } else if w.get_ref().duration.is_zero() {
                p.at(Some(w.span()), "within must be greater than 0");
            } else {
                rule.within = Some(w.get_ref().duration);
            }
        }
    }
}

fn parse_receiver(
    p: &mut Parser<'_>,
    index: usize,
    value: Spanned<DeValue<'_>>,
    base_dir: &Path,
    env: EnvLookup<'_>,
) -> Option<ReceiverConfig> {
    let entry_span = value.span();
    if !matches!(value.get_ref(), DeValue::Table(_)) {
        p.at(
            Some(entry_span),
            "each [[alerting.receiver]] entry must be a table",
        );
        return None;
    }
    let (raw, ignored) = crate::config::deserialize_tracking::<RawReceiver>(value.clone());
    for segs in ignored {
        // Keys under `match` are label names, all accepted; anything else is unknown.
        if segs.first() == Some(&Seg::Key("match".into())) {
            continue;
        }
        p.at(
            span_of(&value, &segs),
            format!("unknown key `alerting.receiver.{}`", display_path(&segs)),
        );
    }
    let raw = match raw {
        Ok(r) => r,
        Err(e) => {
            let msg = e.message().trim().to_string();
            p.at(
                e.span().or(Some(entry_span)),
                format!("receiver #{}: {msg}", index + 1),
            );
            return None;
        }
    };
    let name = raw.name.clone();
    if name.trim().is_empty() {
        p.at(Some(entry_span), "receiver name must not be empty");
    }
    let kind = match raw.kind.get_ref().as_str() {
        "webhook" => ReceiverKind::Webhook,
        "slack" => ReceiverKind::Slack,
        "alertmanager" => ReceiverKind::Alertmanager,
        other => {
            p.at(
                Some(raw.kind.span()),
                format!(
                    "unknown receiver type {other:?}, expected one of: {}",
                    ReceiverKind::NAMES.join(", ")
                ),
            );
            return None;
        }
    };
    for label in raw.matchers.keys() {
        if !valid_label_name(label) {
            p.receiver(&name, format!("match: {label:?} is not a valid label name"));
        }
    }
    let repeat_interval = match (&raw.repeat_interval, kind) {
        (Some(r), ReceiverKind::Alertmanager) => {
            p.at(
                Some(r.span()),
                "repeat_interval does not apply to type \"alertmanager\": Alertmanager decides when to repeat (set it in its route), and creditwatch re-sends firing alerts to it every minute",
            );
            DEFAULT_REPEAT_INTERVAL
        }
        (Some(r), _) if r.get_ref().duration < Duration::from_secs(1) => {
            p.at(Some(r.span()), "repeat_interval must be at least 1s");
            DEFAULT_REPEAT_INTERVAL
        }
        (Some(r), _) => r.get_ref().duration,
        (None, _) => DEFAULT_REPEAT_INTERVAL,
    };
    let (url, url_source) = resolve_url(p, &name, &raw, base_dir, env)?;
    match reqwest::Url::parse(url.expose()) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
        // Never echo the URL: it may carry a token.
        _ => {
            p.receiver(&name, "url is not an http or https URL");
            return None;
        }
    }
    Some(ReceiverConfig {
        name,
        kind,
        url,
        url_source,
        matchers: raw.matchers,
        repeat_interval,
    })
}

/// Exactly one of `url`, `url_env`, `url_file`, resolved like an account's API key.
fn resolve_url(
    p: &mut Parser<'_>,
    name: &str,
    raw: &RawReceiver,
    base_dir: &Path,
    env: EnvLookup<'_>,
) -> Option<(Secret, KeySource)> {
    let given = [
        raw.url.is_some(),
        raw.url_env.is_some(),
        raw.url_file.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if given != 1 {
        p.receiver(
            name,
            if given == 0 {
                "no url: set one of url, url_env or url_file"
            } else {
                "set exactly one of url, url_env or url_file, not several"
            },
        );
        return None;
    }
    if let Some(var) = &raw.url_env {
        return match env(var) {
            Some(v) if !v.trim().is_empty() => {
                Some((Secret::new(v.trim()), KeySource::Env(var.clone())))
            }
            Some(_) => {
                p.receiver(name, format!("environment variable {var} is empty"));
                None
            }
            None => {
                p.receiver(name, format!("environment variable {var} is not set"));
                None
            }
        };
    }
    if let Some(file) = &raw.url_file {
        let path = if file.is_absolute() {
            file.clone()
        } else {
            base_dir.join(file)
        };
        return match std::fs::read_to_string(&path) {
            Ok(v) if !v.trim().is_empty() => {
                if crate::config::world_readable(&path) {
                    p.warn(format!(
                        "receiver {name:?}: url file {} is readable by every user; chmod 600 it",
                        path.display()
                    ));
                }
                Some((Secret::new(v.trim()), KeySource::File(path)))
            }
            Ok(_) => {
                p.receiver(name, format!("url file {} is empty", path.display()));
                None
            }
            Err(e) => {
                p.receiver(
                    name,
                    format!("cannot read url file {}: {e}", path.display()),
                );
                None
            }
        };
    }
    let url = raw.url.as_ref().expect("counted above");
    if url.get_ref().trim().is_empty() {
        p.at(Some(url.span()), "url is empty");
        return None;
    }
    if kind_is_slack(raw) {
        p.warn(format!(
            "receiver {name:?}: a Slack webhook URL is a secret; prefer url_env or url_file to writing it in the config file"
        ));
    }
    Some((Secret::new(url.get_ref().trim()), KeySource::Literal))
}

fn kind_is_slack(raw: &RawReceiver) -> bool {
    raw.kind.get_ref() == "slack"
}

/// Prometheus's label-name rule: `[a-zA-Z_][a-zA-Z0-9_]*`.
fn valid_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const ACCOUNT: &str = "[[account]]\nname = \"images\"\nprovider = \"fluximage\"\napi_key = \"k\"\nbilling_anchor = \"2026-01-15\"\n";

    fn parse(src: &str) -> Result<Config, Vec<String>> {
        let env = |k: &str| {
            (k == "SLACK_URL").then(|| "https://hooks.slack.test/services/T0/B0/s3cr3t".to_string())
        };
        Config::parse(
            &format!("{ACCOUNT}{src}"),
            Path::new("t.toml"),
            Path::new("."),
            &env,
        )
        .map(|(c, _)| c)
        .map_err(|e| e.problems.iter().map(|p| p.to_string()).collect())
    }

    #[test]
    fn a_full_section_with_overrides_and_every_receiver_type() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("hook-url");
        std::fs::write(&file, "http://127.0.0.1:9095/hook?token=filetoken\n").unwrap();
        let src = format!(
            r#"
[alerting]
evaluation_interval = "10s"
external_url = "https://creditwatch.internal/"
[alerting.rules.CreditsExhaustionBeforeReset]
for = "30m"
remaining_ratio_below = 0.25
[alerting.rules.ApiKeyExpiringSoon]
within = "14d"
[alerting.rules.CreditsLow]
enabled = false
[[alerting.receiver]]
name = "oncall"
type = "webhook"
url_file = "{}"
match = {{ severity = "critical" }}
repeat_interval = "1h"
[[alerting.receiver]]
name = "chat"
type = "slack"
url_env = "SLACK_URL"
[[alerting.receiver]]
name = "am"
type = "alertmanager"
url = "http://127.0.0.1:9093"
"#,
            file.display()
        );
        let c = parse(&src).unwrap();
        let a = c.alerting.as_ref().unwrap();
        assert_eq!(a.evaluation_interval, Duration::from_secs(10));
        assert_eq!(
            a.external_url.as_deref(),
            Some("https://creditwatch.internal")
        );
        let r = &a.rules[&AlertName::CreditsExhaustionBeforeReset];
        assert_eq!(
            (r.for_, r.ratio_below),
            (Duration::from_secs(1800), Some(0.25))
        );
        assert_eq!(
            a.rules[&AlertName::ApiKeyExpiringSoon].within,
            Some(Duration::from_secs(14 * 86400))
        );
        assert!(!a.rules[&AlertName::CreditsLow].enabled);
        assert_eq!(
            a.rules[&AlertName::CreditsExhausted],
            AlertName::CreditsExhausted.defaults()
        );
        let kinds: Vec<_> = a
            .receivers
            .iter()
            .map(|r| (r.name.as_str(), r.kind))
            .collect();
        assert_eq!(
            kinds,
            [
                ("oncall", ReceiverKind::Webhook),
                ("chat", ReceiverKind::Slack),
                ("am", ReceiverKind::Alertmanager)
            ]
        );
        assert_eq!(
            a.receivers[0].url.expose(),
            "http://127.0.0.1:9095/hook?token=filetoken"
        );
        assert_eq!(a.receivers[0].matchers["severity"], "critical");
        assert_eq!(a.receivers[0].repeat_interval, Duration::from_secs(3600));
        assert_eq!(a.receivers[1].repeat_interval, DEFAULT_REPEAT_INTERVAL);
        assert_eq!(
            a.receivers[1].url_source,
            KeySource::Env("SLACK_URL".into())
        );
        let debug = format!("{c:?}");
        assert!(
            !debug.contains("s3cr3t") && !debug.contains("filetoken"),
            "URLs are secrets"
        );
    }

    #[test]
    fn every_problem_is_reported_with_its_location() {
        let src = r#"
[alerting]
evaluation_interval = "500ms"
colour = "red"
[alerting.rules.CreditsLoww]
for = "1h"
[alerting.rules.CreditsLow]
within = "1h"
remaining_ratio_below = 10
fore = "1h"
[[alerting.receiver]]
name = "a"
type = "pager"
url = "http://x"
[[alerting.receiver]]
name = "b"
type = "webhook"
url_env = "NOPE"
[[alerting.receiver]]
name = "c"
type = "alertmanager"
url = "http://am:9093"
repeat_interval = "1h"
[[alerting.receiver]]
name = "c"
type = "slack"
url = "not a url with s3cr3t"
[[alerting.receiver]]
name = "d"
type = "webhook"
"#;
        let e = parse(src).unwrap_err();
        let expected = [
            "t.toml:9:1: unknown key `alerting.colour`",
            "t.toml:8:23: alerting.evaluation_interval must be at least 1s",
            "t.toml:15:1: unknown key `alerting.rules.CreditsLow.fore` (keys: enabled, for, remaining_ratio_below)",
            "t.toml:14:25: remaining_ratio_below must be a fraction in (0, 1], such as 0.1 for 10%; found 10",
            "t.toml:13:10: CreditsLow has no within threshold (keys: enabled, for, remaining_ratio_below)",
            "t.toml:10:17: unknown alert `CreditsLoww` in alerting.rules, expected one of: CreditsExhaustionBeforeReset, CreditsExhaustionImminent, CreditsLow, CreditsExhausted, CreditwatchAccountDown, ApiKeyExpiringSoon",
            "t.toml:18:8: unknown receiver type \"pager\", expected one of: webhook, slack, alertmanager",
            "t.toml: receiver \"b\": environment variable NOPE is not set",
            "t.toml:28:19: repeat_interval does not apply to type \"alertmanager\": Alertmanager decides when to repeat (set it in its route), and creditwatch re-sends firing alerts to it every minute",
            "t.toml: receiver \"c\": url is not an http or https URL",
            "t.toml: receiver \"d\": no url: set one of url, url_env or url_file",
        ];
        assert_eq!(e, expected);
        assert!(!e.join("\n").contains("s3cr3t"));
    }

    #[test]
    fn alerting_needs_a_receiver_and_unique_names() {
        assert_eq!(
            parse("[alerting]\n").unwrap_err(),
            ["t.toml:6:2: [alerting] has no receiver: add at least one [[alerting.receiver]]"]
        );
        let r = "[[alerting.receiver]]\nname = \"x\"\ntype = \"webhook\"\nurl = \"http://h/\"\n";
        assert_eq!(
            parse(&format!("{r}{r}")).unwrap_err(),
            ["t.toml: receiver \"x\": duplicate receiver name: each receiver needs a unique name"]
        );
        assert!(parse("").unwrap().alerting.is_none());
    }
}
