//! Large strings beside the frames, through shared memory.
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
//! - Inputs: the pool's callers copy into [`Segment`]s, memfds the pool
//!   owns and reuses, and a worker maps the one an item names through
//!   `/proc/<pool>/fd/<n>`. A segment lives as long as the chunk whose
//!   item names it (answered, or failed), so it is never reused while a
//!   worker may read it.
//! - Outputs: each worker has a [`ReplySlot`], a memfd the pool made for it.
//!   The worker fills it only while it is free, and marks it full with a
//!   generation number that its item carries; the pool's caller decodes it
//!   and frees it ([`SlotLease`]). When it is not free, the output goes
//!   inline, as it would anyway.
//!
//! Both memfds are sealed against shrinking, so a mapping never outlives
//! its file's end (which would be a SIGBUS); every length in a table is
//! checked against the file's size and the frame limit before it is read.
//! Workers started elsewhere (ssh, srun) get none of this.

use std::cell::RefCell;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};

use rustix::fs::{MemfdFlags, SealFlags};
use rustix::mm::{MapFlags, ProtFlags};

/// Strings at least this long travel beside their item.
pub(crate) const BULK_MIN: usize = 4 << 20;
/// First byte of an input item whose strings travel beside it: never the
/// first byte of a CBOR value (it is the "break" code).
pub(crate) const INPUT_MARK: u8 = 0xFF;
/// A memfd's first page holds its header (a reply slot's state); its data
/// start after it.
const DATA_AT: usize = 4096;
/// Memfds grow by this much at least.
const GROW: usize = 1 << 20;
/// Free segments kept for reuse: their pages stay faulted in.
const SPARE_SEGMENTS: usize = 4;
const SPARE_BYTES: usize = 256 << 20;

