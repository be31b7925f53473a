//! Workers' stderr: what is kept for error messages, and the copy to this
//! process's stderr or to the pool's callback, which must never block the
//! pool's thread.
//!
//! The pool's thread reads each worker's stderr pipe without blocking,
//! keeps the first few KiB written since the worker's last answer and the
//! last few KiB (an excerpt in whole lines explains a death: the first
//! line says what failed, the last ones where), and hands complete lines to one forwarding
//! thread per process, through a bounded queue. That thread alone writes to
//! our stderr, and may block there as long as it likes: when our stderr is
//! a pipe that nobody reads (a stalled log consumer, a full terminal), the
//! queue fills up and further worker output is dropped and counted, and
//! the forwarder says so with a marker line once it can write again. The
//! pool's thread never waits for our stderr, so timeouts, results and
//! shutdown go on. (Making fd 2 non-blocking instead would change it for
//! the whole program.)
//!
//! Lines are forwarded whole, so that the output of workers writing at the
//! same time is interleaved by line, not by pipe read.
//!
//! A pool built with a callback for those lines
//! ([`PoolBuilder::on_worker_stderr`](crate::PoolBuilder::on_worker_stderr))
//! has a forwarder of its own, the same queue with a thread that calls the
//! callback once per line instead of writing to our stderr: a callback that
//! blocks holds up that thread alone, as a stalled stderr does, and never
//! the pool's thread or its lock. A callback gets whole lines only: the
//! start of a line waits for its end (or for the worker's end), where our
//! stderr gets it as soon as the worker pauses.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use rustix::io::Errno;

use crate::flow::{
    FLUSH_BOUND, STALLED, STDERR_HEAD, STDERR_LINE, STDERR_QUEUE, STDERR_READ, STDERR_READS,
    STDERR_TAIL,
};

/// What a pool does with each line its workers write to stderr.
pub(crate) type LineCallback = Arc<dyn Fn(&str) + Send + Sync + 'static>;

/// Where the lines workers write to stderr go.
#[derive(Clone, Default)]
pub(crate) enum Route {
    /// Nowhere: only the excerpts are kept.
    Off,
    /// This process's stderr, through the one forwarder of the process.
    #[default]
    Stderr,
    /// The pool's callback, through the pool's own forwarder.
    Callback(Arc<LineSink>),
}

impl fmt::Debug for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Route::Off => "Off",
            Route::Stderr => "Stderr",
            Route::Callback(_) => "Callback",
        })
    }
}

impl Route {
    /// The route of a pool that forwards (or not) to `callback` (or to our
    /// stderr); starts the thread that calls the callback.
    pub(crate) fn new(forward: bool, callback: Option<LineCallback>) -> io::Result<Route> {
        Ok(match (forward, callback) {
            (false, _) => Route::Off,
            (true, None) => Route::Stderr,
            (true, Some(callback)) => Route::Callback(Arc::new(LineSink::start(callback)?)),
        })
    }

    fn push(&self, bytes: &[u8]) {
        match self {
            Route::Off => {}
            Route::Stderr => forwarder().push(bytes),
            Route::Callback(sink) => sink.forwarder.push(bytes),
        }
    }

    /// Whether the start of a line goes as soon as the worker pauses (to a
    /// terminal, where a line redrawn with `\r` shows as it is drawn), or
    /// waits for its end (to a callback, which gets lines).
    fn sends_line_starts(&self) -> bool {
        matches!(self, Route::Stderr)
    }

    /// Waits until the lines forwarded so far are written (or given to the
    /// callback), while that makes progress, and for at most
    /// [`FLUSH_BOUND`]. Called when a pool shuts down, so that what its
    /// workers wrote last is not lost when the program exits right after.
    pub(crate) fn flush(&self) {
        match self {
            Route::Off => {}
            Route::Stderr => {
                if let Some(forwarder) = FORWARDER.get() {
                    forwarder.flush(FLUSH_BOUND);
                }
            }
            Route::Callback(sink) => sink.forwarder.flush(FLUSH_BOUND),
        }
    }
}

/// A pool's forwarder to its callback. Its thread ends once this is dropped
/// (with the last of the pool's workers) and the queue is empty, or never,
/// if the callback never returns.
pub(crate) struct LineSink {
    forwarder: Arc<Forwarder>,
}

impl LineSink {
    fn start(callback: LineCallback) -> io::Result<LineSink> {
        let forwarder = Arc::new(Forwarder::new(Output::Callback(callback)));
        let running = Arc::clone(&forwarder);
        std::thread::Builder::new()
            .name("buckshot-stderr-lines".into())
            .spawn(move || running.run())?;
        Ok(LineSink { forwarder })
    }
}

