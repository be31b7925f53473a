//! Large strings beside the frames, through shared memory.
//!
//! It sits above the protocol: `protocol` knows the tags of such items and
//! plain CBOR, and this module is the encoder that the caller's side
//! ([`InputFrame`], [`decode_outcome`]) and a worker ([`encode_ok`],
//! [`decode_input`]) choose when long strings may go beside.
//!
//! Encoding a 64 MiB byte string into a frame, sending it through a pipe
//! and decoding it copies it four times, three of them into fresh memory
//! (whose page faults cost as much as the copy). So between a pool and
//! its local workers, every string of at least [`BULK_MIN`] bytes leaves
//! its item: the encoder copies it into a memfd instead, and the item
//! carries a table that says where the strings go back in ("holes"); the
//! decoder reads them from a read-only mapping of that memfd. What is left
//! is one copy into memory that stays mapped between items, and the
//! decoder's copy into the value it builds.
//!
//! - [`splice`]: the diverting encoder, an item's table of holes, and the
//!   reader that puts the strings back.
//! - [`inputs`]: the pool's callers copy into segments, memfds the pool
//!   owns and reuses, and a worker maps the one an item names through
//!   `/proc/<pool>/fd/<n>`. A segment lives as long as the chunk whose item
//!   names it (answered, or failed), so it is never reused while a worker
//!   may read it.
//! - [`outputs`]: each worker has a memfd of three reply slots that the
//!   pool made for it. The worker fills a free one and marks it with a
//!   generation number that its item carries; the delivery that carries
//!   the item holds a lease that frees the slot once decoded (or dropped).
//!   When none is free, the output goes inline, as it would anyway.
//! - [`context`]: a long context's value, encoded once into a memfd that
//!   lives as long as the context; each worker maps it and decodes from
//!   the mapping.
//!
//! Memfds are sealed against shrinking, so a mapping never outlives its
//! file's end (which would be a SIGBUS); every length in a table is checked
//! against the file's size and the frame limit, and nothing past the frame
//! limit is diverted. The portable backend has no memfds: there, as with
//! workers started elsewhere (ssh, srun) or sandboxed,
//! pools that keep failures or a journal, and programs under a file size
//! limit or not dumpable send everything inline.

mod context;
mod inputs;
mod outputs;
mod splice;

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::ptr::NonNull;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use rustix::mm::{MapFlags, ProtFlags};

pub(crate) use self::context::{ContextFile, encode_context, map_context};
pub(crate) use self::inputs::{InputFrame, Segment, Segments, decode_input};
pub(crate) use self::outputs::{
    ReplySlots, SlotLease, decode_outcome, discard_output, encode_ok, output_beside,
};
use self::splice::{Spliced, Table};

/// Strings at least this long travel beside their item.
pub(crate) const BULK_MIN: usize = 4 << 20;
/// A memfd's first page holds its header (a reply slot's state); its data
/// start after it.
pub(super) const DATA_AT: usize = 4096;
/// Memfds grow by this much at least.
const GROW: usize = 1 << 20;
/// A shared mapping, unmapped when dropped.
pub(super) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: a mapping is plain memory; who may touch it when is up to its
// owner (`Region`, `View`, `SlotLease`), which are used from one thread at a
// time or only through atomics.
unsafe impl Send for Mapping {}
// SAFETY: as above: shared access goes through the header's atomic only.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes of `file` from `offset` (page-aligned).
    pub(super) fn new(file: &File, offset: u64, len: usize, writable: bool) -> io::Result<Mapping> {
        let prot = if writable {
            ProtFlags::READ | ProtFlags::WRITE
        } else {
            ProtFlags::READ
        };
        // SAFETY: mmap of a file we hold, at a fresh address of the
        // kernel's choice; nothing else refers to that range.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                MapFlags::SHARED,
                file.as_fd(),
                offset,
            )?
        };
        let ptr = NonNull::new(ptr.cast::<u8>()).expect("mmap never returns null");
        Ok(Mapping { ptr, len })
    }

    /// The header: a reply slot's state.
    pub(super) fn state(&self) -> &AtomicU64 {
        // SAFETY: every mapping covers at least the first page, which is
        // page-aligned; an AtomicU64 at its start is in bounds and aligned,
        // and is only ever accessed atomically by either process.
        unsafe { self.ptr.cast::<AtomicU64>().as_ref() }
    }

    /// The data after the header page, which the header's atomic never
    /// overlaps.
    fn data(&self) -> &[u8] {
        // SAFETY: `len` bytes are mapped (at least the header page), and the
        // file is sealed against shrinking, so they stay backed. Only the
        // side that owns a fill writes it; a task that writes it anyway
        // through its worker's descriptor can only garble bytes, which the
        // decoder checks like any input.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(DATA_AT), self.len - DATA_AT) }
    }

    fn data_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, mapped writable; the writer is the segment's
        // owner, or a worker holding a free slot.
        unsafe {
            std::slice::from_raw_parts_mut(self.ptr.as_ptr().add(DATA_AT), self.len - DATA_AT)
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: this range was mapped by `new` and nothing refers to it
        // any more (every borrow of it ended with its owner's).
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// A memfd sealed against shrinking, mapped writable from `base` on, the
/// mapping grown on demand.
pub(super) struct Region {
    pub(super) file: File,
    base: u64,
    pub(super) map: Mapping,
}

impl Region {
    /// A new memfd of `size` bytes (sparse: pages exist once written).
    pub(super) fn create(size: u64) -> io::Result<File> {
        crate::sys::memfd(size)
    }

    pub(super) fn new(file: File, base: u64) -> io::Result<Region> {
        let map = Mapping::new(&file, base, DATA_AT, true)?;
        Ok(Region { file, base, map })
    }

    /// Room for `len` data bytes, growing the file if it must.
    pub(super) fn reserve(&mut self, len: usize) -> io::Result<()> {
        let needed = DATA_AT + len;
        if needed <= self.map.len {
            return Ok(());
        }
        // Doubling, within the frame limit's 4 GiB (slots are 8 GiB apart).
        let size = needed
            .max(self.map.len * 2)
            .next_multiple_of(GROW)
            .min(needed.next_multiple_of(GROW).max(1 << 32));
        let end = self.base + size as u64;
        if self.file.metadata()?.len() < end {
            self.file.set_len(end)?;
        }
        self.map = Mapping::new(&self.file, self.base, size, true)?;
        Ok(())
    }

    pub(super) fn data_mut(&mut self) -> &mut [u8] {
        self.map.data_mut()
    }
}

/// Where one item's diverted strings go.
pub(crate) trait Sink {
    /// Takes `bytes` at `offset` in its data, or says no (they go inline).
    fn put(&mut self, offset: usize, bytes: &[u8]) -> io::Result<bool>;
}

/// A read-only mapping of a memfd's first `DATA_AT + len` bytes, checked
/// against its size first.
pub(crate) struct View(Mapping);

impl View {
    /// Maps the header and `len` data bytes of the region at `base`.
    pub(crate) fn map(file: &File, base: u64, len: u64) -> io::Result<View> {
        let needed = (DATA_AT as u64).saturating_add(len);
        if file.metadata()?.len() < base.saturating_add(needed) {
            return Err(io::Error::other("bulk data runs past its memfd"));
        }
        let needed = usize::try_from(needed).map_err(io::Error::other)?;
        Ok(View(Mapping::new(file, base, needed, false)?))
    }

    pub(crate) fn data(&self) -> &[u8] {
        self.0.data()
    }

    /// The reader of `table`'s item, whose CBOR is `cbor`.
    pub(crate) fn splice<'a>(
        &'a self,
        table: &'a Table,
        cbor: &'a [u8],
    ) -> io::Result<Spliced<'a>> {
        Spliced::new(table, cbor, self.data())
    }
}

