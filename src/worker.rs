//! The worker side: what a re-executed copy of the binary does instead of
//! `main`.
//!
//! The constructor in `lib.rs` calls [`serve_from`] through
//! [`crate::entry`] before `main` (and before a test harness), in a process
//! started by a pool, and not in a privileged one. It never returns: it
//! serves tasks until its request stream ends, then exits, taking what its
//! tasks started along (it kills its own process group).
//!
//! Set-up, in order, and why:
//! - the hidden variables are removed, so that a task's own pools and
//!   subprocesses are ordinary processes;
//! - the request and reply streams move off fds 0 and 1 onto close-on-exec
//!   fds; fd 0 becomes `/dev/null` and fd 1 a copy of stderr. A task that
//!   prints, reads stdin or starts a subprocess can neither corrupt frames nor
//!   swallow requests, and no subprocess keeps the pipes open;
//! - every other descriptor it inherited is closed (the program's sockets
//!   and files that lack close-on-exec: see [`crate::inherit`]);
//! - SIGPIPE is ignored, as Rust's `main` would do;
//! - the sandbox, if the pool asked for one, while this is the only thread
//!   ([`crate::sandbox::apply`]); the handshake says which rules came up,
//!   and a worker short of one exits right after it;
//! - a worker that is the pool's child asks for a signal when its parent
//!   (the pool's thread) ends,
//!   whose handler kills its whole process group (itself and what its tasks
//!   started), and exits at once if that already happened (when its parent
//!   is the pool's process: a launcher may start it elsewhere);
//! - the watchdog that ends the worker with its request stream, unless
//!   the parent-death signal is armed (see [`watch_requests`]);
//! - the memory limit, if any, is applied (`RLIMIT_DATA`, after the
//!   watchdog's stack), or refused in the handshake if the worker could
//!   not even start under it;
//! - the pool's initializer, if it has one, runs: after the rest of the
//!   set-up (under the sandbox and the memory limit), and before the
//!   handshake, so that the pool starts no task's clock while it runs. One
//!   that panics or exits ends the worker before its handshake, saying so
//!   on stderr: the pool counts it as a worker that failed to start;
//! - after the handshake: the subscriber that sends tasks' events to the
//!   pool (if it wants them), and the panic hook that notes where a task
//!   panicked.
//!
//! Then a HELLO frame, and the loop: read a RUN frame, run its items in
//! order, and write their outcomes before reading the next frame. That write
//! is synchronous on purpose: if the next frame's task crashes or hangs, the
//! pool already holds every earlier outcome, so it knows exactly which frame
//! was running. (A frame of several inputs that crashes cannot be pinned on
//! one of them; the pool re-runs those inputs one per frame.) Requests are
//! read through a buffer, which takes several queued frames out of the pipe
//! at once: the pool counts a frame that left the pipe as started, unless
//! the worker retires by itself (under a CPU limit, see
//! [`crate::sandbox::cpu`], or when its resident memory is over the pool's
//! `max_worker_rss`), which it says with a RETIRED frame right after the
//! replies of the frame it ran last.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::File;
use std::io::{BufReader, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Rlimit};

use crate::flow::{KEEP_BUFFER, REQUEST_BUFFER, RSS_READ_INTERVAL, SCRATCH_BYTES};
use crate::handoff::{TaskRef, WORKER_ENV, WorkerConfig};
use crate::inherit;
use crate::logs;
use crate::panics;
use crate::protocol::{self, Hello, Outcome, ReplyHeader, RunHeader};
use crate::registry::{ContextSlot, registry};
use crate::sandbox::{self, SANDBOX_ENV, Sandbox, cpu};
use crate::sys;

/// Exit code of a worker that gave up on its parent or the protocol, or
/// refused to serve.
pub(crate) const EXIT_FATAL: i32 = 101;

