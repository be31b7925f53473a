//! The pool's thread: it owns the worker processes and moves bytes between
//! them and the maps.
//!
//! One thread per pool runs an event loop over non-blocking pipes with
//! `poll`. It never encodes or decodes a value: callers encode inputs into
//! RUN frames ([`Chunk`]s) on their own threads and decode outcomes from
//! deliveries, so the loop only stamps sequence numbers, writes frames,
//! splits replies and keeps time. Nothing in it blocks on anything but the
//! poll: not on a worker, not on a caller, not on this process's stderr.
//!
//! The same thread spawns every worker, replacements included: Linux sends
//! the parent-death signal when the *thread* that spawned a child ends, and
//! this thread lives exactly as long as the pool.
//!
//! One turn of the loop: replace missing workers, sync with the callers
//! (deliver outcomes, take new chunks and cancellations, dispatch), write
//! requests, wait, read what is ready, check deadlines, bury the workers
//! that have a fate, reap the dead. The parts:
//! - [`books`]: one worker's bookkeeping: sequence numbers, writes,
//!   answers, backlog, and when its current input started;
//! - [`handle`]: one live worker: its process, books and reply stream;
//! - [`supply`]: spawning workers, and giving up when they cannot start;
//! - [`spawner`]: the thread that spawns replacements, so that this one
//!   goes on serving the others meanwhile;
//! - [`faults`]: what the inputs of a worker that goes get, and reaping;
//! - [`poll`]: what the loop waits on, and until when.

mod books;
mod faults;
mod handle;
mod poll;
mod spawner;
mod supply;

use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Instant;

use self::faults::{Burial, Dying};
use self::handle::{Fate, Heard, WorkerHandle};
use self::poll::Source;
use self::spawner::Spawner;
use self::supply::Supply;
use crate::delivery::Outbox;
use crate::error::Error;
use crate::flow::{REAP_BOUND, UNKNOWN_ESTIMATE};
use crate::handoff::WorkerConfig;
use crate::journal::Recorder;
use crate::logs;
use crate::replay::Keeper;
use crate::shared::{Chunk, Config, Phase, Shared, State};

/// A running pool: its shared state and its thread, which stops when this
/// is dropped. [`Pool`](crate::Pool) holds one, and so does the iterator of
/// a one-shot [`map`](crate::map).
pub(crate) struct Running {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Running {
    /// Starts the pool's thread and its workers. Returns once every worker
    /// is spawned (not yet ready).
    pub(crate) fn start(config: Config) -> Result<Running, Error> {
        let shared = Arc::new(Shared::new(config).map_err(|source| Error::Spawn { source })?);
        let (started_tx, started_rx) = mpsc::channel();
        let thread = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("buckshot-pool".into())
                .spawn(move || {
                    // Life-cycle events and workers' events go to the
                    // subscriber of the pool's creator, through a queue.
                    let level = logs::worker_level(&shared.config.dispatch);
                    let forwarder =
                        logs::forward::PoolQueue::start(shared.config.dispatch.clone(), level);
                    let _dispatch = forwarder.as_ref().map(tracing::dispatcher::set_default);
                    let _guard = PanicGuard(Arc::clone(&shared));
                    let started = Scheduler::new(shared).map_err(|source| Error::Spawn { source });
                    let mut scheduler = match started {
                        Ok(scheduler) => scheduler,
                        Err(e) => {
                            let _ = started_tx.send(Err(e));
                            return;
                        }
                    };
                    let started = scheduler.spawn_initial();
                    let ok = started.is_ok();
                    let _ = started_tx.send(started);
                    if ok {
                        scheduler.run();
                    }
                })
                .map_err(|source| Error::Spawn { source })?
        };
        match started_rx.recv() {
            Ok(Ok(())) => Ok(Running {
                shared,
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(Error::Startup {
                    message: "the pool's thread panicked".into(),
                })
            }
        }
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
}

impl Drop for Running {
    /// Shuts the pool down: kills and reaps every worker, fails what is
    /// left.
    fn drop(&mut self) {
        self.shared.request_shutdown();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        // The pool's thread sent its last outputs: they are committed.
        if let Some(journal) = &self.shared.config.journal {
            journal.close();
        }
    }
}

/// If the loop panics (a bug), callers must not wait forever: dropping the
/// maps' senders wakes them, and they fail what they are owed.
struct PanicGuard(Arc<Shared>);

impl Drop for PanicGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let mut state = self.0.lock();
            state.phase = Phase::Broken("internal error: the pool's thread panicked".into());
            state.close_maps();
            state.queue.clear();
        }
    }
}

