//! Panics in tasks: where they happened, and a backtrace when asked for.
//!
//! A worker's panic hook notes where a panic on the thread running a task
//! happened and, when the pool's process asked for backtraces
//! (`RUST_BACKTRACE`), captures the stack, so that the error for that input
//! carries them. Panics of other threads print as Rust prints them.
//!
//! Capturing a stack is cheap; symbolising it is not: the first time in a
//! fresh process it reads the binary's debug information, 100 ms here when
//! idle and 200-500 ms on a loaded machine (then tens of microseconds).
//! That time is not the task's, and must not count against its timeout. So
//! the hook only captures, and symbolising waits until the panic has
//! reached the worker's guard ([`catch`]): a panic that the task catches
//! itself is never symbolised, and one that ends the task is announced
//! first (a callback the worker installs sends the pool a PANIC frame, which
//! stops the task's clock), then symbolised.

use std::backtrace::Backtrace;
use std::cell::RefCell;
use std::io::Write;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::OnceLock;
use std::thread::ThreadId;

use serde::{Deserialize, Serialize};

use crate::error::PanicLocation;

/// A task's panic, as it travels from its worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct PanicReport {
    pub message: String,
    pub location: Option<PanicLocation>,
    pub backtrace: Option<String>,
}

/// The thread that runs tasks: the one that installed the hook.
static TASK_THREAD: OnceLock<ThreadId> = OnceLock::new();

/// Told of a panic that ended a task, before its backtrace is symbolised.
type BeforeSymbolising = Box<dyn Fn(&PanicReport) + Send + Sync>;
static BEFORE_SYMBOLISING: OnceLock<BeforeSymbolising> = OnceLock::new();

/// What the hook noted of a panic: the report without its backtrace, and
/// the stack captured but not symbolised.
struct Noted {
    report: PanicReport,
    stack: Option<Backtrace>,
}

thread_local! {
    /// What the hook noted of the last panic on the task thread. Read only
    /// after a caught panic, so the success path of a task touches nothing.
    /// A panic that a task catches itself leaves a note behind, which the
    /// next panic overwrites; a payload re-raised with `resume_unwind`
    /// calls no hook, and is told apart by its message.
    static NOTED: RefCell<Option<Noted>> = const { RefCell::new(None) };
}

/// Installs the worker's panic hook, on the thread that will run tasks;
/// `backtraces`: whether reports carry one. `before_symbolising` is told
/// of each panic that ends a task (its report without the backtrace) just
/// before the backtrace is symbolised.
pub(crate) fn install_hook(
    backtraces: bool,
    before_symbolising: impl Fn(&PanicReport) + Send + Sync + 'static,
) {
    let _ = TASK_THREAD.set(std::thread::current().id());
    let _ = BEFORE_SYMBOLISING.set(Box::new(before_symbolising));
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if TASK_THREAD.get() != Some(&std::thread::current().id()) {
            return default(info);
        }
        let location = info.location().map(|location| PanicLocation {
            file: location.file().to_owned(),
            line: location.line(),
            column: location.column(),
        });
        let stack = (backtraces && room_to_capture()).then(Backtrace::force_capture);
        let message = message(info.payload());
        // What Rust prints, but the backtrace: that goes with the error. A
        // write error is ignored: a panic in the hook would abort.
        let thread = std::thread::current();
        let place = location
            .as_ref()
            .map_or_else(|| "an unknown place".to_owned(), ToString::to_string);
        let _ = writeln!(
            std::io::stderr(),
            "thread '{}' panicked at {place}:\n{message}",
            thread.name().unwrap_or("<unnamed>"),
        );
        let report = PanicReport {
            message,
            location,
            backtrace: None,
        };
        NOTED.with(|noted| *noted.borrow_mut() = Some(Noted { report, stack }));
    }));
}

/// Whether there is memory left to capture a backtrace. std captures one
/// holding a lock that its handler of a failed allocation takes too: a
/// capture that runs out of memory deadlocks, before the worker could
/// announce the panic (and start the pool's bound on symbolising). A task
/// that panics with less room than this (under `memory_limit`) is
/// reported without a backtrace.
fn room_to_capture() -> bool {
    // Large enough to be mapped apart and given back at once: the room is
    // still there for the capture, which needs a few KiB.
    let mut probe: Vec<u8> = Vec::new();
    probe.try_reserve_exact(CAPTURE_ROOM).is_ok()
}

/// The room [`room_to_capture`] asks for.
const CAPTURE_ROOM: usize = 1 << 20;

/// Runs a task, catching its panic.
pub(crate) fn catch<R>(task: impl FnOnce() -> R) -> Result<R, PanicReport> {
    catch_unwind(AssertUnwindSafe(task)).map_err(|payload| {
        let message = message(&*payload);
        match NOTED.with(|noted| noted.borrow_mut().take()) {
            Some(Noted { mut report, stack }) if report.message == message => {
                if let Some(stack) = stack {
                    if let Some(announce) = BEFORE_SYMBOLISING.get() {
                        announce(&report);
                    }
                    report.backtrace = Some(stack.to_string());
                }
                report
            }
            _ => PanicReport {
                message,
                location: None,
                backtrace: None,
            },
        }
    })
}

fn message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(message) = payload.downcast_ref::<&str>() {
        (*message).to_owned()
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}