/// Runs the worker loop, set up as `value` (the worker variable) says, and
/// exits. Called before `main` ([`crate::entry`]).
pub(crate) fn serve_from(value: OsString) -> ! {
    // SAFETY: this runs in a constructor before `main`. Rust's runtime starts
    // no thread before `main`, so unless another constructor of the program
    // started one that reads the environment (none of ours does), nothing
    // reads it concurrently.
    unsafe { std::env::remove_var(WORKER_ENV) };
    let sandbox = std::env::var_os(SANDBOX_ENV);
    // SAFETY: as above.
    unsafe { std::env::remove_var(SANDBOX_ENV) };
    let Some(config) = value.to_str().and_then(WorkerConfig::from_env) else {
        fatal_early(&format!("bad {WORKER_ENV} value {value:?}"));
    };
    let sandbox = sandbox.map(|value| {
        value
            .to_str()
            .and_then(Sandbox::from_env)
            .unwrap_or_else(|| fatal_early(&format!("bad {SANDBOX_ENV} value {value:?}")))
    });
    serve(config, sandbox)
}

/// The Slurm job step this process runs as, `JOB.STEP`, if it does.
fn slurm_step() -> Option<String> {
    let job = std::env::var("SLURM_JOB_ID").ok()?;
    let step = std::env::var("SLURM_STEP_ID").ok()?;
    Some(format!("{job}.{step}"))
}

fn fatal_early(message: &str) -> ! {
    eprintln!("buckshot worker: {message}");
    drain_stderr();
    std::process::exit(EXIT_FATAL)
}

fn serve(config: WorkerConfig, sandbox: Option<Sandbox>) -> ! {
    let (requests, replies) = match take_stdio() {
        Ok(fds) => fds,
        Err(e) => fatal_early(&format!("could not set up its pipes: {e}")),
    };
    // Before anything else opens one: what is left was inherited.
    if let Err(e) = inherit::close_all_but(&[requests.as_raw_fd(), replies.as_raw_fd()]) {
        fatal_early(&format!("could not close inherited descriptors: {e}"));
    }
    if config.parent.is_none() {
        if let Err(e) = interpose_stderr() {
            fatal_early(&format!("could not set up its stderr: {e}"));
        }
    }
    // SAFETY: `signal` with SIG_IGN installs no handler code; ignoring SIGPIPE
    // makes writes to a closed pipe fail with EPIPE instead of killing us.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    // Opened before the sandbox, which may hide `/proc`: what the memory
    // limit is checked against.
    let status = config.memory_limit.and_then(|_| sys::open_memory_status());
    let rss_guard = config.max_rss.map(|max| {
        RssGuard::open(max)
            .unwrap_or_else(|e| fatal_early(&format!("could not read its resident memory: {e}")))
    });
    // While this is the only thread, before the parent-death signal (which
    // a change of credentials could clear).
    let applied = sandbox.as_ref().map(sandbox::apply::apply);
    // Only a child of the pool's process: the parent of a worker started
    // through a launcher (sshd, slurmstepd, a relay) says nothing about the
    // pool, which the watchdog on the request stream follows instead.
    let death_signal = config.parent.is_some()
        && sys::arm_parent_death(kill_own_group).unwrap_or_else(|e| {
            fatal_early(&format!("could not set its parent-death signal: {e}"))
        });
    let parent = rustix::process::getppid()
        .map(Pid::as_raw_nonzero)
        .map(|p| p.get() as u32);
    if config
        .parent
        .is_some_and(|expected| parent != Some(expected))
    {
        // The pool's process died before the death signal was armed.
        std::process::exit(EXIT_FATAL);
    }
    if let (Some(pool), Some(slot)) = (config.parent, config.reply_slot) {
        crate::bulk::serve(pool, slot, u64::from(config.max_frame_bytes));
    }
    // Before the memory limit: a thread's stack counts against it.
    if !death_signal {
        if let Err(e) = watch_requests(&requests) {
            fatal_early(&format!("could not watch its request stream: {e}"));
        }
    }
    let refused = config
        .memory_limit
        .and_then(|limit| limit_memory(limit, status));
    // Only in a worker that will serve: one short of a sandbox rule or
    // refused by its memory limit exits right after its handshake.
    let serves = refused.is_none() && applied.as_ref().is_none_or(|a| a.problems.is_empty());
    if let (true, Some(task)) = (serves, config.initializer) {
        initialize(task);
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
        step: slurm_step(),
        sandbox: applied.as_ref().map_or(0, |applied| applied.in_force.0),
        sandbox_problem: applied
            .as_ref()
            .and_then(|applied| applied.problems.first())
            .map(|(_, why)| why.clone()),
        refused: refused.clone(),
    };
    let mut body = Vec::new();
    protocol::encode(&hello, &mut body).expect("encoding into a Vec cannot fail");
    let mut frame = Vec::new();
    protocol::push_frame(&mut frame, protocol::HELLO, &body);
    if replies.write_all(&frame).is_err() {
        std::process::exit(EXIT_FATAL);
    }
    // The pool refuses it (it said so in the handshake); it serves nothing.
    if let Some((rule, why)) = applied.as_ref().and_then(|a| a.problems.first()) {
        fatal_early(&format!("sandbox rule {rule} did not come up: {why}"));
    }
    if let Some(why) = refused {
        fatal_early(&why);
    }

    // Shared with the subscriber that sends tasks' events, which any
    // thread may emit.
    let replies = Arc::new(Mutex::new(replies));
    logs::capture::install(
        logs::filter_from_number(config.log_level),
        Arc::clone(&replies),
    );
    panics::install_hook(config.backtraces, {
        let replies = Arc::clone(&replies);
        move |report| announce_panic(report, &replies)
    });

    // Last, once the worker's own threads run: it counts them.
    let cpu_guard = match (
        sandbox.as_ref().and_then(Sandbox::cpu_seconds),
        applied.and_then(|applied| applied.tasks),
    ) {
        (Some(seconds), Some(tasks)) => match cpu::Guard::new(tasks, seconds) {
            Ok(guard) => Some(guard),
            Err(e) => fatal_early(&format!("could not count its threads: {e}")),
        },
        _ => None,
    };
    match run_tasks(
        File::from(requests),
        &replies,
        config.max_frame_bytes,
        Retirement {
            cpu: cpu_guard,
            rss: rss_guard,
        },
        config.backtraces,
    ) {
        Ok(()) => end_with_group(),
        Err(message) => {
            // Best effort: the pool treats a vanished worker the same way.
            let mut frame = Vec::new();
            protocol::push_frame(&mut frame, protocol::FATAL, message.as_bytes());
            let _ = lock(&replies).write_all(&frame);
            fatal_early(&message)
        }
    }
}