struct Scheduler {
    shared: Arc<Shared>,
    /// One per launcher, in the order the pool was given them.
    supplies: Vec<Supply>,
    spawner: Spawner,
    /// The pool gave up.
    broken: bool,
    workers: Vec<WorkerHandle>,
    dying: Vec<Dying>,
    /// Deliveries to send at the next sync.
    outbox: Outbox,
    /// Chunks to put back at the front of the queue, in order.
    requeue: Vec<Chunk>,
    /// What the last poll found ready.
    ready: Vec<Source>,
}

impl Scheduler {
    fn new(shared: Arc<Shared>) -> std::io::Result<Scheduler> {
        let config = &shared.config;
        let worker_config = WorkerConfig {
            parent: None,
            max_frame_bytes: config.max_frame_bytes,
            memory_limit: config.memory_limit,
            log_level: crate::logs::worker_level(&config.dispatch),
            backtraces: config.backtraces,
            reply_slot: None,
        };
        let supplies = config
            .groups
            .iter()
            .enumerate()
            .map(|(group, (launcher, count))| {
                Supply::new(
                    launcher.launch(),
                    worker_config,
                    config.forward_stderr,
                    config.bulk.is_some(),
                    group,
                    *count,
                )
            })
            .collect();
        let keeper = config
            .keep_failures
            .as_ref()
            .map(|settings| Keeper::new(settings, Arc::clone(&shared)));
        let outbox = Outbox::new(keeper, Recorder::new(Arc::clone(&shared)));
        let spawner = {
            let shared = Arc::clone(&shared);
            Spawner::start(move || shared.ring())?
        };
        Ok(Scheduler {
            shared,
            supplies,
            spawner,
            broken: false,
            workers: Vec::new(),
            dying: Vec::new(),
            outbox,
            requeue: Vec::new(),
            ready: Vec::new(),
        })
    }

    fn spawn_initial(&mut self) -> Result<(), Error> {
        for supply in &self.supplies {
            // The rest start as these say hello (see `replenish_group`).
            for _ in 0..supply.target().min(supply.max_starting()) {
                let worker = supply.spawn().map_err(|source| Error::Spawn { source })?;
                tracing::debug!(worker = worker.process().pid(), "worker spawned");
                self.workers.push(worker);
            }
        }
        Ok(())
    }

    fn run(&mut self) {
        let timeout = self.shared.config.timeout;
        loop {
            self.replenish();
            if !self.sync() {
                break;
            }
            for worker in &mut self.workers {
                worker.write();
            }
            let deadline =
                poll::nearest_deadline(&self.workers, &self.dying, timeout, self.retry_at());
            let (shared, outbox) = (&self.shared, &mut self.outbox);
            let deliver_before_sleep = || {
                if !outbox.is_empty() {
                    shared.lock().deliver(outbox);
                }
            };
            let waited = poll::wait(
                shared.doorbell(),
                &self.workers,
                &self.dying,
                deadline,
                deliver_before_sleep,
                &mut self.ready,
            );
            if waited.is_err() {
                break;
            }
            for source in std::mem::take(&mut self.ready) {
                self.handle(source);
            }
            let now = Instant::now();
            for worker in &mut self.workers {
                worker.check_deadline(now, timeout);
            }
            self.bury_fated();
            self.reap_dying(now);
        }
        self.shut_down();
    }

    /// When a launcher must spawn again after a spawn error, if one must.
    fn retry_at(&self) -> Option<Instant> {
        self.supplies.iter().filter_map(Supply::retry_at).min()
    }

    /// Keeps each launcher's number of workers that take work, unless its
    /// start-up keeps failing: then it is given up, and the pool with it
    /// when it was the last.
    fn replenish(&mut self) {
        let now = Instant::now();
        while let Some(spawned) = self.spawner.try_take() {
            let supply = &mut self.supplies[spawned.group];
            if let Some(worker) = supply.spawned(spawned.result, now) {
                self.workers.push(worker);
            }
        }
        if self.broken {
            return;
        }
        for group in 0..self.supplies.len() {
            self.replenish_group(group);
        }
        if self.supplies.iter().all(Supply::stopped) {
            let alone = self.supplies.len() == 1;
            let reasons: Vec<String> = self
                .supplies
                .iter()
                .filter_map(|supply| supply.reason(alone))
                .collect();
            self.break_pool(reasons.join("; "));
        }
    }

