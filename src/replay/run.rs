//! The foreground side: a kept input run again, before `main`, confined as
//! its worker was.
//!
//! In the order a worker sets itself up: the sandbox (while this is the
//! only thread), through the same code as a worker
//! ([`crate::sandbox::apply`]); the memory limit; then a watchdog thread,
//! which ends the process at the pool's timeout (exit status 124, as
//! `timeout(1)` does), or once the task used its CPU budget and a second
//! more (the sandbox's `RLIMIT_CPU` ends it first, unless the task lifted
//! it); then the task, on this thread. A rule that cannot come up here
//! refuses the replay.
//!
//! [`UNCONFINED_ENV`] lifts some of it for a debugging session (a
//! debugger stopped at a breakpoint outlives any timeout; valgrind needs
//! more address space): `all`, or some of `sandbox`, `memory_limit`,
//! `timeout`, separated by commas. What it lifts is said on stderr. A
//! file of format version 1, which recorded none of it, replays only with
//! `all`.

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rustix::process::Rlimit;

use super::{FORMAT, REPLAY_ENV, ReplayFile, read};
use crate::flow::SCRATCH_BYTES;
use crate::protocol::{self, Outcome};
use crate::registry::{ContextSlot, registry};
use crate::sandbox::Sandbox;

/// The variable that lifts what confined a worker from its replay.
pub(crate) const UNCONFINED_ENV: &str = "BUCKSHOT_REPLAY_UNCONFINED";

/// Exit code of a replay that could not start (a bad file, another
/// program's file, a privileged process, a sandbox that cannot come up).
pub(crate) const EXIT_REFUSED: i32 = 2;
/// Exit code of a replayed task that panicked, as Rust's own.
const EXIT_PANICKED: i32 = 101;
/// Exit code of a replayed task that ran past its pool's timeout, as
/// `timeout(1)`'s.
const EXIT_TIMED_OUT: i32 = 124;
/// How often the watchdog reads the CPU time used.
const CPU_POLL: Duration = Duration::from_millis(50);

/// What a replay runs without.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Lifted {
    sandbox: bool,
    memory_limit: bool,
    timeout: bool,
}

impl Lifted {
    const ALL: Lifted = Lifted {
        sandbox: true,
        memory_limit: true,
        timeout: true,
    };

    fn parse(value: &str) -> Result<Lifted, String> {
        let mut lifted = Lifted::default();
        for word in value.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            match word {
                "all" => lifted = Lifted::ALL,
                "sandbox" => lifted.sandbox = true,
                "memory_limit" => lifted.memory_limit = true,
                "timeout" => lifted.timeout = true,
                other => {
                    return Err(format!(
                        "{UNCONFINED_ENV} holds `{other}`: say `all`, or some of `sandbox`, \
                         `memory_limit`, `timeout`, separated by commas"
                    ));
                }
            }
        }
        Ok(lifted)
    }
}

/// What confines the replay.
#[derive(Debug, Default)]
struct Limits {
    sandbox: Option<Sandbox>,
    memory_limit: Option<u64>,
    timeout: Option<Duration>,
}

impl Limits {
    /// The limits `file` records, but those `lifted`; and what was lifted,
    /// in words.
    fn of(file: &ReplayFile, lifted: Lifted) -> Result<(Limits, Vec<String>), String> {
        let mut gone = Vec::new();
        let sandbox = match &file.sandbox {
            Some(_) if lifted.sandbox => {
                gone.push(format!("its sandbox ({})", file.sandbox_rules.join(", ")));
                None
            }
            Some(text) => Some(Sandbox::from_env(text).ok_or_else(|| {
                format!("its sandbox is recorded as `{text}`, which this program does not read")
            })?),
            None => None,
        };
        let mut limits = Limits {
            sandbox,
            memory_limit: file.memory_limit,
            timeout: file.timeout,
        };
        if lifted.memory_limit {
            if let Some(bytes) = limits.memory_limit.take() {
                gone.push(format!("its memory limit ({bytes} bytes)"));
            }
        }
        if lifted.timeout {
            if let Some(timeout) = limits.timeout.take() {
                gone.push(format!("its timeout ({timeout:?})"));
            }
        }
        Ok((limits, gone))
    }

    /// What is in force, in words; `None` for nothing.
    fn describe(&self, file: &ReplayFile) -> Option<String> {
        let mut parts = Vec::new();
        if self.sandbox.is_some() {
            parts.push(format!("sandbox ({})", file.sandbox_rules.join(", ")));
        }
        if let Some(bytes) = self.memory_limit {
            parts.push(format!("memory limit of {bytes} bytes"));
        }
        if let Some(timeout) = self.timeout {
            parts.push(format!("timeout of {timeout:?}"));
        }
        (!parts.is_empty()).then(|| parts.join(", "))
    }

