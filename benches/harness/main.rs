//! The scale benchmark behind `scripts/bench`: the release binary against a fast fake upstream, the Python baseline side by side, and a markdown report.
//!
//! For each scenario it simulates 24 hours of history into a fresh store (through the daemon's
//! own ingest, at the default 5-minute interval), starts the real `creditwatch run` on it, and
//! measures from outside: the first poll round against the latency-bound limit, CPU per poll and
//! peak RSS from /proc, `/metrics` timings and sizes, and scrape latency under 4 concurrent
//! scrapers while polls run. The baseline exporter then polls the same upstream the same way
//! and is measured identically. A separate process simulates a week of history to show memory and
//! store size stay flat, and `wrk` measures the fluxrouter proxy against a direct connection.

mod measure;
mod proxy;
mod report;
mod sim;
mod upstream;
mod workload;

use chrono::Utc;
use clap::{Args, Parser, Subcommand};
use creditwatch::metrics::Exporter;
use creditwatch::state::State;
use creditwatch::store::Store;
use measure::{Proc, Scrape, Usage};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use workload::{KEY_ENV, KEY_VALUE, Workload};

#[derive(Parser)]
#[command(about = "creditwatch's scale benchmark (run it through scripts/bench)")]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the fake upstream until interrupted (to poke at it by hand).
    Upstream {
        #[arg(long, default_value = "50ms", value_parser = humantime::parse_duration)]
        latency: Duration,
        #[arg(long, default_value_t = 2)]
        keys: usize,
    },
    /// Simulate days of history in this process and print one JSON line a day (used by the
    /// run, in a process of its own so its memory is measured alone).
    Week {
        #[arg(long)]
        accounts: usize,
        #[arg(long, default_value_t = 7)]
        days: i64,
        #[arg(long, default_value_t = 2)]
        keys: usize,
        #[arg(long)]
        dir: PathBuf,
    },
}

#[derive(Args, Clone)]
pub struct RunArgs {
    /// The creditwatch binary to measure.
    #[arg(long, default_value = "target/release/creditwatch")]
    binary: PathBuf,
    /// Python of the baseline's virtualenv; without it the baseline is left out.
    #[arg(long)]
    python: Option<PathBuf>,
    #[arg(long, default_value = "benches/baseline/exporter.py")]
    baseline: PathBuf,
    /// Account counts of scenario (a), comma-separated; 0 leaves it out.
    #[arg(long, value_delimiter = ',', default_value = "100,1000,10000")]
    accounts: Vec<usize>,
    /// Keys of the single ImageRouter account of scenario (b); 0 leaves it out.
    #[arg(long, default_value_t = 10_000)]
    keys: usize,
    /// Added latency of every upstream answer.
    #[arg(long, default_value = "50ms", value_parser = humantime::parse_duration)]
    latency: Duration,
    /// `max_concurrent_polls` (also the baseline's thread count).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// How long CPU per poll is measured (at least two poll intervals).
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    measure: Duration,
    /// How long the 4 concurrent scrapers run.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    scrape_for: Duration,
    /// Simulated history before each live run.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    history: Duration,
    /// Accounts of the simulated week (memory and store size over time); 0 leaves it out.
    #[arg(long, default_value_t = 1000)]
    week_accounts: usize,
    #[arg(long, default_value_t = 7)]
    week_days: i64,
    /// How long wrk runs against the proxy and the direct connection; 0 leaves scenario (c) out.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    wrk_for: Duration,
    /// Where stores, configs and logs go.
    #[arg(long, default_value = "target/bench")]
    dir: PathBuf,
    /// Also write the report here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// A tiny run (a few accounts, a few seconds) that checks the harness works.
    #[arg(long)]
    smoke: bool,
    /// Record a `perf` profile of creditwatch during the CPU window, into this directory.
    #[arg(long)]
    perf: Option<PathBuf>,
}

/// Everything measured of one exporter in one scenario.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    /// Spawn to the first upstream request.
    pub startup: Option<Duration>,
    /// First upstream request to every account polled once.
    pub round: Option<Duration>,
    pub usage: Usage,
    pub peak_rss: u64,
    /// Peak RSS before any scrape: what polling alone needs.
    pub polling_rss: u64,
    pub plain: Option<Scrape>,
    pub gzip: Option<Scrape>,
    /// Series in the exposition.
    pub series: usize,
    /// Scrape latencies under concurrent scrapers, sorted.
    pub concurrent: Vec<Duration>,
    /// The status page's first page (creditwatch only): median time and size, measured after
    /// the peak RSS so that it does not count in it.
    pub status_page: Option<Scrape>,
    pub store: Option<StoreFigures>,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct StoreFigures {
    pub bytes: u64,
    pub samples: i64,
    pub simulated_in: Duration,
}

