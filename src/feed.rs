//! The caller-side half of a map: pulling inputs, encoding them into
//! chunks, handing them to the pool, decoding and ordering outcomes. The
//! iterators ([`crate::results`]) and the async calls ([`crate::stream`])
//! differ only in how they wait ([`Wait`]).
//!
//! Inputs are pulled on the caller's thread, only while fewer than a window
//! of them are unanswered, so an endless input iterator is fine and memory
//! stays bounded. How many, and how they are cut into frames, is decided in
//! [`crate::flow`].

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::task::{Context, Poll};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::bulk::{InputFrame, SlotLease};
use crate::chunk::{Chunk, context_value};
use crate::delivery::{Delivery, WakerSlot};
use crate::error::Error;
use crate::flow::{self, CHUNK_BYTES, ChunkContext, SCRATCH_BYTES, WINDOW_BYTES, Window};
use crate::hooks::Answerer;
use crate::panics::PanicReport;
use crate::protocol::{self, Items, Outcome};
use crate::scheduler::Running;
use crate::shared::{MapStats, MapTask, Refused, Shared};

/// How a caller waits for outcomes.
pub(crate) enum Wait<'a, 'b> {
    /// Blocks its thread (the iterators).
    Block,
    /// Registers the task's waker and returns pending (the async calls).
    Poll(&'a mut Context<'b>),
}

/// The answer for one input, in a map's window. Errors are boxed in it:
/// the window holds thousands of answers, nearly all `Ok`, and moves each
/// twice.
enum Answer<O> {
    Waiting,
    Ready(Result<O, Box<Error>>),
    Taken,
}

/// The state of one map on the caller's side.
pub(crate) struct Feed<It, O> {
    shared: Arc<Shared>,
    map: u64,
    task: u32,
    /// The context its task reads, 0 for none, and its CONTEXT frame.
    context: u64,
    context_frame: Option<Arc<Vec<u8>>>,
    /// How long each input may run: the map's own timeout, else the
    /// pool's.
    timeout: Option<Duration>,
    rx: Receiver<Vec<Delivery>>,
    waker: Arc<WakerSlot>,
    stats: Arc<MapStats>,
    /// `None` once exhausted.
    inputs: Option<It>,
    next_input: usize,
    /// Outcomes of inputs `base..next_input`.
    window: VecDeque<Answer<O>>,
    base: usize,
    /// Inputs handed to the pool and not yet answered.
    owed: usize,
    /// Indices in the order their outcomes arrived (unordered maps only).
    arrivals: Option<VecDeque<usize>>,
    scratch: Vec<u8>,
    /// Size of the last frame built, to size the next one.
    frame_hint: usize,
    /// Answers in the window already yielded (unordered maps only).
    taken: usize,
    /// A panic interrupted pulling inputs: the map ends.
    poisoned: bool,
    /// Average encoded size of an input in the last frame.
    item_bytes: usize,
    /// The chunk size aimed at by the last fill.
    last_chunk_target: u32,
    /// Answers inputs without running them, if the pool has what does.
    answerer: Option<Box<dyn Answerer>>,
    /// Inputs the answerer answered.
    answered: usize,
    /// The pool of a one-shot [`map`](crate::map), dropped with the results.
    pub(crate) _pool: Option<Running>,
}

