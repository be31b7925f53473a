//! Flow control: how inputs are cut into frames, how many are in flight,
//! every buffer size and every time bound. All tuning lives here, as
//! constants and pure functions, so that the trade-offs can be read and
//! tested in one place.
//!
//! A map pulls inputs on its caller's thread and cuts them into chunks, one
//! RUN frame each ([`chunk_items`]). Until anything is measured a chunk
//! holds one input, so that slow tasks spread over the workers from the
//! start; then as many as fit in about [`CHUNK_TARGET`] of work, growing at
//! most twofold per chunk (early inputs may be cheaper than later ones) and
//! shrinking towards the end of the inputs (guided self-scheduling), so
//! that the workers finish together.
//!
//! A map keeps a bounded window of inputs pulled ([`window`]): `ahead`
//! handed to the pool and unanswered (a few chunks per worker: enough to
//! keep them busy, few enough that chunks are cut with fresh estimates), and
//! `span` pulled beyond the last result yielded (much more: an ordered map
//! yields in order, so one slow input holds the window back, and fast
//! workers must not run dry behind it). Both are bounded in bytes.
//!
//! The pool's thread gives a worker more work while it has fewer than
//! [`MAX_INFLIGHT_FRAMES`] frames and less than [`LOOKAHEAD`] of estimated
//! work ([`wants_more`]): the next chunk is always there when one ends, and
//! the tail of a map is not stuck behind one worker. So a worker takes one
//! frame at a time when inputs are slow (a frame of more than
//! [`LOOKAHEAD`]), one input at a time until the map is measured
//! ([`UNKNOWN_ESTIMATE`]), and one input at a time with `batch_size(1)`
//! ([`frames_in_flight`]): an input never waits behind a slow one while
//! another worker could run it. When a worker runs out of work and nothing
//! is queued, the frames another worker has not read yet come back to the
//! queue (`scheduler`).

use std::time::Duration;

/// Work per chunk once run times are known: large enough to amortise a
/// frame, small enough not to hold other inputs behind a slow one.
pub(crate) const CHUNK_TARGET: Duration = Duration::from_millis(2);
/// Towards the end of a map chunks shrink so that the workers finish
/// together, but not below this much work: a wide pool (many processes,
/// few cores) would otherwise cut tiny chunks whose frames cost more than
/// their work.
pub(crate) const MIN_CHUNK_WORK: Duration = Duration::from_micros(250);
/// Most inputs in one chunk.
pub(crate) const MAX_CHUNK_ITEMS: u32 = 16 * 1024;
/// A chunk also ends at this size, and a map hands what it encoded to the
/// pool once it holds this much (large inputs start while the next ones
/// are being encoded).
pub(crate) const CHUNK_BYTES: usize = 1 << 20;
/// Chunks per process that a map keeps in the pool.
const AHEAD_CHUNKS: usize = 4;
/// Frames per process that a map keeps in the pool besides its chunks...
const AHEAD_FRAMES: usize = 16;
/// ...or this many for tasks shorter than [`TINY_TASK`]: tiny tasks sent one
/// per frame need many frames queued to keep the workers busy between the
/// pool's wake-ups.
const TINY_TASK_FRAMES: usize = 512;
const TINY_TASK: Duration = Duration::from_micros(20);
/// Until anything is measured a worker takes one input; the frames kept
/// besides those wait in the pool's queue, one input each, to be sent so
/// even once the inputs turn out tiny. So they are at most this many,
/// however wide the pool.
const UNMEASURED_FRAMES: usize = 64;
/// Work per process that a map keeps pulled ahead of what it has yielded.
const WINDOW_WORK: Duration = Duration::from_millis(40);
/// Chunks per process that a map keeps pulled ahead of what it has yielded,
/// at least, and inputs beyond that.
const WINDOW_CHUNKS: usize = 8;
const WINDOW_SLACK: usize = 64;
/// Encoded inputs a map keeps pulled ahead, at most.
pub(crate) const WINDOW_BYTES: usize = 64 << 20;

/// A worker gets more work while its estimated backlog is below this: two
/// chunks of [`CHUNK_TARGET`].
pub(crate) const LOOKAHEAD: Duration = Duration::from_millis(4);
/// Per-input estimate before anything has been measured: one input in
/// flight per worker, so that slow tasks spread from the start and no input
/// waits behind one that may be slow. (The first reply measures the map.)
pub(crate) const UNKNOWN_ESTIMATE: Duration = LOOKAHEAD;
/// At most this many frames in flight per worker.
pub(crate) const MAX_INFLIGHT_FRAMES: usize = 256;
/// Deliveries sent to maps in one go while replies keep coming.
pub(crate) const DELIVERY_BATCH: usize = 16;
/// ... or once the oldest of them waited this long (a worker that floods
/// the loop with logs keeps it from sleeping).
pub(crate) const DELIVERY_DELAY: Duration = Duration::from_millis(1);
/// At most this many frames go into one `writev`.
pub(crate) const MAX_IOVECS: usize = 64;

