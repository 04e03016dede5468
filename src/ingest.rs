//! Ingest: readings become samples, running totals and forecasts on one writer thread that batches the store's writes and keeps in memory what the next poll reads.
//!
//! A poll used to cost a transaction of its own, a read of the account's ledgers and five index
//! lookups per pool for the samples around each burn window's start. Profiles put that at about
//! half of the daemon's CPU, and at nearly all of a 10,000-key account's poll. Now:
//!
//! - **One writer thread** owns the store's writes. Polls hand it their readings; whatever has
//!   queued while it worked is written in one transaction, each poll in a savepoint of its own.
//!   Polls that finish together (a wave of `max_concurrent_polls`) share one commit.
//! - **Ledgers stay in memory** once read ([`Tracker`]), updated after each write.
//! - **Each burn window keeps a cursor**: the samples around its start and a few after it, read
//!   from the store in one query and then moved forward as time passes; new samples are appended
//!   while the cursor reaches the newest one. A window reads the store again only when its start
//!   has passed everything the cursor holds (every [`CURSOR_SAMPLES`] polls or so).
//! - **Answered before written** ([`Pending`]): a poll's snapshot depends on what the store
//!   held before it plus its own reading, so it is computed and sent first, and the poll is
//!   served while its rows are written and committed. The poller waits for the write after
//!   serving, to report a failure. Not when the account's ledgers could not be read, nor when
//!   history is written into the past (Floow's backfill): then the answer follows the commit.
//!   A total served but then not recorded (the write or the commit failed) stays a floor for
//!   the account's next totals until a write succeeds, so `consumed_total` never goes back
//!   while the process lives. What it gives up: a process killed in the few milliseconds
//!   between an answer and its commit may have served a total that the store never held, and
//!   after a restart an interval with a reset or a top-up in it can count lower than the
//!   steps served.
//! - **Warmed at start** ([`Writer::warm`]): while the first polls wait on their upstreams, the
//!   writer reads each account's ledgers and cursors, so the first round is not held up by
//!   reads (one account with 10,000 keys: about 20 ms of its first poll).
//!
//! The answer is the same as reading the store every time, because the cursor holds a contiguous
//! run of the store's samples and is dropped whenever the store changes underneath it: samples
//! deleted by compaction or pruning ([`Store::generation`]), history written into the past
//! (Floow's backfill), a sample written before the newest (clock stepped back), or a failed
//! write. Tests compare the two paths.

use crate::backfill;
use crate::config::AccountConfig;
use crate::forecast::consumption::{Observation, consumed_between};
use crate::forecast::{ForecastInput, Point, forecast};
use crate::providers::Reading;
use crate::smallmap::SmallMap;
use crate::state::{PoolState, Snapshot};
use crate::store::{Around, Batch, Ids, Ledger, PoolId, SampleRow, Store, StoreError};
use chrono::{DateTime, Utc};
// Keys are the store's own integer ids and names: foldhash is several times cheaper than the
// default SipHash for them, and its per-process seed still keeps collisions from being chosen.
use foldhash::{HashMap, HashSet, HashSetExt};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// How many samples from a window's start on a cursor reads at once. More means fewer reads
/// and more memory: 16 bytes a sample, per window, per pool.
pub const CURSOR_SAMPLES: usize = 8;

/// A batch stops taking queued polls once it holds this many pools, so one commit never grows
/// without bound when the writer falls behind.
pub const BATCH_POOLS: usize = 50_000;

/// One poll's reading, to ingest.
pub struct Job {
    pub account: Arc<AccountConfig>,
    pub reading: Reading,
    pub now: DateTime<Utc>,
}

/// The snapshot to serve, and the store error that kept it from being recorded, if any.
pub type Outcome = (Snapshot, Option<StoreError>);

/// Ingests one reading with nothing remembered from earlier polls: everything is read from the
/// store. The writer thread gives the same answers while reading far less (see the module
/// documentation).
pub fn ingest(
    store: &Store,
    account: &AccountConfig,
    reading: Reading,
    now: DateTime<Utc>,
) -> Outcome {
    let job = Job {
        account: Arc::new(account.clone()),
        reading,
        now,
    };
    Tracker::default()
        .ingest_batch(store, vec![job])
        .pop()
        .expect("one outcome per job")
}

/// Handle to the writer thread; cheap to clone. The thread ends when the last handle is dropped.
#[derive(Clone)]
pub struct Writer {
    queue: mpsc::UnboundedSender<Request>,
}

enum Request {
    /// A poll's reading, where to send its answer, and where to say whether it was recorded.
    Ingest(
        Job,
        oneshot::Sender<Outcome>,
        oneshot::Sender<Option<StoreError>>,
    ),
    /// An account to read ahead of its first poll, with the time to read its windows at.
    Warm(Arc<AccountConfig>, DateTime<Utc>),
    /// Answered once everything queued before it is written.
    Flush(oneshot::Sender<()>),
}

impl Writer {
    /// Starts the writer thread on `store`.
    pub fn start(store: Store) -> Writer {
        let (queue, mut rx) = mpsc::unbounded_channel::<Request>();
        std::thread::Builder::new()
            .name("creditwatch-writer".into())
            .spawn(move || {
                let mut tracker = Tracker::default();
                // Accounts to warm, one at a time whenever no poll is waiting: polls come first.
                let mut warming: VecDeque<(Arc<AccountConfig>, DateTime<Utc>)> = VecDeque::new();
                let mut next = rx.blocking_recv();
                while let Some(first) = next.take() {
                    let mut jobs = Vec::new();
                    let mut answers = Vec::new();
                    let mut recorded = Vec::new();
                    let mut flushes = Vec::new();
                    let mut pools = 0;
                    let mut request = Some(first);
                    // Whatever queued while the last batch was written goes in this one.
                    while let Some(r) = request.take() {
                        match r {
                            Request::Ingest(job, answer, written) => {
                                pools += job.reading.pools.len();
                                jobs.push(job);
                                answers.push(Some(answer));
                                recorded.push(written);
                            }
                            Request::Flush(done) => flushes.push(done),
                            Request::Warm(account, at) => warming.push_back((account, at)),
                        }
                        if pools < BATCH_POOLS {
                            request = rx.try_recv().ok();
                        }
                    }
                    // A poll cancelled meanwhile (shutdown, reload) no longer waits, and is
                    // written all the same.
                    let mut answer = |i: usize, outcome| {
                        if let Some(a) = answers[i].take() {
                            let _ = a.send(outcome);
                        }
                    };
                    // A request to warm or flush alone writes nothing.
                    let run = std::panic::AssertUnwindSafe(|| match jobs.is_empty() {
                        true => Vec::new(),
                        false => tracker.ingest_batch_answering(&store, jobs, &mut answer),
                    });
                    match std::panic::catch_unwind(run) {
                        Ok(written) => {
                            for (reply, error) in recorded.into_iter().zip(written) {
                                let _ = reply.send(error);
                            }
                        }
                        // A bug; the batch's polls see it as their own panic. What the tracker
                        // held may be half-updated, so start again from the store.
                        Err(_) => tracker = Tracker::default(),
                    }
                    for done in flushes {
                        let _ = done.send(());
                    }
                    next = loop {
                        match rx.try_recv() {
                            Ok(r) => break Some(r),
                            Err(mpsc::error::TryRecvError::Disconnected) => break None,
                            Err(mpsc::error::TryRecvError::Empty) => {}
                        }
                        let Some((account, at)) = warming.pop_front() else {
                            break rx.blocking_recv();
                        };
                        let run =
                            std::panic::AssertUnwindSafe(|| tracker.warm(&store, &account, at));
                        if std::panic::catch_unwind(run).is_err() {
                            tracker = Tracker::default();
                        }
                    };
                }
            })
            .expect("the writer thread starts");
        Writer { queue }
    }

