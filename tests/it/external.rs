//! Real Prometheus and Alertmanager processes for tests: temp dirs, free ports, readiness, API reads.
//!
//! Neither program can listen on port 0, so a free port is found by binding and releasing one;
//! if another process takes it first, start-up fails with "address already in use" and is retried
//! on a new port. Their state is read over their HTTP APIs, which offer no way to be notified of
//! a change, so [`eventually`] re-reads them every 100ms up to a deadline.

use crate::support::tool;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process killed when dropped, with its temp dir and HTTP address.
pub struct Proc {
    pub child: Child,
    pub url: String,
    /// Kept so the process's files live as long as it does.
    _dir: tempfile::TempDir,
    log: std::path::PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    /// The process's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Re-evaluates `check` every 100ms until it returns `Some`, failing after `within` with `what`.
pub async fn eventually<T, F, Fut>(within: Duration, what: impl Fn() -> String, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {within:?} waiting for {}", what());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts `program` with `args(dir, port)` and waits until `GET /-/ready` answers 200.
async fn start(
    program: &str,
    files: &[(&str, String)],
    args: impl Fn(&Path, u16) -> Vec<String>,
) -> Proc {
    start_files(program, files, false, args).await
}

/// Like [`start`], replacing `{dir}` in the files with the directory they are written to.
async fn start_in(
    program: &str,
    files: &[(&str, String)],
    args: impl Fn(&Path, u16) -> Vec<String>,
) -> Proc {
    start_files(program, files, true, args).await
}

async fn start_files(
    program: &str,
    files: &[(&str, String)],
    expand_dir: bool,
    args: impl Fn(&Path, u16) -> Vec<String>,
) -> Proc {
    let bin = tool(program);
    for _attempt in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            let text = if expand_dir {
                text.replace("{dir}", &dir.path().display().to_string())
            } else {
                text.clone()
            };
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        let port = free_port();
        let log = dir.path().join("log.txt");
        let child = Command::new(&bin)
            .args(args(dir.path(), port))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.path().join("stdout.txt")).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let mut p = Proc {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
            log,
        };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = p.child.try_wait() {
                let log = p.log();
                if log.contains("address already in use") {
                    break; // lost the port to someone else: try another
                }
                panic!("{program} exited with {status}:\n{log}");
            }
            if let Ok(r) = client.get(format!("{}/-/ready", p.url)).send().await
                && r.status().is_success()
            {
                return p;
            }
            if Instant::now() > deadline {
                panic!("{program} not ready after 30s:\n{}", p.log());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    panic!("{program}: no free port after 5 attempts");
}

/// Starts Prometheus scraping `target` every second and evaluating `rule_files` every second.
pub async fn prometheus(target: &str, rule_files: &[&Path]) -> Proc {
    prometheus_scraping(&[target], rule_files).await
}

/// Starts Prometheus scraping every one of `targets` every second (one job, one `instance` each).
pub async fn prometheus_scraping(targets: &[&str], rule_files: &[&Path]) -> Proc {
    let target = targets
        .iter()
        .map(|t| format!("\"{t}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let rules: Vec<String> = rule_files
        .iter()
        .map(|p| format!("  - {}\n", p.display()))
        .collect();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n{}\
         scrape_configs:\n  - job_name: creditwatch\n    static_configs:\n      - targets: [{target}]\n",
        rules.concat()
    );
    start("prometheus", &[("prometheus.yml", config)], |dir, port| {
        vec![
            format!("--config.file={}", dir.join("prometheus.yml").display()),
            format!("--storage.tsdb.path={}", dir.join("data").display()),
            format!("--web.listen-address=127.0.0.1:{port}"),
            "--log.level=warn".into(),
        ]
    })
    .await
}

/// Starts Prometheus with its own `prometheus.yml` and extra files beside it; `{dir}` in any
/// of them is replaced by that directory.
pub async fn prometheus_with(config: &str, files: &[(&str, String)]) -> Proc {
    let mut all = vec![("prometheus.yml", config.to_string())];
    all.extend(files.iter().cloned());
    start_in("prometheus", &all, |dir, port| {
        vec![
            format!("--config.file={}", dir.join("prometheus.yml").display()),
            format!("--storage.tsdb.path={}", dir.join("data").display()),
            format!("--web.listen-address=127.0.0.1:{port}"),
            "--log.level=warn".into(),
        ]
    })
    .await
}

/// Starts Alertmanager with `config` (YAML), clustering off.
pub async fn alertmanager(config: &str) -> Proc {
    start(
        "prometheus-alertmanager",
        &[("alertmanager.yml", config.to_string())],
        |dir, port| {
            vec![
                format!("--config.file={}", dir.join("alertmanager.yml").display()),
                format!("--storage.path={}", dir.join("data").display()),
                format!("--web.listen-address=127.0.0.1:{port}"),
                "--cluster.listen-address=".into(),
                "--log.level=warn".into(),
            ]
        },
    )
    .await
}

/// `GET url` as JSON.
pub async fn get_json(url: &str) -> serde_json::Value {
    let body = reqwest::get(url)
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .bytes()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    serde_json::from_slice(&body).unwrap_or_else(|e| panic!("GET {url}: {e}"))
}
