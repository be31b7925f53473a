//! What the callers of a pool and its thread share: the queue of chunks, the
//! maps and how to reach them, the pool's phase, the doorbell, and the
//! types that travel between them ([`Chunk`] one way; the other way is
//! [`crate::delivery`]).

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::Waker;
use std::time::Duration;

use crate::bulk::ContextFile;
use crate::chunk::Chunk;
use crate::config::Config;
use crate::delivery::{Delivery, Mailbox, WakerSlot};
use crate::error::Error;
use crate::hooks::Answerers;
use crate::sys::Doorbell;

/// Measurements of one map, shared with its caller.
#[derive(Debug, Default)]
pub(crate) struct MapStats {
    /// Smoothed run time of one item, in nanoseconds; 0 until measured.
    nanos_per_item: AtomicU64,
}

impl MapStats {
    pub(crate) fn per_item(&self) -> Option<Duration> {
        match self.nanos_per_item.load(Ordering::Relaxed) {
            0 => None,
            nanos => Some(Duration::from_nanos(nanos)),
        }
    }

    pub(crate) fn record(&self, per_item: Duration) {
        let new = u64::try_from(per_item.as_nanos())
            .unwrap_or(u64::MAX)
            .max(1);
        let old = self.nanos_per_item.load(Ordering::Relaxed);
        let smoothed = if old == 0 { new } else { old / 2 + new / 2 };
        self.nanos_per_item.store(smoothed, Ordering::Relaxed);
    }
}

/// A context that maps share, encoded once as a CONTEXT frame, or, when
/// its value is long and the pool's workers can map the pool's memfds, as
/// a CONTEXT_BESIDE frame and the memfd its value is in (see `bulk`).
/// Workers keep it while it is alive: while its handle or a map of it is.
#[derive(Debug)]
pub(crate) struct SharedContext {
    pub id: u64,
    /// What each worker is sent.
    pub frame: Arc<Vec<u8>>,
    /// The memfd that holds the value, if it is beside the frame: open as
    /// long as the context, so that workers started later map it too.
    pub beside: Option<ContextFile>,
}

impl SharedContext {
    /// Bytes of its CONTEXT frame, value included, wherever the value is.
    pub(crate) fn bytes(&self) -> usize {
        self.beside
            .as_ref()
            .map_or(self.frame.len(), |file| file.inline_len(&self.frame))
    }
}

/// What a map runs: a registered task, by position, the context it reads,
/// if any, and the timeout of each of its inputs, if it has its own.
#[derive(Debug, Clone)]
pub(crate) struct MapTask {
    pub position: u32,
    pub context: Option<Arc<SharedContext>>,
    /// Overrides the pool's timeout for this map's inputs.
    pub timeout: Option<Duration>,
}

impl MapTask {
    pub(crate) fn plain(position: u32) -> MapTask {
        MapTask {
            position,
            context: None,
            timeout: None,
        }
    }

    /// The id its RUN frames carry, 0 for none.
    pub(crate) fn context_id(&self) -> u64 {
        self.context.as_ref().map_or(0, |context| context.id)
    }
}

/// How the loop reaches a map.
pub(crate) struct MapLink {
    pub(crate) tx: Mailbox,
    pub(crate) stats: Arc<MapStats>,
    /// The context its task reads, if any.
    pub(crate) context: Option<Arc<SharedContext>>,
}

/// A map's end of the pool: its id, the deliveries for it, its measurements.
pub(crate) struct OpenedMap {
    pub id: u64,
    pub deliveries: mpsc::Receiver<Vec<Delivery>>,
    pub waker: Arc<WakerSlot>,
    pub stats: Arc<MapStats>,
}

/// Where the pool is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Phase {
    /// It takes work.
    Open,
    /// Workers cannot start; the text says why. New maps are refused, and
    /// the inputs of running ones fail with the reason.
    Broken(String),
    /// It was dropped: its thread is killing the workers and failing what
    /// is left.
    Closing,
    /// Its thread is gone.
    Closed,
}