    /// Queues one poll's reading behind the polls already waiting (see [`ingest`]); its answer
    /// usually comes before its write does ([`Pending`]).
    pub fn submit(&self, job: Job) -> Pending {
        let (answer, answered) = oneshot::channel();
        let (written, recorded) = oneshot::channel();
        self.queue
            .send(Request::Ingest(job, answer, written))
            .unwrap_or_else(|_| panic!("the writer thread has stopped"));
        Pending { answered, recorded }
    }

    /// Ingests one poll's reading and waits until it is recorded: the snapshot, and the error
    /// that kept it from being recorded, if any.
    pub async fn ingest(&self, job: Job) -> Outcome {
        let mut pending = self.submit(job);
        let (snapshot, error) = pending.answer().await;
        let written = pending.written().await;
        (snapshot, error.or(written))
    }

    /// Reads the account's ledgers and the samples around its burn windows' starts at `now`
    /// while the writer has nothing else to do, so that the first polls after a start find them
    /// in memory instead of reading them on the way to being served: for one account with
    /// 10,000 keys that is most of the writer's share of the first poll. Polls queued meanwhile
    /// go first; an account already polled is skipped. Only speed depends on it: a cursor read
    /// at `now` is checked and read again like any other when its poll comes.
    pub fn warm(&self, account: Arc<AccountConfig>, now: DateTime<Utc>) {
        let _ = self.queue.send(Request::Warm(account, now));
    }

    /// Waits until every reading queued so far is written.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.queue.send(Request::Flush(done)).is_ok() {
            let _ = wait.await;
        }
    }
}

/// A poll handed to the writer ([`Writer::submit`]). Its answer does not depend on its write
/// unless its account's ledgers could not be read or history is written into its past, so it is
/// usually given before the write and the poll is served while its rows are written and
/// committed (for one account with 10,000 keys that was about a third of the writer's time).
pub struct Pending {
    answered: oneshot::Receiver<Outcome>,
    recorded: oneshot::Receiver<Option<StoreError>>,
}

impl Pending {
    /// The snapshot to serve, and the error that kept the poll from being recorded when that
    /// was known first (then [`Pending::written`] has nothing more to say).
    pub async fn answer(&mut self) -> Outcome {
        (&mut self.answered).await.expect("ingest does not panic")
    }

    /// Once the poll's write is committed: the error that kept it from being recorded, if
    /// [`Pending::answer`] did not already give it.
    pub async fn written(self) -> Option<StoreError> {
        self.recorded.await.expect("ingest does not panic")
    }
}

/// What the writer keeps between polls so that a poll reads almost nothing from the store.
#[derive(Default)]
pub struct Tracker {
    accounts: HashMap<String, AccountTrack>,
    /// [`Store::generation`] when the cursors were read.
    generation: u64,
    /// Reads of window samples ([`Batch::refill`]) polls have made, warming aside.
    poll_reads: u64,
}

#[derive(Default)]
struct AccountTrack {
    /// The store's ledgers of the account (by pool id), once read.
    ledgers: Option<SmallMap<i64, Ledger>>,
    /// The store's ids of the account and its pools.
    ids: Ids,
    /// Each pool's cursors (by pool id), one per burn window.
    cursors: SmallMap<i64, Vec<Cursor>>,
    /// Polled since the store's generation last changed; accounts that were not are forgotten
    /// then (removed by a reload, or polled less than hourly), and read again if they return.
    recent: bool,
    /// Totals served but not recorded (their write or its commit failed), by pool: until a
    /// write succeeds, no total goes below them. Counted again from the older ledger, an
    /// interval with a reset or a top-up in it can come out lower than the steps served
    /// ([`consumed_between`] does not add up across them), and `consumed_total` is a counter.
    /// Boxed: nearly every account has none, and the writer holds one of these per account.
    floors: Option<Box<HashMap<PoolId, f64>>>,
}

/// A contiguous run of one pool's samples, `(ts_ms, consumed)` oldest first, around the start
/// of one burn window: the last sample before the start (unless the history begins after it),
/// then the samples from the start on.
#[derive(Debug)]
struct Cursor {
    window_ms: i64,
    run: Run,
    /// The run begins with the pool's oldest sample.
    from_oldest: bool,
    /// The run ends with the pool's newest sample, so new samples are appended to it.
    to_newest: bool,
}

impl Cursor {
    fn new(window_ms: i64) -> Cursor {
        Cursor {
            window_ms,
            run: Run::default(),
            from_oldest: false,
            to_newest: false,
        }
    }

    /// Forgets the run; the next use reads the store.
    fn reset(&mut self) {
        self.run.clear();
        self.from_oldest = false;
        self.to_newest = false;
    }

    /// A sample was just written at `ts`.
    fn push(&mut self, ts: i64, consumed: f64) {
        match self.run.last_mut() {
            // Written inside the run (the clock stepped back): the run no longer mirrors the
            // store.
            Some(last) if ts < last.0 => self.reset(),
            Some(last) if ts == last.0 => last.1 = consumed,
            // Appended while there is room; once full the run stops growing: it stays
            // contiguous, it just no longer reaches the end.
            _ if self.to_newest => self.to_newest = self.run.push((ts, consumed)),
            // After the end of a run that stops short of the newest sample: nothing changes.
            _ => {}
        }
    }

    /// Moves the run forward to the window starting at `from`, and tells whether it still
    /// holds the samples the burn over the window reads: the last before `from` and the first
    /// at or after it. If not, [`Cursor::fill`] it from the store.
    fn advance(&mut self, from: i64) -> bool {
        while self.run.len() >= 2 && self.run.get()[1].0 < from {
            self.run.pop_front();
            self.from_oldest = false;
        }
        let run = self.run.get();
        !run.is_empty()
            && (run[0].0 < from || self.from_oldest)
            && (self.to_newest || run.iter().any(|s| s.0 >= from))
    }

    /// Replaces the run with what the store holds around the window's start
    /// ([`Batch::refill`] with [`CURSOR_SAMPLES`]).
    fn fill(&mut self, (before, after): Around) {
        self.from_oldest = before.is_none();
        self.to_newest = after.len() < CURSOR_SAMPLES;
        self.run.clear();
        for s in before.into_iter().chain(after) {
            if !self.run.push(s) {
                // More than a run holds (never, with refill's limit): the run stays contiguous
                // from its start, it just no longer reaches the end.
                self.to_newest = false;
                break;
            }
        }
    }

