//! `creditwatch once`: poll every account one time and render the exposition, with no server and no store on disk.

use crate::clock::Clock;
use crate::config::Config;
use crate::http::HttpClient;
use crate::ingest::Writer;
use crate::metrics::Exporter;
use crate::poller::{self, PollerDeps};
use crate::state::State;
use crate::store::Store;
use std::sync::Arc;
use tokio::sync::Semaphore;

/// The result of one round: the exposition and the accounts that failed.
pub struct OnceOutcome {
    pub exposition: String,
    pub failed: Vec<String>,
}

/// Polls every account of `config` once, concurrently within `max_concurrent_polls`. History
/// lives in memory only, so a `once` run never disturbs a daemon's store.
pub async fn run(config: &Config, clock: Arc<dyn Clock>) -> Result<OnceOutcome, reqwest::Error> {
    let state = State::new();
    let store = Store::in_memory();
    let deps = PollerDeps {
        http: HttpClient::new()?,
        store: store.clone(),
        state: state.clone(),
        clock,
        limit: Arc::new(Semaphore::new(config.max_concurrent_polls)),
        writer: Writer::start(store),
    };
    for a in &config.accounts {
        state.add_account(&a.name, a.provider.name(), true);
    }
    let polls = config.accounts.iter().map(|a| {
        let deps = deps.clone();
        let a = Arc::new(a.clone());
        async move { (a.name.clone(), poller::poll_once(&a, &deps).await) }
    });
    let results = futures_util::future::join_all(polls).await;
    let failed = results
        .into_iter()
        .filter(|(_, r)| r.is_err())
        .map(|(n, _)| n)
        .collect();
    Ok(OnceOutcome {
        exposition: Exporter::new(state).render(),
        failed,
    })
}
