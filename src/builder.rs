//! [`PoolBuilder`]: a pool's settings, checked, and the start of its
//! workers.

use std::any::TypeId;
use std::ffi::OsStr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::error::Error;
use crate::handoff::WorkerEnv;
use crate::hooks::Plugins;
use crate::launch::Launcher;
use crate::pool::Pool;
use crate::sandbox::launcher::Sandboxed;
use crate::sandbox::{Rules, Sandbox, probe};

/// Default limit on one frame, and so on one encoded input or output.
const DEFAULT_MAX_FRAME_BYTES: u32 = 1 << 30;
/// The smallest frame limit allowed: room for the headers and a few values.
const MIN_FRAME_BYTES: u32 = 1024;
/// Default bound on the replay files one map keeps.
const DEFAULT_KEPT_PER_MAP: u32 = 100;
/// Why a journal cannot be kept without the cargo feature `journal`.
const JOURNAL_COMPILED_OUT: &str = "the journal needs the cargo feature `journal`, which this \
     build of buckshot lacks: add `features = [\"journal\"]` to its dependency";

/// Configures and builds a [`Pool`].
///
/// ```
/// use std::time::Duration;
///
/// # fn main() -> Result<(), buckshot::Error> {
/// let pool = buckshot::Pool::builder()
///     .processes(2)
///     .timeout(Duration::from_secs(10))
///     .build()?;
/// assert_eq!(pool.processes(), 2);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Default)]
pub struct PoolBuilder {
    /// Local workers. Default: the available parallelism, unless other
    /// launchers are given.
    processes: Option<usize>,
    /// Workers of other launchers, in the order given.
    launched: Vec<(Launcher, usize)>,
    /// Default: none.
    timeout: Option<Duration>,
    /// Default: 1 GiB.
    max_frame_bytes: Option<u32>,
    /// Default: none.
    memory_limit: Option<u64>,
    /// Default: 0.
    retries: u32,
    /// Default: none.
    max_tasks_per_worker: Option<u64>,
    /// Default: none (workers stay).
    idle_timeout: Option<Duration>,
    /// Default: adaptive.
    batch_size: Option<u32>,
    /// Default: forwarded (`None` means true).
    forward_stderr: Option<bool>,
    /// Default: none (lines go to this process's stderr).
    on_worker_stderr: Option<WorkerStderr>,
    /// Default: none.
    sandbox: Option<Sandbox>,
    /// Default: none kept.
    keep_failures: Option<PathBuf>,
    /// Default: [`DEFAULT_KEPT_PER_MAP`].
    max_kept_failures: Option<u32>,
    /// Default: none.
    journal: Option<PathBuf>,
    /// Default: none.
    initializer: Option<Initializer>,
    /// Default: none.
    env: WorkerEnv,
    /// Default: none.
    max_worker_rss: Option<u64>,
}

/// The fn item given to [`PoolBuilder::initializer`], found in the task
/// table by `build`.
#[derive(Debug, Clone, Copy)]
struct Initializer {
    type_id: TypeId,
    name: &'static str,
}

impl PoolBuilder {
    /// Number of worker processes on this machine: the shorthand for
    /// [`workers`](PoolBuilder::workers)`(Launcher::local(), processes)`.
    /// Default: [`std::thread::available_parallelism`], or none if
    /// `workers` was given.
    pub fn processes(mut self, processes: usize) -> Self {
        self.processes = Some(processes);
        self
    }

    /// Adds `count` workers started by `launcher`; call it as often as
    /// needed to mix launchers in one pool. Every worker takes inputs of
    /// every map; a worker that dies is replaced through its own launcher,
    /// and a launcher whose workers keep failing to start is given up
    /// while the others go on.
    pub fn workers(mut self, launcher: impl Into<Launcher>, count: usize) -> Self {
        self.launched.push((launcher.into(), count));
        self
    }

