//! Measuring a running exporter from outside: CPU and memory from /proc, readiness, scrape timings and sizes, and concurrent scrapers.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Clock ticks per second of /proc/PID/stat's times.
fn ticks_per_second() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// CPU time (user + system) a process has used so far, in seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name is in parentheses and may hold spaces: count fields after the last ')'.
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of the whole line (utime, stime) are 12 and 13 after the name.
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (get(11) + get(12)) / ticks_per_second()
}

/// A `kB` line of /proc/PID/status (`VmHWM`, `VmRSS`), in bytes.
pub fn status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// A child process that is killed when dropped.
pub struct Proc {
    pub child: Child,
    pub started: Instant,
}

impl Proc {
    pub fn spawn(cmd: &mut Command) -> std::io::Result<Proc> {
        let started = Instant::now();
        let child = cmd.stdin(Stdio::null()).spawn()?;
        Ok(Proc { child, started })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Asks the process to stop (SIGTERM) and waits for it, then kills it if it lingers.
    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether it has exited, and its stderr if it was captured.
    pub fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => {
                let mut err = String::new();
                if let Some(e) = self.child.stderr.as_mut() {
                    let _ = e.read_to_string(&mut err);
                }
                Some(format!("{status}: {}", err.trim()))
            }
            _ => None,
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU and memory of a process over a window, with the polls the upstream answered meanwhile.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub cpu_seconds: f64,
    pub polls: u64,
    pub wall: Duration,
}

impl Usage {
    pub fn cpu_per_poll(&self) -> Option<f64> {
        (self.polls > 0).then(|| self.cpu_seconds / self.polls as f64)
    }
}

/// One timed GET of `/metrics`.
#[derive(Debug, Clone, Copy)]
pub struct Scrape {
    pub elapsed: Duration,
    pub bytes: usize,
    pub gzip: bool,
}

/// GETs `url` once, with `Accept-Encoding: gzip` when `gzip`; reads the whole body as it
/// arrives, chunk by chunk, as a scraper parsing it would. (Gathering a 40 MB body into one
/// buffer first cost this client 80 ms more than the server took to send it; `curl` reads the
/// same body in the server's time.) A gzip body is kept to check that it decodes.
pub async fn scrape(client: &reqwest::Client, url: &str, gzip: bool) -> Result<Scrape, String> {
    let started = Instant::now();
    let mut req = client.get(url);
    if gzip {
        req = req.header("accept-encoding", "gzip");
    }
    let mut resp = req.send().await.map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!("{url}: HTTP {}", resp.status()));
    }
    let encoded = resp
        .headers()
        .get("content-encoding")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
    let mut bytes = 0;
    let mut kept = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
        bytes += chunk.len();
        if encoded {
            kept.extend_from_slice(&chunk);
        }
    }
    let elapsed = started.elapsed();
    if gzip && encoded {
        // Make sure it really is gzip.
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&kept[..])
            .read_to_end(&mut out)
            .map_err(|e| format!("{url}: the gzip body does not decode: {e}"))?;
    }
    Ok(Scrape {
        elapsed,
        bytes,
        gzip: encoded,
    })
}

/// Median of `n` sequential scrapes (and the size of the last).
pub async fn scrape_median(
    client: &reqwest::Client,
    url: &str,
    gzip: bool,
    n: usize,
) -> Result<Scrape, String> {
    let mut all = Vec::with_capacity(n);
    for _ in 0..n {
        all.push(scrape(client, url, gzip).await?);
    }
    all.sort_by_key(|s| s.elapsed);
    Ok(all[all.len() / 2])
}

/// Latencies of `scrapers` clients scraping back to back for `duration` (gzip, as Prometheus
/// asks).
pub async fn concurrent_scrapes(
    url: &str,
    scrapers: usize,
    duration: Duration,
) -> Result<Vec<Duration>, String> {
    let deadline = Instant::now() + duration;
    let mut tasks = Vec::new();
    for _ in 0..scrapers {
        let url = url.to_string();
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut out = Vec::new();
            while Instant::now() < deadline {
                out.push(scrape(&client, &url, true).await?.elapsed);
            }
            Ok::<_, String>(out)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.map_err(|e| e.to_string())??);
    }
    all.sort();
    Ok(all)
}

/// The `q` quantile (0..1) of sorted durations.
pub fn quantile(sorted: &[Duration], q: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    Some(sorted[i.min(sorted.len() - 1)])
}

/// Waits until `url` answers 200, checking every 2 ms; the instant it did.
pub async fn wait_ok(
    client: &reqwest::Client,
    url: &str,
    timeout: Duration,
    proc_: &mut Proc,
) -> Result<Instant, String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(r) = client.get(url).send().await
            && r.status().is_success()
        {
            return Ok(Instant::now());
        }
        if let Some(e) = proc_.exited() {
            return Err(format!("the process exited: {e}"));
        }
        if Instant::now() > deadline {
            return Err(format!("{url} not ready within {timeout:?}"));
        }
        // Every 2 ms: the round of one account is about 50 ms long, so 10 ms would add up to a
        // fifth of it (the baseline reports its round on stdout, read as it comes).
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// A free loopback port (bound and released; the race with other processes is negligible here).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
