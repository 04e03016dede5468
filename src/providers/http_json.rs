//! Generic `http_json`: one pool read from any JSON endpoint with RFC 6901 pointers, for APIs without a module of their own.
//!
//! The account names a `url`, the pool's `unit` and `pool` name, and JSON pointers for
//! `remaining`, `used` and `limit` (at least one of remaining and used). A pointer that finds
//! `null` means "none" (OpenRouter reports `limit: null` for a key without a limit); a pointer
//! that finds nothing fails the poll with reason `parse`, naming the pointer. Numbers may be JSON
//! numbers or decimal strings. Headers may carry literal values or values read from the
//! environment or a file, each with an optional prefix; every value is held as a [`Secret`].
//! `reset` is `"none"` (default), `"daily"` (00:00 UTC), `"weekly"` (Mondays 00:00 UTC, or the
//! weekday of `billing_anchor`) or `"monthly"` (from `billing_anchor`).

use super::{
    KeyNeed, PollContext, PollError, PoolReading, Reading, Unit, checked_amount, decimal_to_f64,
    parse_decimal, parse_json,
};
use crate::config::{AccountConfig, EnvLookup};
use crate::forecast::consumption::ConsumptionRule;
use crate::forecast::schedule::{Every, Schedule};
use crate::secret::Secret;
use chrono::{DateTime, NaiveDate, NaiveTime};
use serde::Deserialize;
use serde::de::{self, MapAccess, Visitor};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// The http_json account keys.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Settings {
    /// The full URL of the JSON document (`base_url`, when set, replaces its origin).
    pub url: String,
    /// Extra request headers, by name.
    #[serde(default)]
    pub headers: BTreeMap<String, HeaderSpec>,
    pub unit: Unit,
    /// The `pool` label value.
    pub pool: String,
    /// JSON pointer (RFC 6901) to what is left.
    pub remaining: Option<String>,
    /// JSON pointer to what was consumed in the current period.
    pub used: Option<String>,
    /// JSON pointer to the period's allocation.
    pub limit: Option<String>,
    #[serde(default)]
    pub reset: Reset,
    /// Header values once resolved, in header-name order.
    #[serde(skip)]
    resolved: Vec<(String, Secret)>,
}

/// When the pool resets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reset {
    #[default]
    None,
    Daily,
    Weekly,
    Monthly,
}

/// A header value as written: a literal, or read from the environment or a file.
#[derive(Debug, Clone, PartialEq)]
pub enum HeaderSpec {
    Literal(Secret),
    From(HeaderFrom),
}

/// `{ env = "VAR", prefix = "Bearer " }` or `{ file = "/run/secrets/token" }`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct HeaderFrom {
    pub env: Option<String>,
    pub file: Option<PathBuf>,
    #[serde(default)]
    pub prefix: String,
}

impl<'de> Deserialize<'de> for HeaderSpec {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = HeaderSpec;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, or a table like { env = \"VAR\", prefix = \"Bearer \" }")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<HeaderSpec, E> {
                Ok(HeaderSpec::Literal(Secret::new(s)))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<HeaderSpec, A::Error> {
                // Through the map's own deserializer, so unknown keys inside are still reported.
                HeaderFrom::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(HeaderSpec::From)
            }
        }
        d.deserialize_any(V)
    }
}

const UNIX_MONDAY: &str = "1970-01-05";

impl Settings {
    pub fn key_need(&self) -> KeyNeed {
        KeyNeed::Optional
    }