    /// Longest time one task may run, counted from when its worker starts it
    /// (time spent queued does not count). A task past it yields
    /// [`Error::TaskTimeout`]; its worker is killed and replaced. Maps of a
    /// [`Pool::with_timeout`] handle have a timeout of their own instead.
    /// Default: no limit.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Largest frame exchanged with a worker, which bounds one encoded input
    /// or output. A larger input yields [`Error::Encode`], a larger output
    /// [`Error::WorkerCodec`]; a worker that sends a larger frame is killed.
    /// Default: 1 GiB.
    pub fn max_frame_bytes(mut self, bytes: u32) -> Self {
        self.max_frame_bytes = Some(bytes);
        self
    }

    /// Limit on the memory each worker maps for data (`RLIMIT_DATA`, with
    /// its hard limit: a task cannot raise it). A task that allocates past
    /// it makes its worker abort, which yields [`Error::WorkerDied`] whose
    /// message names the limit and the failed allocation. Default: none.
    ///
    /// What counts: the heap and every private writable mapping, which
    /// includes each thread's whole stack from its start (2 MiB for a Rust
    /// thread, 8 MiB for a C thread by default) and what malloc's arenas
    /// hold; a worker uses about 2.5 MiB before its first task. What does
    /// not: code, read-only files, address space reserved but not
    /// writable (glibc's 64 MiB per arena, which made a task of 64 threads
    /// need 2 GiB under `RLIMIT_AS`, and 256 MiB under this), the main
    /// thread's stack, and shared memory (long strings in transit, a
    /// task's own `memfd` or shared mappings). It is a guard against
    /// runaway allocations, not a sandbox for memory.
    ///
    /// A limit below what a worker needs to start (its set-up's data plus
    /// 1 MiB) is refused by the first worker: the pool breaks, and its
    /// maps fail with [`Error::Startup`] naming the limit.
    ///
    /// That is Linux. FreeBSD's `RLIMIT_DATA` leaves out `mmap`, so there
    /// the limit is `RLIMIT_AS`, the address space (reserved or not).
    /// macOS enforces neither: there [`build`](PoolBuilder::build) fails
    /// with [`Error::Config`] rather than promise a limit that is not kept.
    pub fn memory_limit(mut self, bytes: u64) -> Self {
        self.memory_limit = Some(bytes);
        self
    }

    /// How many times an input whose worker died is run again on a fresh
    /// worker before [`Error::WorkerDied`] is reported. Inputs that timed out
    /// or panicked are never retried. Default: 0.
    pub fn retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    /// Replace each worker after it has run this many inputs, to contain
    /// leaks. Default: workers live as long as the pool.
    ///
    /// The replacement is spawned while the worker runs its last input,
    /// and gets none before that one is answered: no more tasks than
    /// [`processes`](PoolBuilder::processes) run at once.
    pub fn max_tasks_per_worker(mut self, tasks: u64) -> Self {
        self.max_tasks_per_worker = Some(tasks);
        self
    }

