//! The diverting encoder, an item's table of holes, and the reader that
//! puts the strings back in place.

use std::io::{self, Read, Write};

use super::{BULK_MIN, Sink};

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
pub(super) struct Hole {
    /// Where in the item's CBOR the string's bytes go back.
    pub(super) at: u32,
    pub(super) len: u64,
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
    pub(super) holes: Vec<Hole>,
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

    pub(super) fn write(&self, out: &mut Vec<u8>) {
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
    // Nothing to divert from a scalar shorter than the strings that go.
    if crate::protocol::encode_plain(value, out, BULK_MIN - 1) {
        return Ok(None);
    }
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
    pub(super) fn new(table: &'a Table, cbor: &'a [u8], data: &'a [u8]) -> io::Result<Spliced<'a>> {
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
}
