//! Inputs' long strings: the pool's segments, and a worker reading an
//! input through them.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use super::splice::Table;
use super::{POOL, Region, Sink, View, open_pools};

/// First byte of an input item whose strings travel beside it: never the
/// first byte of a CBOR value (it is the "break" code).
pub(crate) const INPUT_MARK: u8 = 0xFF;
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
}
