//! Wiring: config → store → pollers and metering proxies → alerter → HTTP server, plus reload (SIGHUP, `POST /-/reload`) and clean shutdown.

use crate::alerting::{self, Alerter};
use crate::clock::Clock;
use crate::config::{AccountConfig, Config, ConfigError};
use crate::http::HttpClient;
use crate::ingest::Writer;
use crate::metrics::Exporter;
use crate::poller::{self, PollerDeps};
use crate::proxy::server::{self as proxy_server, ProxyError};
use crate::proxy::{Meter, ProxyServer};
use crate::server::{self, ReloadRequest, Web};
use crate::state::{ProxyInfo, State};
use crate::store::{self, Store, StoreError};
use crate::web::{Auth, CertResolver, TlsListener};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long shutdown waits for in-flight work before giving up on it.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(4);

/// How often the store is compacted and pruned.
const MAINTENANCE_EVERY: Duration = Duration::from_secs(3600);

/// How long the first maintenance waits for the first poll round.
const FIRST_MAINTENANCE_WAIT: Duration = Duration::from_secs(60);

/// Where the config comes from: a file (reloadable) or a value built in code (the demo).
#[derive(Debug, Clone)]
pub enum ConfigSource {
    File(PathBuf),
    Fixed(Box<Config>),
}

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Tls(crate::web::TlsLoadError),
    #[error("cannot build the HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    #[error("account {account:?}: {source}")]
    Proxy {
        account: String,
        #[source]
        source: ProxyError,
    },
}

/// Start-up choices that are not part of the config file.
pub struct Options {
    /// Overrides `listen` from the config (`--listen`).
    pub listen: Option<SocketAddr>,
    pub clock: Arc<dyn Clock>,
}

/// A running daemon.
pub struct Running {
    /// The address the HTTP server is bound to (useful when the config asked for port 0).
    pub addr: SocketAddr,
    pub state: Arc<State>,
    pub store: Store,
    cancel: CancellationToken,
    reload_tx: mpsc::Sender<ReloadRequest>,
    supervisor: JoinHandle<()>,
    server: JoinHandle<()>,
}

impl Running {
    /// Reloads the config (as SIGHUP does); `Err` carries every problem of an invalid config.
    pub async fn reload(&self) -> Result<(), String> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.reload_tx
            .send(tx)
            .await
            .map_err(|_| "shutting down".to_string())?;
        rx.await.map_err(|_| "shutting down".to_string())?
    }

    /// Waits until every account has been polled once.
    pub async fn wait_ready(&self) {
        self.state.wait_until(|s| s.is_ready()).await;
    }

    /// Stops pollers and the server, waiting at most [`SHUTDOWN_GRACE`] for in-flight work.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        let both = async {
            let _ = self.server.await;
            let _ = self.supervisor.await;
        };
        if tokio::time::timeout(SHUTDOWN_GRACE, both).await.is_err() {
            tracing::warn!("shutdown grace period elapsed; abandoning in-flight work");
        }
    }
}