    /// The samples the burn over the window starting at `from` reads, as
    /// [`crate::store::Store::window_points`] finds them; after [`Cursor::advance`].
    fn points(&self, from: i64, out: &mut Vec<Point>) {
        let point = |&(ts, consumed): &(i64, f64)| Point {
            t: ts as f64 / 1000.0,
            consumed,
        };
        let run = self.run.get();
        out.extend(run.first().filter(|s| s.0 < from).map(point));
        out.extend(run.iter().find(|s| s.0 >= from).map(point));
    }
}

/// The most samples a cursor's run holds: a fill gives the last sample before the window's start
/// and up to [`CURSOR_SAMPLES`] from it on, and [`Cursor::push`] stops growing the run there.
const RUN: usize = CURSOR_SAMPLES + 1;

/// A cursor's samples, `(ts_ms, consumed)`, held in the cursor itself. A deque on the heap cost
/// each cursor an allocation of its own, with the allocator's header and the deque's own fields;
/// with each pool's list of cursors made to size as well, peak heap at 10,000 accounts went from
/// 49.7 to 46.8 MiB (heaptrack). Taking the front sample shifts the rest, at most eight.
#[derive(Debug, Clone, Copy, Default)]
struct Run {
    samples: [(i64, f64); RUN],
    len: u8,
}

impl Run {
    fn get(&self) -> &[(i64, f64)] {
        &self.samples[..usize::from(self.len)]
    }

    fn len(&self) -> usize {
        usize::from(self.len)
    }

    fn clear(&mut self) {
        self.len = 0;
    }

    fn last_mut(&mut self) -> Option<&mut (i64, f64)> {
        self.samples[..usize::from(self.len)].last_mut()
    }

    /// Appends a sample; false, leaving the run as it was, when it is full.
    fn push(&mut self, sample: (i64, f64)) -> bool {
        let Some(slot) = self.samples.get_mut(usize::from(self.len)) else {
            return false;
        };
        *slot = sample;
        self.len += 1;
        true
    }

    fn pop_front(&mut self) {
        if self.len > 0 {
            self.samples.copy_within(1..usize::from(self.len), 0);
            self.len -= 1;
        }
    }
}

impl Tracker {
    /// Ingests each job in order, all in one transaction, and returns an outcome per job (with
    /// the error that kept it from being recorded, if any).
    pub fn ingest_batch(&mut self, store: &Store, jobs: Vec<Job>) -> Vec<Outcome> {
        let mut answers: Vec<Option<Outcome>> = jobs.iter().map(|_| None).collect();
        let written = self.ingest_batch_answering(store, jobs, &mut |i, o| answers[i] = Some(o));
        answers
            .into_iter()
            .zip(written)
            .map(|(answer, written)| {
                let (snapshot, error) = answer.expect("every job is answered");
                (snapshot, error.or(written))
            })
            .collect()
    }

    /// Ingests each job in order, all in one transaction. Each job is answered once through
    /// `answer` (with its index): as soon as its snapshot is known when that does not depend on
    /// the write (the usual poll), or after the commit with the error that kept it from being
    /// recorded. Returns, per job answered early, the error that kept it from being recorded
    /// (`None` for the others, whose answer carried it).
    pub fn ingest_batch_answering(
        &mut self,
        store: &Store,
        jobs: Vec<Job>,
        answer: &mut dyn FnMut(usize, Outcome),
    ) -> Vec<Option<StoreError>> {
        let n = jobs.len();
        let mut written: Vec<Option<StoreError>> = (0..n).map(|_| None).collect();
        let mut early = vec![false; n];
        let mut deferred = Vec::new();
        let ((), committed) = store.batch(|batch| {
            self.follow_generation(store);
            for (i, job) in jobs.into_iter().enumerate() {
                match self.ingest_one(batch, job, &mut |o| answer(i, o)) {
                    Ingested::Answered(error) => {
                        early[i] = true;
                        written[i] = error;
                    }
                    Ingested::Deferred(outcome) => deferred.push((i, outcome)),
                }
            }
        });
        if let Err(e) = committed {
            // Nothing of the batch was kept: forget what it taught, and report the commit's
            // error on every poll of it.
            self.forget_uncommitted();
            let detail = e.to_string();
            let error = || StoreError::Batch {
                path: store.path().to_string(),
                detail: format!("could not commit: {detail}"),
            };
            for (_, (_, e)) in &mut deferred {
                e.get_or_insert_with(error);
            }
            for (w, _) in written.iter_mut().zip(&early).filter(|(_, early)| **early) {
                w.get_or_insert_with(error);
            }
        }
        for (i, outcome) in deferred {
            answer(i, outcome);
        }
        written
    }

    /// After a failed commit: what the tracker holds may not match the store, so every account
    /// is read again at its next poll, but the totals its ledgers hold (served, some of them not
    /// recorded) stay as floors.
    fn forget_uncommitted(&mut self) {
        for track in self.accounts.values_mut() {
            let mut floors = track.floors.take().unwrap_or_default();
            if let Some(ledgers) = track.ledgers.take() {
                for (id, pid) in track.ids.pools() {
                    if let Some(l) = ledgers.get(&pid) {
                        raise_floor(&mut floors, id, l.consumed);
                    }
                }
            }
            *track = AccountTrack {
                floors: (!floors.is_empty()).then_some(floors),
                ..AccountTrack::default()
            };
        }
    }

    /// Forgets the cursors when maintenance has deleted samples since they were read, and the
    /// accounts not polled since the last time. Called under the store's lock: maintenance bumps
    /// the generation before letting go.
    fn follow_generation(&mut self, store: &Store) {
        let generation = store.generation();
        if generation != self.generation {
            self.generation = generation;
            self.accounts.retain(|_, a| std::mem::take(&mut a.recent));
            for a in self.accounts.values_mut() {
                a.cursors.clear();
            }
        }
    }

    /// Reads what `account`'s first poll at about `now` would read: its ledgers, and for each
    /// burn window the samples around the window's start ([`Batch::refill`]). Nothing if the
    /// account has been read already. A failure leaves it unread, for its poll to read (and
    /// report).
    pub fn warm(&mut self, store: &Store, account: &AccountConfig, now: DateTime<Utc>) {
        let now_ms = now.timestamp_millis();
        let started = std::time::Instant::now();
        let ((), _) = store.batch(|batch| {
            self.follow_generation(store);
            let track = self.accounts.entry(account.name.clone()).or_default();
            if track.ledgers.is_some() {
                return;
            }
            let Ok(ledgers) = batch.ledgers(&account.name, &mut track.ids) else {
                return;
            };
            let pools: HashSet<i64> = ledgers.keys().copied().collect();
            track.ledgers = Some(ledgers);
            track.recent = true;
            let Some(account_id) = track.ids.account() else {
                return;
            };
            if pools.is_empty() {
                return;
            }
            for window in account.all_windows() {
                let from = now_ms - window.duration.as_millis() as i64;
                if fill_cursors(track, batch, account_id, &pools, from, now_ms).is_err() {
                    track.cursors.clear();
                    return;
                }
            }
            // A first poll that arrives meanwhile waits for this: worth seeing for an account
            // of thousands of pools.
            tracing::debug!(account = %account.name, pools = pools.len(), took_ms = started.elapsed().as_millis() as u64, "read ahead what the first poll reads");
        });
    }