/// One scenario's result.
pub struct Outcome {
    pub label: String,
    pub workload: Workload,
    pub latency: Duration,
    pub creditwatch: Result<Figures, String>,
    pub baseline: Option<Result<Figures, String>>,
}

impl Outcome {
    /// The latency-bound limit of a poll round: accounts × latency ÷ concurrency, in whole
    /// waves of `concurrency` polls.
    pub fn limit(&self) -> Duration {
        let waves = self.workload.accounts.div_ceil(self.workload.concurrency);
        self.latency * waves as u32
    }
}

fn main() {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match cli.command {
        Some(Cmd::Upstream { latency, keys }) => rt.block_on(async {
            let up = upstream::Upstream::start(upstream::Options {
                latency,
                imagerouter_keys: keys,
            })
            .await
            .expect("the fake upstream binds");
            println!(
                "fake upstream on {}: try {}/a/0/api/usage (fluximage), /a/1/v1/credits?by_api_key=true (imagerouter), /a/2/api/v1/usage?days=31 (floow)",
                up.url(),
                up.base_url(0)
            );
            let _ = tokio::signal::ctrl_c().await;
        }),
        Some(Cmd::Week {
            accounts,
            days,
            keys,
            dir,
        }) => week(accounts, days, keys, &dir),
        None => {
            let report = rt.block_on(run(cli.run.clone()));
            print!("{report}");
            if let Some(out) = &cli.run.out {
                std::fs::write(out, &report).expect("the report is written");
            }
        }
    }
}

async fn run(mut args: RunArgs) -> String {
    if args.smoke {
        args.accounts = vec![12];
        args.keys = 40;
        args.latency = Duration::from_millis(5);
        args.concurrency = 4;
        args.measure = Duration::from_secs(2);
        args.scrape_for = Duration::from_secs(1);
        args.history = Duration::from_secs(3 * 3600);
        args.week_accounts = 6;
        args.week_days = 2;
        args.wrk_for = Duration::from_secs(1);
    }
    std::fs::create_dir_all(&args.dir).expect("the work directory is created");
    let load_start = report::load_average();
    let up = upstream::Upstream::start(upstream::Options {
        latency: args.latency,
        imagerouter_keys: 2,
    })
    .await
    .expect("the fake upstream binds");
    let mut outcomes = Vec::new();
    for &n in args.accounts.iter().filter(|n| **n > 0) {
        let wl = workload_for(&args, n, 2);
        outcomes.push(scenario(&args, &up, format!("(a) {n} accounts"), wl).await);
    }
    drop(up);
    if args.keys > 0 {
        let up = upstream::Upstream::start(upstream::Options {
            latency: args.latency,
            imagerouter_keys: args.keys,
        })
        .await
        .expect("the fake upstream binds");
        let wl = workload_for(&args, 1, args.keys);
        let label = format!("(b) 1 account, {} keys", args.keys);
        outcomes.push(scenario(&args, &up, label, wl).await);
    }
    let week = if args.week_accounts > 0 {
        Some(run_week(&args))
    } else {
        None
    };
    let proxy = if args.wrk_for.is_zero() {
        None
    } else {
        Some(proxy::run(&args.binary, &args.dir, args.wrk_for).await)
    };
    report::render(&args, &outcomes, week.as_ref(), proxy.as_ref(), &load_start)
}

/// Poll interval of a live run: at least twice the round's latency-bound limit, so rounds
/// never overlap, and at least 2 seconds.
fn workload_for(args: &RunArgs, accounts: usize, keys: usize) -> Workload {
    let waves = accounts.div_ceil(args.concurrency) as u32;
    let limit = args.latency * waves;
    let interval = (limit * 2).max(Duration::from_secs(2));
    let interval = Duration::from_secs(interval.as_secs_f64().ceil() as u64);
    Workload {
        accounts,
        keys,
        interval,
        concurrency: args.concurrency,
    }
}