/// Capacity asked for the request and reply pipes (Linux's default is
/// 64 KiB; an unprivileged process may get up to 1 MiB).
pub(crate) const PIPE_BYTES: usize = 1 << 20;
/// Room for at least this much per read of a worker's replies.
pub(crate) const READ_CHUNK: usize = 256 * 1024;
/// Reads of one worker's replies per wake-up, so that one busy worker
/// cannot starve the others.
pub(crate) const READS_PER_WAKE: usize = 4;
/// Frames from this size on get a buffer of their own (and leave the pool's
/// thread without a copy); buffers for large frames grow from this size.
pub(crate) const LARGE_FRAME: usize = 64 * 1024;
/// What a worker may have written before it exited is at most a full
/// pipe: after its exit, this much is read at most, whatever keeps coming
/// (a forked child may hold the pipe).
pub(crate) const DRAIN_AFTER_EXIT: usize = 2 * PIPE_BYTES;
/// A frame buffer is kept between frames up to this size, or four times
/// the last frame's, and shrunk after an outsized frame.
pub(crate) const KEEP_BUFFER: usize = 1 << 20;
/// The worker's read buffer on its request pipe: it takes queued frames
/// in one read, at the price of keeping what it read: the pool takes back
/// only frames still in the pipe (see `scheduler::books`), so a worker
/// holds at most this much beyond the frame it runs.
pub(crate) const REQUEST_BUFFER: usize = 64 * 1024;
/// Scratch buffer of the CBOR decoder: bounds the piece in which a string
/// is decoded, not the value.
pub(crate) const SCRATCH_BYTES: usize = 4096;

/// How much of a worker's stderr is kept for error messages: the first
/// bytes written for the input it runs, and the last ones.
pub(crate) const STDERR_HEAD: usize = 4096;
pub(crate) const STDERR_TAIL: usize = 4096;
/// Bytes of one worker's stderr read per wake-up, in reads of
/// [`STDERR_READ`].
pub(crate) const STDERR_READS: usize = 64 * 1024;
pub(crate) const STDERR_READ: usize = 8 * 1024;
/// A line of a worker's stderr is forwarded whole, unless it grows past this.
pub(crate) const STDERR_LINE: usize = 8 * 1024;
/// Worker stderr waiting to be written to ours, at most; beyond it, output
/// is dropped (and the drop reported) rather than stall the pool.
pub(crate) const STDERR_QUEUE: usize = 1 << 20;

/// A sandboxed worker with a CPU limit reads its CPU time after a message
/// (to see whether the next one still gets its whole budget) only if this
/// much time passed since it last did: the read is a system call (about
/// 0.5 us here), which cost 13% of the throughput of tiny inputs when made
/// before every message. Earlier tasks can leave the next one this much
/// CPU time short per thread they kept busy.
pub(crate) const CPU_READ_INTERVAL: Duration = Duration::from_millis(10);
/// A worker of a pool with `max_worker_rss` reads its resident memory
/// after a message only if this much time passed since it last did: the
/// read (`/proc/self/statm`) took 1.5 us here, 7% of a tiny input's round
/// trip with `batch_size(1)`. Quick messages can take a worker past its
/// limit by what they allocate in this much time.
pub(crate) const RSS_READ_INTERVAL: Duration = Duration::from_millis(10);

/// `Pool::new` spawns up to this many workers of each launcher itself, or
/// as many as the machine has cores if that is more: a few milliseconds,
/// after which a small pool has all its workers from the first dispatch,
/// so slow inputs spread over them at once. A wider pool's other workers
/// are spawned by the spawning thread while the first ones serve.
pub(crate) const SPAWNED_AT_START: usize = 8;

