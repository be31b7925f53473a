//! The wire format between a pool and its workers.
//!
//! Every message is a frame: a little-endian `u32` length, then that many
//! bytes, the first of which is the frame's kind.
//!
//! ```text
//! frame  = len:u32 kind:u8 body                       len = 1 + body length
//! HELLO  worker -> pool  body = CBOR Hello            sent once, at start-up
//! RUN    pool -> worker  body = task:u32 context:u64 first_seq:u64 count:u32 items
//! REPLY  worker -> pool  body = first_seq:u64 count:u32 busy_ns:u64 flags:u8 items
//! FATAL  worker -> pool  body = UTF-8 message         the worker exits next
//! CONTEXT pool -> worker body = id:u64 cbor           before the first RUN that reads it
//! CONTEXT_BESIDE         body = id:u64 place          the same, its cbor in shared memory
//! FORGET pool -> worker  body = id:u64                no RUN will read it again
//! LOG    worker -> pool  body = seq:u64 CBOR LogRecord  an event a task emitted while item
//!                                                     seq ran (all ones: none ran)
//! RETIRE pool -> worker  body = (none)                after its last RUN: exit once done
//! PANIC  worker -> pool  body = seq:u64 CBOR PanicReport  item seq panicked; its backtrace
//!                                                     is being made, the REPLY follows
//! RETIRED worker -> pool body = (none)                right after a REPLY: it runs nothing more
//! items  = (len:u32 cbor)*                            one CBOR value each
//! ```
//!
//! Between a pool and its local workers, an item's long strings may travel
//! beside it, in shared memory: an input item then starts with
//! [`INPUT_MARK`] (never the first byte of a CBOR value), an outcome with
//! [`OUTCOME_OK_BULK`], and a table of where the strings go back in comes
//! before the CBOR. This module knows those tags and plain CBOR only;
//! `bulk`, above it, writes and reads such items, and its callers choose
//! it as their encoder.
//!
//! A PANIC frame stops the clock of the input it names: symbolising a
//! backtrace (only when the pool's process asked for them) takes a fresh
//! worker hundreds of milliseconds, which are not the task's.
//!
//! A worker that must not run more (see `sandbox::cpu`) sends RETIRED after
//! the replies of the RUN frame it ran last, and exits: the frames it was
//! sent after that one never started, whether or not it read them.
//!
//! A RUN frame's context is 0 when its task reads none. A worker keeps a
//! context's value from the CONTEXT frame to the FORGET frame; CONTEXT and
//! FORGET frames are not answered. Between a pool and its local workers, a
//! long context's value goes once into shared memory, and each worker is
//! sent a CONTEXT_BESIDE frame instead, whose `place` (`bulk` writes and
//! reads it) says where the value is.
//!
//! Sequence numbers count items, per worker, from 0: a RUN frame carries
//! items `first_seq..first_seq + count`, and the worker answers every item, in
//! order, in REPLY frames that may group them differently but answer at least
//! one item each. A reply item is an [`Outcome`]. Headers are fixed-size
//! binary so that the pool can stamp a sequence number into a frame built
//! elsewhere, and items carry their own length so that a frame can be split
//! between results or re-sent in part without knowing the CBOR types inside.
//!
//! Every length is checked against a limit before anything is allocated.
//!
//! - [`frame`]: the frame layout, the header structs and the item writer;
//! - [`codec`]: CBOR values and outcomes;
//! - [`plain`]: a short cut past ciborium for values that are one scalar;
//! - [`read`]: reading frames, blocking (the worker) or not (the pool).

mod codec;
mod frame;
mod plain;
mod read;

#[cfg(feature = "journal")]
pub(crate) use codec::ok_value;
pub(crate) use codec::{
    CodecError, OUTCOME_OK, OUTCOME_OK_BULK, Outcome, decode, decode_from, decode_outcome, encode,
    encode_failure, encode_ok, encode_plain, encode_with, is_bulk_outcome, is_panic,
};
pub(crate) use frame::LEN_BYTES;
pub(crate) use frame::{
    CONTEXT, CONTEXT_BESIDE, FATAL, FORGET, HELLO, Hello, INPUT_MARK, ITEM_LEN_BYTES, Items, LOG,
    PANIC, REPLY, RETIRE, RETIRE_FRAME, RETIRED, RETIRED_FRAME, RUN, ReplyHeader, RunFrame,
    RunHeader, begin_item, brings_context, context_beside_frame, context_frame, end_item,
    forget_frame, items_len, log_frame, panic_frame, parse_context, parse_log, parse_panic,
    push_frame, push_item, run_items,
};
pub(crate) use read::{FrameBuffer, read_frame};

/// Bumped whenever the format changes. A worker speaking another version is
/// refused at the handshake.
pub(crate) const VERSION: u32 = 9;

/// A protocol violation by the peer. Both the frame parsers and the readers
/// report it, so it lives here, where both import it from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProtocolError(pub String);

impl ProtocolError {
    pub(crate) fn new(message: impl Into<String>) -> ProtocolError {
        ProtocolError(message.into())
    }
}

impl std::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ProtocolError {}