async fn scenario(args: &RunArgs, up: &upstream::Upstream, label: String, wl: Workload) -> Outcome {
    eprintln!("== {label}: interval {:?}", wl.interval);
    let dir = args.dir.join(label.replace([' ', '(', ')', ','], ""));
    std::fs::create_dir_all(&dir).expect("the scenario directory is created");
    let creditwatch = run_creditwatch(args, up, &wl, &dir).await;
    if let Err(e) = &creditwatch {
        eprintln!("creditwatch run failed: {e}");
    }
    let baseline = match &args.python {
        Some(python) => {
            let r = run_baseline(args, python, up, &wl, &dir).await;
            if let Err(e) = &r {
                eprintln!("baseline run failed: {e}");
            }
            Some(r)
        }
        None => None,
    };
    Outcome {
        label,
        workload: wl,
        latency: args.latency,
        creditwatch,
        baseline,
    }
}

fn remove_store(db: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut p = db.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
}

/// Simulates `history` of polls at the default 5-minute interval into a fresh store.
async fn simulate_history(
    args: &RunArgs,
    up: &upstream::Upstream,
    wl: &Workload,
    db: &Path,
) -> Result<StoreFigures, String> {
    remove_store(db);
    let accounts = wl.parse(&up.url(), db);
    let retention = wl.retention(&up.url(), db);
    let keys = wl.keys;
    let history = args.history;
    let db = db.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let store = Store::open(&db).map_err(|e| e.to_string())?;
        let end = Utc::now();
        let start = end - chrono::Duration::from_std(history).expect("history in range");
        sim::run(
            &accounts,
            keys,
            &store,
            None,
            retention,
            start,
            end,
            Duration::from_secs(300),
            |_| {},
        );
        let samples = store.total_samples().map_err(|e| e.to_string())?;
        let bytes = store.size_bytes().map_err(|e| e.to_string())? as u64;
        drop(store);
        Ok(StoreFigures {
            bytes,
            samples,
            simulated_in: started.elapsed(),
        })
    })
    .await
    .map_err(|e| e.to_string())?
}

async fn run_creditwatch(
    args: &RunArgs,
    up: &upstream::Upstream,
    wl: &Workload,
    dir: &Path,
) -> Result<Figures, String> {
    let db = std::path::absolute(dir.join("creditwatch.db")).map_err(|e| e.to_string())?;
    eprintln!("   simulating {:?} of history", args.history);
    let store = simulate_history(args, up, wl, &db).await?;
    eprintln!(
        "   {} samples, {} bytes, simulated in {:.1?}",
        store.samples, store.bytes, store.simulated_in
    );
    let config = dir.join("creditwatch.toml");
    std::fs::write(&config, wl.config_toml(&up.url(), &db)).map_err(|e| e.to_string())?;
    let port = measure::free_port();
    let log = std::fs::File::create(dir.join("creditwatch.log")).map_err(|e| e.to_string())?;
    up.reset();
    let mut proc_ = Proc::spawn(
        Command::new(&args.binary)
            .args(["run", "-c"])
            .arg(&config)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .env(KEY_ENV, KEY_VALUE)
            // Info from the supervisor only: the store maintenance line the CPU window waits for.
            .env("RUST_LOG", "warn,creditwatch::app=info")
            .stdout(Stdio::null())
            .stderr(log),
    )
    .map_err(|e| format!("cannot start {}: {e}", args.binary.display()))?;
    let base = format!("http://127.0.0.1:{port}");
    let metrics = format!("{base}/metrics");
    let mut f = Figures {
        store: Some(store),
        ..Figures::default()
    };
    let wait = ready_timeout(wl, args.latency);
    measure_exporter(
        &mut proc_,
        up,
        wl,
        args,
        &metrics,
        &mut f,
        Ready::Http(format!("{base}/-/ready")),
        wait,
        Some(&dir.join("creditwatch.log")),
    )
    .await?;
    proc_.stop();
    Ok(f)
}