    fn ingest_one(
        &mut self,
        batch: &Batch<'_>,
        job: Job,
        answer: &mut dyn FnMut(Outcome),
    ) -> Ingested {
        let Job {
            account,
            reading,
            now,
        } = job;
        let now_ms = now.timestamp_millis();
        let track = self.accounts.entry(account.name.clone()).or_default();
        track.recent = true;
        // Without the ledgers the totals cannot be continued: write nothing rather than
        // overwrite them with totals that restart from 0.
        let mut ledger_error = None;
        if track.ledgers.is_none() {
            match batch.ledgers(&account.name, &mut track.ids) {
                Ok(l) => track.ledgers = Some(l),
                Err(e) => ledger_error = Some(e),
            }
        }
        let no_ledgers = SmallMap::new();
        let ledgers = track.ledgers.as_ref().unwrap_or(&no_ledgers);
        let ids = &track.ids;
        let mut rows = Vec::with_capacity(reading.pools.len());
        let mut periods = Vec::with_capacity(reading.pools.len());
        // Each pool's id, looked up once: None for a pool never written.
        let mut pids = Vec::with_capacity(reading.pools.len());
        for pool in &reading.pools {
            let id = PoolId {
                pool: pool.pool.clone(),
                key: pool.key.clone(),
            };
            let pid = ids.pool(&id);
            let period = pool.schedule.period_at(now);
            let obs = Observation {
                used: pool.used,
                remaining: pool.remaining,
                period_start_ms: period.map(|p| p.start.timestamp_millis()),
            };
            let mut consumed = match (pid.and_then(|p| ledgers.get(&p)), pool.cumulative) {
                // The provider's own exact total; never below what was already exported.
                (Some(l), Some(total)) => total.max(l.consumed),
                (None, Some(total)) => total,
                // A reading older than the ledger (clock stepped back) adds nothing.
                (Some(l), None) if l.last_ts_ms >= now_ms => l.consumed,
                (Some(l), None) => l.consumed + consumed_between(&l.last, &obs, pool.rule),
                (None, None) => 0.0,
            };
            if let Some(&floor) = track.floors.as_ref().and_then(|f| f.get(&id)) {
                consumed = consumed.max(floor);
            }
            rows.push(SampleRow {
                id,
                unit: pool.unit.as_str().to_string(),
                ts_ms: now_ms,
                used: pool.used,
                remaining: pool.remaining,
                limit: pool.limit,
                period_start_ms: obs.period_start_ms,
                consumed,
            });
            periods.push(period);
            pids.push(pid);
        }
        let windows = account.all_windows();
        let longest = windows
            .iter()
            .map(|w| w.duration)
            .max()
            .unwrap_or(Duration::from_secs(3600));
        let since = now_ms - longest.as_millis() as i64;
        let ledger_of = |id: &PoolId| ids.pool(id).and_then(|p| ledgers.get(&p));
        let past = backfill::rows(&reading, &rows, ledger_of, now_ms, since);
        let starts: Vec<i64> = windows
            .iter()
            .map(|w| now_ms - w.duration.as_millis() as i64)
            .collect();
        let mut serve = Serve {
            account: &account,
            now,
            starts: &starts,
            before_write: true,
        };

        // The usual poll: its answer does not depend on its write, so it is given first and the
        // poll is served while its rows are written. The windows read the store as it was before
        // the write, plus the reading itself; what the store holds after the write is exactly
        // that. Not when the ledgers could not be read (nothing is written, and the poller keeps
        // the totals from going down), nor when history is written into the past, which the
        // windows must read.
        if ledger_error.is_none() && past.is_empty() {
            let unread = move_cursors(track, batch, &rows, &pids, &starts, &mut self.poll_reads);
            let snapshot = serve.snapshot(track, batch, reading, &rows, &pids, periods, &unread);
            answer((snapshot, None));
            let write = batch.record(&account.name, &mut track.ids, &rows, &[]);
            remember(track, &rows, &pids, &[], write.is_ok());
            return Ingested::Answered(write.err());
        }

        serve.before_write = false;
        let write = match ledger_error {
            Some(e) => Err(e),
            None => batch.record(&account.name, &mut track.ids, &rows, &past),
        };
        let written = write.is_ok();
        remember(track, &rows, &pids, &past, written);
        let (pids, unread) = if written {
            // Every written row's pool has an id now.
            let pids: Vec<_> = rows.iter().map(|r| track.ids.pool(&r.id)).collect();
            let unread = move_cursors(track, batch, &rows, &pids, &starts, &mut self.poll_reads);
            (pids, unread)
        } else {
            // Read from the store, which does not hold this reading.
            (vec![None; rows.len()], HashSet::new())
        };
        let snapshot = serve.snapshot(track, batch, reading, &rows, &pids, periods, &unread);
        Ingested::Deferred((snapshot, write.err()))
    }
}

/// How [`Tracker::ingest_one`] ended: answered before its write (with the write's error, if
/// any), or with the answer to give once the batch is committed.
enum Ingested {
    Answered(Option<StoreError>),
    Deferred(Outcome),
}

/// Brings the ledgers and cursors up to date after a poll's write, or forgets them if it failed
/// (the savepoint was rolled back; what was kept may not match the store). `pids` are the
/// pools' ids from before the write: a pool without one has no cursors yet.
fn remember(
    track: &mut AccountTrack,
    rows: &[SampleRow],
    pids: &[Option<i64>],
    past: &[SampleRow],
    written: bool,
) {
    if !written {
        track.ledgers = None;
        track.cursors.clear();
        // The totals were served (or are about to be): keep them as floors.
        let floors = track.floors.get_or_insert_with(Default::default);
        for r in rows {
            raise_floor(floors, &r.id, r.consumed);
        }
        return;
    }
    // Written; if the commit fails, the ledgers below become the floors (`forget_uncommitted`).
    track.floors = None;
    let ledgers = track.ledgers.get_or_insert_with(SmallMap::new);
    for (r, &pid) in rows.iter().zip(pids) {
        // Every written row's pool has an id now.
        let Some(p) = pid.or_else(|| track.ids.pool(&r.id)) else {
            continue;
        };
        let last = Observation {
            used: r.used,
            remaining: r.remaining,
            period_start_ms: r.period_start_ms,
        };
        // As the store's upsert does: first_seen only when the ledger is new.
        let l = ledgers.get_or_insert_with(p, || Ledger {
            unit: r.unit.clone(),
            first_seen_ms: r.ts_ms,
            last_ts_ms: r.ts_ms,
            consumed: r.consumed,
            last,
        });
        if l.unit != r.unit {
            l.unit = r.unit.clone();
        }
        l.last_ts_ms = r.ts_ms;
        l.consumed = r.consumed;
        l.last = last;
        if pid.is_some() {
            for c in track.cursors.get_mut(&p).into_iter().flatten() {
                c.push(r.ts_ms, r.consumed);
            }
        }
    }
    for r in past {
        let cursors = track
            .ids
            .pool(&r.id)
            .and_then(|p| track.cursors.get_mut(&p));
        cursors.into_iter().flatten().for_each(Cursor::reset);
    }
}

