use std::collections::BTreeMap;
use std::fmt::Debug;

use serde::{Deserialize, Serialize};

use super::*;

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Meters(u32);

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Unit;

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum Colour {
    Red,
    Green(u8),
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Point {
    x: i64,
    y: f64,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
enum Loose {
    Number(u64),
    Pair(u64, u64),
}

/// A type that hides a refusal: what it reads after one must not be
/// taken for ciborium's answer.
#[derive(Debug, PartialEq, Serialize)]
struct Forgiving(Option<Vec<u8>>);

impl<'de> Deserialize<'de> for Forgiving {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Forgiving(Vec::<u8>::deserialize(d).ok()))
    }
}

fn ciborium_bytes<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(value, &mut out).unwrap();
    out
}

/// Both directions agree with ciborium's, byte for byte and value for
/// value, whether or not the short cut takes the value.
fn agrees<T>(value: T, plain: bool)
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let expected = ciborium_bytes(&value);
    let mut out = vec![0xaa];
    assert_eq!(encode(&value, &mut out, usize::MAX), plain, "{value:?}");
    if plain {
        assert_eq!(out[1..], expected, "{value:?}");
    } else {
        assert_eq!(out, [0xaa], "{value:?}: a refusal leaves the buffer");
    }
    match decode::<T>(&expected, 4096) {
        Some(back) => {
            assert!(plain, "{value:?} decoded by the short cut");
            assert_eq!(back, value);
        }
        None => assert!(!plain, "{value:?} not decoded by the short cut"),
    }
}

#[test]
fn scalars_take_the_short_cut_and_agree_with_ciborium() {
    for n in [
        0u64,
        23,
        24,
        255,
        256,
        65_535,
        65_536,
        u32::MAX.into(),
        u64::MAX,
    ] {
        agrees(n, true);
    }
    for n in [0i64, -1, -24, -25, -256, -257, i64::MIN, i64::MAX, 1 << 40] {
        agrees(n, true);
    }
    agrees(200u8, true);
    agrees(-3i8, true);
    agrees(70_000u32, true);
    agrees(true, true);
    agrees(false, true);
    agrees((), true);
    agrees(Unit, true);
    agrees(Meters(7), true);
    agrees(Some(5u64), true);
    agrees(None::<u64>, true);
    agrees(String::new(), true);
    agrees("héllo".to_owned(), true);
    agrees("x".repeat(70_000), true);
    agrees(Loose::Number(3), true);
    agrees(serde_bytes::ByteBuf::from(vec![1, 2]), true);
    agrees(serde_bytes::ByteBuf::from(vec![7; 70_000]), true);
    agrees(Some(serde_bytes::ByteBuf::new()), true);
}

#[test]
fn other_values_are_left_to_ciborium() {
    agrees(vec![1u64, 2], false);
    agrees((1u64, 2u64), false);
    agrees(Point { x: -1, y: 0.5 }, false);
    agrees(BTreeMap::from([(1u8, 2u8)]), false);
    agrees(Colour::Green(1), false);
    agrees(Loose::Pair(1, 2), false);
    agrees(u128::MAX, false);
    agrees(i128::MIN, false);
    agrees('x', false);
    agrees(Some(vec![1u8]), false);
}

#[test]
fn floats_decode_here_and_encode_through_ciborium() {
    // ciborium writes the shortest float that keeps the value; half
    // precision is left to it both ways.
    for (x, decoded) in [
        (0.1f64, true),
        (1e300, true),
        (0.1f32 as f64, true),
        (1.5, false),
    ] {
        let bytes = ciborium_bytes(&x);
        assert_eq!(
            decode::<f64>(&bytes, 64).map(f64::to_bits),
            decoded.then_some(x.to_bits())
        );
        assert!(!encode(&x, &mut Vec::new(), usize::MAX));
    }
    let bytes = ciborium_bytes(&0.1f32);
    assert_eq!(decode::<f32>(&bytes, 64), Some(0.1f32));
}

#[test]
fn a_unit_variant_encodes_as_ciborium_does_and_decodes_through_it() {
    let mut out = Vec::new();
    assert!(encode(&Colour::Red, &mut out, usize::MAX));
    assert_eq!(out, ciborium_bytes(&Colour::Red));
    assert_eq!(decode::<Colour>(&out, 64), None);
}

