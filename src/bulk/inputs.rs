//! Inputs' long strings: the pool's segments, the caller's side writing
//! an input into a RUN frame and its strings into a segment, and a worker
//! reading an input through them.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use serde::Serialize;

use super::splice::{Table, encode_diverting, insert_table};
use super::{POOL, Region, Sink, View, open_pools};
use crate::error::BoxError;
use crate::protocol::{INPUT_MARK, RunFrame};
/// Free segments kept for reuse: their pages stay faulted in.
const SPARE_SEGMENTS: usize = 4;
const SPARE_BYTES: usize = 256 << 20;

/// The pool's memfds for inputs' long strings, and the spare ones.
pub(crate) struct Segments {
    spare: Mutex<Vec<Region>>,
    /// The frame limit: an input past it goes inline, where it is refused.
    limit: usize,
}

impl Segments {
    pub(crate) fn new(limit: u32) -> Segments {
        Segments {
            spare: Mutex::default(),
            limit: limit as usize,
        }
    }
}

impl std::fmt::Debug for Segments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Segments")
    }
}

/// One input's memfd, back to the spares when the last chunk naming it
/// goes.
pub(crate) struct Segment {
    region: Option<Region>,
    owner: Weak<Segments>,
}

impl std::fmt::Debug for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Segment").field(&self.fd()).finish()
    }
}

impl Segment {
    fn fd(&self) -> Option<i32> {
        self.region.as_ref().map(|r| r.file.as_raw_fd())
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        let (Some(region), Some(owner)) = (self.region.take(), self.owner.upgrade()) else {
            return;
        };
        let mut spare = owner.spare.lock().unwrap_or_else(PoisonError::into_inner);
        let kept: usize = spare.iter().map(|r| r.map.len).sum();
        if spare.len() < SPARE_SEGMENTS && kept + region.map.len <= SPARE_BYTES {
            spare.push(region);
        }
    }
}

/// Collects one input's long strings into a segment, taken on the first.
pub(crate) struct InputSink<'a> {
    segments: &'a Arc<Segments>,
    region: Option<Region>,
}

impl<'a> InputSink<'a> {
    pub(crate) fn new(segments: &'a Arc<Segments>) -> InputSink<'a> {
        InputSink {
            segments,
            region: None,
        }
    }

    /// The segment to keep with the chunk, and its fd number for the table.
    pub(crate) fn finish(self) -> Option<(Arc<Segment>, u32)> {
        let region = self.region?;
        let fd = region.file.as_raw_fd() as u32;
        let segment = Segment {
            region: Some(region),
            owner: Arc::downgrade(self.segments),
        };
        Some((Arc::new(segment), fd))
    }
}

impl Sink for InputSink<'_> {
    fn put(&mut self, offset: usize, bytes: &[u8]) -> io::Result<bool> {
        if offset + bytes.len() > self.segments.limit {
            return Ok(false);
        }
        if self.region.is_none() {
            let spare = self
                .segments
                .spare
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop();
            // Out of memory or descriptors: the string goes inline.
            self.region = match spare {
                Some(region) => Some(region),
                None => match Region::create(0).and_then(|file| Region::new(file, 0)) {
                    Ok(region) => Some(region),
                    Err(_) => return Ok(false),
                },
            };
        }
        let region = self.region.as_mut().expect("just set");
        if region.reserve(offset + bytes.len()).is_err() {
            return Ok(false);
        }
        region.data_mut()[offset..offset + bytes.len()].copy_from_slice(bytes);
        Ok(true)
    }
}

/// A RUN frame being built, and the segments that hold its inputs' long
/// strings: they go with its chunk (see [`InputFrame::finish`]).
#[derive(Debug)]
pub(crate) struct InputFrame {
    frame: RunFrame,
    segments: Vec<Arc<Segment>>,
    /// The bytes of its items' strings in segments.
    beside: usize,
    /// Those of the last item pushed, if it had a segment.
    last_beside: Option<usize>,
}

impl InputFrame {
    /// A frame for `task` reading `context` (0 for none), with room for
    /// `bytes` of items without reallocating.
    pub(crate) fn with_capacity(task: u32, context: u64, bytes: usize) -> InputFrame {
        InputFrame {
            frame: RunFrame::with_capacity(task, context, bytes),
            segments: Vec::new(),
            beside: 0,
            last_beside: None,
        }
    }

    pub(crate) fn count(&self) -> u32 {
        self.frame.count()
    }

    /// Size of the frame so far, in bytes.
    pub(crate) fn len(&self) -> usize {
        self.frame.len()
    }

    /// Size of the frame and of its items' strings beside it: what counts
    /// against the frame limit.
    pub(crate) fn size(&self) -> usize {
        self.frame.len() + self.beside
    }

    /// The last item pushed, of `bytes` bytes as [`InputFrame::push_input`]
    /// returned, without its prefix.
    pub(crate) fn last_item(&self, bytes: usize) -> &[u8] {
        self.frame.last_item(bytes)
    }

