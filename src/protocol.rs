//! The wire format between a pool and its workers.
//!
//! Every message is a frame: a little-endian `u32` length, then that many
//! bytes, the first of which is the frame's kind.
//!
//! ```text
//! frame  = len:u32 kind:u8 body                       len = 1 + body length
//! HELLO  worker -> pool  body = CBOR Hello            sent once, at start-up
//! RUN    pool -> worker  body = task:u32 first_seq:u64 count:u32 items
//! REPLY  worker -> pool  body = first_seq:u64 count:u32 busy_ns:u64 items
//! FATAL  worker -> pool  body = UTF-8 message         the worker exits next
//! items  = (len:u32 cbor)*                            one CBOR value each
//! ```
//!
//! Sequence numbers count items, per worker, from 0: a RUN frame carries
//! items `first_seq..first_seq + count`, and the worker answers every item, in
//! order, in REPLY frames that may group them differently. A reply item is an
//! [`Outcome`]. Headers are fixed-size binary so that the pool can stamp a
//! sequence number into a frame built elsewhere, and items carry their own
//! length so that a frame can be split between results or re-sent in part
//! without knowing the CBOR types inside.
//!
//! Every length is checked against a limit before anything is allocated.

use std::io::{self, Read};
use std::ops::Range;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::BoxError;

/// Bumped whenever the format changes. A worker speaking another version is
/// refused at the handshake.
pub(crate) const VERSION: u32 = 1;

pub(crate) const HELLO: u8 = 1;
pub(crate) const RUN: u8 = 2;
pub(crate) const REPLY: u8 = 3;
pub(crate) const FATAL: u8 = 4;

/// Length prefix of a frame.
pub(crate) const LEN_BYTES: usize = 4;
/// Length prefix, kind, task, first sequence number, count.
pub(crate) const RUN_HEADER: usize = LEN_BYTES + 1 + 4 + 8 + 4;
/// Length prefix, kind, first sequence number, count, busy time.
pub(crate) const REPLY_HEADER: usize = LEN_BYTES + 1 + 8 + 4 + 8;
/// Length prefix of an item.
pub(crate) const ITEM_LEN_BYTES: usize = 4;

/// What a worker announces before anything else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Hello {
    pub version: u32,
    pub pid: u32,
    /// Number of registered tasks the worker sees.
    pub tasks: u32,
    /// Digest of the registered task names, in registry order.
    pub digest: u64,
}

/// The result of one task, as a worker reports it. On the wire: a tag
/// byte, then the CBOR value for `Ok`, or a UTF-8 message otherwise (a
/// CBOR enum would cost a map and a string compare per item).
#[derive(Debug, PartialEq)]
pub(crate) enum Outcome<T> {
    Ok(T),
    Panicked(String),
    /// The worker could not decode the input or encode the output; the text
    /// says which.
    Codec(String),
}

const OUTCOME_OK: u8 = 0;
const OUTCOME_PANICKED: u8 = 1;
const OUTCOME_CODEC: u8 = 2;

/// Appends a successful outcome. On error, `out` may hold a partial value.
pub(crate) fn encode_ok<T: Serialize + ?Sized>(
    value: &T,
    out: &mut Vec<u8>,
) -> Result<(), BoxError> {
    out.push(OUTCOME_OK);
    encode(value, out)
}

/// Appends a failed outcome.
pub(crate) fn encode_failure<T>(outcome: &Outcome<T>, out: &mut Vec<u8>) {
    let (tag, message) = match outcome {
        Outcome::Ok(_) => unreachable!("a failure"),
        Outcome::Panicked(message) => (OUTCOME_PANICKED, message),
        Outcome::Codec(message) => (OUTCOME_CODEC, message),
    };
    out.push(tag);
    out.extend_from_slice(message.as_bytes());
}