/// A shared mapping, unmapped when dropped.
struct Mapping {
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
    fn new(file: &File, offset: u64, len: usize, writable: bool) -> io::Result<Mapping> {
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
    fn state(&self) -> &AtomicU64 {
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
struct Region {
    file: File,
    base: u64,
    map: Mapping,
}

impl Region {
    /// A new memfd of `size` bytes (sparse: pages exist once written).
    fn create(size: u64) -> io::Result<File> {
        let fd = rustix::fs::memfd_create(
            "buckshot-bulk",
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        )?;
        let file = File::from(fd);
        file.set_len(size)?;
        rustix::fs::fcntl_add_seals(&file, SealFlags::SHRINK | SealFlags::SEAL)?;
        Ok(file)
    }

    fn new(file: File, base: u64) -> io::Result<Region> {
        let map = Mapping::new(&file, base, DATA_AT, true)?;
        Ok(Region { file, base, map })
    }

    /// Room for `len` data bytes, growing the file if it must.
    fn reserve(&mut self, len: usize) -> io::Result<()> {
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

    fn data_mut(&mut self) -> &mut [u8] {
        self.map.data_mut()
    }
}

/// Where one item's diverted strings go.
pub(crate) trait Sink {
    /// Takes `bytes` at `offset` in its data, or says no (they go inline).
    fn put(&mut self, offset: usize, bytes: &[u8]) -> io::Result<bool>;
}

/// A writer for the CBOR encoder that diverts long strings to a sink and
/// notes where they were.
struct Diverting<'a> {
    out: &'a mut Vec<u8>,
    start: usize,
    sink: &'a mut dyn Sink,
    holes: Vec<Hole>,
    diverted: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Hole {
    /// Where in the item's CBOR the string's bytes go back.
    at: u32,
    len: u64,
}

impl Write for Diverting<'_> {
    #[inline]
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let diverted = buf.len() >= BULK_MIN && self.sink.put(self.diverted, buf)?;
        if diverted {
            let at = u32::try_from(self.out.len() - self.start)
                .map_err(|_| io::Error::other("item is larger than 4 GiB"))?;
            self.holes.push(Hole {
                at,
                len: buf.len() as u64,
            });
            self.diverted += buf.len();
        } else {
            self.out.extend_from_slice(buf);
        }
        Ok(buf.len())
    }

    // The encoder writes every piece whole: no need for the default's loop.
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.write(buf).map(drop)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The table before an item's CBOR: `holes:u32 region:u32 generation:u64`
/// then `at:u32 len:u64` per hole.
const TABLE_HEAD: usize = 16;
const TABLE_ENTRY: usize = 12;

/// What an item's table says.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Table {
    holes: Vec<Hole>,
    /// The memfd: the pool's fd number of an input's segment.
    pub region: u32,
    /// The fill of a reply slot.
    pub generation: u64,
}

impl Table {
    /// Bytes diverted in all.
    pub(crate) fn total(&self) -> u64 {
        self.holes
            .iter()
            .fold(0u64, |total, hole| total.saturating_add(hole.len))
    }

    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&(self.holes.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.region.to_le_bytes());
        out.extend_from_slice(&self.generation.to_le_bytes());
        for hole in &self.holes {
            out.extend_from_slice(&hole.at.to_le_bytes());
            out.extend_from_slice(&hole.len.to_le_bytes());
        }
    }

    /// Parses a table and returns it with the CBOR after it, checking that
    /// holes are in order and inside the CBOR, and that they add up to at
    /// most `limit` bytes.
    pub(crate) fn parse(item: &[u8], limit: u64) -> Result<(Table, &[u8]), String> {
        let u32_at = |at: usize| u32::from_le_bytes(item[at..at + 4].try_into().expect("4"));
        let u64_at = |at: usize| u64::from_le_bytes(item[at..at + 8].try_into().expect("8"));
        if item.len() < TABLE_HEAD {
            return Err("truncated bulk table".into());
        }
        let count = u32_at(0) as usize;
        let cbor_at = count
            .checked_mul(TABLE_ENTRY)
            .and_then(|n| n.checked_add(TABLE_HEAD))
            .filter(|&end| end <= item.len())
            .ok_or("truncated bulk table")?;
        let cbor = &item[cbor_at..];
        let mut holes = Vec::with_capacity(count);
        let mut total = 0u64;
        for k in 0..count {
            let entry = TABLE_HEAD + k * TABLE_ENTRY;
            let hole = Hole {
                at: u32_at(entry),
                len: u64_at(entry + 4),
            };
            if holes.last().is_some_and(|last: &Hole| hole.at < last.at)
                || hole.at as usize > cbor.len()
            {
                return Err("bulk table out of order".into());
            }
            total = total.saturating_add(hole.len);
            holes.push(hole);
        }
        if total > limit {
            return Err(format!(
                "{total} bytes beside the item, over the frame limit of {limit}"
            ));
        }
        let table = Table {
            holes,
            region: u32_at(4),
            generation: u64_at(8),
        };
        Ok((table, cbor))
    }
}

/// Encodes `value` at the end of `out` (an item being written), diverting
/// long strings to `sink`. Returns the table of what was diverted, which
/// the caller writes before the CBOR with [`insert_table`], or `None` if
/// nothing was.
pub(crate) fn encode_diverting<T: serde::Serialize + ?Sized>(
    value: &T,
    out: &mut Vec<u8>,
    sink: &mut dyn Sink,
) -> Result<Option<Table>, crate::error::BoxError> {
    let start = out.len();
    let mut writer = Diverting {
        out,
        start,
        sink,
        holes: Vec::new(),
        diverted: 0,
    };
    crate::protocol::encode_with(value, &mut writer)?;
    if writer.holes.is_empty() {
        return Ok(None);
    }
    Ok(Some(Table {
        holes: writer.holes,
        region: 0,
        generation: 0,
    }))
}

/// Writes `table` at `at` in `out`, before the CBOR that follows (which is
/// short: its long strings are elsewhere).
pub(crate) fn insert_table(out: &mut Vec<u8>, at: usize, table: &Table) {
    let mut bytes = Vec::with_capacity(TABLE_HEAD + TABLE_ENTRY * table.holes.len());
    table.write(&mut bytes);
    out.splice(at..at, bytes);
}

/// Reads an item's CBOR with its diverted strings put back.
pub(crate) struct Spliced<'a> {
    cbor: &'a [u8],
    holes: &'a [Hole],
    data: &'a [u8],
    /// Read so far: of the CBOR, of the holes, of the current hole.
    at: usize,
    hole: usize,
    data_at: usize,
    in_hole: u64,
}

