//! A short cut for values that are one CBOR scalar: an integer, a bool, a
//! null, a text or byte string, a 32- or 64-bit float. Most inputs and outputs of
//! small tasks are one, and ciborium spends 16–18 ns on a `u64` in its
//! generic header steps; reading the head byte here takes a few.
//!
//! ciborium stays the codec of record. The short cut answers exactly the
//! serde calls that ciborium answers with the same visitor call for the
//! same bytes (`visit_u64`, `visit_i64`, `visit_str`, ...); at any other
//! call (a struct, a sequence, a tag, a half float, a value out of range)
//! it gives up, and its caller encodes or decodes the value again with
//! ciborium from the start. Giving up costs one call: a type that is not
//! a scalar asks for its shape first. Serde impls are pure, so trying
//! twice changes nothing but time.

use serde::de::{self, DeserializeOwned, Visitor};
use serde::ser::{self, Serialize};

/// Why the short cut stopped; its message is never shown (the caller
/// starts again with ciborium).
#[derive(Debug)]
pub(super) struct GiveUp;

impl std::fmt::Display for GiveUp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("not a plain CBOR scalar")
    }
}

impl std::error::Error for GiveUp {}

impl de::Error for GiveUp {
    fn custom<T: std::fmt::Display>(_: T) -> Self {
        GiveUp
    }
}

impl ser::Error for GiveUp {
    fn custom<T: std::fmt::Display>(_: T) -> Self {
        GiveUp
    }
}

/// Decodes `bytes` if it is one scalar that `T` reads as one, with the
/// result ciborium would give; `None` means: ask ciborium.
///
/// `scratch_len` is the length of the scratch buffer ciborium would be
/// given: it reads a text string no longer than that through `visit_str`,
/// a longer one through `visit_string`.
pub(super) fn decode<T: DeserializeOwned>(bytes: &[u8], scratch_len: usize) -> Option<T> {
    // Arrays, maps and tags: not worth a try.
    if !matches!(bytes.first()? >> 5, 0..=3 | 7) {
        return None;
    }
    let mut reader = Reader {
        bytes,
        scratch_len,
        gave_up: false,
    };
    let value = T::deserialize(&mut reader).ok()?;
    // A type may have caught our refusal and gone on (a default on error,
    // say): then its value is not what ciborium would give.
    (!reader.gave_up).then_some(value)
}

/// One CBOR data item's head.
#[derive(Clone, Copy)]
enum Head {
    Unsigned(u64),
    /// The CBOR negative `-1 - n`.
    Negative(u64),
    Bool(bool),
    /// Null or undefined.
    Null,
    Float(f64),
    Text(u64),
    Bytes(u64),
    /// Anything the short cut leaves to ciborium.
    Other,
}

struct Reader<'a> {
    bytes: &'a [u8],
    scratch_len: usize,
    gave_up: bool,
}

impl<'a> Reader<'a> {
    /// The head at the front and its length in bytes.
    fn peek(&self) -> (Head, usize) {
        let Some(&first) = self.bytes.first() else {
            return (Head::Other, 0);
        };
        let (major, info) = (first >> 5, first & 0x1f);
        let width = match info {
            0..=23 => 0,
            24 => 1,
            25 => 2,
            26 => 4,
            27 => 8,
            _ => return (Head::Other, 0),
        };
        let Some(tail) = self.bytes.get(1..1 + width) else {
            return (Head::Other, 0);
        };
        let argument = if width == 0 {
            u64::from(info)
        } else {
            tail.iter().fold(0, |n, &b| n << 8 | u64::from(b))
        };
        let head = match (major, info) {
            (0, _) => Head::Unsigned(argument),
            (1, _) => Head::Negative(argument),
            (2, _) => Head::Bytes(argument),
            (3, _) => Head::Text(argument),
            (7, 20) => Head::Bool(false),
            (7, 21) => Head::Bool(true),
            (7, 22 | 23) => Head::Null,
            (7, 26) => Head::Float(f64::from(f32::from_bits(argument as u32))),
            (7, 27) => Head::Float(f64::from_bits(argument)),
            _ => Head::Other,
        };
        (head, 1 + width)
    }

