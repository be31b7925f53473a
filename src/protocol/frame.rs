//! The layout of frames: kinds, fixed headers with named offsets, and the
//! one writer of length-prefixed items.

use serde::{Deserialize, Serialize};

use super::ProtocolError;
use crate::error::BoxError;

pub(crate) const HELLO: u8 = 1;
pub(crate) const RUN: u8 = 2;
pub(crate) const REPLY: u8 = 3;
pub(crate) const FATAL: u8 = 4;
pub(crate) const CONTEXT: u8 = 5;
pub(crate) const FORGET: u8 = 6;
pub(crate) const LOG: u8 = 7;
pub(crate) const RETIRE: u8 = 8;
pub(crate) const PANIC: u8 = 9;
/// The whole RETIRE frame: it has no body.
pub(crate) const RETIRE_FRAME: [u8; 5] = [1, 0, 0, 0, RETIRE];
pub(crate) const RETIRED: u8 = 10;
/// The whole RETIRED frame: it has no body.
pub(crate) const RETIRED_FRAME: [u8; 5] = [1, 0, 0, 0, RETIRED];
/// A CONTEXT frame whose value is beside it, in shared memory: after the
/// id comes where (written and read by `bulk`).
pub(crate) const CONTEXT_BESIDE: u8 = 11;

/// Length prefix of a frame.
pub(crate) const LEN_BYTES: usize = 4;
/// Length prefix of an item.
pub(crate) const ITEM_LEN_BYTES: usize = 4;
/// Where a frame's kind byte is, in the frame (after its length prefix).
const KIND_AT: usize = LEN_BYTES;

/// What a worker announces before anything else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Hello {
    pub version: u32,
    /// The worker's pid where it runs: what a launcher needs to kill it
    /// when the local process is not the worker itself.
    pub pid: u32,
    /// Number of registered tasks the worker sees.
    pub tasks: u32,
    /// Digest of the registered task names, in registry order.
    pub digest: u64,
    /// The Slurm job step it runs as (`JOB.STEP`), if it does.
    #[serde(default)]
    pub step: Option<String>,
    /// The sandbox rules in force (see `crate::sandbox::Rules`).
    #[serde(default)]
    pub sandbox: u8,
    /// Why a rule it was asked for did not come up, if one did not.
    #[serde(default)]
    pub sandbox_problem: Option<String>,
    /// Why it cannot serve under the pool's settings (a memory limit below
    /// what it needs to start), if it cannot: it exits after saying so.
    #[serde(default)]
    pub refused: Option<String>,
}

fn put_u32(buf: &mut [u8], at: usize, value: u32) {
    buf[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

fn put_u64(buf: &mut [u8], at: usize, value: u64) {
    buf[at..at + 8].copy_from_slice(&value.to_le_bytes());
}

pub(super) fn get_u32(buf: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(buf[at..at + 4].try_into().expect("4 bytes"))
}

fn get_u64(buf: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(buf[at..at + 8].try_into().expect("8 bytes"))
}

/// Appends a whole frame of `kind` with `body`.
pub(crate) fn push_frame(out: &mut Vec<u8>, kind: u8, body: &[u8]) {
    let len = u32::try_from(body.len() + 1).expect("frame body under 4 GiB");
    out.extend_from_slice(&len.to_le_bytes());
    out.push(kind);
    out.extend_from_slice(body);
}

/// Writes the length prefix of the frame that starts at `at` in `buf` and
/// runs to its end.
fn seal_frame(buf: &mut [u8], at: usize) {
    let len = u32::try_from(buf.len() - at - LEN_BYTES).expect("frame under 4 GiB");
    put_u32(buf, at, len);
}

/// The header of a RUN frame. Offsets are from the start of the frame
/// (its length prefix).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RunHeader {
    pub task: u32,
    /// The context its items read, 0 for none.
    pub context: u64,
    pub first_seq: u64,
    pub count: u32,
}

impl RunHeader {
    const TASK_AT: usize = KIND_AT + 1;
    const CONTEXT_AT: usize = Self::TASK_AT + 4;
    const FIRST_SEQ_AT: usize = Self::CONTEXT_AT + 8;
    const COUNT_AT: usize = Self::FIRST_SEQ_AT + 8;
    /// Bytes from the start of a RUN frame to its first item.
    pub(crate) const SIZE: usize = Self::COUNT_AT + 4;

    /// Stamps the first sequence number into a finished RUN frame: the pool
    /// does it when it hands the frame to a worker.
    pub(crate) fn stamp_first_seq(frame: &mut [u8], first_seq: u64) {
        put_u64(frame, Self::FIRST_SEQ_AT, first_seq);
    }

    /// The header and the items of a RUN frame's body (the frame minus its
    /// length prefix, as the readers return it).
    pub(crate) fn parse(body: &[u8]) -> Result<(RunHeader, &[u8]), ProtocolError> {
        let at = |offset: usize| offset - LEN_BYTES;
        if body.len() < at(Self::SIZE) {
            return Err(ProtocolError::new("truncated run header"));
        }
        let header = RunHeader {
            task: get_u32(body, at(Self::TASK_AT)),
            context: get_u64(body, at(Self::CONTEXT_AT)),
            first_seq: get_u64(body, at(Self::FIRST_SEQ_AT)),
            count: get_u32(body, at(Self::COUNT_AT)),
        };
        Ok((header, &body[at(Self::SIZE)..]))
    }
}

/// The header of a REPLY frame. Offsets are from the start of the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ReplyHeader {
    pub first_seq: u64,
    pub count: u32,
    /// Time the worker spent running these items, measured by the worker:
    /// the pool learns run times from it (arrival times would mislead when
    /// several replies arrive at once).
    pub busy_nanos: u64,
    /// Whether an item has long strings in the worker's reply slots (see
    /// `bulk`): only then does the pool look for them.
    pub bulk: bool,
}

