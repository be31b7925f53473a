//! Run a function over a pool of worker processes: each call isolated, timed
//! out and killed if needed, without taking the program down.
//!
//! Threads share one address space: a task that hangs cannot be stopped, one
//! that segfaults or aborts takes the whole program with it, and C code that
//! is not thread-safe cannot run twice at once. buckshot runs each call in a
//! worker process instead, a copy of the current binary, and gives back one
//! `Result` per input.
//!
//! ```
//! use std::time::Duration;
//! use buckshot::{Error, Pool};
//!
//! fn harmonic_sum(x: u64) -> f64 {
//!     (1..=x).map(|d| 1.0 / d as f64).sum()
//! }
//! buckshot::register!(harmonic_sum);
//!
//! fn main() -> Result<(), Error> {
//!     let pool = Pool::builder().processes(4).timeout(Duration::from_secs(2)).build()?;
//!     for (x, result) in (1..100).zip(pool.map(harmonic_sum, 1..100u64)?) {
//!         match result {
//!             Ok(sum) => println!("H({x}) = {sum}"),
//!             Err(Error::TaskTimeout { .. }) => println!("H({x}) timed out"),
//!             Err(e) => return Err(e),
//!         }
//!     }
//!     Ok(())
//! } // dropping the pool kills and reaps every worker
//! ```
//!
//! # Tasks
//!
//! A task is any named `fn(I) -> O` whose input and output are `serde`
//! types (they travel as CBOR), or a function of up to four arguments,
//! whose input is the tuple of them (see [`Task`]). [`register!`] declares
//! it, at module level, in any module or crate of the program; nothing has
//! to run first. Closures and fn pointers cannot be registered: mapping one
//! yields [`Error::NotRegistered`].
//!
//! # Maps
//!
//! [`Pool::map`] yields results in input order, [`Pool::map_unordered`] as
//! they finish; [`map`] is a one-shot map on a fresh pool, and [`Pool::call`]
//! runs a single input. Inputs are pulled lazily and a bounded number are in
//! the pool at a time. Every input yields exactly one result: a value, or an
//! [`Error`] that names its index.
//!
//! # Features
//!
//! Each is a setting of [`PoolBuilder`] or a method of [`Pool`]; most are
//! shown by a small program of their own in the repository's
//! [`examples/`][examples] (run one with `cargo run --example NAME`):
//!
//! - **Timeouts.** [`PoolBuilder::timeout`] ends a task that runs longer:
//!   its worker is killed and replaced, and that input yields
//!   [`Error::TaskTimeout`] ([`timeout.rs`][timeout]). One map or call
//!   can have a timeout of its own: [`Pool::with_timeout`] (also on a
//!   context handle, [`WithContext::with_timeout`]).
//! - **Crashes.** A task that aborts, segfaults or exits fails its input
//!   alone with [`Error::WorkerDied`], which carries the end of the
//!   worker's stderr; a fresh worker takes over
//!   ([`crash_isolation.rs`][crash_isolation]). A panic is
//!   [`Error::TaskPanicked`], with where it happened and, with
//!   `RUST_BACKTRACE` set, the worker's backtrace ([`panic.rs`][panic]).
//! - **Memory.** [`PoolBuilder::memory_limit`] caps each worker's memory:
//!   a task past it fails its input, with [`Error::WorkerDied`] naming the
//!   [`Limit`]. [`PoolBuilder::max_worker_rss`] retires a worker whose
//!   resident memory grew past a bound, gracefully, with no input failing;
//!   [`PoolBuilder::max_tasks_per_worker`] replaces workers after so many
//!   inputs, to contain leaks.
//! - **Worker set-up.** [`PoolBuilder::initializer`] runs a registered
//!   function of no arguments once in each worker before its first task
//!   (a logger, a C library's global state), never in this program;
//!   [`PoolBuilder::env`] sets variables in workers' environment only.
//! - **Idle workers.** [`PoolBuilder::idle_timeout`] lets workers with no
//!   task go after a while, and starts them again when work comes: a pool
//!   kept in a long-running service costs nothing while it waits
//!   ([`idle_timeout.rs`][idle_timeout]).
//! - **Retries.** [`PoolBuilder::retries`] runs an input whose worker died
//!   again, on a fresh worker, before reporting it.
//! - **Replay files.** [`PoolBuilder::keep_failures`] writes each input
//!   that failed to a file ([`Error::replay_file`]); running the program
//!   with `BUCKSHOT_REPLAY=<file>` runs that input alone, in the
//!   foreground, under a debugger if you like, confined as its worker was
//!   ([`replay.rs`][replay]).
//! - **Journal** (cargo feature `journal`, see [below](#cargo-features)).
//!   [`PoolBuilder::journal`] records every `Ok` output in a file, so that
//!   a map killed halfway runs only what is missing when it runs again.
//! - **Workers on other machines.** [`PoolBuilder::workers`] starts workers
//!   through a [`Launcher`]: [`Launcher::ssh`] on hosts reached with ssh,
//!   [`Launcher::srun`] as Slurm job steps, [`Launcher::command`] behind
//!   any prefix (`docker exec -i`), [`Launcher::local`] here
//!   ([`cluster.rs`][cluster]).
//! - **Progress.** The results of a map know their length when the inputs
//!   do ([`ExactSizeIterator`], and [`MapStream`]'s `size_hint`), so a
//!   progress bar such as `indicatif`'s `.progress()` needs no more code
//!   ([`progress.rs`][progress]).
//! - **Sandbox.** A [`Sandbox`] ([`PoolBuilder::sandbox`]) keeps tasks fed
//!   untrusted inputs off the network, out of files they were not given,
//!   from starting programs and from spinning forever
//!   ([`sandbox.rs`][sandbox]).
//! - **Contexts.** [`Pool::with_context`] sends data that every input
//!   needs (a table, a model) once to each worker, for tasks whose first
//!   argument is a reference to it ([`context.rs`][context]).
//! - **Async.** [`Pool::map_stream`] and [`Pool::call_async`] are a map and
//!   a call as a [`Stream`](futures_core::Stream) and a [`Future`]: they
//!   never block the polling thread, need no particular runtime, and
//!   dropping one cancels its inputs ([`async_tokio.rs`][async_tokio]).
//! - **Logs.** `tracing` events (and `log` records) that tasks emit in
//!   workers reach the subscriber of the thread that built the pool, with
//!   the fields `input` and `worker`; the pool logs its workers' lives at
//!   debug level ([`worker_logs.rs`][worker_logs]). A task's prints go to
//!   stderr, forwarded line by line ([`PoolBuilder::forward_stderr`]), or
//!   to a function of yours ([`PoolBuilder::on_worker_stderr`]), say above
//!   a progress bar ([`progress_logs.rs`][progress_logs]).
//!
//! Tasks of several arguments ([`multi_arg.rs`][multi_arg]), tasks that
//! use a pool of their own ([`nested.rs`][nested]) and threads that share
//! one pool ([`threads.rs`][threads]) have examples too.
//!
//! [examples]: https://github.com/buckshot-rs/buckshot/tree/main/examples
//! [timeout]: https://github.com/buckshot-rs/buckshot/blob/main/examples/timeout.rs
//! [crash_isolation]: https://github.com/buckshot-rs/buckshot/blob/main/examples/crash_isolation.rs
//! [panic]: https://github.com/buckshot-rs/buckshot/blob/main/examples/panic.rs
//! [replay]: https://github.com/buckshot-rs/buckshot/blob/main/examples/replay.rs
//! [cluster]: https://github.com/buckshot-rs/buckshot/blob/main/examples/cluster.rs
//! [progress]: https://github.com/buckshot-rs/buckshot/blob/main/examples/progress.rs
//! [sandbox]: https://github.com/buckshot-rs/buckshot/blob/main/examples/sandbox.rs
//! [context]: https://github.com/buckshot-rs/buckshot/blob/main/examples/context.rs
//! [async_tokio]: https://github.com/buckshot-rs/buckshot/blob/main/examples/async_tokio.rs
//! [worker_logs]: https://github.com/buckshot-rs/buckshot/blob/main/examples/worker_logs.rs
//! [progress_logs]: https://github.com/buckshot-rs/buckshot/blob/main/examples/progress_logs.rs
//! [idle_timeout]: https://github.com/buckshot-rs/buckshot/blob/main/examples/idle_timeout.rs
//! [multi_arg]: https://github.com/buckshot-rs/buckshot/blob/main/examples/multi_arg.rs
//! [nested]: https://github.com/buckshot-rs/buckshot/blob/main/examples/nested.rs
//! [threads]: https://github.com/buckshot-rs/buckshot/blob/main/examples/threads.rs
//!
//! # Cargo features
//!
//! - `journal`: [`PoolBuilder::journal`] keeps every `Ok` output in a
//!   SQLite file (the SQLite that `rusqlite` bundles, compiled by a C
//!   compiler at build time), so that a map killed halfway resumes where
//!   it stopped. Without the feature the setter is still there, and
//!   [`PoolBuilder::build`] fails with [`Error::Config`], which names the
//!   feature.
//!
//! # How it works
//!
//! - A pool starts workers by re-executing its own binary (`/proc/self/exe`
//!   on Linux) with a hidden environment variable.
//! - In a worker, a constructor that runs before `main` (and before a test
//!   harness) sees the variable, serves tasks over stdin/stdout, and exits;
//!   `main` never runs there. A task's own prints go to stderr.
//! - Requests and replies are length-prefixed frames of CBOR values. The pool
//!   kills a worker whose task times out, replaces any worker that dies, and
//!   reaps every worker it started.

