//! CBOR values, and the outcome of one task as it travels back.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::BoxError;
use crate::panics::PanicReport;

/// The result of one task, as a worker reports it. On the wire: a tag
/// byte, then the CBOR value for `Ok`, or a UTF-8 message otherwise (a
/// CBOR enum would cost a map and a string compare per item).
#[derive(Debug, PartialEq)]
pub(crate) enum Outcome<T> {
    Ok(T),
    /// Boxed: outcomes are decoded by the million, and most are `Ok`.
    Panicked(Box<PanicReport>),
    /// The worker could not decode the input or encode the output; the text
    /// says which.
    Codec(String),
}

pub(crate) const OUTCOME_OK: u8 = 0;
const OUTCOME_PANICKED: u8 = 1;
const OUTCOME_CODEC: u8 = 2;
/// `Ok`, with a table of the long strings in the worker's reply slot
/// before the CBOR value. Written and read by `bulk`; this module only
/// knows the tag.
pub(crate) const OUTCOME_OK_BULK: u8 = 3;

/// Appends a successful outcome, its value as plain CBOR. On error, `out`
/// may hold a partial value.
pub(crate) fn encode_ok<T: Serialize + ?Sized>(
    value: &T,
    out: &mut Vec<u8>,
) -> Result<(), BoxError> {
    out.push(OUTCOME_OK);
    encode(value, out)
}

/// Whether an outcome item has its value's long strings in a reply slot.
pub(crate) fn is_bulk_outcome(item: &[u8]) -> bool {
    item.first() == Some(&OUTCOME_OK_BULK)
}

/// Appends a failed outcome.
pub(crate) fn encode_failure<T>(outcome: &Outcome<T>, out: &mut Vec<u8>) {
    match outcome {
        Outcome::Ok(_) => unreachable!("a failure"),
        Outcome::Panicked(report) => {
            out.push(OUTCOME_PANICKED);
            encode(report, out).expect("a panic report encodes");
        }
        Outcome::Codec(message) => {
            out.push(OUTCOME_CODEC);
            out.extend_from_slice(message.as_bytes());
        }
    }
}

/// Whether an outcome item is a panic, by its tag alone.
pub(crate) fn is_panic(item: &[u8]) -> bool {
    item.first() == Some(&OUTCOME_PANICKED)
}

/// The CBOR value of a successful outcome item, by its tag alone.
#[cfg(feature = "journal")]
pub(crate) fn ok_value(item: &[u8]) -> Option<&[u8]> {
    match item.split_first() {
        Some((&OUTCOME_OK, value)) => Some(value),
        _ => None,
    }
}

/// Decodes an outcome of plain CBOR. One whose value has its long strings
/// in a reply slot is an error here: only `bulk` reads those.
pub(crate) fn decode_outcome<T: DeserializeOwned>(
    item: &[u8],
    scratch: &mut [u8],
) -> Result<Outcome<T>, BoxError> {
    let Some((&tag, rest)) = item.split_first() else {
        return Err(CodecError("empty outcome".into()).into());
    };
    let message = || String::from_utf8_lossy(rest).into_owned();
    match tag {
        OUTCOME_OK => decode(rest, scratch).map(Outcome::Ok),
        OUTCOME_PANICKED => decode(rest, scratch).map(|report| Outcome::Panicked(Box::new(report))),
        OUTCOME_CODEC => Ok(Outcome::Codec(message())),
        OUTCOME_OK_BULK => Err(CodecError("a bulk outcome with no reply slot".into()).into()),
        tag => Err(CodecError(format!("unknown outcome tag {tag}")).into()),
    }
}

/// A CBOR encoding or decoding failure, with a plain message (ciborium's
/// own `Display` prints its enum's `Debug` form).
#[derive(Debug)]
pub(crate) struct CodecError(pub(crate) String);

impl std::fmt::Display for CodecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CodecError {}

pub(crate) fn encode<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<(), BoxError> {
    if encode_plain(value, out, usize::MAX) {
        return Ok(());
    }
    encode_with(value, out)
}

/// Encodes `value` onto `out` without ciborium if it is one integer, bool,
/// unit or text string of at most `max_text` bytes, byte for byte as
/// ciborium would; `false` (with `out` as it was) means it is not.
pub(crate) fn encode_plain<T: Serialize + ?Sized>(
    value: &T,
    out: &mut Vec<u8>,
    max_text: usize,
) -> bool {
    super::plain::encode(value, out, max_text)
}

/// Encodes one CBOR value into `writer`.
pub(crate) fn encode_with<T: Serialize + ?Sized>(
    value: &T,
    writer: impl std::io::Write,
) -> Result<(), BoxError> {
    use ciborium::ser::Error as E;
    ciborium::into_writer(value, writer).map_err(|e| {
        let message = match e {
            E::Io(e) => e.to_string(),
            E::Value(message) => message,
        };
        CodecError(message).into()
    })
}

/// Decodes one CBOR value. `scratch` is reused across calls: ciborium's
/// plain `from_reader` allocates a fresh buffer every time. Its size bounds
/// the longest text or byte string decoded in one piece, not the value.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8], scratch: &mut [u8]) -> Result<T, BoxError> {
    if let Some(value) = super::plain::decode(bytes, scratch.len()) {
        return Ok(value);
    }
    decode_from(bytes, scratch)
}

/// Decodes one CBOR value from `reader`.
pub(crate) fn decode_from<T: DeserializeOwned>(
    reader: impl std::io::Read,
    scratch: &mut [u8],
) -> Result<T, BoxError> {
    use ciborium::de::Error as E;
    ciborium::de::from_reader_with_buffer(reader, scratch).map_err(|e| {
        let message = match e {
            E::Io(_) => "truncated CBOR value".to_owned(),
            E::Syntax(at) => format!("invalid CBOR at byte {at}"),
            E::Semantic(_, message) => message,
            E::RecursionLimitExceeded => "CBOR value nested too deeply".to_owned(),
        };
        CodecError(message).into()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_round_trip() {
        let mut scratch = [0; 64];
        let mut buf = Vec::new();
        encode_ok(&vec![1u8, 2], &mut buf).unwrap();
        let back: Outcome<Vec<u8>> = decode_outcome(&buf, &mut scratch).unwrap();
        assert_eq!(back, Outcome::Ok(vec![1, 2]));
        for failure in [
            Outcome::Panicked(Box::new(PanicReport {
                message: "boom".to_owned(),
                location: Some(crate::PanicLocation {
                    file: "src/x.rs".to_owned(),
                    line: 3,
                    column: 9,
                }),
                backtrace: None,
            })),
            Outcome::Codec("bad".to_owned()),
        ] {
            buf.clear();
            encode_failure(&failure, &mut buf);
            assert_eq!(decode_outcome::<u8>(&buf, &mut scratch).unwrap(), failure);
        }
        assert!(decode_outcome::<u8>(&[], &mut scratch).is_err());
        assert!(decode_outcome::<u8>(&[9, 1], &mut scratch).is_err());
        let error = decode_outcome::<u8>(&[OUTCOME_OK_BULK, 0], &mut scratch).unwrap_err();
        assert_eq!(error.to_string(), "a bulk outcome with no reply slot");
    }

    #[test]
    fn decode_errors_read_plainly() {
        let mut scratch = [0; 64];
        let error = decode::<u64>(&[0x1b, 0], &mut scratch).unwrap_err();
        assert_eq!(error.to_string(), "truncated CBOR value");
        let error = decode::<u64>(&[0x61, b'x'], &mut scratch).unwrap_err();
        assert!(error.to_string().contains("expected"), "{error}");
    }
}
