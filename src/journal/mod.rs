//! The journal: finished outputs in a SQLite file, so that a map killed
//! halfway resumes where it stopped (feature `journal`,
//! [`PoolBuilder::journal`](crate::PoolBuilder::journal)).
//!
//! An output is keyed by a SHA-256 of its task's name, of its map's
//! context (its encoded value) and of its encoded input, both in a
//! canonical form ([`key`]: a `HashMap` encodes in another order in every
//! process). Two halves ([`record`]):
//! - the caller's (`Lookup`, one per map): before an input is sent, it is
//!   looked up; one that is there, and whose output still decodes, is
//!   answered from the journal and never sent. A map whose task and
//!   context had no outputs in the journal when it started looks nothing
//!   up (a first run pays no lookups);
//! - the pool's (`Recorder`, on the pool's thread): every `Ok` outcome is
//!   copied, with its input and key, into a batch that goes to the journal
//!   at each delivery ([`store`]). A writer thread commits what has come in
//!   one transaction, under WAL, so an output is in the file within
//!   milliseconds of its arrival, and a driver killed with SIGKILL loses
//!   only what was not committed yet. Until then the output is in a
//!   pending batch, which a map takes at its start: a map sees what the
//!   maps before it yielded.
//!   Dropping the pool flushes and joins the writer (`Journal::close`, at
//!   most `CLOSE_BOUND`). The pool's thread never waits for the writer:
//!   past `MAX_BACKLOG` bytes waiting, outcomes go unrecorded (and run
//!   again next time), and are counted ([`Pool::journal_unrecorded`]).
//!
//! Errors are not recorded: they run again next time. Several pools and
//! processes may share a file: SQLite locks it, and each connection waits
//! up to `BUSY_TIMEOUT` for another's transaction.
//!
//! Without the feature, `Lookup` and `Recorder` are never built and the
//! hooks cost a branch on `None`.
//!
//! [`Pool::journal_unrecorded`]: crate::Pool::journal_unrecorded

#[cfg(feature = "journal")]
mod key;
#[cfg(feature = "journal")]
mod record;
#[cfg(feature = "journal")]
mod store;

#[cfg(feature = "journal")]
pub(crate) use record::{Lookup, Recorder};
#[cfg(feature = "journal")]
pub(crate) use store::Journal;

#[cfg(not(feature = "journal"))]
pub(crate) use off::{Journal, Lookup, Recorder};

#[cfg(not(feature = "journal"))]
mod off {
    //! Stand-ins that cannot be built, so the hooks compile away.

    use std::sync::Arc;

    use serde::Serialize;
    use serde::de::DeserializeOwned;

    use crate::chunk::Chunk;
    use crate::shared::{MapTask, Shared};

    #[derive(Debug)]
    pub(crate) enum Journal {}

    impl Journal {
        pub(crate) fn close(&self) {
            match *self {}
        }
    }

    pub(crate) enum Lookup {}

    impl Lookup {
        pub(crate) fn for_map(_: &Shared, _: &MapTask) -> Option<Box<Lookup>> {
            None
        }

        pub(crate) fn answer<I: Serialize, O: DeserializeOwned>(&mut self, _: &I) -> Option<O> {
            match *self {}
        }
    }

    #[derive(Debug)]
    pub(crate) enum Recorder {}

    impl Recorder {
        pub(crate) fn new(_: Arc<Shared>) -> Option<Recorder> {
            None
        }

        pub(crate) fn record(&mut self, _: &Chunk, _: u32, _: &[u8]) {
            match *self {}
        }

        pub(crate) fn flush(&mut self) {
            match *self {}
        }

        pub(crate) fn forget_context(&mut self, _: u64) {
            match *self {}
        }
    }
}