/// Opens the store named by the config (`:memory:` keeps it in memory). A corrupt or locked
/// file is moved aside, loudly, and the daemon starts with an empty store.
pub fn open_store(
    config: &Config,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Store, StoreError> {
    let path = store::resolve_path(&config.state_path, &config.path);
    if path.as_os_str() == ":memory:" {
        return Ok(Store::in_memory());
    }
    let (store, moved) = Store::open_or_recover(&path, now.timestamp())?;
    if let Some(m) = moved {
        tracing::error!(
            store = %path.display(),
            moved_to = %m.to.display(),
            reason = %m.reason,
            "STATE STORE UNUSABLE: moved aside and started with an empty store; history and consumed totals start again (the old file is kept for inspection)"
        );
    }
    Ok(store)
}

/// Starts the daemon: store, pollers and HTTP server. Returns once the server is listening.
pub async fn start(source: ConfigSource, opts: Options) -> Result<Running, StartError> {
    let mut config = match &source {
        ConfigSource::File(path) => {
            let (config, warnings) = Config::load(path)?;
            for w in warnings {
                tracing::warn!("{w}");
            }
            config
        }
        ConfigSource::Fixed(c) => (**c).clone(),
    };
    let retention = config.retention();
    let accounts = std::mem::take(&mut config.accounts);
    let store = open_store(&config, opts.clock.now())?;
    let state = State::new();
    state.set_reload(true, opts.clock.now());
    let listen = opts.listen.unwrap_or(config.listen);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: listen,
        source,
    })?;

    let cancel = CancellationToken::new();
    let (reload_tx, reload_rx) = mpsc::channel(4);
    let web = Arc::new(Web {
        state: state.clone(),
        // Overlapping scrapes (a Prometheus pair, an agent) share one table of the accounts.
        exporter: Exporter::new(state.clone()).sharing(crate::metrics::SHARE_TABLE_FOR),
        store: store.clone(),
        clock: opts.clock.clone(),
        enable_reload: config.reload_enabled(addr).into(),
        reload: reload_tx.clone(),
        auth: Arc::new(RwLock::new(Arc::new(Auth::new(&config.web)))),
    });
    let tls = match &config.web.tls {
        Some(files) => Some(CertResolver::new(files).map_err(StartError::Tls)?),
        None => None,
    };
    let deps = Arc::new(PollerDeps {
        http: HttpClient::new()?,
        store: store.clone(),
        state: state.clone(),
        clock: opts.clock.clone(),
        limit: Arc::new(Semaphore::new(config.max_concurrent_polls)),
        writer: Writer::start(store.clone()),
    });

    let mut sup = Supervisor {
        source,
        config,
        retention,
        deps,
        web: web.clone(),
        addr,
        cancel: cancel.clone(),
        pollers: HashMap::new(),
        proxies: HashMap::new(),
        alerter: None,
        tls: tls.clone(),
    };
    let count = accounts.len();
    for account in accounts {
        let listener = match sup.needs_listener(&account) {
            Some(addr) => Some(bind_proxy(&account.name, addr)?),
            None => None,
        };
        sup.ensure_proxy(&account, listener)?;
        sup.start_poller(account, true, false);
    }
    sup.start_alerter();
    tracing::info!(
        %addr,
        accounts = count,
        store = store.path(),
        version = crate::metrics::VERSION,
        "creditwatch started"
    );
    let supervisor = tokio::spawn(sup.run(reload_rx));

    let router = server::router(web);
    let server_cancel = cancel.clone();
    let server = match tls {
        None => tokio::spawn(async move {
            // A chunked gzip answer otherwise stalls 40 ms on each delayed ACK (Nagle's
            // algorithm holding back the last small segment): most of a small scrape's time.
            let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
                let _ = tcp.set_nodelay(true);
            });
            let r = axum::serve(listener, router)
                .with_graceful_shutdown(server_cancel.cancelled_owned())
                .await;
            if let Err(e) = r {
                tracing::error!(error = %e, "HTTP server failed");
            }
        }),
        Some(resolver) => {
            let listener = TlsListener::new(
                listener,
                crate::web::server_config(resolver),
                server_cancel.clone(),
            )
            .map_err(|source| StartError::Bind { addr, source })?;
            tokio::spawn(async move {
                let r = axum::serve(listener, router)
                    .with_graceful_shutdown(server_cancel.cancelled_owned())
                    .await;
                if let Err(e) = r {
                    tracing::error!(error = %e, "HTTPS server failed");
                }
            })
        }
    };

    Ok(Running {
        addr,
        state,
        store,
        cancel,
        reload_tx,
        supervisor,
        server,
    })
}

struct PollerHandle {
    config: Arc<AccountConfig>,
    task: JoinHandle<()>,
}

/// A fluxrouter account's proxy and the meter it books into (kept across listener restarts).
struct RunningProxy {
    server: ProxyServer,
    meter: Arc<Meter>,
}

fn bind_proxy(account: &str, addr: SocketAddr) -> Result<std::net::TcpListener, StartError> {
    proxy_server::bind(addr).map_err(|source| StartError::Proxy {
        account: account.to_string(),
        source,
    })
}

/// Owns the pollers: starts them, swaps them on reload, prunes the store, stops them on shutdown.
struct Supervisor {
    source: ConfigSource,
    /// The running config's daemon-wide settings. Its `accounts` is empty: each account's config
    /// is held once, by its poller ([`PollerHandle::config`]), not a second time here.
    config: Config,
    /// How long samples are kept ([`Config::retention`], which needs the accounts).
    retention: Duration,
    /// What every poller shares; pollers started before a change of `max_concurrent_polls`
    /// keep the version they were given.
    deps: Arc<PollerDeps>,
    web: Arc<Web>,
    addr: SocketAddr,
    cancel: CancellationToken,
    pollers: HashMap<String, PollerHandle>,
    proxies: HashMap<String, RunningProxy>,
    alerter: Option<Alerter>,
    /// The HTTPS listener's certificate source, when `[web]` has TLS.
    tls: Option<Arc<CertResolver>>,
}