impl ReplyHeader {
    const FIRST_SEQ_AT: usize = KIND_AT + 1;
    const COUNT_AT: usize = Self::FIRST_SEQ_AT + 8;
    const BUSY_AT: usize = Self::COUNT_AT + 4;
    const FLAGS_AT: usize = Self::BUSY_AT + 8;
    /// Bytes from the start of a REPLY frame to its first item.
    pub(crate) const SIZE: usize = Self::FLAGS_AT + 1;
    const BULK: u8 = 1;

    /// Writes this header into the REPLY frame that starts at `at` in
    /// `buf` (room reserved), for the items that follow it to the end of
    /// `buf`.
    pub(crate) fn write(&self, buf: &mut [u8], at: usize) {
        seal_frame(buf, at);
        buf[at + KIND_AT] = REPLY;
        put_u64(buf, at + Self::FIRST_SEQ_AT, self.first_seq);
        put_u32(buf, at + Self::COUNT_AT, self.count);
        put_u64(buf, at + Self::BUSY_AT, self.busy_nanos);
        buf[at + Self::FLAGS_AT] = if self.bulk { Self::BULK } else { 0 };
    }

    /// The header and the items of a REPLY frame's body. A reply answers
    /// at least one item: one that answers none could only serve to reset
    /// the pool's clock.
    pub(crate) fn parse(body: &[u8]) -> Result<(ReplyHeader, &[u8]), ProtocolError> {
        let at = |offset: usize| offset - LEN_BYTES;
        if body.len() < at(Self::SIZE) {
            return Err(ProtocolError::new("truncated reply header"));
        }
        let header = ReplyHeader {
            first_seq: get_u64(body, at(Self::FIRST_SEQ_AT)),
            count: get_u32(body, at(Self::COUNT_AT)),
            busy_nanos: get_u64(body, at(Self::BUSY_AT)),
            bulk: body[at(Self::FLAGS_AT)] & Self::BULK != 0,
        };
        if header.count == 0 {
            return Err(ProtocolError::new("a reply that answers no input"));
        }
        Ok((header, &body[at(Self::SIZE)..]))
    }
}

/// Starts an item at the end of `buf`: reserves its length prefix and
/// returns where the item starts, for [`end_item`]. This pair is the one
/// writer of length-prefixed items: the caller appends the item's bytes in
/// between, straight into the frame.
pub(crate) fn begin_item(buf: &mut Vec<u8>) -> usize {
    let start = buf.len();
    buf.extend_from_slice(&[0; ITEM_LEN_BYTES]);
    start
}

