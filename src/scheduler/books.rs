//! A worker's books: the frames it was given, how far they are written and
//! answered, its estimated backlog, and when its current input started.
//! Plain data with no process behind it, so that every rule is tested here.
//!
//! Time: a worker runs its frames in order and answers each before it
//! reads the next, so the frame at the head is the one running. It starts
//! at the latest of its frame being written in full, the worker's handshake
//! and the worker's last reply. Each of those is stamped with a time read
//! after the event, so the estimate is never earlier than the true start and
//! a timeout never fires early; time a frame spends queued does not count
//! against it. (What the pool cannot see is the worker's own latency: the
//! time it takes to be scheduled, read and decode the input counts as the
//! task's.)
//!
//! A head frame that is only partly written cannot have started. If the
//! worker stops taking its bytes for a whole timeout, it is stuck (a task
//! left it unable to read), and the deadline says so. A frame of which the
//! worker took nothing is innocent of whatever happened to it
//! ([`Books::head_untouched`]).
//!
//! Taking back: the pool is the only writer of a worker's request pipe, so
//! the bytes in it are the last ones written, and a read of all of them
//! (one `read`, atomic against the worker's) leaves the worker with
//! exactly what it had read before. Those bytes count as unwritten again
//! ([`Books::unwrite`]): the frames behind the head of which the worker
//! holds nothing then leave the books ([`Books::take_unwritten`]), never
//! started, and what is left of the others is written again, the same
//! bytes in the same order. (The worker reads its requests through a
//! buffer: what it holds besides the frame it runs, at most one read of
//! [`REQUEST_BUFFER`](crate::flow::REQUEST_BUFFER), stays with it.)

use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::posting::Posting;
use crate::bulk::{ReplySlots, SlotLease};
use crate::chunk::Chunk;
use crate::delivery::Payload;
use crate::flow::MAX_IOVECS;
use crate::protocol::{self, ProtocolError, ReplyHeader, RunHeader};
use crate::shared::MapStats;

/// One frame given to the worker and not fully answered.
struct Inflight {
    /// Frames that go before it and are not answered: the CONTEXT frame
    /// its task reads, and FORGET frames, if the worker needs them.
    prefix: Option<Arc<Vec<u8>>>,
    chunk: Chunk,
    first_seq: u64,
    /// Items answered so far.
    done: u32,
    /// When its frame was written in full.
    written_at: Option<Instant>,
    /// Estimated run time of one item when it was dispatched.
    estimate: Duration,
    stats: Arc<MapStats>,
}

impl Inflight {
    /// Bytes to write for it, prefix included.
    fn len(&self) -> usize {
        self.prefix.as_ref().map_or(0, |prefix| prefix.len()) + self.chunk.frame.len()
    }
}

/// A worker's books.
#[derive(Default)]
pub(crate) struct Books {
    /// Frames in the order given, the oldest (running) first.
    inflight: VecDeque<Inflight>,
    /// How many of them are written in full.
    written: usize,
    /// Bytes of `inflight[written]` already written.
    write_offset: usize,
    next_seq: u64,
    /// Inputs given to this worker so far (and not taken back).
    assigned: u64,
    /// Inputs it answered so far.
    answered: u64,
    /// Estimated run time of its unanswered inputs.
    backlog: Duration,
    /// When its handshake arrived.
    ready_at: Option<Instant>,
    last_reply_at: Option<Instant>,
    /// When bytes last went out to it.
    last_write_at: Option<Instant>,
}

/// A frame taken back from a worker that never read it.
pub(crate) struct TakenBack {
    pub chunk: Chunk,
    /// The frames that were to go before it (a CONTEXT frame, FORGET
    /// frames): the worker did not get them either.
    pub prefix: Option<Arc<Vec<u8>>>,
}

/// What a worker leaves unanswered when it goes.
pub(crate) struct Unanswered {
    /// The unanswered part of the frame it was running.
    pub head: Option<Chunk>,
    /// Frames behind it, which it never started.
    pub rest: Vec<Chunk>,
}

impl Unanswered {
    pub(crate) fn into_chunks(self) -> impl Iterator<Item = Chunk> {
        self.head.into_iter().chain(self.rest)
    }
}

impl Books {
    pub(crate) fn is_ready(&self) -> bool {
        self.ready_at.is_some()
    }

    /// The worker said hello at `now`.
    pub(crate) fn ready(&mut self, now: Instant) {
        self.ready_at = Some(now);
    }

    /// Frames given and not fully answered.
    pub(crate) fn frames(&self) -> usize {
        self.inflight.len()
    }

    pub(crate) fn backlog(&self) -> Duration {
        self.backlog
    }

    pub(crate) fn assigned(&self) -> u64 {
        self.assigned
    }

    pub(crate) fn answered(&self) -> u64 {
        self.answered
    }