/// How long a worker may take to make the backtrace of a panic it
/// announced: its input's clock stands still meanwhile. The first
/// backtrace of a fresh process took 100 ms here, 200-500 ms under load.
pub(crate) const SYMBOLISE_BOUND: Duration = Duration::from_secs(10);
/// A worker that has not said hello by then has failed to start.
pub(crate) const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Consecutive start-up failures after which the pool gives up.
pub(crate) const STARTUP_FAILURE_LIMIT: u32 = 5;
/// Delays before spawning again after a spawn error: the first, doubled
/// up to the last.
pub(crate) const FIRST_RETRY: Duration = Duration::from_millis(10);
pub(crate) const LAST_RETRY: Duration = Duration::from_secs(1);
/// How often an input may go back to the queue because its worker went
/// before taking any of it; after that it is blamed as if it had run, so
/// that no input goes round forever.
pub(crate) const UNSTARTED_RETURNS: u32 = 3;
/// How long a worker that retired (reached its task quota) may take to
/// exit before it is killed: a task's leftover thread may hold it up.
pub(crate) const RETIRE_GRACE: Duration = Duration::from_secs(2);
/// How long reaping a killed worker may take before we give up on it: a
/// process in uninterruptible sleep is released only when the kernel lets
/// it go.
pub(crate) const REAP_BOUND: Duration = Duration::from_secs(5);
/// How long a launcher's helper command (`ssh HOST test -x`, a remote
/// kill, `scancel`) may run before it is killed: a host that accepts a
/// connection and then hangs (a stuck file system, say) must not hold a
/// pool's start, or leave helpers behind.
pub(crate) const HELPER_BOUND: Duration = Duration::from_secs(60);
/// Shipping the binary to a host may take [`HELPER_BOUND`] plus a second
/// per this many bytes (2 Mbit/s): a stalled upload ends, a slow link
/// still gets through.
pub(crate) const SHIP_BYTES_PER_SEC: u64 = 256 * 1024;
/// Helper commands a launcher runs at once (sshd drops connections that
/// come faster than it takes them, `MaxStartups`)...
pub(crate) const HELPERS_AT_ONCE: usize = 8;
/// ...and how long those still running when the pool shuts down may take
/// before they are killed: about one login, for the remote kill of the
/// workers the shutdown has just killed here.
pub(crate) const HELPERS_GRACE: Duration = Duration::from_secs(2);
/// ...or for `scancel`, how long: a step whose `srun` was killed may run
/// on until it is cancelled (its input held open by slurmstepd), so its
/// cancel gets one of `scancel`'s own timeouts (`MessageTimeout`, 10 s by
/// default) and more.
pub(crate) const SCANCEL_GRACE: Duration = Duration::from_secs(15);
/// The longest a pool's shutdown waits for its workers' last output to be
/// written to our stderr...
pub(crate) const FLUSH_BOUND: Duration = Duration::from_secs(1);
/// ...and it stops waiting when nothing was written for this long: our
/// stderr is stalled.
pub(crate) const STALLED: Duration = Duration::from_millis(250);

/// What a map knows when it cuts its next chunk.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ChunkContext {
    /// The user's `batch_size`, which overrides everything.
    pub batch_size: Option<u32>,
    /// Measured run time of one input of this map.
    pub per_item: Option<Duration>,
    /// The timeout of this map's inputs: its own
    /// ([`Pool::with_timeout`](crate::Pool::with_timeout)), else the
    /// pool's. A frame is answered as a whole within it.
    pub timeout: Option<Duration>,
    /// Inputs left, as far as the input iterator knows (0 if it does not).
    pub remaining: usize,
    pub processes: usize,
    /// The chunk size aimed at by the previous cut.
    pub last_target: u32,
}

/// Inputs in the next chunk.
pub(crate) fn chunk_items(c: &ChunkContext) -> u32 {
    if let Some(size) = c.batch_size {
        return size;
    }
    let Some(per_item) = c.per_item else {
        return 1;
    };
    // A frame runs as a whole against the timeout (the worker answers it
    // at its end), so keep it well inside the timeout.
    let target = match c.timeout {
        Some(timeout) => CHUNK_TARGET.min(timeout / 4),
        None => CHUNK_TARGET,
    };
    let per_item = per_item.as_nanos().max(1);
    let mut items = target.as_nanos() / per_item;
    if c.remaining > 0 {
        // Guided self-scheduling: a quarter of what is left per process.
        let spread = c.remaining as u128 / (4 * c.processes as u128);
        items = items.min(spread.max(MIN_CHUNK_WORK.as_nanos() / per_item));
    }
    // Growth is capped per fill of the window, which cuts a few chunks for
    // each process: twofold, or as many times as there are processes. (At
    // 256 processes, doubling from one input took most of a 1M map, in
    // frames that cost more than their work.)
    let growth = c.processes.max(2) as u128;
    items = items.min(growth * u128::from(c.last_target) + 1);
    u32::try_from(items)
        .unwrap_or(MAX_CHUNK_ITEMS)
        .clamp(1, MAX_CHUNK_ITEMS)
}