    fn take(&mut self, len: usize) {
        self.bytes = &self.bytes[len..];
    }

    fn give_up<T>(&mut self) -> Result<T, GiveUp> {
        self.gave_up = true;
        Err(GiveUp)
    }

    /// The string at the front (`major` 2 for bytes, 3 for text), if whole.
    fn string(&mut self, major: u8) -> Result<&'a [u8], GiveUp> {
        let (head, at) = self.peek();
        let len = match (head, major) {
            (Head::Bytes(len), 2) | (Head::Text(len), 3) => len,
            _ => return self.give_up(),
        };
        let string = usize::try_from(len)
            .ok()
            .and_then(|len| self.bytes.get(at..at.checked_add(len)?));
        match string {
            Some(string) => {
                self.take(at + string.len());
                Ok(string)
            }
            None => self.give_up(),
        }
    }

    /// The text string at the front, if whole and UTF-8.
    fn text(&mut self) -> Result<&'a str, GiveUp> {
        let bytes = self.string(3)?;
        std::str::from_utf8(bytes).or_else(|_| self.give_up())
    }

    fn signed(&mut self) -> Result<i64, GiveUp> {
        let (head, at) = self.peek();
        let value = match head {
            Head::Unsigned(n) => i64::try_from(n).ok(),
            // -1 - n, as ciborium computes it: !n.
            Head::Negative(n) => i64::try_from(n).ok().map(|n| !n),
            _ => None,
        };
        match value {
            Some(value) => {
                self.take(at);
                Ok(value)
            }
            None => self.give_up(),
        }
    }
}

macro_rules! give_up {
    ($($method:ident($($arg:ident: $ty:ty),*);)*) => {
        $(fn $method<V: Visitor<'de>>(self, $(_: $ty,)* _: V) -> Result<V::Value, GiveUp> {
            self.give_up()
        })*
    };
}

