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
        self.post_late();
    }

    /// When an observer has a held failure to give back at the latest.
    pub(crate) fn due_at(&self) -> Option<Instant> {
        self.observers.iter().filter_map(|o| o.due()).min()
    }

    /// Whether it is time to deliver while the loop is busy.
    pub(crate) fn due(&self) -> bool {
        self.outbox.due()
    }

    #[cfg(test)]
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
        self.post_late();
    }

    /// Posts the failures the observers gave back.
    fn post_late(&mut self) {
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
                true => protocol::decode_outcome::<IgnoredAny>(outcome, &mut scratch).ok(),
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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::error::Replay;
    use crate::protocol::RunFrame;

    /// What the mock saw.
    #[derive(Default)]
    struct Seen {
        /// `(map, done, items)` per call.
        answered: Vec<(u64, u32, usize)>,
        /// `(index, input)` per failure.
        failed: Vec<(usize, Vec<u8>)>,
        flushes: usize,
    }

    /// An observer that counts what it sees, and holds failures if told
    /// to, giving them back from `collect` with a note in the replay slot.
    struct Mock {
        wants: Wants,
        holds: bool,
        held: Vec<(u64, Error)>,
        seen: Arc<Mutex<Seen>>,
    }

    impl Mock {
        fn boxed(wants: Wants, holds: bool) -> (Box<dyn Observer>, Arc<Mutex<Seen>>) {
            let seen = Arc::new(Mutex::new(Seen::default()));
            let mock = Mock {
                wants,
                holds,
                held: Vec::new(),
                seen: Arc::clone(&seen),
            };
            (Box::new(mock), seen)
        }
    }

    impl Observer for Mock {
        fn wants(&self) -> Wants {
            self.wants
        }

        fn answered(&mut self, chunk: &Chunk, done: u32, outcomes: &[u8]) {
            let items = Items::new(outcomes).count();
            let mut seen = self.seen.lock().unwrap();
            seen.answered.push((chunk.map, done, items));
        }

        fn failed(&mut self, failed: &Failed<'_>, mut error: Error) -> Option<Error> {
            let mut seen = self.seen.lock().unwrap();
            seen.failed.push((failed.index, failed.input.to_vec()));
            if !self.holds {
                return Some(error);
            }
            *error.replay_mut().expect("a slot") = Some(Replay::NotKept("held".into()));
            self.held.push((failed.chunk.map, error));
            None
        }

        fn collect(&mut self, _: Instant, out: &mut Vec<(u64, Error)>) {
            out.append(&mut self.held);
        }

        fn flush(&mut self) {
            self.seen.lock().unwrap().flushes += 1;
        }
    }

    fn posting(observers: Vec<Box<dyn Observer>>) -> Posting {
        let ring: Ring = Arc::new(|| {});
        Posting::new(observers, &ring)
    }

    /// A chunk of map 7 with inputs `values`, from index 10.
    fn chunk(values: &[u64]) -> Chunk {
        let mut frame = RunFrame::new(0);
        for value in values {
            frame.push_with(|buf| protocol::encode(value, buf)).unwrap();
        }
        Chunk {
            map: 7,
            task: 0,
            context: 0,
            first_index: 10,
            count: values.len() as u32,
            frame: frame.finish(),
            attempts: 0,
            returns: 0,
            bulk: Vec::new(),
            context_frame: None,
            timeout: None,
        }
    }

    /// Outcome items: `Some(v)` an `Ok`, `None` a panic.
    fn outcomes(values: &[Option<u64>]) -> Vec<u8> {
        let mut items = Vec::new();
        for value in values {
            let mut item = Vec::new();
            match value {
                Some(v) => protocol::encode_ok(v, &mut item).unwrap(),
                None => protocol::encode_failure::<()>(
                    &Outcome::Panicked(Box::new(PanicReport {
                        message: "cursed".into(),
                        location: None,
                        backtrace: None,
                    })),
                    &mut item,
                ),
            }
            protocol::push_item(&mut items, &item);
        }
        items
    }

    fn answer(posting: &mut Posting, chunk: &Chunk, done: u32, items: &[u8]) {
        let count = Items::new(items).count() as u32;
        let payload = Payload::Copied(items.to_vec());
        posting.answered(chunk, done, count, items, payload, None);
    }

    /// `(index, count)` of outcomes, `(index, None)` of failures.
    fn placed(deliveries: &[(u64, Delivery)]) -> Vec<(usize, Option<u32>)> {
        deliveries
            .iter()
            .map(|(map, delivery)| {
                assert_eq!(*map, 7);
                match delivery {
                    Delivery::Outcomes {
                        first_index, count, ..
                    } => (*first_index, Some(*count)),
                    Delivery::Failed(error) => (error.index().unwrap(), None),
                    Delivery::Closed { .. } => unreachable!(),
                }
            })
            .collect()
    }

    #[test]
    fn every_observer_sees_each_answer_once_and_it_is_posted_once() {
        let (first, seen_first) = Mock::boxed(Wants::default(), false);
        let (second, seen_second) = Mock::boxed(Wants::default(), false);
        let mut posting = posting(vec![first, second]);
        let chunk = chunk(&[1, 2, 3]);
        let items = outcomes(&[Some(1), None, Some(3)]);
        answer(&mut posting, &chunk, 0, &items[..]);
        for seen in [&seen_first, &seen_second] {
            let seen = seen.lock().unwrap();
            assert_eq!(seen.answered, [(7, 0, 3)]);
            assert!(seen.failed.is_empty());
            assert_eq!(seen.flushes, 0, "no flush before the batch leaves");
        }
        // Nobody wants panics alone: the reply goes whole.
        assert_eq!(placed(posting.deliveries()), [(10, Some(3))]);
        let batch = posting.take();
        assert_eq!(batch.len(), 1);
        assert!(posting.is_empty());
        for seen in [&seen_first, &seen_second] {
            assert_eq!(seen.lock().unwrap().flushes, 1);
        }
    }

    #[test]
    fn a_panic_goes_alone_with_its_input_when_an_observer_wants_it() {
        let wants = Wants {
            panics_alone: true,
            ..Wants::default()
        };
        let (mock, seen) = Mock::boxed(wants, false);
        let mut posting = posting(vec![mock]);
        let chunk = chunk(&[1, 2, 3, 4]);
        // The worker had answered the first before.
        let items = outcomes(&[Some(2), None, Some(4)]);
        assert!(has_panic(&items) && !has_panic(&outcomes(&[Some(2)])));
        answer(&mut posting, &chunk, 1, &items);
        assert_eq!(
            placed(posting.deliveries()),
            [(11, Some(1)), (12, None), (13, Some(1))]
        );
        let seen = seen.lock().unwrap();
        assert_eq!(seen.answered, [(7, 1, 3)]);
        let mut input = Vec::new();
        protocol::encode(&3u64, &mut input).unwrap();
        assert_eq!(seen.failed, [(12, input)], "observed once, with its input");
        let (_, Delivery::Failed(error)) = &posting.deliveries()[1] else {
            unreachable!()
        };
        assert!(
            matches!(error, Error::TaskPanicked { message, .. } if message == "cursed"),
            "{error:?}"
        );
    }

    #[test]
    fn a_held_failure_comes_back_with_its_kind_once() {
        let (mock, seen) = Mock::boxed(Wants::default(), true);
        let (after, seen_after) = Mock::boxed(Wants::default(), false);
        let mut posting = posting(vec![mock, after]);
        let chunk = chunk(&[5]);
        let error = Error::TaskTimeout {
            index: 10,
            timeout: std::time::Duration::from_secs(1),
            replay: None,
        };
        posting.fail(&chunk, 10, chunk.only_item(), error, None, "");
        assert!(posting.is_empty(), "held, not posted");
        assert_eq!(seen.lock().unwrap().failed.len(), 1);
        assert!(
            seen_after.lock().unwrap().failed.is_empty(),
            "a held failure goes to no observer after the one holding it"
        );
        posting.collect(Instant::now());
        let deliveries = posting.take();
        let [(7, Delivery::Failed(error))] = &deliveries[..] else {
            panic!("{deliveries:?}")
        };
        assert!(
            matches!(
                error,
                Error::TaskTimeout { index: 10, replay: Some(Replay::NotKept(why)), .. } if why == "held"
            ),
            "{error:?}"
        );
        posting.collect(Instant::now());
        assert!(posting.is_empty(), "given back once");
    }
}
