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

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Mutex, PoisonError};
use std::thread::JoinHandle;

use crate::handoff::WorkerConfig;

/// Threads that spawn: `posix_spawn` holds its thread until the child has
/// exec'd, so a second one starts the next child meanwhile.
const SPAWNING_THREADS: usize = 2;
use crate::launch::Launch;
use crate::process::Process;

/// One worker to start.
pub(crate) struct Request {
    pub launcher: usize,
    pub launch: Arc<dyn Launch>,
    pub config: WorkerConfig,
    pub forward_stderr: bool,
    pub bulk: bool,
}

/// What came of a request.
pub(crate) struct Spawned {
    pub launcher: usize,
    pub result: std::io::Result<Process>,
}

pub(crate) struct Spawner {
    requests: Option<Sender<Request>>,
    spawned: Receiver<Spawned>,
    /// Set when the pool stops: requests still queued are dropped.
    stopping: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Spawner {
    /// Starts the spawning threads; they call `wake` after each spawn.
    pub(crate) fn start(wake: impl Fn() + Send + Sync + 'static) -> std::io::Result<Spawner> {
        let (requests, requested) = mpsc::channel::<Request>();
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
                        let result = Process::spawn(
                            request.launch,
                            &request.config,
                            request.forward_stderr,
                            request.bulk,
                        );
                        let spawned = Spawned {
                            launcher: request.launcher,
                            result,
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

    pub(crate) fn request(&self, request: Request) {
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