    /// Applies the sandbox and the memory limit to this process, which
    /// must have one thread.
    fn apply(&self) -> Result<(), String> {
        if let Some(sandbox) = &self.sandbox {
            let applied = crate::sandbox::apply::apply(sandbox);
            if let Some((rule, why)) = applied.problems.first() {
                return Err(format!(
                    "its pool's sandbox rule {rule} does not come up here: {why}; \
                     to run it without the sandbox, set {UNCONFINED_ENV}=sandbox"
                ));
            }
        }
        // The limit a worker sets (see `worker::limit_memory`).
        if let Some(bytes) = self.memory_limit {
            let limit = Rlimit {
                current: Some(bytes),
                maximum: Some(bytes),
            };
            let resource = crate::sys::MEMORY_RESOURCE.ok_or_else(|| {
                format!("memory_limit is not enforced on {}", crate::sys::platform())
            })?;
            rustix::process::setrlimit(resource, limit)
                .map_err(|e| format!("could not apply its memory limit of {bytes} bytes: {e}"))?;
        }
        Ok(())
    }

    /// Starts the watchdog of the timeout and the CPU budget, if there is
    /// one; the task starts now.
    fn watch(&self) -> Result<(), String> {
        let cpu = self
            .sandbox
            .as_ref()
            .and_then(Sandbox::cpu_seconds)
            .map(Duration::from_secs);
        if self.timeout.is_none() && cpu.is_none() {
            return Ok(());
        }
        let (timeout, started) = (self.timeout, Instant::now());
        std::thread::Builder::new()
            .name("buckshot-replay-watchdog".into())
            .spawn(move || watchdog(started, timeout, cpu))
            .map(drop)
            .map_err(|e| format!("could not start its watchdog: {e}"))
    }
}

/// Ends the process once `timeout` passed since `started`, or once it used
/// `cpu` of CPU time and a second more.
fn watchdog(started: Instant, timeout: Option<Duration>, cpu: Option<Duration>) {
    loop {
        let elapsed = started.elapsed();
        if let Some(timeout) = timeout.filter(|timeout| elapsed >= *timeout) {
            eprintln!(
                "buckshot: the replay ran past its pool's timeout of {timeout:?} \
                 (in the pool: a TaskTimeout); ended"
            );
            // SAFETY: _exit ends the process at once: exit handlers could
            // wait for locks the task holds.
            unsafe { libc::_exit(EXIT_TIMED_OUT) };
        }
        if let Some(limit) = cpu.filter(|limit| cpu_used() >= *limit + Duration::from_secs(1)) {
            eprintln!(
                "buckshot: the replay used more than its CPU time limit of {}s \
                 (sandbox cpu_time); ended",
                limit.as_secs()
            );
            die_of(libc::SIGXCPU);
        }
        let left = timeout.map(|timeout| timeout - elapsed);
        let nap = match (left, cpu) {
            (Some(left), None) => left,
            (Some(left), Some(_)) => left.min(CPU_POLL),
            (None, _) => CPU_POLL,
        };
        std::thread::sleep(nap);
    }
}

/// The CPU time this process used, all its threads.
fn cpu_used() -> Duration {
    let used = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(
        u64::try_from(used.tv_sec).unwrap_or(0),
        u32::try_from(used.tv_nsec).unwrap_or(0),
    )
}

/// Ends the process with `signal`, whatever the task made of it.
fn die_of(signal: libc::c_int) -> ! {
    // SAFETY: setting a signal's disposition to its default and raising it
    // have no memory-safety preconditions; _exit is the way out if the
    // signal did not end the process.
    unsafe {
        libc::signal(signal, libc::SIG_DFL);
        libc::raise(signal);
        libc::_exit(128 + signal)
    }
}

