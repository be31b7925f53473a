//! The pool's thread: it owns the worker processes and moves bytes between
//! them and the maps.
//!
//! One thread per pool runs an event loop over non-blocking pipes with
//! `poll`: an eventfd that callers signal, each worker's reply, request and
//! stderr pipes, and the pidfds of workers being reaped. It never encodes or
//! decodes a value: callers encode inputs into RUN frames ([`Chunk`]s) on
//! their own threads and decode outcomes from [`Delivery`]s, so the loop
//! only stamps sequence numbers, writes frames, splits replies and keeps
//! time.
//!
//! The same thread spawns every worker, replacements included: Linux sends
//! the parent-death signal when the *thread* that spawned a child ends, and
//! this thread lives exactly as long as the pool.
//!
//! Time: a worker runs its items in order, so an item starts when the one
//! before it finishes. The loop takes an item's start to be the latest of
//! its frame being written, the worker's handshake and the last reply from
//! that worker. That is never earlier than the true start, so a timeout never
//! fires early, and time an item spends queued does not count against it.
//!
//! Faults: a worker that times out, dies or breaks the protocol is killed;
//! the item it was running gets the error, the items queued behind it go back
//! to the front of the queue, and a fresh worker is spawned.

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags};
use rustix::io::Errno;

use crate::error::{Error, telling_line};
use crate::process::Process;
use crate::protocol::{self, FrameBuffer, Hello, ProtocolError, ReplyHeader};
use crate::registry::registry;
use crate::shared::{Chunk, Config, Delivery, Payload, Phase, Shared, State, close, deliver};
use crate::slot::{Fate, Inflight, STARTUP_TIMEOUT, Slot};
use crate::worker::WorkerConfig;

/// A worker gets more work while its estimated backlog is below this: two
/// chunks of a map's target size (results.rs), so that the next chunk is
/// always there when one ends, and the tail of a map is not stuck behind one
/// worker.
const LOOKAHEAD: Duration = Duration::from_millis(4);
/// Per-item estimate before anything has been measured: allows two inputs
/// in flight per worker, so that slow tasks spread from the start.
const UNKNOWN_ESTIMATE: Duration = Duration::from_millis(2);
/// At most this many frames in flight per worker.
const MAX_INFLIGHT_FRAMES: usize = 256;
/// Deliveries sent in one go while replies keep coming.
const DELIVERY_BATCH: usize = 16;
/// Consecutive start-up failures after which the pool gives up.
const STARTUP_FAILURE_LIMIT: u32 = 5;
/// How long shutdown waits for a killed worker to be reaped.
const REAP_BOUND: Duration = Duration::from_secs(5);