    /// Reads every header value; messages name the header and never the value.
    pub fn resolve_secrets(&mut self, env: EnvLookup<'_>, base_dir: &Path) -> Vec<String> {
        let mut problems = Vec::new();
        let mut resolved = Vec::new();
        for (name, spec) in &self.headers {
            if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                problems.push(format!("headers: {name:?} is not a valid HTTP header name"));
                continue;
            }
            let value = match spec {
                HeaderSpec::Literal(v) => v.expose().to_string(),
                HeaderSpec::From(f) => match (&f.env, &f.file) {
                    (Some(var), None) => match env(var) {
                        Some(v) if !v.trim().is_empty() => format!("{}{}", f.prefix, v.trim()),
                        Some(_) => {
                            problems.push(format!(
                                "headers.{name}: environment variable {var} is empty"
                            ));
                            continue;
                        }
                        None => {
                            problems.push(format!(
                                "headers.{name}: environment variable {var} is not set"
                            ));
                            continue;
                        }
                    },
                    (None, Some(file)) => {
                        let path = if file.is_absolute() {
                            file.clone()
                        } else {
                            base_dir.join(file)
                        };
                        match std::fs::read_to_string(&path) {
                            Ok(v) if !v.trim().is_empty() => format!("{}{}", f.prefix, v.trim()),
                            Ok(_) => {
                                problems.push(format!(
                                    "headers.{name}: file {} is empty",
                                    path.display()
                                ));
                                continue;
                            }
                            Err(e) => {
                                problems.push(format!(
                                    "headers.{name}: cannot read {}: {e}",
                                    path.display()
                                ));
                                continue;
                            }
                        }
                    }
                    _ => {
                        problems.push(format!(
                            "headers.{name}: set exactly one of env or file (and optionally prefix)"
                        ));
                        continue;
                    }
                },
            };
            if reqwest::header::HeaderValue::from_str(&value).is_err() {
                problems.push(format!(
                    "headers.{name}: the value has characters an HTTP header cannot carry"
                ));
                continue;
            }
            resolved.push((name.clone(), Secret::new(value)));
        }
        self.resolved = resolved;
        problems
    }

    /// The resolved header values, so messages can be scrubbed of them.
    pub fn secrets(&self) -> impl Iterator<Item = &Secret> {
        self.resolved.iter().map(|(_, s)| s)
    }

    pub fn validate(&self, account: &AccountConfig) -> Vec<String> {
        let mut v = Vec::new();
        match reqwest::Url::parse(&self.url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            Ok(u) => v.push(format!("url must be http or https, not {:?}", u.scheme())),
            Err(e) => v.push(format!("invalid url {:?}: {e}", self.url)),
        }
        if self.pool.trim().is_empty() {
            v.push("pool is empty: name the pool (it becomes the `pool` label)".into());
        }
        if self.remaining.is_none() && self.used.is_none() {
            v.push(
                "set at least one of remaining or used (JSON pointers such as \"/data/limit_remaining\")"
                    .into(),
            );
        }
        for (key, p) in [
            ("remaining", &self.remaining),
            ("used", &self.used),
            ("limit", &self.limit),
        ] {
            if let Some(p) = p
                && let Err(why) = check_pointer(p)
            {
                v.push(format!(
                    "{key} = {p:?} is not a JSON pointer (RFC 6901): {why}"
                ));
            }
        }
        match (self.reset, account.billing_anchor) {
            (Reset::Monthly, None) => v.push(
                "reset = \"monthly\" needs billing_anchor = \"YYYY-MM-DD\", a day the period started"
                    .into(),
            ),
            (Reset::None | Reset::Daily, Some(_)) => v.push(format!(
                "billing_anchor applies only to reset = \"monthly\" or \"weekly\", not {:?}",
                format!("{:?}", self.reset).to_lowercase()
            )),
            _ => {}
        }
        if account.key.is_some()
            && self
                .headers
                .keys()
                .any(|h| h.eq_ignore_ascii_case("authorization"))
        {
            v.push(
                "the API key is sent as `Authorization: Bearer`; set either api_key_* or an Authorization header, not both"
                    .into(),
            );
        }
        v
    }

    /// The pool's reset schedule.
    pub fn schedule(&self, anchor: Option<NaiveDate>) -> Schedule {
        let midnight = |d: NaiveDate| d.and_time(NaiveTime::MIN).and_utc();
        let monday = NaiveDate::parse_from_str(UNIX_MONDAY, "%Y-%m-%d").expect("valid date");
        match self.reset {
            Reset::None => Schedule::Never,
            Reset::Daily => Schedule::Rolling {
                start: DateTime::UNIX_EPOCH,
                every: Every::Day,
            },
            Reset::Weekly => Schedule::Rolling {
                start: midnight(anchor.unwrap_or(monday)),
                every: Every::Week,
            },
            Reset::Monthly => Schedule::Monthly {
                anchor: anchor.expect("validated: monthly reset has an anchor"),
            },
        }
    }

    /// The URL to fetch: `url`, with its origin replaced by `base_url` when that is set.
    pub fn effective_url(&self, base_url: Option<&str>) -> String {
        match (base_url, reqwest::Url::parse(&self.url)) {
            (Some(base), Ok(u)) => {
                let mut s = format!("{base}{}", u.path());
                if let Some(q) = u.query() {
                    s.push('?');
                    s.push_str(q);
                }
                s
            }
            _ => self.url.clone(),
        }
    }

    pub async fn poll(&self, ctx: &PollContext<'_>) -> Result<Reading, PollError> {
        let url = self.effective_url(ctx.account.base_url.as_deref());
        let mut req = ctx.http.client.get(url);
        if let Some(key) = &ctx.account.key {
            req = req.bearer_auth(key.expose());
        }
        for (name, value) in &self.resolved {
            let mut v = reqwest::header::HeaderValue::from_str(value.expose())
                .expect("validated header value");
            v.set_sensitive(true);
            req = req.header(name.as_str(), v);
        }
        let resp = crate::http::fetch(req, ctx.account.max_response_bytes).await?;
        resp.check_status(error_detail)?;
        parse(&resp.body, self, ctx.account.billing_anchor)
    }
}