    fn replenish_group(&mut self, group: usize) {
        if self.supplies[group].stopped() {
            return;
        }
        let ours = |worker: &&WorkerHandle| worker.group() == group;
        let ready = self
            .workers
            .iter()
            .filter(ours)
            .any(|w| w.books().is_ready());
        if !ready {
            if let Some(reason) = self.supplies[group].gave_up() {
                tracing::warn!(launcher = ?self.supplies[group], reason, "workers keep failing to start: launcher given up");
                self.supplies[group].stop(Some(reason));
                return;
            }
        }
        let now = Instant::now();
        while self
            .workers
            .iter()
            .filter(ours)
            .filter(|w| w.takes_work())
            .count()
            + self.supplies[group].pending()
            < self.supplies[group].target()
        {
            let starting = |w: &&WorkerHandle| w.fate().is_none() && !w.books().is_ready();
            if self.workers.iter().filter(ours).filter(starting).count()
                + self.supplies[group].pending()
                >= self.supplies[group].max_starting()
            {
                return;
            }
            if !ready {
                let starting = self
                    .workers
                    .iter()
                    .filter(ours)
                    .filter(|w| w.fate().is_none())
                    .count()
                    + self
                        .dying
                        .iter()
                        .filter(|d| d.group() == group && d.failed_starting())
                        .count()
                    + self.supplies[group].pending();
                if !self.supplies[group].may_start(starting) {
                    return;
                }
            }
            if !self.supplies[group].replace(now, &self.spawner) {
                return;
            }
        }
    }

    /// Gives up on the pool: every worker goes, every input still owed
    /// fails with `reason`, new maps are refused.
    fn break_pool(&mut self, reason: String) {
        self.broken = true;
        for worker in &mut self.workers {
            worker.doom(Fate::PoolBroken);
        }
        for supply in &mut self.supplies {
            supply.stop(None);
        }
        let mut state = self.shared.lock();
        if state.phase == Phase::Open {
            state.phase = Phase::Broken(reason);
        }
    }

    /// Sends deliveries, puts re-queued chunks back, takes cancellations
    /// and dispatches queued chunks to workers. Returns `false` once the
    /// pool is shutting down.
    fn sync(&mut self) -> bool {
        let shared = Arc::clone(&self.shared);
        let mut state = shared.lock();
        // While replies keep coming, wake the maps' threads in batches; the
        // rest goes out before the loop sleeps.
        if self.outbox.due() {
            state.deliver(&mut self.outbox);
        }
        for chunk in self.requeue.drain(..).rev() {
            if state.maps.contains_key(&chunk.map) {
                state.queue.push_front(chunk);
            }
        }
        match &state.phase {
            Phase::Open => {}
            Phase::Broken(reason) => {
                let reason = reason.clone();
                while let Some(chunk) = state.queue.pop_front() {
                    state.never_run(
                        chunk.map,
                        chunk.first_index,
                        chunk.count,
                        Some(reason.clone()),
                    );
                }
                return true;
            }
            Phase::Closing | Phase::Closed => return false,
        }
        // Workers may drop the contexts that no map or handle holds.
        for id in state.take_dead_contexts() {
            for worker in &mut self.workers {
                worker.forget(id);
            }
        }
        // A worker whose current input belongs to a dropped map is killed,
        // whenever that input came to the head of its queue.
        for worker in &mut self.workers {
            if worker
                .books()
                .head_map()
                .is_some_and(|map| !state.maps.contains_key(&map))
            {
                worker.doom(Fate::Cancelled);
            }
        }
        self.dispatch(&mut state);
        true
    }