    /// Appends the CBOR value of one input, its long strings in a segment
    /// of `segments` if given (then the item starts with [`INPUT_MARK`]
    /// and its table). Returns the item's size in the frame, for
    /// [`InputFrame::pop`].
    pub(crate) fn push_input<T: Serialize + ?Sized>(
        &mut self,
        value: &T,
        segments: Option<&Arc<Segments>>,
    ) -> Result<usize, BoxError> {
        self.last_beside = None;
        let Some(segments) = segments else {
            return self.frame.push_input(value);
        };
        let mut kept = None;
        let bytes = self.frame.push_with(|buf| {
            let start = buf.len();
            let mut sink = InputSink::new(segments);
            if let Some(mut table) = encode_diverting(value, buf, &mut sink)? {
                let (segment, fd) = sink.finish().expect("a table has its segment");
                table.region = fd;
                insert_table(buf, start, &table);
                buf.insert(start, INPUT_MARK);
                kept = Some((segment, table.total() as usize));
            }
            Ok::<_, BoxError>(())
        })?;
        if let Some((segment, total)) = kept {
            self.segments.push(segment);
            self.beside += total;
            self.last_beside = Some(total);
        }
        Ok(bytes)
    }

    /// Removes the last item, of `bytes` bytes as returned by
    /// [`InputFrame::push_input`], and its strings.
    pub(crate) fn pop(&mut self, bytes: usize) {
        self.frame.pop(bytes);
        if let Some(total) = self.last_beside.take() {
            self.segments.pop();
            self.beside -= total;
        }
    }

    /// The finished frame, and the segments that must live as long as it
    /// may be sent.
    pub(crate) fn finish(self) -> (Vec<u8>, Vec<Arc<Segment>>) {
        (self.frame.finish(), self.segments)
    }
}

/// Decodes an input item: plain CBOR, or marked and with a table.
pub(crate) fn decode_input<T: serde::de::DeserializeOwned>(
    item: &[u8],
    scratch: &mut [u8],
) -> Result<T, crate::error::BoxError> {
    let Some((&INPUT_MARK, rest)) = item.split_first() else {
        return crate::protocol::decode(item, scratch);
    };
    let limit = POOL.get().map_or(u64::MAX, |&(_, limit, _)| limit);
    let (table, cbor) = Table::parse(rest, limit)?;
    let file = open_pools(table.region, false)?;
    let view = View::map(&file, 0, table.total())?;
    crate::protocol::decode_from(view.splice(&table, cbor)?, scratch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg_attr(
        not(buckshot_native),
        ignore = "memfds: the portable backend sends long strings inline"
    )]
    fn spare_segments_are_reused_and_bounded() {
        let segments = Arc::new(Segments::new(1 << 20));
        let mut fds = Vec::new();
        for _ in 0..SPARE_SEGMENTS + 2 {
            let mut sink = InputSink::new(&segments);
            assert!(sink.put(0, &[1; 10]).unwrap());
            fds.push(sink.finish().unwrap());
        }
        drop(fds);
        assert_eq!(segments.spare.lock().unwrap().len(), SPARE_SEGMENTS);
        let mut sink = InputSink::new(&segments);
        sink.put(0, &[2; 10]).unwrap();
        assert_eq!(segments.spare.lock().unwrap().len(), SPARE_SEGMENTS - 1);
    }

    #[test]
    #[cfg_attr(
        not(buckshot_native),
        ignore = "memfds: the portable backend sends long strings inline"
    )]
    fn an_input_popped_takes_its_strings_with_it() {
        let segments = Arc::new(Segments::new(u32::MAX));
        let long = serde_bytes::ByteBuf::from(vec![7; crate::bulk::BULK_MIN]);
        let mut frame = InputFrame::with_capacity(1, 0, 0);
        frame.push_input(&1u8, Some(&segments)).unwrap();
        let small = frame.size();
        assert_eq!(small, frame.len(), "a short input stays inline");
        let bytes = frame.push_input(&long, Some(&segments)).unwrap();
        assert!(frame.len() < small + 100, "its string is beside it");
        assert!(frame.size() > small + crate::bulk::BULK_MIN);
        frame.pop(bytes);
        assert_eq!((frame.size(), frame.count()), (small, 1));
        frame.push_input(&long, Some(&segments)).unwrap();
        frame.push_input(&2u8, None).unwrap();
        let (frame, kept) = frame.finish();
        assert_eq!(kept.len(), 1);
        let items: Vec<_> = crate::protocol::RunHeader::parse(&frame[crate::protocol::LEN_BYTES..])
            .map(|(_, items)| {
                crate::protocol::Items::new(items)
                    .map(Result::unwrap)
                    .collect()
            })
            .unwrap();
        assert_eq!(items[1][0], INPUT_MARK);
        assert_ne!(items[2][0], INPUT_MARK);
    }
}
