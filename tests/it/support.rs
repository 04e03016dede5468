//! Shared test harness: start the daemon on port 0 from config text, fetch its endpoints, compare goldens.

use chrono::{DateTime, Utc};
use creditwatch::app::{self, ConfigSource, Options, Running};
use creditwatch::clock::{Clock, ManualClock};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A daemon started for a test, with its temp dir (config, key files, store).
pub struct TestApp {
    pub running: Running,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.running.addr)
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        let r = reqwest::get(self.url(path)).await.expect("request");
        let status = r.status().as_u16();
        (status, r.text().await.expect("body"))
    }

    pub async fn metrics(&self) -> String {
        let (status, body) = self.get("/metrics").await;
        assert_eq!(status, 200);
        body
    }

    /// Waits until the named account has had `n` polls (successful or not).
    pub async fn wait_polls(&self, account: &str, n: u64) {
        self.running
            .state
            .wait_until(|s| s.account(account).map(|a| a.attempts >= n).unwrap_or(false))
            .await;
    }

    pub async fn stop(self) -> tempfile::TempDir {
        self.running.shutdown().await;
        self.dir
    }
}

/// A fixed instant used by golden tests: 2026-11-21T12:00:00Z.
pub fn fixed_now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-21T12:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

pub fn manual_clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(fixed_now()))
}

/// Writes `config` (with `{dir}` replaced by the temp dir) and starts the daemon on port 0.
pub async fn spawn(config: &str, clock: Arc<dyn Clock>) -> TestApp {
    let dir = tempfile::tempdir().expect("tempdir");
    spawn_in(dir, config, clock).await
}

/// Like [`spawn`], reusing an existing temp dir (and so its store).
pub async fn spawn_in(dir: tempfile::TempDir, config: &str, clock: Arc<dyn Clock>) -> TestApp {
    let config_path = dir.path().join("creditwatch.toml");
    let text = config.replace("{dir}", &dir.path().display().to_string());
    let text = if text.contains("listen") {
        text
    } else {
        format!("listen = \"127.0.0.1:0\"\n{text}")
    };
    std::fs::write(&config_path, text).expect("write config");
    let running = app::start(
        ConfigSource::File(config_path.clone()),
        Options {
            listen: None,
            clock,
        },
    )
    .await
    .unwrap_or_else(|e| panic!("daemon did not start: {e}"));
    TestApp {
        running,
        dir,
        config_path,
    }
}

/// Masks what legitimately differs between runs: the build revision, poll durations and when
/// the config was loaded.
pub fn normalize(exposition: &str) -> String {
    exposition
        .lines()
        .map(|l| {
            if l.starts_with("creditwatch_build_info{") {
                "creditwatch_build_info{version=\"VERSION\",revision=\"REVISION\"} 1".to_string()
            } else if l.starts_with("creditwatch_config_last_reload_success_timestamp_seconds ") {
                "creditwatch_config_last_reload_success_timestamp_seconds LOADED".to_string()
            } else if l.starts_with("creditwatch_scrape_duration_seconds{") {
                let (series, _) = l.rsplit_once(' ').unwrap();
                format!("{series} DURATION")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// Compares `actual` with `tests/golden/NAME`; `UPDATE_GOLDEN=1` rewrites the file instead.
pub fn assert_golden(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "golden file {}: {e} (run with UPDATE_GOLDEN=1 to create it)",
            path.display()
        )
    });
    if expected != actual {
        let diff: Vec<String> = expected
            .lines()
            .zip(actual.lines())
            .filter(|(e, a)| e != a)
            .take(10)
            .map(|(e, a)| format!("- {e}\n+ {a}"))
            .collect();
        panic!(
            "exposition differs from {} ({} vs {} lines):\n{}",
            path.display(),
            expected.lines().count(),
            actual.lines().count(),
            diff.join("\n")
        );
    }
}

/// Lines of the exposition for one metric name (exact family match, no HELP/TYPE).
pub fn series<'a>(exposition: &'a str, name: &str) -> Vec<&'a str> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
        })
        .collect()
}

/// The value of the one series of `name` whose labels include every `label="value"` in `matchers`.
pub fn value(exposition: &str, name: &str, matchers: &[&str]) -> Option<f64> {
    let hits: Vec<f64> = series(exposition, name)
        .into_iter()
        .filter(|l| matchers.iter().all(|m| l.contains(m)))
        .map(|l| l.rsplit_once(' ').unwrap().1.parse().unwrap())
        .collect();
    assert!(
        hits.len() <= 1,
        "{name} {matchers:?} matches {} series",
        hits.len()
    );
    hits.first().copied()
}

/// The path of a tool the suite drives for real (promtool, prometheus, alertmanager). A missing
/// tool fails the test: `scripts/test` installs the Debian packages that provide them.
pub fn tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{name} is not installed: run scripts/test (it installs Debian's prometheus and \
                 prometheus-alertmanager packages), or apt-get install them"
            )
        })
}
