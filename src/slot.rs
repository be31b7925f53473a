//! One live worker as the pool's thread sees it: its frames in flight, how
//! far they are written and answered, and when its current input started.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::io::Errno;

use crate::process::Process;
use crate::protocol::FrameBuffer;
use crate::shared::{Chunk, MapStats};

/// At most this many frames go into one `writev`.
const MAX_IOVECS: usize = 64;
/// A worker that has not said hello by then is considered failed.
pub(crate) const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a worker is being taken out of service.
#[derive(Debug)]
pub(crate) enum Fate {
    /// Its reply stream ended or failed (usually: it died).
    Died,
    /// The item at its head ran past the timeout.
    TimedOut,
    /// It sent something that is not the protocol.
    Broke(String),
    /// The map of the item it runs was dropped.
    Cancelled,
    /// It reached its task quota and exited cleanly.
    Retired,
    /// It did not finish starting in time.
    StartupTimeout,
    /// The pool gave up on all workers.
    PoolBroken,
}

/// A live worker, from the loop's side.
pub(crate) struct Slot {
    pub(crate) process: Process,
    pub(crate) spawned_at: Instant,
    pub(crate) frames: FrameBuffer,
    /// When the handshake arrived.
    pub(crate) ready_at: Option<Instant>,
    pub(crate) last_reply_at: Option<Instant>,
    pub(crate) inflight: VecDeque<Inflight>,
    /// Number of inflight frames fully written.
    pub(crate) written: usize,
    /// Bytes of `inflight[written]` already written.
    pub(crate) write_offset: usize,
    pub(crate) next_seq: u64,
    /// Items given to this worker so far.
    pub(crate) assigned: u64,
    /// No new work: it is being recycled.
    pub(crate) retiring: bool,
    /// Estimated run time of its unanswered items.
    pub(crate) backlog: Duration,
    pub(crate) fate: Option<Fate>,
}

pub(crate) struct Inflight {
    pub(crate) chunk: Chunk,
    pub(crate) first_seq: u64,
    /// Items answered so far.
    pub(crate) done: u32,
    pub(crate) written_at: Option<Instant>,
    /// Estimated run time of one item when dispatched.
    pub(crate) estimate: Duration,
    pub(crate) stats: Arc<MapStats>,
}

impl Slot {
    /// When the item at the head started running, as far as we can tell
    /// (never earlier than it really did).
    pub(crate) fn head_started(&self) -> Option<Instant> {
        let head = self.inflight.front()?;
        let mut started = head.written_at?.max(self.ready_at?);
        if let Some(reply) = self.last_reply_at {
            started = started.max(reply);
        }
        Some(started)
    }

    /// How a worker whose process ended is taken out of service: retired if
    /// it had reached its quota and answered everything, dead otherwise.
    pub(crate) fn end(&self, partial_frame: bool) -> Fate {
        if self.retiring && self.inflight.is_empty() && !partial_frame {
            Fate::Retired
        } else {
            Fate::Died
        }
    }

    pub(crate) fn takes_work(&self) -> bool {
        !self.retiring && self.fate.is_none() && self.process.stdin().is_some()
    }

    pub(crate) fn deadline(&self, timeout: Option<Duration>) -> Option<Instant> {
        if self.fate.is_some() {
            return None;
        }
        if self.ready_at.is_none() {
            return Some(self.spawned_at + STARTUP_TIMEOUT);
        }
        // A timeout too large to add never fires.
        self.head_started()?.checked_add(timeout?)
    }
}

impl Slot {
    pub(crate) fn new(process: Process) -> Slot {
        Slot {
            process,
            spawned_at: Instant::now(),
            frames: FrameBuffer::default(),
            ready_at: None,
            last_reply_at: None,
            inflight: VecDeque::new(),
            written: 0,
            write_offset: 0,
            next_seq: 0,
            assigned: 0,
            retiring: false,
            backlog: Duration::ZERO,
            fate: None,
        }
    }

    /// Writes as much of the unwritten frames as the pipe takes. If the
    /// pipe is broken the worker is dying: its request pipe is closed, and
    /// its death is handled when its reply stream ends, after the replies it
    /// wrote before dying have been read.
    pub(crate) fn write(&mut self, now: Instant) {
        if let Err(e) = self.try_write(now) {
            if e.kind() != io::ErrorKind::WouldBlock {
                self.process.close_stdin();
            }
        }
    }

    fn try_write(&mut self, now: Instant) -> io::Result<()> {
        let Some(fd) = self.process.stdin() else {
            return Err(io::ErrorKind::BrokenPipe.into());
        };
        while self.written < self.inflight.len() {
            let slices: Vec<io::IoSlice<'_>> = self
                .inflight
                .iter()
                .skip(self.written)
                .take(MAX_IOVECS)
                .enumerate()
                .map(|(k, inflight)| {
                    let skip = if k == 0 { self.write_offset } else { 0 };
                    io::IoSlice::new(&inflight.chunk.frame[skip..])
                })
                .collect();
            let mut n = match rustix::io::writev(fd, &slices) {
                Ok(n) => n,
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            };
            while n > 0 {
                let inflight = &mut self.inflight[self.written];
                let left = inflight.chunk.frame.len() - self.write_offset;
                if n >= left {
                    n -= left;
                    inflight.written_at = Some(now);
                    self.written += 1;
                    self.write_offset = 0;
                } else {
                    self.write_offset += n;
                    n = 0;
                }
            }
        }
        Ok(())
    }
}
