//! The pool's side: writing the replay files of failed inputs, on a
//! thread of their own, so that a slow or full file system never stalls
//! the pool's thread (and the timeouts it keeps).
//!
//! A failure to keep is held back, on the pool's thread, until its file is
//! written, and then posted with the file's path ([`Keeper`], an
//! observer). One whose file takes longer than [`WRITE_BOUND`] goes
//! without it, saying why; so do those that find the writer
//! [`MAX_BACKLOG`] bytes behind. A file is written whole under a hidden
//! temporary name in the same directory, then renamed to its own (never
//! over another file), so that no file is ever seen half-written: a write
//! that fails removes what it wrote. A full file system (`ENOSPC`,
//! `EDQUOT`) stops the writing for that map; its later failures say why
//! they have no file.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::{FORMAT, FORMAT_VERSION, ReplayFile};
use crate::chunk::context_value;
use crate::error::{Error, Replay};
use crate::hooks::{Failed, Observer, Ring, Wants};
use crate::protocol;
use crate::registry::registry;
use crate::sandbox::Sandbox;

/// How long a failure waits for its file at most.
pub(crate) const WRITE_BOUND: Duration = Duration::from_secs(10);

/// How many bytes of files may wait for the writer; past it, failures go
/// without one.
pub(crate) const MAX_BACKLOG: usize = 256 << 20;

/// The settings of a pool that keeps failures.
#[derive(Debug, Clone)]
pub(crate) struct KeepFailures {
    pub dir: PathBuf,
    pub per_map: u32,
    /// The sandbox in force in the pool's workers, if any.
    pub sandbox: Option<Sandbox>,
    /// The pool's limit on a worker's memory: a replay runs under it, and
    /// under the timeout its input ran against (its chunk's).
    pub memory_limit: Option<u64>,
}

/// What confined the pool's workers, as a replay file records it.
#[derive(Debug, Clone, Default)]
struct Confinement {
    sandbox: Option<String>,
    sandbox_rules: Vec<String>,
    memory_limit: Option<u64>,
}

/// What a map kept so far.
#[derive(Debug, Default)]
struct Kept {
    /// Files written or being written.
    files: u32,
    /// Why it writes no more, once its file system is full.
    stopped: Option<String>,
}

/// A failure waiting for its file.
struct Held {
    map: u64,
    index: usize,
    error: Error,
    since: Instant,
    bytes: usize,
}

/// The writing thread, and what comes back from it.
struct Writer {
    jobs: Sender<Job>,
    done: Receiver<(u64, Written)>,
}

/// A file to write for input `file.index` of map `map`, whose context's
/// value the writer takes from its frame.
struct Job {
    id: u64,
    map: u64,
    file: ReplayFile,
    context_frame: Option<Arc<Vec<u8>>>,
}

/// What became of a job: its file, or why there is none; and whether its
/// map writes no more (its file system is full).
struct Written {
    file: Result<PathBuf, String>,
    stops: Option<String>,
    /// Not written in time: it may still be.
    late: bool,
}

/// The pool's side: holds the failures of a pool that keeps them until
/// their files are written.
pub(crate) struct Keeper {
    dir: PathBuf,
    per_map: u32,
    confinement: Confinement,
    /// By map: a map's entry goes once the map is gone.
    kept: HashMap<u64, Kept>,
    /// By job: in the order they came, so the first is due first.
    held: BTreeMap<u64, Held>,
    held_bytes: usize,
    next_job: u64,
    /// Started at the first failure.
    writer: Option<Writer>,
    ring: Option<Ring>,
}

impl Keeper {
    pub(crate) fn new(settings: &KeepFailures) -> Keeper {
        let confinement = Confinement {
            sandbox: settings.sandbox.as_ref().map(Sandbox::to_env),
            sandbox_rules: settings
                .sandbox
                .iter()
                .flat_map(|sandbox| sandbox.rules().list())
                .map(|rule| rule.to_string())
                .collect(),
            memory_limit: settings.memory_limit,
        };
        Keeper {
            dir: settings.dir.clone(),
            per_map: settings.per_map,
            confinement,
            kept: HashMap::new(),
            held: BTreeMap::new(),
            held_bytes: 0,
            next_job: 0,
            writer: None,
            ring: None,
        }
    }

