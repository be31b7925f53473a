//! Posting: where the loop puts outcomes and failures for the maps. They
//! are batched in an [`Outbox`], and shown to the pool's observers
//! ([`crate::hooks`]) on the way, always outside the state lock: the loop
//! takes a batch out ([`Posting::take`]) before it locks to deliver it.

use std::time::Instant;

use serde::de::IgnoredAny;

use crate::bulk::SlotLease;
use crate::chunk::Chunk;
use crate::delivery::{Delivery, Outbox, Payload};
use crate::error::Error;
use crate::flow::SCRATCH_BYTES;
use crate::hooks::{self, Failed, Observer, Ring, Wants};
use crate::panics::PanicReport;
use crate::protocol::{self, Items, Outcome};

/// The loop's outbox and the pool's observers.
#[derive(Default)]
pub(crate) struct Posting {
    outbox: Outbox,
    observers: Vec<Box<dyn Observer>>,
    wants: Wants,
    /// Scratch: failures the observers gave back.
    late: Vec<(u64, Error)>,
}

impl std::fmt::Debug for Posting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Posting")
            .field("outbox", &self.outbox)
            .field("observers", &self.observers.len())
            .finish()
    }
}

impl Posting {
    /// Posting shown to `observers`, which wake the loop with `ring`.
    pub(crate) fn new(mut observers: Vec<Box<dyn Observer>>, ring: &Ring) -> Posting {
        for observer in &mut observers {
            observer.attach(ring.clone());
        }
        Posting {
            wants: hooks::wants(&observers),
            observers,
            ..Posting::default()
        }
    }

    /// What the observers need.
    pub(crate) fn wants(&self) -> Wants {
        self.wants
    }

    /// Posts `outcomes`, which answer items `done..done + count` of
    /// `chunk`, as `items` (the same bytes, maybe uncopied); `lease` is the
    /// reply slot some of them have long strings in.
    pub(crate) fn answered(
        &mut self,
        chunk: &Chunk,
        done: u32,
        count: u32,
        outcomes: &[u8],
        items: Payload,
        lease: Option<SlotLease>,
    ) {
        for observer in &mut self.observers {
            observer.answered(chunk, done, outcomes);
        }
        if self.wants.panics_alone && lease.is_none() && has_panic(outcomes) {
            self.one_by_one(chunk, done, outcomes);
            return;
        }
        self.outbox.push(
            chunk.map,
            Delivery::Outcomes {
                first_index: chunk.first_index + done as usize,
                count,
                items,
                lease,
            },
        );
    }

    /// Posts the failure of input `index` of `chunk`, encoded as `input`,
    /// unless an observer holds it for a while.
    pub(crate) fn fail(
        &mut self,
        chunk: &Chunk,
        index: usize,
        input: &[u8],
        mut error: Error,
        status: Option<std::process::ExitStatus>,
        stderr: &str,
    ) {
        let failed = Failed {
            chunk,
            index,
            input,
            status,
            stderr,
        };
        for observer in &mut self.observers {
            match observer.failed(&failed, error) {
                Some(given_back) => error = given_back,
                None => return,
            }
        }
        self.outbox.push(chunk.map, Delivery::Failed(error));
    }

    /// Posts `delivery` for `map`, unseen by the observers (it has no
    /// input to show them).
    pub(crate) fn push(&mut self, map: u64, delivery: Delivery) {
        self.outbox.push(map, delivery);
    }

    /// Posts the failures the observers held that are ready by `now`.
    pub(crate) fn collect(&mut self, now: Instant) {
        for observer in &mut self.observers {
            observer.collect(now, &mut self.late);
        }
        for (map, error) in self.late.drain(..) {
            self.outbox.push(map, Delivery::Failed(error));
        }
    }

    /// When an observer has a held failure to give back at the latest.
    pub(crate) fn due_at(&self) -> Option<Instant> {
        self.observers.iter().filter_map(|o| o.due()).min()
    }

    /// Whether it is time to deliver while the loop is busy.
    pub(crate) fn due(&self) -> bool {
        self.outbox.due()
    }

    pub(crate) fn len(&self) -> usize {
        self.outbox.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.outbox.is_empty()
    }

    #[cfg(test)]
    pub(crate) fn deliveries(&self) -> &[(u64, Delivery)] {
        self.outbox.deliveries()
    }

    /// Takes what is posted, for delivery: the observers flush first.
    pub(crate) fn take(&mut self) -> Vec<(u64, Delivery)> {
        for observer in &mut self.observers {
            observer.flush();
        }
        self.outbox.drain().collect()
    }

    pub(crate) fn forget_context(&mut self, id: u64) {
        for observer in &mut self.observers {
            observer.forget_context(id);
        }
    }

    pub(crate) fn forget_map(&mut self, map: u64) {
        for observer in &mut self.observers {
            observer.forget_map(map);
        }
    }

    /// The pool is closing: posts every failure the observers still hold.
    pub(crate) fn finish(&mut self) {
        for observer in &mut self.observers {
            observer.finish(&mut self.late);
        }
        for (map, error) in self.late.drain(..) {
            self.outbox.push(map, Delivery::Failed(error));
        }
    }

    /// Posts outcomes one at a time, answering items `done..` of `chunk`,
    /// so that a panic goes out as a failure of its own, with its input.
    fn one_by_one(&mut self, chunk: &Chunk, done: u32, outcomes: &[u8]) {
        let inputs = Items::new(chunk.items()).skip(done as usize);
        let mut scratch = vec![0; SCRATCH_BYTES];
        for (k, (input, outcome)) in inputs.zip(Items::new(outcomes)).enumerate() {
            let index = chunk.first_index + done as usize + k;
            let (Ok(input), Ok(outcome)) = (input, outcome) else {
                unreachable!("items were measured before")
            };
            let panic = match protocol::is_panic(outcome) {
                true => {
                    protocol::decode_outcome::<IgnoredAny>(outcome, &mut scratch, None, u64::MAX)
                        .ok()
                }
                false => None,
            };
            if let Some(Outcome::Panicked(report)) = panic {
                let PanicReport {
                    message,
                    location,
                    backtrace,
                } = *report;
                let error = Error::TaskPanicked {
                    index,
                    message,
                    location,
                    backtrace,
                    replay: None,
                };
                self.fail(chunk, index, input, error, None, "");
            } else {
                let mut item = Vec::with_capacity(outcome.len() + protocol::ITEM_LEN_BYTES);
                protocol::push_item(&mut item, outcome);
                self.outbox.push(
                    chunk.map,
                    Delivery::Outcomes {
                        first_index: index,
                        count: 1,
                        items: Payload::Copied(item),
                        lease: None,
                    },
                );
            }
        }
    }
}

/// Whether a run of outcome items holds a panic.
fn has_panic(outcomes: &[u8]) -> bool {
    Items::new(outcomes).any(|item| item.is_ok_and(protocol::is_panic))
}