/// Makes `total` the pool's floor unless it already has a higher one.
fn raise_floor(floors: &mut HashMap<PoolId, f64>, id: &PoolId, total: f64) {
    let f = floors.entry(id.clone()).or_insert(total);
    *f = f.max(total);
}

/// What one poll's answer is computed with.
struct Serve<'a> {
    account: &'a AccountConfig,
    now: DateTime<Utc>,
    /// Each burn window's start.
    starts: &'a [i64],
    /// The answer is given before the poll is written.
    before_write: bool,
}

impl Serve<'_> {
    /// The snapshot to serve: each pool's reading, total and forecast. A pool with an id
    /// (`pids`) reads its windows from its cursors (moved by [`move_cursors`], `unread` those
    /// that could not be), plus its reading; one without from its reading alone before the
    /// write, or from the store when the poll could not be written (`None` everywhere).
    #[allow(clippy::too_many_arguments)]
    fn snapshot(
        &self,
        track: &mut AccountTrack,
        batch: &Batch<'_>,
        reading: Reading,
        rows: &[SampleRow],
        pids: &[Option<i64>],
        periods: Vec<Option<crate::forecast::schedule::Period>>,
        unread: &HashSet<i64>,
    ) -> Snapshot {
        let account = self.account;
        let now_ms = self.now.timestamp_millis();
        let mut pools = Vec::with_capacity(rows.len());
        let mut points = Vec::with_capacity(2 * self.starts.len() + 1);
        for (((pool, row), period), &pid) in
            reading.pools.into_iter().zip(rows).zip(periods).zip(pids)
        {
            points.clear();
            let found = match pid {
                Some(p) => window_points(track, p, row, self.starts, unread, &mut points),
                // Never written: the store holds none of its samples (a pool's id is made with
                // its first sample, and the ledgers read at the account's first poll give every
                // pool that has samples its id), so its reading is all there is.
                None if self.before_write => {
                    points.push(Point {
                        t: row.ts_ms as f64 / 1000.0,
                        consumed: row.consumed,
                    });
                    true
                }
                None => batch
                    .window_points(&account.name, &row.id, now_ms, self.starts)
                    .map(|p| points = p)
                    .is_ok(),
            };
            if !found {
                points.clear();
                if let Some(p) = pid {
                    track.cursors.remove(&p);
                }
            }
            let f = forecast(&ForecastInput {
                points: &points,
                windows: &account.burn_windows,
                forecast_window: &account.forecast_window,
                used: pool.used,
                remaining: pool.remaining,
                period,
                now: self.now,
            });
            pools.push(PoolState {
                reading: pool,
                consumed_total: row.consumed,
                period,
                forecast: f,
            });
        }
        Snapshot {
            at: self.now,
            plan: reading.plan,
            pools,
            keys: reading.keys,
            endpoints: reading.endpoints,
        }
    }
}

/// Moves the cursors of each window of every pool with an id (`pids`, one per row) to the
/// window's start, and reads from the store those that no longer hold what the burn needs: for each window, one walk of the
/// account's samples for all such pools ([`Batch::refill`]). Returns the pools whose cursors
/// could not be read.
fn move_cursors(
    track: &mut AccountTrack,
    batch: &Batch<'_>,
    rows: &[SampleRow],
    pids: &[Option<i64>],
    starts: &[i64],
    reads: &mut u64,
) -> HashSet<i64> {
    let mut stale: Vec<HashSet<i64>> = vec![HashSet::new(); starts.len()];
    for (row, &pid) in rows.iter().zip(pids) {
        let Some(p) = pid else {
            continue;
        };
        let cursors = track.cursors.get_or_insert_with(p, Vec::new);
        for (w, &from) in starts.iter().enumerate() {
            if !cursor(cursors, row.ts_ms - from).advance(from) {
                stale[w].insert(p);
            }
        }
    }
    let mut unread = HashSet::new();
    let (Some(account_id), Some(now_ms)) = (track.ids.account(), rows.first().map(|r| r.ts_ms))
    else {
        return stale.into_iter().flatten().collect();
    };
    for (&from, pools) in starts.iter().zip(&stale) {
        if pools.is_empty() {
            continue;
        }
        *reads += 1;
        if fill_cursors(track, batch, account_id, pools, from, now_ms).is_err() {
            unread.extend(pools);
        }
    }
    unread
}

/// Reads from the store the samples around `from` for `pools`' cursors of the window that
/// starts there at `now_ms` ([`Batch::refill`]).
fn fill_cursors(
    track: &mut AccountTrack,
    batch: &Batch<'_>,
    account_id: i64,
    pools: &HashSet<i64>,
    from: i64,
    now_ms: i64,
) -> Result<(), StoreError> {
    for (p, around) in batch.refill(account_id, pools, from, CURSOR_SAMPLES)? {
        cursor(track.cursors.get_or_insert_with(p, Vec::new), now_ms - from).fill(around);
    }
    Ok(())
}

/// A pool's cursor of the window `window_ms` long, made if it has none.
fn cursor(cursors: &mut Vec<Cursor>, window_ms: i64) -> &mut Cursor {
    match cursors.iter().position(|c| c.window_ms == window_ms) {
        Some(i) => &mut cursors[i],
        None => {
            // One cursor per window, made once: grown by doubling, the list would keep room
            // for four (about 320 bytes a pool more with two windows).
            cursors.reserve_exact(1);
            cursors.push(Cursor::new(window_ms));
            cursors.last_mut().expect("just pushed")
        }
    }
}