/// Applies the pool's memory limit to the data this process may map
/// ([`sys::MEMORY_RESOURCE`]: on Linux `RLIMIT_DATA`: heap, anonymous and
/// private writable mappings, thread stacks), unless it is below what the
/// worker already uses plus
/// [`START_ROOM`]: then it is left unapplied, and the reason returned (the
/// worker refuses to serve, and the pool gives up naming the limit).
///
/// `RLIMIT_DATA` rather than `RLIMIT_AS`: the address space counts what is
/// reserved, not used. glibc reserves 64 MiB of it for each malloc arena,
/// up to 8 per core, so a task of 64 threads that each allocated 100 KB
/// needed a limit of 2 GiB there, and 256 MiB here (each Rust thread's
/// stack, 2 MiB, counts in full in both).
fn limit_memory(limit: u64, status: Option<File>) -> Option<String> {
    if let Some(in_use) = status.and_then(sys::memory_in_use) {
        if limit < in_use + START_ROOM {
            return Some(format!(
                "memory_limit of {} is below what a worker needs to start: \
                 {} of data in use before its first task, and {} of room",
                crate::stderr::human_bytes(limit),
                crate::stderr::human_bytes(in_use),
                crate::stderr::human_bytes(START_ROOM),
            ));
        }
    }
    let Some(resource) = sys::MEMORY_RESOURCE else {
        // The pool refuses the limit where it cannot be applied.
        return Some(format!(
            "memory_limit is not enforced on {}",
            sys::platform()
        ));
    };
    let limit = Rlimit {
        current: Some(limit),
        maximum: Some(limit),
    };
    if let Err(e) = rustix::process::setrlimit(resource, limit) {
        fatal_early(&format!("could not apply the memory limit: {e}"));
    }
    None
}

/// What a worker needs besides the data it holds when its set-up is done:
/// buffers for its first frames and replies, with room to spare.
const START_ROOM: u64 = 1 << 20;