    /// The writer, started if it is not yet.
    fn writer(&mut self) -> std::io::Result<&Writer> {
        if self.writer.is_none() {
            let (jobs, inbox) = mpsc::channel::<Job>();
            let (outbox, done) = mpsc::channel();
            let dir = self.dir.clone();
            let ring = self.ring.clone();
            std::thread::Builder::new()
                .name("buckshot-replay".into())
                .spawn(move || {
                    // The maps whose writing stopped, and why.
                    let mut full: HashMap<u64, String> = HashMap::new();
                    for job in inbox {
                        let mut file = job.file;
                        file.context = job
                            .context_frame
                            .as_deref()
                            .and_then(|frame| context_value(frame))
                            .map(<[u8]>::to_vec);
                        let written = write_job(&dir, &mut full, job.map, file);
                        if outbox.send((job.id, written)).is_err() {
                            return;
                        }
                        if let Some(ring) = &ring {
                            ring();
                        }
                    }
                })?;
            self.writer = Some(Writer { jobs, done });
        }
        Ok(self.writer.as_ref().expect("just started"))
    }

    /// Posts a held failure, its file written (or not, as `written` says).
    /// A file that failed no longer counts against its map's files; one
    /// that is only late still does (it may appear).
    fn settle(&mut self, job: u64, written: Written, out: &mut Vec<(u64, Error)>) {
        let Some(mut held) = self.held.remove(&job) else {
            if let Ok(path) = written.file {
                tracing::debug!(path = %path.display(), "replay file written after its failure went without it");
            }
            return;
        };
        if let Some(why) = written.stops {
            if let Some(kept) = self.kept.get_mut(&held.map) {
                kept.stopped = Some(why);
            }
        }
        let late = written.late;
        let written = written.file;
        self.held_bytes -= held.bytes;
        let replay = match written {
            Ok(path) => {
                tracing::debug!(index = held.index, path = %path.display(), "replay file written");
                Replay::File(path)
            }
            Err(why) => {
                if !late {
                    if let Some(kept) = self.kept.get_mut(&held.map) {
                        kept.files = kept.files.saturating_sub(1);
                    }
                }
                Replay::NotKept(why)
            }
        };
        if let Some(slot) = held.error.replay_mut() {
            *slot = Some(replay);
        }
        out.push((held.map, held.error));
    }
}

impl Observer for Keeper {
    fn wants(&self) -> Wants {
        // A file holds its input as plain CBOR, and a panic's own input.
        Wants {
            plain_items: true,
            panics_alone: true,
            stderr_tail: true,
        }
    }

    fn attach(&mut self, ring: Ring) {
        self.ring = Some(ring);
    }