pub(crate) fn decode_outcome<T: DeserializeOwned>(
    item: &[u8],
    scratch: &mut [u8],
) -> Result<Outcome<T>, BoxError> {
    let Some((&tag, rest)) = item.split_first() else {
        return Err(CodecError("empty outcome".into()).into());
    };
    let message = || String::from_utf8_lossy(rest).into_owned();
    match tag {
        OUTCOME_OK => decode(rest, scratch).map(Outcome::Ok),
        OUTCOME_PANICKED => Ok(Outcome::Panicked(message())),
        OUTCOME_CODEC => Ok(Outcome::Codec(message())),
        tag => Err(CodecError(format!("unknown outcome tag {tag}")).into()),
    }
}

/// A protocol violation by the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProtocolError(pub String);

impl std::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn violation(message: impl Into<String>) -> ProtocolError {
    ProtocolError(message.into())
}

/// A CBOR encoding or decoding failure, with a plain message (ciborium's
/// own `Display` prints its enum's `Debug` form).
#[derive(Debug)]
pub(crate) struct CodecError(String);

impl std::fmt::Display for CodecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CodecError {}

pub(crate) fn encode<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<(), BoxError> {
    use ciborium::ser::Error as E;
    ciborium::into_writer(value, out).map_err(|e| {
        let message = match e {
            E::Io(e) => e.to_string(),
            E::Value(message) => message,
        };
        CodecError(message).into()
    })
}

/// Decodes one CBOR value. `scratch` is reused across calls: ciborium's
/// plain `from_reader` allocates a fresh 4 KiB buffer every time.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8], scratch: &mut [u8]) -> Result<T, BoxError> {
    use ciborium::de::Error as E;
    ciborium::de::from_reader_with_buffer(bytes, scratch).map_err(|e| {
        let message = match e {
            E::Io(_) => "truncated CBOR value".to_owned(),
            E::Syntax(at) => format!("invalid CBOR at byte {at}"),
            E::Semantic(_, message) => message,
            E::RecursionLimitExceeded => "CBOR value nested too deeply".to_owned(),
        };
        CodecError(message).into()
    })
}

fn put_u32(buf: &mut [u8], at: usize, value: u32) {
    buf[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

fn put_u64(buf: &mut [u8], at: usize, value: u64) {
    buf[at..at + 8].copy_from_slice(&value.to_le_bytes());
}

fn get_u32(buf: &[u8], at: usize) -> u32 {
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

/// Builds a RUN frame item by item. The sequence number is stamped later,
/// by whoever sends the frame to a worker ([`set_run_seq`]).
#[derive(Debug)]
pub(crate) struct RunFrame {
    buf: Vec<u8>,
    count: u32,
}

impl RunFrame {
    pub(crate) fn new(task: u32) -> RunFrame {
        RunFrame::with_capacity(task, 0)
    }

    /// A frame with room for `bytes` of items without reallocating.
    pub(crate) fn with_capacity(task: u32, bytes: usize) -> RunFrame {
        let mut buf = Vec::with_capacity(RUN_HEADER + bytes);
        buf.resize(RUN_HEADER, 0);
        buf[LEN_BYTES] = RUN;
        put_u32(&mut buf, LEN_BYTES + 1, task);
        RunFrame { buf, count: 0 }
    }

    pub(crate) fn count(&self) -> u32 {
        self.count
    }

    /// Size of the frame so far, in bytes.
    pub(crate) fn len(&self) -> usize {
        self.buf.len()
    }

    /// Appends one item written by `write`. On error nothing is appended.
    pub(crate) fn push_with(
        &mut self,
        write: impl FnOnce(&mut Vec<u8>) -> Result<(), BoxError>,
    ) -> Result<usize, BoxError> {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0; ITEM_LEN_BYTES]);
        if let Err(e) = write(&mut self.buf) {
            self.buf.truncate(start);
            return Err(e);
        }
        let item_len = self.buf.len() - start - ITEM_LEN_BYTES;
        let Ok(len32) = u32::try_from(item_len) else {
            self.buf.truncate(start);
            return Err("item is larger than 4 GiB".into());
        };
        put_u32(&mut self.buf, start, len32);
        self.count += 1;
        Ok(item_len + ITEM_LEN_BYTES)
    }

    /// Removes the last item, of `bytes` bytes as returned by `push_with`.
    pub(crate) fn pop(&mut self, bytes: usize) {
        self.buf.truncate(self.buf.len() - bytes);
        self.count -= 1;
    }

    /// A frame for the items of `items` (the item section of a RUN frame).
    pub(crate) fn from_items(task: u32, count: u32, items: &[u8]) -> Vec<u8> {
        let mut frame = RunFrame::new(task);
        frame.buf.extend_from_slice(items);
        frame.count = count;
        frame.finish()
    }

    pub(crate) fn finish(mut self) -> Vec<u8> {
        let len = u32::try_from(self.buf.len() - LEN_BYTES).expect("frame under 4 GiB");
        put_u32(&mut self.buf, 0, len);
        put_u32(&mut self.buf, RUN_HEADER - 4, self.count);
        self.buf
    }
}

/// Stamps the first sequence number into a finished RUN frame.
pub(crate) fn set_run_seq(frame: &mut [u8], first_seq: u64) {
    put_u64(frame, LEN_BYTES + 1 + 4, first_seq);
}

/// The header fields of a RUN frame's body (the frame minus its length).
pub(crate) fn parse_run(body: &[u8]) -> Result<(u32, u64, u32, &[u8]), ProtocolError> {
    if body.len() < RUN_HEADER - LEN_BYTES {
        return Err(violation("truncated run header"));
    }
    let task = get_u32(body, 1);
    let first_seq = get_u64(body, 5);
    let count = get_u32(body, 13);
    Ok((task, first_seq, count, &body[RUN_HEADER - LEN_BYTES..]))
}

/// The header of a REPLY frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ReplyHeader {
    pub first_seq: u64,
    pub count: u32,
    /// Time the worker spent running these items, measured by the worker:
    /// the pool learns run times from it (arrival times would mislead when
    /// several replies arrive at once).
    pub busy_nanos: u64,
}