/// The initializer this worker runs, while it runs: what an `exit` in it
/// says ([`exited_in_initializer`]).
static INITIALIZING: OnceLock<&'static str> = OnceLock::new();
static IN_INITIALIZER: AtomicBool = AtomicBool::new(false);

/// Runs the pool's initializer, `task`, unless this worker's task table is
/// not the pool's (its handshake then says what differs, and it serves
/// nothing). If it panics, the worker exits here and says why on stderr,
/// where the pool reads it; if it exits, a handler says so.
fn initialize(task: TaskRef) {
    let registry = registry();
    if registry.digest != task.table {
        return;
    }
    let Some(entry) = registry.tasks.get(task.position as usize) else {
        return;
    };
    let name = (entry.name)();
    if INITIALIZING.set(name).is_ok() {
        // SAFETY: `atexit` registers a function of no arguments, which
        // only writes to stderr; it has no other precondition.
        unsafe { libc::atexit(exited_in_initializer) };
    }
    IN_INITIALIZER.store(true, Ordering::SeqCst);
    let ran = crate::registry::run_initializer(entry);
    IN_INITIALIZER.store(false, Ordering::SeqCst);
    if let Err(why) = ran {
        fatal_early(&format!("initializer `{name}` {why}"));
    }
}

/// Run by `exit`: says, if the initializer is running, that it is what
/// ended the worker (the exit status alone would not).
extern "C" fn exited_in_initializer() {
    if IN_INITIALIZER.load(Ordering::SeqCst) {
        let name = INITIALIZING.get().copied().unwrap_or("?");
        let _ = writeln!(
            std::io::stderr(),
            "buckshot worker: initializer `{name}` exited before the worker served"
        );
        drain_stderr();
    }
}

/// Says when a worker must retire after a message, if ever: under a CPU
/// limit ([`cpu::Guard`]), or past the pool's `max_worker_rss`
/// ([`RssGuard`]).
struct Retirement {
    cpu: Option<cpu::Guard>,
    rss: Option<RssGuard>,
}

impl Retirement {
    /// Whether the worker must retire after a message that ended at `now`.
    fn after_message(&mut self, now: Instant) -> Result<bool, String> {
        if let Some(guard) = &mut self.cpu {
            let retire = guard
                .after_message(now)
                .map_err(|e| format!("could not check its CPU budget: {e}"))?;
            if retire.is_some() {
                return Ok(true);
            }
        }
        Ok(self.rss.as_mut().is_some_and(|guard| guard.over(now)))
    }
}

/// Tells when the worker's resident memory is over the pool's
/// `max_worker_rss`, read ([`sys::Resident`], opened before the sandbox,
/// which may hide `/proc`) at most every [`RSS_READ_INTERVAL`].
struct RssGuard {
    resident: sys::Resident,
    max: u64,
    read_at: Option<Instant>,
}

impl RssGuard {
    fn open(max: u64) -> std::io::Result<RssGuard> {
        Ok(RssGuard {
            resident: sys::Resident::open()?,
            max,
            read_at: None,
        })
    }

    /// Whether the resident memory is over the limit after a message that
    /// ended at `now`; false without reading it if it was read less than
    /// [`RSS_READ_INTERVAL`] before.
    fn over(&mut self, now: Instant) -> bool {
        if self
            .read_at
            .is_some_and(|at| now.duration_since(at) < RSS_READ_INTERVAL)
        {
            return false;
        }
        self.read_at = Some(now);
        self.resident.bytes().is_some_and(|bytes| bytes > self.max)
    }
}

