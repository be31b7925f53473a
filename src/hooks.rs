//! The seams optional features plug into. The core calls these and names
//! no feature: the builder turns each feature asked for into values
//! ([`Plugins`]) that it moves into the pool, as rayon's builder hands its
//! handlers to the registry.
//!
//! - [`Observer`], on the pool's thread: sees every outcome as it arrives
//!   and every failure of an input as it is posted (the journal records
//!   the first, the replay files keep the second); a failure one observer
//!   holds is not shown to those after it. It is always called outside the
//!   pool's state lock, and it may fill a failure's replay slot, never
//!   change its kind nor drop it.
//! - [`Answerers`], on a map's caller thread: may answer an encoded input
//!   without running it (the journal's lookup).
//! - `finishers`: run once the pool's thread has ended (the journal's last
//!   commit).

use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Instant;

use crate::chunk::Chunk;
use crate::error::Error;

/// What an observer needs the core to do for it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Wants {
    /// Items as plain CBOR: no long strings in shared memory.
    pub plain_items: bool,
    /// A panic in a reply of several inputs posted as a failure of its
    /// own, with its input, instead of an outcome among the others.
    pub panics_alone: bool,
    /// The stderr tail of a worker that failed an input.
    pub stderr_tail: bool,
}

impl Wants {
    fn or(self, other: Wants) -> Wants {
        Wants {
            plain_items: self.plain_items || other.plain_items,
            panics_alone: self.panics_alone || other.panics_alone,
            stderr_tail: self.stderr_tail || other.stderr_tail,
        }
    }
}

/// An input that failed in the pool, as observers see it.
pub(crate) struct Failed<'a> {
    /// The chunk it came in (its map, task and context).
    pub chunk: &'a Chunk,
    pub index: usize,
    /// Its encoded input.
    pub input: &'a [u8],
    /// How its worker ended, if it did.
    pub status: Option<ExitStatus>,
    /// The last of its worker's stderr, if an observer wants it; else
    /// empty.
    pub stderr: &'a str,
}

/// Wakes the pool's thread: an observer that holds failures rings it when
/// one is ready to go.
pub(crate) type Ring = Arc<dyn Fn() + Send + Sync>;

/// Sees the outcomes of a pool on its thread, outside the state lock, in
/// the order they arrive. Every method but `wants` has a default that does
/// nothing.
pub(crate) trait Observer: Send {
    fn wants(&self) -> Wants;

    /// Called once, before any outcome, with what wakes the pool's thread.
    fn attach(&mut self, _ring: Ring) {}

    /// `outcomes` answer items `done..` of `chunk`.
    fn answered(&mut self, _chunk: &Chunk, _done: u32, _outcomes: &[u8]) {}

    /// `error` is posted for `failed`. Gives it back to be posted now, or
    /// holds it: then [`Observer::collect`] gives it back, with the same
    /// kind, before [`Observer::due`] passes.
    fn failed(&mut self, _failed: &Failed<'_>, error: Error) -> Option<Error> {
        Some(error)
    }

    /// Adds the failures it held that are ready (or overdue at `now`) to
    /// `out`, with the map each is for.
    fn collect(&mut self, _now: Instant, _out: &mut Vec<(u64, Error)>) {}

    /// When [`Observer::collect`] has something to give back at the latest.
    fn due(&self) -> Option<Instant> {
        None
    }

    /// Deliveries are about to leave for the maps.
    fn flush(&mut self) {}

    /// Context `id` is gone: nothing it keeps about it is needed.
    fn forget_context(&mut self, _id: u64) {}

    /// Map `map` is gone.
    fn forget_map(&mut self, _map: u64) {}

    /// The pool is closing: every failure it still holds goes to `out`,
    /// whatever became of it, within a bounded wait.
    fn finish(&mut self, _out: &mut Vec<(u64, Error)>) {}
}

/// Answers an encoded input of one map without running it, on the map's
/// caller thread. Inputs are encoded as plain CBOR for a pool with
/// answerers (no long strings in shared memory).
pub(crate) trait Answerer: Send {
    /// Offers `accept` the encoded outputs it has for the encoded `input`,
    /// best first, until one is accepted (one that no longer decodes, say,
    /// is not); whether one was.
    fn answer(&mut self, input: &[u8], accept: &mut dyn FnMut(&[u8]) -> bool) -> bool;
}

/// Makes the [`Answerer`] of each map.
pub(crate) trait Answerers: Send + Sync {
    /// The answerer of a map of task `task` (its position in the registry)
    /// reading a context whose encoded value is `context`; `None` when it
    /// would answer nothing.
    fn for_map(&self, task: u32, context: Option<&[u8]>) -> Option<Box<dyn Answerer>>;
}

/// What the features asked for hand the pool.
#[derive(Default)]
pub(crate) struct Plugins {
    pub observers: Vec<Box<dyn Observer>>,
    pub answerers: Option<Arc<dyn Answerers>>,
    /// Run once the pool's thread has ended, in order.
    pub finishers: Vec<Box<dyn FnOnce() + Send + Sync>>,
}

impl Plugins {
    /// What the observers need, together.
    pub(crate) fn wants(&self) -> Wants {
        wants(&self.observers)
    }
}

/// What `observers` need, together.
pub(crate) fn wants(observers: &[Box<dyn Observer>]) -> Wants {
    observers
        .iter()
        .fold(Wants::default(), |all, observer| all.or(observer.wants()))
}