/// The header and the items of a REPLY frame's body.
pub(crate) fn parse_reply(body: &[u8]) -> Result<(ReplyHeader, &[u8]), ProtocolError> {
    if body.len() < REPLY_HEADER - LEN_BYTES {
        return Err(violation("truncated reply header"));
    }
    let header = ReplyHeader {
        first_seq: get_u64(body, 1),
        count: get_u32(body, 9),
        busy_nanos: get_u64(body, 13),
    };
    Ok((header, &body[REPLY_HEADER - LEN_BYTES..]))
}

/// Writes the header of a REPLY frame at `at` in `buf`, for the items that
/// follow it up to the end of `buf`.
pub(crate) fn write_reply_header(buf: &mut [u8], at: usize, header: ReplyHeader) {
    let len = u32::try_from(buf.len() - at - LEN_BYTES).expect("frame under 4 GiB");
    put_u32(buf, at, len);
    buf[at + LEN_BYTES] = REPLY;
    put_u64(buf, at + LEN_BYTES + 1, header.first_seq);
    put_u32(buf, at + LEN_BYTES + 9, header.count);
    put_u64(buf, at + LEN_BYTES + 13, header.busy_nanos);
}

/// Appends one length-prefixed item.
pub(crate) fn push_item(buf: &mut Vec<u8>, item: &[u8]) {
    let len = u32::try_from(item.len()).expect("item under 4 GiB");
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(item);
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
            return Some(Err(violation("truncated item length")));
        }
        let len = get_u32(self.rest, 0) as usize;
        let end = ITEM_LEN_BYTES + len;
        if self.rest.len() < end {
            self.rest = &[];
            return Some(Err(violation("item runs past the end of its frame")));
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
            None => return Err(violation("fewer items than the header says")),
        }
    }
    Ok(len)
}