/// Ends the worker, even in the middle of a task, once nobody can write to
/// its request stream: the pool killed or dropped it, or the connection to
/// a remote pool is gone. (A retiring worker is sent a RETIRE frame
/// instead, and its stream stays open until it exits.) Without this, a
/// remote worker whose relay (`ssh`) was killed would run its task to the
/// end.
///
/// A worker that is the pool's child and armed its parent-death signal
/// starts none: a thread of its own is a tenth of a fresh worker's cost.
/// The stream of such a worker closes while it runs a task only when the
/// pool's process or its spawning thread ends, which the signal reports
/// (it fires as that thread ends, the process's included), or when the
/// pool kills it, with its group, anyway. (A task that clears the signal,
/// by a change of credentials or `prctl`, loses that: it runs to its end.)
fn watch_requests(requests: &OwnedFd) -> std::io::Result<()> {
    let watched = rustix::io::fcntl_dupfd_cloexec(requests, 3)?;
    std::thread::Builder::new()
        .name("buckshot-watchdog".into())
        .spawn(move || {
            // No events asked for: a pipe with no writer left reports a
            // hang-up, a socket an error or hang-up, whatever is unread.
            let mut fds = [rustix::event::PollFd::new(
                &watched,
                rustix::event::PollFlags::empty(),
            )];
            loop {
                match rustix::event::poll(&mut fds, None) {
                    Ok(0) | Err(rustix::io::Errno::INTR) => continue,
                    Ok(_) => break,
                    // Cannot watch: the main thread still ends at the end
                    // of the stream, between tasks.
                    Err(_) => return,
                }
            }
            let _ = std::io::stderr().flush();
            if rustix::process::getpgrp() == rustix::process::getpid() {
                kill_own_group(0);
            }
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(std::process::id() as libc::pid_t, libc::SIGKILL) };
        })?;
    Ok(())
}

/// The request stream ended: the pool retired this worker, or the pool's
/// process is gone (its pipes close before its parent-death signal is
/// sent, so this can come first). Either way, what its tasks started goes
/// with it: a worker that leads its process group kills it.
fn end_with_group() -> ! {
    if rustix::process::getpgrp() == rustix::process::getpid() {
        let _ = std::io::stdout().flush();
        kill_own_group(0);
    }
    std::process::exit(0)
}