#[test]
fn a_type_that_forgives_a_refusal_is_left_to_ciborium() {
    let bytes = ciborium_bytes(&vec![1u8, 2]);
    assert_eq!(decode::<Forgiving>(&bytes, 64), None);
    // The first byte says "array": no try at all. A text string gets
    // one, and its refusal is seen.
    let bytes = ciborium_bytes("text");
    assert_eq!(decode::<Forgiving>(&bytes, 64), None);
}

#[test]
fn values_out_of_range_or_of_another_type_are_left_to_ciborium() {
    assert_eq!(decode::<u8>(&ciborium_bytes(&300u64), 64), None);
    assert_eq!(decode::<u64>(&ciborium_bytes(&-1i64), 64), None);
    assert_eq!(decode::<i64>(&ciborium_bytes(&u64::MAX), 64), None);
    assert_eq!(decode::<bool>(&ciborium_bytes(&1u64), 64), None);
    assert_eq!(decode::<String>(&ciborium_bytes(&1u64), 64), None);
    assert_eq!(decode::<()>(&ciborium_bytes(&false), 64), None);
}

#[test]
fn truncated_or_malformed_bytes_are_left_to_ciborium() {
    for bytes in [
        &[][..],
        &[0x18],                   // a one-byte argument, missing
        &[0x1b, 0, 0, 0],          // an eight-byte argument, cut short
        &[0x1c],                   // reserved
        &[0x63, b'a', b'b'],       // three bytes of text, two there
        &[0x62, 0xff, 0xfe],       // not UTF-8
        &[0x43, 1, 2],             // three bytes, two there
        &[0x7f, 0x61, b'a', 0xff], // indefinite-length text
    ] {
        assert_eq!(decode::<u64>(bytes, 64), None, "{bytes:?}");
        assert_eq!(decode::<String>(bytes, 64), None, "{bytes:?}");
        assert_eq!(decode::<serde_bytes::ByteBuf>(bytes, 64), None, "{bytes:?}");
    }
}

proptest::proptest! {
    #[test]
    fn any_scalar_agrees_with_ciborium(
        u in proptest::num::u64::ANY,
        i in proptest::num::i64::ANY,
        text in ".{0,40}",
        flag in proptest::bool::ANY,
        maybe in proptest::option::of(proptest::num::i32::ANY),
        bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
    ) {
        agrees(serde_bytes::ByteBuf::from(bytes), true);
        agrees(u, true);
        agrees(i, true);
        agrees(text, true);
        agrees(flag, true);
        agrees(maybe, true);
    }

    #[test]
    fn any_bytes_decode_as_ciborium_does_when_taken(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..12)) {
        let theirs = |scratch: &mut [u8]| ciborium::de::from_reader_with_buffer::<u64, _>(&bytes[..], scratch).ok();
        if let Some(ours) = decode::<u64>(&bytes, 64) {
            proptest::prop_assert_eq!(Some(ours), theirs(&mut [0; 64]));
        }
        if let Some(ours) = decode::<i64>(&bytes, 64) {
            let theirs: Option<i64> = ciborium::de::from_reader_with_buffer(&bytes[..], &mut [0; 64]).ok();
            proptest::prop_assert_eq!(Some(ours), theirs);
        }
        if let Some(ours) = decode::<String>(&bytes, 64) {
            let theirs: Option<String> = ciborium::de::from_reader_with_buffer(&bytes[..], &mut [0; 64]).ok();
            proptest::prop_assert_eq!(Some(ours), theirs);
        }
    }
}

#[test]
fn long_text_is_left_to_the_caller_past_its_limit() {
    let mut out = Vec::new();
    assert!(encode("abcd", &mut out, 4));
    assert!(!encode("abcde", &mut out, 4));
    assert_eq!(out, ciborium_bytes("abcd"));
}

#[test]
fn text_reads_as_str_within_the_scratch_and_as_string_beyond() {
    struct Which;
    impl Visitor<'_> for Which {
        type Value = &'static str;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("text")
        }
        fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
            Ok("str")
        }
        fn visit_string<E>(self, _: String) -> Result<Self::Value, E> {
            Ok("string")
        }
    }
    #[derive(Debug, PartialEq)]
    struct Kind(&'static str);
    impl<'de> Deserialize<'de> for Kind {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(Which).map(Kind)
        }
    }
    let bytes = ciborium_bytes("abcd");
    for scratch in [4, 3] {
        let ours = decode::<Kind>(&bytes, scratch);
        let theirs: Kind =
            ciborium::de::from_reader_with_buffer(&bytes[..], &mut vec![0; scratch]).unwrap();
        assert_eq!(ours, Some(theirs));
    }
}