impl Supervisor {
    /// The address a new listener must be bound on for this account's proxy: when the account
    /// has a proxy and none runs on its configured address yet.
    fn needs_listener(&self, account: &AccountConfig) -> Option<SocketAddr> {
        let want = account.provider.proxy()?.proxy_listen.0;
        match self.proxies.get(&account.name) {
            Some(p) if p.server.config().listen == want => None,
            _ => Some(want),
        }
    }

    /// Brings the account's proxy in line with its config: starts it on `listener` (reusing the
    /// meter of a proxy it replaces), reconfigures a running one in place, or stops it when the
    /// account no longer has one.
    fn ensure_proxy(
        &mut self,
        account: &AccountConfig,
        listener: Option<std::net::TcpListener>,
    ) -> Result<(), StartError> {
        let Some(settings) = account.provider.proxy() else {
            self.stop_proxy(&account.name);
            return Ok(());
        };
        let config = settings.proxy_config(account);
        let Some(listener) = listener else {
            if let Some(p) = self.proxies.get(&account.name) {
                p.server.update(config);
            }
            return Ok(());
        };
        let meter = match self.proxies.get(&account.name) {
            Some(p) => p.meter.clone(),
            None => Meter::open(self.deps.store.clone(), &account.name)?,
        };
        let upstream = config.upstream.to_string();
        let server = ProxyServer::start(listener, config, meter.clone(), self.deps.clock.clone())
            .map_err(|source| StartError::Proxy {
            account: account.name.clone(),
            source,
        })?;
        let addr = server.addr;
        if let Some(old) = self.proxies.insert(
            account.name.clone(),
            RunningProxy {
                server,
                meter: meter.clone(),
            },
        ) {
            // Requests in flight on the old listener finish and are still metered.
            drop(old.server.shutdown());
        }
        self.deps
            .state
            .set_proxy(&account.name, ProxyInfo { addr, meter });
        tracing::info!(account = %account.name, %addr, %upstream, "fluxrouter metering proxy listening");
        Ok(())
    }

    fn stop_proxy(&mut self, name: &str) {
        if let Some(p) = self.proxies.remove(name) {
            drop(p.server.shutdown());
            self.deps.state.remove_proxy(name);
        }
    }

    /// Starts an account's poller. `changed` keeps the state of an account whose config changed.
    fn start_poller(&mut self, account: AccountConfig, gate_readiness: bool, changed: bool) {
        let account = Arc::new(account);
        if changed {
            self.deps
                .state
                .keep_or_add_account(&account.name, account.provider.name());
        } else {
            self.deps
                .state
                .add_account(&account.name, account.provider.name(), gate_readiness);
            // What its first poll reads from the store is read while that poll waits on its
            // upstream.
            self.deps
                .writer
                .warm(account.clone(), self.deps.clock.now());
        }
        self.deps.state.set_schedule(
            &account.name,
            account.interval,
            account.forecast_window.clone(),
        );
        // Stopped by aborting the task (`stop_poller`, shutdown): an idle poller holds no
        // cancellation token of its own (a child token each cost about 100 bytes an account,
        // and a slot in the parent's list).
        let task = tokio::spawn(poller::run(account.clone(), self.deps.clone()));
        self.pollers.insert(
            account.name.clone(),
            PollerHandle {
                config: account,
                task,
            },
        );
    }

    /// Starts the built-in alerter when the config has `[alerting]`.
    fn start_alerter(&mut self) {
        self.deps.state.set_receivers(None);
        let Some(cfg) = self.config.alerting.clone() else {
            return;
        };
        let deps = alerting::Deps {
            http: self.deps.http.clone(),
            store: self.deps.store.clone(),
            state: self.deps.state.clone(),
            clock: self.deps.clock.clone(),
        };
        tracing::info!(
            receivers = cfg.receivers.len(),
            evaluation_interval = %humantime::format_duration(cfg.evaluation_interval),
            "built-in alerter started"
        );
        self.alerter = Some(Alerter::start(
            cfg,
            deps,
            format!("http://{}", self.addr),
            self.cancel.child_token(),
        ));
    }

    fn stop_poller(&mut self, name: &str) {
        if let Some(p) = self.pollers.remove(name) {
            p.task.abort();
        }
    }

