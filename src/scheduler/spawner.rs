//! Spawning workers off the pool's thread: replacements, and a wide pool's
//! workers after its first few.
//!
//! `posix_spawn` suspends the calling thread until the child has
//! exec'd (it shares the parent's memory until then): a few hundred
//! microseconds on this kind of machine, during which a pool's thread
//! would serve no worker. With a fresh process per input, or a wide
//! pool, that is the pool's bottleneck (and `Pool::new(256)` would wait
//! for 256 spawns in a row). So they are spawned by a thread of their
//! own, and the pool's thread takes the new workers when they are there
//! (its doorbell rings).
//!
//! Two threads spawn, so that one starts the next child while the other
//! waits for its child's exec: with a fresh process per input, that took
//! the rate from 0.80x to 0.85x the floor's (six alternating runs).
//!
//! The spawning threads live as long as the pool's thread: the parent-death
//! signal of a worker fires when the *thread* that spawned it ends, and the
//! pool's thread stops them only when it shuts down, as its workers go.
//!
//! What a spawn needs is one value per launcher, [`SpawnRequest`], made
//! when the pool starts: it completes each worker's [`WorkerConfig`],
//! creates its reply slots, has the launcher build its command (with the
//! variables the pool sets in workers' environment: a [`Handoff`]), and
//! hands that to [`Process::spawn`].

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::bulk::ReplySlots;
use crate::config::Config;
use crate::flow::STARTUP_TIMEOUT;
use crate::handoff::{Handoff, TaskRef, WorkerConfig, WorkerEnv};
use crate::launch::Launch;
use crate::process::Process;
use crate::registry::registry;

/// Threads that spawn: `posix_spawn` holds its thread until the child has
/// exec'd, so a second one starts the next child meanwhile.
const SPAWNING_THREADS: usize = 2;

/// How to start a worker of one launcher: made once, when the pool starts,
/// and used for each worker it spawns, on the pool's thread or a spawning
/// one.
#[derive(Debug, Clone)]
pub(crate) struct SpawnRequest {
    /// The launcher's position among the pool's launchers.
    pub launcher: usize,
    pub launch: Arc<dyn Launch>,
    /// What every worker of the pool is told; [`SpawnRequest::worker_config`]
    /// adds what depends on the launcher and the worker.
    pub settings: WorkerConfig,
    /// Where what a worker writes to stderr goes.
    pub forward_stderr: crate::stderr::Route,
    /// Whether a worker that is our child gets reply slots for long
    /// strings (see `bulk`).
    pub reply_slots: bool,
    /// Variables set in every worker's environment.
    pub env: Arc<WorkerEnv>,
}

impl SpawnRequest {
    /// The spawns of launcher number `launcher` of a pool set up by
    /// `config`.
    pub(crate) fn new(config: &Config, launcher: usize) -> SpawnRequest {
        SpawnRequest {
            launcher,
            launch: config.launchers[launcher].0.launch(),
            settings: WorkerConfig {
                parent: None,
                max_frame_bytes: config.max_frame_bytes,
                memory_limit: config.memory_limit,
                log_level: crate::logs::worker_level(&config.dispatch),
                backtraces: config.backtraces,
                reply_slot: None,
                initializer: config.initializer.map(|position| TaskRef {
                    position,
                    table: registry().digest,
                }),
                max_rss: config.max_worker_rss,
            },
            forward_stderr: config.forward_stderr.clone(),
            reply_slots: config.bulk.is_some(),
            env: Arc::clone(&config.env),
        }
    }

    /// How long a worker may take to say hello before it counts as one
    /// that failed to start: [`STARTUP_TIMEOUT`], unless the pool has an
    /// initializer. That runs before the handshake (so that no task's
    /// clock counts it) for as long as it takes, like a task without a
    /// timeout: a slow one must not be taken for a worker that cannot
    /// start.
    pub(crate) fn startup_timeout(&self) -> Option<Duration> {
        match self.settings.initializer {
            Some(_) => None,
            None => Some(STARTUP_TIMEOUT),
        }
    }

    /// What one worker is told: the pool's settings, the pool's process
    /// as its parent if it is our child (so that it checks it is still
    /// there), and the fd of `reply_slot`, its reply slots, if it has them.
    pub(crate) fn worker_config(&self, reply_slot: Option<&ReplySlots>) -> WorkerConfig {
        WorkerConfig {
            parent: self.launch.worker_is_child().then(std::process::id),
            reply_slot: reply_slot.map(ReplySlots::fd),
            ..self.settings
        }
    }

    /// Starts one worker: its reply slots if it gets them, its command as
    /// its launcher builds it, and the process.
    pub(crate) fn spawn(&self) -> io::Result<Process> {
        let reply_slot = match self.reply_slots && self.launch.worker_is_child() {
            true => Some(Arc::new(ReplySlots::create()?)),
            false => None,
        };
        let mut command = self.launch.command(&Handoff {
            config: self.worker_config(reply_slot.as_deref()),
            env: &self.env.0,
        });
        if !self.launch.worker_is_child() {
            // Its program is not ours: it would keep the program's
            // descriptors open as long as it runs.
            command = crate::inherit::through_this_binary(command)?;
        }
        Process::spawn(
            command,
            Arc::clone(&self.launch),
            self.forward_stderr.clone(),
            reply_slot,
        )
    }
}