#![deny(missing_docs, missing_debug_implementations, unsafe_op_in_unsafe_fn)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(clippy::undocumented_unsafe_blocks)]

#[cfg(not(unix))]
compile_error!("buckshot supports Unix only (Linux, macOS, FreeBSD)");

mod builder;
mod bulk;
mod chunk;
mod config;
mod context;
mod delivery;
mod entry;
mod error;
mod fd_limit;
mod feed;
mod flow;
mod handoff;
mod hooks;
mod inherit;
mod journal;
mod launch;
#[cfg(test)]
mod layering;
mod logs;
mod panics;
mod pool;
mod process;
mod protocol;
mod registry;
mod replay;
mod results;
mod sandbox;
mod scheduler;
mod shared;
mod stderr;
mod stream;
mod sys;
mod task;
mod worker;

pub use crate::context::WithContext;
pub use crate::error::{Error, Limit, PanicLocation, Replay};
pub use crate::launch::{Launcher, Srun, Ssh};
pub use crate::pool::{Pool, PoolBuilder, WithTimeout, map};
pub use crate::results::{Results, UnorderedResults};
pub use crate::sandbox::{Sandbox, SandboxRule};
pub use crate::stream::{CallFuture, MapStream};
pub use crate::task::{Args, ContextArgs, PlainTask, Task};