    async fn run(mut self, mut reload_rx: mpsc::Receiver<ReloadRequest>) {
        // The first maintenance waits for the first poll round (or a minute at most): on a
        // store with a day of history it holds the store for a moment, and fresh numbers on
        // start matter more than deleting old samples a few seconds sooner.
        let state = self.deps.state.clone();
        let first_round = tokio::time::timeout(FIRST_MAINTENANCE_WAIT, async move {
            state.wait_until(State::is_ready).await
        });
        tokio::pin!(first_round);
        let mut prune = tokio::time::interval_at(
            tokio::time::Instant::now() + MAINTENANCE_EVERY,
            MAINTENANCE_EVERY,
        );
        let mut maintained = false;
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => break,
                Some(reply) = reload_rx.recv() => {
                    let r = self.reload().await;
                    let _ = reply.send(r);
                }
                _ = &mut first_round, if !maintained => {
                    maintained = true;
                    prune.reset();
                    self.prune().await
                }
                _ = prune.tick() => {
                    maintained = true;
                    self.prune().await
                }
            }
        }
        let pollers: Vec<JoinHandle<()>> = self.pollers.drain().map(|(_, p)| p.task).collect();
        for task in &pollers {
            task.abort();
        }
        for task in pollers {
            let _ = task.await;
        }
        // A poll cancelled while its reading waited for the writer is still recorded: wait
        // for the writer to get through what was queued.
        self.deps.writer.flush().await;
        // Stop accepting, make sure every cost booked so far is committed, then let requests in
        // flight finish (bounded by the caller's grace period).
        let proxies: Vec<_> = self
            .proxies
            .drain()
            .map(|(_, p)| (p.server.shutdown(), p.meter))
            .collect();
        for (_, meter) in &proxies {
            if !meter.flush().await {
                tracing::error!("proxy ledger could not be committed at shutdown");
            }
        }
        for (task, _) in proxies {
            let _ = task.await;
        }
        if let Some(a) = self.alerter.take() {
            a.stop().await;
        }
    }

    /// Store maintenance, after the first poll round and then hourly: downsample old history,
    /// then drop what is past the retention.
    async fn prune(&self) {
        let retention = self.retention;
        let now = self.deps.clock.now();
        let cutoff =
            now - chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::days(2));
        let store = self.deps.store.clone();
        let started = std::time::Instant::now();
        let work = move || -> Result<(usize, usize), StoreError> {
            let compacted = store.compact(now.timestamp_millis())?;
            let pruned = store.prune(cutoff.timestamp_millis())?;
            Ok((compacted, pruned))
        };
        match tokio::task::spawn_blocking(work).await {
            // Logged every time (hourly), with how long the store was held.
            Ok(Ok((compacted, pruned))) => tracing::info!(
                compacted,
                pruned,
                took_ms = started.elapsed().as_millis() as u64,
                "store maintained: compacted and pruned old samples"
            ),
            Ok(Err(e)) => tracing::error!(error = %e, "store maintenance failed"),
            Err(e) => tracing::error!(error = %e, "store maintenance task failed"),
        }
        // Each proxy's request log is kept for its own retention; its totals are never pruned.
        let now = self.deps.clock.now();
        let logs: Vec<(String, i64)> = self
            .pollers
            .values()
            .map(|p| &p.config)
            .filter_map(|a| {
                let keep = a.provider.proxy()?.request_log_retention();
                let cutoff = now - chrono::Duration::from_std(keep).ok()?;
                Some((a.name.clone(), cutoff.timestamp_millis()))
            })
            .collect();
        if logs.is_empty() {
            return;
        }
        let store = self.deps.store.clone();
        let pruned = tokio::task::spawn_blocking(move || {
            logs.iter()
                .map(|(name, cutoff)| store.prune_proxy_log(name, *cutoff))
                .sum::<Result<usize, _>>()
        })
        .await;
        match pruned {
            Ok(Ok(n)) if n > 0 => {
                tracing::info!(deleted = n, "pruned old proxy request log entries")
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "pruning the proxy request log failed"),
            Err(e) => tracing::error!(error = %e, "pruning task failed"),
        }
    }

    async fn reload(&mut self) -> Result<(), String> {
        let now = self.deps.clock.now();
        let ConfigSource::File(path) = &self.source else {
            return Err("this instance was not started from a config file".to_string());
        };
        let (mut new, warnings) = match Config::load(path) {
            Ok(c) => c,
            Err(e) => {
                self.deps.state.set_reload(false, now);
                tracing::error!(
                    problems = e.problems.len(),
                    "config reload failed; keeping the previous config:\n{e}"
                );
                return Err(e.to_string());
            }
        };
        for w in warnings {
            tracing::warn!("{w}");
        }
        if new.listen != self.config.listen {
            tracing::warn!(old = %self.config.listen, new = %new.listen, "listen changes take effect on restart");
        }
        if new.state_path != self.config.state_path {
            tracing::warn!("state_path changes take effect on restart");
        }
        if new.max_concurrent_polls != self.config.max_concurrent_polls {
            Arc::make_mut(&mut self.deps).limit =
                Arc::new(Semaphore::new(new.max_concurrent_polls));
        }
        // Bind every proxy listener the new config needs before changing anything, so a taken
        // address fails the reload and leaves the running config untouched.
        let mut listeners = HashMap::new();
        for account in &new.accounts {
            if let Some(addr) = self.needs_listener(account) {
                match bind_proxy(&account.name, addr) {
                    Ok(l) => {
                        listeners.insert(account.name.clone(), l);
                    }
                    Err(e) => {
                        self.deps.state.set_reload(false, now);
                        tracing::error!("config reload failed; keeping the previous config: {e}");
                        return Err(e.to_string());
                    }
                }
            }
        }
        self.web
            .enable_reload
            .store(new.reload_enabled(self.addr), Ordering::Relaxed);
        if new.web != self.config.web {
            *self.web.auth.write().unwrap() = Arc::new(Auth::new(&new.web));
        }
        match (&self.tls, &new.web.tls) {
            (Some(resolver), Some(files)) => resolver.set_files(files),
            (None, None) => {}
            _ => tracing::warn!("turning TLS on or off takes effect on restart"),
        }

        let (mut added, mut changed, mut removed) = (0, 0, 0);
        let wanted: HashSet<&str> = new.accounts.iter().map(|a| a.name.as_str()).collect();
        let running: Vec<String> = self.pollers.keys().cloned().collect();
        for name in running {
            if !wanted.contains(name.as_str()) {
                self.stop_poller(&name);
                self.stop_proxy(&name);
                self.deps.state.remove_account(&name);
                removed += 1;
            }
        }
        self.retention = new.retention();
        let mut failures = Vec::new();
        // The new accounts go to their pollers; an unchanged account keeps its running poller
        // and the config it already holds, and the new copy is dropped.
        for account in std::mem::take(&mut new.accounts) {
            let unchanged =
                matches!(self.pollers.get(&account.name), Some(p) if *p.config == account);
            if unchanged {
                continue;
            }
            if let Err(e) = self.ensure_proxy(&account, listeners.remove(&account.name)) {
                // Only the store can fail here (the listener is bound): say so, keep the rest.
                tracing::error!("{e}");
                failures.push(e.to_string());
            }
            if self.pollers.contains_key(&account.name) {
                self.stop_poller(&account.name);
                self.start_poller(account, false, true);
                changed += 1;
            } else {
                self.start_poller(account, false, false);
                added += 1;
            }
        }
        let alerting_changed = new.alerting != self.config.alerting;
        self.config = new;
        if alerting_changed {
            // Alert state and delivery logs are in the store, so a restarted alerter carries on
            // where the old one stopped.
            if let Some(a) = self.alerter.take() {
                a.stop().await;
            }
            self.start_alerter();
        }
        if !failures.is_empty() {
            self.deps.state.set_reload(false, now);
            return Err(failures.join("\n"));
        }
        self.deps.state.set_reload(true, now);
        tracing::info!(added, changed, removed, "config reloaded");
        Ok(())
    }
}

/// What a signal asks of the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalRequest {
    /// SIGTERM or SIGINT: drain and exit.
    Stop,
    /// SIGHUP: reload the config.
    Reload,
}

/// The process's signal handlers. Registering installs them at once, so create this before
/// [`start`]: a SIGTERM that arrives while the daemon is starting is then queued and shuts it down
/// cleanly, instead of killing the process with the default action.
pub struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
    #[cfg(unix)]
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers for SIGTERM, SIGINT and SIGHUP. Must run inside a tokio runtime.
    pub fn register() -> std::io::Result<Signals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Signals {
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
                hup: signal(SignalKind::hangup())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Signals {})
    }

    /// Waits for the next signal.
    pub async fn recv(&mut self) -> SignalRequest {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.term.recv() => SignalRequest::Stop,
                _ = self.int.recv() => SignalRequest::Stop,
                _ = self.hup.recv() => SignalRequest::Reload,
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            SignalRequest::Stop
        }
    }
}