/// Kills this process's group: the handler of the parent-death signal.
extern "C" fn kill_own_group(_: libc::c_int) {
    // SAFETY: kill is async-signal-safe; 0 names the caller's process group.
    unsafe { libc::kill(0, libc::SIGKILL) };
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

/// For a worker started through a launcher: points fds 1 and 2 at a pipe
/// that a thread copies to the real stderr. sshd and slurmstepd keep a
/// session open while any process holds its stderr, so a subprocess of a
/// task that outlived a crashed worker would keep its relay (`ssh`,
/// `srun`) from ending, and the pool from noticing the death. Through the
/// pipe, the session's stderr dies with the worker.
fn interpose_stderr() -> std::io::Result<()> {
    let (read, write) = sys::pipe_cloexec()?;
    let real = rustix::io::fcntl_dupfd_cloexec(rustix::stdio::stderr(), 3)?;
    rustix::stdio::dup2_stderr(&write)?;
    rustix::stdio::dup2_stdout(&write)?;
    drop(write);
    let (copying, copied) = mpsc::channel::<()>();
    std::thread::Builder::new()
        .name("buckshot-stderr".into())
        .spawn(move || {
            let (mut read, mut real) = (File::from(read), File::from(real));
            let _ = std::io::copy(&mut read, &mut real);
            drop(copying);
        })?;
    let _ = STDERR_COPIED.set(Mutex::new(copied));
    Ok(())
}

/// Ends when the thread that copies an interposed stderr is done.
static STDERR_COPIED: OnceLock<Mutex<Receiver<()>>> = OnceLock::new();

/// How long a worker that gives up waits for its last words to be copied
/// to the real stderr (see [`drain_stderr`]).
const STDERR_DRAIN_BOUND: Duration = Duration::from_secs(1);

/// Before a worker with an interposed stderr exits with a message:
/// closes its ends of the pipe and lets the copying thread copy what is
/// in it, so that the message reaches the pool (an exit would end the
/// thread mid-copy). At most [`STDERR_DRAIN_BOUND`]: a subprocess may
/// hold the pipe open.
fn drain_stderr() {
    let Some(copied) = STDERR_COPIED.get() else {
        return;
    };
    if let Ok(null) = File::open("/dev/null") {
        let _ = rustix::stdio::dup2_stderr(&null);
        let _ = rustix::stdio::dup2_stdout(&null);
    }
    let copied = copied.lock().unwrap_or_else(PoisonError::into_inner);
    let _ = copied.recv_timeout(STDERR_DRAIN_BOUND);
}

/// Tells the pool that the running item panicked, before its backtrace is
/// symbolised: the pool stops its clock until the reply (see `panics`).
fn announce_panic(report: &panics::PanicReport, replies: &Mutex<File>) {
    let Some(seq) = logs::capture::running() else {
        return;
    };
    let Ok(frame) = protocol::panic_frame(seq, |buf| protocol::encode(report, buf)) else {
        return;
    };
    // A failed write means the pool is gone; the worker finds out at its
    // next reply.
    let _ = lock(replies).write_all(&frame);
}

/// Serves RUN frames until the stream ends or the worker retires (`Ok`)
/// or breaks (`Err`), and keeps the contexts that CONTEXT frames bring
/// until FORGET frames drop them. `retirement`: what says when the worker
/// must retire.
/// `backtraces`: whether panics are announced (and symbolised) before
/// they are answered: then their answer goes out at once, which restarts
/// the clock of the items after them.
fn run_tasks(
    requests: File,
    replies: &Mutex<File>,
    max_frame: u32,
    mut retirement: Retirement,
    backtraces: bool,
) -> Result<(), String> {
    let registry = registry();
    let mut requests = BufReader::with_capacity(REQUEST_BUFFER, requests);
    let mut body = Vec::new();
    let mut reply = Reply::new(max_frame as usize);
    let mut scratch = vec![0; SCRATCH_BYTES];
    let mut contexts: HashMap<u64, ContextSlot> = HashMap::new();
    loop {
        match protocol::read_frame(&mut requests, &mut body, max_frame) {
            Ok(true) => {}
            Ok(false) => return Ok(()),
            Err(e) => return Err(format!("could not read a request: {e}")),
        }
        match body[0] {
            protocol::RUN => {}
            protocol::CONTEXT => {
                let (id, value) = protocol::parse_context(&body).map_err(|e| e.0)?;
                contexts.insert(id, ContextSlot::new(value.to_vec()));
                continue;
            }
            // Mapped now, while the pool surely holds it; decoded from the
            // mapping when a task first reads it.
            protocol::CONTEXT_BESIDE => {
                let (id, place) = protocol::parse_context(&body).map_err(|e| e.0)?;
                let value = crate::bulk::map_context(place)
                    .map_err(|e| format!("could not map context {id}: {e}"))?;
                contexts.insert(id, ContextSlot::new(value));
                continue;
            }
            protocol::FORGET => {
                let (id, _) = protocol::parse_context(&body).map_err(|e| e.0)?;
                contexts.remove(&id);
                continue;
            }
            // Everything before it is answered: the worker is done.
            protocol::RETIRE => return Ok(()),
            kind => return Err(format!("unexpected frame kind {kind}")),
        }
        let (header, items) = RunHeader::parse(&body).map_err(|e| e.0)?;
        let RunHeader {
            task,
            context,
            first_seq,
            count,
        } = header;
        let Some(task) = registry.tasks.get(task as usize) else {
            return Err(format!("no task at position {task}"));
        };
        let mut context = match context {
            0 => None,
            id => Some(
                contexts
                    .get_mut(&id)
                    .ok_or_else(|| format!("context {id} was never sent"))?,
            ),
        };
        let mut seen = 0;
        reply.busy_since = Instant::now();
        for (seq, item) in (first_seq..).zip(protocol::Items::new(items)) {
            let item = item.map_err(|e| e.0)?;
            logs::capture::set_running(Some(seq));
            let panicked = reply.add(seq, replies, |out| {
                (task.run)(context.as_deref_mut(), item, out, &mut scratch)
            });
            if panicked && backtraces {
                reply.flush(replies);
            }
            seen += 1;
        }
        logs::capture::set_running(None);
        if seen != count {
            return Err(format!(
                "run frame holds {seen} items, its header says {count}"
            ));
        }
        // A task's unfinished `print!` line would be lost if the worker were
        // killed later. Flushed before the reply: a task that leaves the
        // stdout lock held (a thread of its own still printing) leaves its
        // worker stuck here, and it is the one that times out, not the next.
        let _ = std::io::stdout().flush();
        let retire = retirement.after_message(Instant::now())?;
        // The RETIRED frame goes with the last reply, in one write: the
        // pool must not take the worker's end for a death of the next
        // input, which it may have read already.
        reply.send(replies, retire);
        if retire {
            return Ok(());
        }
    }
}

/// The reply stream, whole frames at a time.
fn lock(replies: &Mutex<File>) -> MutexGuard<'_, File> {
    // Nothing is left half-done under the lock but a write, which the
    // pool would see as a broken frame anyway.
    replies.lock().unwrap_or_else(PoisonError::into_inner)
}