impl Drop for LineSink {
    fn drop(&mut self) {
        self.forwarder.lock().closed = true;
        self.forwarder.changed.notify_all();
    }
}

/// The read end of one worker's stderr.
#[derive(Debug)]
pub(crate) struct StderrPipe {
    /// `None` once closed ([`StderrPipe::close`]).
    fd: Option<OwnedFd>,
    /// End of stream was seen. The descriptor stays open until closed: the
    /// pool's thread takes it out of its epoll set first.
    ended: bool,
    route: Route,
    /// The last bytes read, at most twice [`STDERR_TAIL`].
    tail: Vec<u8>,
    /// The first bytes read since the mark, at most [`STDERR_HEAD`].
    head: Vec<u8>,
    /// Bytes read in all, and where the input now running began: its
    /// worker's death is explained by what came after.
    total: u64,
    mark: u64,
    /// The start of a line not yet forwarded.
    line: Vec<u8>,
}

impl StderrPipe {
    pub(crate) fn new(fd: OwnedFd, route: Route) -> StderrPipe {
        StderrPipe {
            fd: Some(fd),
            ended: false,
            route,
            tail: Vec::new(),
            head: Vec::new(),
            total: 0,
            mark: 0,
            line: Vec::new(),
        }
    }

    pub(crate) fn set_nonblocking(&self) -> std::io::Result<()> {
        if let Some(fd) = &self.fd {
            rustix::fs::fcntl_setfl(fd, rustix::fs::OFlags::NONBLOCK)?;
        }
        Ok(())
    }

    /// The descriptor, until closed.
    pub(crate) fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.fd.as_ref().map(AsFd::as_fd)
    }

    /// Whether the stream ended (and the descriptor is to be closed).
    pub(crate) fn ended(&self) -> bool {
        self.ended
    }

    /// Closes the descriptor.
    pub(crate) fn close(&mut self) {
        self.fd = None;
    }

    /// Reads what the worker wrote (at most [`STDERR_READS`] per call),
    /// keeps the tail and forwards complete lines, and to our stderr the
    /// start of a line once the worker pauses (a progress bar redrawn with
    /// `\r` shows as it is drawn). Never blocks.
    pub(crate) fn pump(&mut self) {
        let mut buf = [0u8; STDERR_READ];
        let mut read = 0;
        while read < STDERR_READS && !self.ended {
            let Some(fd) = &self.fd else { return };
            match rustix::io::read(fd, &mut buf) {
                Ok(0) => {
                    self.ended = true;
                    self.flush_line();
                    return;
                }
                Ok(n) => {
                    read += n;
                    self.take(&buf[..n]);
                }
                Err(Errno::INTR) => {}
                // Nothing more for now.
                Err(Errno::AGAIN) => {
                    if self.route.sends_line_starts() {
                        self.flush_line();
                    }
                    return;
                }
                Err(_) => {
                    self.flush_line();
                    return;
                }
            }
        }
    }

    fn take(&mut self, bytes: &[u8]) {
        self.total += bytes.len() as u64;
        let room = STDERR_HEAD.saturating_sub(self.head.len());
        self.head.extend_from_slice(&bytes[..bytes.len().min(room)]);
        self.tail.extend_from_slice(bytes);
        if self.tail.len() > 2 * STDERR_TAIL {
            let cut = self.tail.len() - STDERR_TAIL;
            self.tail.drain(..cut);
        }
        if matches!(self.route, Route::Off) {
            return;
        }
        self.line.extend_from_slice(bytes);
        let whole = match self.line.iter().rposition(|&b| b == b'\n') {
            Some(newline) => newline + 1,
            None if self.line.len() > STDERR_LINE => self.line.len(),
            None => return,
        };
        self.route.push(&self.line[..whole]);
        self.line.drain(..whole);
    }

    /// Forwards an unfinished last line, if any.
    pub(crate) fn flush_line(&mut self) {
        if !self.line.is_empty() {
            self.route.push(&self.line);
            self.line.clear();
        }
    }

    /// The worker answered an input: what was read so far belongs to
    /// inputs that are done. What is still in the pipe may be from before
    /// the answer or after it; it counts as after, so that the output of
    /// an input that dies next is never lost (the loop reads replies before
    /// stderr in each turn).
    pub(crate) fn mark(&mut self) {
        self.mark = self.total;
        self.head.clear();
    }

    /// What the worker wrote since the last [`mark`]: what the input it
    /// was running wrote (a worker that says nothing before it dies is not
    /// labelled with an earlier input's output). All of it if it is short;
    /// else its first [`STDERR_HEAD`] and last [`STDERR_TAIL`] bytes, in
    /// whole lines, with a line that says how much was left out between
    /// them.
    ///
    /// [`mark`]: StderrPipe::mark
    pub(crate) fn excerpt(&self) -> String {
        let since = usize::try_from(self.total - self.mark).unwrap_or(usize::MAX);
        let recent = &self.tail[self.tail.len() - since.min(self.tail.len()).min(STDERR_TAIL)..];
        let head = &self.head[..];
        if head.len() + recent.len() >= since {
            // Nothing left out: the two overlap or meet.
            let overlap = head.len() + recent.len() - since;
            let mut whole = head.to_vec();
            whole.extend_from_slice(&recent[overlap..]);
            return String::from_utf8_lossy(&whole).into_owned();
        }
        // The head ends after its last whole line (or is one line's
        // start), the rest starts at its first whole line.
        let head = match head.iter().rposition(|&b| b == b'\n') {
            Some(newline) => &head[..=newline],
            None => head,
        };
        let recent = match recent.iter().position(|&b| b == b'\n') {
            Some(newline) => &recent[newline + 1..],
            None => &[],
        };
        let left_out = (since - head.len() - recent.len()) as u64;
        format!(
            "{}{}{}",
            String::from_utf8_lossy(head),
            left_out_line(left_out),
            String::from_utf8_lossy(recent)
        )
    }
}

