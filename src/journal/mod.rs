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
//!   copied, with its input, into a batch that goes to the journal at each
//!   delivery ([`store`]). A writer thread keys them and commits what has
//!   come in one transaction, under WAL, at most every `COMMIT_EVERY`
//!   (20 ms): an output is in the file within that, plus the commit's own
//!   time, of its arrival (one after a quiet spell goes at once), and a
//!   driver killed with SIGKILL loses only what was not committed yet.
//!   Until then the output is in a pending batch, which a map takes at its
//!   start: a map sees what the maps before it yielded.
//!   Dropping the pool flushes and joins the writer (`Journal::close`, at
//!   most `CLOSE_BOUND`). The pool's thread never waits for the writer:
//!   past `MAX_BACKLOG` bytes waiting, outcomes go unrecorded (and run
//!   again next time), and are counted ([`Pool::journal_unrecorded`]).
//!
//! Errors are not recorded: they run again next time. Several pools and
//! processes may share a file: SQLite locks it, and each connection waits
//! up to `BUSY_TIMEOUT` for another's transaction.
//!
//! The journal plugs into the pool's seams ([`crate::hooks`]): the
//! `Recorder` is an observer, the `Lookup`s are answerers. Without the
//! feature, [`plug`] says so and the pool has neither.
//!
//! [`Pool::journal_unrecorded`]: crate::Pool::journal_unrecorded

#[cfg(feature = "journal")]
mod key;
#[cfg(feature = "journal")]
mod record;
#[cfg(feature = "journal")]
mod store;

#[cfg(feature = "journal")]
pub(crate) use store::Journal;

#[cfg(not(feature = "journal"))]
pub(crate) use off::Journal;

use std::path::Path;
use std::sync::Arc;

use crate::error::BoxError;
use crate::hooks::Plugins;

/// Opens the journal at `path` and plugs it into a pool's `plugins`: its
/// recorder observes the pool, its lookups answer the maps, and it is
/// closed once the pool's thread has ended. Returns it, for its counts.
#[cfg(feature = "journal")]
pub(crate) fn plug(path: &Path, plugins: &mut Plugins) -> Result<Arc<Journal>, BoxError> {
    let journal = Arc::new(Journal::open(path)?);
    plugins
        .observers
        .push(Box::new(record::Recorder::new(Arc::clone(&journal))));
    plugins.answerers = Some(Arc::new(record::Lookups(Arc::clone(&journal))));
    let closing = Arc::clone(&journal);
    plugins.finishers.push(Box::new(move || closing.close()));
    Ok(journal)
}

/// Without the feature there is no journal to plug in.
#[cfg(not(feature = "journal"))]
pub(crate) fn plug(_: &Path, _: &mut Plugins) -> Result<Arc<Journal>, BoxError> {
    // The builder refuses a journal without the feature before this.
    Err("the journal needs the cargo feature `journal`".into())
}

#[cfg(not(feature = "journal"))]
mod off {
    /// No journal can be opened without the feature.
    #[derive(Debug)]
    pub(crate) enum Journal {}
}