impl<'a> Spliced<'a> {
    /// `data`: the memfd's data, checked to hold every hole.
    fn new(table: &'a Table, cbor: &'a [u8], data: &'a [u8]) -> io::Result<Spliced<'a>> {
        if table.total() > data.len() as u64 {
            return Err(io::Error::other("bulk data shorter than its table"));
        }
        Ok(Spliced {
            cbor,
            holes: &table.holes,
            data,
            at: 0,
            hole: 0,
            data_at: 0,
            in_hole: 0,
        })
    }
}

impl Read for Spliced<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while let Some(hole) = self.holes.get(self.hole) {
            if hole.at as usize != self.at {
                break;
            }
            let left = hole.len - self.in_hole;
            if left == 0 {
                self.hole += 1;
                self.in_hole = 0;
                continue;
            }
            let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            buf[..n].copy_from_slice(&self.data[self.data_at..self.data_at + n]);
            self.data_at += n;
            self.in_hole += n as u64;
            return Ok(n);
        }
        let end = self
            .holes
            .get(self.hole)
            .map_or(self.cbor.len(), |hole| hole.at as usize);
        let n = buf.len().min(end - self.at);
        buf[..n].copy_from_slice(&self.cbor[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
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

// ---------------------------------------------------------------------------
// Inputs: the pool's segments.
// ---------------------------------------------------------------------------

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

/// Whether this process's memfds can be opened by its workers through
/// `/proc/<pid>/fd`: it must be dumpable (the kernel checks ptrace read
/// access), and `/proc` must show them. And whether files may be as large
/// as reply slots are sparse: past a file size limit (`ulimit -f`), the
/// kernel would end the program with SIGXFSZ.
pub(crate) fn available_here() -> bool {
    let unlimited = rustix::process::getrlimit(rustix::process::Resource::Fsize)
        .current
        .is_none();
    unlimited
        && dumpable()
        && Region::create(0).is_ok_and(|file| {
            let path = format!("/proc/self/fd/{}", file.as_raw_fd());
            File::open(path).is_ok()
        })
}

/// Whether this process is dumpable: a program may turn that off (or drop
/// privileges, which does) after its pool was built, and then its workers
/// could not open the inputs' memfds.
pub(crate) fn dumpable() -> bool {
    // SAFETY: PR_GET_DUMPABLE takes no pointer and only returns a flag.
    unsafe { libc::prctl(libc::PR_GET_DUMPABLE) == 1 }
}

// ---------------------------------------------------------------------------
// The worker's side.
// ---------------------------------------------------------------------------

/// The pool's pid, for `/proc/<pool>/fd/<n>`, the frame limit and the
/// pool's fd of this worker's reply slots; set when this process serves as
/// a local worker with bulk transfers.
static POOL: OnceLock<(u32, u64, u32)> = OnceLock::new();
/// Whether this worker has reply slots: outputs are encoded plainly, with
/// no diverting writer, when it has none.
static SLOTS_ON: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// The worker's reply slots and their last generation, on the thread
    /// that runs tasks (the worker's main thread): no lock per output.
    static SLOTS: RefCell<Option<Slots>> = const { RefCell::new(None) };
}

struct Slots {
    regions: Vec<Region>,
    generation: u64,
}

/// Opens a memfd of the pool.
fn open_pools(fd: u32, write: bool) -> io::Result<File> {
    let (pool, _, _) = POOL
        .get()
        .ok_or_else(|| io::Error::other("no bulk transfers in this worker"))?;
    std::fs::OpenOptions::new()
        .read(true)
        .write(write)
        .open(format!("/proc/{pool}/fd/{fd}"))
}

/// Sets up bulk transfers in a worker whose pool is `pool` and whose reply
/// slots are in the pool's fd `slots`; `limit`: the frame limit. The slots
/// are opened at the first long output.
pub(crate) fn serve(pool: u32, slots: u32, limit: u64) {
    let _ = POOL.set((pool, limit, slots));
    SLOTS_ON.store(true, Ordering::Relaxed);
}

/// Opens the reply slots; `None` (and outputs inline from then on) if the
/// pool's memfd cannot be reached.
fn open_slots() -> Option<Slots> {
    let opened = POOL
        .get()
        .ok_or_else(|| io::Error::other("no reply slots"))
        .and_then(|&(_, _, slots)| open_pools(slots, true))
        .and_then(|file| {
            (0..SLOTS_PER_WORKER)
                .map(|k| Region::new(file.try_clone()?, slot_base(k)))
                .collect::<io::Result<Vec<_>>>()
        });
    match opened {
        Ok(regions) => Some(Slots {
            regions,
            generation: 0,
        }),
        Err(e) => {
            SLOTS_ON.store(false, Ordering::Relaxed);
            eprintln!("buckshot worker: no shared memory for long outputs: {e}");
            None
        }
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

/// Bytes of an outcome item's strings in a reply slot (0 for none).
pub(crate) fn output_beside(item: &[u8]) -> usize {
    output_table(item).map_or(0, |table| table.total() as usize)
}

/// Frees the reply slot an outcome item filled, if it did: the item will
/// not be sent.
pub(crate) fn discard_output(item: &[u8]) {
    let Some(table) = output_table(item) else {
        return;
    };
    SLOTS.with_borrow(|slots| {
        let region = slots.as_ref()?.regions.get(table.region as usize)?;
        region.map.state().store(0, Ordering::Release);
        Some(())
    });
}

fn output_table(item: &[u8]) -> Option<Table> {
    if !crate::protocol::is_bulk_outcome(item) {
        return None;
    }
    Table::parse(&item[1..], u64::MAX)
        .ok()
        .map(|(table, _)| table)
}

/// The reply slots, as a sink for one output: the first free one takes
/// its strings, chosen at the first long one (most outputs have none, and
/// never touch the slots).
#[derive(Default)]
struct SlotSink {
    chosen: Option<usize>,
}

impl Sink for SlotSink {
    fn put(&mut self, offset: usize, bytes: &[u8]) -> io::Result<bool> {
        SLOTS.with_borrow_mut(|slots| {
            if slots.is_none() {
                *slots = open_slots();
            }
            let Some(slots) = slots else {
                return Ok(false);
            };
            if self.chosen.is_none() {
                let free = |region: &Region| region.map.state().load(Ordering::Acquire) == 0;
                self.chosen = slots.regions.iter().position(free);
            }
            let Some(k) = self.chosen else {
                return Ok(false);
            };
            // Past the frame limit it goes inline, where the limit refuses
            // it; and a slot never grows into the next one.
            let limit = POOL.get().map_or(0, |&(_, limit, _)| limit);
            if (offset + bytes.len()) as u64 > limit {
                return Ok(false);
            }
            let slot = &mut slots.regions[k];
            if slot.reserve(offset + bytes.len()).is_err() {
                // Out of memory (a memory limit): the string goes inline.
                return Ok(false);
            }
            slot.data_mut()[offset..offset + bytes.len()].copy_from_slice(bytes);
            Ok(true)
        })
    }
}

/// Encodes an output after its outcome tag (the last byte of `out`),
/// diverting its long strings to a free reply slot if there is one; then
/// the tag becomes `bulk_tag` and the table follows it.
pub(crate) fn encode_output<T: serde::Serialize + ?Sized>(
    value: &T,
    out: &mut Vec<u8>,
    bulk_tag: u8,
) -> Result<(), crate::error::BoxError> {
    if !SLOTS_ON.load(Ordering::Relaxed) {
        return crate::protocol::encode(value, out);
    }
    let tag_at = out.len() - 1;
    let mut sink = SlotSink::default();
    let Some(mut table) = encode_diverting(value, out, &mut sink)? else {
        return Ok(());
    };
    let k = sink.chosen.expect("diverted strings have a slot");
    let generation = SLOTS.with_borrow_mut(|slots| {
        let slots = slots.as_mut().expect("a slot took them");
        slots.generation += 1;
        slots.regions[k]
            .map
            .state()
            .store(slots.generation, Ordering::Release);
        slots.generation
    });
    table.region = k as u32;
    table.generation = generation;
    out[tag_at] = bulk_tag;
    insert_table(out, tag_at + 1, &table);
    Ok(())
}

// ---------------------------------------------------------------------------
// Outputs, the pool's side.
// ---------------------------------------------------------------------------

/// Reply slots per worker: one being decoded while the worker fills the
/// next, and one to spare.
const SLOTS_PER_WORKER: usize = 3;
/// Where slot `k` starts in its memfd: far enough apart for any item (the
/// frame limit is a `u32`), sparse, so only written pages take memory.
fn slot_base(k: usize) -> u64 {
    k as u64 * (8 << 30)
}

/// A worker's reply slots, as the pool holds them: the memfd, and each
/// slot's header once a reply names one (most workers never fill one, and
/// a fresh process per input must not pay for mappings).
pub(crate) struct ReplySlot {
    file: File,
    headers: OnceLock<Vec<Mapping>>,
}

impl std::fmt::Debug for ReplySlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ReplySlot")
            .field(&self.file.as_raw_fd())
            .finish()
    }
}

impl ReplySlot {
    pub(crate) fn create() -> io::Result<ReplySlot> {
        let file = Region::create(slot_base(SLOTS_PER_WORKER))?;
        Ok(ReplySlot {
            file,
            headers: OnceLock::new(),
        })
    }

    /// Its fd number, which the worker opens through `/proc`.
    pub(crate) fn fd(&self) -> u32 {
        self.file.as_raw_fd() as u32
    }

    /// Slot `k`'s state; `None` for no such slot, or if its header could
    /// not be mapped.
    fn state(&self, k: u32) -> Option<&AtomicU64> {
        if self.headers.get().is_none() {
            let mapped = (0..SLOTS_PER_WORKER)
                .map(|k| Mapping::new(&self.file, slot_base(k), DATA_AT, true))
                .collect::<io::Result<Vec<_>>>();
            // Kept only if it worked, so that a passing failure is retried.
            // Another thread may have mapped them meanwhile: either will do.
            let _ = self.headers.set(mapped.ok()?);
        }
        self.headers.get()?.get(k as usize).map(Mapping::state)
    }
}

/// The right to decode and then free the reply slots that a delivery's
/// items fill: it frees them when it goes, decoded or not.
pub(crate) struct SlotLease {
    slots: Arc<ReplySlot>,
    held: Vec<u32>,
}

impl std::fmt::Debug for SlotLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlotLease")
            .field("slots", &self.slots)
            .field("held", &self.held)
            .finish()
    }
}

