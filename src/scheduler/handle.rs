//! One live worker as the pool's thread sees it: its process, its books,
//! the frames arriving from it, and why it is being taken out of service.
//! Writing requests and reading replies happen here; what a reply means for
//! the books is in [`Books`].

use std::collections::HashSet;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::io::Errno;

use super::books::{Books, Unanswered};
use super::poll::Watch;
use super::posting::Posting;
use crate::chunk::Chunk;
use crate::flow::{self, READS_PER_WAKE, SCRATCH_BYTES, SYMBOLISE_BOUND};
use crate::launch::Reported;
use crate::logs;
use crate::panics::PanicReport;
use crate::process::Process;
use crate::protocol::{self, FrameBuffer, Hello, ProtocolError, ReplyHeader};
use crate::registry::registry;
use crate::shared::{MapStats, SharedContext};

/// Why a worker is being taken out of service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Fate {
    /// Its reply stream ended or failed (usually: it died).
    Died,
    /// The input at its head ran past the timeout, or it stopped reading
    /// its requests for that long.
    TimedOut,
    /// It sent something that is not the protocol.
    Broke(String),
    /// The map of the input it runs was dropped.
    Cancelled,
    /// It reached its task quota and answered everything, or it said it
    /// runs nothing more (RETIRED): it exits by itself, or is killed after
    /// a grace period. It ran none of what it leaves unanswered.
    Retired,
    /// It did not finish starting in time.
    StartupTimeout,
    /// The pool gave up on all workers.
    PoolBroken,
}

/// What a worker's handshake told us.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Heard {
    /// It is ready for work.
    Ready,
    /// It does not fit this process (another protocol or task table): no
    /// worker will, so the pool gives up with this reason.
    Mismatch(String),
}

/// A panic its worker announced (a PANIC frame) and is making the
/// backtrace of: the clock of its input stands still until the reply.
struct Symbolising {
    since: Instant,
    report: PanicReport,
}

/// A live worker.
pub(crate) struct WorkerHandle {
    process: Process,
    books: Books,
    frames: FrameBuffer,
    spawned_at: Instant,
    /// How long it may take to say hello, if that is bounded.
    startup_timeout: Option<Duration>,
    /// The contexts it was sent (or will be, with a frame in flight).
    contexts: HashSet<u64>,
    /// Contexts it may drop: told with the next frame it gets.
    forgets: Vec<u64>,
    /// No new work: it is being recycled.
    retiring: bool,
    /// Bytes of the RETIRE frame written, after its last frame.
    retire_written: usize,
    fate: Option<Fate>,
    /// The launcher that started it, by position in the pool's.
    launcher: usize,
    /// A panic whose backtrace it is making, if it is.
    symbolising: Option<Symbolising>,
}

/// What is left of a worker taken out of service.
pub(crate) struct Remains {
    pub process: Process,
    pub launcher: usize,
    pub books: Books,
    pub fate: Fate,
    /// The worker took none of the frame it was to run next.
    pub head_untouched: bool,
    /// The panic (without its backtrace) of the input it was making the
    /// backtrace for, if it was.
    pub symbolising: Option<PanicReport>,
}

impl WorkerHandle {
    pub(crate) fn new(
        process: Process,
        launcher: usize,
        startup_timeout: Option<Duration>,
    ) -> WorkerHandle {
        WorkerHandle {
            process,
            books: Books::default(),
            frames: FrameBuffer::default(),
            spawned_at: Instant::now(),
            startup_timeout,
            contexts: HashSet::new(),
            forgets: Vec::new(),
            retiring: false,
            retire_written: 0,
            fate: None,
            launcher,
            symbolising: None,
        }
    }

    /// The launcher that started it, by position in the pool's.
    pub(crate) fn launcher(&self) -> usize {
        self.launcher
    }

    pub(crate) fn process(&self) -> &Process {
        &self.process
    }

    pub(crate) fn process_mut(&mut self) -> &mut Process {
        &mut self.process
    }

    pub(crate) fn books(&self) -> &Books {
        &self.books
    }

