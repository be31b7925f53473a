//! Contexts in shared memory. A pool encodes a long context's value once,
//! into a memfd; each of its local workers is sent a small CONTEXT_BESIDE
//! frame naming it, maps it read-only and decodes from the mapping, where
//! a CONTEXT frame would have been written down every worker's pipe, read
//! into a fresh buffer and copied again.
//!
//! The memfd lives as long as its context (the handle and its maps), so a
//! worker started later, a replacement, maps it too. A worker maps it as
//! the frame arrives and unmaps it once the value is decoded, or
//! forgotten. The frame's place names the pool's descriptor, the value's
//! length and the memfd's inode: a worker that finds another file under
//! that number (the context gone, its number reused) refuses it rather
//! than reading it, and the length is checked against the file's size
//! (sealed against shrinking) before anything is mapped, so that no path
//! can end in a SIGBUS.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;

use super::{BULK_MIN, POOL, Region, View, open_pools};
use crate::protocol;

/// Values at least this long go beside their CONTEXT frame. Below it,
/// writing the value down each worker's pipe costs less than the memfd,
/// its mapping in each worker and the page faults of both.
pub(crate) const CONTEXT_BESIDE_MIN: usize = BULK_MIN;

/// Bytes of a CONTEXT_BESIDE frame's place: the pool's fd:u32, the
/// value's len:u64, the memfd's inode:u64.
const PLACE_BYTES: usize = 4 + 8 + 8;

/// The memfd that holds a context's value, and the value's length. It is
/// held open, not read: workers open it by its number.
pub(crate) struct ContextFile {
    file: File,
    len: usize,
}

impl std::fmt::Debug for ContextFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContextFile")
            .field("fd", &self.file.as_raw_fd())
            .field("len", &self.len)
            .finish()
    }
}

impl ContextFile {
    /// The value's length.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.len
    }

    /// The length of the CONTEXT frame that its CONTEXT_BESIDE `frame`
    /// stands for: what counts against the frame limit.
    pub(crate) fn inline_len(&self, frame: &[u8]) -> usize {
        frame.len() - PLACE_BYTES + self.len
    }
}

/// Encodes a context: `write` writes its CBOR value. Returns its CONTEXT
/// frame, or, if `beside` and the value is at least
/// [`CONTEXT_BESIDE_MIN`] long, its CONTEXT_BESIDE frame and the memfd
/// that holds the value. A memfd that cannot be made or grown leaves the
/// value inline.
pub(crate) fn encode_context<E>(
    id: u64,
    beside: bool,
    write: impl FnOnce(&mut dyn Write) -> Result<(), E>,
) -> Result<(Vec<u8>, Option<ContextFile>), E> {
    let mut spilled = None;
    let frame = protocol::context_frame(id, |frame| {
        let start = frame.len();
        let mut spill = Spill {
            frame,
            start,
            region: None,
            len: 0,
            beside,
        };
        write(&mut spill)?;
        spilled = spill.finish();
        Ok(())
    })?;
    Ok(match spilled {
        Some((file, len)) => {
            let ino = file.metadata().map_or(0, |m| m.ino());
            let fd = u32::try_from(file.as_raw_fd()).expect("a descriptor");
            let mut place = Vec::with_capacity(PLACE_BYTES);
            place.extend_from_slice(&fd.to_le_bytes());
            place.extend_from_slice(&(len as u64).to_le_bytes());
            place.extend_from_slice(&ino.to_le_bytes());
            let frame = protocol::context_beside_frame(id, &place);
            (frame, Some(ContextFile { file, len }))
        }
        None => (frame, None),
    })
}

/// The writer of a context's value: into its frame while it is short, into
/// a memfd once it is long (and may go beside).
struct Spill<'a> {
    frame: &'a mut Vec<u8>,
    /// Where the value starts in the frame.
    start: usize,
    region: Option<Region>,
    /// Bytes of the value in the region.
    len: usize,
    beside: bool,
}

impl Spill<'_> {
    /// Moves the value from the frame into a new memfd.
    fn spill(&mut self, more: usize) -> io::Result<()> {
        let mut region = Region::new(Region::create(0)?, 0)?;
        let value = &self.frame[self.start..];
        region.reserve(value.len() + more)?;
        region.data_mut()[..value.len()].copy_from_slice(value);
        self.len = value.len();
        self.frame.truncate(self.start);
        self.region = Some(region);
        Ok(())
    }

    /// Puts the value back into the frame: its memfd could not grow.
    fn unspill(&mut self) {
        if let Some(mut region) = self.region.take() {
            self.frame.extend_from_slice(&region.data_mut()[..self.len]);
        }
        self.beside = false;
    }

    /// The memfd and the value's length, if the value is in one; its
    /// writable mapping goes.
    fn finish(self) -> Option<(File, usize)> {
        let Region { file, .. } = self.region?;
        Some((file, self.len))
    }
}

impl Write for Spill<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let long = self.frame.len() - self.start + buf.len() >= CONTEXT_BESIDE_MIN;
        if self.region.is_none() && self.beside && long && self.spill(buf.len()).is_err() {
            self.beside = false;
        }
        let Some(region) = self.region.as_mut() else {
            self.frame.extend_from_slice(buf);
            return Ok(buf.len());
        };
        if region.reserve(self.len + buf.len()).is_err() {
            self.unspill();
            self.frame.extend_from_slice(buf);
            return Ok(buf.len());
        }
        region.data_mut()[self.len..self.len + buf.len()].copy_from_slice(buf);
        self.len += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A context's value, mapped read-only from its pool's memfd.
