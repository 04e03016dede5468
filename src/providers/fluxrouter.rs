//! FluxRouter: spend booked by the account's metering proxy, as the `included` and `ceiling` pools in USD, reset monthly.
//!
//! Facts that shape this provider (see the provider reference):
//! - FluxRouter documents no usage API. The only machine-readable spend is the `X-Flux-Cost-Usd`
//!   header of each non-streaming response, so a fluxrouter account runs a metering reverse proxy
//!   ([`crate::proxy`]) and its "poll" reads the period's spend from the proxy's ledger: no HTTP.
//! - The included allowance, the spend ceiling and the billing anchor come from configuration.
//! - Streaming responses carry no cost; they are counted as unpriced, never estimated.
//! - The account takes no API key: each client's own Authorization passes through the proxy.

use super::{KeyNeed, PollContext, PollError, PoolReading, Reading, Unit};
use crate::config::{AccountConfig, HumanDuration, parse_listen};
use crate::forecast::consumption::ConsumptionRule;
use crate::forecast::schedule::Schedule;
use crate::proxy::{ProxyConfig, Upstream, cost};
use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

/// Where the API lives unless `upstream` says otherwise.
pub const DEFAULT_UPSTREAM: &str = "https://api.fluxrouter.ai";
/// Where the proxy listens unless `proxy_listen` says otherwise: loopback only.
pub const DEFAULT_PROXY_LISTEN: &str = "127.0.0.1:9478";
/// How long the upstream may take to send response headers (long completions are slow).
pub const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(300);
/// How long the request log keeps each request: the current and the previous billing period.
pub const DEFAULT_REQUEST_LOG_RETENTION: Duration = Duration::from_secs(62 * 86_400);

/// The provider keys of a fluxrouter account.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Settings {
    /// Where the proxy listens (`IP:PORT` or `:PORT`).
    #[serde(default = "default_listen")]
    pub proxy_listen: Listen,
    /// The only place the proxy forwards to.
    #[serde(default = "default_upstream")]
    pub upstream: Upstream,
    /// The plan's included usage credit per period.
    pub included_usd: Option<Usd>,
    /// The account's spend ceiling per period.
    pub spend_ceiling_usd: Option<Usd>,
    pub upstream_timeout: Option<HumanDuration>,
    pub request_log_retention: Option<HumanDuration>,
    /// Per-key attribution: key hash (12 hex characters) → name.
    #[serde(default)]
    pub keys: BTreeMap<String, String>,
}

/// A listen address, parsed where it is written so errors carry a line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listen(pub SocketAddr);

impl<'de> Deserialize<'de> for Listen {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_listen(&s)
            .map(Listen)
            .map_err(serde::de::Error::custom)
    }
}

impl<'de> Deserialize<'de> for Upstream {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Upstream::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// An amount of USD written as a number (`25`, `12.5`) or a string (`"12.50"`), kept exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usd(pub Decimal);

impl<'de> Deserialize<'de> for Usd {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Usd;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an amount in USD such as 25 or 12.50")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Usd, E> {
                if v < 0 {
                    return Err(E::custom(format!("amount {v} is negative")));
                }
                Ok(Usd(Decimal::from(v)))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Usd, E> {
                Ok(Usd(Decimal::from(v)))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Usd, E> {
                // The shortest text that reads back as `v` is what the user wrote (12.5, not
                // 12.4999999...).
                self.visit_str(&v.to_string())
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Usd, E> {
                if s.trim().starts_with('-') {
                    return Err(E::custom(format!("amount {s} is negative")));
                }
                cost::parse_cost(s)
                    .map(Usd)
                    .map_err(|e| E::custom(format!("invalid amount {s:?}: {e}")))
            }
        }
        d.deserialize_any(V)
    }
}

fn default_listen() -> Listen {
    Listen(DEFAULT_PROXY_LISTEN.parse().expect("valid default"))
}

fn default_upstream() -> Upstream {
    Upstream::parse(DEFAULT_UPSTREAM).expect("valid default")
}

fn f(d: Decimal) -> f64 {
    d.to_f64().unwrap_or(f64::MAX)
}

impl Settings {
    pub fn key_need(&self) -> KeyNeed {
        KeyNeed::None
    }

