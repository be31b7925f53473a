//! Journal keys: what names an output, and the canonical form of an
//! encoded value that goes into the name.
//!
//! A key is a SHA-256 of the task's name, of the map's context (its
//! encoded value) and of the encoded input: the first two length-prefixed,
//! then one byte that tells a map without a context from one with an empty
//! context, then the input ([`Prefix`]).
//!
//! The same value does not always encode to the same bytes: a `HashMap`
//! (like anything that serialises a map in iteration order) writes its
//! entries in an order that changes with every process, so its key would
//! too, and its output would never be found again. What is hashed is
//! therefore a canonical form ([`canonical`]): the entries of every CBOR
//! map in the value sorted by the bytes of their keys (RFC 8949, section
//! 4.2.1); every other byte as it was. A value with no map, or whose maps
//! are sorted already, is hashed as it was encoded.
//!
//! A struct encodes as a map in the order of its fields, which is stable
//! but seldom sorted: journals written before keys were canonical hold it
//! under the key of its encoding as it was. A lookup whose canonical form
//! differs from the encoding tries that key too ([`MapKeys::legacy_key`]),
//! so that those journals keep answering. New outputs are recorded under
//! the canonical key only.

use std::borrow::Cow;

use sha2::{Digest, Sha256};

/// Nesting deeper than this is hashed as encoded: deep enough for any
/// data a task takes, and a bound on the recursion.
const MAX_DEPTH: u32 = 128;

/// What the key of every input of one task and context starts with.
pub(crate) struct Prefix {
    pub task: &'static str,
    hasher: Sha256,
    /// The digest of the task and context alone.
    pub id: [u8; 32],
}

impl Prefix {
    /// The prefix of `task` with the context encoded as `context`, hashed
    /// as given.
    pub(crate) fn new(task: &'static str, context: Option<&[u8]>) -> Prefix {
        let mut hasher = Sha256::new();
        for part in [task.as_bytes(), context.unwrap_or_default()] {
            hasher.update((part.len() as u64).to_le_bytes());
            hasher.update(part);
        }
        // A map with no context differs from one with an empty one.
        hasher.update([u8::from(context.is_some())]);
        let id = hasher.clone().finalize().into();
        Prefix { task, hasher, id }
    }

    /// The prefix of `task` with the context encoded as `context`, in its
    /// canonical form.
    pub(crate) fn canonical(task: &'static str, context: Option<&[u8]>) -> Prefix {
        Prefix::new(task, context.map(canonical).as_deref())
    }

    /// The key of the input encoded as `input`, hashed as given.
    pub(crate) fn key_as_given(&self, input: &[u8]) -> [u8; 32] {
        self.hasher.clone().chain_update(input).finalize().into()
    }

    /// The key of the input encoded as `input`, in its canonical form.
    pub(crate) fn key(&self, input: &[u8]) -> [u8; 32] {
        self.key_as_given(&canonical(input))
    }
}

/// The keys of one map's inputs: canonical, and as encoded when that
/// differs (to find what older journals recorded).
pub(crate) struct MapKeys {
    pub prefix: Prefix,
    /// The prefix of the context as encoded, when its canonical form
    /// differs.
    pub legacy: Option<Prefix>,
}

impl MapKeys {
    pub(crate) fn new(task: &'static str, context: Option<&[u8]>) -> MapKeys {
        let canonical_context = context.map(canonical);
        let differs = matches!(&canonical_context, Some(Cow::Owned(_)));
        MapKeys {
            prefix: Prefix::new(task, canonical_context.as_deref()),
            legacy: differs.then(|| Prefix::new(task, context)),
        }
    }

    /// The canonical key of the input encoded as `input`.
    pub(crate) fn key(&self, input: &[u8]) -> [u8; 32] {
        self.prefix.key(input)
    }

    /// The key an older journal recorded the input under, if it differs
    /// from the canonical one.
    pub(crate) fn legacy_key(&self, input: &[u8]) -> Option<[u8; 32]> {
        let input_differs = matches!(canonical(input), Cow::Owned(_));
        match &self.legacy {
            Some(legacy) => Some(legacy.key_as_given(input)),
            None if input_differs => Some(self.prefix.key_as_given(input)),
            None => None,
        }
    }
}

/// The canonical form of the CBOR item `encoded`: the entries of each map
/// sorted by the bytes of their canonical keys. Borrowed when that is
/// `encoded` itself, and when `encoded` is not one well-formed item (or
/// nests past [`MAX_DEPTH`]): then it is hashed as it is.
pub(crate) fn canonical(encoded: &[u8]) -> Cow<'_, [u8]> {
    match scan(encoded, 0, 0) {
        Some((end, true)) if end == encoded.len() => Cow::Borrowed(encoded),
        Some((end, false)) if end == encoded.len() => {
            let mut out = Vec::with_capacity(encoded.len());
            match rebuild(encoded, 0, 0, &mut out) {
                Some(_) => Cow::Owned(out),
                None => Cow::Borrowed(encoded),
            }
        }
        _ => Cow::Borrowed(encoded),
    }
}

