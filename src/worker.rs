//! The worker side: what a re-executed copy of the binary does instead of
//! `main`.
//!
//! A constructor in `lib.rs` calls [`serve_if_worker`] before `main` (and
//! before a test harness). In a process started by a pool it never returns:
//! it serves tasks until its request stream ends, then exits.
//!
//! Set-up, in order, and why:
//! - the hidden variables are removed, so that a task's own pools and
//!   subprocesses are ordinary processes;
//! - the request and reply streams move off fds 0 and 1 onto close-on-exec
//!   fds; fd 0 becomes `/dev/null` and fd 1 a copy of stderr. A task that
//!   prints, reads stdin or starts a subprocess can neither corrupt frames nor
//!   swallow requests, and no subprocess keeps the pipes open;
//! - SIGPIPE is ignored, as Rust's `main` would do;
//! - the worker asks for SIGKILL when its parent (the pool's thread) ends, and
//!   exits at once if that already happened;
//! - the memory limit, if any, is applied.
//!
//! Then a HELLO frame, and the loop: read a RUN frame, run its items in
//! order, and write their outcomes before reading the next frame. That write
//! is synchronous on purpose: if the next frame's task crashes or hangs, the
//! pool already holds every earlier outcome, so it knows exactly which frame
//! was running. (A frame of several inputs that crashes cannot be pinned on
//! one of them; the pool re-runs those inputs one per frame.)

use std::fs::File;
use std::io::{BufReader, Write};
use std::os::fd::OwnedFd;
use std::time::Instant;

use rustix::process::{Pid, Resource, Rlimit, Signal};

use crate::protocol::{self, Hello, Outcome, ReplyHeader};
use crate::registry::registry;

/// Marks a worker process; its value is [`WorkerConfig`], encoded.
pub(crate) const WORKER_ENV: &str = "__BUCKSHOT_WORKER";

/// Exit code of a worker that gave up on its parent or the protocol.
const EXIT_FATAL: i32 = 101;

/// What a pool tells a worker at spawn time, through [`WORKER_ENV`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WorkerConfig {
    /// The process expected as parent: if it is gone already, so is the pool.
    pub parent: u32,
    pub max_frame_bytes: u32,
    pub memory_limit: Option<u64>,
}

impl WorkerConfig {
    pub(crate) fn to_env(self) -> String {
        let memory = self.memory_limit.map_or(String::new(), |m| m.to_string());
        format!("{},{},{}", self.parent, self.max_frame_bytes, memory)
    }

    fn from_env(value: &str) -> Option<WorkerConfig> {
        let mut parts = value.split(',');
        let parent = parts.next()?.parse().ok()?;
        let max_frame_bytes = parts.next()?.parse().ok()?;
        let memory_limit = match parts.next()? {
            "" => None,
            m => Some(m.parse().ok()?),
        };
        Some(WorkerConfig {
            parent,
            max_frame_bytes,
            memory_limit,
        })
    }
}

/// Runs the worker loop if this process was started as a worker; otherwise
/// returns at once.
pub(crate) fn serve_if_worker() {
    let Some(value) = std::env::var_os(WORKER_ENV) else {
        return;
    };
    // SAFETY: this runs in a constructor before `main`. Rust's runtime starts
    // no thread before `main`, so unless another constructor of the program
    // started one that reads the environment (none of ours does), nothing
    // reads it concurrently.
    unsafe { std::env::remove_var(WORKER_ENV) };
    let Some(config) = value.to_str().and_then(WorkerConfig::from_env) else {
        fatal_early(&format!("bad {WORKER_ENV} value {value:?}"));
    };
    serve(config)
}

fn fatal_early(message: &str) -> ! {
    eprintln!("buckshot worker: {message}");
    std::process::exit(EXIT_FATAL)
}

fn serve(config: WorkerConfig) -> ! {
    let (requests, replies) = match take_stdio() {
        Ok(fds) => fds,
        Err(e) => fatal_early(&format!("could not set up its pipes: {e}")),
    };
    // SAFETY: `signal` with SIG_IGN installs no handler code; ignoring SIGPIPE
    // makes writes to a closed pipe fail with EPIPE instead of killing us.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    if let Err(e) = rustix::process::set_parent_process_death_signal(Some(Signal::KILL)) {
        fatal_early(&format!("could not set its parent-death signal: {e}"));
    }
    if rustix::process::getppid()
        .map(Pid::as_raw_nonzero)
        .map(|p| p.get() as u32)
        != Some(config.parent)
    {
        // The pool's process died before the death signal was armed.
        std::process::exit(EXIT_FATAL);
    }
    if let Some(limit) = config.memory_limit {
        let limit = Rlimit {
            current: Some(limit),
            maximum: Some(limit),
        };
        if let Err(e) = rustix::process::setrlimit(Resource::As, limit) {
            fatal_early(&format!("could not apply the memory limit: {e}"));
        }
    }

    // Last step of the set-up: the pool takes the handshake to mean that the
    // worker is ready, and starts the clock of its first task.
    let mut replies = File::from(replies);
    let registry = registry();
    let hello = Hello {
        version: protocol::VERSION,
        pid: std::process::id(),
        tasks: u32::try_from(registry.tasks.len()).expect("fewer than 4 billion tasks"),
        digest: registry.digest,
    };
    let mut body = Vec::new();
    protocol::encode(&hello, &mut body).expect("encoding into a Vec cannot fail");
    let mut frame = Vec::new();
    protocol::push_frame(&mut frame, protocol::HELLO, &body);
    if replies.write_all(&frame).is_err() {
        std::process::exit(EXIT_FATAL);
    }

    match run_tasks(File::from(requests), &mut replies, config.max_frame_bytes) {
        Ok(()) => std::process::exit(0),
        Err(message) => {
            // Best effort: the pool treats a vanished worker the same way.
            let mut frame = Vec::new();
            protocol::push_frame(&mut frame, protocol::FATAL, message.as_bytes());
            let _ = replies.write_all(&frame);
            fatal_early(&message)
        }
    }
}