    pub fn validate(&self, account: &AccountConfig) -> Vec<String> {
        let mut v = Vec::new();
        if account.billing_anchor.is_none() {
            v.push(
                "fluxrouter spend resets monthly on the billing day: set billing_anchor = \"YYYY-MM-DD\""
                    .to_string(),
            );
        }
        if account.base_url.is_some() {
            v.push(
                "a fluxrouter account forwards to `upstream`; base_url does not apply (remove it)"
                    .to_string(),
            );
        }
        if self.included_usd.is_none() && self.spend_ceiling_usd.is_none() {
            v.push(
                "set included_usd (the plan's included credit) and/or spend_ceiling_usd: spend is compared with them"
                    .to_string(),
            );
        }
        if self
            .upstream_timeout
            .as_ref()
            .is_some_and(|t| t.duration.is_zero())
        {
            v.push("upstream_timeout must be greater than 0".to_string());
        }
        for (hash, name) in &self.keys {
            if !cost::is_key_hash(hash) {
                v.push(format!(
                    "keys: {hash:?} is not a key hash: use the first 12 hex characters of the key's SHA-256 (printf %s \"$KEY\" | sha256sum | cut -c1-12)"
                ));
            }
            if name.trim().is_empty() {
                v.push(format!("keys: the name for {hash:?} is empty"));
            }
        }
        v
    }

    pub fn upstream_timeout(&self) -> Duration {
        self.upstream_timeout
            .as_ref()
            .map(|t| t.duration)
            .unwrap_or(DEFAULT_UPSTREAM_TIMEOUT)
    }

    pub fn request_log_retention(&self) -> Duration {
        self.request_log_retention
            .as_ref()
            .map(|t| t.duration)
            .unwrap_or(DEFAULT_REQUEST_LOG_RETENTION)
    }

    fn schedule(account: &AccountConfig) -> Schedule {
        Schedule::Monthly {
            anchor: account
                .billing_anchor
                .expect("validated: fluxrouter accounts have a billing anchor"),
        }
    }

    /// What the account's proxy runs with.
    pub fn proxy_config(&self, account: &AccountConfig) -> ProxyConfig {
        ProxyConfig {
            account: account.name.clone(),
            listen: self.proxy_listen.0,
            upstream: self.upstream.clone(),
            upstream_timeout: self.upstream_timeout(),
            schedule: Self::schedule(account),
            keys: self.keys.clone(),
        }
    }

    /// Reads this period's spend from the proxy's ledger.
    pub async fn poll(&self, ctx: &PollContext<'_>) -> Result<Reading, PollError> {
        let meter = ctx.meter.ok_or_else(|| {
            PollError::Connect(
                "no proxy runs for this account: fluxrouter spend is metered by the proxy that `creditwatch run` starts"
                    .into(),
            )
        })?;
        let schedule = Self::schedule(ctx.account);
        let period = schedule
            .period_at(ctx.now)
            .expect("monthly schedules have periods");
        let spend = meter.spend_between(
            period.start.timestamp_millis(),
            period.end.timestamp_millis(),
        );
        Ok(self.reading(spend, meter.lifetime_cost(), schedule))
    }