    /// Holds `error` while its replay file is written; gives it back at
    /// once, saying why it has none, when none is written.
    fn failed(&mut self, failed: &Failed<'_>, mut error: Error) -> Option<Error> {
        let message = error.to_string();
        let chunk = failed.chunk;
        let Some(slot) = error.replay_mut() else {
            return Some(error);
        };
        let per_map = self.per_map;
        let kept = self.kept.entry(chunk.map).or_default();
        if let Some(why) = &kept.stopped {
            *slot = Some(Replay::NotKept(why.clone()));
            return Some(error);
        }
        if kept.files >= per_map {
            *slot = Some(Replay::NotKept(format!(
                "its map already kept {per_map} replay files"
            )));
            return Some(error);
        }
        let bytes = failed.input.len() + failed.stderr.len();
        if !self.held.is_empty() && self.held_bytes + bytes > MAX_BACKLOG {
            *slot = Some(Replay::NotKept(format!(
                "{} bytes of replay files wait to be written in {}",
                self.held_bytes,
                self.dir.display()
            )));
            return Some(error);
        }
        let entry = registry().tasks[chunk.task as usize];
        let confinement = self.confinement.clone();
        let file = ReplayFile {
            format: FORMAT.to_owned(),
            version: FORMAT_VERSION,
            task: (entry.name)().to_owned(),
            tasks: registry().tasks.len() as u32,
            registry: registry().digest,
            // Filled in by the writer.
            program: String::new(),
            index: failed.index as u64,
            input: failed.input.to_vec(),
            // Filled in by the writer, from `context_frame`.
            context: None,
            error: message,
            exit_code: failed.status.and_then(|status| status.code()),
            signal: failed.status.and_then(|status| status.signal()),
            stderr: failed.stderr.to_owned(),
            time: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |since| since.as_secs()),
            sandbox: confinement.sandbox,
            sandbox_rules: confinement.sandbox_rules,
            memory_limit: confinement.memory_limit,
            // Its map's timeout, or the pool's.
            timeout: chunk.timeout,
        };
        let job = self.next_job;
        self.next_job += 1;
        let job = Job {
            id: job,
            map: chunk.map,
            file,
            context_frame: chunk.context_frame.clone(),
        };
        let id = job.id;
        let sent = match self.writer() {
            Ok(writer) => writer
                .jobs
                .send(job)
                .map_err(|_| "the replay writer is gone".to_owned()),
            Err(e) => Err(format!("could not start the replay writer: {e}")),
        };
        if let Err(why) = sent {
            if let Some(slot) = error.replay_mut() {
                *slot = Some(Replay::NotKept(why));
            }
            return Some(error);
        }
        self.kept.entry(chunk.map).or_default().files += 1;
        self.held_bytes += bytes;
        self.held.insert(
            id,
            Held {
                map: chunk.map,
                index: failed.index,
                error,
                since: Instant::now(),
                bytes,
            },
        );
        None
    }

    fn collect(&mut self, now: Instant, out: &mut Vec<(u64, Error)>) {
        let mut done = Vec::new();
        if let Some(writer) = &self.writer {
            done.extend(writer.done.try_iter());
        }
        for (job, written) in done {
            self.settle(job, written, out);
        }
        // The first held is the oldest.
        while let Some((&job, held)) = self.held.first_key_value() {
            if now < held.since + WRITE_BOUND {
                break;
            }
            let why = format!(
                "its file was not written within {WRITE_BOUND:?} ({} is slow); it may appear later",
                self.dir.display()
            );
            self.settle(job, Written::late(why), out);
        }
    }

    fn due(&self) -> Option<Instant> {
        let (_, oldest) = self.held.first_key_value()?;
        Some(oldest.since + WRITE_BOUND)
    }

    fn forget_map(&mut self, map: u64) {
        self.kept.remove(&map);
    }

    /// Waits for the files being written, each at most until its bound,
    /// then posts whatever is still held, without its file. A writer still
    /// writing is left to finish on its own.
    fn finish(&mut self, out: &mut Vec<(u64, Error)>) {
        if let Some(Writer { jobs, done, .. }) = self.writer.take() {
            drop(jobs);
            while let Some(until) = self.due() {
                let Ok((job, written)) =
                    done.recv_timeout(until.saturating_duration_since(Instant::now()))
                else {
                    break;
                };
                self.settle(job, written, out);
            }
        }
        let held: Vec<u64> = self.held.keys().copied().collect();
        for job in held {
            let why = format!(
                "its file was not written before the pool closed ({} is slow); it may appear later",
                self.dir.display()
            );
            self.settle(job, Written::late(why), out);
        }
    }
}

impl Written {
    fn not(why: String) -> Written {
        Written {
            file: Err(why),
            stops: None,
            late: false,
        }
    }

    fn late(why: String) -> Written {
        Written {
            late: true,
            ..Written::not(why)
        }
    }
}

/// Writes the file of a job of `map` in `dir`, unless its map's writing
/// stopped (in `full`); stops it on a full file system.
fn write_job(
    dir: &Path,
    full: &mut HashMap<u64, String>,
    map: u64,
    mut file: ReplayFile,
) -> Written {
    if let Some(why) = full.get(&map) {
        return Written::not(why.clone());
    }
    file.program = std::env::current_exe()
        .map(|path| path.display().to_string())
        .unwrap_or_default();
    match write(dir, &file) {
        Ok(path) => Written {
            file: Ok(path),
            stops: None,
            late: false,
        },
        Err(e) => {
            let dir = dir.display();
            tracing::warn!(index = file.index, %dir, error = %e, "could not write a replay file");
            let stops = matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)).then(|| {
                let why = format!("{dir} is full ({e}): its map writes no more replay files");
                full.insert(map, why.clone());
                why
            });
            Written {
                file: Err(format!("could not write it: {e}")),
                stops,
                late: false,
            }
        }
    }
}

impl std::fmt::Debug for Keeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keeper")
            .field("dir", &self.dir)
            .field("per_map", &self.per_map)
            .field("held", &self.held.len())
            .finish()
    }
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
            .and_then(|()| crate::sys::rename_new(&temporary, &path));
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