    /// How long a worker may have no task before it exits: the pool
    /// retires it (it exits by itself, between tasks, as at a task quota)
    /// and does not replace it, so that a pool kept in a long-running
    /// service costs no processes while nothing comes. When work comes,
    /// workers start again on demand, one per message of inputs waiting,
    /// up to [`processes`](PoolBuilder::processes); the inputs wait for
    /// their start-up (a fresh process and its handshake, as at
    /// [`build`](PoolBuilder::build)), which the README measures. A pool
    /// whose workers all left is not broken: its next map is served.
    /// Default: workers live as long as the pool.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// # fn main() -> Result<(), buckshot::Error> {
    /// let pool = buckshot::Pool::builder()
    ///     .processes(4)
    ///     .idle_timeout(Duration::from_secs(60))
    ///     .build()?;
    /// assert_eq!(pool.processes(), 4); // at most
    /// # Ok(())
    /// # }
    /// ```
    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        self.idle_timeout = Some(idle);
        self
    }

    /// Inputs sent to a worker per message. Default: adaptive, from one (for
    /// slow tasks) up to thousands (for tiny ones), each message about 2 ms
    /// of work and at most a quarter of the timeout.
    ///
    /// A worker answers a message as a whole, so with a timeout a message
    /// counts as one task: if it runs past the timeout, its inputs are run
    /// again, one per message, and only the one that times out alone fails.
    ///
    /// With `batch_size(1)` a worker also has one input at a time: none
    /// waits behind another, at a cost in throughput for tiny tasks (each
    /// input waits for a round trip to the pool).
    pub fn batch_size(mut self, inputs: u32) -> Self {
        self.batch_size = Some(inputs);
        self
    }

    /// Whether what workers write to stderr (a task's `eprintln!`, and its
    /// `println!`, which a worker sends to stderr) is forwarded: copied to
    /// this process's stderr, or given to the
    /// [`on_worker_stderr`](PoolBuilder::on_worker_stderr) callback if
    /// there is one. `false` drops it, and the callback is never called.
    /// Either way the last few KiB are kept for [`Error::WorkerDied`].
    /// Default: true.
    pub fn forward_stderr(mut self, forward: bool) -> Self {
        self.forward_stderr = Some(forward);
        self
    }

    /// Gives `callback` each line that workers write to stderr, without
    /// its newline, instead of copying it to this process's stderr: a
    /// task's `eprintln!` and `println!`, a panic's message, what its
    /// subprocesses write, a worker's last words before it dies. A last
    /// line without a newline is given when its worker ends; a line longer
    /// than 8 KiB arrives in pieces; bytes that are not UTF-8 are replaced
    /// (`U+FFFD`). Lines of several workers interleave, each whole.
    ///
    /// The callback runs on a thread of the pool's own, one line after the
    /// other, never on the thread that maps nor on the one that serves the
    /// workers: a slow or blocked callback delays no result and no timeout.
    /// Lines wait for it in a queue of 1 MiB; past that they are dropped,
    /// and once the callback returns it is given a line such as
    /// `[buckshot: 1.2 MiB of worker stderr dropped]`. A pool that shuts
    /// down gives the callback what its workers wrote last, waiting for it
    /// while it makes progress (for at most a second). A panic in the
    /// callback loses that line alone.
    ///
    /// With [`forward_stderr(false)`](PoolBuilder::forward_stderr) lines
    /// go nowhere and the callback is never called. Either way the last
    /// few KiB are kept for [`Error::WorkerDied`]. Default: lines go to
    /// this process's stderr.
    ///
    /// A progress bar that logs above itself (see the README):
    /// `.on_worker_stderr(move |line| bar.println(line))`.
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    ///
    /// fn noisy(x: u32) -> u32 {
    ///     eprintln!("working on {x}");
    ///     x + 1
    /// }
    /// buckshot::register!(noisy);
    ///
    /// # fn main() -> Result<(), buckshot::Error> {
    /// let lines = Arc::new(Mutex::new(Vec::new()));
    /// let kept = Arc::clone(&lines);
    /// let pool = buckshot::Pool::builder()
    ///     .processes(2)
    ///     .on_worker_stderr(move |line| kept.lock().unwrap().push(line.to_owned()))
    ///     .build()?;
    /// let out: Vec<u32> = pool.map(noisy, [1, 2, 3])?.collect::<Result<_, _>>()?;
    /// assert_eq!(out, [2, 3, 4]);
    /// drop(pool); // gives the callback what the workers wrote last
    /// let mut lines = lines.lock().unwrap().clone();
    /// lines.sort();
    /// assert_eq!(lines, ["working on 1", "working on 2", "working on 3"]);
    /// # Ok(())
    /// # }
    /// ```
    pub fn on_worker_stderr(mut self, callback: impl Fn(&str) + Send + Sync + 'static) -> Self {
        self.on_worker_stderr = Some(WorkerStderr(Arc::new(callback)));
        self
    }

    /// What the workers may not do: no network, only some files, bounded
    /// CPU time, no subprocesses (see [`Sandbox`]). Each worker applies
    /// the rules to itself before its first task; the pool checks first
    /// that they can come up here. Local workers only. Default: none.
    pub fn sandbox(mut self, sandbox: Sandbox) -> Self {
        self.sandbox = Some(sandbox);
        self
    }

    /// Keeps every input that fails in a worker, so that it can be run
    /// again alone: an input whose result is [`Error::TaskTimeout`],
    /// [`Error::TaskPanicked`], [`Error::WorkerDied`] or
    /// [`Error::Protocol`] is written to a new file in `dir` (created if
    /// missing), which [`Error::replay_file`] names. Running the same
    /// program with `BUCKSHOT_REPLAY=<file>` runs that input in the
    /// foreground, before `main`, under a debugger if you like, confined
    /// as its worker was (the pool's sandbox, memory limit and timeout;
    /// `BUCKSHOT_REPLAY_UNCONFINED` lifts them, loudly): see "When a
    /// worker dies" in the README. A file holds the task's name, the
    /// encoded input and context, the error, how the worker ended, its
    /// stderr tail, the time, and those limits. Successes write nothing;
    /// once `dir` is full, a map writes no more. Default: nothing is kept.
    pub fn keep_failures(mut self, dir: impl Into<PathBuf>) -> Self {
        self.keep_failures = Some(dir.into());
        self
    }

    /// Most replay files one map keeps (see
    /// [`keep_failures`](PoolBuilder::keep_failures)); the errors of
    /// inputs past it say that they were not kept. Default: 100.
    pub fn max_kept_failures(mut self, files: u32) -> Self {
        self.max_kept_failures = Some(files);
        self
    }

    /// Records every `Ok` output of every map of the pool in a SQLite
    /// journal at `path` (created if missing), and answers an input already
    /// there from it without running it: a map killed halfway (SIGKILL,
    /// wall time, a reboot) resumes where it stopped when it runs again.
    ///
    /// Needs the cargo feature `journal`: without it,
    /// [`build`](PoolBuilder::build) fails with [`Error::Config`], which
    /// says so.
    ///
    /// An output is keyed by the task's name, the map's context and the
    /// encoded input, with the entries of every map in them sorted (a
    /// `HashMap` encodes in another order in every process; a `HashSet`,
    /// which encodes as a list, is not sorted: use a `BTreeSet`). It is
    /// committed within milliseconds of its arrival (batched transactions,
    /// WAL), and answers later maps of the pool before that; dropping the
    /// pool commits the rest. Outputs that could not be recorded are
    /// counted by [`Pool::journal_unrecorded`](crate::Pool::journal_unrecorded).
    /// Errors are not recorded: those inputs run again. An output that no
    /// longer decodes (its type changed) counts as missing. When a task's
    /// code changes, its old outputs still answer: start a journal at a new
    /// path, or delete the task's rows (`sqlite3 FILE "DELETE FROM outputs
    /// WHERE task = 'my_crate::my_task'"`). Several pools and processes may
    /// share a journal. Default: none.
    #[cfg_attr(docsrs, doc(cfg(feature = "journal")))]
    pub fn journal(mut self, path: impl Into<PathBuf>) -> Self {
        self.journal = Some(path.into());
        self
    }

    /// A task of no arguments that each worker runs once, before its first
    /// task: set-up that belongs to the worker's process, such as a C
    /// library's global state, a logger, or data loaded once. It runs in
    /// every worker, replacements included, and on other machines (ssh,
    /// Slurm) too; never in this process. Register it like any task:
    /// `fn setup() { ... }` and `buckshot::register!(setup);`.
    ///
    /// ```
    /// use std::sync::atomic::{AtomicU64, Ordering};
    ///
    /// static SCALE: AtomicU64 = AtomicU64::new(1);
    ///
    /// fn setup() {
    ///     SCALE.store(10, Ordering::Relaxed);
    /// }
    /// buckshot::register!(setup);
    ///
    /// fn scaled(x: u64) -> u64 {
    ///     x * SCALE.load(Ordering::Relaxed)
    /// }
    /// buckshot::register!(scaled);
    ///
    /// # fn main() -> Result<(), buckshot::Error> {
    /// let pool = buckshot::Pool::builder()
    ///     .processes(2)
    ///     .initializer(setup)
    ///     .build()?;
    /// let out: Vec<u64> = pool.map(scaled, 1..=3)?.collect::<Result<_, _>>()?;
    /// assert_eq!(out, [10, 20, 30]);
    /// // It ran in the workers only.
    /// assert_eq!(SCALE.load(Ordering::Relaxed), 1);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// It runs before the worker's handshake, after the worker's own
    /// set-up (its sandbox and memory limit are in force, so threads it
    /// starts are confined too). Its time counts against no task's
    /// timeout, and it is not timed: a worker without an initializer
    /// that does not say hello within 30 s is taken for one that cannot
    /// start, but one that is still in its initializer is waited for. (A
    /// sandbox's `cpu_time` counts the CPU time it takes against the first
    /// task's.) The `tracing` events it emits are not sent to this process.
    /// It may install a `tracing` subscriber or a `log` logger of its own
    /// (the worker sets up its own after it, and gives way): that worker's
    /// tasks' events, or records, then go there rather than to this
    /// process.
    ///
    /// An initializer that panics or exits: that worker never serves, and
    /// counts as a worker that failed to start. A flaky one is replaced;
    /// after 5 in a row the pool gives up, as for workers that keep failing
    /// to start: its maps fail with [`Error::Startup`] (and inputs under
    /// way with [`Error::PoolClosed`]), whose message ends with the panic's:
    /// ``... last: exit status: 101: buckshot worker: initializer
    /// `app::setup` panicked: no model at /models/x``.
    ///
    /// A function that was never registered makes
    /// [`build`](PoolBuilder::build) fail with [`Error::NotRegistered`].
    /// Default: none.
    pub fn initializer<F: Fn() + 'static>(mut self, f: F) -> Self {
        let _ = f;
        self.initializer = Some(Initializer {
            type_id: TypeId::of::<F>(),
            name: std::any::type_name::<F>(),
        });
        self
    }

    /// Sets the variable `key` to `value` in the workers' environment, and
    /// never in this process: on this machine, and on others (the ssh,
    /// srun and command launchers pass it on the worker's command line).
    /// Call it once per variable; a key set again takes the new value. A
    /// worker starts with it, so what reads its settings when the program
    /// loads sees it too (`OMP_NUM_THREADS`, `MALLOC_ARENA_MAX`), and so do
    /// the programs its tasks start.
    ///
    /// ```
    /// fn threads(_: u32) -> Option<String> {
    ///     std::env::var("OMP_NUM_THREADS").ok()
    /// }
    /// buckshot::register!(threads);
    ///
    /// # fn main() -> Result<(), buckshot::Error> {
    /// let pool = buckshot::Pool::builder()
    ///     .processes(1)
    ///     .env("OMP_NUM_THREADS", "1")
    ///     .build()?;
    /// assert_eq!(pool.call(threads, 0)?.as_deref(), Some("1"));
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// [`build`](PoolBuilder::build) fails with [`Error::Config`] for a
    /// name that is empty, holds `=` or a NUL byte, or starts with `-`; a
    /// value that holds a NUL byte; and the pool's own variables (a name
    /// that starts with `BUCKSHOT_` or `__BUCKSHOT_`). Default: workers
    /// inherit this process's environment, and nothing is added.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        let (key, value) = (key.as_ref().to_owned(), value.as_ref().to_owned());
        match self.env.0.iter_mut().find(|(k, _)| *k == key) {
            Some((_, old)) => *old = value,
            None => self.env.0.push((key, value)),
        }
        self
    }

    /// Retires a worker whose resident memory (`VmRSS`) is above `bytes`
    /// once it has answered a message of inputs: it exits, a fresh worker
    /// takes its place, and no input fails. For code whose memory grows
    /// (a leak, a cache, a fragmented heap), it recycles workers before
    /// they grow too large. [`memory_limit`](PoolBuilder::memory_limit) is
    /// the hard cap: an allocation past it kills the task that made it.
    ///
    /// ```
    /// # fn main() -> Result<(), buckshot::Error> {
    /// let pool = buckshot::Pool::builder()
    ///     .max_worker_rss(2 << 30) // recycle a worker past 2 GiB
    ///     .memory_limit(8 << 30) // and never let one go past 8 GiB
    ///     .build()?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// A worker reads its memory after a message, at most every 10 ms,
    /// so a message may take it past `bytes` (by what one message
    /// allocates, or what several quick ones do). A limit below what a
    /// fresh worker holds (a few MiB, plus what an initializer loads)
    /// recycles each worker after its first message. `build` fails with
    /// [`Error::Config`] for 0. Default: none.
    ///
    /// That is Linux, where `/proc` tells the memory a process holds now.
    /// On macOS and FreeBSD a worker reads its peak instead (`getrusage`),
    /// which never goes down: a task that allocated past `bytes` and freed
    /// it again still gets its worker replaced after the message.
    pub fn max_worker_rss(mut self, bytes: u64) -> Self {
        self.max_worker_rss = Some(bytes);
        self
    }

    /// Starts the workers. Returns once the first of them (up to 8, or as
    /// many as this machine has cores) are spawned; a wider pool's others
    /// are spawned in the background and take work as they come.
    ///
    /// Each worker holds 6 descriptors in this process. If the pool, with
    /// room to spare for the program, does not fit under the soft limit on
    /// open files (`ulimit -n`), that limit is raised for the whole process
    /// by what the pool needs, up to the hard limit.
    ///
    /// # Errors
    ///
    /// - [`Error::Config`] for an invalid setting (no processes, a zero
    ///   timeout, idle timeout, batch size, task quota or `max_worker_rss`, a tiny frame
    ///   limit, a `memory_limit` on macOS, more workers than the hard limit on open files allows, a
    ///   sandbox with workers that are not local, a journal without the
    ///   cargo feature `journal`, a variable of [`env`](PoolBuilder::env)
    ///   that cannot be set);
    /// - [`Error::NotRegistered`] for an
    ///   [`initializer`](PoolBuilder::initializer) that was never
    ///   registered;
    /// - [`Error::Privileged`] if this program runs with privileges
    ///   (setuid, setgid, file capabilities): its copies refuse to serve
    ///   as workers;
    /// - [`Error::SandboxProbe`] if the sandbox cannot be probed, and
    ///   [`Error::Sandbox`] if one of its rules cannot come up (unless it
    ///   is best effort);
    /// - [`Error::ReplayDir`] if the directory for replay files cannot be
    ///   created, [`Error::Journal`] if the journal cannot be opened;
    /// - [`Error::Launcher`] if a launcher cannot get ready;
    /// - [`Error::PoolSetup`] if the pool's own thread or descriptors
    ///   cannot be created, [`Error::Spawn`] if a worker cannot be
    ///   started.
    ///
    /// Workers that start and then keep failing before they take work
    /// break the pool later: its maps fail with [`Error::Startup`].
    pub fn build(self) -> Result<Pool, Error> {
        let invalid = |message: &str| {
            Err(Error::Config {
                message: message.to_owned(),
            })
        };
        let local = match (self.processes, self.launched.is_empty()) {
            (Some(processes), _) => processes,
            (None, true) => std::thread::available_parallelism().map_or(1, |n| n.get()),
            (None, false) => 0,
        };
        let mut launchers = Vec::new();
        if local > 0 || self.launched.is_empty() {
            launchers.push((Launcher::local(), local));
        }
        // Each pool its own copy of a launcher that keeps something per
        // pool: its helpers end with the pool.
        launchers.extend(self.launched.iter().map(|(l, n)| (l.for_pool(), *n)));
        let processes: usize = launchers.iter().map(|(_, count)| count).sum();
        if processes == 0 || launchers.iter().any(|(_, count)| *count == 0) {
            return invalid("processes must be at least 1");
        }
        if self.timeout == Some(Duration::ZERO) {
            return invalid("timeout must be greater than zero");
        }
        if self.idle_timeout == Some(Duration::ZERO) {
            return invalid("idle_timeout must be greater than zero");
        }
        if self.batch_size == Some(0) {
            return invalid("batch_size must be at least 1");
        }
        if self.max_tasks_per_worker == Some(0) {
            return invalid("max_tasks_per_worker must be at least 1");
        }
        if self.max_worker_rss == Some(0) {
            return invalid("max_worker_rss must be at least 1");
        }
        if let Some(problem) = self.env.0.iter().find_map(|(k, v)| env_problem(k, v)) {
            return invalid(&problem);
        }
        if self.memory_limit.is_some() && crate::sys::MEMORY_RESOURCE.is_none() {
            return invalid(&format!(
                "memory_limit is not enforced on {} (it has no resource limit for the memory \
                 a process maps); max_worker_rss replaces a worker whose memory grew past a \
                 bound",
                crate::sys::platform()
            ));
        }
        let initializer = match self.initializer {
            Some(Initializer { type_id, name }) => Some(
                crate::registry::registry()
                    .position_of(type_id)
                    .ok_or_else(|| Error::NotRegistered {
                        name: name.to_owned(),
                    })?,
            ),
            None => None,
        };
        let max_frame_bytes = self.max_frame_bytes.unwrap_or(DEFAULT_MAX_FRAME_BYTES);
        if max_frame_bytes < MIN_FRAME_BYTES {
            return invalid(&format!(
                "max_frame_bytes must be at least {MIN_FRAME_BYTES}"
            ));
        }
        if cfg!(not(feature = "journal")) && self.journal.is_some() {
            return invalid(JOURNAL_COMPILED_OUT);
        }
        if crate::sys::is_privileged() {
            // Its copies would refuse to serve, one after the other.
            return Err(Error::Privileged);
        }
        let sandbox = match &self.sandbox {
            Some(sandbox) if sandbox.rules() != Rules::default() => {
                if !self.launched.is_empty() {
                    return invalid(
                        "a sandbox applies to local workers only, not to those of `workers`",
                    );
                }
                let sandbox = probe_sandbox(sandbox)?;
                launchers[0].0 = Launcher::from_launch(Sandboxed::new(&sandbox));
                Some(sandbox)
            }
            _ => None,
        };
        let sandbox_rules = sandbox
            .as_ref()
            .map_or_else(Vec::new, |sandbox| sandbox.rules().list());
        let keep_failures = match self.keep_failures {
            Some(dir) => {
                if let Err(source) = std::fs::create_dir_all(&dir) {
                    return Err(Error::ReplayDir { path: dir, source });
                }
                Some(crate::replay::KeepFailures {
                    dir,
                    per_map: self.max_kept_failures.unwrap_or(DEFAULT_KEPT_PER_MAP),
                    // What a replay of a kept input is confined by.
                    sandbox,
                    memory_limit: self.memory_limit,
                })
            }
            None => None,
        };
        // The features asked for, as values the pool takes.
        let mut plugins = Plugins::default();
        if let Some(settings) = &keep_failures {
            crate::replay::plug(settings, &mut plugins);
        }
        let journal =
            match &self.journal {
                Some(path) => Some(crate::journal::plug(path, &mut plugins).map_err(|source| {
                    Error::Journal {
                        path: path.clone(),
                        source,
                    }
                })?),
                None => None,
            };
        // Every worker holds descriptors here: past the limit, spawns
        // would fail and the pool quietly shrink.
        crate::fd_limit::make_room(processes)?;
        for (launcher, _) in &launchers {
            launcher
                .launch()
                .prepare()
                .map_err(|message| Error::Launcher { message })?;
        }
        // Long strings travel in shared memory only between this process
        // and its own children, unsandboxed (a sandboxed one cannot open
        // this process's memfds).
        let local = launchers
            .iter()
            .all(|(launcher, _)| launcher.launch().worker_is_child());
        // Observers that read inputs and outputs (replay files, the
        // journal) read them as plain items: long strings stay inline.
        // An answerer reads them so too (it keys the encoded input).
        let plain =
            sandbox_rules.is_empty() && !plugins.wants().plain_items && plugins.answerers.is_none();
        let bulk = (local && plain && crate::bulk::available_here())
            .then(|| Arc::new(crate::bulk::Segments::new(max_frame_bytes)));
        let config = Config {
            processes,
            launchers,
            timeout: self.timeout,
            max_frame_bytes,
            memory_limit: self.memory_limit,
            retries: self.retries,
            max_tasks_per_worker: self.max_tasks_per_worker,
            idle_timeout: self.idle_timeout,
            batch_size: self.batch_size,
            forward_stderr: crate::stderr::Route::new(
                self.forward_stderr.unwrap_or(true),
                self.on_worker_stderr.map(|callback| callback.0),
            )
            .map_err(|source| Error::PoolSetup { source })?,
            dispatch: tracing::dispatcher::get_default(tracing::Dispatch::clone),
            backtraces: std::env::var_os("RUST_BACKTRACE").is_some_and(|value| value != "0"),
            bulk,
            initializer,
            env: Arc::new(self.env),
            max_worker_rss: self.max_worker_rss,
        };
        Pool::start(config, plugins, sandbox_rules, journal)
    }
}