impl Drop for StderrPipe {
    /// What the worker wrote last is forwarded, even without its newline.
    fn drop(&mut self) {
        self.flush_line();
    }
}

/// The line that stands for `bytes` of a worker's stderr left out of an
/// excerpt.
pub(crate) fn left_out_line(bytes: u64) -> String {
    format!("[buckshot: {} left out]\n", human_bytes(bytes))
}

/// Writes a line of our own to stderr through the forwarder: never blocks
/// (and is dropped, and counted, if our stderr is stalled).
pub(crate) fn report(line: &str) {
    forwarder().push(format!("{line}\n").as_bytes());
}

static FORWARDER: OnceLock<Forwarder> = OnceLock::new();

fn forwarder() -> &'static Forwarder {
    FORWARDER.get_or_init(|| {
        let started = std::thread::Builder::new()
            .name("buckshot-stderr".into())
            .spawn(|| forwarder().run());
        let forwarder = Forwarder::new(Output::Stderr);
        if started.is_err() {
            forwarder.lock().no_thread = true;
        }
        forwarder
    })
}

/// Where a forwarder's thread puts what it takes from its queue.
enum Output {
    /// Written to our stderr as it is.
    Stderr,
    /// Cut into lines, each given to the callback without its newline.
    Callback(LineCallback),
}

/// A thread that writes workers' output somewhere it may block, and its
/// queue: the one of the process, to our stderr, and one for each pool
/// with a callback.
struct Forwarder {
    queue: Mutex<Queue>,
    /// Signalled when there is something to write, and when something was
    /// written.
    changed: Condvar,
    output: Output,
}

#[derive(Default)]
struct Queue {
    pieces: VecDeque<Vec<u8>>,
    bytes: usize,
    /// Bytes dropped since the last marker.
    dropped: u64,
    /// Bytes ever queued and ever written (or failed to write), to know
    /// when a flush is done.
    queued_total: u64,
    written_total: u64,
    /// The thread could not be started: drop everything.
    no_thread: bool,
    /// Nothing more will be queued: the thread ends once the queue is
    /// empty.
    closed: bool,
}

impl Queue {
    fn push(&mut self, bytes: Vec<u8>) {
        self.queued_total += bytes.len() as u64;
        self.bytes += bytes.len();
        self.pieces.push_back(bytes);
    }

    /// Queues the marker for dropped output, if any was dropped.
    fn push_marker(&mut self) {
        if self.dropped > 0 {
            let marker = format!(
                "[buckshot: {} of worker stderr dropped]\n",
                human_bytes(self.dropped)
            );
            self.dropped = 0;
            self.push(marker.into_bytes());
        }
    }
}