pub(crate) struct MappedContext {
    view: View,
}

impl AsRef<[u8]> for MappedContext {
    fn as_ref(&self) -> &[u8] {
        self.view.data()
    }
}

impl std::fmt::Debug for MappedContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("MappedContext")
            .field(&self.view.data().len())
            .finish()
    }
}

/// In a worker: maps the value that a CONTEXT_BESIDE frame's `place` names,
/// after checking that it is the memfd it was, and long enough.
pub(crate) fn map_context(place: &[u8]) -> io::Result<MappedContext> {
    let Some((fd, len, ino)) = parse_place(place) else {
        return Err(io::Error::other("malformed place of a context"));
    };
    let limit = POOL.get().map_or(u64::MAX, |&(_, limit, _)| limit);
    if len > limit {
        return Err(io::Error::other(format!(
            "a context of {len} bytes, over the frame limit of {limit}"
        )));
    }
    map_checked(&open_pools(fd, false)?, len, ino)
}

/// Maps `len` bytes of value from `file`, if it is inode `ino`.
fn map_checked(file: &File, len: u64, ino: u64) -> io::Result<MappedContext> {
    if file.metadata()?.ino() != ino {
        return Err(io::Error::other("the context's memfd is gone"));
    }
    // Checks the file's size first: it cannot shrink under the mapping.
    let view = View::map(file, 0, len)?;
    Ok(MappedContext { view })
}

fn parse_place(place: &[u8]) -> Option<(u32, u64, u64)> {
    if place.len() != PLACE_BYTES {
        return None;
    }
    let fd = u32::from_le_bytes(place[..4].try_into().ok()?);
    let len = u64::from_le_bytes(place[4..12].try_into().ok()?);
    let ino = u64::from_le_bytes(place[12..20].try_into().ok()?);
    Some((fd, len, ino))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bulk::DATA_AT;

    fn encode(len: usize, beside: bool) -> (Vec<u8>, Option<ContextFile>) {
        let value = serde_bytes::ByteBuf::from(vec![7; len]);
        encode_context(3, beside, |w| protocol::encode_with(&value, w)).unwrap()
    }

    #[test]
    fn short_values_and_pools_without_shared_memory_stay_inline() {
        let (frame, file) = encode(100, true);
        assert!(file.is_none());
        assert_eq!(frame[protocol::LEN_BYTES], protocol::CONTEXT);
        let (frame, file) = encode(CONTEXT_BESIDE_MIN, false);
        assert!(file.is_none());
        assert!(frame.len() > CONTEXT_BESIDE_MIN);
    }

    #[test]
    #[cfg_attr(
        not(buckshot_native),
        ignore = "memfds: the portable backend sends contexts inline"
    )]
    fn a_long_value_goes_beside_its_frame_whole() {
        let (inline, _) = encode(CONTEXT_BESIDE_MIN + 5, false);
        let (frame, file) = encode(CONTEXT_BESIDE_MIN + 5, true);
        let file = file.expect("beside");
        assert_eq!(frame[protocol::LEN_BYTES], protocol::CONTEXT_BESIDE);
        let (id, place) = protocol::parse_context(&frame[protocol::LEN_BYTES..]).unwrap();
        assert_eq!(id, 3);
        let (fd, len, _) = parse_place(place).unwrap();
        assert_eq!(fd as i32, file.file.as_raw_fd());
        let (_, value) = protocol::parse_context(&inline[protocol::LEN_BYTES..]).unwrap();
        assert_eq!(len as usize, value.len());
        assert_eq!(file.len(), value.len());
        assert_eq!(file.inline_len(&frame), inline.len());
        let view = View::map(&file.file, 0, len).unwrap();
        assert_eq!(view.data(), value);
    }

    #[test]
    #[cfg_attr(
        not(buckshot_native),
        ignore = "memfds: the portable backend sends contexts inline"
    )]
    fn a_place_that_names_another_file_or_runs_past_its_end_is_refused() {
        let (frame, file) = encode(CONTEXT_BESIDE_MIN, true);
        let file = file.expect("beside").file;
        let (_, place) = protocol::parse_context(&frame[protocol::LEN_BYTES..]).unwrap();
        let (_, len, ino) = parse_place(place).unwrap();
        let mapped = map_checked(&file, len, ino).unwrap();
        assert_eq!(mapped.as_ref().len() as u64, len);
        // Another memfd under the same number: refused, not read.
        let other = Region::create(2 * DATA_AT as u64).unwrap();
        assert!(map_checked(&other, 1, ino).is_err());
        // Past the file's end: refused before mapping (no SIGBUS).
        let size = file.metadata().unwrap().len();
        let past = size - DATA_AT as u64 + 1;
        assert!(map_checked(&file, past, ino).is_err());
        assert!(map_checked(&file, u64::MAX, ino).is_err());
    }

    #[test]
    fn a_malformed_place_is_refused() {
        assert!(parse_place(&[0; PLACE_BYTES - 1]).is_none());
        assert!(map_context(&[0; PLACE_BYTES + 1]).is_err());
    }
}