    /// Whether any of its frames was written, in part or in full.
    pub(crate) fn any_written(&self) -> bool {
        self.written > 0 || self.write_offset > 0
    }

    pub(crate) fn all_written(&self) -> bool {
        self.written == self.inflight.len()
    }

    /// The input that item `seq` is, by its index in its map.
    pub(crate) fn index_of(&self, seq: u64) -> Option<usize> {
        self.inflight.iter().find_map(|inflight| {
            let offset = seq.checked_sub(inflight.first_seq)?;
            (offset < u64::from(inflight.chunk.count))
                .then(|| inflight.chunk.first_index + offset as usize)
        })
    }

    /// The map of the frame it is running.
    pub(crate) fn head_map(&self) -> Option<u64> {
        self.inflight.front().map(|head| head.chunk.map)
    }

    /// Takes a chunk, with `prefix` to write before it: stamps its sequence
    /// numbers into its frame and counts its estimated work.
    pub(crate) fn assign(
        &mut self,
        prefix: Option<Arc<Vec<u8>>>,
        mut chunk: Chunk,
        estimate: Duration,
        stats: Arc<MapStats>,
    ) {
        RunHeader::stamp_first_seq(&mut chunk.frame, self.next_seq);
        let first_seq = self.next_seq;
        self.next_seq += u64::from(chunk.count);
        self.assigned += u64::from(chunk.count);
        self.backlog += estimate * chunk.count;
        self.inflight.push_back(Inflight {
            prefix,
            chunk,
            first_seq,
            done: 0,
            written_at: None,
            estimate,
            stats,
        });
    }