/// Ends the item begun at `start`: writes its length prefix and returns
/// the item's size with its prefix. An item over 4 GiB is removed and
/// refused.
pub(crate) fn end_item(buf: &mut Vec<u8>, start: usize) -> Result<usize, ProtocolError> {
    let len = buf.len() - start - ITEM_LEN_BYTES;
    let Ok(len32) = u32::try_from(len) else {
        buf.truncate(start);
        return Err(ProtocolError::new("item is larger than 4 GiB"));
    };
    put_u32(buf, start, len32);
    Ok(len + ITEM_LEN_BYTES)
}

/// Appends one length-prefixed item.
pub(crate) fn push_item(buf: &mut Vec<u8>, item: &[u8]) {
    let start = begin_item(buf);
    buf.extend_from_slice(item);
    end_item(buf, start).expect("item under 4 GiB");
}

/// First byte of an input item whose long strings travel beside it, a
/// table of where they go back in before its CBOR (written and read by
/// `bulk`): never the first byte of a CBOR value (it is the "break" code).
pub(crate) const INPUT_MARK: u8 = 0xFF;

/// Builds a RUN frame item by item. The sequence number is stamped later,
/// by whoever sends the frame to a worker ([`RunHeader::stamp_first_seq`]).
#[derive(Debug)]
pub(crate) struct RunFrame {
    buf: Vec<u8>,
    count: u32,
}

impl RunFrame {
    #[cfg(test)]
    pub(crate) fn new(task: u32) -> RunFrame {
        RunFrame::with_capacity(task, 0, 0)
    }

    /// A frame for `task` reading `context` (0 for none), with room for
    /// `bytes` of items without reallocating.
    pub(crate) fn with_capacity(task: u32, context: u64, bytes: usize) -> RunFrame {
        let mut buf = Vec::with_capacity(RunHeader::SIZE + bytes);
        buf.resize(RunHeader::SIZE, 0);
        buf[KIND_AT] = RUN;
        put_u32(&mut buf, RunHeader::TASK_AT, task);
        put_u64(&mut buf, RunHeader::CONTEXT_AT, context);
        RunFrame { buf, count: 0 }
    }

    pub(crate) fn count(&self) -> u32 {
        self.count
    }

    /// Size of the frame so far, in bytes.
    pub(crate) fn len(&self) -> usize {
        self.buf.len()
    }

    /// Appends the plain CBOR value of one input. Returns the item's size
    /// in the frame, for [`RunFrame::pop`].
    pub(crate) fn push_input<T: Serialize + ?Sized>(
        &mut self,
        value: &T,
    ) -> Result<usize, BoxError> {
        self.push_with(|buf| super::encode(value, buf))
    }

    /// Appends one item written by `write`. On error nothing is appended.
    /// Returns the item's size with its prefix, for [`RunFrame::pop`].
    pub(crate) fn push_with<E: From<ProtocolError>>(
        &mut self,
        write: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
    ) -> Result<usize, E> {
        let start = begin_item(&mut self.buf);
        if let Err(e) = write(&mut self.buf) {
            self.buf.truncate(start);
            return Err(e);
        }
        let bytes = end_item(&mut self.buf, start)?;
        self.count += 1;
        Ok(bytes)
    }

    /// The last item, of `bytes` bytes with its prefix as returned by
    /// `push_with`, without its prefix.
    pub(crate) fn last_item(&self, bytes: usize) -> &[u8] {
        &self.buf[self.buf.len() - bytes + ITEM_LEN_BYTES..]
    }

    /// Removes the last item, of `bytes` bytes as returned by `push_with`.
    pub(crate) fn pop(&mut self, bytes: usize) {
        self.buf.truncate(self.buf.len() - bytes);
        self.count -= 1;
    }

    /// A frame for `count` items already laid out as an item section.
    pub(crate) fn from_items(task: u32, context: u64, count: u32, items: &[u8]) -> Vec<u8> {
        let mut frame = RunFrame::with_capacity(task, context, items.len());
        frame.buf.extend_from_slice(items);
        frame.count = count;
        frame.finish()
    }

    pub(crate) fn finish(mut self) -> Vec<u8> {
        seal_frame(&mut self.buf, 0);
        put_u32(&mut self.buf, RunHeader::COUNT_AT, self.count);
        self.buf
    }
}