async fn run_baseline(
    args: &RunArgs,
    python: &Path,
    up: &upstream::Upstream,
    wl: &Workload,
    dir: &Path,
) -> Result<Figures, String> {
    let accounts = dir.join("baseline-accounts.json");
    std::fs::write(&accounts, wl.baseline_json(&up.url())).map_err(|e| e.to_string())?;
    let port = measure::free_port();
    let log = std::fs::File::create(dir.join("baseline.log")).map_err(|e| e.to_string())?;
    up.reset();
    let mut proc_ = Proc::spawn(
        Command::new(python)
            .arg(&args.baseline)
            .arg("--accounts")
            .arg(&accounts)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--interval", &wl.interval.as_secs_f64().to_string()])
            .args(["--concurrency", &wl.concurrency.to_string()])
            .args(["--key", KEY_VALUE])
            .stdout(Stdio::piped())
            .stderr(log),
    )
    .map_err(|e| format!("cannot start {}: {e}", python.display()))?;
    let stdout = proc_.child.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains("round 1 complete") {
                let _ = tx.send(Instant::now());
            }
        }
    });
    let metrics = format!("http://127.0.0.1:{port}/metrics");
    let mut f = Figures::default();
    let wait = ready_timeout(wl, args.latency) * 4;
    measure_exporter(
        &mut proc_,
        up,
        wl,
        args,
        &metrics,
        &mut f,
        Ready::Signal(rx),
        wait,
        None,
    )
    .await?;
    proc_.stop();
    Ok(f)
}

fn ready_timeout(wl: &Workload, latency: Duration) -> Duration {
    let waves = wl.accounts.div_ceil(wl.concurrency) as u32;
    Duration::from_secs(60) + latency * waves * 10
}

/// How an exporter tells that every account has been polled once.
enum Ready {
    Http(String),
    Signal(std::sync::mpsc::Receiver<Instant>),
}