/// How far ahead a map pulls its inputs, in inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Window {
    /// Pulled beyond the last input yielded.
    pub span: usize,
    /// Handed to the pool and not yet answered.
    pub ahead: usize,
}

/// The window of a map cutting chunks of `chunk_items` inputs of about
/// `item_bytes` each (0 if unknown), whose inputs take `per_item`.
pub(crate) fn window(
    chunk_items: u32,
    item_bytes: usize,
    per_item: Option<Duration>,
    processes: usize,
) -> Window {
    let item_bytes = item_bytes.max(1);
    let per_chunk = (chunk_items as usize).min(CHUNK_BYTES / item_bytes).max(1);
    let for_work = |work: Duration| match per_item {
        Some(per_item) => (work.as_nanos() / per_item.as_nanos().max(1)) as usize * processes,
        None => 0,
    };
    // At least one input, however large, or the map would stall.
    let by_bytes = (WINDOW_BYTES / item_bytes).max(1);
    let tiny = per_item.is_some_and(|per_item| per_item < TINY_TASK);
    let frames = match per_item {
        None => (AHEAD_FRAMES * processes).min(UNMEASURED_FRAMES),
        Some(_) if tiny => TINY_TASK_FRAMES * processes,
        Some(_) => AHEAD_FRAMES * processes,
    };
    let ahead = (per_chunk * processes * AHEAD_CHUNKS + frames).min(by_bytes);
    let span = (for_work(WINDOW_WORK).max(per_chunk * processes * WINDOW_CHUNKS) + WINDOW_SLACK)
        .min(by_bytes);
    Window {
        span: span.max(ahead),
        ahead,
    }
}

/// Whether a worker with `frames` frames in flight and `backlog` of
/// estimated work gets another chunk.
pub(crate) fn wants_more(frames: usize, backlog: Duration) -> bool {
    frames == 0 || (frames < MAX_INFLIGHT_FRAMES && backlog < LOOKAHEAD)
}