/// Moves the request and reply pipes off fds 0 and 1 (close-on-exec, so that
/// subprocesses do not inherit them), then points fd 0 at `/dev/null` and
/// fd 1 at stderr.
fn take_stdio() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let requests = rustix::io::fcntl_dupfd_cloexec(rustix::stdio::stdin(), 3)?;
    let replies = rustix::io::fcntl_dupfd_cloexec(rustix::stdio::stdout(), 3)?;
    let null = File::open("/dev/null")?;
    rustix::stdio::dup2_stdin(&null)?;
    rustix::stdio::dup2_stdout(rustix::stdio::stderr())?;
    Ok((requests, replies))
}

/// Serves RUN frames until the stream ends (`Ok`) or breaks (`Err`).
fn run_tasks(requests: File, replies: &mut File, max_frame: u32) -> Result<(), String> {
    let registry = registry();
    let mut requests = BufReader::with_capacity(64 * 1024, requests);
    let mut body = Vec::new();
    let mut reply = Reply::new(max_frame as usize);
    let mut scratch = vec![0; 4096];
    loop {
        match protocol::read_frame(&mut requests, &mut body, max_frame) {
            Ok(true) => {}
            Ok(false) => return Ok(()),
            Err(e) => return Err(format!("could not read a request: {e}")),
        }
        if body[0] != protocol::RUN {
            return Err(format!("unexpected frame kind {}", body[0]));
        }
        let (task, first_seq, count, items) = protocol::parse_run(&body).map_err(|e| e.0)?;
        let Some(task) = registry.tasks.get(task as usize) else {
            return Err(format!("no task at position {task}"));
        };
        let mut seen = 0;
        reply.busy_since = Instant::now();
        for (seq, item) in (first_seq..).zip(protocol::Items::new(items)) {
            let item = item.map_err(|e| e.0)?;
            reply.add(seq, replies, |out| (task.run)(item, out, &mut scratch));
            seen += 1;
        }
        if seen != count {
            return Err(format!(
                "run frame holds {seen} items, its header says {count}"
            ));
        }
        reply.flush(replies);
        // A task's unfinished `print!` line would be lost if the worker were
        // killed later.
        let _ = std::io::stdout().flush();
    }
}

/// REPLY frames being assembled.
struct Reply {
    buf: Vec<u8>,
    first_seq: u64,
    count: u32,
    /// When the items of the frame being assembled started running.
    busy_since: Instant,
    max_frame: usize,
}

impl Reply {
    fn new(max_frame: usize) -> Reply {
        Reply {
            buf: vec![0; protocol::REPLY_HEADER],
            first_seq: 0,
            count: 0,
            busy_since: Instant::now(),
            max_frame,
        }
    }

    /// Adds the outcome of item `seq`, which `write` appends (straight into
    /// the frame: outputs can be large). Sends the items before it first if
    /// together they would pass the frame limit.
    fn add(&mut self, seq: u64, replies: &mut File, write: impl FnOnce(&mut Vec<u8>)) {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0; protocol::ITEM_LEN_BYTES]);
        write(&mut self.buf);
        let len = self.buf.len() - start - protocol::ITEM_LEN_BYTES;
        if protocol::REPLY_HEADER + protocol::ITEM_LEN_BYTES + len > self.max_frame {
            self.buf.truncate(start + protocol::ITEM_LEN_BYTES);
            let message = format!(
                "encode the output: {len} bytes is over the frame limit of {}",
                self.max_frame
            );
            protocol::encode_failure(&Outcome::<()>::Codec(message), &mut self.buf);
        }
        let len = self.buf.len() - start - protocol::ITEM_LEN_BYTES;
        let len32 = u32::try_from(len).expect("outcome under the frame limit");
        self.buf[start..start + protocol::ITEM_LEN_BYTES].copy_from_slice(&len32.to_le_bytes());
        if self.buf.len() > self.max_frame {
            let item = self.buf.split_off(start);
            self.flush(replies);
            self.buf.extend_from_slice(&item);
        }
        if self.count == 0 {
            self.first_seq = seq;
        }
        self.count += 1;
    }

    fn flush(&mut self, replies: &mut File) {
        if self.count == 0 {
            return;
        }
        let now = Instant::now();
        let busy = now.duration_since(self.busy_since);
        self.busy_since = now;
        let header = ReplyHeader {
            first_seq: self.first_seq,
            count: self.count,
            busy_nanos: u64::try_from(busy.as_nanos()).unwrap_or(u64::MAX),
        };
        protocol::write_reply_header(&mut self.buf, 0, header);
        if replies.write_all(&self.buf).is_err() {
            // The pool is gone: nobody wants the results.
            std::process::exit(0);
        }
        // Keep the buffer for frames of similar size, not after an outsized one.
        let used = self.buf.len();
        self.buf.truncate(protocol::REPLY_HEADER);
        if self.buf.capacity() > (4 * used).max(1 << 20) {
            self.buf.shrink_to(used);
        }
        self.count = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_round_trip() {
        for memory_limit in [None, Some(1 << 30)] {
            let config = WorkerConfig {
                parent: 42,
                max_frame_bytes: 1 << 20,
                memory_limit,
            };
            assert_eq!(WorkerConfig::from_env(&config.to_env()), Some(config));
        }
        assert_eq!(WorkerConfig::from_env("x,1,"), None);
    }
}
