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
//! The spawning thread lives exactly as long as the pool's thread: the
//! parent-death signal of a worker fires when the *thread* that spawned it
//! ends, and the pool's thread stops it only after its workers are gone.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::JoinHandle;

use crate::handoff::WorkerConfig;
use crate::launch::Launch;
use crate::process::Process;

/// One worker to start.
pub(crate) struct Request {
    pub group: usize,
    pub launch: Arc<dyn Launch>,
    pub config: WorkerConfig,
    pub forward_stderr: bool,
    pub bulk: bool,
}

/// What came of a request.
pub(crate) struct Spawned {
    pub group: usize,
    pub result: std::io::Result<Process>,
}

pub(crate) struct Spawner {
    requests: Option<Sender<Request>>,
    spawned: Receiver<Spawned>,
    /// Set when the pool stops: requests still queued are dropped.
    stopping: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Spawner {
    /// Starts the spawning thread; it calls `wake` after each spawn.
    pub(crate) fn start(wake: impl Fn() + Send + 'static) -> std::io::Result<Spawner> {
        let (requests, requested) = mpsc::channel::<Request>();
        let (done, spawned) = mpsc::channel();
        let stopping = Arc::new(AtomicBool::new(false));
        let stop = Arc::clone(&stopping);
        let thread = std::thread::Builder::new()
            .name("buckshot-spawn".into())
            .spawn(move || {
                for request in requested {
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
                        group: request.group,
                        result,
                    };
                    if done.send(spawned).is_err() {
                        return;
                    }
                    wake();
                }
            })?;
        Ok(Spawner {
            requests: Some(requests),
            spawned,
            stopping,
            thread: Some(thread),
        })
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
        if let Some(thread) = self.thread.take() {
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
