//! The pool's side: writing the replay files of failed inputs.
//!
//! A file is written whole under a hidden temporary name in the same
//! directory, then renamed to its own (never over another file), so that
//! no file is ever seen half-written: a write that fails removes what it
//! wrote. A full file system (`ENOSPC`, `EDQUOT`) stops the writing for
//! that map; its later failures say why they have no file.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{FORMAT, FORMAT_VERSION, ReplayFile};
use crate::chunk::Chunk;
use crate::error::{Error, Replay};
use crate::protocol;
use crate::registry::registry;
use crate::sandbox::Sandbox;
use crate::shared::Shared;

/// The settings of a pool that keeps failures.
#[derive(Debug, Clone)]
pub(crate) struct KeepFailures {
    pub dir: PathBuf,
    pub per_map: u32,
    /// The sandbox in force in the pool's workers, if any.
    pub sandbox: Option<Sandbox>,
}

/// What confined the pool's workers, as a replay file records it.
#[derive(Debug, Clone, Default)]
struct Confinement {
    sandbox: Option<String>,
    sandbox_rules: Vec<String>,
    memory_limit: Option<u64>,
    timeout: Option<Duration>,
}

/// What a map kept so far.
#[derive(Debug, Default)]
struct Kept {
    files: u32,
    /// Why it writes no more, once its file system is full.
    stopped: Option<String>,
}

/// The pool's side: writes the replay files of a pool that keeps failures.
pub(crate) struct Keeper {
    dir: PathBuf,
    per_map: u32,
    confinement: Confinement,
    /// By map: a map's entry goes once the map is gone.
    kept: HashMap<u64, Kept>,
    /// Where the maps and their contexts are found.
    shared: Arc<Shared>,
}

impl Keeper {
    pub(crate) fn new(settings: &KeepFailures, shared: Arc<Shared>) -> Keeper {
        let confinement = Confinement {
            sandbox: settings.sandbox.as_ref().map(Sandbox::to_env),
            sandbox_rules: settings
                .sandbox
                .iter()
                .flat_map(|sandbox| sandbox.rules().list())
                .map(|rule| rule.to_string())
                .collect(),
            memory_limit: shared.config.memory_limit,
            timeout: shared.config.timeout,
        };
        Keeper {
            dir: settings.dir.clone(),
            per_map: settings.per_map,
            confinement,
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
        if !self.kept.contains_key(&chunk.map) {
            // A new map: forget those that are gone.
            let state = self.shared.lock();
            self.kept.retain(|map, _| state.maps.contains_key(map));
        }
        let kept = self.kept.entry(chunk.map).or_default();
        if let Some(why) = &kept.stopped {
            *slot = Some(Replay::NotKept(why.clone()));
            return;
        }
        if kept.files >= self.per_map {
            *slot = Some(Replay::NotKept(format!(
                "its map already kept {} replay files",
                self.per_map
            )));
            return;
        }
        let entry = registry().tasks[chunk.task as usize];
        let confinement = self.confinement.clone();
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
            context: context(&self.shared, chunk.context),
            error: message,
            exit_code: status.and_then(|status| status.code()),
            signal: status.and_then(|status| status.signal()),
            stderr: stderr.to_owned(),
            time: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |since| since.as_secs()),
            sandbox: confinement.sandbox,
            sandbox_rules: confinement.sandbox_rules,
            memory_limit: confinement.memory_limit,
            timeout: confinement.timeout,
        };
        let kept = self.kept.entry(chunk.map).or_default();
        match write(&self.dir, &file) {
            Ok(path) => {
                kept.files += 1;
                tracing::debug!(index, path = %path.display(), "replay file written");
                *slot = Some(Replay::File(path));
            }
            Err(e) => {
                tracing::warn!(index, dir = %self.dir.display(), error = %e, "could not write a replay file");
                if matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)) {
                    kept.stopped = Some(format!(
                        "{} is full ({e}): its map writes no more replay files",
                        self.dir.display()
                    ));
                }
                *slot = Some(Replay::NotKept(format!("could not write it: {e}")));
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

/// The encoded value of context `id`, if it is one and still alive.
fn context(shared: &Shared, id: u64) -> Option<Vec<u8>> {
    if id == 0 {
        return None;
    }
    let context = shared.lock().contexts.get(&id)?.upgrade()?;
    let (_, value) = protocol::parse_context(&context.frame[protocol::LEN_BYTES..]).ok()?;
    Some(value.to_vec())
}

/// Writes `file` in `dir` under a new name, made of the task, input and
/// process, and never over an existing file: whole, or not at all.
fn write(dir: &Path, file: &ReplayFile) -> std::io::Result<PathBuf> {
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
        let (path, temporary) = (dir.join(&name), dir.join(format!(".{name}.tmp")));
        let mut out = match std::fs::File::create_new(&temporary) {
            Ok(out) => out,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        };
        let written = out
            .write_all(&bytes)
            .and_then(|()| rename_new(&temporary, &path));
        drop(out);
        match written {
            Ok(()) => return Ok(path),
            Err(e) => {
                let _ = std::fs::remove_file(&temporary);
                if e.kind() != std::io::ErrorKind::AlreadyExists {
                    return Err(e);
                }
            }
        }
    }
}

/// Renames `from` to `to`, unless `to` exists.
fn rename_new(from: &Path, to: &Path) -> std::io::Result<()> {
    use rustix::fs::{CWD, RenameFlags, renameat_with};
    match renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
        Ok(()) => Ok(()),
        // A file system that cannot refuse to replace: check first, and
        // say that the name is taken, as `NOREPLACE` would.
        Err(rustix::io::Errno::INVAL) if to.exists() => Err(rustix::io::Errno::EXIST.into()),
        Err(rustix::io::Errno::INVAL) => std::fs::rename(from, to),
        Err(e) => Err(e.into()),
    }
}