#[cfg(test)]
impl SpawnRequest {
    /// Workers of `launch`, launcher 0, told small settings, their stderr
    /// not copied, with no reply slots.
    pub(crate) fn plain(launch: Arc<dyn Launch>) -> SpawnRequest {
        SpawnRequest {
            launcher: 0,
            launch,
            settings: WorkerConfig {
                parent: None,
                max_frame_bytes: 1 << 20,
                memory_limit: None,
                log_level: 0,
                backtraces: false,
                reply_slot: None,
                initializer: None,
                max_rss: None,
            },
            forward_stderr: crate::stderr::Route::Off,
            reply_slots: false,
            env: Arc::default(),
        }
    }
}

/// What came of a request.
pub(crate) struct Spawned {
    pub launcher: usize,
    pub result: std::io::Result<Process>,
}

pub(crate) struct Spawner {
    requests: Option<Sender<SpawnRequest>>,
    spawned: Receiver<Spawned>,
    /// Set when the pool stops: requests still queued are dropped.
    stopping: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Spawner {
    /// Starts the spawning threads; they call `wake` after each spawn.
    pub(crate) fn start(wake: impl Fn() + Send + Sync + 'static) -> std::io::Result<Spawner> {
        let (requests, requested) = mpsc::channel::<SpawnRequest>();
        let requested = Arc::new(Mutex::new(requested));
        let (done, spawned) = mpsc::channel();
        let wake = Arc::new(wake);
        let mut spawner = Spawner {
            requests: Some(requests),
            spawned,
            stopping: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
        };
        for _ in 0..SPAWNING_THREADS {
            let (requested, done) = (Arc::clone(&requested), done.clone());
            let (stop, wake) = (Arc::clone(&spawner.stopping), Arc::clone(&wake));
            let thread = std::thread::Builder::new()
                .name("buckshot-spawn".into())
                .spawn(move || {
                    loop {
                        // One thread waits for the next request, the other
                        // for the lock.
                        let next = requested
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .recv();
                        let Ok(request) = next else {
                            return;
                        };
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        let spawned = Spawned {
                            launcher: request.launcher,
                            result: request.spawn(),
                        };
                        if done.send(spawned).is_err() {
                            return;
                        }
                        wake();
                    }
                })?;
            spawner.threads.push(thread);
        }
        Ok(spawner)
    }

    pub(crate) fn request(&self, request: SpawnRequest) {
        if let Some(requests) = &self.requests {
            // Only fails once the thread is gone, when the pool is too.
            let _ = requests.send(request);
        }
    }

    /// A worker spawned since the last call, if any.
    pub(crate) fn try_take(&self) -> Option<Spawned> {
        self.spawned.try_recv().ok()
    }

    /// The next worker spawned, waiting for it.
    #[cfg(test)]
    pub(crate) fn wait_take(&self) -> Option<Spawned> {
        self.spawned
            .recv_timeout(std::time::Duration::from_secs(30))
            .ok()
    }

    /// Stops the thread once the spawn under way, if any, is done, and
    /// returns what it spawned that nobody took.
    pub(crate) fn stop(&mut self) -> Vec<Process> {
        self.stopping.store(true, Ordering::Relaxed);
        self.requests = None;
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        std::iter::from_fn(|| self.try_take())
            .filter_map(|spawned| spawned.result.ok())
            .collect()
    }
}

impl Drop for Spawner {
    fn drop(&mut self) {
        // Processes not taken are killed and reaped as they drop.
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::launch::Local;

    #[test]
    #[cfg_attr(
        not(buckshot_native),
        ignore = "reply slots are memfds, which the portable backend has none of"
    )]
    fn a_worker_is_told_its_parent_if_it_is_our_child_and_its_reply_slots() {
        let local = SpawnRequest::plain(Arc::new(Local));
        let slots = ReplySlots::create().unwrap();
        let config = local.worker_config(Some(&slots));
        assert_eq!(config.parent, Some(std::process::id()));
        assert_eq!(config.reply_slot, Some(slots.fd()));
        assert_eq!(config.max_frame_bytes, local.settings.max_frame_bytes);
        let prefixed = crate::Launcher::command(["env"]).launch();
        let elsewhere = SpawnRequest::plain(prefixed).worker_config(None);
        assert_eq!((elsewhere.parent, elsewhere.reply_slot), (None, None));
    }

    #[test]
    fn a_worker_with_an_initializer_has_no_startup_deadline() {
        let mut request = SpawnRequest::plain(Arc::new(Local));
        assert_eq!(request.startup_timeout(), Some(STARTUP_TIMEOUT));
        request.settings.initializer = Some(TaskRef {
            position: 0,
            table: 1,
        });
        assert_eq!(request.startup_timeout(), None);
        assert_eq!(
            request.worker_config(None).initializer,
            request.settings.initializer
        );
    }
}