/// Whether this process's memfds can be opened by its workers through
/// `/proc/<pid>/fd`: it must be dumpable (the kernel checks ptrace read
/// access), and `/proc` must show them. And whether files may be as large
/// as reply slots are sparse: past a file size limit (`ulimit -f`), the
/// kernel would end the program with SIGXFSZ.
///
/// That `/proc` shows them is probed once per process, by opening a memfd
/// of its own through it (a memfd, an open and two closes, at every
/// `build()` before); a failed probe, which may be passing (no descriptor
/// left), is tried again next time.
pub(crate) fn available_here() -> bool {
    static SHOWN_IN_PROC: AtomicBool = AtomicBool::new(false);
    let unlimited = rustix::process::getrlimit(rustix::process::Resource::Fsize)
        .current
        .is_none();
    let shown = || {
        SHOWN_IN_PROC.load(Ordering::Relaxed)
            || Region::create(0).is_ok_and(|file| {
                let fd = u32::try_from(file.as_raw_fd()).expect("a descriptor");
                let opened = crate::sys::open_peer_fd(std::process::id(), fd, false).is_ok();
                SHOWN_IN_PROC.store(opened, Ordering::Relaxed);
                opened
            })
    };
    crate::sys::SHARED_MEMORY && unlimited && dumpable() && shown()
}

/// Whether this process is dumpable: a program may turn that off (or drop
/// privileges, which does) after its pool was built, and then its workers
/// could not open the inputs' memfds.
pub(crate) fn dumpable() -> bool {
    crate::sys::dumpable()
}

// ---------------------------------------------------------------------------
// A worker's link to its pool.
// ---------------------------------------------------------------------------

/// The pool's pid, for `/proc/<pool>/fd/<n>`, the frame limit and the
/// pool's fd of this worker's reply slots; set when this process serves as
/// a local worker with bulk transfers.
pub(super) static POOL: OnceLock<(u32, u64, u32)> = OnceLock::new();
/// Opens a memfd of the pool.
pub(super) fn open_pools(fd: u32, write: bool) -> io::Result<File> {
    let (pool, _, _) = POOL
        .get()
        .ok_or_else(|| io::Error::other("no bulk transfers in this worker"))?;
    crate::sys::open_peer_fd(*pool, fd, write)
}

/// Sets up bulk transfers in a worker whose pool is `pool` and whose reply
/// slots are in the pool's fd `slots`; `limit`: the frame limit. The slots
/// are opened at the first long output.
pub(crate) fn serve(pool: u32, slots: u32, limit: u64) {
    let _ = POOL.set((pool, limit, slots));
    outputs::enable();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg_attr(
        not(buckshot_native),
        ignore = "memfds: the portable backend sends long strings inline"
    )]
    fn a_view_never_maps_past_the_end_of_its_memfd() {
        let mut region = Region::new(Region::create(0).unwrap(), 0).unwrap();
        region.reserve(100).unwrap();
        region.data_mut()[..3].copy_from_slice(b"abc");
        let size = region.file.metadata().unwrap().len();
        let fits = size - DATA_AT as u64;
        let view = View::map(&region.file, 0, fits).unwrap();
        assert_eq!(&view.data()[..3], b"abc");
        assert!(View::map(&region.file, 0, fits + 1).is_err());
        // Sealed: nobody can shrink it under a mapping.
        assert!(region.file.set_len(0).is_err());
    }
}