    /// The pools for a period's spend. Pure.
    pub fn reading(&self, spend: Decimal, lifetime: Decimal, schedule: Schedule) -> Reading {
        let pool = |name: &str, limit: Decimal| PoolReading {
            pool: name.into(),
            key: String::new(),
            unit: Unit::Usd,
            used: Some(f(spend)),
            // Spend past the limit is overage (included) or beyond the ceiling: nothing is left,
            // and `used - limit` shows by how much.
            remaining: Some(f((limit - spend).max(Decimal::ZERO))),
            limit: Some(f(limit)),
            available: None,
            schedule,
            rule: ConsumptionRule::Used,
            // The ledger knows every cost exactly, including those between the last poll and a
            // reset, so the running total is taken from it rather than from differences.
            cumulative: Some(f(lifetime)),
        };
        let mut pools = Vec::new();
        if let Some(Usd(l)) = self.included_usd {
            pools.push(pool("included", l));
        }
        if let Some(Usd(l)) = self.spend_ceiling_usd {
            pools.push(pool("ceiling", l));
        }
        Reading {
            plan: None,
            pools,
            ..Reading::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use chrono::NaiveDate;
    use std::path::Path;

    fn parse(extra: &str) -> Result<Config, Vec<String>> {
        let src = format!(
            "[[account]]\nname = \"llm\"\nprovider = \"fluxrouter\"\nbilling_anchor = \"2026-01-31\"\n{extra}"
        );
        Config::parse(&src, Path::new("t.toml"), Path::new("."), &|_| None)
            .map(|(c, _)| c)
            .map_err(|e| e.problems.iter().map(|p| p.to_string()).collect())
    }

    fn settings(c: &Config) -> &Settings {
        match &c.accounts[0].provider {
            super::super::ProviderSettings::Fluxrouter(s) => s,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn defaults_are_loopback_and_the_public_api() {
        let c = parse("spend_ceiling_usd = 100\n").unwrap();
        let s = settings(&c);
        assert_eq!(s.proxy_listen.0.to_string(), "127.0.0.1:9478");
        assert_eq!(s.upstream.to_string(), "https://api.fluxrouter.ai");
        assert_eq!(s.upstream_timeout(), Duration::from_secs(300));
        assert_eq!(s.included_usd, None);
        assert_eq!(s.spend_ceiling_usd, Some(Usd(Decimal::from(100))));
    }

    #[test]
    fn amounts_are_exact_and_keys_are_checked() {
        let c = parse(
            "included_usd = 12.34\nspend_ceiling_usd = \"100.10\"\nproxy_listen = \":9500\"\nupstream = \"http://127.0.0.1:8080/flux\"\nupstream_timeout = \"90s\"\n[account.keys]\ne0dbaa0c6455 = \"search\"\n",
        )
        .unwrap();
        let s = settings(&c);
        assert_eq!(s.included_usd.unwrap().0.to_string(), "12.34");
        assert_eq!(s.spend_ceiling_usd.unwrap().0.to_string(), "100.1");
        assert_eq!(s.proxy_listen.0.to_string(), "0.0.0.0:9500");
        assert_eq!(s.keys["e0dbaa0c6455"], "search");
        let p = s.proxy_config(&c.accounts[0]);
        assert_eq!(p.upstream_timeout, Duration::from_secs(90));
        assert_eq!(p.upstream.to_string(), "http://127.0.0.1:8080/flux");
    }

    #[test]
    fn problems_are_located_or_name_the_account() {
        let e = parse("spend_ceiling_usd = -5\n").unwrap_err();
        assert_eq!(e, ["t.toml:5:21: amount -5 is negative"]);
        let e = parse("spend_ceiling_usd = 5\nproxy_listen = \"localhost\"\n").unwrap_err();
        assert!(
            e[0].starts_with("t.toml:6:16: invalid listen address \"localhost\""),
            "{e:?}"
        );
        let e = parse("spend_ceiling_usd = 5\nupstream = \"ftp://x\"\n").unwrap_err();
        assert_eq!(
            e,
            ["t.toml:6:12: upstream must be http or https, not \"ftp\""]
        );
        let e = parse("api_key = \"k\"\nbase_url = \"http://x\"\nkeys = { nothex = \"a\" }\n")
            .unwrap_err();
        assert_eq!(
            e,
            [
                "t.toml: account \"llm\": this provider takes no API key (its proxy passes each client's own Authorization through); remove api_key_env / api_key_file / api_key",
                "t.toml: account \"llm\": a fluxrouter account forwards to `upstream`; base_url does not apply (remove it)",
                "t.toml: account \"llm\": set included_usd (the plan's included credit) and/or spend_ceiling_usd: spend is compared with them",
                "t.toml: account \"llm\": keys: \"nothex\" is not a key hash: use the first 12 hex characters of the key's SHA-256 (printf %s \"$KEY\" | sha256sum | cut -c1-12)",
            ]
        );
        let e = parse("spend_ceiling_usd = 5\nproxy_lsiten = \":1\"\n").unwrap_err();
        assert_eq!(
            e,
            ["t.toml:6:1: unknown key `proxy_lsiten` for provider fluxrouter"]
        );
    }

    #[test]
    fn pools_compare_spend_with_allowance_and_ceiling() {
        let c = parse("included_usd = 20\nspend_ceiling_usd = 50\n").unwrap();
        let s = settings(&c);
        let schedule = Schedule::Monthly {
            anchor: NaiveDate::from_ymd_opt(2026, 1, 31).unwrap(),
        };
        let r = s.reading("25.5".parse().unwrap(), "80.25".parse().unwrap(), schedule);
        let got: Vec<_> = r
            .pools
            .iter()
            .map(|p| (p.pool.as_str(), p.used, p.remaining, p.limit, p.cumulative))
            .collect();
        assert_eq!(
            got,
            [
                ("included", Some(25.5), Some(0.0), Some(20.0), Some(80.25)),
                ("ceiling", Some(25.5), Some(24.5), Some(50.0), Some(80.25)),
            ]
        );
        assert!(
            r.pools
                .iter()
                .all(|p| p.unit == Unit::Usd && p.key.is_empty())
        );
    }
}