/// The head of a CBOR item: its major type, its argument (`None` for an
/// indefinite length), and how many bytes the head takes.
struct Head {
    major: u8,
    argument: Option<u64>,
    len: usize,
}

/// The break that ends an item of indefinite length.
const BREAK: u8 = 0xff;

fn head(bytes: &[u8], at: usize) -> Option<Head> {
    let initial = *bytes.get(at)?;
    let (major, info) = (initial >> 5, initial & 0x1f);
    let follow = |n: usize| -> Option<u64> {
        let raw = bytes.get(at + 1..at + 1 + n)?;
        Some(raw.iter().fold(0u64, |value, &b| value << 8 | u64::from(b)))
    };
    let (argument, len) = match info {
        0..=23 => (Some(u64::from(info)), 1),
        24 => (Some(follow(1)?), 2),
        25 => (Some(follow(2)?), 3),
        26 => (Some(follow(4)?), 5),
        27 => (Some(follow(8)?), 9),
        31 if (2..=5).contains(&major) => (None, 1),
        _ => return None,
    };
    Some(Head {
        major,
        argument,
        len,
    })
}

/// The end of a string of `length` bytes that starts at `at`.
fn string_end(bytes: &[u8], at: usize, length: u64) -> Option<usize> {
    let end = at.checked_add(usize::try_from(length).ok()?)?;
    (end <= bytes.len()).then_some(end)
}

/// Where the item at `at` ends, and whether it is canonical already.
fn scan(bytes: &[u8], at: usize, depth: u32) -> Option<(usize, bool)> {
    if depth > MAX_DEPTH {
        return None;
    }
    let head = head(bytes, at)?;
    let mut at = at + head.len;
    match (head.major, head.argument) {
        (0 | 1 | 7, Some(_)) => Some((at, true)),
        (2 | 3, Some(length)) => Some((string_end(bytes, at, length)?, true)),
        (2 | 3, None) => {
            // Chunks of the same type, each of definite length.
            while *bytes.get(at)? != BREAK {
                let chunk = self::head(bytes, at)?;
                if chunk.major != head.major {
                    return None;
                }
                at = string_end(bytes, at + chunk.len, chunk.argument?)?;
            }
            Some((at + 1, true))
        }
        (4, count) => {
            let mut sorted = true;
            let mut left = count;
            while more(bytes, &mut at, &mut left)? {
                let (end, canonical) = scan(bytes, at, depth + 1)?;
                sorted &= canonical;
                at = end;
            }
            Some((at, sorted))
        }
        (5, count) => {
            let mut sorted = true;
            let mut left = count;
            let mut previous: Option<&[u8]> = None;
            while more(bytes, &mut at, &mut left)? {
                let (key_end, key_canonical) = scan(bytes, at, depth + 1)?;
                let key = &bytes[at..key_end];
                // A key that is not canonical itself compares as something
                // else: rebuild.
                sorted &= key_canonical && previous.is_none_or(|previous| previous <= key);
                previous = Some(key);
                let (end, value_canonical) = scan(bytes, key_end, depth + 1)?;
                sorted &= value_canonical;
                at = end;
            }
            Some((at, sorted))
        }
        (6, Some(_)) => scan(bytes, at, depth + 1),
        _ => None,
    }
}

/// Whether another element follows in an array or map: `left` counts down
/// a definite length; an indefinite one (`None`) ends at a break, which is
/// stepped over.
fn more(bytes: &[u8], at: &mut usize, left: &mut Option<u64>) -> Option<bool> {
    match left {
        Some(0) => Some(false),
        Some(n) => {
            *n -= 1;
            Some(true)
        }
        None if *bytes.get(*at)? == BREAK => {
            *at += 1;
            Some(false)
        }
        None => Some(true),
    }
}