impl Forwarder {
    fn new(output: Output) -> Forwarder {
        Forwarder {
            queue: Mutex::new(Queue::default()),
            changed: Condvar::new(),
            output,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `bytes` if there is room, or counts them as dropped. Never
    /// blocks for longer than the lock is held, which is never during a
    /// write.
    fn push(&self, bytes: &[u8]) {
        let mut queue = self.lock();
        if queue.no_thread || queue.bytes + bytes.len() > STDERR_QUEUE {
            queue.dropped += bytes.len() as u64;
            return;
        }
        queue.push_marker();
        queue.push(bytes.to_vec());
        drop(queue);
        self.changed.notify_all();
    }

    fn flush(&self, bound: Duration) {
        let deadline = Instant::now() + bound;
        let mut queue = self.lock();
        queue.push_marker();
        self.changed.notify_all();
        let target = queue.queued_total;
        let mut last = (queue.written_total, Instant::now());
        while queue.written_total < target && !queue.no_thread {
            let now = Instant::now();
            if queue.written_total != last.0 {
                last = (queue.written_total, now);
            }
            let stalled_at = last.1 + STALLED;
            if now >= deadline || now >= stalled_at {
                return;
            }
            let wait = deadline.min(stalled_at) - now;
            queue = self
                .changed
                .wait_timeout(queue, wait)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// The forwarder's thread: takes each piece from the queue and puts
    /// it out, outside the lock.
    fn run(&self) {
        let mut queue = self.lock();
        loop {
            let Some(piece) = queue.pieces.pop_front() else {
                if queue.closed {
                    return;
                }
                queue = self.changed.wait(queue).unwrap_or_else(|e| e.into_inner());
                continue;
            };
            drop(queue);
            self.put_out(&piece);
            queue = self.lock();
            queue.bytes -= piece.len();
            queue.written_total += piece.len() as u64;
            self.changed.notify_all();
        }
    }

    fn put_out(&self, piece: &[u8]) {
        match &self.output {
            // Blocks as long as our stderr does; errors (a closed stderr)
            // drop the piece.
            Output::Stderr => {
                let _ = io::stderr().lock().write_all(piece);
            }
            // As long as the callback does. One that panics loses that
            // line alone (the panic hook has said so).
            Output::Callback(callback) => {
                for line in lines(piece) {
                    let line = String::from_utf8_lossy(line);
                    let _ = std::panic::catch_unwind(AssertUnwindSafe(|| callback(&line)));
                }
            }
        }
    }
}

/// The lines of a piece of output, without their newlines: a piece holds
/// whole lines, or ends with the start of a line (one that was too long,
/// or the worker's last, unfinished one).
fn lines(piece: &[u8]) -> impl Iterator<Item = &[u8]> {
    let piece = piece.strip_suffix(b"\n").unwrap_or(piece);
    piece.split(|&b| b == b'\n')
}

/// `512 bytes`, `3.4 KiB`, `1.2 MiB`, `2.0 GiB`.
pub(crate) fn human_bytes(bytes: u64) -> String {
    const KIB: f64 = 1024.0;
    let b = bytes as f64;
    if b < KIB {
        format!("{bytes} bytes")
    } else if b < KIB * KIB {
        format!("{:.1} KiB", b / KIB)
    } else if b < KIB * KIB * KIB {
        format!("{:.1} MiB", b / (KIB * KIB))
    } else {
        format!("{:.1} GiB", b / (KIB * KIB * KIB))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_plainly() {
        assert_eq!(human_bytes(512), "512 bytes");
        assert_eq!(human_bytes(3482), "3.4 KiB");
        assert_eq!(human_bytes(1_258_291), "1.2 MiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    }

    #[test]
    fn a_full_queue_drops_and_then_says_so() {
        let mut queue = Queue {
            dropped: 2048,
            ..Queue::default()
        };
        queue.push_marker();
        assert_eq!(queue.dropped, 0);
        let marker = queue.pieces.pop_front().unwrap();
        assert_eq!(marker, b"[buckshot: 2.0 KiB of worker stderr dropped]\n");
        queue.push_marker();
        assert!(queue.pieces.is_empty(), "a marker only after a drop");
    }

    #[test]
    fn a_piece_is_cut_into_lines_without_their_newlines() {
        fn cut(piece: &[u8]) -> Vec<&[u8]> {
            lines(piece).collect()
        }
        assert_eq!(cut(b"one\ntwo\n"), [&b"one"[..], b"two"]);
        assert_eq!(cut(b"\n"), [b""]);
        assert_eq!(cut(b"a\n\nb\n"), [&b"a"[..], b"", b"b"]);
        // A line's start: the worker's unfinished last line, or a piece of
        // a long one.
        assert_eq!(cut(b"no newline"), [b"no newline"]);
    }

    /// A pipe that has read `chunks` in turn.
    fn pipe_that_read(chunks: &[&[u8]]) -> StderrPipe {
        let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::NONBLOCK).unwrap();
        let mut pipe = StderrPipe::new(read, Route::Off);
        for chunk in chunks {
            rustix::io::write(&write, chunk).unwrap();
            pipe.pump();
        }
        drop(write);
        pipe.pump();
        assert!(pipe.ended(), "end of stream seen");
        pipe
    }

    #[test]
    fn a_short_stderr_is_kept_whole() {
        let pipe = pipe_that_read(&[b"warming up\n", b"memory allocation of 8 bytes failed\n"]);
        assert_eq!(
            pipe.excerpt(),
            "warming up\nmemory allocation of 8 bytes failed\n"
        );
        // Up to a head and a tail that just meet: nothing left out.
        let head = vec![b'h'; STDERR_HEAD];
        let tail = vec![b't'; STDERR_TAIL];
        let pipe = pipe_that_read(&[&head, &tail]);
        assert_eq!(
            pipe.excerpt(),
            format!("{}{}", "h".repeat(STDERR_HEAD), "t".repeat(STDERR_TAIL))
        );
    }

    #[test]
    fn a_long_stderr_keeps_its_first_and_last_lines_whole() {
        // The cause first, then a backtrace of many lines.
        let mut text = String::from("memory allocation of 2147483648 bytes failed\n");
        for k in 0..400 {
            text.push_str(&format!(
                "  {k:>3}: alloc::raw_vec::RawVecInner<A>::with_capacity_in\n"
            ));
        }
        let pipe = pipe_that_read(&[text.as_bytes()]);
        let excerpt = pipe.excerpt();
        let lines: Vec<&str> = excerpt.lines().collect();
        assert_eq!(lines[0], "memory allocation of 2147483648 bytes failed");
        // Every line is whole, and the last one is there.
        let frame =
            |line: &str| line.ends_with(": alloc::raw_vec::RawVecInner<A>::with_capacity_in");
        let marker = lines
            .iter()
            .position(|line| line.starts_with("[buckshot: "))
            .unwrap();
        assert!(lines[1..marker].iter().all(|line| frame(line)), "{excerpt}");
        assert!(
            lines[marker + 1..].iter().all(|line| frame(line)),
            "{excerpt}"
        );
        assert_eq!(
            lines.last(),
            Some(&"  399: alloc::raw_vec::RawVecInner<A>::with_capacity_in")
        );
        let kept: usize = lines
            .iter()
            .filter(|line| frame(line))
            .map(|line| line.len() + 1)
            .sum();
        let left_out = text.len() - lines[0].len() - 1 - kept;
        assert_eq!(lines[marker], left_out_line(left_out as u64).trim_end());
        assert!(excerpt.len() <= STDERR_HEAD + STDERR_TAIL + 64);
    }

    #[test]
    fn a_line_cut_by_the_excerpt_is_left_out_whole() {
        let pipe = pipe_that_read(&[b"cause\n", &[b'x'; 4 * STDERR_TAIL]]);
        let left_out = 4 * STDERR_TAIL as u64;
        assert_eq!(
            pipe.excerpt(),
            format!("cause\n{}", left_out_line(left_out))
        );
        // A first line longer than the head shows as its start.
        let pipe = pipe_that_read(&[&[b'y'; 4 * STDERR_HEAD], b"\nlast\n"]);
        let left_out = 3 * STDERR_HEAD as u64 + 1;
        assert_eq!(
            pipe.excerpt(),
            format!(
                "{}{}last\n",
                "y".repeat(STDERR_HEAD),
                left_out_line(left_out)
            )
        );
    }

    #[test]
    fn the_excerpt_starts_at_the_mark() {
        let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::NONBLOCK).unwrap();
        let mut pipe = StderrPipe::new(read, Route::Off);
        rustix::io::write(&write, b"an earlier input's panic\n").unwrap();
        pipe.pump();
        pipe.mark();
        assert_eq!(pipe.excerpt(), "");
        rustix::io::write(&write, b"about to abort\n").unwrap();
        pipe.pump();
        assert_eq!(pipe.excerpt(), "about to abort\n");
        for _ in 0..4 {
            rustix::io::write(&write, &[b'a'; STDERR_TAIL]).unwrap();
            pipe.pump();
        }
        let left_out = left_out_line(4 * STDERR_TAIL as u64);
        assert_eq!(pipe.excerpt(), format!("about to abort\n{left_out}"));
        // A mark drops the head too.
        pipe.mark();
        rustix::io::write(&write, b"next\n").unwrap();
        pipe.pump();
        assert_eq!(pipe.excerpt(), "next\n");
    }
}