/// Where a CONTEXT or FORGET frame's context id is, in the frame.
const CONTEXT_ID_AT: usize = KIND_AT + 1;
/// Bytes from the start of a CONTEXT frame to its value.
const CONTEXT_HEADER: usize = CONTEXT_ID_AT + 8;

/// A CONTEXT frame: context `id`, whose CBOR value `write` appends.
pub(crate) fn context_frame<E>(
    id: u64,
    write: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
) -> Result<Vec<u8>, E> {
    let mut frame = vec![0; CONTEXT_HEADER];
    frame[KIND_AT] = CONTEXT;
    put_u64(&mut frame, CONTEXT_ID_AT, id);
    write(&mut frame)?;
    seal_frame(&mut frame, 0);
    Ok(frame)
}

/// A CONTEXT_BESIDE frame: context `id`, whose value is where `place`
/// says (`bulk` writes and reads it).
pub(crate) fn context_beside_frame(id: u64, place: &[u8]) -> Vec<u8> {
    let mut frame = vec![0; CONTEXT_HEADER];
    frame[KIND_AT] = CONTEXT_BESIDE;
    put_u64(&mut frame, CONTEXT_ID_AT, id);
    frame.extend_from_slice(place);
    seal_frame(&mut frame, 0);
    frame
}

/// Whether a frame of `kind` brings a context (inline or beside).
pub(crate) fn brings_context(kind: u8) -> bool {
    kind == CONTEXT || kind == CONTEXT_BESIDE
}

/// A FORGET frame: the worker may drop context `id`.
pub(crate) fn forget_frame(id: u64) -> Vec<u8> {
    let mut frame = vec![0; CONTEXT_HEADER];
    frame[KIND_AT] = FORGET;
    put_u64(&mut frame, CONTEXT_ID_AT, id);
    seal_frame(&mut frame, 0);
    frame
}

/// The context id of a CONTEXT, CONTEXT_BESIDE or FORGET frame's body,
/// and what follows it (the CBOR value of a CONTEXT frame, where the value
/// of a CONTEXT_BESIDE frame is).
pub(crate) fn parse_context(body: &[u8]) -> Result<(u64, &[u8]), ProtocolError> {
    let at = |offset: usize| offset - LEN_BYTES;
    if body.len() < at(CONTEXT_HEADER) {
        return Err(ProtocolError::new("truncated context header"));
    }
    let id = get_u64(body, at(CONTEXT_ID_AT));
    if id == 0 {
        return Err(ProtocolError::new("context 0 is none"));
    }
    Ok((id, &body[at(CONTEXT_HEADER)..]))
}

/// Where a PANIC or LOG frame's sequence number is, in the frame.
const SEQ_AT: usize = KIND_AT + 1;
/// Bytes from the start of a PANIC or LOG frame to its CBOR.
const SEQ_HEADER: usize = SEQ_AT + 8;

/// A PANIC frame: item `seq` panicked, as the CBOR report `write` appends
/// says (without its backtrace, which is being made).
pub(crate) fn panic_frame<E>(
    seq: u64,
    write: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
) -> Result<Vec<u8>, E> {
    seq_frame(PANIC, seq, write)
}

/// The item and the CBOR report of a PANIC frame's body.
pub(crate) fn parse_panic(body: &[u8]) -> Result<(u64, &[u8]), ProtocolError> {
    parse_seq(body, "truncated panic header")
}

/// A LOG frame: an event that came while item `seq` ran (if one did), as
/// the CBOR record `write` appends. The item is outside the record, so
/// that the pool's thread can name the input without decoding it.
pub(crate) fn log_frame<E>(
    seq: Option<u64>,
    write: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
) -> Result<Vec<u8>, E> {
    seq_frame(LOG, seq.unwrap_or(NO_SEQ), write)
}

/// The item (if any) and the CBOR record of a LOG frame's body.
pub(crate) fn parse_log(body: &[u8]) -> Result<(Option<u64>, &[u8]), ProtocolError> {
    let (seq, record) = parse_seq(body, "truncated log header")?;
    Ok(((seq != NO_SEQ).then_some(seq), record))
}

/// A LOG frame's item when none ran.
const NO_SEQ: u64 = u64::MAX;

