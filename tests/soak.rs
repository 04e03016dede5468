//! Soak: the real daemon with 200 accounts polling a fake upstream that injects every fault, while wrk hammers /metrics on loopback for 60 seconds. Its own test binary, so it runs once and alone.
//!
//! It requires: no non-2xx answer and no socket error from /metrics, resident memory that grows
//! less than [`RSS_GROWTH_BOUND_KIB`] from the end of the warm-up to the end, and no lost
//! sample: every successful poll is in the store, two samples each, and every successful answer
//! of the upstream is a successful poll unless it came after the daemon's timeout (which the
//! daemon then counted as one).

#[path = "it/upstream.rs"]
#[allow(dead_code)]
mod upstream;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use upstream::{Reply, Upstream, refused_url};

const ACCOUNTS: usize = 200;
/// Accounts whose upstream refuses connections; the others get every other fault.
const REFUSED: usize = 10;
/// How long wrk runs; `CREDITWATCH_SOAK_SECS` makes it longer (the suite uses the default).
fn soak() -> Duration {
    let secs = std::env::var("CREDITWATCH_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60u64);
    Duration::from_secs(secs.max(60))
}
const WARM_UP: Duration = Duration::from_secs(10);
/// The most resident memory may grow between the end of the warm-up and the end of the soak.
const RSS_GROWTH_BOUND_KIB: u64 = 16 * 1024;

/// The fault mix, by request: 12 in 20 succeed, the rest cover every fault once.
fn reply(account: usize, n: u64) -> Reply {
    // A fixed pseudo-random sequence per account, so runs are comparable.
    let h = ((account as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ n.wrapping_mul(0xBF58_476D_1CE4_E5B9))
    .rotate_left(17)
        % 20;
    match h {
        0..=11 => Reply::Ok,
        12 => Reply::Status(503),
        13 => Reply::RetryAfterSecs(1),
        14 => Reply::Hang,
        15 => Reply::Html,
        16 => Reply::TruncatedJson,
        17 => Reply::CutMidBody,
        18 => {
            if n.is_multiple_of(2) {
                Reply::Oversized(2 << 20)
            } else {
                Reply::Endless
            }
        }
        _ => Reply::Body(
            upstream::usage_body(45).replace("\"compressor_used\":45", "\"compressor_used\":NaN"),
        ),
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `VmRSS` and `VmHWM` of a process, in KiB.
fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} not in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The sum of a metric's series whose lines contain `matcher`.
fn sum(exposition: &str, name: &str, matcher: &str) -> f64 {
    exposition
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(matcher))
        .map(|l| l.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap())
        .sum()
}

fn wrk_path() -> &'static str {
    let p = "/usr/bin/wrk";
    assert!(
        std::path::Path::new(p).exists(),
        "wrk is not installed: run scripts/test (it installs Debian's wrk), or apt-get install wrk"
    );
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_200_faulty_accounts_under_wrk_for_60_seconds() {
    let wrk = wrk_path();
    let up = Upstream::start().await;
    let refused = refused_url();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut cfg = format!(
        "listen = \"127.0.0.1:{port}\"\nstate_path = \"s.db\"\n[defaults]\ninterval = \"1s\"\ntimeout = \"1s\"\n"
    );
    for i in 0..ACCOUNTS {
        let name = format!("a{i}");
        let url = if i < REFUSED {
            refused.clone()
        } else {
            up.script(&name, move |n| reply(i, n));
            up.base_url(&name)
        };
        cfg += &format!(
            "[[account]]\nname = \"{name}\"\nprovider = \"fluximage\"\napi_key = \"k\"\nbase_url = \"{url}\"\nbilling_anchor = \"2026-01-15\"\n"
        );
    }
    let cfg_path = dir.path().join("c.toml");
    std::fs::write(&cfg_path, cfg).unwrap();
    let log = dir.path().join("log.txt");
    let mut daemon = Killed(
        Command::new(env!("CARGO_BIN_EXE_creditwatch"))
            // The poller's debug line per successful poll is the daemon's own count of them.
            .env("RUST_LOG", "error,creditwatch::poller=debug")
            .args(["run", "-c"])
            .arg(&cfg_path)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let pid = daemon.0.id();
    let metrics_url = format!("http://127.0.0.1:{port}/metrics");
    let client = reqwest::Client::new();
    let ready_by = Instant::now() + Duration::from_secs(30);
    while !client
        .get(format!("http://127.0.0.1:{port}/-/ready"))
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
    {
        assert!(Instant::now() < ready_by, "not ready in 30s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let started = Instant::now();
    let wrk_run = tokio::task::spawn_blocking({
        let url = metrics_url.clone();
        move || {
            Command::new(wrk)
                .args(["-t2", "-c8", "--latency", "--timeout", "5s"])
                .arg(format!("-d{}s", soak().as_secs()))
                .arg(url)
                .output()
                .unwrap()
        }
    });
    tokio::time::sleep(WARM_UP).await;
    let (rss_warm, _) = rss_kib(pid);
    let mut rss_samples = vec![(WARM_UP.as_secs(), rss_warm)];
    while started.elapsed() < soak() - Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_secs(10)).await;
        rss_samples.push((started.elapsed().as_secs(), rss_kib(pid).0));
    }
    let out = wrk_run.await.unwrap();
    let (rss_end, hwm) = rss_kib(pid);
    let wrk_text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "wrk failed: {wrk_text}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Freeze the upstream: nothing succeeds any more, and what was in flight lands.
    for i in REFUSED..ACCOUNTS {
        up.always(&format!("a{i}"), Reply::Status(503));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let exposition = client
        .get(&metrics_url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let seen = (REFUSED..ACCOUNTS)
        .map(|i| (format!("a{i}"), up.seen(&format!("a{i}"))))
        .collect::<BTreeMap<_, _>>();
    let ok_answers: u64 = seen.values().map(|s| s.ok).sum();
    let requests: usize = seen.values().map(|s| s.requests.len()).sum();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    let exit = daemon.0.wait().unwrap();
    assert_eq!(
        exit.code(),
        Some(0),
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );

    // Every successful answer is in the store: two samples (compression and ai) each.
    let conn = rusqlite::Connection::open(dir.path().join("s.db")).unwrap();
    let mut stored: BTreeMap<String, i64> = BTreeMap::new();
    let mut stmt = conn
        .prepare(
            "SELECT a.name, COUNT(*) FROM samples s JOIN account_ids a ON a.id = s.account_id
             GROUP BY a.name",
        )
        .unwrap();
    for row in stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
        .unwrap()
    {
        let (a, n) = row.unwrap();
        stored.insert(a, n);
    }
    // The daemon's successful polls, from its log.
    let mut succeeded: BTreeMap<String, i64> = BTreeMap::new();
    for line in std::fs::read_to_string(&log).unwrap().lines() {
        if line.contains("poll succeeded")
            && let Some(a) = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("account="))
        {
            *succeeded.entry(a.to_string()).or_default() += 1;
        }
    }
    // Every successful poll is in the store; an answer the upstream sent that is not a
    // successful poll arrived after the daemon had given up on it, which it counted as a timeout.
    let mut lost = Vec::new();
    let mut late = 0;
    for (name, s) in &seen {
        let n = stored.get(name).copied().unwrap_or(0);
        let polls = succeeded.get(name).copied().unwrap_or(0);
        let timeouts = sum(
            &exposition,
            "creditwatch_scrape_errors_total",
            &format!("account=\"{name}\",reason=\"timeout\""),
        ) as i64;
        late += s.ok as i64 - polls;
        if n != 2 * polls || polls > s.ok as i64 || s.ok as i64 - polls > timeouts {
            lost.push(format!(
                "{name}: {} successful answers, {polls} successful polls, {n} samples, {timeouts} timeouts",
                s.ok
            ));
        }
    }
    let successful_polls: i64 = succeeded.values().sum();
    let total_samples: i64 = stored.values().sum();

    let errors = |reason: &str| {
        sum(
            &exposition,
            "creditwatch_scrape_errors_total",
            &format!("reason=\"{reason}\""),
        )
    };
    let by_reason: Vec<(String, f64)> = [
        "connect",
        "timeout",
        "http",
        "rate_limited",
        "parse",
        "auth",
    ]
    .iter()
    .map(|r| (r.to_string(), errors(r)))
    .collect();
    let summary = format!(
        "soak: {}s of wrk against /metrics; {requests} upstream requests from {} accounts, {ok_answers} successful answers, {successful_polls} successful polls ({late} answers came after the timeout), {total_samples} samples stored; errors by reason {by_reason:?}; RSS {rss_warm} KiB after warm-up, {rss_end} KiB at the end (growth {} KiB, peak {hwm} KiB, samples {rss_samples:?})\n{wrk_text}",
        soak().as_secs(),
        ACCOUNTS,
        rss_end as i64 - rss_warm as i64,
    );
    eprintln!("{summary}");

    assert!(
        !wrk_text.contains("Non-2xx or 3xx responses"),
        "non-2xx answers from /metrics:\n{summary}"
    );
    assert!(
        !wrk_text.contains("Socket errors"),
        "socket errors against /metrics:\n{summary}"
    );
    let requests_done: u64 = wrk_text
        .lines()
        .find_map(|l| l.trim().split_once(" requests in "))
        .map(|(n, _)| n.trim().parse().unwrap())
        .expect("wrk reports its request count");
    assert!(requests_done > 1000, "{summary}");
    assert!(
        lost.is_empty(),
        "lost samples:\n{}\n{summary}",
        lost.join("\n")
    );
    assert!(ok_answers > 1000, "{summary}");
    for (reason, n) in &by_reason {
        if reason != "auth" {
            assert!(*n > 0.0, "no {reason} fault was injected: {summary}");
        }
    }
    assert!(
        rss_end.saturating_sub(rss_warm) < RSS_GROWTH_BOUND_KIB,
        "RSS grew more than {RSS_GROWTH_BOUND_KIB} KiB:\n{summary}"
    );
}