/// Frames a worker may have in flight with the user's `batch_size`: one
/// with `batch_size(1)`, which asks for inputs to go one by one (so none
/// waits behind another), else as [`wants_more`] says.
pub(crate) fn frames_in_flight(batch_size: Option<u32>) -> usize {
    match batch_size {
        Some(1) => 1,
        _ => MAX_INFLIGHT_FRAMES,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_larger_than_the_window_still_go_one_at_a_time() {
        for item_bytes in [WINDOW_BYTES / 2 + 1, WINDOW_BYTES, 4 * WINDOW_BYTES] {
            let window = window(1, item_bytes, Some(Duration::from_millis(10)), 2);
            assert_eq!(window, Window { span: 1, ahead: 1 }, "{item_bytes} bytes");
        }
    }

    fn context() -> ChunkContext {
        ChunkContext {
            batch_size: None,
            per_item: Some(Duration::from_micros(1)),
            timeout: None,
            remaining: 0,
            processes: 2,
            last_target: MAX_CHUNK_ITEMS,
        }
    }

    #[test]
    fn a_batch_size_overrides_everything() {
        let c = ChunkContext {
            batch_size: Some(7),
            per_item: None,
            ..context()
        };
        assert_eq!(chunk_items(&c), 7);
    }

    #[test]
    fn one_input_per_chunk_until_measured() {
        let c = ChunkContext {
            per_item: None,
            ..context()
        };
        assert_eq!(chunk_items(&c), 1);
    }

    #[test]
    fn chunks_hold_the_target_work() {
        // 2 ms of 1 us inputs.
        assert_eq!(chunk_items(&context()), 2000);
        // Slow inputs go one by one.
        let slow = ChunkContext {
            per_item: Some(Duration::from_millis(50)),
            ..context()
        };
        assert_eq!(chunk_items(&slow), 1);
        // Tiny ones stop at the cap.
        let tiny = ChunkContext {
            per_item: Some(Duration::from_nanos(1)),
            ..context()
        };
        assert_eq!(chunk_items(&tiny), MAX_CHUNK_ITEMS);
    }

    #[test]
    fn a_chunk_stays_well_inside_the_timeout() {
        let c = ChunkContext {
            timeout: Some(Duration::from_millis(4)),
            ..context()
        };
        assert_eq!(chunk_items(&c), 1000);
    }

    #[test]
    fn chunks_grow_at_most_twofold() {
        let c = ChunkContext {
            last_target: 10,
            ..context()
        };
        assert_eq!(chunk_items(&c), 21);
    }

    #[test]
    fn chunks_shrink_towards_the_end() {
        let c = ChunkContext {
            per_item: Some(Duration::from_micros(10)),
            remaining: 800,
            ..context()
        };
        // A quarter of what is left per process...
        assert_eq!(chunk_items(&c), 100);
        let last = ChunkContext {
            per_item: Some(Duration::from_millis(1)),
            remaining: 3,
            ..context()
        };
        assert_eq!(chunk_items(&last), 1);
        // ...but no less than the least work worth a frame (25 inputs).
        let end = ChunkContext { remaining: 3, ..c };
        assert_eq!(chunk_items(&end), 25);
    }

    #[test]
    fn a_wide_pool_grows_its_chunks_as_many_times_as_it_has_processes() {
        let c = ChunkContext {
            per_item: Some(Duration::from_nanos(100)),
            processes: 256,
            last_target: 1,
            ..context()
        };
        assert_eq!(chunk_items(&c), 257);
        let c = ChunkContext {
            last_target: 257,
            ..c
        };
        // The target (2 ms of 100 ns inputs), within the cap.
        assert_eq!(chunk_items(&c), MAX_CHUNK_ITEMS);
        // Two processes: twofold, as ever.
        let narrow = ChunkContext {
            processes: 2,
            last_target: 257,
            ..c
        };
        assert_eq!(chunk_items(&narrow), 515);
    }

    #[test]
    fn a_wide_pool_still_cuts_chunks_worth_their_frame() {
        let c = ChunkContext {
            per_item: Some(Duration::from_nanos(100)),
            remaining: 1_000_000,
            processes: 256,
            ..context()
        };
        // Not 1,000,000 / (4 x 256) = 976: 250 us of work.
        assert_eq!(chunk_items(&c), 2500);
    }

    #[test]
    fn the_window_keeps_chunks_ahead_for_every_process() {
        let w = window(100, 8, Some(Duration::from_millis(1)), 2);
        assert_eq!(w.ahead, 100 * 2 * AHEAD_CHUNKS + AHEAD_FRAMES * 2);
        assert!(w.span >= w.ahead);
        assert_eq!(w.span, 100 * 2 * WINDOW_CHUNKS + WINDOW_SLACK);
        // Tiny tasks keep many more frames in the pool.
        let tiny = window(1, 8, Some(Duration::from_micros(1)), 2);
        assert_eq!(tiny.ahead, 2 * AHEAD_CHUNKS + TINY_TASK_FRAMES * 2);
        // 40 ms of 1 us inputs per process are pulled ahead.
        assert_eq!(tiny.span, 40_000 * 2 + WINDOW_SLACK);
    }

    #[test]
    fn a_wide_pool_keeps_few_unmeasured_inputs_ahead() {
        // Narrow pools: as many frames per process as ever.
        let w = window(1, 8, None, 2);
        assert_eq!(w.ahead, 2 * AHEAD_CHUNKS + 2 * AHEAD_FRAMES);
        // 256 processes: not 5,120 one-input frames.
        let w = window(1, 8, None, 256);
        assert_eq!(w.ahead, 256 * AHEAD_CHUNKS + UNMEASURED_FRAMES);
    }

    #[test]
    fn the_window_is_bounded_in_bytes() {
        let w = window(1, 16 << 20, None, 8);
        assert_eq!(w, Window { span: 4, ahead: 4 });
        let w = window(MAX_CHUNK_ITEMS, 1 << 20, Some(Duration::from_nanos(1)), 2);
        assert_eq!(w.ahead, WINDOW_BYTES >> 20);
        assert_eq!(w.span, w.ahead);
    }

    #[test]
    fn workers_take_work_while_their_backlog_is_short() {
        assert!(wants_more(0, Duration::from_secs(60)));
        assert!(wants_more(3, LOOKAHEAD - Duration::from_nanos(1)));
        assert!(!wants_more(3, LOOKAHEAD));
        assert!(!wants_more(MAX_INFLIGHT_FRAMES, Duration::ZERO));
    }

    #[test]
    fn one_input_at_a_time_until_measured_and_with_batch_size_one() {
        // An unmeasured input fills a worker's lookahead on its own.
        assert!(wants_more(0, UNKNOWN_ESTIMATE));
        assert!(!wants_more(1, UNKNOWN_ESTIMATE));
        assert_eq!(frames_in_flight(Some(1)), 1);
        assert_eq!(frames_in_flight(Some(2)), MAX_INFLIGHT_FRAMES);
        assert_eq!(frames_in_flight(None), MAX_INFLIGHT_FRAMES);
    }
}