/// Appends the canonical form of the item at `at` to `out`; returns where
/// the item ends.
fn rebuild(bytes: &[u8], at: usize, depth: u32, out: &mut Vec<u8>) -> Option<usize> {
    if depth > MAX_DEPTH {
        return None;
    }
    let head = head(bytes, at)?;
    let start = at;
    let mut at = at + head.len;
    match head.major {
        4 => {
            out.extend_from_slice(&bytes[start..at]);
            let mut left = head.argument;
            while more(bytes, &mut at, &mut left)? {
                at = rebuild(bytes, at, depth + 1, out)?;
            }
            if head.argument.is_none() {
                out.push(BREAK);
            }
            Some(at)
        }
        5 => {
            out.extend_from_slice(&bytes[start..at]);
            let mut entries: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
            let mut left = head.argument;
            while more(bytes, &mut at, &mut left)? {
                let (mut key, mut value) = (Vec::new(), Vec::new());
                at = rebuild(bytes, at, depth + 1, &mut key)?;
                at = rebuild(bytes, at, depth + 1, &mut value)?;
                entries.push((key, value));
            }
            // Stable: equal keys keep their order.
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            for (key, value) in entries {
                out.extend_from_slice(&key);
                out.extend_from_slice(&value);
            }
            if head.argument.is_none() {
                out.push(BREAK);
            }
            Some(at)
        }
        6 => {
            out.extend_from_slice(&bytes[start..at]);
            rebuild(bytes, at, depth + 1, out)
        }
        _ => {
            let (end, _) = scan(bytes, start, depth)?;
            out.extend_from_slice(&bytes[start..end]);
            Some(end)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use super::*;

    fn cbor<T: serde::Serialize>(value: &T) -> Vec<u8> {
        let mut out = Vec::new();
        ciborium::ser::into_writer(value, &mut out).unwrap();
        out
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn keys_are_those_journals_already_hold() {
        // Computed with the first journal's formula: these rows must
        // still answer.
        let plain = Prefix::new("app::simulate", None);
        assert_eq!(
            hex(&plain.key(&[0x07])),
            "a04858ab507a45eeb254f52e06e69dd62bf120de3d53084ed6d5e7bf2e27b2d9"
        );
        let with_context = MapKeys::new("app::simulate", Some(&[0xa1, 0x61, 0x61, 0x01]));
        assert!(with_context.legacy.is_none(), "a sorted map is canonical");
        assert_eq!(
            hex(&with_context.key(&[0x07])),
            "f9128b6e4b7994a61beb6f7a98fadf0c3a8df034242f8258d5ce0efd411afbd1"
        );
        assert_eq!(with_context.legacy_key(&[0x07]), None);
    }

    #[test]
    fn every_part_of_a_key_counts() {
        let input = cbor(&7u64);
        let keys = [
            Prefix::new("a", None).key(&input),
            Prefix::new("b", None).key(&input),
            Prefix::new("a", Some(&[])).key(&input),
            Prefix::new("a", Some(&[1])).key(&input),
            Prefix::new("a", Some(&[2])).key(&input),
            Prefix::new("a", None).key(&cbor(&8u64)),
        ];
        for (i, a) in keys.iter().enumerate() {
            for b in &keys[i + 1..] {
                assert_ne!(a, b);
            }
        }
        // Lengths are part of it: the task's end is not the context's start.
        assert_ne!(
            Prefix::new("ab", Some(&[])).id,
            Prefix::new("a", Some(b"b")).id
        );
    }

    #[test]
    fn a_map_in_any_order_has_one_canonical_form() {
        let mut sorted: Option<Vec<u8>> = None;
        for _ in 0..20 {
            // Each HashMap has a random order of its own.
            let map: HashMap<String, Vec<u64>> =
                (0..12).map(|k| (format!("key{k}"), vec![k])).collect();
            let encoded = cbor(&(5u8, map, "tail"));
            let form = canonical(&encoded).into_owned();
            assert_eq!(form.len(), encoded.len());
            match &sorted {
                Some(sorted) => assert_eq!(&form, sorted),
                None => sorted = Some(form),
            }
        }
        // The canonical form decodes to the same value, its keys sorted by
        // their encodings.
        let sorted = sorted.unwrap();
        let value: (u8, BTreeMap<String, Vec<u64>>, String) =
            ciborium::de::from_reader(sorted.as_slice()).unwrap();
        assert_eq!(value.1.len(), 12);
        assert_eq!(value.2, "tail");
        let value: (u8, ciborium::Value, String) =
            ciborium::de::from_reader(sorted.as_slice()).unwrap();
        let keys: Vec<Vec<u8>> = value
            .1
            .as_map()
            .unwrap()
            .iter()
            .map(|(k, _)| cbor(k))
            .collect();
        assert!(keys.windows(2).all(|pair| pair[0] < pair[1]), "{keys:?}");
    }

    #[test]
    fn sorted_and_map_free_values_are_their_own_canonical_form() {
        let sorted: BTreeMap<&str, u64> = [("a", 1), ("b", 2), ("c", 3)].into();
        for encoded in [
            cbor(&7u64),
            cbor(&-3i64),
            cbor(&"text"),
            cbor(&serde_bytes::ByteBuf::from(vec![1, 2])),
            cbor(&(1.5f64, true, ())),
            cbor(&sorted),
            cbor(&vec![sorted.clone(), sorted]),
        ] {
            assert!(
                matches!(canonical(&encoded), Cow::Borrowed(_)),
                "{}",
                hex(&encoded)
            );
        }
    }

    #[test]
    fn nested_tagged_and_indefinite_maps_are_sorted() {
        // {"b": 1, "a": [ {"d": 0, "c": 0} ]} with a tag around the inner map.
        let encoded = [
            0xa2, 0x61, b'b', 0x01, 0x61, b'a', 0x81, 0xc1, 0xa2, 0x61, b'd', 0x00, 0x61, b'c',
            0x00,
        ];
        let expected = [
            0xa2, 0x61, b'a', 0x81, 0xc1, 0xa2, 0x61, b'c', 0x00, 0x61, b'd', 0x00, 0x61, b'b',
            0x01,
        ];
        assert_eq!(canonical(&encoded).as_ref(), expected);
        // Indefinite lengths keep their breaks; strings in chunks stay.
        let encoded = [
            0xbf, 0x7f, 0x61, b'y', 0xff, 0x02, 0x61, b'z', 0x9f, 0x01, 0xff, 0xff,
        ];
        let expected = [
            0xbf, 0x61, b'z', 0x9f, 0x01, 0xff, 0x7f, 0x61, b'y', 0xff, 0x02, 0xff,
        ];
        assert_eq!(canonical(&encoded).as_ref(), expected);
        // A key that is itself an unsorted map is sorted before comparing.
        let encoded = [0xa2, 0xa2, 0x02, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00];
        let expected = [0xa2, 0x00, 0x00, 0xa2, 0x01, 0x00, 0x02, 0x00, 0x00];
        assert_eq!(canonical(&encoded).as_ref(), expected);
    }

    #[test]
    fn malformed_or_too_deep_values_are_hashed_as_given() {
        let unsorted_then = |tail: &[u8]| {
            let mut bytes = vec![0xa2, 0x61, b'b', 0x01, 0x61, b'a', 0x02];
            bytes.extend_from_slice(tail);
            bytes
        };
        assert!(matches!(canonical(&unsorted_then(&[])), Cow::Owned(_)));
        for bad in [
            unsorted_then(&[0x00]), // trailing bytes
            vec![0xa2, 0x61, b'b'], // truncated
            vec![0x62, b'a'],       // short string
            vec![0x1c],             // reserved argument
            vec![0x7f, 0x41, b'a'], // a byte chunk in a text string
            vec![0xff],             // a lone break
            vec![0x5b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        ] {
            assert_eq!(canonical(&bad).as_ref(), bad.as_slice(), "{}", hex(&bad));
        }
        let mut deep = vec![0x81; MAX_DEPTH as usize + 2];
        deep.extend_from_slice(&unsorted_then(&[]));
        assert!(matches!(canonical(&deep), Cow::Borrowed(_)));
        let mut shallow = vec![0x81; MAX_DEPTH as usize - 1];
        shallow.extend_from_slice(&unsorted_then(&[]));
        assert!(matches!(canonical(&shallow), Cow::Owned(_)));
    }

    #[test]
    fn an_unsorted_value_also_has_its_old_key() {
        let unsorted = [0xa2, 0x61, b'b', 0x01, 0x61, b'a', 0x02];
        let sorted = [0xa2, 0x61, b'a', 0x02, 0x61, b'b', 0x01];
        let plain = MapKeys::new("t", None);
        assert_eq!(plain.key(&unsorted), plain.key(&sorted));
        assert_eq!(
            plain.legacy_key(&unsorted),
            Some(Prefix::new("t", None).key_as_given(&unsorted))
        );
        assert_eq!(plain.legacy_key(&sorted), None);
        // An unsorted context: the canonical prefix, and the old one.
        let keys = MapKeys::new("t", Some(&unsorted));
        assert_eq!(keys.prefix.id, Prefix::new("t", Some(&sorted)).id);
        let old = Prefix::new("t", Some(&unsorted));
        assert_eq!(keys.legacy.as_ref().map(|p| p.id), Some(old.id));
        assert_eq!(keys.legacy_key(&[0x07]), Some(old.key_as_given(&[0x07])));
        assert_eq!(
            keys.legacy_key(&unsorted),
            Some(old.key_as_given(&unsorted))
        );
        assert_eq!(
            keys.key(&[0x07]),
            Prefix::canonical("t", Some(&unsorted)).key(&[0x07])
        );
    }
}