impl SlotLease {
    /// The lease on the slots that `items` (reply items) fill, if any.
    pub(crate) fn of(slots: &Arc<ReplySlot>, items: &[u8]) -> Option<SlotLease> {
        let held: Vec<u32> = crate::protocol::Items::new(items)
            .filter_map(Result::ok)
            .filter(|item| crate::protocol::is_bulk_outcome(item))
            .filter_map(|item| Table::parse(&item[1..], u64::MAX).ok())
            .map(|(table, _)| table.region)
            .collect();
        (!held.is_empty()).then(|| SlotLease {
            slots: Arc::clone(slots),
            held,
        })
    }

    /// Decodes an output item's CBOR whose table is `table`.
    pub(crate) fn decode<T: serde::de::DeserializeOwned>(
        &self,
        table: &Table,
        cbor: &[u8],
        scratch: &mut [u8],
    ) -> Result<T, crate::error::BoxError> {
        let state = self
            .slots
            .state(table.region)
            .map(|s| s.load(Ordering::Acquire));
        if !self.held.contains(&table.region) || state != Some(table.generation) {
            return Err(Box::new(io::Error::other(
                "bulk output no longer in its slot",
            )));
        }
        let base = slot_base(table.region as usize);
        let view = View::map(&self.slots.file, base, table.total())?;
        crate::protocol::decode_from(view.splice(table, cbor)?, scratch)
    }
}

