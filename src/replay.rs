//! Replay files: a failed input, kept so that it can be run again alone.
//!
//! A pool built with [`keep_failures`](crate::PoolBuilder::keep_failures)
//! writes one file per input that timed out, panicked, took its worker down
//! or broke the protocol ([`Keeper`], on the pool's thread). The file is a
//! CBOR map ([`ReplayFile`]): the task's name, the encoded input and
//! context, the error, how the worker ended, its stderr tail, when, and the
//! digest of the program's task table, which tells whether a program can
//! run it. A file is a few KiB plus the input; a map keeps a bounded number
//! of them, so a map where every input fails does not fill the disk.
//!
//! Running the same program with `BUCKSHOT_REPLAY=<file>` runs that input
//! in the foreground before `main` ([`replay_if_asked`], from the same
//! constructor as worker mode, after it): a crash crashes the same way, a
//! panic exits 101, a hang hangs, and an output is printed in CBOR
//! diagnostic notation. So `gdb --args env BUCKSHOT_REPLAY=f ./app`,
//! `rr record` and `valgrind` work as on any program.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Replay};
use crate::flow::SCRATCH_BYTES;
use crate::protocol::{self, Outcome};
use crate::registry::{ContextSlot, registry};
use crate::shared::{Chunk, Shared};

/// The variable that asks a program to replay a kept input.
pub(crate) const REPLAY_ENV: &str = "BUCKSHOT_REPLAY";

/// What a replay file says it is.
const FORMAT: &str = "buckshot replay";
/// Bumped whenever the fields change.
const FORMAT_VERSION: u32 = 1;

/// Exit code of a replay that could not start (a bad file, another
/// program's file, a privileged process).
const EXIT_REFUSED: i32 = 2;
/// Exit code of a replayed task that panicked, as Rust's own.
const EXIT_PANICKED: i32 = 101;

/// The contents of a replay file.
#[derive(Debug, Serialize, Deserialize)]
struct ReplayFile {
    format: String,
    version: u32,
    /// The task's name (its fn's type name).
    task: String,
    /// The program's task table: how many, and a digest of their names.
    tasks: u32,
    registry: u64,
    /// The program that kept it, for people.
    program: String,
    /// The input's position in its map.
    index: u64,
    #[serde(with = "serde_bytes")]
    input: Vec<u8>,
    /// The map's context, if its task reads one.
    #[serde(with = "serde_bytes")]
    context: Option<Vec<u8>>,
    /// The error, as its message says it.
    error: String,
    /// How the worker ended, when it did: its exit code or signal.
    exit_code: Option<i32>,
    signal: Option<i32>,
    /// The last few KiB the worker wrote to stderr.
    stderr: String,
    /// When, in seconds since the Unix epoch.
    time: u64,
}

/// The pool's side: writes the replay files of a pool that keeps failures.
pub(crate) struct Keeper {
    dir: PathBuf,
    per_map: u32,
    /// Files kept so far, by map.
    kept: HashMap<u64, u32>,
    /// Where the maps' contexts are found.
    shared: Arc<Shared>,
}

/// The settings of a pool that keeps failures.
#[derive(Debug, Clone)]
pub(crate) struct KeepFailures {
    pub dir: PathBuf,
    pub per_map: u32,
}

impl Keeper {
    pub(crate) fn new(settings: &KeepFailures, shared: Arc<Shared>) -> Keeper {
        Keeper {
            dir: settings.dir.clone(),
            per_map: settings.per_map,
            kept: HashMap::new(),
            shared,
        }
    }