/// The samples around each window's start, from the pool's cursors (moved by
/// [`move_cursors`]), plus the sample just written: oldest first, without duplicates. False
/// when the pool's cursors could not be read.
fn window_points(
    track: &mut AccountTrack,
    pool_id: i64,
    row: &SampleRow,
    starts: &[i64],
    unread: &HashSet<i64>,
    out: &mut Vec<Point>,
) -> bool {
    if unread.contains(&pool_id) {
        return false;
    }
    let cursors = track.cursors.get_or_insert_with(pool_id, Vec::new);
    for &from in starts {
        cursor(cursors, row.ts_ms - from).points(from, out);
    }
    // Before the write a cursor may still hold an earlier sample at the reading's own instant,
    // which the write replaces.
    let t = row.ts_ms as f64 / 1000.0;
    out.retain(|p| p.t != t);
    out.push(Point {
        t: row.ts_ms as f64 / 1000.0,
        consumed: row.consumed,
    });
    out.sort_by(|a, b| a.t.total_cmp(&b.t));
    out.dedup_by(|a, b| a.t == b.t);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A full fill fits the run; pushing past it stops following the newest sample rather than
    /// dropping the window's start, and the run stays contiguous.
    #[test]
    fn a_cursor_run_holds_a_full_fill_and_stays_contiguous() {
        let mut c = Cursor::new(60_000);
        let run: Vec<(i64, f64)> = (0..CURSOR_SAMPLES as i64).map(|i| (i, i as f64)).collect();
        c.fill((Some((-1, -1.0)), run));
        assert_eq!(c.run.len(), RUN);
        assert!(
            !c.to_newest,
            "a full fill may stop short of the newest sample"
        );
        assert_eq!(c.run.get()[0], (-1, -1.0));
        for ts in 100..200 {
            c.push(ts, 1.0);
            assert_eq!(c.run.len(), RUN);
        }
        assert_eq!(c.run.get()[RUN - 1], (CURSOR_SAMPLES as i64 - 1, 7.0));

        // A short fill reaches the newest sample and follows it, up to the run's size.
        c.fill((None, vec![(1, 0.0), (2, 0.5), (3, 1.0)]));
        assert!(c.to_newest && c.from_oldest);
        for ts in 4..100 {
            c.push(ts, ts as f64);
        }
        let ts: Vec<i64> = c.run.get().iter().map(|s| s.0).collect();
        assert_eq!(ts, (1..=RUN as i64).collect::<Vec<_>>());
        assert!(!c.to_newest);

        // Moving to a later window start drops samples from the front, keeping the one before.
        assert!(c.advance(5));
        assert_eq!(c.run.get()[0].0, 4);
        assert!(!c.from_oldest);
        let mut points = Vec::new();
        c.points(5, &mut points);
        assert_eq!(
            points.iter().map(|p| p.t).collect::<Vec<_>>(),
            [0.004, 0.005]
        );
        // Past everything it holds (and no longer following the newest): read the store again.
        assert!(!c.advance(1_000));
    }
    use crate::config::Config;
    use crate::providers::{ProviderSettings, floow, fluximage, imagerouter};
    use chrono::{Duration as Span, NaiveDate, TimeZone};
    use futures_util::FutureExt;
    use std::path::Path;

    fn accounts() -> Vec<AccountConfig> {
        let text = r#"
[defaults]
burn_windows = ["10m", "1h"]
forecast_window = "30m"

[[account]]
name = "images"
provider = "fluximage"
api_key = "k"
billing_anchor = "2026-01-15"

[[account]]
name = "router"
provider = "imagerouter"
api_key = "k"
per_key = true

[[account]]
name = "floow"
provider = "floow"
api_key = "k"
billing_anchor = "2026-01-15"
monthly_allowance = 30000
# One window: no other window's samples can stand in for a sample its cursor missed.
burn_windows = ["10m"]
forecast_window = "10m"
"#;
        let (config, _) =
            Config::parse(text, Path::new("t.toml"), Path::new("."), &|_| None).unwrap();
        config.accounts
    }

    /// Account `a`'s reading at `now`, `i` polls in: usage grows with time, and the router's
    /// third key is gone for a while.
    fn reading(a: &AccountConfig, now: DateTime<Utc>, i: usize) -> Reading {
        let minutes = (now - Utc.with_ymd_and_hms(2026, 11, 19, 0, 0, 0).unwrap()).num_minutes();
        match &a.provider {
            ProviderSettings::Fluximage(_) => {
                let used = 10 + minutes / 7;
                let body = format!(
                    r#"{{"plan":"pro","compressor_used":{used},"compressor_limit":5000,"ia_credits_used":{used},"ia_credits_monthly":5000,"ia_topup_credits":0,"ia_credits_remaining":{},"canCompress":true,"canUseIA":true}}"#,
                    5000 - used
                );
                fluximage::parse(body.as_bytes(), a.billing_anchor.unwrap()).unwrap()
            }
            ProviderSettings::Imagerouter(s) => {
                let keys: Vec<String> = (0..3)
                    .filter(|&k| k != 2 || !(100..130).contains(&i))
                    .map(|k| {
                        let spent = (minutes as f64) * (k + 1) as f64 / 1000.0;
                        format!(
                            r#"{{"api_key_id":"id-{k}","api_key_name":"key-{k}","credit_usage":"{spent:.4}","total_requests":{k},"created_at":null,"is_active":true,"spend_limit":null,"spend_limit_period":null,"period_spend":"{spent:.4}","period_start":null,"expires_at":null}}"#
                        )
                    })
                    .collect();
                let spent = minutes as f64 / 100.0;
                let body = format!(
                    r#"{{"remaining_credits":"{:.4}","credit_usage":"{spent:.4}","total_deposits":"1000.0000","usage_by_api_key":[{}]}}"#,
                    1000.0 - spent,
                    keys.join(",")
                );
                imagerouter::parse(body.as_bytes(), now, s.per_key).unwrap()
            }
            ProviderSettings::Floow(s) => {
                let today = now.date_naive();
                let first = NaiveDate::from_ymd_opt(2026, 10, 1).unwrap();
                let days: Vec<String> = first
                    .iter_days()
                    .take_while(|d| *d <= today)
                    .map(|d| {
                        let credits = if d == today {
                            // Faster as the day goes on, so interpolating across a
                            // missing sample would show.
                            let m = (now - d.and_hms_opt(0, 0, 0).unwrap().and_utc()).num_minutes();
                            m * m / 2000
                        } else {
                            100 + (d.ordinal() as i64 * 37) % 200
                        };
                        format!(r#"{{"date":"{d}","calls":1,"credits":{credits}}}"#)
                    })
                    .collect();
                let body = format!(
                    r#"{{"period":{{"start":"2026-10-01T00:00:00.000Z"}},"summary":{{"byEndpoint":{{}}}},"daily":[{}]}}"#,
                    days.join(",")
                );
                floow::parse(
                    body.as_bytes(),
                    now,
                    a.billing_anchor.unwrap(),
                    s.monthly_allowance,
                )
                .unwrap()
            }
            _ => unreachable!(),
        }
    }

    use chrono::Datelike;

    /// The writer's memory (ledgers, cursors) must give exactly what reading the store every
    /// time gives, through everything that changes the store underneath it: hourly compaction
    /// and pruning, a gap, the clock stepping back, history written into the past, a key that
    /// vanishes and returns, polls batched together, and restarts that warm the memory at a
    /// time before or after the next poll.
    #[test]
    fn the_writer_gives_what_reading_the_store_every_time_gives() {
        let accounts = accounts();
        let (kept, fresh) = (Store::in_memory(), Store::in_memory());
        let mut tracker = Tracker::default();
        // The 3-hour gap at poll 150 spans midnight, so Floow's history writes a sample inside
        // the windows of the first poll after it.
        let mut now = Utc.with_ymd_and_hms(2026, 11, 19, 15, 30, 0).unwrap();
        let mut pending: Vec<(Job, Outcome)> = Vec::new();
        let mut seed: u64 = 7;
        let mut rand = |n: u64| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) % n
        };
        let flush = |tracker: &mut Tracker, pending: &mut Vec<(Job, Outcome)>| {
            let (jobs, expected): (Vec<Job>, Vec<Outcome>) = pending.drain(..).unzip();
            let got = tracker.ingest_batch(&kept, jobs);
            for (g, e) in got.into_iter().zip(expected) {
                assert!(g.1.is_none() && e.1.is_none());
                assert_eq!(g.0, e.0, "at {}", e.0.at);
            }
        };
        let (mut compared, mut restarts) = (0, 0);
        for i in 0..420 {
            now += match i {
                150 => Span::hours(3),
                250 => Span::minutes(-10),
                _ => Span::seconds(60 + rand(240) as i64),
            };
            // About hourly, on its own schedule as the daemon's maintenance is.
            if i % 20 == 5 {
                flush(&mut tracker, &mut pending);
                for s in [&kept, &fresh] {
                    s.compact(now.timestamp_millis()).unwrap();
                    s.prune((now - Span::hours(3)).timestamp_millis()).unwrap();
                }
            }
            for a in &accounts {
                let r = reading(a, now, i);
                let expected = ingest(&fresh, a, r.clone(), now);
                // Answered before its write, it is what the store gives after the write.
                assert_eq!(
                    expected.0,
                    after_the_write(&fresh, a, &expected.0),
                    "at {now}"
                );
                let job = Job {
                    account: Arc::new(a.clone()),
                    reading: r,
                    now,
                };
                pending.push((job, expected));
                compared += 1;
            }
            if rand(3) == 0 {
                flush(&mut tracker, &mut pending);
            }
            if i % 45 == 30 {
                flush(&mut tracker, &mut pending);
                tracker = Tracker::default();
                // The next poll comes 60 to 300 s from now.
                let at = now + Span::seconds(rand(400) as i64);
                for a in &accounts {
                    tracker.warm(&kept, a, at);
                }
                restarts += 1;
            }
        }
        flush(&mut tracker, &mut pending);
        assert_eq!((compared, restarts), (1260, 9));
        // The comparison saw burn rates, not only empty forecasts.
        let last = ingest(&fresh, &accounts[1], reading(&accounts[1], now, 420), now).0;
        assert!(
            last.pools.iter().all(|p| p.forecast.burn.len() == 2),
            "{last:?}"
        );
        assert_eq!(
            kept.total_samples().unwrap(),
            fresh.total_samples().unwrap()
        );
    }

    /// `snapshot` with each pool's forecast computed from the store's window points, which hold
    /// the snapshot's reading once it is written.
    fn after_the_write(store: &Store, a: &AccountConfig, snapshot: &Snapshot) -> Snapshot {
        let now_ms = snapshot.at.timestamp_millis();
        let starts: Vec<i64> = a
            .all_windows()
            .iter()
            .map(|w| now_ms - w.duration.as_millis() as i64)
            .collect();
        let mut out = snapshot.clone();
        for p in &mut out.pools {
            let id = PoolId {
                pool: p.reading.pool.clone(),
                key: p.reading.key.clone(),
            };
            let points = store.window_points(&a.name, &id, now_ms, &starts).unwrap();
            assert!(points.iter().any(|x| x.t * 1000.0 == now_ms as f64));
            p.forecast = forecast(&ForecastInput {
                points: &points,
                windows: &a.burn_windows,
                forecast_window: &a.forecast_window,
                used: p.reading.used,
                remaining: p.reading.remaining,
                period: p.period,
                now: snapshot.at,
            });
        }
        out
    }

    /// A warmed tracker's first polls read no window samples, and serve what an unwarmed one
    /// serves; an account it already holds is not read again.
    #[test]
    fn warming_reads_ahead_what_the_first_polls_read() {
        let accounts = accounts();
        let store = Store::in_memory();
        let mut tracker = Tracker::default();
        let mut now = Utc.with_ymd_and_hms(2026, 11, 20, 6, 0, 0).unwrap();
        let job = |a: &AccountConfig, now, i| Job {
            account: Arc::new(a.clone()),
            reading: reading(a, now, i),
            now,
        };
        for i in 0..40 {
            now += Span::minutes(3);
            let jobs = accounts.iter().map(|a| job(a, now, i)).collect();
            tracker.ingest_batch(&store, jobs);
        }
        let next = now + Span::seconds(90);
        let (mut cold, mut warm) = (Tracker::default(), Tracker::default());
        for a in &accounts {
            warm.warm(&store, a, now + Span::seconds(5));
        }
        // Warming again reads nothing new and changes nothing.
        let before = warm.accounts["router"].cursors.len();
        warm.warm(&store, &accounts[1], next);
        assert_eq!(warm.accounts["router"].cursors.len(), before);
        let jobs = |t| accounts.iter().map(|a| job(a, t, 40)).collect::<Vec<_>>();
        let from_cold = cold.ingest_batch(&store, jobs(next));
        assert!(cold.poll_reads >= 5, "{}", cold.poll_reads);
        // Warming wrote nothing: a second store fed the same polls gets the same answers.
        let twin = Store::in_memory();
        let mut t = Tracker::default();
        let mut then = Utc.with_ymd_and_hms(2026, 11, 20, 6, 0, 0).unwrap();
        for i in 0..40 {
            then += Span::minutes(3);
            t.ingest_batch(&twin, accounts.iter().map(|a| job(a, then, i)).collect());
        }
        let from_warm = warm.ingest_batch(&twin, jobs(next));
        assert_eq!(warm.poll_reads, 0);
        for (w, c) in from_warm.iter().zip(&from_cold) {
            assert!(w.1.is_none() && c.1.is_none());
            assert_eq!(w.0, c.0);
            assert!(w.0.pools.iter().all(|p| !p.forecast.burn.is_empty()));
        }
    }

    /// One poll whose write fails does not undo the others in its batch; it is still served,
    /// and once the store accepts writes again nothing it consumed meanwhile is lost.
    #[test]
    fn a_failed_write_is_isolated_and_loses_nothing() {
        let accounts = accounts();
        let store = Store::in_memory();
        let mut tracker = Tracker::default();
        let t0 = Utc.with_ymd_and_hms(2026, 11, 20, 6, 0, 0).unwrap();
        let job = |a: &AccountConfig, t: DateTime<Utc>, i| Job {
            account: Arc::new(a.clone()),
            reading: reading(a, t, i),
            now: t,
        };
        let batch = |tracker: &mut Tracker, t: DateTime<Utc>, i| {
            let jobs = accounts.iter().map(|a| job(a, t, i)).collect();
            tracker.ingest_batch(&store, jobs)
        };
        for (i, out) in batch(&mut tracker, t0, 0).iter().enumerate() {
            assert!(out.1.is_none(), "{i}: {:?}", out.1);
        }
        store.execute_for_test(
            "CREATE TRIGGER refuse BEFORE INSERT ON samples WHEN NEW.account_id =
               (SELECT id FROM account_ids WHERE name = 'images')
             BEGIN SELECT RAISE(ABORT, 'refused for the test'); END;",
        );
        let t1 = t0 + Span::minutes(70);
        let out = batch(&mut tracker, t1, 1);
        let err = out[0].1.as_ref().expect("the images write fails");
        assert!(err.to_string().contains("refused for the test"), "{err}");
        assert!(out[1].1.is_none() && out[2].1.is_none());
        // Still served: the reading's values, and the total including its consumption (the
        // poller keeps it from going below what was served).
        let ai = |s: &Snapshot| {
            s.pools
                .iter()
                .find(|p| p.reading.pool == "ai")
                .map(|p| p.consumed_total)
                .unwrap()
        };
        // Minutes since 2026-11-19: 10 + 1800/7 = 267 used at t0, 10 + 1870/7 = 277 at t1.
        assert_eq!(ai(&out[0].0), 10.0);
        assert_eq!(store.ledgers("images").unwrap().len(), 2);
        assert_eq!(store.sample_count("images").unwrap(), 2);
        // The others were written in the same batch: a pool each, polled twice.
        assert_eq!(store.sample_count("router").unwrap(), 2);
        // Floow: two live samples and the backfilled midnight that anchors the 1h window.
        assert_eq!(store.sample_count("floow").unwrap(), 3);
        store.execute_for_test("DROP TRIGGER refuse;");
        let t2 = t1 + Span::minutes(70);
        let out = batch(&mut tracker, t2, 2);
        assert!(out.iter().all(|o| o.1.is_none()));
        // 10 + 1940/7 = 287: everything since t0 counted once.
        assert_eq!(ai(&out[0].0), 20.0);
        assert_eq!(
            store.ledgers("images").unwrap()[&PoolId {
                pool: "ai".into(),
                key: String::new()
            }]
                .consumed,
            20.0
        );
    }

    /// A total served but not recorded is never undercut: counted again from the older ledger, a
    /// reset in between hides the use served before it. Both ways of losing a write: the poll's
    /// own write, and the batch's commit.
    #[test]
    fn a_total_served_but_not_recorded_is_never_undercut() {
        let a = Arc::new(accounts()[0].clone());
        let store = Store::in_memory();
        let mut tracker = Tracker::default();
        let t0 = Utc.with_ymd_and_hms(2026, 11, 20, 6, 0, 0).unwrap();
        let poll = |tracker: &mut Tracker, minutes: i64, used: u32| {
            let now = t0 + Span::minutes(minutes);
            let body = format!(
                r#"{{"plan":"pro","compressor_used":{used},"compressor_limit":5000,"ia_credits_used":{used},"ia_credits_monthly":5000,"ia_topup_credits":0,"ia_credits_remaining":{},"canCompress":true,"canUseIA":true}}"#,
                5000 - used
            );
            let job = Job {
                account: Arc::clone(&a),
                reading: fluximage::parse(body.as_bytes(), a.billing_anchor.unwrap()).unwrap(),
                now,
            };
            let (snapshot, error) = tracker.ingest_batch(&store, vec![job]).pop().unwrap();
            let ai = snapshot
                .pools
                .iter()
                .find(|p| p.reading.pool == "ai")
                .unwrap();
            (ai.consumed_total, error.is_some())
        };
        let ai = PoolId {
            pool: "ai".into(),
            key: String::new(),
        };
        let ledger = || store.ledgers("images").unwrap()[&ai].consumed;
        assert_eq!(poll(&mut tracker, 0, 10), (0.0, false));
        // 10 used; the write fails, the total is served all the same.
        store.execute_for_test(
            "CREATE TRIGGER refuse BEFORE INSERT ON samples
             BEGIN SELECT RAISE(ABORT, 'refused for the test'); END;",
        );
        assert_eq!(poll(&mut tracker, 5, 20), (10.0, true));
        store.execute_for_test("DROP TRIGGER refuse;");
        // A reset, then 5 used: from the recorded 10 that is 5 in all, but 10 were served.
        assert_eq!(poll(&mut tracker, 10, 5), (10.0, false));
        assert_eq!(ledger(), 10.0);
        // The same when the commit fails (a deferred foreign key is checked at commit).
        store.execute_for_test(
            "PRAGMA foreign_keys = ON;
             CREATE TABLE dangling (p INTEGER REFERENCES pool_ids (id) DEFERRABLE INITIALLY DEFERRED);
             CREATE TRIGGER dangle AFTER INSERT ON samples
             BEGIN INSERT INTO dangling VALUES (-1); END;",
        );
        assert_eq!(poll(&mut tracker, 15, 15), (20.0, true));
        store.execute_for_test("DROP TRIGGER dangle; PRAGMA foreign_keys = OFF;");
        assert_eq!(ledger(), 10.0);
        assert_eq!(poll(&mut tracker, 20, 3), (20.0, false));
        assert_eq!(ledger(), 20.0);
        // Recorded again, the floors are gone: the totals follow the ledger.
        assert!(tracker.accounts["images"].floors.is_none());
        assert_eq!(poll(&mut tracker, 25, 8), (25.0, false));
    }

    /// Polls that reach the writer together are written together and each gets its own answer;
    /// a poll abandoned while it waited (shutdown) is still written, which `flush` waits for.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_writer_thread_answers_each_poll_and_flush_waits_for_abandoned_ones() {
        let accounts = accounts();
        let store = Store::in_memory();
        let writer = Writer::start(store.clone());
        let t0 = Utc.with_ymd_and_hms(2026, 11, 20, 6, 0, 0).unwrap();
        let mut polls = Vec::new();
        for round in 0..10 {
            for a in &accounts {
                let t = t0 + Span::minutes(5 * round) + Span::seconds(accounts.len() as i64);
                let (writer, a) = (writer.clone(), a.clone());
                polls.push(tokio::spawn(async move {
                    let job = Job {
                        reading: reading(&a, t, round as usize),
                        account: Arc::new(a),
                        now: t,
                    };
                    writer.ingest(job).await
                }));
            }
            for (snapshot, error) in futures_util::future::join_all(polls.drain(..))
                .await
                .into_iter()
                .map(Result::unwrap)
            {
                assert!(error.is_none());
                assert_eq!(
                    snapshot.at,
                    t0 + Span::minutes(5 * round) + Span::seconds(3)
                );
            }
        }
        assert_eq!(store.sample_count("images").unwrap(), 2 * 10);
        let late = t0 + Span::hours(2);
        let job = Job {
            account: Arc::new(accounts[0].clone()),
            reading: reading(&accounts[0], late, 30),
            now: late,
        };
        // The writer waits for the store; the poll is polled once (its reading queued), then
        // dropped, as a poll cancelled at shutdown is.
        let held = store.hold_for_test();
        assert!(writer.ingest(job).now_or_never().is_none());
        let mut flushed = Box::pin(writer.flush());
        assert!((&mut flushed).now_or_never().is_none());
        drop(held);
        flushed.await;
        assert_eq!(store.sample_count("images").unwrap(), 2 * 11);
    }
}
