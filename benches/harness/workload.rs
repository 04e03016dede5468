//! What one scenario polls: the accounts, written out as a creditwatch config and as the baseline's account list.

use crate::upstream::{self, FLOOW_ALLOWANCE, provider_of};
use creditwatch::config::{AccountConfig, Config};
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

/// The environment variable every generated account reads its (fake) key from.
pub const KEY_ENV: &str = "CREDITWATCH_BENCH_KEY";
pub const KEY_VALUE: &str = "bench-key";

/// One scenario's accounts and polling settings.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Accounts, the three polled providers in turn; a single account is ImageRouter.
    pub accounts: usize,
    /// API keys of each ImageRouter account.
    pub keys: usize,
    pub interval: Duration,
    pub concurrency: usize,
}

impl Workload {
    /// The provider of account `i`.
    pub fn provider(&self, i: usize) -> &'static str {
        if self.accounts == 1 {
            "imagerouter"
        } else {
            provider_of(i)
        }
    }

    /// Bodies grow with the key list (about 330 bytes a key); leave room.
    fn max_response_bytes(&self) -> u64 {
        (1 << 20).max(self.keys as u64 * 1024)
    }

    /// The creditwatch config: every account polls the fake upstream at `base`.
    pub fn config_toml(&self, upstream: &str, state_path: &Path) -> String {
        let timeout = self.interval.min(Duration::from_secs(15));
        let mut s = String::with_capacity(self.accounts * 200 + 512);
        let _ = writeln!(s, "state_path = {:?}", state_path.display().to_string());
        let _ = writeln!(s, "max_concurrent_polls = {}", self.concurrency);
        let _ = writeln!(s, "\n[defaults]");
        let _ = writeln!(s, "interval = \"{}ms\"", self.interval.as_millis());
        let _ = writeln!(s, "timeout = \"{}ms\"", timeout.as_millis());
        let _ = writeln!(s, "max_response_bytes = {}", self.max_response_bytes());
        for i in 0..self.accounts {
            let provider = self.provider(i);
            let _ = writeln!(s, "\n[[account]]");
            let _ = writeln!(s, "name = \"{}\"", account_name(i));
            let _ = writeln!(s, "provider = \"{provider}\"");
            let _ = writeln!(s, "api_key_env = \"{KEY_ENV}\"");
            let _ = writeln!(s, "base_url = \"{upstream}/a/{i}\"");
            match provider {
                "fluximage" => {
                    let _ = writeln!(s, "billing_anchor = \"{}\"", upstream::billing_anchor(i));
                }
                "floow" => {
                    let _ = writeln!(s, "billing_anchor = \"{}\"", upstream::billing_anchor(i));
                    let _ = writeln!(s, "monthly_allowance = {FLOOW_ALLOWANCE}");
                }
                _ => {}
            }
        }
        s
    }

    /// The baseline's account list (JSON): name, provider, URL and what it needs to compute the
    /// same pools.
    pub fn baseline_json(&self, upstream: &str) -> String {
        let accounts: Vec<serde_json::Value> = (0..self.accounts)
            .map(|i| {
                let provider = self.provider(i);
                let base = format!("{upstream}/a/{i}");
                let url = match provider {
                    "fluximage" => format!("{base}/api/usage"),
                    "imagerouter" => format!("{base}/v1/credits?by_api_key=true"),
                    _ => format!("{base}/api/v1/usage?days=31"),
                };
                serde_json::json!({
                    "name": account_name(i),
                    "provider": provider,
                    "url": url,
                    "billing_anchor": upstream::billing_anchor(i).to_string(),
                    "monthly_allowance": FLOOW_ALLOWANCE,
                })
            })
            .collect();
        serde_json::to_string(&accounts).expect("plain JSON")
    }

    /// The config parsed as the daemon parses it, with each account's index.
    pub fn parse(&self, upstream: &str, state_path: &Path) -> Vec<(usize, AccountConfig)> {
        let text = self.config_toml(upstream, state_path);
        let lookup = |name: &str| (name == KEY_ENV).then(|| KEY_VALUE.to_string());
        let (config, _) = Config::parse(&text, Path::new("bench.toml"), Path::new("."), &lookup)
            .unwrap_or_else(|e| panic!("the generated config is valid: {e}"));
        config.accounts.into_iter().enumerate().collect()
    }

    /// The retention the daemon derives from this config.
    pub fn retention(&self, upstream: &str, state_path: &Path) -> Duration {
        let text = self.config_toml(upstream, state_path);
        let lookup = |name: &str| (name == KEY_ENV).then(|| KEY_VALUE.to_string());
        let (config, _) = Config::parse(&text, Path::new("bench.toml"), Path::new("."), &lookup)
            .unwrap_or_else(|e| panic!("the generated config is valid: {e}"));
        config.retention()
    }
}

pub fn account_name(i: usize) -> String {
    format!("acct-{i:05}")
}