/// Starts the pool's thread and its workers. Returns once every worker is
/// spawned (not yet ready).
pub(crate) fn start(config: Config) -> Result<(Arc<Shared>, JoinHandle<()>), Error> {
    let shared = Arc::new(Shared::new(config).map_err(|source| Error::Spawn { source })?);
    let (started_tx, started_rx) = mpsc::channel();
    let thread = {
        let shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("buckshot-pool".into())
            .spawn(move || {
                let _guard = PanicGuard(Arc::clone(&shared));
                let mut scheduler = Scheduler::new(shared);
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
        Ok(Ok(())) => Ok((shared, thread)),
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

/// Shuts the pool down: kills and reaps every worker, fails what is left.
pub(crate) fn stop(shared: &Shared, thread: JoinHandle<()>) {
    shared.close();
    let _ = thread.join();
}

/// If the loop panics (a bug), callers must not wait forever: dropping the
/// maps' senders wakes them, and they fail what they are owed.
struct PanicGuard(Arc<Shared>);

impl Drop for PanicGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let mut state = self.0.lock();
            state.phase = Phase::Broken("internal error: the pool's thread panicked".into());
            state.maps.clear();
            state.queue.clear();
        }
    }
}

/// A worker that was killed or exited, waiting to be reaped.
struct Dying {
    process: Process,
    /// The map and index of the input it was running when it died:
    /// reported once the exit status is known.
    victim: Option<(u64, usize)>,
    /// It died before its handshake, and not because the pool dropped it.
    during_startup: bool,
    /// Why the pool killed it, when it was for a fault of its own (garbage
    /// on its reply stream, too slow to start): a start-up failure even
    /// though it ends by SIGKILL.
    fault: Option<String>,
}

/// Whom a poll entry belongs to.
#[derive(Clone, Copy)]
enum Source {
    Wake,
    Replies(usize),
    Requests(usize),
    Stderr(usize),
    Reap,
    Exited(usize),
    DyingStderr(usize),
}

struct Scheduler {
    shared: Arc<Shared>,
    worker_config: WorkerConfig,
    workers: Vec<Slot>,
    dying: Vec<Dying>,
    /// Deliveries to send at the next sync.
    outbox: Vec<(u64, Delivery)>,
    /// Chunks to put back at the front of the queue, in order.
    requeue: Vec<Chunk>,
    startup_failures: u32,
    last_startup_failure: Option<String>,
    spawn_retry_at: Option<Instant>,
    spawn_delay: Duration,
    broken: Option<String>,
}

impl Scheduler {
    fn new(shared: Arc<Shared>) -> Scheduler {
        let config = &shared.config;
        let worker_config = WorkerConfig {
            parent: std::process::id(),
            max_frame_bytes: config.max_frame_bytes,
            memory_limit: config.memory_limit,
        };
        Scheduler {
            shared,
            worker_config,
            workers: Vec::new(),
            dying: Vec::new(),
            outbox: Vec::new(),
            requeue: Vec::new(),
            startup_failures: 0,
            last_startup_failure: None,
            spawn_retry_at: None,
            spawn_delay: Duration::ZERO,
            broken: None,
        }
    }

    fn spawn_initial(&mut self) -> Result<(), Error> {
        for _ in 0..self.shared.config.processes {
            let process =
                Process::spawn(&self.worker_config).map_err(|source| Error::Spawn { source })?;
            self.workers.push(Slot::new(process));
        }
        Ok(())
    }

    fn run(&mut self) {
        let mut sources = Vec::new();
        loop {
            self.ensure_workers();
            if !self.sync() {
                break;
            }
            self.write_all();
            if self.wait(&mut sources).is_err() {
                break;
            }
            let now = Instant::now();
            for &(source, _) in &sources {
                self.handle(source, now);
            }
            self.check_deadlines(Instant::now());
            self.bury_fated();
            self.reap_dying();
        }
        self.shut_down();
    }

    /// Sends deliveries, takes cancellations, queues re-queued chunks and
    /// dispatches queued chunks to workers. Returns `false` on shutdown.
    fn sync(&mut self) -> bool {
        let shared = Arc::clone(&self.shared);
        let mut state = shared.lock();
        // While replies keep coming, wake the maps' threads in batches; the
        // rest goes out before the loop sleeps (`wait`).
        if self.outbox.len() >= DELIVERY_BATCH {
            deliver(&state, &mut self.outbox);
        }
        if state.shutdown {
            return false;
        }
        if let Some(reason) = &self.broken {
            if state.phase == Phase::Open {
                state.phase = Phase::Broken(reason.clone());
            }
            for chunk in self.requeue.drain(..).rev() {
                state.queue.push_front(chunk);
            }
            let reason = Some(reason.clone());
            while let Some(chunk) = state.queue.pop_front() {
                close(&state, chunk.map, chunk.first_index, chunk.count, &reason);
            }
            return true;
        }
        for chunk in self.requeue.drain(..).rev() {
            if state.maps.contains_key(&chunk.map) {
                state.queue.push_front(chunk);
            }
        }
        // A worker whose current input belongs to a dropped map is killed,
        // whenever that input came to the head of its queue.
        for slot in &mut self.workers {
            let head_dropped = slot
                .inflight
                .front()
                .is_some_and(|head| !state.maps.contains_key(&head.chunk.map));
            if head_dropped && slot.fate.is_none() {
                slot.fate = Some(Fate::Cancelled);
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
            let best = self
                .workers
                .iter()
                .enumerate()
                .filter(|(_, slot)| slot.takes_work() && slot.inflight.len() < MAX_INFLIGHT_FRAMES)
                .map(|(i, slot)| (i, slot.backlog))
                .filter(|&(i, backlog)| self.workers[i].inflight.is_empty() || backlog < LOOKAHEAD)
                .min_by_key(|&(_, backlog)| backlog);
            let Some((i, _)) = best else { break };
            let mut chunk = state.queue.pop_front().expect("front exists");
            let slot = &mut self.workers[i];
            if let Some(quota) = quota {
                let room = u32::try_from(quota - slot.assigned).unwrap_or(u32::MAX);
                let (head, rest) = chunk.split(room);
                if let Some(rest) = rest {
                    state.queue.push_front(rest);
                }
                chunk = head.expect("a worker that takes work has room for one more");
                slot.assigned += u64::from(chunk.count);
                if slot.assigned >= quota {
                    slot.retiring = true;
                }
            }
            protocol::set_run_seq(&mut chunk.frame, slot.next_seq);
            let first_seq = slot.next_seq;
            slot.next_seq += u64::from(chunk.count);
            slot.backlog += estimate * chunk.count;
            slot.inflight.push_back(Inflight {
                chunk,
                first_seq,
                done: 0,
                written_at: None,
                estimate,
                stats,
            });
        }
    }

    /// Keeps `processes` workers that take work, unless start-up keeps
    /// failing.
    fn ensure_workers(&mut self) {
        if self.broken.is_some() {
            return;
        }
        let ready = self.workers.iter().any(|slot| slot.ready_at.is_some());
        if self.startup_failures >= STARTUP_FAILURE_LIMIT && !ready {
            let last = self.last_startup_failure.clone().unwrap_or_default();
            self.break_pool(format!(
                "{} workers in a row died before their handshake; last: {last}",
                self.startup_failures
            ));
            return;
        }
        let now = Instant::now();
        if self.spawn_retry_at.is_some_and(|at| now < at) {
            return;
        }
        while self.workers.iter().filter(|slot| slot.takes_work()).count()
            < self.shared.config.processes
        {
            if !ready {
                // Start no more workers than could still fail before the
                // limit, so that the pool gives up after exactly that many.
                let starting = self
                    .workers
                    .iter()
                    .filter(|slot| slot.fate.is_none())
                    .count()
                    + self
                        .dying
                        .iter()
                        .filter(|dying| dying.during_startup)
                        .count();
                if self.startup_failures as usize + starting >= STARTUP_FAILURE_LIMIT as usize {
                    return;
                }
            }
            match Process::spawn(&self.worker_config) {
                Ok(process) => {
                    self.workers.push(Slot::new(process));
                    self.spawn_delay = Duration::ZERO;
                    self.spawn_retry_at = None;
                }
                Err(e) => {
                    // Out of processes or memory, say: try again later, and
                    // give up if nothing else works either.
                    self.startup_failures += 1;
                    self.last_startup_failure = Some(format!("could not spawn: {e}"));
                    self.spawn_delay = (self.spawn_delay * 2)
                        .clamp(Duration::from_millis(10), Duration::from_secs(1));
                    self.spawn_retry_at = Some(now + self.spawn_delay);
                    return;
                }
            }
        }
    }

    /// Gives up on the pool: every worker goes, every input still owed
    /// fails with `reason`.
    fn break_pool(&mut self, reason: String) {
        for slot in &mut self.workers {
            slot.fate = Some(Fate::PoolBroken);
        }
        self.broken = Some(reason);
    }

    /// Writes pending frames to every worker that can take them.
    fn write_all(&mut self) {
        let now = Instant::now();
        for slot in &mut self.workers {
            if slot.fate.is_none() && slot.written < slot.inflight.len() {
                slot.write(now);
            }
            if slot.retiring && slot.written == slot.inflight.len() {
                slot.process.close_stdin();
            }
        }
    }

    /// Polls until something happens or the nearest deadline. Fills
    /// `sources` with what is ready.
    fn wait(&mut self, sources: &mut Vec<(Source, PollFlags)>) -> io::Result<()> {
        let timeout = self.shared.config.timeout;
        let mut deadline = self
            .workers
            .iter()
            .filter_map(|slot| slot.deadline(timeout))
            .min();
        if self.workers.iter().any(|slot| slot.fate.is_some()) {
            // A worker to bury (cancelled, or its pipe broke while writing):
            // just look at what else is ready, then come back.
            deadline = Some(Instant::now());
        }
        if let Some(retry) = self.spawn_retry_at {
            deadline = Some(deadline.map_or(retry, |d| d.min(retry)));
        }
        let mut fds = Vec::with_capacity(1 + 3 * self.workers.len() + 2 * self.dying.len());
        let mut owners = Vec::with_capacity(fds.capacity());
        fds.push(PollFd::from_borrowed_fd(
            self.shared.doorbell(),
            PollFlags::IN,
        ));
        owners.push(Source::Wake);
        for (i, slot) in self.workers.iter().enumerate() {
            if let Some(fd) = slot.process.stdout() {
                fds.push(PollFd::from_borrowed_fd(fd, PollFlags::IN));
                owners.push(Source::Replies(i));
            }
            if slot.written < slot.inflight.len() {
                if let Some(fd) = slot.process.stdin() {
                    fds.push(PollFd::from_borrowed_fd(fd, PollFlags::OUT));
                    owners.push(Source::Requests(i));
                }
            }
            if let Some(fd) = slot.process.stderr() {
                fds.push(PollFd::from_borrowed_fd(fd, PollFlags::IN));
                owners.push(Source::Stderr(i));
            }
            // Its end of stream normally tells of its death, but a child it
            // forked may hold the reply pipe open.
            fds.push(PollFd::from_borrowed_fd(
                slot.process.pidfd(),
                PollFlags::IN,
            ));
            owners.push(Source::Exited(i));
        }
        for (i, dying) in self.dying.iter().enumerate() {
            fds.push(PollFd::from_borrowed_fd(
                dying.process.pidfd(),
                PollFlags::IN,
            ));
            owners.push(Source::Reap);
            if let Some(fd) = dying.process.stderr() {
                fds.push(PollFd::from_borrowed_fd(fd, PollFlags::IN));
                owners.push(Source::DyingStderr(i));
            }
        }
        let timeout = deadline.map(|d| {
            let wait = d.saturating_duration_since(Instant::now());
            // Round up so that we wake after the deadline, not just before.
            rustix::event::Timespec::try_from(wait + Duration::from_micros(50))
                .expect("deadline within range")
        });
        // Look first; deliver what is pending before sleeping.
        let zero = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        let ready = poll_retrying(&mut fds, Some(&zero))?;
        if ready == 0 && timeout != Some(zero) {
            if !self.outbox.is_empty() {
                deliver(&self.shared.lock(), &mut self.outbox);
            }
            poll_retrying(&mut fds, timeout.as_ref())?;
        }
        sources.clear();
        for (fd, &owner) in fds.iter().zip(&owners) {
            let revents = fd.revents();
            if !revents.is_empty() {
                sources.push((owner, revents));
            }
        }
        Ok(())
    }

    fn handle(&mut self, source: Source, now: Instant) {
        match source {
            Source::Wake => self.shared.clear_doorbell(),
            Source::Replies(i) => {
                self.read_replies(i, now);
            }
            Source::Requests(i) => {
                let slot = &mut self.workers[i];
                if slot.fate.is_none() {
                    slot.write(now);
                }
            }
            Source::Stderr(i) => {
                self.workers[i]
                    .process
                    .pump_stderr(self.shared.config.forward_stderr);
            }
            Source::DyingStderr(i) => {
                self.dying[i]
                    .process
                    .pump_stderr(self.shared.config.forward_stderr);
            }
            // `reap_dying` tries every dying worker after each wake-up.
            Source::Reap => {}
            Source::Exited(i) => {
                // Take the replies it wrote before it went, then bury it.
                while self.read_replies(i, now) {}
                let slot = &mut self.workers[i];
                if slot.fate.is_none() {
                    slot.fate = Some(slot.end(slot.frames.has_partial()));
                }
            }
        }
    }

    /// Reads and handles what worker `i` wrote. Returns whether more may be
    /// waiting (it stops after a few reads, to be fair to the others).
    fn read_replies(&mut self, i: usize, now: Instant) -> bool {
        // Taken out of the slot so that frames can be handled with `&mut self`
        // without copying them.
        let mut frames = std::mem::take(&mut self.workers[i].frames);
        let more = self.read_frames(i, &mut frames, now);
        self.workers[i].frames = frames;
        more
    }

    fn read_frames(&mut self, i: usize, frames: &mut FrameBuffer, now: Instant) -> bool {
        let max_frame = self.shared.config.max_frame_bytes;
        // A few reads per wake-up, so that one busy worker cannot starve the
        // others.
        for _ in 0..4 {
            let slot = &mut self.workers[i];
            if slot.fate.is_some() {
                return false;
            }
            let Some(fd) = slot.process.stdout() else {
                return false;
            };
            match frames.fill(fd) {
                Ok(0) => {
                    slot.process.close_stdout();
                    slot.fate = Some(slot.end(frames.has_partial()));
                    return false;
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    slot.fate = Some(Fate::Died);
                    return false;
                }
            }
            loop {
                let problem = match frames.next_frame(max_frame) {
                    Ok(Some(body)) => match frames.take_if_large_and_last(&body) {
                        // A large frame leaves in its own buffer, uncopied.
                        Some(buffer) => {
                            let buffer = Arc::new(buffer);
                            let shared = Some((&buffer, body.start));
                            self.on_frame(i, &buffer[body], shared, now).err()
                        }
                        None => self.on_frame(i, frames.get(body), None, now).err(),
                    },
                    Ok(None) => break,
                    Err(e) => Some(e),
                };
                if let Some(problem) = problem {
                    self.workers[i].fate = Some(Fate::Broke(problem.0));
                    return false;
                }
                if self.workers[i].fate.is_some() {
                    return false;
                }
            }
        }
        true
    }

    /// Handles one frame of worker `i`. `shared` is the frame's own buffer
    /// and the frame's offset in it, when it has one.
    fn on_frame(
        &mut self,
        i: usize,
        frame: &[u8],
        shared: Option<(&Arc<Vec<u8>>, usize)>,
        now: Instant,
    ) -> Result<(), ProtocolError> {
        let slot = &mut self.workers[i];
        match frame[0] {
            protocol::HELLO if slot.ready_at.is_none() => {
                let hello: Hello = protocol::decode(&frame[1..], &mut [0; 256])
                    .map_err(|e| ProtocolError(format!("bad handshake: {e}")))?;
                if let Some(problem) = handshake_problem(&hello) {
                    // Every worker would say the same: no point retrying.
                    self.break_pool(problem);
                    return Ok(());
                }
                slot.ready_at = Some(now);
                self.startup_failures = 0;
                Ok(())
            }
            protocol::REPLY if slot.ready_at.is_some() => {
                let (header, items) = protocol::parse_reply(frame)?;
                // Where the items start in the shared buffer, if any.
                let shared = shared.map(|(buffer, at)| (buffer, at + frame.len() - items.len()));
                self.on_reply(i, header, items, shared, now)
            }
            protocol::FATAL => Err(ProtocolError(format!(
                "worker gave up: {}",
                String::from_utf8_lossy(&frame[1..])
            ))),
            kind => Err(ProtocolError(format!("unexpected frame kind {kind}"))),
        }
    }

    fn on_reply(
        &mut self,
        i: usize,
        header: ReplyHeader,
        mut items: &[u8],
        mut shared: Option<(&Arc<Vec<u8>>, usize)>,
        now: Instant,
    ) -> Result<(), ProtocolError> {
        let slot = &mut self.workers[i];
        let mut left = header.count;
        let mut seq = header.first_seq;
        let per_item = Duration::from_nanos(header.busy_nanos) / header.count.max(1);
        while left > 0 {
            let Some(head) = slot.inflight.front_mut() else {
                return Err(ProtocolError(format!(
                    "reply for item {seq}, which was never sent"
                )));
            };
            if seq != head.first_seq + u64::from(head.done) || head.written_at.is_none() {
                return Err(ProtocolError(format!(
                    "reply for item {seq}, expected {}",
                    head.first_seq + u64::from(head.done)
                )));
            }
            let n = left.min(head.chunk.count - head.done);
            let bytes = protocol::items_len(items, n as usize)?;
            let payload = match &mut shared {
                Some((buffer, at)) => {
                    let range = *at..*at + bytes;
                    *at += bytes;
                    Payload::Shared(Arc::clone(buffer), range)
                }
                None => Payload::Copied(items[..bytes].to_vec()),
            };
            let delivery = Delivery::Outcomes {
                first_index: head.chunk.first_index + head.done as usize,
                count: n,
                items: payload,
            };
            self.outbox.push((head.chunk.map, delivery));
            items = &items[bytes..];
            head.done += n;
            slot.backlog = slot.backlog.saturating_sub(head.estimate * n);
            seq += u64::from(n);
            left -= n;
            head.stats.record(per_item);
            if head.done == head.chunk.count {
                slot.inflight.pop_front();
                slot.written -= 1;
            }
        }
        if !items.is_empty() {
            return Err(ProtocolError(
                "reply holds more items than its header says".into(),
            ));
        }
        slot.last_reply_at = Some(now);
        Ok(())
    }

    fn check_deadlines(&mut self, now: Instant) {
        let timeout = self.shared.config.timeout;
        for slot in &mut self.workers {
            if slot
                .deadline(timeout)
                .is_some_and(|deadline| now >= deadline)
            {
                slot.fate = Some(if slot.ready_at.is_none() {
                    Fate::StartupTimeout
                } else {
                    Fate::TimedOut
                });
            }
        }
    }

    /// Takes every worker with a fate out of service.
    fn bury_fated(&mut self) {
        let mut i = 0;
        while i < self.workers.len() {
            if self.workers[i].fate.is_some() {
                let slot = self.workers.swap_remove(i);
                self.bury(slot);
            } else {
                i += 1;
            }
        }
    }

    fn bury(&mut self, mut slot: Slot) {
        let fate = slot.fate.take().expect("buried workers have a fate");
        if !matches!(fate, Fate::Retired) {
            slot.process.kill();
        }
        let mut dying = Dying {
            process: slot.process,
            victim: None,
            during_startup: false,
            fault: None,
        };
        let mut inflight = slot.inflight.into_iter();
        if slot.ready_at.is_none() || matches!(fate, Fate::PoolBroken) {
            // Nothing ran (or nothing will): what is left goes back.
            dying.during_startup = slot.ready_at.is_none()
                && matches!(fate, Fate::Died | Fate::Broke(_) | Fate::StartupTimeout);
            dying.fault = match &fate {
                Fate::Broke(message) => Some(format!("broke the protocol: {message}")),
                Fate::StartupTimeout => Some(format!("no handshake within {STARTUP_TIMEOUT:?}")),
                _ => None,
            };
            self.requeue
                .extend(inflight.filter_map(|inflight| inflight.chunk.split(inflight.done).1));
        } else if let Some(head) = inflight.next() {
            let (_, unanswered) = head.chunk.split(head.done);
            let unanswered = unanswered.expect("an unfinished head has items left");
            if unanswered.count > 1 && !matches!(fate, Fate::Cancelled) {
                // The worker answers a frame at its end, so any of these may
                // have been running: run each alone to find out.
                self.requeue.extend(unanswered.singletons());
            } else {
                let (victim, rest) = unanswered.split(1);
                self.blame(victim.expect("one item"), fate, &mut dying);
                self.requeue.extend(rest);
            }
            self.requeue.extend(inflight.map(|inflight| inflight.chunk));
        }
        self.dying.push(dying);
    }

    /// Reports what happened to `victim`, the input its worker was running.
    /// A death is reported once the exit status is known, if not retried.
    fn blame(&mut self, victim: Chunk, fate: Fate, dying: &mut Dying) {
        let (index, map) = (victim.first_index, victim.map);
        match fate {
            Fate::TimedOut => {
                let timeout = self.shared.config.timeout.expect("timeouts need a timeout");
                self.outbox
                    .push((map, Delivery::Failed(Error::TaskTimeout { index, timeout })));
            }
            Fate::Broke(message) => {
                self.outbox
                    .push((map, Delivery::Failed(Error::Protocol { index, message })));
            }
            Fate::Cancelled => {}
            Fate::Died | Fate::Retired | Fate::StartupTimeout | Fate::PoolBroken => {
                if victim.attempts < self.shared.config.retries {
                    let mut victim = victim;
                    victim.attempts += 1;
                    self.requeue.push(victim);
                } else {
                    dying.victim = Some((map, index));
                }
            }
        }
    }

    /// Reaps the workers that have exited and reports their victims.
    fn reap_dying(&mut self) {
        let mut i = 0;
        while i < self.dying.len() {
            let Some(status) = self.dying[i].process.try_reap() else {
                i += 1;
                continue;
            };
            let mut dying = self.dying.swap_remove(i);
            // What it wrote last explains its death. Take what is there, but
            // do not wait for the end: a subprocess may hold the pipe open.
            dying.process.pump_stderr(self.shared.config.forward_stderr);
            self.on_reaped(dying, status);
        }
    }

    fn on_reaped(&mut self, dying: Dying, status: ExitStatus) {
        let stderr = dying.process.stderr_tail();
        // A SIGKILL from outside says nothing about whether workers can
        // start; a worker that failed by itself, or that the pool killed for
        // a fault of its own, does.
        let killed_from_outside = status.signal() == Some(libc::SIGKILL) && dying.fault.is_none();
        if dying.during_startup && !killed_from_outside {
            self.startup_failures += 1;
            self.last_startup_failure = Some(match (&dying.fault, telling_line(&stderr)) {
                (Some(fault), _) => fault.clone(),
                (None, Some(line)) => format!("{status}: {line}"),
                (None, None) => status.to_string(),
            });
        }
        if let Some((map, index)) = dying.victim {
            self.outbox.push((
                map,
                Delivery::Failed(Error::WorkerDied {
                    index,
                    status,
                    stderr,
                }),
            ));
        }
    }

    /// Kills every worker, fails every input still owed, reaps.
    fn shut_down(&mut self) {
        let mut state = self.shared.lock();
        deliver(&state, &mut self.outbox);
        let reason = self.broken.clone();
        let mut owed: Vec<Chunk> = self.requeue.drain(..).collect();
        for slot in &mut self.workers {
            slot.process.kill();
            for inflight in slot.inflight.drain(..) {
                let (_, rest) = inflight.chunk.split(inflight.done);
                owed.extend(rest);
            }
        }
        owed.extend(state.queue.drain(..));
        for chunk in owed {
            close(&state, chunk.map, chunk.first_index, chunk.count, &reason);
        }
        for dying in &self.dying {
            if let Some((map, index)) = dying.victim {
                close(&state, map, index, 1, &reason);
            }
        }
        state.phase = Phase::Closed;
        state.maps.clear();
        drop(state);
        let forward = self.shared.config.forward_stderr;
        for slot in self.workers.drain(..) {
            let mut process = slot.process;
            process.kill_and_reap(REAP_BOUND);
            process.pump_stderr(forward);
        }
        for mut dying in self.dying.drain(..) {
            dying.process.kill_and_reap(REAP_BOUND);
        }
    }
}

fn poll_retrying(
    fds: &mut [PollFd<'_>],
    timeout: Option<&rustix::event::Timespec>,
) -> io::Result<usize> {
    loop {
        match rustix::event::poll(fds, timeout) {
            Ok(n) => return Ok(n),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Why a worker's handshake does not fit this process, if it does not.
fn handshake_problem(hello: &Hello) -> Option<String> {
    let registry = registry();
    if hello.version != protocol::VERSION {
        return Some(format!(
            "worker speaks protocol {}, this process {}",
            hello.version,
            protocol::VERSION
        ));
    }
    if hello.tasks == 0 && !registry.tasks.is_empty() {
        return Some(format!(
            "worker sees no registered tasks, this process sees {}: its start-up hook ran before the registrations",
            registry.tasks.len()
        ));
    }
    if hello.digest != registry.digest || hello.tasks as usize != registry.tasks.len() {
        return Some(format!(
            "worker sees {} registered tasks, this process {}, or under other names",
            hello.tasks,
            registry.tasks.len()
        ));
    }
    None
}
