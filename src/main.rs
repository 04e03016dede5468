//! The `creditwatch` command line: run, check, once and demo. The only place `anyhow` is used.

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use creditwatch::app::{self, ConfigSource, Options, SignalRequest, Signals};
use creditwatch::clock::SystemClock;
use creditwatch::config::{Config, parse_listen};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// Watches paid-API credits, forecasts when they run out, and serves it all to Prometheus.
#[derive(Parser)]
#[command(
    name = "creditwatch",
    version,
    about,
    long_about = "Watches paid-API credits and spend, forecasts when each pool runs out before its \
billing period resets, serves everything on /metrics for Prometheus, and can page on-call by itself.\n\n\
Start with `creditwatch demo` to see it against built-in simulated providers, then write a config \
(see config.example.toml) and validate it with `creditwatch check -c FILE`.",
    after_help = "Logs go to stderr; set the level with RUST_LOG (e.g. RUST_LOG=debug)."
)]
struct Cli {
    /// Log line format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: poll every account on its interval and serve /metrics.
    Run {
        /// Config file (TOML).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Address to listen on, overriding `listen` in the config (e.g. 0.0.0.0:9477 or :9477).
        #[arg(long, value_name = "ADDR", value_parser = parse_listen)]
        listen: Option<SocketAddr>,
    },
    /// Validate a config file and exit: 0 if valid, else 1 with every problem as FILE:LINE:COL: message.
    Check {
        /// Config file (TOML).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Poll every account once, print the /metrics exposition, exit 1 if any account failed.
    Once {
        /// Config file (TOML).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Run the daemon against built-in simulated providers: no keys, no files.
    Demo {
        /// Address to listen on.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9477", value_parser = parse_listen)]
        listen: SocketAddr,
    },
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: a journal or a log file gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Threads of the blocking pool: store work (ingests, maintenance, the status page's history)
/// and `/metrics` rendering.
const BLOCKING_THREADS: usize = 4;

/// Tunes glibc's malloc for a daemon whose large allocations come and go with each scrape.
///
/// - **Arenas, one per core.** By default glibc gives up to eight per core, and each thread that
///   allocates (tokio's workers, the blocking pool rendering `/metrics`, the store writer) ends
///   up with an arena of its own that keeps what was freed in it; threads can only run on as
///   many cores at once, so more arenas buy no throughput. Measured with 4 concurrent scrapers:
///   peak RSS 43 → 39 MiB at 1,000 accounts. One arena saved as much but halved the scrapes
///   served.
/// - **A fixed mmap threshold of 256 KiB.** glibc serves blocks over the threshold from mmap and
///   gives them back to the kernel when freed, but raises the threshold to the size of the
///   largest such block freed (up to 32 MiB). A scrape's table of the accounts (about 5 MiB at
///   10,000 accounts) is freed after the first scrape, so every later one came from the heap
///   and stayed there: with 4 concurrent scrapers peak RSS at 10,000 accounts was 94 MiB, and
///   RSS stayed there after the scrapes. Fixed, the tables are mapped and unmapped: 79 MiB at
///   the peak, and 67 MiB again once the scrapes end (66 MiB before them). 64 KiB and 128 KiB
///   measured the same. The cost is on polls of very large accounts: one with 10,000 keys maps
///   and faults in its 3 MB body and its reading's lists afresh each poll, which took its first
///   round from 96–98 to 104 ms (CPU per poll the same); most polls allocate nothing that large.
///
/// Either is left alone when set in the environment (`MALLOC_ARENA_MAX`,
/// `MALLOC_MMAP_THRESHOLD_`), which glibc has already applied. Not glibc (musl): nothing to tune.
fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const MMAP_THRESHOLD: libc::c_int = 256 * 1024;
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let arenas = libc::c_int::try_from(cores.max(2)).unwrap_or(libc::c_int::MAX);
        let unset = |var: &str| std::env::var_os(var).is_none();
        // SAFETY: mallopt only sets a malloc parameter; called first thing in main, before
        // any other thread exists.
        unsafe {
            if unset("MALLOC_ARENA_MAX") {
                libc::mallopt(libc::M_ARENA_MAX, arenas);
            }
            if unset("MALLOC_MMAP_THRESHOLD_") {
                libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
            }
        }
    }
}

fn main() -> ExitCode {
    tune_malloc();
    let cli = Cli::parse();
    init_logging(cli.log_format);
    // A few blocking threads are enough: ingests queue for the one store connection anyway,
    // and every extra thread that waits for it costs a wake-up and, with glibc, a malloc arena
    // that keeps the memory of the scrapes and ingests it ran.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(BLOCKING_THREADS)
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("creditwatch: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(real_main(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("creditwatch: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn real_main(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Check { config } => Ok(check(&config)),
        Command::Once { config } => {
            let (cfg, warnings) = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return Ok(ExitCode::FAILURE);
                }
            };
            for w in warnings {
                tracing::warn!("{w}");
            }
            let out = creditwatch::once::run(&cfg, Arc::new(SystemClock))
                .await
                .context("cannot poll")?;
            print!("{}", out.exposition);
            if out.failed.is_empty() {
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!(
                    "creditwatch: {} account(s) failed: {}",
                    out.failed.len(),
                    out.failed.join(", ")
                );
                Ok(ExitCode::FAILURE)
            }
        }
        Command::Run { config, listen } => {
            let signals = Signals::register().context("cannot install signal handlers")?;
            let running = match app::start(
                ConfigSource::File(config),
                Options {
                    listen,
                    clock: Arc::new(SystemClock),
                },
            )
            .await
            {
                Ok(r) => r,
                Err(app::StartError::Config(e)) => {
                    eprintln!("{e}");
                    return Ok(ExitCode::FAILURE);
                }
                Err(e) => return Err(e.into()),
            };
            serve_until_signal(running, signals).await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo { listen } => {
            let signals = Signals::register().context("cannot install signal handlers")?;
            let demo = creditwatch::demo::start(listen)
                .await
                .context("cannot start the demo")?;
            let base = format!("http://{}", demo.running.addr);
            println!("creditwatch demo is running against simulated providers:");
            let line = |what: &str, url: &str| println!("  {what:<32} {url}");
            for (provider, s) in &demo.servers {
                line(&format!("{provider} simulator"), &s.url());
            }
            for (name, p) in demo.running.state.proxies() {
                line(
                    &format!("{name} proxy"),
                    &format!("http://{} (point OpenAI-compatible clients here)", p.addr),
                );
            }
            println!("Open:");
            line("status page", &format!("{base}/"));
            line("metrics", &format!("{base}/metrics"));
            line("readiness", &format!("{base}/-/ready"));
            println!("Press Ctrl-C to stop.");
            let servers = demo.servers;
            serve_until_signal(demo.running, signals).await;
            drop(servers);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Serves until SIGTERM/Ctrl-C, reloading on SIGHUP.
async fn serve_until_signal(running: app::Running, mut signals: Signals) {
    loop {
        match signals.recv().await {
            SignalRequest::Stop => break,
            SignalRequest::Reload => {
                tracing::info!("SIGHUP received, reloading config");
                if let Err(e) = running.reload().await {
                    tracing::error!("reload failed: {e}");
                }
            }
        }
    }
    tracing::info!("shutting down");
    running.shutdown().await;
}

fn check(path: &std::path::Path) -> ExitCode {
    match Config::load(path) {
        Ok((cfg, warnings)) => {
            for w in &warnings {
                eprintln!("{}: warning: {w}", path.display());
            }
            println!("{}: OK ({} account(s))", path.display(), cfg.accounts.len());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