/// Registers a function as a task that pools can run.
///
/// Write it at module level, next to the function, in any module or crate
/// linked into the program. The function takes up to four arguments and
/// returns one output, all `serde` types (see [`Task`]); one of no
/// arguments can be a pool's [initializer](PoolBuilder::initializer):
///
/// ```
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Job { id: u32, text: String }
///
/// fn word_count(job: Job) -> (u32, usize) {
///     (job.id, job.text.split_whitespace().count())
/// }
/// buckshot::register!(word_count);
/// # fn main() {}
/// ```
///
/// Generic functions are registered once per instantiation:
/// `buckshot::register!(identity::<u64>);`.
#[macro_export]
macro_rules! register {
    ($f:path) => {
        const _: () = {
            fn __buckshot_name() -> &'static str {
                $crate::__private::type_name_of_val(&$f)
            }
            fn __buckshot_type_id() -> $crate::__private::TypeId {
                $crate::__private::type_id_of_val(&$f)
            }
            fn __buckshot_run(
                context: ::core::option::Option<&mut $crate::__private::ContextSlot>,
                input: &[u8],
                output: &mut $crate::__private::Vec<u8>,
                scratch: &mut [u8],
            ) {
                $crate::__private::run_task(&$f, context, input, output, scratch)
            }
            $crate::__private::inventory::submit! {
                $crate::__private::Entry::new(__buckshot_name, __buckshot_type_id, __buckshot_run)
            }
        };
    };
}

// Not public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::registry::{ContextSlot, Entry};
    pub use inventory;
    pub use std::any::{TypeId, type_name_of_val};
    pub use std::vec::Vec;

    pub fn type_id_of_val<T: 'static>(_: &T) -> TypeId {
        TypeId::of::<T>()
    }

    pub fn run_task<F, M>(
        f: &F,
        context: Option<&mut ContextSlot>,
        input: &[u8],
        output: &mut Vec<u8>,
        scratch: &mut [u8],
    ) where
        F: crate::Task<M>,
    {
        crate::registry::run_task(f, context, input, output, scratch)
    }
}

// The worker entry point. It must run after every `inventory` registration,
// which are constructors too: `naked` puts it in the unsuffixed
// `.init_array`, which runs after those of the crates that depend on
// buckshot (they are linked first). A priority, even `late`, runs it too
// early, and the worker would see no tasks (the handshake catches that).
//
// SAFETY: the hook runs before Rust's runtime is set up. In a process that
// is not a worker it returns at once. In a worker it touches only the
// environment, file descriptors, signal dispositions and threads of its
// own, catches the panic of every task, and ends with `exit`: it never
// returns or unwinds into the code that called it. In a process started
// only to run a launcher's program, it closes inherited descriptors and
// execs that program (or exits).
#[ctor::ctor(unsafe, naked)]
fn buckshot_worker_entry() {
    entry::run();
}

// The README's examples compile and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