impl Phase {
    /// Why inputs that will not run do not, when it is not a plain drop.
    pub(crate) fn reason(&self) -> Option<String> {
        match self {
            Phase::Broken(reason) => Some(reason.clone()),
            _ => None,
        }
    }
}

/// What callers and the loop share.
pub(crate) struct State {
    /// Chunks waiting for a worker, oldest first.
    pub(crate) queue: VecDeque<Chunk>,
    /// The live maps, by id; a dropped map is removed.
    pub(crate) maps: HashMap<u64, MapLink>,
    next_map: u64,
    /// The contexts ever made, by id; one nobody holds any more is dead.
    pub(crate) contexts: HashMap<u64, Weak<SharedContext>>,
    next_context: u64,
    pub(crate) phase: Phase,
    /// Async callers to wake once the lock is released.
    wakes: Vec<Waker>,
}

impl State {
    /// Ends every map: their receivers see the end of their deliveries.
    pub(crate) fn close_maps(&mut self) {
        for (_, link) in self.maps.drain() {
            self.wakes.extend(link.tx.close());
        }
    }

    pub(crate) fn queued(&self) -> usize {
        self.queue.iter().map(|chunk| chunk.count as usize).sum()
    }

    /// Takes the contexts that nobody holds any more: workers may forget
    /// them.
    pub(crate) fn take_dead_contexts(&mut self) -> Vec<u64> {
        let mut dead = Vec::new();
        self.contexts.retain(|&id, context| {
            let alive = context.strong_count() > 0;
            if !alive {
                dead.push(id);
            }
            alive
        });
        dead
    }

    /// Tells a map that inputs `first_index..first_index + count` will
    /// never run.
    pub(crate) fn never_run(
        &mut self,
        map: u64,
        first_index: usize,
        count: u32,
        reason: Option<String>,
    ) {
        if let Some(link) = self.maps.get(&map) {
            let waker = link.tx.send(vec![Delivery::Closed {
                first_index,
                count,
                reason,
            }]);
            self.wakes.extend(waker);
        }
    }

    /// Sends what the loop collected, one message per map.
    pub(crate) fn deliver(&mut self, deliveries: Vec<(u64, Delivery)>) {
        let mut batches: Vec<(u64, Vec<Delivery>)> = Vec::new();
        for (map, delivery) in deliveries {
            match batches.iter_mut().find(|(m, _)| *m == map) {
                Some((_, batch)) => batch.push(delivery),
                None => batches.push((map, vec![delivery])),
            }
        }
        for (map, batch) in batches {
            if let Some(link) = self.maps.get(&map) {
                let waker = link.tx.send(batch);
                self.wakes.extend(waker);
            }
        }
    }
}

/// The pool's state, locked; unlocking wakes the async callers whose
/// deliveries came meanwhile.
pub(crate) struct Locked<'a>(Option<MutexGuard<'a, State>>);

impl std::ops::Deref for Locked<'_> {
    type Target = State;

    fn deref(&self) -> &State {
        self.0.as_ref().expect("locked until dropped")
    }
}

impl std::ops::DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut State {
        self.0.as_mut().expect("locked until dropped")
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        let wakes = self
            .0
            .as_mut()
            .map(|state| std::mem::take(&mut state.wakes));
        self.0 = None;
        for waker in wakes.into_iter().flatten() {
            waker.wake();
        }
    }
}

/// Chunks the pool did not take, and why.
pub(crate) struct Refused {
    pub chunks: Vec<Chunk>,
    pub reason: Option<String>,
}

/// The pool's shared half: the state behind a lock, and the loop's doorbell.
pub(crate) struct Shared {
    state: Mutex<State>,
    doorbell: Doorbell,
    pub(crate) config: Config,
    /// What may answer a map's inputs without running them.
    pub(crate) answerers: Option<Arc<dyn Answerers>>,
}