fn seq_frame<E>(
    kind: u8,
    seq: u64,
    write: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
) -> Result<Vec<u8>, E> {
    let mut frame = vec![0; SEQ_HEADER];
    frame[KIND_AT] = kind;
    put_u64(&mut frame, SEQ_AT, seq);
    write(&mut frame)?;
    seal_frame(&mut frame, 0);
    Ok(frame)
}

fn parse_seq<'a>(body: &'a [u8], truncated: &str) -> Result<(u64, &'a [u8]), ProtocolError> {
    let at = |offset: usize| offset - LEN_BYTES;
    if body.len() < at(SEQ_HEADER) {
        return Err(ProtocolError::new(truncated));
    }
    Ok((get_u64(body, at(SEQ_AT)), &body[at(SEQ_HEADER)..]))
}

/// The item section of a finished RUN frame.
pub(crate) fn run_items(frame: &[u8]) -> &[u8] {
    &frame[RunHeader::SIZE..]
}

/// Iterates over the items of an item section, checking every length.
pub(crate) struct Items<'a> {
    rest: &'a [u8],
}

impl<'a> Items<'a> {
    pub(crate) fn new(section: &'a [u8]) -> Items<'a> {
        Items { rest: section }
    }
}

impl<'a> Iterator for Items<'a> {
    type Item = Result<&'a [u8], ProtocolError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        if self.rest.len() < ITEM_LEN_BYTES {
            self.rest = &[];
            return Some(Err(ProtocolError::new("truncated item length")));
        }
        let len = get_u32(self.rest, 0) as usize;
        let end = ITEM_LEN_BYTES + len;
        if self.rest.len() < end {
            self.rest = &[];
            return Some(Err(ProtocolError::new(
                "item runs past the end of its frame",
            )));
        }
        let item = &self.rest[ITEM_LEN_BYTES..end];
        self.rest = &self.rest[end..];
        Some(Ok(item))
    }
}

