//! What travels from the pool's thread to a map's caller: outcomes and
//! failures ([`Delivery`]), collected in an [`Outbox`] and sent in
//! batches, one message per map, through the map's [`Mailbox`], which also
//! hands back the waker of an async caller waiting for them.

use std::ops::Range;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Poll, Waker};
use std::time::Instant;

use crate::bulk::SlotLease;
use crate::error::Error;
use crate::flow::{DELIVERY_BATCH, DELIVERY_DELAY};

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
        /// The worker's reply slot, when one of these items has its long
        /// strings there: freed as this goes.
        lease: Option<SlotLease>,
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

/// Deliveries collected by the loop, each for a map, sent in batches.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    deliveries: Vec<(u64, Delivery)>,
    /// When the oldest delivery came.
    since: Option<Instant>,
}

impl Outbox {
    pub(crate) fn push(&mut self, map: u64, delivery: Delivery) {
        if self.deliveries.is_empty() {
            self.since = Some(Instant::now());
        }
        self.deliveries.push((map, delivery));
    }

    /// Whether it is time to send what it holds while the loop is busy: a
    /// batch is full, or its oldest delivery has waited long enough.
    pub(crate) fn due(&self) -> bool {
        self.deliveries.len() >= DELIVERY_BATCH
            || self
                .since
                .is_some_and(|since| since.elapsed() >= DELIVERY_DELAY)
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.deliveries.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.deliveries.is_empty()
    }

    #[cfg(test)]
    pub(crate) fn deliveries(&self) -> &[(u64, Delivery)] {
        &self.deliveries
    }

    /// Takes what it holds, with the map each is for.
    pub(crate) fn drain(&mut self) -> std::vec::Drain<'_, (u64, Delivery)> {
        self.since = None;
        self.deliveries.drain(..)
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

    /// Looks for deliveries with `look`; if there are none, leaves `waker`
    /// to be woken by the next ones and looks again. A delivery sent
    /// between the first look and the registration found no waker to wake:
    /// only the second look sees it.
    pub(crate) fn look_or_register(
        &self,
        waker: &Waker,
        mut look: impl FnMut() -> Poll<()>,
    ) -> Poll<()> {
        if look().is_ready() {
            return Poll::Ready(());
        }
        self.register(waker);
        look()
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;
    use std::task::Wake;

    use super::*;

    /// Counts its wake-ups.
    #[derive(Default)]
    struct Counter(AtomicUsize);

    impl Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_delivery_between_the_first_look_and_the_registration_is_not_lost() {
        let (tx, rx) = mpsc::channel::<Vec<Delivery>>();
        let slot = Arc::new(WakerSlot::default());
        let mailbox = Mailbox::new(tx, Arc::clone(&slot));
        let counter = Arc::new(Counter::default());
        let waker = Waker::from(Arc::clone(&counter));
        let mut looks = 0;
        let poll = slot.look_or_register(&waker, || {
            looks += 1;
            if rx.try_recv().is_ok() {
                return Poll::Ready(());
            }
            if looks == 1 {
                // The pool's thread sends right after the first look, before
                // the waker is left: there is none to wake.
                assert!(mailbox.send(Vec::new()).is_none());
            }
            Poll::Pending
        });
        let woken = counter.0.load(Ordering::SeqCst);
        assert!(
            poll.is_ready() || woken > 0,
            "the delivery was neither seen nor woken for"
        );
        assert_eq!(looks, 2);
    }

    #[test]
    fn a_delivery_after_the_registration_wakes_the_waiting_task() {
        let (tx, rx) = mpsc::channel::<Vec<Delivery>>();
        let slot = Arc::new(WakerSlot::default());
        let mailbox = Mailbox::new(tx, Arc::clone(&slot));
        let counter = Arc::new(Counter::default());
        let waker = Waker::from(Arc::clone(&counter));
        let look = || match rx.try_recv() {
            Ok(_) => Poll::Ready(()),
            Err(_) => Poll::Pending,
        };
        assert!(slot.look_or_register(&waker, look).is_pending());
        // Registered once, however often it polls.
        assert!(slot.look_or_register(&waker, look).is_pending());
        mailbox.send(Vec::new()).expect("the waker left").wake();
        assert_eq!(counter.0.load(Ordering::SeqCst), 1);
        assert!(slot.take().is_none(), "taken by the delivery");
        // One that finds deliveries registers nothing.
        let (tx, rx) = mpsc::channel::<Vec<Delivery>>();
        let slot = Arc::new(WakerSlot::default());
        tx.send(Vec::new()).unwrap();
        let look = || match rx.try_recv() {
            Ok(_) => Poll::Ready(()),
            Err(_) => Poll::Pending,
        };
        assert!(slot.look_or_register(&waker, look).is_ready());
        assert!(slot.take().is_none());
    }
}
