//! Panics in tasks: where they happened, and a backtrace when asked for.
//!
//! A worker's panic hook notes where a panic on the thread running a task
//! happened and, when the pool's process asked for backtraces
//! (`RUST_BACKTRACE`), a backtrace, so that the error for that input
//! carries them. Symbolising a backtrace takes a worker tens of
//! milliseconds, so it is done only then. Panics of other threads print as
//! Rust prints them.

use std::backtrace::Backtrace;
use std::cell::{Cell, RefCell};
use std::panic::{AssertUnwindSafe, catch_unwind};

use serde::{Deserialize, Serialize};

use crate::error::PanicLocation;

/// A task's panic, as it travels from its worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct PanicReport {
    pub message: String,
    pub location: Option<PanicLocation>,
    pub backtrace: Option<String>,
}

thread_local! {
    /// Whether this thread is running a task under [`catch`].
    static IN_TASK: Cell<bool> = const { Cell::new(false) };
    /// What the hook noted of this thread's last panic in a task.
    static NOTED: RefCell<Option<(Option<PanicLocation>, Option<String>)>> =
        const { RefCell::new(None) };
}

/// Installs the worker's panic hook; `backtraces`: whether reports carry
/// one.
pub(crate) fn install_hook(backtraces: bool) {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !IN_TASK.with(Cell::get) {
            return default(info);
        }
        let location = info.location().map(|location| PanicLocation {
            file: location.file().to_owned(),
            line: location.line(),
            column: location.column(),
        });
        let backtrace = backtraces.then(|| Backtrace::force_capture().to_string());
        // What Rust prints, but the backtrace: that goes with the error.
        let thread = std::thread::current();
        let place = location
            .as_ref()
            .map_or_else(|| "an unknown place".to_owned(), ToString::to_string);
        eprintln!(
            "thread '{}' panicked at {place}:\n{}",
            thread.name().unwrap_or("<unnamed>"),
            message(info.payload())
        );
        NOTED.with(|noted| *noted.borrow_mut() = Some((location, backtrace)));
    }));
}

/// Runs a task, catching its panic.
pub(crate) fn catch<R>(task: impl FnOnce() -> R) -> Result<R, PanicReport> {
    IN_TASK.with(|in_task| in_task.set(true));
    NOTED.with(|noted| noted.borrow_mut().take());
    let result = catch_unwind(AssertUnwindSafe(task));
    IN_TASK.with(|in_task| in_task.set(false));
    result.map_err(|payload| {
        let (location, backtrace) = NOTED
            .with(|noted| noted.borrow_mut().take())
            .unwrap_or((None, None));
        PanicReport {
            message: message(&*payload),
            location,
            backtrace,
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