impl<'de> de::Deserializer<'de> for &mut Reader<'_> {
    type Error = GiveUp;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, GiveUp> {
        match self.peek().0 {
            Head::Unsigned(_) => self.deserialize_u64(visitor),
            Head::Negative(_) => self.deserialize_i64(visitor),
            Head::Bool(_) => self.deserialize_bool(visitor),
            Head::Null => self.deserialize_option(visitor),
            Head::Float(_) => self.deserialize_f64(visitor),
            Head::Text(len) if len <= self.scratch_len as u64 => self.deserialize_str(visitor),
            Head::Text(_) => self.deserialize_string(visitor),
            Head::Bytes(len) if len <= self.scratch_len as u64 => self.deserialize_bytes(visitor),
            Head::Bytes(_) => self.deserialize_byte_buf(visitor),
            Head::Other => self.give_up(),
        }
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, GiveUp> {
        match self.peek() {
            (Head::Bool(b), at) => {
                self.take(at);
                visitor.visit_bool(b)
            }
            _ => self.give_up(),
        }
    }

    fn deserialize_i8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, GiveUp> {
        self.deserialize_i64(visitor)
    }

    fn deserialize_i16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, GiveUp> {
        self.deserialize_i64(visitor)
    }

    fn deserialize_i32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, GiveUp> {
        self.deserialize_i64(visitor)
    }

    fn deserialize_i64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, GiveUp> {
        let value = self.signed()?;
        visitor.visit_i64(value)
    }

    fn deserialize_u8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, GiveUp> {
        self.deserialize_u64(visitor)
    }

    fn deserialize_u16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, GiveUp> {
        self.deserialize_u64(visitor)
    }

    fn deserialize_u32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, GiveUp> {
        self.deserialize_u64(visitor)
    }

    fn deserialize_u64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, GiveUp> {
        match self.peek() {
            (Head::Unsigned(n), at) => {
                self.take(at);
                visitor.visit_u64(n)
            }
            _ => self.give_up(),
        }
    }

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, GiveUp> {
        self.deserialize_f64(visitor)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, GiveUp> {
        match self.peek() {
            (Head::Float(x), at) => {
                self.take(at);
                visitor.visit_f64(x)
            }
            _ => self.give_up(),
        }
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, GiveUp> {
        match self.peek().0 {
            Head::Text(len) if len <= self.scratch_len as u64 => {
                let text = self.text()?;
                visitor.visit_str(text)
            }
            _ => self.give_up(),
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, GiveUp> {
        let text = self.text()?;
        visitor.visit_string(text.to_owned())
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, GiveUp> {
        match self.peek().0 {
            Head::Bytes(len) if len <= self.scratch_len as u64 => {
                let bytes = self.string(2)?;
                visitor.visit_bytes(bytes)
            }
            _ => self.give_up(),
        }
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, GiveUp> {
        // One allocation of the right size, where ciborium grows a Vec
        // piece by piece.
        let bytes = self.string(2)?;
        visitor.visit_byte_buf(bytes.to_vec())
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, GiveUp> {
        match self.peek() {
            (Head::Null, at) => {
                self.take(at);
                visitor.visit_none()
            }
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, GiveUp> {
        match self.peek() {
            (Head::Null, at) => {
                self.take(at);
                visitor.visit_unit()
            }
            _ => self.give_up(),
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, GiveUp> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, GiveUp> {
        visitor.visit_newtype_struct(self)
    }

    fn is_human_readable(&self) -> bool {
        // As ciborium's.
        false
    }

    give_up! {
        deserialize_i128();
        deserialize_u128();
        deserialize_char();
        deserialize_seq();
        deserialize_tuple(len: usize);
        deserialize_tuple_struct(name: &'static str, len: usize);
        deserialize_map();
        deserialize_struct(name: &'static str, fields: &'static [&'static str]);
        deserialize_enum(name: &'static str, variants: &'static [&'static str]);
        deserialize_identifier();
        deserialize_ignored_any();
    }
}

/// Encodes `value` onto `out` if it is one integer, bool, unit, or text or
/// byte string of at most `max_text` bytes, byte for byte as ciborium would;
/// `false` (with `out` as it was) means: ask ciborium.
pub(super) fn encode<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>, max_text: usize) -> bool {
    let start = out.len();
    let mut writer = Writer { out, max_text };
    if value.serialize(&mut writer).is_ok() {
        return true;
    }
    out.truncate(start);
    false
}

struct Writer<'a> {
    out: &'a mut Vec<u8>,
    max_text: usize,
}

impl Writer<'_> {
    /// A head in the shortest form, as CBOR's preferred serialization
    /// (and ciborium) has it.
    fn head(&mut self, major: u8, n: u64) {
        let major = major << 5;
        if n <= 23 {
            self.out.push(major | n as u8);
        } else if n <= u64::from(u8::MAX) {
            self.out.extend_from_slice(&[major | 24, n as u8]);
        } else if n <= u64::from(u16::MAX) {
            self.out.push(major | 25);
            self.out.extend_from_slice(&(n as u16).to_be_bytes());
        } else if n <= u64::from(u32::MAX) {
            self.out.push(major | 26);
            self.out.extend_from_slice(&(n as u32).to_be_bytes());
        } else {
            self.out.push(major | 27);
            self.out.extend_from_slice(&n.to_be_bytes());
        }
    }
}

macro_rules! refuse {
    ($($method:ident($($ty:ty),*) -> $ret:ty;)*) => {
        $(fn $method(self, $(_: $ty),*) -> Result<$ret, GiveUp> {
            Err(GiveUp)
        })*
    };
}

impl ser::Serializer for &mut Writer<'_> {
    type Ok = ();
    type Error = GiveUp;
    type SerializeSeq = ser::Impossible<(), GiveUp>;
    type SerializeTuple = ser::Impossible<(), GiveUp>;
    type SerializeTupleStruct = ser::Impossible<(), GiveUp>;
    type SerializeTupleVariant = ser::Impossible<(), GiveUp>;
    type SerializeMap = ser::Impossible<(), GiveUp>;
    type SerializeStruct = ser::Impossible<(), GiveUp>;
    type SerializeStructVariant = ser::Impossible<(), GiveUp>;

    fn serialize_bool(self, v: bool) -> Result<(), GiveUp> {
        self.out.push(0xf4 | u8::from(v));
        Ok(())
    }

    fn serialize_i8(self, v: i8) -> Result<(), GiveUp> {
        self.serialize_i64(v.into())
    }

    fn serialize_i16(self, v: i16) -> Result<(), GiveUp> {
        self.serialize_i64(v.into())
    }

    fn serialize_i32(self, v: i32) -> Result<(), GiveUp> {
        self.serialize_i64(v.into())
    }

    fn serialize_i64(self, v: i64) -> Result<(), GiveUp> {
        match v.is_negative() {
            false => self.head(0, v as u64),
            true => self.head(1, v as u64 ^ !0),
        }
        Ok(())
    }

    fn serialize_u8(self, v: u8) -> Result<(), GiveUp> {
        self.serialize_u64(v.into())
    }

    fn serialize_u16(self, v: u16) -> Result<(), GiveUp> {
        self.serialize_u64(v.into())
    }

    fn serialize_u32(self, v: u32) -> Result<(), GiveUp> {
        self.serialize_u64(v.into())
    }

    fn serialize_u64(self, v: u64) -> Result<(), GiveUp> {
        self.head(0, v);
        Ok(())
    }

    fn serialize_str(self, v: &str) -> Result<(), GiveUp> {
        if v.len() > self.max_text {
            return Err(GiveUp);
        }
        self.head(3, v.len() as u64);
        self.out.extend_from_slice(v.as_bytes());
        Ok(())
    }

    fn serialize_bytes(self, v: &[u8]) -> Result<(), GiveUp> {
        if v.len() > self.max_text {
            return Err(GiveUp);
        }
        self.head(2, v.len() as u64);
        self.out.extend_from_slice(v);
        Ok(())
    }

    fn serialize_none(self) -> Result<(), GiveUp> {
        self.serialize_unit()
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), GiveUp> {
        value.serialize(self)
    }

    fn serialize_unit(self) -> Result<(), GiveUp> {
        self.out.push(0xf6);
        Ok(())
    }

    fn serialize_unit_struct(self, _: &'static str) -> Result<(), GiveUp> {
        self.serialize_unit()
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<(), GiveUp> {
        value.serialize(self)
    }

    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
    ) -> Result<(), GiveUp> {
        self.serialize_str(variant)
    }

    fn is_human_readable(&self) -> bool {
        // As ciborium's.
        false
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<(), GiveUp> {
        Err(GiveUp)
    }

    refuse! {
        // ciborium writes the shortest float that keeps the value, which
        // needs half precision; i128 and chars take steps of their own.
        serialize_f32(f32) -> ();
        serialize_f64(f64) -> ();
        serialize_i128(i128) -> ();
        serialize_u128(u128) -> ();
        serialize_char(char) -> ();
        serialize_seq(Option<usize>) -> Self::SerializeSeq;
        serialize_tuple(usize) -> Self::SerializeTuple;
        serialize_tuple_struct(&'static str, usize) -> Self::SerializeTupleStruct;
        serialize_tuple_variant(&'static str, u32, &'static str, usize) -> Self::SerializeTupleVariant;
        serialize_map(Option<usize>) -> Self::SerializeMap;
        serialize_struct(&'static str, usize) -> Self::SerializeStruct;
        serialize_struct_variant(&'static str, u32, &'static str, usize) -> Self::SerializeStructVariant;
    }
}

#[cfg(test)]
#[path = "plain_tests.rs"]
mod tests;
