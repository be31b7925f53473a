//! What travels from the pool's thread to a map's caller: outcomes and
//! failures ([`Delivery`]), collected in an [`Outbox`] and sent in
//! batches, one message per map, through the map's [`Mailbox`], which also
//! hands back the waker of an async caller waiting for them.

use std::ops::Range;
use std::process::ExitStatus;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Waker;
use std::time::Instant;

use crate::error::Error;
use crate::flow::{DELIVERY_BATCH, DELIVERY_DELAY};
use crate::replay::Keeper;
use crate::shared::Chunk;

/// Bytes of reply items: copied out of the read buffer when small, shared
/// with no copy when a large frame had a buffer of its own.
#[derive(Debug)]
pub(crate) enum Payload {
    Copied(Vec<u8>),
    Shared(Arc<Vec<u8>>, Range<usize>),
}

impl Payload {
    pub(crate) fn as_slice(&self) -> &[u8] {
        match self {
            Payload::Copied(bytes) => bytes,
            Payload::Shared(buffer, range) => &buffer[range.clone()],
        }
    }
}

/// What the loop sends to a map.
#[derive(Debug)]
pub(crate) enum Delivery {
    /// Outcomes of inputs `first_index..first_index + count`, as items.
    Outcomes {
        first_index: usize,
        count: u32,
        items: Payload,
    },
    /// One input failed in the pool (timeout, death, protocol).
    Failed(Error),
    /// Inputs that will never run because the pool shut down.
    Closed {
        first_index: usize,
        count: u32,
        reason: Option<String>,
    },
}

/// Deliveries collected by the loop, each for a map, sent in batches. In a
/// pool that keeps failures, a failed input is kept for replay as it is
/// posted ([`Outbox::fail`]).
#[derive(Debug, Default)]
pub(crate) struct Outbox(Vec<(u64, Delivery)>, Option<Instant>, Option<Keeper>);

impl Outbox {
    /// An outbox that keeps the failed inputs posted to it.
    pub(crate) fn keeping(keeper: Keeper) -> Outbox {
        Outbox(Vec::new(), None, Some(keeper))
    }

    /// Whether failed inputs are kept for replay.
    pub(crate) fn keeps_failures(&self) -> bool {
        self.2.is_some()
    }

    /// Posts the failure of input `index`, encoded as `input`, of `chunk`'s
    /// map; kept for replay first, if failures are.
    pub(crate) fn fail(
        &mut self,
        chunk: &Chunk,
        index: usize,
        input: &[u8],
        mut error: Error,
        status: Option<ExitStatus>,
        stderr: &str,
    ) {
        if let Some(keeper) = &mut self.2 {
            keeper.keep(chunk, index, input, &mut error, status, stderr);
        }
        self.push(chunk.map, Delivery::Failed(error));
    }

    pub(crate) fn push(&mut self, map: u64, delivery: Delivery) {
        if self.0.is_empty() {
            self.1 = Some(Instant::now());
        }
        self.0.push((map, delivery));
    }

    /// Whether it is time to send what it holds while the loop is busy: a
    /// batch is full, or its oldest delivery has waited long enough.
    pub(crate) fn due(&self) -> bool {
        self.0.len() >= DELIVERY_BATCH
            || self
                .1
                .is_some_and(|since| since.elapsed() >= DELIVERY_DELAY)
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    #[cfg(test)]
    pub(crate) fn deliveries(&self) -> &[(u64, Delivery)] {
        &self.0
    }

    /// Takes what it holds, with the map each is for.
    pub(crate) fn drain(&mut self) -> std::vec::Drain<'_, (u64, Delivery)> {
        self.1 = None;
        self.0.drain(..)
    }
}

/// Where an async caller waiting for a map's deliveries left its waker.
#[derive(Default)]
pub(crate) struct WakerSlot(Mutex<Option<Waker>>);

impl WakerSlot {
    /// Wakes `waker` when the next deliveries (or the end) come.
    pub(crate) fn register(&self, waker: &Waker) {
        let mut slot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match &mut *slot {
            Some(old) if old.will_wake(waker) => {}
            _ => *slot = Some(waker.clone()),
        }
    }

    /// The waker left, to be woken once the pool's lock is released.
    pub(crate) fn take(&self) -> Option<Waker> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

/// The loop's end of a map's deliveries. Sending and closing hand back
/// the waker of an async caller waiting for them, which is woken once the
/// pool's lock is released (an executor may poll from `wake`, and polling
/// takes the lock).
pub(crate) struct Mailbox {
    tx: Sender<Vec<Delivery>>,
    waker: Arc<WakerSlot>,
}

impl Mailbox {
    pub(crate) fn new(tx: Sender<Vec<Delivery>>, waker: Arc<WakerSlot>) -> Mailbox {
        Mailbox { tx, waker }
    }

    /// Sends a batch; a map whose caller is gone has no receiver, and
    /// nothing needs doing.
    pub(crate) fn send(&self, batch: Vec<Delivery>) -> Option<Waker> {
        let _ = self.tx.send(batch);
        self.waker.take()
    }

    /// Drops the sender, so that the receiver sees the end.
    pub(crate) fn close(self) -> Option<Waker> {
        let waker = Arc::clone(&self.waker);
        drop(self);
        waker.take()
    }
}