/// REPLY frames being assembled.
struct Reply {
    buf: Vec<u8>,
    first_seq: u64,
    count: u32,
    /// When the items of the frame being assembled started running.
    busy_since: Instant,
    max_frame: usize,
    /// Items of the frame being assembled with strings in a reply slot.
    bulk: u32,
}

impl Reply {
    fn new(max_frame: usize) -> Reply {
        Reply {
            buf: vec![0; ReplyHeader::SIZE],
            first_seq: 0,
            count: 0,
            busy_since: Instant::now(),
            max_frame,
            bulk: 0,
        }
    }

    /// Adds the outcome of item `seq`, which `write` appends (straight into
    /// the frame: outputs can be large). Sends the items before it first if
    /// together they would pass the frame limit. Returns whether the item
    /// panicked.
    fn add(&mut self, seq: u64, replies: &Mutex<File>, write: impl FnOnce(&mut Vec<u8>)) -> bool {
        let start = protocol::begin_item(&mut self.buf);
        write(&mut self.buf);
        let item = &self.buf[start + protocol::ITEM_LEN_BYTES..];
        // Strings in a reply slot count against the limit too.
        let len = item.len() + crate::bulk::output_beside(item);
        if ReplyHeader::SIZE + protocol::ITEM_LEN_BYTES + len > self.max_frame {
            crate::bulk::discard_output(item);
            self.buf.truncate(start + protocol::ITEM_LEN_BYTES);
            let message = format!(
                "encode the output: {len} bytes is over the frame limit of {}",
                self.max_frame
            );
            protocol::encode_failure(&Outcome::<()>::Codec(message), &mut self.buf);
        }
        let outcome = &self.buf[start + protocol::ITEM_LEN_BYTES..];
        let (bulk, panicked) = (
            protocol::is_bulk_outcome(outcome),
            protocol::is_panic(outcome),
        );
        protocol::end_item(&mut self.buf, start).expect("outcome under the frame limit");
        if self.buf.len() > self.max_frame {
            let item = self.buf.split_off(start);
            self.flush(replies);
            self.buf.extend_from_slice(&item);
        }
        if self.count == 0 {
            self.first_seq = seq;
        }
        self.count += 1;
        self.bulk += u32::from(bulk);
        panicked
    }

    fn flush(&mut self, replies: &Mutex<File>) {
        self.send(replies, false);
    }

    /// Sends the items assembled, followed by a RETIRED frame if
    /// `retiring` (alone if the items went out already: a panic's answer
    /// is sent as soon as it is made).
    fn send(&mut self, replies: &Mutex<File>, retiring: bool) {
        if self.count == 0 {
            if retiring && lock(replies).write_all(&protocol::RETIRED_FRAME).is_err() {
                std::process::exit(0);
            }
            return;
        }
        let now = Instant::now();
        let busy = now.duration_since(self.busy_since);
        self.busy_since = now;
        let header = ReplyHeader {
            first_seq: self.first_seq,
            count: self.count,
            busy_nanos: u64::try_from(busy.as_nanos()).unwrap_or(u64::MAX),
            bulk: self.bulk > 0,
        };
        header.write(&mut self.buf, 0);
        if retiring {
            self.buf.extend_from_slice(&protocol::RETIRED_FRAME);
        }
        if lock(replies).write_all(&self.buf).is_err() {
            // The pool is gone: nobody wants the results.
            std::process::exit(0);
        }
        // Keep the buffer for frames of similar size, not after an outsized one.
        let used = self.buf.len();
        self.buf.truncate(ReplyHeader::SIZE);
        if self.buf.capacity() > (4 * used).max(KEEP_BUFFER) {
            self.buf.shrink_to(used);
        }
        self.count = 0;
        self.bulk = 0;
    }
}