impl Shared {
    pub(crate) fn new(config: Config, answerers: Option<Arc<dyn Answerers>>) -> io::Result<Shared> {
        let doorbell = Doorbell::new()?;
        let state = State {
            queue: VecDeque::new(),
            maps: HashMap::new(),
            next_map: 0,
            contexts: HashMap::new(),
            next_context: 1,
            phase: Phase::Open,
            wakes: Vec::new(),
        };
        Ok(Shared {
            state: Mutex::new(state),
            doorbell,
            config,
            answerers,
        })
    }

    pub(crate) fn lock(&self) -> Locked<'_> {
        // The state stays consistent between statements, so a panic elsewhere
        // while holding the lock leaves it usable.
        Locked(Some(self.state.lock().unwrap_or_else(|e| e.into_inner())))
    }

    /// The doorbell the loop polls.
    pub(crate) fn doorbell(&self) -> BorrowedFd<'_> {
        self.doorbell.fd()
    }

    /// Called by the loop once it has woken up.
    pub(crate) fn clear_doorbell(&self) {
        self.doorbell.clear();
    }

    /// Wakes the loop.
    pub(crate) fn ring(&self) {
        self.doorbell.ring();
    }

    /// Makes a context: `write` writes its CBOR value (outside the lock).
    /// A long one goes into shared memory when the pool's workers can map
    /// it (as for inputs' long strings; and the program must still be
    /// dumpable for them to open it).
    pub(crate) fn new_context<E>(
        &self,
        write: impl FnOnce(&mut dyn std::io::Write) -> Result<(), E>,
    ) -> Result<Arc<SharedContext>, E> {
        let id = {
            let mut state = self.lock();
            state.next_context += 1;
            state.next_context - 1
        };
        let beside = self.config.bulk.is_some() && crate::bulk::dumpable();
        let (frame, beside) = crate::bulk::encode_context(id, beside, write)?;
        let context = Arc::new(SharedContext {
            id,
            frame: Arc::new(frame),
            beside,
        });
        self.lock().contexts.insert(id, Arc::downgrade(&context));
        Ok(context)
    }

    /// Registers a map whose task reads `context`, if any; its deliveries
    /// arrive on the returned receiver.
    pub(crate) fn open_map(&self, context: Option<Arc<SharedContext>>) -> Result<OpenedMap, Error> {
        let mut state = self.lock();
        match &state.phase {
            Phase::Open => {}
            Phase::Broken(message) => {
                return Err(Error::Startup {
                    message: message.clone(),
                });
            }
            Phase::Closing | Phase::Closed => {
                unreachable!("a dropped pool has no handle to map with")
            }
        }
        let (tx, rx) = mpsc::channel();
        let waker = Arc::new(WakerSlot::default());
        let stats = Arc::new(MapStats::default());
        let id = state.next_map;
        state.next_map += 1;
        state.maps.insert(
            id,
            MapLink {
                tx: Mailbox::new(tx, Arc::clone(&waker)),
                stats: Arc::clone(&stats),
                context,
            },
        );
        Ok(OpenedMap {
            id,
            deliveries: rx,
            waker,
            stats,
        })
    }

    /// Queues chunks, or hands them back with the reason if the pool no
    /// longer takes work.
    pub(crate) fn submit(&self, chunks: Vec<Chunk>) -> Result<(), Refused> {
        if chunks.is_empty() {
            return Ok(());
        }
        let mut state = self.lock();
        if state.phase != Phase::Open {
            let reason = state.phase.reason();
            return Err(Refused { chunks, reason });
        }
        state.queue.extend(chunks);
        drop(state);
        self.ring();
        Ok(())
    }

    /// Forgets a map: its queued inputs are dropped and workers running its
    /// inputs are killed.
    pub(crate) fn cancel_map(&self, map: u64) {
        let mut state = self.lock();
        if state.maps.remove(&map).is_some() {
            state.queue.retain(|chunk| chunk.map != map);
            drop(state);
            self.ring();
        }
    }

    /// Asks the loop to shut down (the pool was dropped).
    pub(crate) fn request_shutdown(&self) {
        let mut state = self.lock();
        if state.phase != Phase::Closed {
            state.phase = Phase::Closing;
        }
        drop(state);
        self.ring();
    }
}