    /// Gives queued chunks to the workers with the least estimated backlog.
    fn dispatch(&mut self, state: &mut State) {
        let quota = self.shared.config.max_tasks_per_worker;
        while let Some(chunk) = state.queue.front() {
            let Some(link) = state.maps.get(&chunk.map) else {
                state.queue.pop_front();
                continue;
            };
            let estimate = link.stats.per_item().unwrap_or(UNKNOWN_ESTIMATE);
            let stats = Arc::clone(&link.stats);
            let context = link.context.clone();
            let Some(worker) = self
                .workers
                .iter_mut()
                .filter(|worker| worker.wants_more())
                .min_by_key(|worker| worker.books().backlog())
            else {
                break;
            };
            let mut chunk = state.queue.pop_front().expect("front exists");
            if let Some(quota) = quota {
                let assigned = worker.books().assigned();
                let room = u32::try_from(quota - assigned).unwrap_or(u32::MAX);
                let (head, rest) = chunk.split(room);
                if let Some(rest) = rest {
                    state.queue.push_front(rest);
                }
                chunk = head.expect("a worker that takes work has room for one more");
                if assigned + u64::from(chunk.count) >= quota {
                    worker.retire();
                }
            }
            worker.assign(chunk, context.as_deref(), estimate, stats);
        }
    }

    fn handle(&mut self, source: Source) {
        let max_frame = self.shared.config.max_frame_bytes;
        match source {
            Source::Doorbell => self.shared.clear_doorbell(),
            Source::Replies(i) => {
                let (_, heard) = self.workers[i].read(max_frame, &mut self.outbox);
                self.hear(heard, self.workers[i].group());
            }
            Source::Requests(i) => self.workers[i].write(),
            Source::Stderr(i) => self.workers[i].process_mut().stderr().pump(),
            Source::DyingStderr(i) => self.dying[i].process_mut().stderr().pump(),
            // `reap_dying` tries every dying worker after each wake-up.
            Source::Reap => {}
            Source::Exited(i) => {
                let heard = self.workers[i].read_remains(max_frame, &mut self.outbox);
                self.hear(heard, self.workers[i].group());
            }
        }
    }

    fn hear(&mut self, heard: Option<Heard>, group: usize) {
        match heard {
            Some(Heard::Ready) => self.supplies[group].ready(),
            // Every worker of that launcher would say the same: no point
            // retrying it. Its workers go, their inputs to the others.
            Some(Heard::Mismatch(problem)) => {
                for worker in &mut self.workers {
                    if worker.group() == group {
                        worker.doom(Fate::PoolBroken);
                    }
                }
                self.supplies[group].stop(Some(problem));
            }
            None => {}
        }
    }

    /// Takes every worker with a fate out of service.
    fn bury_fated(&mut self) {
        let mut burial = Burial {
            timeout: self.shared.config.timeout,
            retries: self.shared.config.retries,
            outbox: &mut self.outbox,
            requeue: &mut self.requeue,
        };
        let mut i = 0;
        while i < self.workers.len() {
            if self.workers[i].fate().is_some() {
                let remains = self.workers.swap_remove(i).take_out_of_service();
                self.dying.push(burial.bury(remains));
            } else {
                i += 1;
            }
        }
    }

    /// Reaps the workers that have exited and reports their victims.
    fn reap_dying(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.dying.len() {
            let supply = &mut self.supplies[self.dying[i].group()];
            if faults::try_reap(&mut self.dying[i], now, supply, &mut self.outbox) {
                self.dying.swap_remove(i);
            } else {
                i += 1;
            }
        }
    }

    /// Kills every worker, fails every input still owed, reaps, and gives
    /// the stderr forwarder a moment to write what the workers said last.
    fn shut_down(&mut self) {
        // Spawned too late to serve: killed and reaped with the others.
        let late = self.spawner.stop();
        let mut state = self.shared.lock();
        state.deliver(&mut self.outbox);
        let reason = state.phase.reason();
        let mut owed: Vec<Chunk> = self.requeue.drain(..).collect();
        let mut processes = late;
        for worker in self.workers.drain(..) {
            let (process, unanswered) = worker.kill_for_shutdown();
            owed.extend(unanswered.into_chunks());
            processes.push(process);
        }
        owed.extend(state.queue.drain(..));
        for chunk in owed {
            state.never_run(chunk.map, chunk.first_index, chunk.count, reason.clone());
        }
        for dying in &mut self.dying {
            if let Some((map, index)) = dying.take_victim() {
                state.never_run(map, index, 1, reason.clone());
            }
        }
        state.phase = Phase::Closed;
        state.close_maps();
        drop(state);
        for mut process in processes {
            process.kill_and_reap(REAP_BOUND);
            let stderr = process.stderr();
            stderr.pump();
            stderr.flush_line();
        }
        for dying in self.dying.drain(..) {
            faults::reap_at_shutdown(dying);
        }
        if self.shared.config.forward_stderr {
            crate::stderr::flush_forwarded();
        }
    }
}
