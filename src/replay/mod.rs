//! Replay files: a failed input, kept so that it can be run again alone,
//! under what confined it in its pool.
//!
//! A pool built with [`keep_failures`](crate::PoolBuilder::keep_failures)
//! writes one file per input that timed out, panicked, took its worker down
//! or broke the protocol ([`keep`], an observer of the pool, which writes
//! on a thread of its own). The file is a
//! CBOR map ([`ReplayFile`]): the task's name, the encoded input and
//! context, the error, how the worker ended, its stderr tail, when, the
//! digest of the program's task table (which tells whether a program can
//! run it), and what confined the worker: the sandbox rules in force, the
//! memory limit and the timeout. A file is a few KiB plus the input; a map
//! keeps a bounded number of them, so a map where every input fails does
//! not fill the disk, and none once the disk is full.
//!
//! Running the same program with `BUCKSHOT_REPLAY=<file>` runs that input
//! in the foreground before `main` ([`run`], from the same constructor as
//! worker mode, after it), confined as its worker was: a crash crashes the
//! same way, a panic exits 101, a hang ends at the pool's timeout, and an
//! output is printed in CBOR diagnostic notation. So `gdb --args env
//! BUCKSHOT_REPLAY=f ./app`, `rr record` and `valgrind` work as on any
//! program (with `BUCKSHOT_REPLAY_UNCONFINED` to lift what gets in their
//! way, loudly).

pub(crate) mod keep;
pub(crate) mod run;

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub(crate) use keep::KeepFailures;

use crate::hooks::Plugins;

/// Plugs the keeping of failed inputs into a pool's `plugins`.
pub(crate) fn plug(settings: &KeepFailures, plugins: &mut Plugins) {
    plugins
        .observers
        .push(Box::new(keep::Keeper::new(settings)));
}

/// The variable that asks a program to replay a kept input.
pub(crate) const REPLAY_ENV: &str = "BUCKSHOT_REPLAY";

/// What a replay file says it is.
const FORMAT: &str = "buckshot replay";
/// Bumped whenever the fields change. Version 1 did not record what
/// confined the worker.
const FORMAT_VERSION: u32 = 2;

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
    /// The sandbox in force in the worker, as a sandboxed worker is told
    /// it (rules, CPU seconds, paths); none without one.
    #[serde(default)]
    sandbox: Option<String>,
    /// Its rules by name, for people.
    #[serde(default)]
    sandbox_rules: Vec<String>,
    /// The pool's limit on a worker's address space, in bytes.
    #[serde(default)]
    memory_limit: Option<u64>,
    /// The timeout its input ran against: its map's, or the pool's.
    #[serde(default)]
    timeout: Option<Duration>,
}

/// Reads a replay file of this format, of this version or an older one.
fn read(path: &Path) -> Result<ReplayFile, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let file: ReplayFile = ciborium::de::from_reader(bytes.as_slice())
        .map_err(|e| format!("not a replay file ({e})"))?;
    if file.format != FORMAT || file.version == 0 || file.version > FORMAT_VERSION {
        return Err(format!(
            "it is `{}` version {}, this program reads `{FORMAT}` versions 1 to {FORMAT_VERSION}",
            file.format, file.version
        ));
    }
    Ok(file)
}