/// Byte length of the first `n` items of an item section.
pub(crate) fn items_len(section: &[u8], n: usize) -> Result<usize, ProtocolError> {
    let mut len = 0;
    let mut items = Items::new(section);
    for _ in 0..n {
        match items.next() {
            Some(item) => len += ITEM_LEN_BYTES + item?.len(),
            None => return Err(ProtocolError::new("fewer items than the header says")),
        }
    }
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_header_round_trip() {
        let mut frame = RunFrame::new(7);
        frame
            .push_with(|buf| {
                buf.extend_from_slice(b"abc");
                Ok::<_, ProtocolError>(())
            })
            .unwrap();
        let mut frame = frame.finish();
        RunHeader::stamp_first_seq(&mut frame, 42);
        assert_eq!(get_u32(&frame, 0) as usize, frame.len() - LEN_BYTES);
        let (header, items) = RunHeader::parse(&frame[LEN_BYTES..]).unwrap();
        assert_eq!(
            header,
            RunHeader {
                task: 7,
                context: 0,
                first_seq: 42,
                count: 1
            }
        );
        assert_eq!(items, run_items(&frame));
        assert_eq!(Items::new(items).next().unwrap().unwrap(), b"abc");
        assert!(RunHeader::parse(&frame[LEN_BYTES..RunHeader::SIZE - 1]).is_err());
    }

    #[test]
    fn reply_header_round_trip() {
        let mut buf = vec![0xAA; 3];
        let at = buf.len();
        buf.resize(at + ReplyHeader::SIZE, 0);
        push_item(&mut buf, b"xyz");
        let header = ReplyHeader {
            first_seq: 9,
            count: 1,
            busy_nanos: 77,
            bulk: true,
        };
        header.write(&mut buf, at);
        assert_eq!(buf[at + KIND_AT], REPLY);
        let (back, items) = ReplyHeader::parse(&buf[at + LEN_BYTES..]).unwrap();
        assert_eq!(back, header);
        assert_eq!(Items::new(items).next().unwrap().unwrap(), b"xyz");
    }

    #[test]
    fn a_reply_for_no_item_is_refused() {
        let mut buf = vec![0; ReplyHeader::SIZE];
        ReplyHeader {
            first_seq: 0,
            count: 0,
            busy_nanos: 0,
            bulk: false,
        }
        .write(&mut buf, 0);
        let error = ReplyHeader::parse(&buf[LEN_BYTES..]).unwrap_err();
        assert_eq!(error.0, "a reply that answers no input");
    }

    #[test]
    fn context_frames_round_trip() {
        let frame = context_frame(9, |buf| {
            buf.extend_from_slice(b"table");
            Ok::<_, ProtocolError>(())
        })
        .unwrap();
        assert_eq!(get_u32(&frame, 0) as usize, frame.len() - LEN_BYTES);
        assert_eq!(frame[KIND_AT], CONTEXT);
        assert_eq!(
            parse_context(&frame[LEN_BYTES..]).unwrap(),
            (9, &b"table"[..])
        );
        let forget = forget_frame(9);
        assert_eq!(forget[KIND_AT], FORGET);
        assert_eq!(parse_context(&forget[LEN_BYTES..]).unwrap(), (9, &b""[..]));
        assert!(parse_context(&forget[LEN_BYTES..forget.len() - 1]).is_err());
        let beside = context_beside_frame(9, b"place");
        assert_eq!(get_u32(&beside, 0) as usize, beside.len() - LEN_BYTES);
        assert!(brings_context(beside[KIND_AT]) && brings_context(CONTEXT));
        assert!(!brings_context(FORGET));
        assert_eq!(
            parse_context(&beside[LEN_BYTES..]).unwrap(),
            (9, &b"place"[..])
        );
        let zero = forget_frame(0);
        assert!(parse_context(&zero[LEN_BYTES..]).is_err());
        let run = RunFrame::with_capacity(1, 9, 0).finish();
        assert_eq!(RunHeader::parse(&run[LEN_BYTES..]).unwrap().0.context, 9);
    }

    #[test]
    fn panic_frames_round_trip() {
        let frame = panic_frame(41, |buf| {
            buf.extend_from_slice(b"report");
            Ok::<_, ProtocolError>(())
        })
        .unwrap();
        assert_eq!(get_u32(&frame, 0) as usize, frame.len() - LEN_BYTES);
        assert_eq!(frame[KIND_AT], PANIC);
        let body = &frame[LEN_BYTES..];
        assert_eq!(parse_panic(body).unwrap(), (41, &b"report"[..]));
        assert!(parse_panic(&body[..8]).is_err());
    }

    #[test]
    fn log_frames_round_trip_with_or_without_an_item() {
        for seq in [Some(0), Some(41), None] {
            let frame = log_frame(seq, |buf| {
                buf.extend_from_slice(b"record");
                Ok::<_, ProtocolError>(())
            })
            .unwrap();
            assert_eq!(get_u32(&frame, 0) as usize, frame.len() - LEN_BYTES);
            assert_eq!(frame[KIND_AT], LOG);
            let body = &frame[LEN_BYTES..];
            assert_eq!(parse_log(body).unwrap(), (seq, &b"record"[..]));
            assert!(parse_log(&body[..8]).is_err());
        }
    }

    #[test]
    fn items_reject_bad_lengths() {
        let mut section = Vec::new();
        push_item(&mut section, b"ok");
        section.extend_from_slice(&100u32.to_le_bytes());
        section.push(1);
        let mut items = Items::new(&section);
        assert_eq!(items.next().unwrap().unwrap(), b"ok");
        assert!(items.next().unwrap().is_err());
        assert!(items.next().is_none());
        assert!(Items::new(&[1, 2]).next().unwrap().is_err());
        assert_eq!(items_len(&section, 1).unwrap(), ITEM_LEN_BYTES + 2);
        assert!(items_len(&section, 2).is_err());
    }

    #[test]
    fn a_failed_item_leaves_no_trace() {
        let mut frame = RunFrame::new(1);
        let before = frame.len();
        let failed = frame.push_with(|buf| {
            buf.extend_from_slice(b"half");
            Err(ProtocolError::new("no"))
        });
        assert!(failed.is_err());
        assert_eq!((frame.len(), frame.count()), (before, 0));
        let bytes = frame
            .push_with(|buf| {
                buf.push(1);
                Ok::<_, ProtocolError>(())
            })
            .unwrap();
        assert_eq!(bytes, ITEM_LEN_BYTES + 1);
        frame.pop(bytes);
        assert_eq!((frame.len(), frame.count()), (before, 0));
    }
}
