//! The pool's thread: it owns the worker processes and moves bytes between
//! them and the maps.
//!
//! One thread per pool runs an event loop over non-blocking pipes with a
//! poller (epoll natively). It never encodes or decodes a value: callers
//! encode inputs into RUN frames ([`Chunk`]s) on their own threads and
//! decode outcomes from deliveries, so the loop only stamps sequence numbers, writes frames,
//! splits replies and keeps time. (One exception: a panic's report, a few
//! hundred bytes, is decoded here when an observer wants panics posted
//! alone; see [`posting`].) Nothing in it blocks on anything but the
//! wait: not on a worker, not on a caller, not on this process's stderr,
//! not on a file (the features that write files write them on threads of
//! their own, [`crate::hooks`]).
//!
//! A turn costs what happened in it, not how many workers there are (a
//! pool of remote workers may have a thousand): a worker is looked at
//! when one of its descriptors is ready, its deadline passes, or it is
//! given work ("touched"); deadlines wait in a heap, and the workers that
//! take more work, the idle ones and those with frames to give back in
//! ordered sets. Only rare events (a map or context dropped, a worker
//! joining or leaving) look at every worker.
//!
//! No more tasks run at once than the pool has processes: each launcher
//! has as many seats as workers, and only a seated worker is given work.
//! A worker that reaches its task quota keeps its seat until it has
//! answered its last input; its replacement is spawned meanwhile (the
//! spawn is the slow part of a fresh process per input), and waits on the
//! bench until the seat is free.
//!
//! This thread spawns the first workers itself, so that a pool that cannot
//! spawn fails to build; the others and every replacement are spawned by a
//! thread of its own. Linux sends the parent-death signal when the
//! *thread* that spawned a child ends, and both threads live exactly as
//! long as the pool.
//!
//! One turn of the loop: replace missing workers, sync with the callers
//! (deliver outcomes, take new chunks and cancellations, dispatch), write
//! requests, wait, read what is ready, check deadlines, bury the workers
//! that have a fate, reap the dead. The parts:
//! - [`books`]: one worker's bookkeeping: sequence numbers, writes,
//!   answers, backlog, and when its current input started;
//! - [`handle`]: one live worker: its process, books and reply stream;
//! - [`dispatch`]: who gets work, and taking unread frames back for a
//!   worker that has nothing to do;
//! - [`roster`]: the workers, live and dying, and how the live ones are
//!   filed (touched, fated, by deadline, taking more work or not);
//! - [`staffing`]: keeping each launcher's number of workers (those
//!   wanted now: with an idle timeout, idle workers are let go, and come
//!   back when chunks wait), and their seats; a pool whose every launcher
//!   stopped is broken (its phase says so, [`Phase::Broken`]);
//! - [`supply`]: spawning workers, and giving up when they cannot start;
//! - [`spawner`]: the thread that spawns workers after the first ones, so
//!   that this one goes on serving the others meanwhile;
//! - [`faults`]: what the inputs of a worker that goes get, and reaping;
//! - [`posting`]: outcomes and failures on their way to the maps, shown to
//!   the pool's observers;
//! - [`poll`]: what the loop waits on, and until when;
//! - [`deadlines`]: the workers' deadlines, nearest first.

mod books;
mod deadlines;
mod dispatch;
mod faults;
mod handle;
mod poll;
mod posting;
mod roster;
mod spawner;
mod staffing;
mod supply;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Instant;

use self::faults::Burial;
use self::handle::{Fate, WorkerHandle};
use self::poll::{Key, Source, Watch};
use self::posting::Posting;
use self::roster::{DyingSeat, Roster, Seat};
use self::spawner::{SpawnRequest, Spawner};
use self::staffing::Staffing;
use self::supply::Supply;
use crate::chunk::Chunk;
use crate::config::Config;
use crate::error::Error;
use crate::flow::REAP_BOUND;
use crate::hooks::{Observer, Plugins, Ring};
use crate::logs;
use crate::shared::{Phase, Shared, State};
use crate::stderr::StderrPipe;

/// A running pool: its shared state and its thread, which stops when this
/// is dropped. [`Pool`](crate::Pool) holds one, and so does the iterator of
/// a one-shot [`map`](crate::map).
pub(crate) struct Running {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    /// Run once the thread has ended.
    finishers: Vec<Box<dyn FnOnce() + Send + Sync>>,
}