    pub(crate) fn fate(&self) -> Option<&Fate> {
        self.fate.as_ref()
    }

    /// Decides its fate, unless one is decided already.
    pub(crate) fn doom(&mut self, fate: Fate) {
        if self.fate.is_none() {
            self.fate = Some(fate);
        }
    }

    /// Whether it is alive and may be given work.
    pub(crate) fn takes_work(&self) -> bool {
        !self.retiring && self.fate.is_none() && self.process.requests().is_some()
    }

    /// Whether it takes work and has room for more. A worker still
    /// starting takes its share (inputs spread over the workers as they
    /// come up, and none waits behind a slow one on a worker that was
    /// first to say hello), but nothing is written to it before its
    /// handshake checks out ([`WorkerHandle::wants_to_write`]).
    pub(crate) fn wants_more(&self) -> bool {
        self.takes_work() && flow::wants_more(self.books.frames(), self.books.backlog())
    }

    /// Gives it a chunk of inputs whose estimated run time is `estimate`
    /// each, and whose task reads `context`: sent first, if the worker does
    /// not have it yet, with the contexts it may forget.
    pub(crate) fn assign(
        &mut self,
        chunk: Chunk,
        context: Option<&SharedContext>,
        estimate: Duration,
        stats: Arc<MapStats>,
    ) {
        let send = context.filter(|context| self.contexts.insert(context.id));
        let prefix = match (self.forgets.is_empty(), send) {
            (true, None) => None,
            // The context's frame as it is, shared with every worker (a
            // long value's, a few bytes naming its memfd).
            (true, Some(context)) => Some(Arc::clone(&context.frame)),
            (false, send) => {
                let mut frames = Vec::new();
                for id in self.forgets.drain(..) {
                    frames.extend_from_slice(&protocol::forget_frame(id));
                }
                if let Some(context) = send {
                    frames.extend_from_slice(&context.frame);
                }
                Some(Arc::new(frames))
            }
        };
        self.books.assign(prefix, chunk, estimate, stats);
    }

    /// Takes back the frames queued behind the one it runs (from the head
    /// on, before its handshake) that it has not read: those not written
    /// yet, and those still whole in its request pipe. They never started.
    /// The contexts and FORGET frames they were to bring are owed again.
    pub(crate) fn take_back(&mut self) -> Vec<Chunk> {
        if self.fate.is_some() || self.process.requests().is_none() {
            return Vec::new();
        }
        let head_too = !self.books.is_ready();
        let unread = self.process.unread_requests().unwrap_or(0) as usize;
        // The RETIRE frame, if written, is last in the pipe.
        let frames_unread = unread.saturating_sub(self.retire_written);
        if self.books.worth_reading_back(frames_unread, head_too) {
            let mut buf = vec![0; unread];
            let taken = self.process.take_unread(&mut buf);
            let retire = taken.min(self.retire_written);
            self.retire_written -= retire;
            self.books.unwrite(taken - retire);
        }
        let taken = self.books.take_unwritten(head_too);
        taken
            .into_iter()
            .map(|taken| {
                if let Some(prefix) = taken.prefix {
                    self.owe_again(&prefix);
                }
                taken.chunk
            })
            .collect()
    }

    /// The frames of `prefix` (a CONTEXT or CONTEXT_BESIDE frame, FORGET
    /// frames) never reached the worker.
    fn owe_again(&mut self, mut prefix: &[u8]) {
        let mut body = Vec::new();
        // Frames we built: they parse.
        while let Ok(true) = protocol::read_frame(&mut prefix, &mut body, u32::MAX) {
            let Ok((id, _)) = protocol::parse_context(&body) else {
                continue;
            };
            if protocol::brings_context(body[0]) {
                self.contexts.remove(&id);
            } else {
                self.forgets.push(id);
            }
        }
    }

    /// No map reads context `id` any more: if it was sent this worker, the
    /// worker may drop it.
    pub(crate) fn forget(&mut self, id: u64) {
        if self.contexts.remove(&id) {
            self.forgets.push(id);
        }
    }

