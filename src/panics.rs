//! Panics in tasks: where they happened, and a backtrace when asked for.
//!
//! A worker's panic hook notes where a panic on the thread running a task
//! happened and, when the pool's process asked for backtraces
//! (`RUST_BACKTRACE`), a backtrace, so that the error for that input
//! carries them. Symbolising a backtrace takes a worker tens of
//! milliseconds, so it is done only then. Panics of other threads print as
//! Rust prints them.

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

thread_local! {
    /// What the hook noted of the last panic on the task thread. Read only
    /// after a caught panic, so the success path of a task touches nothing.
    /// A panic that a task catches itself leaves a note behind, which the
    /// next panic overwrites; a payload re-raised with `resume_unwind`
    /// calls no hook, and is told apart by its message.
    static NOTED: RefCell<Option<PanicReport>> = const { RefCell::new(None) };
}

/// Installs the worker's panic hook, on the thread that will run tasks;
/// `backtraces`: whether reports carry one.
pub(crate) fn install_hook(backtraces: bool) {
    let _ = TASK_THREAD.set(std::thread::current().id());
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
        let backtrace = backtraces.then(|| Backtrace::force_capture().to_string());
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
            backtrace,
        };
        NOTED.with(|noted| *noted.borrow_mut() = Some(report));
    }));
}

/// Runs a task, catching its panic.
pub(crate) fn catch<R>(task: impl FnOnce() -> R) -> Result<R, PanicReport> {
    catch_unwind(AssertUnwindSafe(task)).map_err(|payload| {
        let message = message(&*payload);
        match NOTED.with(|noted| noted.borrow_mut().take()) {
            Some(report) if report.message == message => report,
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