impl Drop for SlotLease {
    fn drop(&mut self) {
        // The items that filled them are done with them.
        for &k in &self.held {
            if let Some(state) = self.slots.state(k) {
                state.store(0, Ordering::Release);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};

    /// Keeps diverted strings in memory, as a memfd would.
    #[derive(Default)]
    struct Memory(Vec<u8>);

    impl Sink for Memory {
        fn put(&mut self, offset: usize, bytes: &[u8]) -> io::Result<bool> {
            assert_eq!(
                offset,
                self.0.len(),
                "strings are laid out one after another"
            );
            self.0.extend_from_slice(bytes);
            Ok(true)
        }
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Mixed {
        head: u32,
        #[serde(with = "serde_bytes")]
        first: Vec<u8>,
        middle: String,
        text: String,
        #[serde(with = "serde_bytes")]
        last: Vec<u8>,
    }

    fn mixed() -> Mixed {
        Mixed {
            head: 7,
            first: (0..BULK_MIN + 3).map(|i| (i % 251) as u8).collect(),
            middle: "short".to_owned(),
            text: "x".repeat(BULK_MIN),
            last: vec![9; BULK_MIN * 2],
        }
    }

    /// Encodes with diversion, then decodes through `Spliced` with reads of
    /// every size the decoder's scratch allows.
    #[test]
    fn long_strings_leave_the_item_and_come_back_in_place() {
        let value = mixed();
        let mut out = vec![0xAA];
        let mut memory = Memory::default();
        let table = encode_diverting(&value, &mut out, &mut memory)
            .unwrap()
            .expect("three strings diverted");
        assert_eq!(table.holes.len(), 3);
        assert_eq!(table.total() as usize, memory.0.len());
        assert!(out.len() < 100, "only the short parts stay: {}", out.len());
        insert_table(&mut out, 1, &table);
        assert_eq!(out[0], 0xAA, "what came before the item is untouched");
        let (parsed, cbor) = Table::parse(&out[1..], u64::MAX).unwrap();
        assert_eq!(parsed, table);
        for scratch in [64, 4096, 1 << 20] {
            let reader = Spliced::new(&parsed, cbor, &memory.0).unwrap();
            let back: Mixed = crate::protocol::decode_from(reader, &mut vec![0; scratch]).unwrap();
            assert_eq!(back, value, "scratch {scratch}");
        }
    }

    #[test]
    fn short_strings_stay_inline() {
        let mut out = Vec::new();
        let mut memory = Memory::default();
        let value = vec![1u8; BULK_MIN - 1];
        assert!(
            encode_diverting(&value, &mut out, &mut memory)
                .unwrap()
                .is_none()
        );
        assert!(memory.0.is_empty());
    }

    /// A sink that refuses (a busy slot) leaves the value inline.
    #[test]
    fn a_refusing_sink_leaves_everything_inline() {
        struct Busy;
        impl Sink for Busy {
            fn put(&mut self, _: usize, _: &[u8]) -> io::Result<bool> {
                Ok(false)
            }
        }
        let value = mixed();
        let mut out = Vec::new();
        assert!(
            encode_diverting(&value, &mut out, &mut Busy)
                .unwrap()
                .is_none()
        );
        let back: Mixed = crate::protocol::decode(&out, &mut [0; 64]).unwrap();
        assert_eq!(back, value);
    }

    #[test]
    fn tables_are_checked() {
        let table = Table {
            holes: vec![Hole { at: 0, len: 10 }, Hole { at: 2, len: 5 }],
            region: 3,
            generation: 4,
        };
        let mut item = Vec::new();
        table.write(&mut item);
        item.extend_from_slice(&[1, 2, 3]);
        let (parsed, cbor) = Table::parse(&item, 15).unwrap();
        assert_eq!((parsed, cbor), (table, &[1u8, 2, 3][..]));
        let over = Table::parse(&item, 14).unwrap_err();
        assert_eq!(over, "15 bytes beside the item, over the frame limit of 14");
        assert!(
            Table::parse(&item[..TABLE_HEAD + 3], 100).is_err(),
            "truncated"
        );
        assert!(Table::parse(&item[..5], 100).is_err(), "no head");
        // A hole past the end of the CBOR, and holes out of order.
        for (at, second) in [(9, 2), (0, 1)] {
            let bad = Table {
                holes: vec![Hole { at, len: 1 }, Hole { at: second, len: 1 }],
                region: 0,
                generation: 0,
            };
            let mut item = Vec::new();
            bad.write(&mut item);
            item.push(0);
            if at > second {
                assert!(Table::parse(&item, 100).is_err(), "{bad:?}");
            }
        }
        // More holes than the item holds entries for.
        let mut item = vec![0; TABLE_HEAD];
        item[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Table::parse(&item, u64::MAX).is_err());
    }

    #[test]
    fn data_shorter_than_the_table_is_refused() {
        let table = Table {
            holes: vec![Hole { at: 0, len: 10 }],
            region: 0,
            generation: 0,
        };
        assert!(Spliced::new(&table, &[], &[0; 9]).is_err());
    }

    #[test]
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

    #[test]
    fn a_lease_frees_the_slots_its_items_filled() {
        let slots = Arc::new(ReplySlot::create().unwrap());
        let table = Table {
            holes: vec![Hole { at: 0, len: 1 }],
            region: 1,
            generation: 5,
        };
        slots.state(1).unwrap().store(5, Ordering::Release);
        slots.state(2).unwrap().store(6, Ordering::Release);
        let mut section = Vec::new();
        let mut item = vec![3];
        table.write(&mut item);
        item.push(0x41);
        crate::protocol::push_item(&mut section, &item);
        crate::protocol::push_item(&mut section, &[0, 1]);
        let lease = SlotLease::of(&slots, &section).expect("one item filled a slot");
        assert_eq!(lease.held, vec![1]);
        assert!(SlotLease::of(&slots, &section[section.len() - 6..]).is_none());
        drop(lease);
        assert_eq!(slots.state(1).unwrap().load(Ordering::Acquire), 0, "freed");
        assert_eq!(
            slots.state(2).unwrap().load(Ordering::Acquire),
            6,
            "not its slot"
        );
    }
}