    /// It will take no more work once what it has is written.
    pub(crate) fn retire(&mut self) {
        self.retiring = true;
    }

    /// Whether it has frames to write and could take bytes now. Not before
    /// its handshake: a program that turns out to be another one (a
    /// launcher that reaches another binary) must not read our inputs, let
    /// alone run them with its own tasks.
    pub(crate) fn wants_to_write(&self) -> bool {
        self.fate.is_none()
            && self.books.is_ready()
            && self.process.requests().is_some()
            && !self.all_written()
    }

    /// Whether every frame it is to get is written, the RETIRE frame of a
    /// retiring worker included.
    fn all_written(&self) -> bool {
        self.books.all_written()
            && (!self.retiring || self.retire_written == protocol::RETIRE_FRAME.len())
    }

    /// Writes as much of its unwritten frames as the pipe takes, then the
    /// RETIRE frame of a retiring worker. (Its request stream stays open:
    /// a worker whose stream closes exits at once, even mid-task.) A write
    /// that fails for another reason than a full pipe closes the stream:
    /// the worker is gone, and its reply stream will say so once the
    /// replies it wrote before are read. A closed pipe leaves `watch`
    /// first.
    pub(crate) fn write(&mut self, watch: &Watch) {
        if self.wants_to_write() {
            if let Err(e) = self.try_write() {
                if e.kind() != io::ErrorKind::WouldBlock {
                    if let Some(fd) = self.process.requests() {
                        watch.unwatch(fd);
                    }
                    self.process.close_requests();
                }
            }
        }
        self.retire_if_done();
    }

    /// A retiring worker that has answered everything is done: from here
    /// on it has a grace period to exit.
    fn retire_if_done(&mut self) {
        if self.retiring && self.books.frames() == 0 && self.all_written() {
            self.doom(Fate::Retired);
        }
    }