    /// Writes the replay file of input `index` of `chunk`'s map, encoded
    /// as `input`, which failed with `error`, and notes it in the error.
    /// Never call it with the pool's state locked.
    ///
    /// The write is a small file written once, without `fsync`. A failure
    /// to write is logged and noted in the error, whose kind it does not
    /// change.
    pub(crate) fn keep(
        &mut self,
        chunk: &Chunk,
        index: usize,
        input: &[u8],
        error: &mut Error,
        status: Option<ExitStatus>,
        stderr: &str,
    ) {
        let message = error.to_string();
        let Some(slot) = error.replay_mut() else {
            return;
        };
        let kept = self.kept.get(&chunk.map).copied().unwrap_or(0);
        if kept >= self.per_map {
            *slot = Some(Replay::NotKept(format!(
                "its map already kept {} replay files",
                self.per_map
            )));
            return;
        }
        let entry = registry().tasks[chunk.task as usize];
        let file = ReplayFile {
            format: FORMAT.to_owned(),
            version: FORMAT_VERSION,
            task: (entry.name)().to_owned(),
            tasks: registry().tasks.len() as u32,
            registry: registry().digest,
            program: std::env::current_exe()
                .map(|path| path.display().to_string())
                .unwrap_or_default(),
            index: index as u64,
            input: input.to_vec(),
            context: self.context(chunk.context),
            error: message,
            exit_code: status.and_then(|status| status.code()),
            signal: status.and_then(|status| status.signal()),
            stderr: stderr.to_owned(),
            time: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |since| since.as_secs()),
        };
        match self.write(&file) {
            Ok(path) => {
                *self.kept.entry(chunk.map).or_default() += 1;
                tracing::debug!(index, path = %path.display(), "replay file written");
                *slot = Some(Replay::File(path));
            }
            Err(e) => {
                tracing::warn!(index, dir = %self.dir.display(), error = %e, "could not write a replay file");
                *slot = Some(Replay::NotKept(format!("could not write it: {e}")));
            }
        }
    }

    /// The encoded value of context `id`, if it is one and still alive.
    fn context(&self, id: u64) -> Option<Vec<u8>> {
        if id == 0 {
            return None;
        }
        let context = self.shared.lock().contexts.get(&id)?.upgrade()?;
        let (_, value) = protocol::parse_context(&context.frame[protocol::LEN_BYTES..]).ok()?;
        Some(value.to_vec())
    }

    /// Writes a new file, named after the task, input and process, and
    /// never over an existing one.
    fn write(&self, file: &ReplayFile) -> std::io::Result<PathBuf> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let short: String = file
            .task
            .rsplit("::")
            .next()
            .unwrap_or("task")
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let mut bytes = Vec::new();
        protocol::encode(file, &mut bytes).map_err(std::io::Error::other)?;
        loop {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let name = format!("{short}-{}-{}-{n}.replay", file.index, std::process::id());
            let path = self.dir.join(name);
            match std::fs::File::create_new(&path) {
                Ok(mut out) => {
                    out.write_all(&bytes)?;
                    return Ok(path);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

impl std::fmt::Debug for Keeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keeper")
            .field("dir", &self.dir)
            .field("per_map", &self.per_map)
            .finish()
    }
}

/// Runs the input of a replay file if this process was started with
/// [`REPLAY_ENV`], and exits; otherwise returns at once. Called before
/// `main`, after worker mode (a worker never replays).
pub(crate) fn replay_if_asked() {
    let Some(path) = std::env::var_os(REPLAY_ENV) else {
        return;
    };
    if crate::worker::is_privileged() {
        refuse(&format!(
            "refusing to replay in a privileged process (setuid, setgid or file capabilities); \
             unset {REPLAY_ENV}"
        ));
    }
    // SAFETY: this runs in a constructor before `main`, where no thread of
    // Rust's runtime or ours reads the environment. Removed so that a pool
    // the task starts, and its subprocesses, do not replay too.
    unsafe { std::env::remove_var(REPLAY_ENV) };
    let path = PathBuf::from(path);
    let file = match read(&path) {
        Ok(file) => file,
        Err(why) => refuse(&format!("cannot replay {}: {why}", path.display())),
    };
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
    eprintln!(
        "buckshot: replaying input {} of `{}` from {} (it failed with: {})",
        file.index,
        file.task,
        path.display(),
        file.error
    );
    let mut context = file.context.map(ContextSlot::new);
    let mut out = Vec::new();
    let mut scratch = vec![0; SCRATCH_BYTES];
    (entry.run)(context.as_mut(), &file.input, &mut out, &mut scratch);
    match protocol::decode_outcome::<ciborium::Value>(&out, &mut scratch, None, u64::MAX) {
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

fn read(path: &Path) -> Result<ReplayFile, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let file: ReplayFile = ciborium::de::from_reader(bytes.as_slice())
        .map_err(|e| format!("not a replay file ({e})"))?;
    if file.format != FORMAT || file.version != FORMAT_VERSION {
        return Err(format!(
            "it is `{}` version {}, this program reads `{FORMAT}` version {FORMAT_VERSION}",
            file.format, file.version
        ));
    }
    Ok(file)
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