impl Running {
    /// Starts the pool's thread and its workers. Returns once the first
    /// workers are spawned (not yet ready); the others follow.
    pub(crate) fn start(config: Config, plugins: Plugins) -> Result<Running, Error> {
        let Plugins {
            observers,
            answerers,
            finishers,
        } = plugins;
        let shared =
            Arc::new(Shared::new(config, answerers).map_err(|source| Error::PoolSetup { source })?);
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
                    let started = Scheduler::new(shared, observers)
                        .map_err(|source| Error::PoolSetup { source });
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
                .map_err(|source| Error::PoolSetup { source })?
        };
        match started_rx.recv() {
            Ok(Ok(())) => Ok(Running {
                shared,
                thread: Some(thread),
                finishers,
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(Error::Internal {
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
        // The pool's thread is done with the features: they may finish
        // (one may commit what it has left to write).
        for finish in self.finishers.drain(..) {
            finish();
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
    watch: Watch,
    /// The workers, live and dying, and how they are filed.
    roster: Roster,
    /// Each launcher's workers to come, and the seats of those there.
    staffing: Staffing,
    /// Deliveries to send at the next sync, and the observers that see
    /// them.
    posting: Posting,
    /// Workers whose head input changed: is its map still there?
    recheck: Vec<Key>,
    /// Maps the workers were given inputs of, as of the last sync.
    known_maps: HashSet<u64>,
    /// Chunks to put back at the front of the queue, in order.
    requeue: Vec<Chunk>,
    /// What the last wait found ready.
    ready: Vec<Source>,
    /// Scratch: workers whose deadline passed.
    expired: Vec<Key>,
}

/// Closes a stderr pipe whose stream ended, once out of the poller's set.
fn close_if_ended(watch: &Watch, stderr: &mut StderrPipe) {
    if stderr.ended() {
        if let Some(fd) = stderr.fd() {
            watch.unwatch(fd);
        }
        stderr.close();
    }
}

impl Scheduler {
    fn new(shared: Arc<Shared>, observers: Vec<Box<dyn Observer>>) -> std::io::Result<Scheduler> {
        let config = &shared.config;
        let supplies = config
            .launchers
            .iter()
            .enumerate()
            .map(|(index, (_, count))| Supply::new(SpawnRequest::new(config, index), *count))
            .collect();
        let max_frames = crate::flow::frames_in_flight(shared.config.batch_size);
        let watch = Watch::new(shared.doorbell())?;
        // Weak: a feature's thread that outlives the pool (stuck on a
        // file) keeps nothing of it alive.
        let ring: Ring = {
            let shared = Arc::downgrade(&shared);
            Arc::new(move || {
                if let Some(shared) = shared.upgrade() {
                    shared.ring();
                }
            })
        };
        let posting = Posting::new(observers, &ring);
        let spawner = Spawner::start(move || ring())?;
        Ok(Scheduler {
            shared,
            watch,
            roster: Roster::new(max_frames),
            staffing: Staffing::new(supplies, spawner),
            posting,
            recheck: Vec::new(),
            known_maps: HashSet::new(),
            requeue: Vec::new(),
            ready: Vec::new(),
            expired: Vec::new(),
        })
    }

    fn run(&mut self) {
        loop {
            self.replenish();
            // Workers that joined are filed before the dispatch.
            self.settle();
            if !self.sync() {
                break;
            }
            for &slot in &self.roster.touched {
                self.roster.workers[slot].worker.write(&self.watch);
            }
            self.settle();
            let deadline = self.nearest_deadline();
            let (shared, posting) = (&self.shared, &mut self.posting);
            let deliver_before_sleep = || {
                if !posting.is_empty() {
                    let deliveries = posting.take();
                    shared.lock().deliver(deliveries);
                }
            };
            let waited = self
                .watch
                .wait(deadline, deliver_before_sleep, &mut self.ready);
            if waited.is_err() {
                break;
            }
            for source in std::mem::take(&mut self.ready) {
                self.handle(source);
            }
            let now = Instant::now();
            self.expire(now);
            // Burials need every fate of this turn.
            self.settle();
            self.bury_fated();
            self.reap_dying(now);
        }
        self.shut_down();
    }

    /// Puts a new worker in service.
    fn admit(&mut self, worker: WorkerHandle) {
        let serial = self.roster.next_serial();
        let key = Key {
            slot: self.roster.workers.vacant_key(),
            serial,
        };
        if let Err(e) = self.watch.join(key, worker.process()) {
            // The system is out of poller watches or memory: no worker
            // could be served.
            self.break_pool(format!("could not watch a worker: {e}"));
            return;
        }
        let seated = self.staffing.take_seat(worker.launcher());
        if !seated {
            self.staffing.benched.push(key);
        }
        self.roster.workers.insert(Seat {
            worker,
            serial,
            seated,
            writes_watched: false,
            deadline: None,
            touched: false,
            idle_noted: false,
            hungry: None,
            idle: false,
            idle_since: None,
            stocked: None,
            nothing_back_at: None,
            held_back_at: None,
        });
        self.staffing.workforce_changed = true;
        self.roster.touch(key.slot);
    }

    /// Brings what the loop keeps about the touched workers up to date:
    /// whether their request pipe is watched, their deadline, and whether
    /// they are to be buried.
    fn settle(&mut self) {
        let idle_timeout = self.shared.config.idle_timeout;
        for slot in std::mem::take(&mut self.roster.touched) {
            let seat = &mut self.roster.workers[slot];
            seat.touched = false;
            let key = Key {
                slot,
                serial: seat.serial,
            };
            if seat.worker.fate().is_some() {
                self.roster.fated.push(slot);
                self.roster.file(slot);
                continue;
            }
            let want = seat.worker.wants_to_write();
            self.watch
                .writes(key, seat.worker.process(), want, &mut seat.writes_watched);
            if !seat.idle_noted && !seat.worker.takes_work() {
                seat.idle_noted = true;
                self.staffing.workforce_changed = true;
            }
            if seat.worker.books().head_map().is_some() {
                self.recheck.push(key);
            }
            self.roster.file(slot);
            // Filed: whether it is idle is known.
            let seat = &mut self.roster.workers[slot];
            seat.idle_since = match (seat.idle, seat.idle_since) {
                (false, _) => None,
                (true, None) => Some(Instant::now()),
                (true, since) => since,
            };
            // An idle worker has nothing to answer: its deadline, if any,
            // is the end of its idleness.
            let idle_until = idle_timeout
                .zip(seat.idle_since)
                .and_then(|(idle, since)| since.checked_add(idle));
            let deadline = seat.worker.deadline().or(idle_until);
            if deadline != seat.deadline {
                seat.deadline = deadline;
                if let Some(at) = deadline {
                    self.roster.deadlines.set(key, at);
                }
            }
        }
        let workers = &self.roster.workers;
        self.roster.deadlines.compact(workers.len(), || {
            workers
                .iter()
                .filter_map(|(slot, seat)| {
                    let key = Key {
                        slot,
                        serial: seat.serial,
                    };
                    seat.deadline.map(|at| (key, at))
                })
                .collect()
        });
    }

    /// The nearest time the loop must wake up at, if any: now if a worker
    /// awaits burial, else the earliest deadline of a worker (its answer,
    /// its handshake, or the end of its idleness with an idle timeout), of
    /// a retired worker's exit, or of a spawn retry. A pool whose workers
    /// all left has none: it sleeps until work comes.
    fn nearest_deadline(&mut self) -> Option<Instant> {
        if !self.roster.fated.is_empty() {
            // A worker to bury (cancelled, say): just look at what else is
            // ready, then come back.
            return Some(Instant::now());
        }
        let workers = &self.roster.workers;
        let nearest = self.roster.deadlines.nearest(|key, at| {
            workers
                .get(key.slot)
                .is_some_and(|seat| seat.serial == key.serial && seat.deadline == Some(at))
        });
        nearest
            .into_iter()
            .chain(
                self.roster
                    .dying
                    .iter()
                    .filter_map(|(_, d)| d.dying.kill_at()),
            )
            .chain(self.staffing.retry_at())
            .chain(self.posting.due_at())
            .min()
    }

    /// Decides the fate of the workers whose deadline passed at `now`, and
    /// lets those that were idle that long go.
    fn expire(&mut self, now: Instant) {
        let workers = &self.roster.workers;
        let mut expired = std::mem::take(&mut self.expired);
        self.roster.deadlines.expired(
            now,
            |key, at| {
                workers
                    .get(key.slot)
                    .is_some_and(|seat| seat.serial == key.serial && seat.deadline == Some(at))
            },
            &mut expired,
        );
        for key in expired.drain(..) {
            let seat = &mut self.roster.workers[key.slot];
            // Still idle (it may have died meanwhile): its deadline was
            // the end of its idleness.
            if seat.idle_since.is_some() && seat.idle && seat.worker.takes_work() {
                self.let_idle_go(key.slot);
            } else {
                seat.worker.check_deadline(now);
            }
            self.roster.touch(key.slot);
        }
        self.expired = expired;
    }

    /// Sends deliveries, puts re-queued chunks back, takes cancellations
    /// and dispatches queued chunks to workers. Returns `false` once the
    /// pool is shutting down.
    fn sync(&mut self) -> bool {
        let shared = Arc::clone(&self.shared);
        self.posting.collect(Instant::now());
        // While replies keep coming, wake the maps' threads in batches; the
        // rest goes out before the loop sleeps. Observers see a batch go
        // before the lock is taken.
        let deliveries = self.posting.due().then(|| self.posting.take());
        let mut state = shared.lock();
        if let Some(deliveries) = deliveries {
            state.deliver(deliveries);
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
        let dead = state.take_dead_contexts();
        for &id in &dead {
            for (_, seat) in &mut self.roster.workers {
                seat.worker.forget(id);
            }
        }
        let gone = self.cancel_dropped(&state);
        self.dispatch(&mut state);
        // Chunks no worker took: wanted workers that left idle come back.
        let waiting = state.queue.len();
        drop(state);
        if waiting > 0 {
            self.meet_demand(waiting);
        }
        // The observers forget them outside the lock.
        for id in dead {
            self.posting.forget_context(id);
        }
        for map in gone {
            self.posting.forget_map(map);
        }
        true
    }

    /// A worker whose current input belongs to a dropped map is killed,
    /// whenever that input came to the head of its queue. Looks at every
    /// worker only when a map went; else at those whose head changed.
    /// Returns the maps that went.
    fn cancel_dropped(&mut self, state: &State) -> Vec<u64> {
        let mut gone = Vec::new();
        self.known_maps.retain(|map| {
            let live = state.maps.contains_key(map);
            if !live {
                gone.push(*map);
            }
            live
        });
        let mut check = std::mem::take(&mut self.recheck);
        if !gone.is_empty() {
            check.clear();
            check.extend(self.roster.workers.iter().map(|(slot, seat)| Key {
                slot,
                serial: seat.serial,
            }));
        }
        for key in check.drain(..) {
            if !self.roster.live(key) {
                continue;
            }
            let worker = &mut self.roster.workers[key.slot].worker;
            if worker
                .books()
                .head_map()
                .is_some_and(|map| !state.maps.contains_key(&map))
            {
                worker.doom(Fate::Cancelled);
                self.roster.touch(key.slot);
            }
        }
        self.recheck = check;
        gone
    }

    fn handle(&mut self, source: Source) {
        let max_frame = self.shared.config.max_frame_bytes;
        match source {
            Source::Doorbell => self.shared.clear_doorbell(),
            Source::Replies(key) if self.roster.live(key) => {
                let worker = &mut self.roster.workers[key.slot].worker;
                let (_, heard) = worker.read(max_frame, &mut self.posting, &self.watch);
                let launcher = worker.launcher();
                self.roster.touch(key.slot);
                self.hear(heard, launcher);
            }
            Source::Requests(key) if self.roster.live(key) => {
                self.roster.workers[key.slot].worker.write(&self.watch);
                self.roster.touch(key.slot);
            }
            Source::Stderr(key) if self.roster.live(key) => {
                let stderr = self.roster.workers[key.slot].worker.process_mut().stderr();
                stderr.pump();
                close_if_ended(&self.watch, stderr);
            }
            Source::Exited(key) if self.roster.live(key) => {
                let worker = &mut self.roster.workers[key.slot].worker;
                let heard = worker.read_remains(max_frame, &mut self.posting, &self.watch);
                let launcher = worker.launcher();
                self.roster.touch(key.slot);
                self.hear(heard, launcher);
            }
            Source::Reap(key) if self.roster.dying_live(key) => self.roster.exited.push(key),
            Source::DyingStderr(key) if self.roster.dying_live(key) => {
                let stderr = self.roster.dying[key.slot].dying.process_mut().stderr();
                stderr.pump();
                close_if_ended(&self.watch, stderr);
            }
            // Late news of a worker that is gone.
            _ => {}
        }
    }

    /// Takes the workers with a fate out of service.
    fn bury_fated(&mut self) {
        let mut burial = Burial {
            retries: self.shared.config.retries,
            posting: &mut self.posting,
            requeue: &mut self.requeue,
        };
        // The launchers whose workers left a seat free.
        let mut freed = Vec::new();
        for slot in std::mem::take(&mut self.roster.fated) {
            // A worker may be listed twice: once buried, its slot is empty
            // (nothing joins before the next turn).
            if self
                .roster
                .workers
                .get(slot)
                .is_none_or(|seat| seat.worker.fate().is_none())
            {
                continue;
            }
            let seat = self.roster.workers.remove(slot);
            if seat.seated {
                freed.push(seat.worker.launcher());
            }
            let serial = self.roster.next_serial();
            let entry = self.roster.dying.vacant_entry();
            let key = Key {
                slot: entry.key(),
                serial,
            };
            // Before the kill closes its pipes: no descriptor is deleted
            // from the set after it was closed (its number may be reused).
            self.watch
                .leave(seat.worker.process(), seat.writes_watched, key)
                .expect("a worker's own descriptors in the poller's set");
            let remains = seat.worker.take_out_of_service();
            entry.insert(DyingSeat {
                dying: burial.bury(remains),
                serial,
            });
            // One that exited already is reaped this turn, so that a
            // start-up failure is counted (and backed off from) before the
            // next spawn.
            self.roster.exited.push(key);
            self.staffing.workforce_changed = true;
        }
        for launcher in freed {
            self.staffing.free_seat(launcher, &mut self.roster);
        }
    }

    /// Reaps the dying workers that have exited, and kills those whose
    /// grace ran out at `now`, and reports their victims.
    fn reap_dying(&mut self, now: Instant) {
        let mut due: Vec<Key> = std::mem::take(&mut self.roster.exited);
        due.extend(
            self.roster
                .dying
                .iter()
                .filter(|(_, d)| d.dying.kill_at().is_some_and(|at| now >= at))
                .map(|(slot, d)| Key {
                    slot,
                    serial: d.serial,
                }),
        );
        for key in due.drain(..) {
            if !self.roster.dying_live(key) {
                continue;
            }
            let dying = &mut self.roster.dying[key.slot].dying;
            let supply = &mut self.staffing.supplies[dying.launcher()];
            if faults::try_reap(dying, now, supply, &mut self.posting) {
                let process = dying.process_mut();
                self.watch.unwatch_exit(process);
                if let Some(fd) = process.stderr_fd() {
                    self.watch.unwatch(fd);
                }
                self.roster.dying.remove(key.slot);
                self.staffing.workforce_changed = true;
            }
        }
        self.roster.exited = due;
    }

    /// Kills every worker, fails every input still owed, reaps, and gives
    /// the stderr forwarder a moment to write what the workers said last.
    fn shut_down(&mut self) {
        // Spawned too late to serve: killed and reaped with the others.
        let late = self.staffing.spawner.stop();
        let deliveries = self.posting.take();
        let mut state = self.shared.lock();
        state.deliver(deliveries);
        let reason = state.phase.reason();
        let mut owed: Vec<Chunk> = self.requeue.drain(..).collect();
        let mut processes = late;
        for seat in self.roster.workers.drain() {
            let (process, unanswered) = seat.worker.kill_for_shutdown();
            owed.extend(unanswered.into_chunks());
            processes.push(process);
        }
        owed.extend(state.queue.drain(..));
        for chunk in owed {
            state.never_run(chunk.map, chunk.first_index, chunk.count, reason.clone());
        }
        for (_, seat) in &mut self.roster.dying {
            if let Some((map, index)) = seat.dying.take_victim() {
                state.never_run(map, index, 1, reason.clone());
            }
        }
        drop(state);
        // The workers are killed: what the observers still hold goes last,
        // after a wait of theirs (bounded), outside the lock.
        self.posting.finish();
        let deliveries = self.posting.take();
        let mut state = self.shared.lock();
        state.deliver(deliveries);
        state.phase = Phase::Closed;
        state.close_maps();
        drop(state);
        for mut process in processes {
            process.kill_and_reap(REAP_BOUND);
            let stderr = process.stderr();
            stderr.pump();
            stderr.flush_line();
        }
        for seat in self.roster.dying.drain() {
            faults::reap_at_shutdown(seat.dying);
        }
        // What the launchers run for the workers just killed (a remote
        // kill) gets a moment, then goes too: nothing outlives the pool.
        for supply in &self.staffing.supplies {
            supply.finish();
        }
        self.shared.config.forward_stderr.flush();
    }
}