    fn try_write(&mut self) -> io::Result<()> {
        self.try_write_frames()?;
        if let (true, Some(fd)) = (self.retiring, self.process.requests()) {
            while self.retire_written < protocol::RETIRE_FRAME.len() {
                match rustix::io::write(fd, &protocol::RETIRE_FRAME[self.retire_written..]) {
                    Ok(n) => self.retire_written += n,
                    Err(Errno::INTR) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(())
    }

    fn try_write_frames(&mut self) -> io::Result<()> {
        let Some(fd) = self.process.requests() else {
            return Ok(());
        };
        while !self.books.all_written() {
            let written = rustix::io::writev(fd, &self.books.unwritten());
            match written {
                // The time is read after the write: a frame's clock must not
                // start before its last byte is in the pipe.
                Ok(n) => self.books.wrote(n, Instant::now()),
                Err(Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Reads and handles what it wrote: at most [`READS_PER_WAKE`] reads,
    /// so that one chatty worker cannot starve the others. Returns the
    /// bytes read and what its handshake said, if it arrived.
    pub(crate) fn read(
        &mut self,
        max_frame: u32,
        posting: &mut Posting,
        watch: &Watch,
    ) -> (usize, Option<Heard>) {
        let mut total = 0;
        let mut heard = None;
        for _ in 0..READS_PER_WAKE {
            if self.fate.is_some() {
                break;
            }
            let Some(fd) = self.process.replies() else {
                break;
            };
            match self.frames.fill(fd) {
                Ok(0) => {
                    watch.unwatch(fd);
                    self.process.close_replies();
                    self.end();
                    break;
                }
                Ok(n) => total += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.doom(Fate::Died);
                    break;
                }
            }
            // Read after the bytes arrived: a reply or hello stamped with it
            // is never stamped early.
            let now = Instant::now();
            // Answers, whether posted or held by an observer.
            let answered = self.books.answered();
            let mut retired = false;
            if let Err(problem) =
                self.take_frames(max_frame, now, posting, &mut heard, &mut retired)
            {
                self.doom(Fate::Broke(problem.0));
            }
            if retired {
                // It runs nothing more: what it has left goes back.
                self.retiring = true;
                self.doom(Fate::Retired);
            }
            if self.books.answered() > answered {
                self.process.stderr().mark();
                self.retire_if_done();
            }
        }
        // What it was given while it started goes out at once.
        if heard == Some(Heard::Ready) {
            self.write(watch);
        }
        (total, heard)
    }

    /// After its process exited: reads the replies it wrote before it went,
    /// but at most what its pipe could hold (a forked child may keep
    /// writing), then decides its fate.
    pub(crate) fn read_remains(
        &mut self,
        max_frame: u32,
        posting: &mut Posting,
        watch: &Watch,
    ) -> Option<Heard> {
        let mut drained = 0;
        let mut heard = None;
        while drained < flow::DRAIN_AFTER_EXIT {
            let (n, said) = self.read(max_frame, posting, watch);
            heard = heard.or(said);
            if n == 0 {
                break;
            }
            drained += n;
        }
        self.end();
        heard
    }

    /// Handles every complete frame in the buffer.
    fn take_frames(
        &mut self,
        max_frame: u32,
        now: Instant,
        posting: &mut Posting,
        heard: &mut Option<Heard>,
        retired: &mut bool,
    ) -> Result<(), ProtocolError> {
        let mut ear = Ear {
            books: &mut self.books,
            process: &mut self.process,
            symbolising: &mut self.symbolising,
            now,
            posting,
            heard,
            retired,
        };
        while let Some(body) = self.frames.next_frame(max_frame)? {
            // A large frame leaves in its own buffer, uncopied.
            match self.frames.take_if_large_and_last(&body) {
                Some(buffer) => {
                    let buffer = Arc::new(buffer);
                    ear.take(&buffer[body.clone()], Some((&buffer, body.start)))?;
                }
                None => ear.take(self.frames.get(body), None)?,
            }
        }
        Ok(())
    }

    /// Its reply stream ended, or its process did: retired if it had
    /// reached its quota and answered everything (already decided, then),
    /// dead otherwise.
    fn end(&mut self) {
        self.retire_if_done();
        self.doom(Fate::Died);
    }

    /// When it must next show progress: its handshake while it starts (if
    /// that is bounded), the answer to its head input once it runs. While it makes a panic's
    /// backtrace, the input's clock stands still, but the making has a
    /// bound of its own, timeout or not: a symboliser that hangs (it can
    /// deadlock when memory runs out under a memory limit) must not hang
    /// the pool.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        if self.fate.is_some() {
            return None;
        }
        if !self.books.is_ready() {
            return self.startup_timeout.map(|bound| self.spawned_at + bound);
        }
        // Each frame carries its own timeout (its map's, or the pool's).
        let deadline = self.books.deadline();
        match &self.symbolising {
            Some(symbolising) => {
                let bound = symbolising.since + SYMBOLISE_BOUND;
                Some(deadline.map_or(bound, |deadline| deadline.max(bound)))
            }
            None => deadline,
        }
    }

    /// Decides its fate if its deadline has passed at `now`.
    pub(crate) fn check_deadline(&mut self, now: Instant) {
        if self.deadline().is_some_and(|deadline| now >= deadline) {
            let fate = if self.books.is_ready() {
                Fate::TimedOut
            } else {
                Fate::StartupTimeout
            };
            self.doom(fate);
        }
    }

    /// At shutdown: kills it, and returns its process (to be reaped) and
    /// its unanswered inputs.
    pub(crate) fn kill_for_shutdown(mut self) -> (Process, Unanswered) {
        self.process.kill();
        (self.process, self.books.into_unanswered())
    }

    /// Takes it out of service: kills it unless it retired by itself, and
    /// says whether it took any of the frame it was to run.
    pub(crate) fn take_out_of_service(mut self) -> Remains {
        let fate = self
            .fate
            .take()
            .expect("workers taken out of service have a fate");
        // Asked before the kill, while the worker cannot take more.
        // The RETIRE frame, if written, is in the pipe after every frame.
        let unread = self.process.unread_requests();
        let unread = unread.map(|n| n.saturating_sub(self.retire_written as u64));
        let head_untouched = self.books.head_untouched(unread);
        if fate != Fate::Retired {
            self.process.kill();
        }
        let symbolising = self.symbolising.take().map(|s| s.report);
        Remains {
            process: self.process,
            launcher: self.launcher,
            books: self.books,
            fate,
            head_untouched,
            symbolising,
        }
    }
}

/// What handles a worker's frames, borrowed from its handle while its
/// frame buffer is read.
struct Ear<'a> {
    books: &'a mut Books,
    process: &'a mut Process,
    symbolising: &'a mut Option<Symbolising>,
    now: Instant,
    posting: &'a mut Posting,
    heard: &'a mut Option<Heard>,
    /// It said it runs nothing more.
    retired: &'a mut bool,
}

impl Ear<'_> {
    /// Handles one frame. `shared`: the frame's own buffer and the frame's
    /// offset in it, when it has one.
    fn take(
        &mut self,
        frame: &[u8],
        shared: Option<(&Arc<Vec<u8>>, usize)>,
    ) -> Result<(), ProtocolError> {
        match frame[0] {
            protocol::HELLO if !self.books.is_ready() => {
                let hello: Hello = protocol::decode(&frame[1..], &mut [0; SCRATCH_BYTES])
                    .map_err(|e| ProtocolError::new(format!("bad handshake: {e}")))?;
                self.process.set_reported(Reported {
                    pid: hello.pid,
                    step: hello.step.clone(),
                });
                let mismatch = registry()
                    .mismatch(&hello)
                    .or_else(|| self.process.launch().accepts(&hello).err())
                    .or(hello.refused);
                *self.heard = Some(match mismatch {
                    Some(problem) => Heard::Mismatch(problem),
                    None => {
                        self.books.ready(self.now);
                        Heard::Ready
                    }
                });
                Ok(())
            }
            protocol::REPLY if self.books.is_ready() => {
                let (header, items) = ReplyHeader::parse(frame)?;
                // Where the items start in the shared buffer, if any.
                let shared = shared.map(|(buffer, at)| (buffer, at + frame.len() - items.len()));
                let slot = self.process.reply_slot();
                // It answers the panicked item with this, or has answered
                // it: either way the making is over.
                *self.symbolising = None;
                self.books
                    .answer(header, items, shared, slot, self.now, self.posting)
            }
            protocol::PANIC if self.books.is_ready() => {
                let (seq, report) = protocol::parse_panic(frame)?;
                let report: PanicReport = protocol::decode(report, &mut [0; SCRATCH_BYTES])
                    .map_err(|e| ProtocolError::new(format!("bad panic report: {e}")))?;
                if self.books.index_of(seq).is_none() {
                    return Err(ProtocolError::new(format!(
                        "panic of item {seq}, which is not running"
                    )));
                }
                // One per answer: the clock does not stand still twice.
                if self.symbolising.is_some() {
                    return Err(ProtocolError::new(format!(
                        "second panic of item {seq} before its answer"
                    )));
                }
                *self.symbolising = Some(Symbolising {
                    since: self.now,
                    report,
                });
                Ok(())
            }
            // Decoded by the thread that re-emits it, not here.
            protocol::LOG if self.books.is_ready() => {
                let (seq, record) = protocol::parse_log(frame)?;
                let input = seq.and_then(|seq| self.books.index_of(seq));
                logs::forward::from_worker(record, self.process.worker_pid(), input);
                Ok(())
            }
            protocol::RETIRED if self.books.is_ready() => {
                *self.retired = true;
                Ok(())
            }
            protocol::FATAL => Err(ProtocolError::new(format!(
                "worker gave up: {}",
                String::from_utf8_lossy(&frame[1..])
            ))),
            kind => Err(ProtocolError::new(format!("unexpected frame kind {kind}"))),
        }
    }
}

#[cfg(test)]
#[path = "handle_tests.rs"]
mod tests;