/// `""` or `/`-separated reference tokens where `~` is only ever `~0` or `~1`.
fn check_pointer(p: &str) -> Result<(), &'static str> {
    if !p.is_empty() && !p.starts_with('/') {
        return Err("it must start with \"/\"");
    }
    let mut chars = p.chars();
    while let Some(c) = chars.next() {
        if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
            return Err("\"~\" must be written \"~0\", and \"~1\" stands for \"/\"");
        }
    }
    Ok(())
}

/// Common error shapes: `{"error": "..."}`, `{"error": {"message": "..."}}`, `{"message": "..."}`.
pub fn error_detail(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let s = v
        .pointer("/error/message")
        .or_else(|| v.get("error"))
        .or_else(|| v.get("message"))?;
    s.as_str().map(str::to_string)
}

/// The number at `pointer`: `None` for `null`, an error when the pointer finds nothing or
/// something that is not a non-negative number.
fn read(doc: &Value, key: &str, pointer: &str) -> Result<Option<f64>, PollError> {
    let field = format!("{key} ({pointer})");
    match doc.pointer(pointer) {
        None => Err(PollError::parse(format!(
            "JSON pointer {pointer:?} ({key}) finds nothing in the response"
        ))),
        Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            let v = n.as_f64().ok_or_else(|| {
                PollError::parse(format!("field `{field}` is not a representable number"))
            })?;
            checked_amount(&field, v).map(Some)
        }
        Some(Value::String(s)) => parse_decimal(&field, s.trim()).map(|d| Some(decimal_to_f64(d))),
        Some(other) => Err(PollError::parse(format!(
            "field `{field}` is {}, expected a number",
            match other {
                Value::Bool(_) => "a boolean",
                Value::Array(_) => "an array",
                _ => "an object",
            }
        ))),
    }
}