    /// The bytes not yet written, as slices for one `writev`.
    pub(crate) fn unwritten(&self) -> Vec<IoSlice<'_>> {
        let mut slices = Vec::new();
        for (k, inflight) in self.inflight.iter().skip(self.written).enumerate() {
            let mut skip = if k == 0 { self.write_offset } else { 0 };
            if let Some(prefix) = &inflight.prefix {
                if skip < prefix.len() {
                    slices.push(IoSlice::new(&prefix[skip..]));
                    skip = 0;
                } else {
                    skip -= prefix.len();
                }
            }
            slices.push(IoSlice::new(&inflight.chunk.frame[skip..]));
            if slices.len() >= MAX_IOVECS {
                break;
            }
        }
        slices
    }

    /// Books `n` more bytes written, at `now`, which must be read after the
    /// write returned.
    pub(crate) fn wrote(&mut self, mut n: usize, now: Instant) {
        if n > 0 {
            self.last_write_at = Some(now);
        }
        while n > 0 {
            let inflight = &mut self.inflight[self.written];
            let left = inflight.len() - self.write_offset;
            if n >= left {
                n -= left;
                inflight.written_at = Some(now);
                self.written += 1;
                self.write_offset = 0;
            } else {
                self.write_offset += n;
                n = 0;
            }
        }
    }

    /// Books a REPLY frame that arrived at `now`: hands its outcomes to
    /// `posting`, uncopied when the frame has a buffer of its own (`shared`:
    /// that buffer and where the items start in it).
    pub(crate) fn answer(
        &mut self,
        header: ReplyHeader,
        mut items: &[u8],
        mut shared: Option<(&Arc<Vec<u8>>, usize)>,
        reply_slot: Option<&Arc<ReplySlots>>,
        now: Instant,
        posting: &mut Posting,
    ) -> Result<(), ProtocolError> {
        let mut left = header.count;
        let mut seq = header.first_seq;
        let per_item = Duration::from_nanos(header.busy_nanos) / header.count.max(1);
        while left > 0 {
            let Some(head) = self.inflight.front_mut() else {
                return Err(ProtocolError::new(format!(
                    "reply for item {seq}, which was never sent"
                )));
            };
            let expected = head.first_seq + u64::from(head.done);
            if seq != expected {
                return Err(ProtocolError::new(format!(
                    "reply for item {seq}, expected {expected}"
                )));
            }
            if head.written_at.is_none() {
                return Err(ProtocolError::new(format!(
                    "reply for item {seq}, whose frame is not written yet"
                )));
            }
            let n = left.min(head.chunk.count - head.done);
            let bytes = protocol::items_len(items, n as usize)?;
            let payload = match &mut shared {
                Some((buffer, at)) => {
                    let range = *at..*at + bytes;
                    *at += bytes;
                    Payload::Shared(Arc::clone(buffer), range)
                }
                None => Payload::Copied(items[..bytes].to_vec()),
            };
            let outcomes = &items[..bytes];
            // The delivery that carries a reply slot's fill holds the
            // lease on it.
            let lease = reply_slot
                .filter(|_| header.bulk)
                .and_then(|slots| SlotLease::of(slots, outcomes));
            posting.answered(&head.chunk, head.done, n, outcomes, payload, lease);
            items = &items[bytes..];
            head.done += n;
            self.answered += u64::from(n);
            head.stats.record(per_item);
            self.backlog = self.backlog.saturating_sub(head.estimate * n);
            seq += u64::from(n);
            left -= n;
            if head.done == head.chunk.count {
                self.inflight.pop_front();
                self.written -= 1;
            }
        }
        if !items.is_empty() {
            return Err(ProtocolError::new(
                "reply holds more items than its header says",
            ));
        }
        self.last_reply_at = Some(now);
        Ok(())
    }

    /// When the frame at the head started running, as far as we can tell
    /// (never earlier than it did); `None` if it cannot have started.
    pub(crate) fn head_started(&self) -> Option<Instant> {
        let head = self.inflight.front()?;
        let started = head.written_at?.max(self.ready_at?);
        Some(
            self.last_reply_at
                .map_or(started, |reply| started.max(reply)),
        )
    }

    /// When the head must be answered by: its timeout (the one its chunk
    /// carries, its map's or the pool's) after it started, or, while its
    /// frame is partly written, that long after the worker last took any
    /// of its bytes. `None` if there is nothing to wait for.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        let timeout = self.inflight.front()?.chunk.timeout?;
        let start = match self.head_started() {
            Some(started) => started,
            None if self.written == 0 && self.write_offset > 0 => {
                let progress = self.last_write_at?.max(self.ready_at?);
                self.last_reply_at
                    .map_or(progress, |reply| progress.max(reply))
            }
            None => return None,
        };
        // A timeout too large to add never fires.
        start.checked_add(timeout)
    }

    /// Whether the worker took none of the frame at its head, so that its
    /// inputs cannot have started: every byte written from the head on is
    /// still in the request pipe (`unread`: the bytes the worker has not
    /// read, when known). A worker that took some of it was reading it, and
    /// may have died of it (a frame too large for its memory limit).
    pub(crate) fn head_untouched(&self, unread: Option<u64>) -> bool {
        let Some(head) = self.inflight.front() else {
            return false;
        };
        if head.done > 0 {
            return false;
        }
        let sent = self.sent();
        sent == 0 || unread == Some(sent as u64)
    }

    /// Bytes written from the head on. Frames before the head were
    /// answered, so read in full: the pipe holds nothing but these bytes,
    /// or their end.
    fn sent(&self) -> usize {
        self.inflight
            .iter()
            .take(self.written)
            .map(Inflight::len)
            .sum::<usize>()
            + self.write_offset
    }

    /// The first frame that may be taken back: the one after the head, or
    /// the head itself when `head_too` (a worker that has not said hello
    /// has started nothing).
    fn first_takeable(head_too: bool) -> usize {
        usize::from(!head_too)
    }

    /// Whether reading the `unread` bytes left in the pipe would free a
    /// frame to take back: one that starts where the worker has not read.
    /// (Frames not written at all are taken without reading anything.)
    pub(crate) fn worth_reading_back(&self, unread: usize, head_too: bool) -> bool {
        let sent = self.sent();
        let read = sent.saturating_sub(unread);
        let mut start = 0;
        for (k, inflight) in self.inflight.iter().enumerate() {
            if start >= sent {
                return false;
            }
            if k >= Self::first_takeable(head_too) && start >= read {
                return true;
            }
            start += inflight.len();
        }
        false
    }

    /// The last `n` bytes written are back with the pool (read out of the
    /// pipe before the worker took them): they count as unwritten again, to
    /// be written again, and the frames they belong to as not written in
    /// full.
    pub(crate) fn unwrite(&mut self, n: usize) {
        let mut kept = self
            .sent()
            .checked_sub(n)
            .expect("no more taken back than was written");
        let mut k = 0;
        while k < self.written && kept >= self.inflight[k].len() {
            kept -= self.inflight[k].len();
            k += 1;
        }
        for inflight in self.inflight.iter_mut().skip(k) {
            inflight.written_at = None;
        }
        self.written = k;
        self.write_offset = kept;
    }

    /// Takes out the frames behind the head (from the head on, when
    /// `head_too`) of which no byte is written: the worker never had them.
    /// Returns them in order; the inputs they hold no longer count as
    /// given to this worker.
    pub(crate) fn take_unwritten(&mut self, head_too: bool) -> Vec<TakenBack> {
        let untouched = self.written + usize::from(self.write_offset > 0);
        let from = untouched
            .max(Self::first_takeable(head_too))
            .min(self.inflight.len());
        if let Some(first) = self.inflight.get(from) {
            // They are the last ones: their numbers are given again.
            self.next_seq = first.first_seq;
        }
        self.inflight
            .drain(from..)
            .map(|inflight| {
                debug_assert_eq!(inflight.done, 0, "an answered frame is read");
                self.assigned -= u64::from(inflight.chunk.count);
                self.backlog = self
                    .backlog
                    .saturating_sub(inflight.estimate * inflight.chunk.count);
                TakenBack {
                    chunk: inflight.chunk,
                    prefix: inflight.prefix,
                }
            })
            .collect()
    }

    /// What is left unanswered.
    pub(crate) fn into_unanswered(self) -> Unanswered {
        let mut inflight = self.inflight.into_iter();
        let head = inflight
            .next()
            .and_then(|head| head.chunk.split(head.done).1);
        Unanswered {
            head,
            rest: inflight.map(|inflight| inflight.chunk).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::Delivery;
    use crate::protocol::{Items, RunFrame, push_item};

    const MS: Duration = Duration::from_millis(1);

    fn chunk(map: u64, first_index: usize, count: u32) -> Chunk {
        let mut frame = RunFrame::new(0);
        for k in 0..count {
            frame
                .push_with(|buf| protocol::encode(&(first_index as u32 + k), buf))
                .unwrap();
        }
        Chunk {
            map,
            task: 0,
            context: 0,
            first_index,
            count,
            frame: frame.finish(),
            attempts: 0,
            returns: 0,
            bulk: Vec::new(),
            context_frame: None,
            timeout: Some(100 * MS),
        }
    }

    /// A chunk whose inputs may run for `timeout`.
    fn timed(map: u64, first_index: usize, timeout: Option<Duration>) -> Chunk {
        Chunk {
            timeout,
            ..chunk(map, first_index, 1)
        }
    }

    fn books_with(chunks: &[(u64, usize, u32)], now: Instant) -> Books {
        let mut books = Books::default();
        books.ready(now);
        for &(map, first, count) in chunks {
            books.assign(None, chunk(map, first, count), MS, Arc::default());
        }
        books
    }

    fn frame_len(books: &Books, k: usize) -> usize {
        books.inflight[k].len()
    }

    /// A reply for `count` items from `first_seq` on, each item `[7]`.
    fn reply(first_seq: u64, count: u32) -> (ReplyHeader, Vec<u8>) {
        let mut items = Vec::new();
        for _ in 0..count {
            push_item(&mut items, &[7]);
        }
        let header = ReplyHeader {
            first_seq,
            count,
            busy_nanos: 1000 * u64::from(count),
            bulk: false,
        };
        (header, items)
    }

    fn answer(
        books: &mut Books,
        first_seq: u64,
        count: u32,
        now: Instant,
    ) -> Result<Posting, ProtocolError> {
        let (header, items) = reply(first_seq, count);
        let mut posting = Posting::default();
        books.answer(header, &items, None, None, now, &mut posting)?;
        Ok(posting)
    }

    #[test]
    fn sequence_numbers_count_inputs_and_are_stamped() {
        let books = books_with(&[(0, 0, 3), (0, 3, 2)], Instant::now());
        let seqs: Vec<u64> = books.inflight.iter().map(|i| i.first_seq).collect();
        assert_eq!(seqs, [0, 3]);
        for inflight in &books.inflight {
            let (header, _) =
                RunHeader::parse(&inflight.chunk.frame[protocol::LEN_BYTES..]).unwrap();
            assert_eq!(header.first_seq, inflight.first_seq);
        }
        assert_eq!((books.assigned(), books.frames()), (5, 2));
        assert_eq!(books.backlog(), 5 * MS);
    }

    #[test]
    fn partial_writes_are_booked_and_stamped_when_complete() {
        let t0 = Instant::now();
        let mut books = books_with(&[(0, 0, 1), (0, 1, 1)], t0);
        let first = frame_len(&books, 0);
        assert_eq!(books.unwritten().len(), 2);
        books.wrote(first - 1, t0 + MS);
        assert_eq!(books.inflight[0].written_at, None);
        assert_eq!(books.unwritten()[0].len(), 1);
        books.wrote(1 + 2, t0 + 2 * MS);
        assert_eq!(books.inflight[0].written_at, Some(t0 + 2 * MS));
        assert_eq!((books.written, books.write_offset), (1, 2));
        assert!(!books.all_written());
        let rest = books.unwritten()[0].len();
        books.wrote(rest, t0 + 3 * MS);
        assert!(books.all_written() && books.unwritten().is_empty());
        assert_eq!(books.inflight[1].written_at, Some(t0 + 3 * MS));
    }

    #[test]
    fn a_sequence_number_names_its_input() {
        let mut books = Books::default();
        books.assign(None, chunk(0, 10, 3), Duration::ZERO, Arc::default());
        books.assign(None, chunk(0, 40, 2), Duration::ZERO, Arc::default());
        let found: Vec<Option<usize>> = (0..6).map(|seq| books.index_of(seq)).collect();
        assert_eq!(
            found,
            [Some(10), Some(11), Some(12), Some(40), Some(41), None]
        );
    }

    #[test]
    fn a_prefix_goes_out_before_its_frame_and_counts_with_it() {
        let t0 = Instant::now();
        let mut books = Books::default();
        books.ready(t0);
        let prefix = Arc::new(vec![9u8; 10]);
        books.assign(
            Some(Arc::clone(&prefix)),
            chunk(0, 0, 1),
            MS,
            Arc::default(),
        );
        let frame = books.inflight[0].chunk.frame.len();
        assert_eq!(frame_len(&books, 0), 10 + frame);
        let lens: Vec<usize> = books.unwritten().iter().map(|s| s.len()).collect();
        assert_eq!(lens, [10, frame]);
        books.wrote(4, t0);
        let lens: Vec<usize> = books.unwritten().iter().map(|s| s.len()).collect();
        assert_eq!(lens, [6, frame]);
        books.wrote(8, t0);
        let lens: Vec<usize> = books.unwritten().iter().map(|s| s.len()).collect();
        assert_eq!(lens, [frame - 2]);
        // Nothing of it taken by the worker: still untouched.
        assert!(books.head_untouched(Some(12)));
        assert!(!books.head_untouched(Some(11)));
        books.wrote(frame - 2, t0 + MS);
        assert_eq!(books.head_started(), Some(t0 + MS));
    }

    #[test]
    fn the_clock_starts_at_the_latest_of_write_handshake_and_last_reply() {
        let t0 = Instant::now();
        let mut books = Books::default();
        books.assign(None, chunk(0, 0, 1), MS, Arc::default());
        books.assign(None, chunk(0, 1, 1), MS, Arc::default());
        books.assign(None, timed(0, 2, None), MS, Arc::default());
        let all: usize = (0..3).map(|k| frame_len(&books, k)).sum();
        // Written before the worker was ready: nothing runs yet.
        books.wrote(all, t0 + MS);
        assert_eq!(books.deadline(), None);
        books.ready(t0 + 5 * MS);
        assert_eq!(books.deadline(), Some(t0 + 105 * MS));
        // The second input starts when the first is answered, not when
        // it was written: queued time does not count.
        answer(&mut books, 0, 1, t0 + 50 * MS).unwrap();
        assert_eq!(books.head_started(), Some(t0 + 50 * MS));
        assert_eq!(books.deadline(), Some(t0 + 150 * MS));
        // An input without a timeout has no deadline.
        answer(&mut books, 1, 1, t0 + 60 * MS).unwrap();
        assert_eq!(books.deadline(), None);
    }

    #[test]
    fn each_frame_runs_against_its_own_timeout() {
        // Frames of maps with different timeouts, one after the other on
        // one worker: the head's own timeout sets the deadline.
        let t0 = Instant::now();
        let mut books = books_with(&[], t0);
        books.assign(None, timed(0, 0, Some(10 * MS)), MS, Arc::default());
        books.assign(None, timed(1, 0, Some(1000 * MS)), MS, Arc::default());
        books.assign(None, timed(0, 1, Some(10 * MS)), MS, Arc::default());
        let all: usize = (0..3).map(|k| frame_len(&books, k)).sum();
        books.wrote(all, t0);
        assert_eq!(books.deadline(), Some(t0 + 10 * MS));
        answer(&mut books, 0, 1, t0 + 5 * MS).unwrap();
        assert_eq!(books.deadline(), Some(t0 + 1005 * MS));
        answer(&mut books, 1, 1, t0 + 500 * MS).unwrap();
        assert_eq!(books.deadline(), Some(t0 + 510 * MS));
    }

    #[test]
    fn a_stamp_read_after_the_write_starts_the_clock() {
        // The pool reads the clock after `writev` returns and books the
        // write with it: the clock of a frame starts no earlier than its
        // last byte went out, however long the write took.
        let t0 = Instant::now();
        let mut books = books_with(&[(0, 0, 1)], t0);
        let before_write = t0 + MS;
        let after_write = t0 + 30 * MS;
        books.wrote(frame_len(&books, 0), after_write);
        assert_eq!(books.head_started(), Some(after_write));
        assert!(books.head_started() > Some(before_write));
    }

    #[test]
    fn a_partly_written_head_times_out_when_the_worker_stops_reading() {
        let t0 = Instant::now();
        let mut books = books_with(&[(0, 0, 1)], t0);
        assert_eq!(books.deadline(), None, "nothing written yet");
        books.wrote(10, t0 + 2 * MS);
        assert_eq!(books.head_started(), None);
        assert_eq!(books.deadline(), Some(t0 + 102 * MS));
        // Progress pushes the deadline back.
        books.wrote(10, t0 + 60 * MS);
        assert_eq!(books.deadline(), Some(t0 + 160 * MS));
        // Once it is answered, a next frame not written yet has no deadline,
        // whatever was written before it.
        let rest = frame_len(&books, 0) - 20;
        books.wrote(rest, t0 + 70 * MS);
        answer(&mut books, 0, 1, t0 + 80 * MS).unwrap();
        books.assign(None, chunk(0, 1, 1), MS, Arc::default());
        assert_eq!(books.deadline(), None);
    }

    #[test]
    fn replies_hand_outcomes_to_their_maps() {
        let t0 = Instant::now();
        let mut books = books_with(&[(4, 10, 3), (5, 0, 1)], t0);
        let all: usize = (0..2).map(|k| frame_len(&books, k)).sum();
        books.wrote(all, t0);
        // Two of the first frame's three, then the rest with the next frame.
        let posting = answer(&mut books, 0, 2, t0 + MS).unwrap();
        assert_eq!(posting.len(), 1);
        assert_eq!(books.inflight[0].done, 2);
        assert_eq!(books.backlog(), 2 * MS);
        let posting = answer(&mut books, 2, 2, t0 + 2 * MS).unwrap();
        let got: Vec<(u64, usize, u32, usize)> = posting
            .deliveries()
            .iter()
            .map(|(map, delivery)| match delivery {
                Delivery::Outcomes {
                    first_index,
                    count,
                    items,
                    ..
                } => (
                    *map,
                    *first_index,
                    *count,
                    Items::new(items.as_slice()).count(),
                ),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(got, [(4, 12, 1, 1), (5, 0, 1, 1)]);
        assert_eq!((books.frames(), books.written), (0, 0));
        assert_eq!(books.backlog(), Duration::ZERO);
        assert_eq!(books.last_reply_at, Some(t0 + 2 * MS));
    }

    #[test]
    fn replies_measure_the_run_time_of_one_input() {
        let t0 = Instant::now();
        let stats = Arc::new(MapStats::default());
        let mut books = Books::default();
        books.ready(t0);
        books.assign(None, chunk(0, 0, 4), MS, Arc::clone(&stats));
        let len = frame_len(&books, 0);
        books.wrote(len, t0);
        // 4 inputs in 4 us of work, by the worker's clock.
        answer(&mut books, 0, 4, t0).unwrap();
        assert_eq!(stats.per_item(), Some(Duration::from_micros(1)));
    }

    #[test]
    fn replies_in_a_buffer_of_their_own_are_not_copied() {
        let t0 = Instant::now();
        let mut books = books_with(&[(0, 0, 1), (1, 0, 1)], t0);
        let all = frame_len(&books, 0) + frame_len(&books, 1);
        books.wrote(all, t0);
        let mut items = Vec::new();
        push_item(&mut items, b"first");
        push_item(&mut items, b"second!");
        let mut buffer = b"header..".to_vec();
        let at = buffer.len();
        buffer.extend_from_slice(&items);
        let buffer = Arc::new(buffer);
        let header = ReplyHeader {
            first_seq: 0,
            count: 2,
            busy_nanos: 2,
            bulk: false,
        };
        let mut posting = Posting::default();
        books
            .answer(header, &items, Some((&buffer, at)), None, t0, &mut posting)
            .unwrap();
        let got: Vec<Vec<u8>> = posting
            .deliveries()
            .iter()
            .map(|(_, delivery)| match delivery {
                Delivery::Outcomes {
                    items: payload @ Payload::Shared(..),
                    ..
                } => Items::new(payload.as_slice())
                    .next()
                    .unwrap()
                    .unwrap()
                    .to_vec(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(got, [b"first".to_vec(), b"second!".to_vec()]);
    }

    #[test]
    fn replies_that_do_not_fit_are_protocol_errors() {
        let t0 = Instant::now();
        let mut books = books_with(&[(0, 0, 2)], t0);
        let error = answer(&mut books, 0, 1, t0).map(|_| ()).unwrap_err();
        assert_eq!(error.0, "reply for item 0, whose frame is not written yet");
        let len = frame_len(&books, 0);
        books.wrote(len, t0);
        let error = answer(&mut books, 1, 1, t0).map(|_| ()).unwrap_err();
        assert_eq!(error.0, "reply for item 1, expected 0");
        let error = answer(&mut books, 0, 3, t0).map(|_| ()).unwrap_err();
        assert_eq!(error.0, "reply for item 2, which was never sent");
        let mut books = books_with(&[(0, 0, 1)], t0);
        let len = frame_len(&books, 0);
        books.wrote(len, t0);
        let (header, mut items) = reply(0, 1);
        push_item(&mut items, &[8]);
        let error = books
            .answer(header, &items, None, None, t0, &mut Posting::default())
            .unwrap_err();
        assert_eq!(error.0, "reply holds more items than its header says");
        let mut books = books_with(&[(0, 0, 1)], t0);
        books.wrote(len, t0);
        let (header, items) = reply(0, 1);
        let error = books
            .answer(header, &items[..2], None, None, t0, &mut Posting::default())
            .unwrap_err();
        assert_eq!(error.0, "truncated item length");
    }

    #[test]
    fn a_head_the_worker_took_nothing_of_is_untouched() {
        let t0 = Instant::now();
        let mut books = books_with(&[(0, 0, 1), (0, 1, 1)], t0);
        let (first, second) = (frame_len(&books, 0), frame_len(&books, 1));
        assert!(
            !Books::default().head_untouched(Some(0)),
            "nothing in flight"
        );
        assert!(books.head_untouched(None), "nothing written yet");
        // Partly written, all of it in the pipe.
        books.wrote(first - 1, t0);
        assert!(books.head_untouched(Some((first - 1) as u64)));
        assert!(
            !books.head_untouched(Some((first - 2) as u64)),
            "it took a byte"
        );
        assert!(
            !books.head_untouched(None),
            "unknown: it may have read some"
        );
        // Written in full, and a few bytes of the next one.
        books.wrote(1 + 5, t0);
        assert!(books.head_untouched(Some((first + 5) as u64)));
        assert!(!books.head_untouched(Some((first + 4) as u64)));
        assert!(
            !books.head_untouched(Some(5)),
            "only the next frame is left"
        );
        books.wrote(second - 5, t0);
        assert!(books.head_untouched(Some((first + second) as u64)));
        assert!(!books.head_untouched(Some(second as u64)));
        // Partly answered: it was read.
        let mut books = books_with(&[(0, 0, 2)], t0);
        let len = frame_len(&books, 0);
        books.wrote(len, t0);
        answer(&mut books, 0, 1, t0).unwrap();
        assert!(!books.head_untouched(Some(len as u64)));
    }

    /// Writes what the books have unwritten into `pipe`, as `writev` would,
    /// at most `room` bytes.
    fn write_into(books: &mut Books, pipe: &mut Vec<u8>, room: usize) {
        let mut n = 0;
        for slice in books.unwritten() {
            let take = slice.len().min(room - n);
            pipe.extend_from_slice(&slice[..take]);
            n += take;
        }
        books.wrote(n, Instant::now());
    }

    /// The bytes of frames `k..` of `books`, prefixes included.
    fn stream(books: &Books, k: usize) -> Vec<u8> {
        books
            .inflight
            .iter()
            .skip(k)
            .flat_map(|inflight| {
                let prefix = inflight.prefix.as_deref().map_or(&[][..], |p| &p[..]);
                prefix.iter().chain(&inflight.chunk.frame).copied()
            })
            .collect()
    }

    #[test]
    fn frames_the_worker_did_not_read_are_taken_back_and_the_rest_written_again() {
        let t0 = Instant::now();
        let mut books = books_with(&[(0, 0, 2), (0, 2, 2), (0, 4, 2), (0, 6, 2)], t0);
        let prefix = Arc::new(vec![9u8; 5]);
        books.assign(
            Some(Arc::clone(&prefix)),
            chunk(1, 0, 1),
            MS,
            Arc::default(),
        );
        let lens: Vec<usize> = (0..5).map(|k| frame_len(&books, k)).collect();
        let whole = stream(&books, 0);
        // Three frames and a half go into the pipe; the worker reads the
        // first frame and a few bytes of the second.
        let mut pipe = Vec::new();
        write_into(&mut books, &mut pipe, lens[..3].iter().sum::<usize>() + 7);
        let mut worker: Vec<u8> = pipe.drain(..lens[0] + 3).collect();
        assert!(books.worth_reading_back(pipe.len(), false));
        // The pool reads the rest back.
        books.unwrite(pipe.len());
        assert_eq!((books.written, books.write_offset), (1, 3));
        assert!(
            books
                .inflight
                .iter()
                .skip(1)
                .all(|i| i.written_at.is_none())
        );
        assert!(books.inflight[0].written_at.is_some());
        let taken = books.take_unwritten(false);
        let placed: Vec<(u64, usize, u32)> = taken
            .iter()
            .map(|t| (t.chunk.map, t.chunk.first_index, t.chunk.count))
            .collect();
        assert_eq!(placed, [(0, 4, 2), (0, 6, 2), (1, 0, 1)]);
        assert!(Arc::ptr_eq(taken[2].prefix.as_ref().unwrap(), &prefix));
        assert_eq!(
            (books.frames(), books.assigned(), books.backlog()),
            (2, 4, 4 * MS)
        );
        // What it gets now continues what it read, byte for byte.
        write_into(&mut books, &mut worker, usize::MAX);
        assert_eq!(worker, whole[..lens[0] + lens[1]]);
        assert!(books.all_written());
        // Numbers are given again from the first frame taken back.
        books.assign(None, chunk(2, 0, 1), MS, Arc::default());
        assert_eq!(books.inflight[2].first_seq, 4);
    }

    #[test]
    fn a_frame_the_worker_began_reading_stays_with_it() {
        let t0 = Instant::now();
        let mut books = books_with(&[(0, 0, 1), (0, 1, 1), (0, 2, 1)], t0);
        let lens: Vec<usize> = (0..3).map(|k| frame_len(&books, k)).collect();
        let mut pipe = Vec::new();
        write_into(&mut books, &mut pipe, usize::MAX);
        // It read up to the middle of the last frame: nothing to gain.
        let read = lens[0] + lens[1] + 1;
        let unread = pipe.len() - read;
        assert!(!books.worth_reading_back(unread, false));
        // At the very start of the last frame, that frame is free.
        assert!(books.worth_reading_back(unread + 1, false));
        books.unwrite(unread + 1);
        let taken = books.take_unwritten(false);
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].chunk.first_index, 2);
        assert!(books.all_written(), "the rest was read");
        // The head is never taken from a worker that said hello, even
        // untouched...
        let mut books = books_with(&[(0, 0, 1), (0, 1, 1)], t0);
        write_into(&mut books, &mut pipe, usize::MAX);
        let all = lens[0] + lens[1];
        assert!(books.worth_reading_back(all, false));
        assert!(!books.worth_reading_back(lens[1] - 1, false));
        books.unwrite(all);
        assert_eq!(books.take_unwritten(false).len(), 1);
        assert_eq!((books.frames(), books.written), (1, 0));
        // ...but from one that did not, it is: it started nothing.
        let mut books = Books::default();
        books.assign(None, chunk(0, 0, 1), MS, Arc::default());
        books.assign(None, chunk(0, 1, 1), MS, Arc::default());
        write_into(&mut books, &mut pipe, lens[0]);
        assert!(books.worth_reading_back(lens[0], true));
        assert!(!books.worth_reading_back(lens[0] - 1, true));
        books.unwrite(lens[0]);
        let taken = books.take_unwritten(true);
        assert_eq!(taken.len(), 2);
        assert_eq!(
            (books.frames(), books.assigned(), books.next_seq),
            (0, 0, 0)
        );
    }

    #[test]
    fn frames_never_written_are_taken_without_reading() {
        let t0 = Instant::now();
        let mut books = books_with(&[(0, 0, 1), (0, 1, 1), (0, 2, 1)], t0);
        let first = frame_len(&books, 0);
        let mut pipe = Vec::new();
        write_into(&mut books, &mut pipe, first);
        // Nothing in the pipe (the worker read it all): not worth a read,
        // but the frames never written go.
        assert!(!books.worth_reading_back(0, false));
        let taken = books.take_unwritten(false);
        assert_eq!(taken.len(), 2);
        assert_eq!(books.frames(), 1);
        // A head partly written and not taken by the worker keeps its
        // place, and the write goes on where it was.
        let mut books = books_with(&[(0, 0, 1), (0, 1, 1)], t0);
        let mut pipe = Vec::new();
        write_into(&mut books, &mut pipe, 4);
        books.unwrite(4);
        assert_eq!((books.written, books.write_offset), (0, 0));
        assert_eq!(books.take_unwritten(false).len(), 1);
        let mut again = Vec::new();
        write_into(&mut books, &mut again, usize::MAX);
        assert_eq!(again, stream(&books, 0));
    }

    #[test]
    fn answers_are_counted() {
        let t0 = Instant::now();
        let mut books = books_with(&[(0, 0, 3)], t0);
        let len = frame_len(&books, 0);
        books.wrote(len, t0);
        assert_eq!(books.answered(), 0);
        answer(&mut books, 0, 2, t0).unwrap();
        assert_eq!(books.answered(), 2);
    }

    #[test]
    fn what_is_left_unanswered_goes_back_whole() {
        let t0 = Instant::now();
        let mut books = books_with(&[(0, 0, 3), (1, 0, 2)], t0);
        let all: usize = (0..2).map(|k| frame_len(&books, k)).sum();
        books.wrote(all, t0);
        answer(&mut books, 0, 1, t0).unwrap();
        let left = books.into_unanswered();
        let head = left.head.as_ref().unwrap();
        assert_eq!((head.map, head.first_index, head.count), (0, 1, 2));
        let rest: Vec<(u64, usize, u32)> = left
            .rest
            .iter()
            .map(|c| (c.map, c.first_index, c.count))
            .collect();
        assert_eq!(rest, [(1, 0, 2)]);
        assert_eq!(left.into_chunks().count(), 2);
    }
}