#[allow(clippy::too_many_arguments)]
async fn measure_exporter(
    proc_: &mut Proc,
    up: &upstream::Upstream,
    wl: &Workload,
    args: &RunArgs,
    metrics: &str,
    f: &mut Figures,
    ready: Ready,
    wait: Duration,
    maintenance_log: Option<&Path>,
) -> Result<(), String> {
    let client = reqwest::Client::new();
    // Only creditwatch is profiled, named after its store's directory.
    let ready_kind = match &ready {
        Ready::Http(_) => Some(
            metrics
                .rsplit(':')
                .next()
                .unwrap_or("creditwatch")
                .replace('/', "-"),
        ),
        Ready::Signal(_) => None,
    };
    let ready_at = match ready {
        Ready::Http(url) => measure::wait_ok(&client, &url, wait, proc_).await?,
        Ready::Signal(rx) => {
            let deadline = Instant::now() + wait;
            loop {
                if let Ok(t) = rx.try_recv() {
                    break t;
                }
                if let Some(e) = proc_.exited() {
                    return Err(format!("the process exited: {e}"));
                }
                if Instant::now() > deadline {
                    return Err(format!("no complete round within {wait:?}"));
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    let first = up
        .first_request()
        .ok_or("no request reached the upstream")?;
    f.startup = Some(first.saturating_duration_since(proc_.started));
    f.round = Some(ready_at.saturating_duration_since(first));
    eprintln!(
        "   round in {:.2?} (startup {:.2?})",
        f.round.unwrap(),
        f.startup.unwrap()
    );

    if let Some(log) = maintenance_log {
        // The first store maintenance runs once every account has been polled; it is hourly
        // work, so the CPU window starts after it rather than charging it to a few polls.
        let deadline = Instant::now() + Duration::from_secs(300);
        while !std::fs::read_to_string(log)
            .unwrap_or_default()
            .contains("store maintained")
        {
            if Instant::now() > deadline {
                return Err("no store maintenance within 300 s of the first round".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // CPU per poll while polls run, nothing else.
    let window = args.measure.max(wl.interval * 2);
    let perf = match (&args.perf, &ready_kind) {
        (Some(dir), Some(name)) => {
            let _ = std::fs::create_dir_all(dir);
            let out = dir.join(format!("{name}.perf.data"));
            Command::new("perf")
                .args(["record", "-F", "199", "--call-graph", "dwarf,32768", "-o"])
                .arg(&out)
                .args(["-p", &proc_.pid().to_string(), "--", "sleep"])
                .arg(window.as_secs().to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .ok()
        }
        _ => None,
    };
    let (c0, p0, t0) = (
        measure::cpu_seconds(proc_.pid()),
        up.polls(),
        Instant::now(),
    );
    tokio::time::sleep(window).await;
    if let Some(mut p) = perf {
        let _ = p.wait();
    }
    f.usage = Usage {
        cpu_seconds: measure::cpu_seconds(proc_.pid()) - c0,
        polls: up.polls() - p0,
        wall: t0.elapsed(),
    };
    f.polling_rss = measure::status_bytes(proc_.pid(), "VmHWM");
    eprintln!(
        "   {} polls, {:.3}s CPU in {:.1?}; peak RSS so far {} MiB",
        f.usage.polls,
        f.usage.cpu_seconds,
        f.usage.wall,
        f.polling_rss >> 20
    );

    // Render time and size: the median of a few sequential scrapes.
    let n = if wl.accounts >= 5000 || wl.keys >= 5000 {
        5
    } else {
        11
    };
    f.plain = Some(measure::scrape_median(&client, metrics, false, n).await?);
    f.gzip = Some(measure::scrape_median(&client, metrics, true, n).await?);
    let text = client
        .get(metrics)
        .send()
        .await
        .map_err(|e| e.to_string())?
        .text()
        .await
        .map_err(|e| e.to_string())?;
    f.series = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .count();
    eprintln!(
        "   /metrics {:.1?} ({} bytes), gzip {:.1?} ({} bytes), {} series",
        f.plain.unwrap().elapsed,
        f.plain.unwrap().bytes,
        f.gzip.unwrap().elapsed,
        f.gzip.unwrap().bytes,
        f.series
    );

    // Scrape latency under 4 concurrent scrapers while polls run.
    f.concurrent = measure::concurrent_scrapes(metrics, 4, args.scrape_for).await?;
    f.peak_rss = measure::status_bytes(proc_.pid(), "VmHWM");
    if ready_kind.is_some() {
        let page = metrics.replace("/metrics", "/?refresh=0");
        f.status_page = Some(measure::scrape_median(&client, &page, false, n).await?);
        eprintln!(
            "   status page {:.1?} ({} bytes)",
            f.status_page.unwrap().elapsed,
            f.status_page.unwrap().bytes
        );
    }
    if let Some(e) = proc_.exited() {
        return Err(format!("the process exited: {e}"));
    }
    Ok(())
}

/// One simulated day of [`week`].
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Day {
    pub day: i64,
    pub samples: i64,
    pub store_bytes: u64,
    pub rss: u64,
    pub render_ms: f64,
    pub exposition_bytes: usize,
}

/// Runs [`week`] in a process of its own and collects its days.
fn run_week(args: &RunArgs) -> Result<(usize, Vec<Day>), String> {
    let dir = args.dir.join("week");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    eprintln!(
        "== simulated week: {} accounts, {} days",
        args.week_accounts, args.week_days
    );
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let out = Command::new(exe)
        .args(["week", "--accounts", &args.week_accounts.to_string()])
        .args(["--days", &args.week_days.to_string()])
        .arg("--dir")
        .arg(&dir)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!("the week simulation failed: {}", out.status));
    }
    let days = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).map_err(|e| format!("{e}: {l}")))
        .collect::<Result<Vec<Day>, _>>()?;
    Ok((args.week_accounts, days))
}

/// Simulates `days` of 5-minute polls of `accounts` accounts through ingest, the store, hourly
/// maintenance and the in-memory state, rendering `/metrics` at the end of each day. Prints one
/// JSON [`Day`] per line.
fn week(accounts: usize, days: i64, keys: usize, dir: &Path) {
    let wl = Workload {
        accounts,
        keys,
        interval: Duration::from_secs(300),
        concurrency: 64,
    };
    let db = dir.join("week.db");
    remove_store(&db);
    let upstream = "http://127.0.0.1:9";
    let parsed = wl.parse(upstream, &db);
    let retention = wl.retention(upstream, &db);
    let store = Store::open(&db).expect("the store opens");
    let state = State::new();
    let exporter = Exporter::new(state.clone());
    let start = Utc::now() - chrono::Duration::days(days);
    let pid = std::process::id();
    let report_day = |t: chrono::DateTime<Utc>| {
        let elapsed = t - start;
        if elapsed.num_seconds() % 86_400 != 0 {
            return;
        }
        let started = Instant::now();
        let text = exporter.render();
        let render_ms = started.elapsed().as_secs_f64() * 1000.0;
        let day = Day {
            day: elapsed.num_days(),
            samples: store.total_samples().expect("the store answers"),
            store_bytes: store.size_bytes().expect("the store answers") as u64,
            rss: measure::status_bytes(pid, "VmRSS"),
            render_ms,
            exposition_bytes: text.len(),
        };
        println!("{}", serde_json::to_string(&day).expect("plain JSON"));
        eprintln!("   day {day:?}");
    };
    sim::run(
        &parsed,
        keys,
        &store,
        Some(&state),
        retention,
        start,
        start + chrono::Duration::days(days),
        wl.interval,
        report_day,
    );
    let _: Arc<State> = state;
}
