//! Reading frames: blocking, one at a time (the worker), or from a
//! non-blocking stream in whatever pieces arrive (the pool).
//!
//! Both check a frame's length against the limit before allocating, and
//! grow their buffer only with what really arrives, so a lying length prefix
//! costs no more memory than the bytes that were sent.

use std::io::{self, Read};
use std::ops::Range;

use super::ProtocolError;
use super::frame::{LEN_BYTES, get_u32};
use crate::flow::{KEEP_BUFFER, LARGE_FRAME, READ_CHUNK};

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
    if buf.capacity() > (4 * len).max(KEEP_BUFFER) {
        buf.clear();
        buf.shrink_to(len);
    }
    buf.clear();
    // Grow with what really arrives, doubling from `LARGE_FRAME`, so that a
    // lying length prefix cannot make us allocate much more than was sent,
    // and a large frame costs few reallocations.
    while buf.len() < len {
        let want = (len - buf.len()).min(buf.len().max(LARGE_FRAME));
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
        return Err(ProtocolError::new("empty frame"));
    }
    if len > max {
        return Err(ProtocolError::new(format!(
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

impl FrameBuffer {
    /// Reads what is available from `fd`, into room for at least
    /// [`READ_CHUNK`] (more while a large frame is arriving). Returns the
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
    #[cfg(test)]
    fn has_partial(&self) -> bool {
        self.start < self.buf.len()
    }

    #[cfg(test)]
    fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Hello, Items, REPLY, RUN, ReplyHeader, RunFrame, RunHeader};
    use super::super::{decode, decode_outcome, encode, items_len, push_frame};
    use super::*;

    fn run_frame(items: &[u64]) -> Vec<u8> {
        let mut frame = RunFrame::new(7);
        for item in items {
            frame.push_with(|buf| encode(item, buf)).unwrap();
        }
        let mut frame = frame.finish();
        RunHeader::stamp_first_seq(&mut frame, 42);
        frame
    }

    #[test]
    fn run_frame_round_trip() {
        let frame = run_frame(&[1, 2, 300_000]);
        let mut body = Vec::new();
        assert!(read_frame(&mut &frame[..], &mut body, 1 << 20).unwrap());
        assert_eq!(body[0], RUN);
        let (header, items) = RunHeader::parse(&body).unwrap();
        assert_eq!((header.task, header.first_seq, header.count), (7, 42, 3));
        let mut scratch = [0; 64];
        let values: Vec<u64> = Items::new(items)
            .map(|item| decode(item.unwrap(), &mut scratch).unwrap())
            .collect();
        assert_eq!(values, [1, 2, 300_000]);
        assert_eq!(items_len(items, 3).unwrap(), items.len());
        assert!(items_len(items, 4).is_err());
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
    fn empty_frames_are_refused() {
        let mut body = Vec::new();
        let err = read_frame(&mut &[0, 0, 0, 0][..], &mut body, 1024).unwrap_err();
        assert_eq!(err.to_string(), "empty frame");
        let mut reader = FrameBuffer::default();
        reader.push(&[0, 0, 0, 0]);
        assert_eq!(reader.next_frame(1024).unwrap_err().0, "empty frame");
    }

    #[test]
    fn huge_length_prefix_is_refused_without_allocating() {
        let frame = [0xFF, 0xFF, 0xFF, 0xFF, RUN];
        let mut body = Vec::new();
        let err = read_frame(&mut &frame[..], &mut body, 1 << 20).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(body.capacity() < 1 << 20);

        let mut reader = FrameBuffer::default();
        reader.push(&frame);
        let err = reader.next_frame(1 << 20).unwrap_err();
        assert_eq!(
            err.0,
            "frame of 4294967295 bytes is over the limit of 1048576"
        );
        assert!(reader.buf.capacity() < 1 << 20);
    }

    #[test]
    fn lying_length_within_limit_reads_only_what_arrives() {
        // Claims 1 MiB, sends 3 bytes: an error, and at most one growth
        // step allocated.
        let frame = [0x00, 0x00, 0x10, 0x00, RUN, 0, 0];
        let mut body = Vec::new();
        let err = read_frame(&mut &frame[..], &mut body, 1 << 21).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert!(body.capacity() <= LARGE_FRAME, "{}", body.capacity());
    }

    #[test]
    fn partial_frame_is_kept() {
        let frame = run_frame(&[1, 2]);
        let mut reader = FrameBuffer::default();
        reader.push(&frame[..frame.len() - 1]);
        assert_eq!(reader.next_frame(1024).unwrap(), None);
        assert!(reader.has_partial());
        reader.push(&frame[frame.len() - 1..]);
        let body = reader.next_frame(1024).unwrap().unwrap();
        assert_eq!(body.len(), frame.len() - LEN_BYTES);
        assert!(!reader.has_partial());
    }

    #[test]
    fn a_large_last_frame_leaves_without_a_copy() {
        let mut frame = Vec::new();
        push_frame(&mut frame, REPLY, &vec![1; LARGE_FRAME]);
        let mut reader = FrameBuffer::default();
        reader.push(&frame);
        let body = reader.next_frame(1 << 20).unwrap().unwrap();
        let buffer = reader.take_if_large_and_last(&body).unwrap();
        assert_eq!(buffer[body].len(), LARGE_FRAME + 1);
        assert!(!reader.has_partial());
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
                RUN => RunHeader::parse(body).map(|(_, items)| items),
                REPLY => ReplyHeader::parse(body).map(|(_, items)| items),
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
                    reader.push(&bytes[from..to.max(from)]);
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
                prop_assert!(body.capacity() <= LARGE_FRAME + bytes.len());
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
                reader.push(&bytes);
                while let Ok(Some(body)) = reader.next_frame(1024) {
                    parse_everything(reader.get(body));
                }
            }

            #[test]
            fn run_frames_round_trip(items in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..20), seq in any::<u64>()) {
                let mut frame = RunFrame::new(3);
                for item in &items {
                    frame.push_with(|buf| { buf.extend_from_slice(item); Ok::<_, ProtocolError>(()) }).unwrap();
                }
                let mut frame = frame.finish();
                RunHeader::stamp_first_seq(&mut frame, seq);
                let mut body = Vec::new();
                prop_assert!(read_frame(&mut &frame[..], &mut body, 1 << 20).unwrap());
                let (header, section) = RunHeader::parse(&body).unwrap();
                prop_assert_eq!((header.task, header.first_seq, header.count as usize), (3, seq, items.len()));
                let back: Vec<Vec<u8>> = Items::new(section).map(|item| item.unwrap().to_vec()).collect();
                prop_assert_eq!(back, items);
            }
        }
    }
}