/// Runs the input of the replay file at `path` and exits. Called before
/// `main` ([`crate::entry`]), in a process started with [`REPLAY_ENV`].
pub(crate) fn replay(path: OsString) -> ! {
    let unconfined = std::env::var_os(UNCONFINED_ENV);
    // SAFETY: this runs in a constructor before `main`, where no thread of
    // Rust's runtime or ours reads the environment. Removed so that a pool
    // the task starts, and its subprocesses, do not replay too.
    unsafe {
        std::env::remove_var(REPLAY_ENV);
        std::env::remove_var(UNCONFINED_ENV);
    }
    let lifted = match unconfined {
        None => Lifted::default(),
        Some(value) => value
            .to_str()
            .ok_or_else(|| format!("{UNCONFINED_ENV} is not UTF-8"))
            .and_then(Lifted::parse)
            .unwrap_or_else(|why| refuse(&why)),
    };
    let path = PathBuf::from(path);
    let file = match read(&path) {
        Ok(file) => file,
        Err(why) => refuse(&format!("cannot replay {}: {why}", path.display())),
    };
    if file.version < 2 && lifted != Lifted::ALL {
        refuse(&format!(
            "cannot replay {}: it is `{FORMAT}` version {}, which does not record the sandbox \
             and limits of its pool; to run it without them, set {UNCONFINED_ENV}=all",
            path.display(),
            file.version
        ));
    }
    let registry = registry();
    let entry = registry
        .tasks
        .iter()
        .find(|entry| (entry.name)() == file.task);
    let entry = match entry {
        Some(entry)
            if file.registry == registry.digest && file.tasks as usize == registry.tasks.len() =>
        {
            entry
        }
        _ => refuse(&format!(
            "cannot replay {}: it was kept by another program ({}, task `{}`), whose \
             registered tasks differ from this one's; run it with the program that kept it",
            path.display(),
            file.program,
            file.task
        )),
    };
    let (limits, gone) = Limits::of(&file, lifted)
        .unwrap_or_else(|why| refuse(&format!("cannot replay {}: {why}", path.display())));
    eprintln!(
        "buckshot: replaying input {} of `{}` from {} (it failed with: {})",
        file.index,
        file.task,
        path.display(),
        file.error
    );
    if let Some(limits) = limits.describe(&file) {
        eprintln!("buckshot: confined as its worker was: {limits}");
    }
    if lifted != Lifted::default() {
        let what = if file.version < 2 {
            "its file records no sandbox or limits: running unconfined".to_owned()
        } else if gone.is_empty() {
            "its pool had none of what it lifts".to_owned()
        } else {
            format!("running WITHOUT {}", gone.join(", "))
        };
        eprintln!("buckshot: WARNING: {UNCONFINED_ENV} is set: {what}");
    }
    if let Err(why) = limits.apply().and_then(|()| limits.watch()) {
        refuse(&format!("cannot replay {}: {why}", path.display()));
    }
    let mut context = file.context.map(ContextSlot::new);
    let mut out = Vec::new();
    let mut scratch = vec![0; SCRATCH_BYTES];
    (entry.run)(context.as_mut(), &file.input, &mut out, &mut scratch);
    match protocol::decode_outcome::<ciborium::Value>(&out, &mut scratch) {
        Ok(Outcome::Ok(value)) => {
            eprintln!("buckshot: the task returned:");
            let mut stdout = std::io::stdout().lock();
            let _ = writeln!(stdout, "{}", diagnostic(&value));
            let _ = stdout.flush();
            std::process::exit(0)
        }
        Ok(Outcome::Panicked(report)) => {
            // Rust's panic hook has printed the message and place.
            eprintln!("buckshot: the task panicked: {}", report.message);
            std::process::exit(EXIT_PANICKED)
        }
        Ok(Outcome::Codec(message)) => refuse(&format!("could not {message}")),
        Err(e) => refuse(&format!("could not read the task's output: {e}")),
    }
}

fn refuse(message: &str) -> ! {
    eprintln!("buckshot: {message}");
    std::process::exit(EXIT_REFUSED)
}
/// A CBOR value in diagnostic notation (RFC 8949, section 8): JSON for
/// what JSON can say, `h'..'` for bytes, `tag(value)` for tags.
pub(crate) fn diagnostic(value: &ciborium::Value) -> String {
    use ciborium::Value;
    let join = |items: Vec<String>| items.join(", ");
    match value {
        Value::Integer(n) => i128::from(*n).to_string(),
        Value::Bytes(bytes) => {
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            format!("h'{hex}'")
        }
        Value::Float(x) if x.is_nan() => "NaN".to_owned(),
        Value::Float(x) if x.is_infinite() => {
            if *x > 0.0 { "Infinity" } else { "-Infinity" }.to_owned()
        }
        Value::Float(x) => format!("{x:?}"),
        Value::Text(text) => text_literal(text),
        Value::Bool(b) => b.to_string(),
        Value::Null => "null".to_owned(),
        Value::Tag(tag, inner) => format!("{tag}({})", diagnostic(inner)),
        Value::Array(items) => format!("[{}]", join(items.iter().map(diagnostic).collect())),
        Value::Map(entries) => format!(
            "{{{}}}",
            join(
                entries
                    .iter()
                    .map(|(k, v)| format!("{}: {}", diagnostic(k), diagnostic(v)))
                    .collect()
            )
        ),
        // `Value` is non-exhaustive.
        other => format!("{other:?}"),
    }
}

/// A string as JSON writes it.
fn text_literal(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use ciborium::Value;

    use super::*;

    #[test]
    fn values_print_in_diagnostic_notation() {
        let value = Value::Map(vec![
            (Value::Text("id".into()), Value::Integer(7.into())),
            (
                Value::Text("words".into()),
                Value::Array(vec![Value::Text("a\"b\n".into()), Value::Null]),
            ),
            (Value::Integer((-1).into()), Value::Bytes(vec![0, 0xff])),
            (
                Value::Text("x".into()),
                Value::Array(vec![
                    Value::Float(1.0),
                    Value::Float(f64::NAN),
                    Value::Bool(true),
                ]),
            ),
            (
                Value::Text("t".into()),
                Value::Tag(1, Box::new(Value::Integer(0.into()))),
            ),
        ]);
        assert_eq!(
            diagnostic(&value),
            r#"{"id": 7, "words": ["a\"b\n", null], -1: h'00ff', "x": [1.0, NaN, true], "t": 1(0)}"#
        );
    }
}
