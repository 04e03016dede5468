//! Scenario (c): the fluxrouter metering proxy under `wrk`, against a direct connection to the same fake upstream.

use crate::measure::{self, Proc};
use crate::upstream::{Options, Upstream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// What one `wrk` run reported.
#[derive(Debug, Clone, Copy)]
pub struct Wrk {
    pub p50: Duration,
    pub p99: Duration,
    pub rps: f64,
    pub requests: u64,
}

/// One load level: `wrk` directly against the upstream and through the proxy.
#[derive(Debug, Clone)]
pub struct Level {
    pub threads: u32,
    pub connections: u32,
    pub direct: Wrk,
    pub proxied: Wrk,
}

/// The proxy's figures: one connection (the added latency) and 16 (throughput), as
/// `scripts/bench-proxy` measures them.
#[derive(Debug, Clone)]
pub struct ProxyFigures {
    pub levels: Vec<Level>,
    /// The daemon's CPU time per proxied request.
    pub cpu_per_request: f64,
    pub peak_rss: u64,
}

/// A chat completion request, as an application would send it.
const SCRIPT: &str = r#"wrk.method = "POST"
wrk.body = '{"model":"flux-auto","messages":[{"role":"user","content":"Say ok."}]}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer bench-key"
"#;

pub async fn run(binary: &Path, dir: &Path, duration: Duration) -> Result<ProxyFigures, String> {
    eprintln!("== (c) fluxrouter proxy under wrk");
    let dir = dir.join("c-proxy");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let up = Upstream::start(Options {
        latency: Duration::ZERO,
        imagerouter_keys: 0,
    })
    .await
    .map_err(|e| e.to_string())?;
    let db = std::path::absolute(dir.join("proxy.db")).map_err(|e| e.to_string())?;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    let (port, proxy_port) = (measure::free_port(), measure::free_port());
    let config = dir.join("creditwatch.toml");
    std::fs::write(
        &config,
        format!(
            r#"state_path = {:?}

[[account]]
name = "llm"
provider = "fluxrouter"
proxy_listen = "127.0.0.1:{proxy_port}"
upstream = "{}"
included_usd = 100
spend_ceiling_usd = 500
billing_anchor = "2026-01-01"
"#,
            db.display().to_string(),
            up.url()
        ),
    )
    .map_err(|e| e.to_string())?;
    let script = dir.join("completion.lua");
    std::fs::write(&script, SCRIPT).map_err(|e| e.to_string())?;
    let log = std::fs::File::create(dir.join("creditwatch.log")).map_err(|e| e.to_string())?;
    let mut proc_ = Proc::spawn(
        Command::new(binary)
            .args(["run", "-c"])
            .arg(&config)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log),
    )
    .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
    let client = reqwest::Client::new();
    measure::wait_ok(
        &client,
        &format!("http://127.0.0.1:{port}/-/ready"),
        Duration::from_secs(30),
        &mut proc_,
    )
    .await?;
    let url = |p: u16| format!("http://127.0.0.1:{p}/v1/chat/completions");
    let mut levels = Vec::new();
    let (mut cpu, mut proxied_requests) = (0.0, 0);
    for (threads, connections) in [(1, 1), (2, 16)] {
        let direct = wrk(
            &script,
            &url(up.addr.port()),
            threads,
            connections,
            duration,
        )
        .await?;
        let cpu0 = measure::cpu_seconds(proc_.pid());
        let proxied = wrk(&script, &url(proxy_port), threads, connections, duration).await?;
        cpu += measure::cpu_seconds(proc_.pid()) - cpu0;
        proxied_requests += proxied.requests;
        levels.push(Level {
            threads,
            connections,
            direct,
            proxied,
        });
    }
    let peak_rss = measure::status_bytes(proc_.pid(), "VmHWM");
    proc_.stop();
    Ok(ProxyFigures {
        levels,
        cpu_per_request: cpu / proxied_requests.max(1) as f64,
        peak_rss,
    })
}

async fn wrk(
    script: &Path,
    url: &str,
    threads: u32,
    connections: u32,
    duration: Duration,
) -> Result<Wrk, String> {
    let out = tokio::process::Command::new("wrk")
        .args(["-t", &threads.to_string(), "-c", &connections.to_string()])
        .args(["-d", &format!("{}s", duration.as_secs().max(1))])
        .arg("--latency")
        .arg("-s")
        .arg(script)
        .arg(url)
        .output()
        .await
        .map_err(|e| format!("cannot run wrk (Debian package wrk): {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() {
        return Err(format!("wrk failed: {text}"));
    }
    parse_wrk(&text).ok_or_else(|| format!("unexpected wrk output:\n{text}"))
}

/// Reads the latency distribution and request rate from `wrk --latency` output.
pub fn parse_wrk(text: &str) -> Option<Wrk> {
    let pct = |p: &str| {
        text.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(p))
            .and_then(|v| parse_duration(v.trim()))
    };
    let rps = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())?;
    let requests = text
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())?;
    if text.contains("Non-2xx or 3xx responses") || text.contains("Socket errors") {
        return None;
    }
    Some(Wrk {
        p50: pct("50%")?,
        p99: pct("99%")?,
        rps,
        requests,
    })
}

fn parse_duration(v: &str) -> Option<Duration> {
    let (num, scale) = if let Some(n) = v.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = v.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1.0)
    } else {
        return None;
    };
    num.trim()
        .parse::<f64>()
        .ok()
        .map(|x| Duration::from_secs_f64(x * scale))
}