impl<It, O> Feed<It, O>
where
    It: Iterator,
    It::Item: Serialize,
    O: DeserializeOwned,
{
    pub(crate) fn new(
        shared: &Arc<Shared>,
        task: MapTask,
        inputs: It,
        unordered: bool,
    ) -> Result<Feed<It, O>, Error> {
        let shared = Arc::clone(shared);
        let context = task.context_id();
        let context_frame = task.context.as_ref().map(|c| Arc::clone(&c.frame));
        let answerer = shared.answerers.as_ref().and_then(|answerers| {
            let value = context_frame.as_deref().map(|f| context_value(f));
            match value {
                // A context whose value cannot be read answers nothing.
                Some(None) => None,
                value => answerers.for_map(task.position, value.flatten()),
            }
        });
        let timeout = task.timeout.or(shared.config.timeout);
        let opened = shared.open_map(task.context)?;
        Ok(Feed {
            shared,
            map: opened.id,
            task: task.position,
            context,
            context_frame,
            timeout,
            rx: opened.deliveries,
            waker: opened.waker,
            stats: opened.stats,
            inputs: Some(inputs),
            next_input: 0,
            window: VecDeque::new(),
            base: 0,
            owed: 0,
            arrivals: unordered.then(VecDeque::new),
            scratch: vec![0; SCRATCH_BYTES],
            frame_hint: 0,
            taken: 0,
            poisoned: false,
            item_bytes: 0,
            last_chunk_target: 0,
            answerer,
            answered: 0,
            _pool: None,
        })
    }

    fn chunk_items(&self) -> u32 {
        let remaining = self
            .inputs
            .as_ref()
            .map_or(0, |inputs| inputs.size_hint().0);
        flow::chunk_items(&ChunkContext {
            batch_size: self.shared.config.batch_size,
            per_item: self.stats.per_item(),
            // A frame is answered as a whole, within its inputs' timeout.
            timeout: self.timeout,
            remaining,
            processes: self.shared.config.processes,
            last_target: self.last_chunk_target,
        })
    }

    fn window(&self, chunk_items: u32) -> Window {
        flow::window(
            chunk_items,
            self.item_bytes,
            self.stats.per_item(),
            self.shared.config.processes,
        )
    }

    fn set(&mut self, index: usize, result: Result<O, Error>) {
        let slot = &mut self.window[index - self.base];
        debug_assert!(
            matches!(slot, Answer::Waiting),
            "input {index} answered twice"
        );
        *slot = Answer::Ready(result.map_err(Box::new));
        if let Some(arrivals) = &mut self.arrivals {
            arrivals.push_back(index);
        }
    }

    /// Pulls inputs until the window is full or the inputs end, and hands
    /// them to the pool.
    fn fill(&mut self) {
        if self.inputs.is_none() {
            return;
        }
        let chunk_items = self.chunk_items();
        let Window { span, ahead } = self.window(chunk_items);
        // Top up in bulk, when half of what the pool holds is done (and
        // at once when it holds nothing).
        if self.owed > 0 && self.owed >= ahead / 2 {
            return;
        }
        // Cleared at the end: if the input iterator or an input's
        // `Serialize` panics, inputs pulled so far were never handed to the
        // pool, and the map cannot go on.
        self.poisoned = true;
        let max_frame = self.shared.config.max_frame_bytes as usize;
        let mut chunks = Vec::new();
        let mut frame = self.fresh_frame();
        let mut first = self.next_input;
        let pulled_before = self.next_input;
        // Bytes of finished chunks not yet handed to the pool.
        let mut pending = 0;
        // Bytes encoded by this fill: the window counts inputs, sized by
        // the inputs before, and the first fill knows no sizes yet.
        let mut encoded = 0;
        // Long strings go beside the frames only for maps whose inputs are
        // long, or not measured yet: the diverting encoder costs tiny
        // inputs a little, and a map's inputs are mostly alike.
        let long = self.item_bytes == 0 || self.item_bytes >= crate::bulk::BULK_MIN / 4;
        let bulk = self
            .shared
            .config
            .bulk
            .clone()
            .filter(|_| long && crate::bulk::dumpable());
        debug_assert!(
            bulk.is_none() || self.answerer.is_none(),
            "an answerer keys plain items"
        );
        // Stops at a chunk boundary once enough is pulled, so that no chunk is
        // cut short.
        while self.next_input - self.base < span
            && (self.owed + (self.next_input - pulled_before) < ahead || frame.count() > 0)
            && encoded < WINDOW_BYTES
        {
            let Some(input) = self.inputs.as_mut().and_then(Iterator::next) else {
                self.inputs = None;
                break;
            };
            let index = self.next_input;
            self.next_input += 1;
            self.window.push_back(Answer::Waiting);
            let bulk = bulk.as_ref();
            let mut pushed = frame.push_input(&input, bulk);
            if let Ok(bytes) = pushed {
                if let Some(output) = self.answer(frame.last_item(bytes)) {
                    // Answered without running: not sent.
                    frame.pop(bytes);
                    let done = std::mem::replace(&mut frame, self.fresh_frame());
                    pending += self.finish_chunk(&mut chunks, done, first);
                    self.set(index, Ok(output));
                    first = index + 1;
                    continue;
                }
            }
            if pushed.is_ok() && frame.size() > max_frame && frame.count() > 1 {
                // Too big to share a frame: send the rest first.
                frame.pop(pushed.expect("checked"));
                let done = std::mem::replace(&mut frame, self.fresh_frame());
                pending += self.finish_chunk(&mut chunks, done, first);
                first = index;
                pushed = frame.push_input(&input, bulk);
            }
            let failure = match pushed {
                Ok(bytes) if frame.size() > max_frame => {
                    let len = frame.size() - frame.len() + bytes - protocol::ITEM_LEN_BYTES;
                    frame.pop(bytes);
                    let message = format!(
                        "input encodes to {len} bytes, over the frame limit of {max_frame}"
                    );
                    Some(message.into())
                }
                Ok(_) => None,
                Err(e) => Some(e),
            };
            if let Some(source) = failure {
                let done = std::mem::replace(&mut frame, self.fresh_frame());
                pending += self.finish_chunk(&mut chunks, done, first);
                self.set(index, Err(Error::Encode { index, source }));
                first = index + 1;
            } else if frame.count() >= chunk_items || frame.size() >= CHUNK_BYTES {
                let done = std::mem::replace(&mut frame, self.fresh_frame());
                pending += self.finish_chunk(&mut chunks, done, first);
                first = index + 1;
            }
            // Large inputs go to the pool as soon as they are encoded, so
            // that workers start while the next ones are being encoded.
            if pending >= CHUNK_BYTES {
                self.submit(std::mem::take(&mut chunks));
                encoded += pending;
                pending = 0;
            }
        }
        self.finish_chunk(&mut chunks, frame, first);
        self.last_chunk_target = chunk_items;
        self.submit(chunks);
        self.poisoned = false;
    }

    /// The output of the encoded input `item` as the answerer has it, if
    /// it has one that decodes as an `O` (one that no longer does, because
    /// its type changed, runs again).
    fn answer(&mut self, item: &[u8]) -> Option<O> {
        let answerer = self.answerer.as_mut()?;
        let scratch = &mut self.scratch;
        let mut output = None;
        answerer.answer(item, &mut |bytes| {
            output = protocol::decode(bytes, scratch).ok();
            output.is_some()
        });
        self.answered += usize::from(output.is_some());
        output
    }

    fn submit(&mut self, chunks: Vec<Chunk>) {
        let owed: usize = chunks.iter().map(|chunk| chunk.count as usize).sum();
        match self.shared.submit(chunks) {
            Ok(()) => self.owed += owed,
            Err(Refused { chunks, reason }) => {
                for chunk in chunks {
                    self.fail_closed(chunk.first_index, chunk.count, &reason);
                }
            }
        }
    }

    /// A frame sized like the last one.
    fn fresh_frame(&self) -> InputFrame {
        InputFrame::with_capacity(self.task, self.context, self.frame_hint)
    }

    /// Turns `frame` into a chunk of inputs from `first_index` on, if it holds
    /// any; returns its size in bytes.
    fn finish_chunk(
        &mut self,
        chunks: &mut Vec<Chunk>,
        frame: InputFrame,
        first_index: usize,
    ) -> usize {
        if frame.count() == 0 {
            return 0;
        }
        self.frame_hint = frame.len();
        // Strings beside the frame count too: they take memory as long as
        // the chunk is unanswered.
        self.item_bytes = (frame.size() - protocol::RunHeader::SIZE) / frame.count() as usize;
        let count = frame.count();
        let bytes = frame.size();
        let (frame, bulk) = frame.finish();
        chunks.push(Chunk {
            map: self.map,
            task: self.task,
            context: self.context,
            first_index,
            count,
            frame,
            attempts: 0,
            returns: 0,
            bulk,
            context_frame: self.context_frame.clone(),
            timeout: self.timeout,
        });
        bytes
    }

    /// Fails inputs that will never run because the pool shut down.
    fn fail_closed(&mut self, first_index: usize, count: u32, reason: &Option<String>) {
        for index in first_index..first_index + count as usize {
            self.set(
                index,
                Err(Error::PoolClosed {
                    index,
                    reason: reason.clone(),
                }),
            );
        }
    }

    /// Waits for deliveries as `wait` says, then takes all that are there.
    fn receive(&mut self, wait: &mut Wait<'_, '_>) -> Poll<()> {
        match wait {
            Wait::Block => match self.rx.recv() {
                Ok(deliveries) => self.on_deliveries(deliveries),
                Err(_) => {
                    self.orphaned();
                    return Poll::Ready(());
                }
            },
            Wait::Poll(cx) => {
                let slot = Arc::clone(&self.waker);
                return slot.look_or_register(cx.waker(), || self.take_arrived());
            }
        }
        let _ = self.take_arrived();
        Poll::Ready(())
    }

    /// Takes the deliveries that are there; pending if there were none.
    fn take_arrived(&mut self) -> Poll<()> {
        let mut any = false;
        loop {
            match self.rx.try_recv() {
                Ok(deliveries) => {
                    self.on_deliveries(deliveries);
                    any = true;
                }
                Err(TryRecvError::Empty) if !any => return Poll::Pending,
                Err(TryRecvError::Empty) => return Poll::Ready(()),
                Err(TryRecvError::Disconnected) => {
                    self.orphaned();
                    return Poll::Ready(());
                }
            }
        }
    }

    fn on_deliveries(&mut self, deliveries: Vec<Delivery>) {
        for delivery in deliveries {
            self.on_delivery(delivery);
        }
    }

    /// The pool's thread is gone without answering: fail what it owed.
    fn orphaned(&mut self) {
        let reason = self.shared.lock().phase.reason();
        for offset in 0..self.window.len() {
            if matches!(self.window[offset], Answer::Waiting) {
                let index = self.base + offset;
                self.set(
                    index,
                    Err(Error::PoolClosed {
                        index,
                        reason: reason.clone(),
                    }),
                );
            }
        }
        self.owed = 0;
    }

    fn on_delivery(&mut self, delivery: Delivery) {
        match delivery {
            Delivery::Outcomes {
                first_index,
                count,
                items,
                lease,
            } => {
                let limit = u64::from(self.shared.config.max_frame_bytes);
                for (index, item) in (first_index..).zip(Items::new(items.as_slice())) {
                    let result = match item {
                        Ok(item) => {
                            decode_outcome(index, item, &mut self.scratch, lease.as_ref(), limit)
                        }
                        Err(e) => Err(Error::Protocol {
                            index,
                            message: e.0,
                            replay: None,
                        }),
                    };
                    self.set(index, result);
                }
                self.owed -= count as usize;
            }
            Delivery::Failed(error) => {
                let index = error.index().expect("per-input errors carry an index");
                self.set(index, Err(error));
                self.owed -= 1;
            }
            Delivery::Closed {
                first_index,
                count,
                reason,
            } => {
                self.fail_closed(first_index, count, &reason);
                self.owed -= count as usize;
            }
        }
    }

    fn exhausted(&self) -> bool {
        self.inputs.is_none() && self.owed == 0
    }

    /// The next outcome in input order.
    pub(crate) fn poll_ordered(
        &mut self,
        wait: &mut Wait<'_, '_>,
    ) -> Poll<Option<Result<O, Error>>> {
        if self.poisoned {
            return Poll::Ready(None);
        }
        loop {
            if matches!(self.window.front(), Some(Answer::Ready(_))) {
                let Some(Answer::Ready(result)) = self.window.pop_front() else {
                    unreachable!()
                };
                self.base += 1;
                return Poll::Ready(Some(result.map_err(|e| *e)));
            }
            self.fill();
            if matches!(self.window.front(), Some(Answer::Ready(_))) {
                continue;
            }
            if self.window.is_empty() && self.exhausted() {
                return Poll::Ready(None);
            }
            if self.receive(wait).is_pending() {
                return Poll::Pending;
            }
        }
    }

    /// The next outcome to arrive, with its input's position.
    pub(crate) fn poll_unordered(
        &mut self,
        wait: &mut Wait<'_, '_>,
    ) -> Poll<Option<(usize, Result<O, Error>)>> {
        if self.poisoned {
            return Poll::Ready(None);
        }
        loop {
            if let Some(index) = self.arrivals.as_mut().and_then(VecDeque::pop_front) {
                let slot = std::mem::replace(&mut self.window[index - self.base], Answer::Taken);
                self.taken += 1;
                let Answer::Ready(result) = slot else {
                    unreachable!("arrivals are ready")
                };
                while matches!(self.window.front(), Some(Answer::Taken)) {
                    self.window.pop_front();
                    self.base += 1;
                    self.taken -= 1;
                }
                return Poll::Ready(Some((index, result.map_err(|e| *e))));
            }
            self.fill();
            if self.arrivals.as_ref().is_some_and(|a| !a.is_empty()) {
                continue;
            }
            if self.exhausted() {
                return Poll::Ready(None);
            }
            if self.receive(wait).is_pending() {
                return Poll::Pending;
            }
        }
    }

    pub(crate) fn size_hint(&self) -> (usize, Option<usize>) {
        // Pulled and not yet yielded (an unordered map yields out of order).
        let pending = self.next_input - self.base - self.taken;
        match &self.inputs {
            None => (pending, Some(pending)),
            Some(inputs) => {
                let (low, high) = inputs.size_hint();
                (
                    pending + low,
                    high.and_then(|high| high.checked_add(pending)),
                )
            }
        }
    }
}