/// Reads one frame (blocking) into `buf`, which then holds its body (kind
/// byte first). Returns `Ok(false)` on a clean end of stream before a frame.
pub(crate) fn read_frame(reader: &mut impl Read, buf: &mut Vec<u8>, max: u32) -> io::Result<bool> {
    let mut len = [0; LEN_BYTES];
    let mut got = 0;
    while got < LEN_BYTES {
        match reader.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let len = check_len(u32::from_le_bytes(len), max)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.0))?;
    // Keep the buffer between frames of similar size (no page faults), but
    // give memory back after an outsized one.
    if buf.capacity() > (4 * len).max(1 << 20) {
        buf.clear();
        buf.shrink_to(len);
    }
    buf.clear();
    // Grow with what really arrives, so that a lying length prefix cannot
    // make us allocate much more than was sent; double from 64 KiB so that
    // a large frame costs few reallocations.
    while buf.len() < len {
        let want = (len - buf.len()).min(buf.len().max(64 * 1024));
        buf.reserve_exact(want);
        let start = buf.len();
        let read = reader.take(want as u64).read_to_end(buf)?;
        if read == 0 || buf.len() < start + want {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(true)
}

fn check_len(len: u32, max: u32) -> Result<usize, ProtocolError> {
    if len == 0 {
        return Err(violation("empty frame"));
    }
    if len > max {
        return Err(violation(format!(
            "frame of {len} bytes is over the limit of {max}"
        )));
    }
    Ok(len as usize)
}

/// Reassembles frames from a non-blocking byte stream.
#[derive(Debug, Default)]
pub(crate) struct FrameBuffer {
    buf: Vec<u8>,
    /// Start of the first unconsumed byte.
    start: usize,
}

/// Frames from this size on get a buffer of their own.
const LARGE_FRAME: usize = 64 * 1024;

/// Reads at most this much per call, so one chatty worker cannot starve the
/// others.
const READ_CHUNK: usize = 256 * 1024;

impl FrameBuffer {
    /// Reads what is available from `fd` (at most one chunk). Returns the
    /// number of bytes read: 0 means end of stream.
    pub(crate) fn fill(&mut self, fd: impl rustix::fd::AsFd) -> io::Result<usize> {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        let spare = self.buf.capacity() - self.buf.len();
        if spare < READ_CHUNK {
            if self.start > 0 {
                self.buf.drain(..self.start);
                self.start = 0;
            }
            self.buf.reserve(READ_CHUNK);
        }
        let (filled, _) = rustix::io::read(fd, self.buf.spare_capacity_mut())?;
        let n = filled.len();
        // SAFETY: `read` initialised the first `n` bytes of the spare capacity.
        unsafe { self.buf.set_len(self.buf.len() + n) };
        Ok(n)
    }

    /// The next complete frame as the range of its body (kind byte first),
    /// valid until the next call to [`FrameBuffer::fill`].
    pub(crate) fn next_frame(&mut self, max: u32) -> Result<Option<Range<usize>>, ProtocolError> {
        let available = &self.buf[self.start..];
        if available.len() < LEN_BYTES {
            return Ok(None);
        }
        let len = check_len(get_u32(available, 0), max)?;
        if available.len() < LEN_BYTES + len {
            // Room for more of the frame, doubling with what has arrived: a
            // lying length prefix costs no more than what was really sent.
            let missing = LEN_BYTES + len - available.len();
            self.buf
                .reserve(missing.min(self.buf.len().max(LARGE_FRAME)));
            return Ok(None);
        }
        let body = self.start + LEN_BYTES..self.start + LEN_BYTES + len;
        self.start = body.end;
        Ok(Some(body))
    }

    /// Hands over the whole buffer if `body` is a large frame that ends
    /// it, so that the frame can move on without a copy.
    pub(crate) fn take_if_large_and_last(&mut self, body: &Range<usize>) -> Option<Vec<u8>> {
        if body.len() < LARGE_FRAME || body.end != self.buf.len() {
            return None;
        }
        self.start = 0;
        Some(std::mem::take(&mut self.buf))
    }

    pub(crate) fn get(&self, range: Range<usize>) -> &[u8] {
        &self.buf[range]
    }

    /// Whether bytes of an incomplete frame are waiting.
    pub(crate) fn has_partial(&self) -> bool {
        self.start < self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_frame(items: &[u64]) -> Vec<u8> {
        let mut frame = RunFrame::new(7);
        for item in items {
            frame.push_with(|buf| encode(item, buf)).unwrap();
        }
        let mut frame = frame.finish();
        set_run_seq(&mut frame, 42);
        frame
    }

    #[test]
    fn run_frame_round_trip() {
        let frame = run_frame(&[1, 2, 300_000]);
        let mut body = Vec::new();
        assert!(read_frame(&mut &frame[..], &mut body, 1 << 20).unwrap());
        assert_eq!(body[0], RUN);
        let (task, seq, count, items) = parse_run(&body).unwrap();
        assert_eq!((task, seq, count), (7, 42, 3));
        let mut scratch = [0; 64];
        let values: Vec<u64> = Items::new(items)
            .map(|item| decode(item.unwrap(), &mut scratch).unwrap())
            .collect();
        assert_eq!(values, [1, 2, 300_000]);
        assert_eq!(items_len(items, 3).unwrap(), items.len());
        assert!(items_len(items, 4).is_err());
    }

    #[test]
    fn reply_header_round_trip() {
        let mut buf = vec![0xAA; 3];
        let at = buf.len();
        buf.resize(at + REPLY_HEADER, 0);
        push_item(&mut buf, b"xyz");
        let header = ReplyHeader {
            first_seq: 9,
            count: 1,
            busy_nanos: 77,
        };
        write_reply_header(&mut buf, at, header);
        let mut reader = FrameBuffer::default();
        reader.buf.extend_from_slice(&buf[at..]);
        let body = reader.next_frame(1024).unwrap().unwrap();
        let (back, items) = parse_reply(reader.get(body)).unwrap();
        assert_eq!(back, header);
        assert_eq!(Items::new(items).next().unwrap().unwrap(), b"xyz");
        assert!(!reader.has_partial());
    }

    #[test]
    fn clean_eof_and_truncated_frames() {
        let mut body = Vec::new();
        assert!(!read_frame(&mut &[][..], &mut body, 1024).unwrap());
        let frame = run_frame(&[5]);
        for cut in 1..frame.len() {
            let err = read_frame(&mut &frame[..cut], &mut body, 1024).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "cut at {cut}");
        }
    }

    #[test]
    fn huge_length_prefix_is_refused_without_allocating() {
        let frame = [0xFF, 0xFF, 0xFF, 0xFF, RUN];
        let mut body = Vec::new();
        let err = read_frame(&mut &frame[..], &mut body, 1 << 20).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(body.capacity() < 1 << 20);

        let mut reader = FrameBuffer::default();
        reader.buf.extend_from_slice(&frame);
        let err = reader.next_frame(1 << 20).unwrap_err();
        assert_eq!(
            err.0,
            "frame of 4294967295 bytes is over the limit of 1048576"
        );
        assert!(reader.buf.capacity() < 1 << 20);
    }

    #[test]
    fn lying_length_within_limit_reads_only_what_arrives() {
        // Claims 1 MiB, sends 3 bytes: an error, and at most 64 KiB allocated.
        let frame = [0x00, 0x00, 0x10, 0x00, RUN, 0, 0];
        let mut body = Vec::new();
        let err = read_frame(&mut &frame[..], &mut body, 1 << 21).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert!(body.capacity() <= 64 * 1024, "{}", body.capacity());
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
    }

    #[test]
    fn partial_frame_is_kept() {
        let frame = run_frame(&[1, 2]);
        let mut reader = FrameBuffer::default();
        reader.buf.extend_from_slice(&frame[..frame.len() - 1]);
        assert_eq!(reader.next_frame(1024).unwrap(), None);
        assert!(reader.has_partial());
        reader.buf.push(*frame.last().unwrap());
        let body = reader.next_frame(1024).unwrap().unwrap();
        assert_eq!(body.len(), frame.len() - LEN_BYTES);
    }

    #[test]
    fn outcome_round_trip() {
        let mut buf = Vec::new();
        encode_ok(&vec![1u8, 2], &mut buf).unwrap();
        let back: Outcome<Vec<u8>> = decode_outcome(&buf, &mut [0; 64]).unwrap();
        assert_eq!(back, Outcome::Ok(vec![1, 2]));
        for failure in [
            Outcome::Panicked("boom".to_owned()),
            Outcome::Codec("bad".to_owned()),
        ] {
            buf.clear();
            encode_failure(&failure, &mut buf);
            assert_eq!(decode_outcome::<u8>(&buf, &mut [0; 64]).unwrap(), failure);
        }
        assert!(decode_outcome::<u8>(&[], &mut [0; 64]).is_err());
        assert!(decode_outcome::<u8>(&[9, 1], &mut [0; 64]).is_err());
    }

    // A quick fuzz of everything that reads bytes from a peer: whatever
    // arrives, in whatever pieces, decoding never panics and never
    // allocates much more than what arrived.
    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        /// Hands every frame body to the parsers a real reader would use.
        fn parse_everything(body: &[u8]) {
            let items = match body[0] {
                RUN => parse_run(body).map(|(_, _, _, items)| items),
                REPLY => parse_reply(body).map(|(_, items)| items),
                _ => Ok(&body[1..]),
            };
            if let Ok(items) = items {
                for item in Items::new(items).flatten() {
                    let _ = decode_outcome::<Vec<u64>>(item, &mut [0; 64]);
                }
                let _ = items_len(items, 3);
            }
            let _ = decode::<Hello>(&body[1..], &mut [0; 64]);
        }

        proptest! {
            #[test]
            fn random_bytes_in_random_pieces(bytes in proptest::collection::vec(any::<u8>(), 0..512), cuts in proptest::collection::vec(0usize..512, 0..8)) {
                let mut reader = FrameBuffer::default();
                let mut pieces = cuts.clone();
                pieces.push(bytes.len());
                pieces.sort();
                let mut from = 0;
                'feed: for to in pieces {
                    let to = to.min(bytes.len());
                    reader.buf.extend_from_slice(&bytes[from..to.max(from)]);
                    from = to.max(from);
                    loop {
                        match reader.next_frame(1024) {
                            Ok(Some(body)) => parse_everything(reader.get(body)),
                            Ok(None) => break,
                            Err(_) => break 'feed,
                        }
                    }
                    prop_assert!(reader.buf.capacity() <= 4096 + bytes.len());
                }
                let mut body = Vec::new();
                let mut stream = &bytes[..];
                while let Ok(true) = read_frame(&mut stream, &mut body, 1 << 30) {
                    parse_everything(&body);
                }
                prop_assert!(body.capacity() <= 64 * 1024 + bytes.len());
            }

            #[test]
            fn well_framed_random_bodies(frames in proptest::collection::vec((0u8..6, proptest::collection::vec(any::<u8>(), 0..64)), 0..8), flip in any::<(usize, u8)>()) {
                // Frames with honest lengths and random bodies, one byte
                // possibly corrupted: the parsers see real headers.
                let mut bytes = Vec::new();
                for (kind, body) in &frames {
                    push_frame(&mut bytes, *kind, body);
                }
                if !bytes.is_empty() {
                    let at = flip.0 % bytes.len();
                    bytes[at] ^= flip.1;
                }
                let mut reader = FrameBuffer::default();
                reader.buf.extend_from_slice(&bytes);
                while let Ok(Some(body)) = reader.next_frame(1024) {
                    parse_everything(reader.get(body));
                }
            }

            #[test]
            fn run_frames_round_trip(items in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..20), seq in any::<u64>()) {
                let mut frame = RunFrame::new(3);
                for item in &items {
                    frame.push_with(|buf| { buf.extend_from_slice(item); Ok(()) }).unwrap();
                }
                let mut frame = frame.finish();
                set_run_seq(&mut frame, seq);
                let mut body = Vec::new();
                prop_assert!(read_frame(&mut &frame[..], &mut body, 1 << 20).unwrap());
                let (task, first_seq, count, section) = parse_run(&body).unwrap();
                prop_assert_eq!((task, first_seq, count as usize), (3, seq, items.len()));
                let back: Vec<Vec<u8>> = Items::new(section).map(|item| item.unwrap().to_vec()).collect();
                prop_assert_eq!(back, items);
            }
        }
    }
}
