//! Outputs' long strings: a worker's reply slots, filled by the worker
//! as it encodes an output ([`encode_ok`]) and freed by the lease of the
//! delivery that carries the item, once the caller's side has decoded it
//! ([`decode_outcome`]).

use std::cell::RefCell;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use super::splice::{Table, encode_diverting, insert_table};
use super::{DATA_AT, Mapping, POOL, Region, Sink, View, open_pools};
use crate::error::BoxError;
use crate::protocol::{self, CodecError, OUTCOME_OK, OUTCOME_OK_BULK, Outcome};

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

/// Outputs may go to reply slots from now on (see `super::serve`).
pub(super) fn enable() {
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
    if !protocol::is_bulk_outcome(item) {
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

/// Appends a successful outcome (a worker's), its long strings in a free
/// reply slot if it has one: then its tag is [`OUTCOME_OK_BULK`] and the
/// table follows it. Otherwise it is plain ([`protocol::encode_ok`]). On
/// error, `out` may hold a partial value.
pub(crate) fn encode_ok<T: serde::Serialize + ?Sized>(
    value: &T,
    out: &mut Vec<u8>,
) -> Result<(), BoxError> {
    if !SLOTS_ON.load(Ordering::Relaxed) {
        return protocol::encode_ok(value, out);
    }
    let tag_at = out.len();
    out.push(OUTCOME_OK);
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
    out[tag_at] = OUTCOME_OK_BULK;
    insert_table(out, tag_at + 1, &table);
    Ok(())
}

/// Decodes an outcome (on the caller's side). One whose value has its
/// long strings in a reply slot is read through `lease`, the delivery's
/// right to that slot, its table checked against `limit`; any other is
/// plain ([`protocol::decode_outcome`]).
pub(crate) fn decode_outcome<T: serde::de::DeserializeOwned>(
    item: &[u8],
    scratch: &mut [u8],
    lease: Option<&SlotLease>,
    limit: u64,
) -> Result<Outcome<T>, BoxError> {
    match (item.split_first(), lease) {
        (Some((&OUTCOME_OK_BULK, rest)), Some(lease)) => {
            let (table, cbor) = Table::parse(rest, limit).map_err(CodecError)?;
            lease.decode(&table, cbor, scratch).map(Outcome::Ok)
        }
        _ => protocol::decode_outcome(item, scratch),
    }
}

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
pub(crate) struct ReplySlots {
    file: File,
    headers: OnceLock<Vec<Mapping>>,
}

impl std::fmt::Debug for ReplySlots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ReplySlots")
            .field(&self.file.as_raw_fd())
            .finish()
    }
}

impl ReplySlots {
    pub(crate) fn create() -> io::Result<ReplySlots> {
        let file = Region::create(slot_base(SLOTS_PER_WORKER))?;
        Ok(ReplySlots {
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
/// items fill: it frees them when it goes, decoded or not. A slot is known
/// by its generation too: one whose generation changed behind the pool's
/// back (a task can write the slots' memfd through its worker's
/// descriptor) holds another output, which is neither read as this one
/// nor freed.
pub(crate) struct SlotLease {
    slots: Arc<ReplySlots>,
    /// The slots and the generations their items name.
    held: Vec<(u32, u64)>,
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
    pub(crate) fn of(slots: &Arc<ReplySlots>, items: &[u8]) -> Option<SlotLease> {
        let held: Vec<(u32, u64)> = protocol::Items::new(items)
            .filter_map(Result::ok)
            .filter(|item| protocol::is_bulk_outcome(item))
            .filter_map(|item| Table::parse(&item[1..], u64::MAX).ok())
            .map(|(table, _)| (table.region, table.generation))
            .collect();
        (!held.is_empty()).then(|| SlotLease {
            slots: Arc::clone(slots),
            held,
        })
    }

    /// Decodes an output item's CBOR whose table is `table`.
    fn decode<T: serde::de::DeserializeOwned>(
        &self,
        table: &Table,
        cbor: &[u8],
        scratch: &mut [u8],
    ) -> Result<T, BoxError> {
        let state = self
            .slots
            .state(table.region)
            .map(|s| s.load(Ordering::Acquire));
        if !self.held.contains(&(table.region, table.generation)) || state != Some(table.generation)
        {
            return Err(Box::new(io::Error::other(
                "bulk output no longer in its slot",
            )));
        }
        let base = slot_base(table.region as usize);
        let view = View::map(&self.slots.file, base, table.total())?;
        protocol::decode_from(view.splice(table, cbor)?, scratch)
    }
}

impl Drop for SlotLease {
    fn drop(&mut self) {
        // The items that filled them are done with them; a slot refilled
        // since is not theirs to free.
        for &(k, generation) in &self.held {
            if let Some(state) = self.slots.state(k) {
                let _ = state.compare_exchange(generation, 0, Ordering::AcqRel, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bulk::splice::Hole;

    #[test]
    #[cfg_attr(
        not(buckshot_native),
        ignore = "memfds: the portable backend sends long strings inline"
    )]
    fn a_lease_frees_the_slots_its_items_filled() {
        let slots = Arc::new(ReplySlots::create().unwrap());
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
        assert_eq!(lease.held, vec![(1, 5)]);
        assert!(SlotLease::of(&slots, &section[section.len() - 6..]).is_none());
        drop(lease);
        assert_eq!(slots.state(1).unwrap().load(Ordering::Acquire), 0, "freed");
        assert_eq!(
            slots.state(2).unwrap().load(Ordering::Acquire),
            6,
            "not its slot"
        );
        // Refilled behind its back: not its to free.
        let lease = SlotLease::of(&slots, &section).unwrap();
        slots.state(1).unwrap().store(9, Ordering::Release);
        drop(lease);
        assert_eq!(slots.state(1).unwrap().load(Ordering::Acquire), 9);
    }
}