/// Reads the configured pointers out of a body. Pure: no I/O, no clock.
pub fn parse(
    body: &[u8],
    s: &Settings,
    billing_anchor: Option<NaiveDate>,
) -> Result<Reading, PollError> {
    let doc: Value = parse_json(body)?;
    let get = |key: &str, p: &Option<String>| match p {
        Some(p) => read(&doc, key, p),
        None => Ok(None),
    };
    let remaining = get("remaining", &s.remaining)?;
    let used = get("used", &s.used)?;
    let limit = get("limit", &s.limit)?;
    Ok(Reading {
        plan: None,
        pools: vec![PoolReading {
            pool: s.pool.trim().to_string(),
            key: String::new(),
            unit: s.unit,
            used,
            remaining,
            limit,
            available: None,
            schedule: s.schedule(billing_anchor),
            // Falls back to drops in remaining when no used pointer is configured.
            rule: ConsumptionRule::Used,
            cumulative: None,
        }],
        ..Reading::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use chrono::Utc;

    /// OpenRouter's documented `GET /api/v1/key` response.
    const OPENROUTER: &str = r#"{
      "data": {
        "label": "sk-or-v1-au7...890",
        "limit": 100,
        "limit_remaining": 74.5,
        "limit_reset": "monthly",
        "include_byok_in_limit": false,
        "usage": 25.5,
        "usage_daily": 25.5,
        "usage_weekly": 25.5,
        "usage_monthly": 25.5,
        "byok_usage": 17.38,
        "is_free_tier": false,
        "expires_at": "2027-12-31T23:59:59Z"
      }
    }"#;

    fn settings(extra: &str, env: &[(&str, &str)]) -> Result<Settings, Vec<String>> {
        let src = format!(
            "[[account]]\nname = \"or\"\nprovider = \"http_json\"\nurl = \"https://openrouter.ai/api/v1/key\"\nunit = \"usd\"\npool = \"key\"\n{extra}"
        );
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let lookup = move |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        match Config::parse(&src, Path::new("t.toml"), Path::new("."), &lookup) {
            Ok((c, _)) => match &c.accounts[0].provider {
                crate::providers::ProviderSettings::HttpJson(s) => Ok((**s).clone()),
                _ => unreachable!(),
            },
            Err(e) => Err(e.problems.iter().map(|p| p.to_string()).collect()),
        }
    }

    #[test]
    fn openrouter_pointers() {
        let s = settings(
            "remaining = \"/data/limit_remaining\"\nused = \"/data/usage_monthly\"\nlimit = \"/data/limit\"\nreset = \"monthly\"\nbilling_anchor = \"2026-01-01\"\n",
            &[],
        )
        .unwrap();
        let r = parse(
            OPENROUTER.as_bytes(),
            &s,
            NaiveDate::from_ymd_opt(2026, 1, 1),
        )
        .unwrap();
        let p = &r.pools[0];
        assert_eq!(
            (p.pool.as_str(), p.unit, p.used, p.remaining, p.limit),
            ("key", Unit::Usd, Some(25.5), Some(74.5), Some(100.0))
        );
        // A key without a limit: null limit and remaining mean "none", not 0.
        let unlimited = OPENROUTER
            .replace("\"limit\": 100", "\"limit\": null")
            .replace("\"limit_remaining\": 74.5", "\"limit_remaining\": null");
        let r = parse(
            unlimited.as_bytes(),
            &s,
            NaiveDate::from_ymd_opt(2026, 1, 1),
        )
        .unwrap();
        assert!(r.pools[0].is_unlimited());
        assert_eq!(r.pools[0].used, Some(25.5));
    }

    #[test]
    fn pointer_errors_name_the_pointer() {
        let s = settings("remaining = \"/data/nope\"\nused = \"/data/label\"\n", &[]).unwrap();
        let e = parse(OPENROUTER.as_bytes(), &s, None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid response: JSON pointer \"/data/nope\" (remaining) finds nothing in the response"
        );
        let s = settings("remaining = \"/data/label\"\n", &[]).unwrap();
        let e = parse(OPENROUTER.as_bytes(), &s, None).unwrap_err();
        assert!(
            e.to_string().starts_with(
                "invalid response: field `remaining (/data/label)` is not a decimal number"
            ),
            "{e}"
        );
        let s = settings("remaining = \"/data/is_free_tier\"\n", &[]).unwrap();
        let e = parse(OPENROUTER.as_bytes(), &s, None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid response: field `remaining (/data/is_free_tier)` is a boolean, expected a number"
        );
        // Escaped tokens (RFC 6901): "a/b" is written a~1b.
        let s = settings("remaining = \"/a~1b/m~0n\"\n", &[]).unwrap();
        let r = parse(br#"{"a/b": {"m~n": "12.50"}}"#, &s, None).unwrap();
        assert_eq!(r.pools[0].remaining, Some(12.5));
    }

    #[test]
    fn config_errors() {
        let e = settings(
            "remaining = \"data/limit\"\nused = \"/a~2\"\nreset = \"monthly\"\n",
            &[],
        )
        .unwrap_err();
        assert_eq!(
            e,
            vec![
                "t.toml: account \"or\": remaining = \"data/limit\" is not a JSON pointer (RFC 6901): it must start with \"/\"",
                "t.toml: account \"or\": used = \"/a~2\" is not a JSON pointer (RFC 6901): \"~\" must be written \"~0\", and \"~1\" stands for \"/\"",
                "t.toml: account \"or\": reset = \"monthly\" needs billing_anchor = \"YYYY-MM-DD\", a day the period started",
            ]
        );
        let e = settings("limit = \"/data/limit\"\n", &[]).unwrap_err();
        assert_eq!(
            e,
            vec![
                "t.toml: account \"or\": set at least one of remaining or used (JSON pointers such as \"/data/limit_remaining\")"
            ]
        );
        let e = settings("used = \"/x\"\nreset = \"hourly\"\n", &[]).unwrap_err();
        assert_eq!(e.len(), 1);
        assert!(
            e[0].starts_with("t.toml:8:9: unknown variant `hourly`, expected one of"),
            "{e:?}"
        );
    }

    #[test]
    fn headers_from_env_and_literals_stay_secret() {
        let s = settings(
            "used = \"/x\"\nheaders = { Authorization = { env = \"OR_KEY\", prefix = \"Bearer \" }, X-Title = \"creditwatch\" }\n",
            &[("OR_KEY", "sk-or-v1-topsecret")],
        )
        .unwrap();
        assert_eq!(
            s.resolved
                .iter()
                .map(|(n, v)| (n.as_str(), v.expose()))
                .collect::<Vec<_>>(),
            vec![
                ("Authorization", "Bearer sk-or-v1-topsecret"),
                ("X-Title", "creditwatch")
            ]
        );
        assert!(!format!("{s:?}").contains("topsecret"));
        let e = settings(
            "used = \"/x\"\nheaders = { Authorization = { env = \"OR_KEY\" }, \"Bad Name\" = \"x\", X-A = { env = \"A\", file = \"f\" }, X-B = { envv = \"B\" } }\n",
            &[],
        )
        .unwrap_err();
        assert_eq!(
            e,
            vec![
                "t.toml:8:108: unknown key `headers.X-B.envv` for provider http_json",
                "t.toml: account \"or\": headers.Authorization: environment variable OR_KEY is not set",
                "t.toml: account \"or\": headers: \"Bad Name\" is not a valid HTTP header name",
                "t.toml: account \"or\": headers.X-A: set exactly one of env or file (and optionally prefix)",
                "t.toml: account \"or\": headers.X-B: set exactly one of env or file (and optionally prefix)",
            ]
        );
        let e = settings(
            "used = \"/x\"\napi_key = \"k\"\nheaders = { authorization = \"Bearer x\" }\n",
            &[],
        )
        .unwrap_err();
        assert_eq!(
            e,
            vec![
                "t.toml: account \"or\": the API key is sent as `Authorization: Bearer`; set either api_key_* or an Authorization header, not both"
            ]
        );
    }

    #[test]
    fn schedules_and_base_url() {
        let s = settings("used = \"/x\"\nreset = \"weekly\"\n", &[]).unwrap();
        let t = |x: &str| DateTime::parse_from_rfc3339(x).unwrap().with_timezone(&Utc);
        // 2026-11-21 is a Saturday: the week began Monday the 16th.
        let p = s
            .schedule(None)
            .period_at(t("2026-11-21T12:00:00Z"))
            .unwrap();
        assert_eq!(
            (p.start, p.end),
            (t("2026-11-16T00:00:00Z"), t("2026-11-23T00:00:00Z"))
        );
        let s = settings("used = \"/x\"\nreset = \"daily\"\n", &[]).unwrap();
        let p = s
            .schedule(None)
            .period_at(t("2028-02-28T23:00:00Z"))
            .unwrap();
        assert_eq!(p.end, t("2028-02-29T00:00:00Z"));
        assert_eq!(
            s.effective_url(Some("http://127.0.0.1:8080")),
            "http://127.0.0.1:8080/api/v1/key"
        );
        assert_eq!(s.effective_url(None), "https://openrouter.ai/api/v1/key");
        assert_eq!(
            error_detail(br#"{"error":{"code":401,"message":"No auth credentials found"}}"#)
                .as_deref(),
            Some("No auth credentials found")
        );
    }
}