impl<It, O> Drop for Feed<It, O> {
    fn drop(&mut self) {
        // Unfinished work of this map is dropped, and workers running it are
        // killed: nothing keeps running for results nobody will read.
        self.shared.cancel_map(self.map);
        if self.shared.answerers.is_some() {
            tracing::info!(
                map = self.map,
                answered = self.answered,
                inputs = self.next_input,
                "map ended: {} of {} inputs answered from the journal",
                self.answered,
                self.next_input
            );
        }
    }
}

/// The value of a poll that was allowed to block.
pub(crate) fn blocking<T>(poll: Poll<T>) -> T {
    match poll {
        Poll::Ready(value) => value,
        Poll::Pending => unreachable!("a blocking wait is never pending"),
    }
}

fn decode_outcome<O: DeserializeOwned>(
    index: usize,
    item: &[u8],
    scratch: &mut [u8],
    lease: Option<&SlotLease>,
    limit: u64,
) -> Result<O, Error> {
    match crate::bulk::decode_outcome::<O>(item, scratch, lease, limit) {
        Ok(Outcome::Ok(value)) => Ok(value),
        Ok(Outcome::Panicked(report)) => {
            let PanicReport {
                message,
                location,
                backtrace,
            } = *report;
            Err(Error::TaskPanicked {
                index,
                message,
                location,
                backtrace,
                replay: None,
            })
        }
        Ok(Outcome::Codec(message)) => Err(Error::WorkerCodec { index, message }),
        Err(source) => Err(Error::Decode { index, source }),
    }
}

impl<It, O> Feed<It, O> {
    pub(crate) fn debug(&self, name: &str, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct(name)
            .field("pulled", &self.next_input)
            .field("yielded_below", &self.base)
            .field("in_pool", &self.owed)
            .field("inputs_exhausted", &self.inputs.is_none())
            .finish()
    }
}
