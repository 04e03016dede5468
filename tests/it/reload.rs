//! Reload: key files re-read, counters kept across an account's config change, and SIGHUP against the real binary.

use crate::support::{series, spawn, value};
use crate::upstream::Upstream;
use creditwatch::clock::SystemClock;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn write_key(path: &Path, key: &str) {
    std::fs::write(path, format!("{key}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn account(name: &str, url: &str, key_file: &Path) -> String {
    format!(
        "[[account]]\nname = \"{name}\"\nprovider = \"fluximage\"\napi_key_file = \"{}\"\nbase_url = \"{url}\"\nbilling_anchor = \"2026-01-15\"\ninterval = \"1s\"\ntimeout = \"1s\"\n",
        key_file.display()
    )
}

#[tokio::test]
async fn a_rotated_key_file_takes_effect_on_reload_and_the_counters_carry_over() {
    let up = Upstream::start().await;
    up.require_key("a", "flx_live_one");
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    write_key(&key, "flx_live_one");
    let app = spawn(
        &account("a", &up.base_url("a"), &key),
        Arc::new(SystemClock),
    )
    .await;
    app.wait_polls("a", 1).await;
    assert!(app.running.state.account("a").unwrap().up);

    // The provider rotates the key: the old one is refused until the file is re-read.
    up.require_key("a", "flx_live_two");
    write_key(&key, "flx_live_two");
    app.running
        .state
        .wait_until(|s| s.account("a").is_some_and(|a| a.errors["auth"] >= 1))
        .await;
    let r = reqwest::Client::new()
        .post(app.url("/-/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    up.wait_for("a", |s| {
        s.last_key.as_deref() == Some("flx_live_two") && s.ok >= 2
    })
    .await;
    app.running
        .state
        .wait_until(|s| s.account("a").is_some_and(|a| a.up))
        .await;
    let m = app.metrics().await;
    assert_eq!(value(&m, "creditwatch_up", &[]), Some(1.0));
    let auth_errors = value(&m, "creditwatch_scrape_errors_total", &["reason=\"auth\""]).unwrap();
    assert!(
        auth_errors >= 1.0,
        "the account's counters survive its config change"
    );
    app.stop().await;
}

/// The real binary, killed when dropped, with its stderr captured to a file.
pub struct Daemon {
    pub child: Child,
    pub port: u16,
    pub log: std::path::PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    /// Starts `creditwatch run -c config` with `RUST_LOG=log_level`, stderr to `log`.
    pub fn start(config: &Path, log_level: &str) -> Daemon {
        Daemon::start_with_env(config, log_level, &Default::default())
    }

    /// Like [`Daemon::start`], with extra environment variables.
    pub fn start_with_env(
        config: &Path,
        log_level: &str,
        env: &std::collections::HashMap<&str, &str>,
    ) -> Daemon {
        let text = std::fs::read_to_string(config).unwrap();
        let port = text
            .lines()
            .find_map(|l| l.strip_prefix("listen = \"127.0.0.1:"))
            .map(|p| p.trim_end_matches('"').parse().unwrap())
            .expect("config sets listen");
        let log = config.with_extension("log");
        let child = Command::new(env!("CARGO_BIN_EXE_creditwatch"))
            .env("RUST_LOG", log_level)
            .envs(env)
            .args(["run", "-c"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Daemon { child, port, log }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// Waits (up to 5s) for the process to exit and returns its exit code.
    pub fn wait_exit(&mut self) -> Option<i32> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code();
            }
            assert!(Instant::now() < deadline, "still running 5s later");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Re-reads /metrics every 50ms until `check` accepts it. The daemon is another process,
    /// so there is no event to wait on.
    pub async fn wait_metrics(&self, what: &str, check: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = reqwest::get(self.url("/metrics")).await
                && let Ok(text) = r.text().await
                && check(&text)
            {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn up_of(m: &str, account: &str) -> Option<f64> {
    value(m, "creditwatch_up", &[&format!("account=\"{account}\"")])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_real_binary() {
    let up = Upstream::start().await;
    up.require_key("a", "flx_live_one");
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    write_key(&key, "flx_live_one");
    let cfg = dir.path().join("c.toml");
    let head = format!(
        "listen = \"127.0.0.1:{}\"\nstate_path = \"s.db\"\n",
        free_port()
    );
    let one = account("a", &up.base_url("a"), &key);
    std::fs::write(&cfg, format!("{head}{one}")).unwrap();
    let mut d = Daemon::start(&cfg, "info");
    d.wait_metrics("account a up", |m| up_of(m, "a") == Some(1.0))
        .await;

    // Rotate the key, add an account, and send SIGHUP.
    up.require_key("a", "flx_live_two");
    write_key(&key, "flx_live_two");
    let two = account("b", &up.base_url("b"), &key);
    std::fs::write(&cfg, format!("{head}{one}{two}")).unwrap();
    d.signal("HUP");
    d.wait_metrics("account b up after SIGHUP", |m| up_of(m, "b") == Some(1.0))
        .await;
    up.wait_for("a", |s| {
        s.last_key.as_deref() == Some("flx_live_two") && s.ok >= 2
    })
    .await;

    // An invalid config: the old one stays, the reload is reported as failed.
    std::fs::write(&cfg, format!("{head}{one}{two}colour = 1\n")).unwrap();
    d.signal("HUP");
    let m = d
        .wait_metrics("a failed reload", |m| {
            value(m, "creditwatch_config_last_reload_successful", &[]) == Some(0.0)
        })
        .await;
    assert_eq!(series(&m, "creditwatch_up").len(), 2, "{m}");
    assert!(d.log().contains("unknown key `colour`"), "{}", d.log());

    // Removing an account takes it out of /metrics.
    std::fs::write(&cfg, format!("{head}{two}")).unwrap();
    d.signal("HUP");
    d.wait_metrics("account a gone", |m| {
        up_of(m, "a").is_none()
            && value(m, "creditwatch_config_last_reload_successful", &[]) == Some(1.0)
    })
    .await;
    assert!(up.seen("b").ok >= 1);
    d.signal("TERM");
    assert_eq!(d.wait_exit(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_the_moment_the_port_opens_still_exits_zero() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    write_key(&key, "flx_live_one");
    let cfg = dir.path().join("c.toml");
    for round in 0..5 {
        let port = free_port();
        std::fs::write(
            &cfg,
            format!(
                "listen = \"127.0.0.1:{port}\"\nstate_path = \"s.db\"\n{}",
                account("a", &up.base_url("a"), &key)
            ),
        )
        .unwrap();
        let mut d = Daemon::start(&cfg, "info");
        // The first instant the daemon accepts a connection, before its first poll is done.
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "round {round}: never listened");
            std::thread::sleep(Duration::from_millis(2));
        }
        d.signal("TERM");
        assert_eq!(d.wait_exit(), Some(0), "round {round}: {}", d.log());
        assert!(
            d.log().contains("shutting down"),
            "round {round}: {}",
            d.log()
        );
    }
}