/// Why the variable `key` cannot be set to `value` in workers'
/// environment, if it cannot.
fn env_problem(key: &OsStr, value: &OsStr) -> Option<String> {
    let name = key.as_encoded_bytes();
    let why = if name.is_empty() {
        "is not a variable name (empty)"
    } else if name.contains(&b'=') || name.contains(&0) || name.starts_with(b"-") {
        "is not a variable name (it holds `=` or a NUL byte, or starts with `-`)"
    } else if crate::handoff::is_reserved(key) {
        "is one of the pool's own variables (BUCKSHOT_*), which it sets itself"
    } else if value.as_encoded_bytes().contains(&0) {
        "has a value with a NUL byte"
    } else {
        return None;
    };
    Some(format!("env: {key:?} {why}"))
}

/// The callback of [`PoolBuilder::on_worker_stderr`], which a builder
/// prints as a placeholder.
#[derive(Clone)]
struct WorkerStderr(crate::stderr::LineCallback);

impl std::fmt::Debug for WorkerStderr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<callback>")
    }
}

/// The part of `sandbox` that comes up here: all of it, or with
/// [`Sandbox::best_effort`] what the probe found (with a warning for each
/// rule left out).
fn probe_sandbox(sandbox: &Sandbox) -> Result<Sandbox, Error> {
    let found = probe::run(sandbox).map_err(|message| Error::SandboxProbe { message })?;
    if let Some((rule, reason)) = found.problems.first() {
        if !sandbox.is_best_effort() {
            return Err(Error::Sandbox {
                rule: *rule,
                reason: reason.clone(),
            });
        }
    }
    for (rule, reason) in &found.problems {
        tracing::warn!(%rule, reason, "sandbox rule left out: it cannot come up here");
    }
    for (rule, reason) in &found.warnings {
        tracing::warn!(%rule, reason, "sandbox rule in force with less than it promises");
    }
    Ok(sandbox.restricted_to(found.in_force))
}
