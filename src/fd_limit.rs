//! The pool's share of this process's limit on open descriptors.
//!
//! Each worker holds [`FDS_PER_WORKER`] descriptors in this process for
//! as long as it lives, and a spawn a few more for a moment. Past the soft
//! limit (`ulimit -n`, often 1,024) a spawn fails with EMFILE: a pool of
//! 1,000 workers quietly ran about 250, and the program's own `open`s
//! failed at random. So `build()` checks that the pool fits, with
//! [`HEADROOM`] left for the program: if not, it raises the soft limit by
//! what the pool needs, up to the hard limit (which needs no privilege),
//! and if even the hard limit is too low it refuses with
//! [`Error::Config`]. The raised limit is inherited by every process the
//! program starts afterwards, workers included.

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

use crate::error::Error;
use crate::process::FDS_PER_WORKER;
use crate::sys::open_fds;

/// Descriptors a pool holds besides its workers' own: its epoll set and
/// doorbell, spawns under way (each holds five more until its child has
/// exec'd: the duplicated request pipe, the child's ends of its output
/// pipes, std's exec-error pipe; three spawn at once), helper commands
/// (eight at once per launcher), a journal, spare memory segments.
const POOL_FDS: u64 = 64;
/// Descriptors left for the program itself, beyond what it has open when
/// the pool is built, and for workers that are being replaced while their
/// successors start.
const HEADROOM: u64 = 256;

/// Makes room for a pool of `workers` workers under the descriptor limit,
/// raising the soft limit if it must; an error if the hard limit is too
/// low.
pub(crate) fn make_room(workers: usize) -> Result<(), Error> {
    let limit = getrlimit(Resource::Nofile);
    let Some(soft) = limit.current else {
        return Ok(());
    };
    let config = |message| Error::Config { message };
    let Some(raised) = raised_limit(workers, open_fds(), soft, limit.maximum).map_err(config)?
    else {
        return Ok(());
    };
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(raised),
            maximum: limit.maximum,
        },
    )
    .map_err(|e| {
        config(format!(
            "{workers} workers need more open files than the soft limit ({soft}), which \
             could not be raised: {e}"
        ))
    })?;
    tracing::debug!(from = soft, to = raised, "limit on open files raised");
    Ok(())
}

/// The soft limit a pool of `workers` needs in a process with `open`
/// descriptors open, under limits `soft` and `hard` (`None`: infinite), if
/// it must be raised; why it cannot be, if the hard limit is too low.
fn raised_limit(
    workers: usize,
    open: u64,
    soft: u64,
    hard: Option<u64>,
) -> Result<Option<u64>, String> {
    let pool = workers as u64 * FDS_PER_WORKER + POOL_FDS;
    let needed = open + pool + HEADROOM;
    if soft >= needed {
        return Ok(None);
    }
    if let Some(hard) = hard.filter(|&hard| hard < needed) {
        return Err(format!(
            "{workers} workers need about {pool} open files in this process, which has \
             {open} open and may have at most {hard} (`ulimit -Hn`): raise that limit or \
             start fewer workers"
        ));
    }
    // What the program had room for stays its own, as far as the hard
    // limit allows.
    let raised = (soft + pool).max(needed);
    Ok(Some(hard.map_or(raised, |hard| raised.min(hard))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_is_raised_by_what_the_pool_needs_within_the_hard_one() {
        // 100 workers: 664 descriptors natively; with 10 open, 930 needed.
        let share = 100 * FDS_PER_WORKER + POOL_FDS;
        let needed = share + 10 + HEADROOM;
        assert_eq!(raised_limit(100, 10, needed, Some(4096)), Ok(None));
        assert_eq!(raised_limit(100, 10, 2000, None), Ok(None));
        // The program keeps the room it had: raised by the pool's share.
        let short = needed - 1;
        assert_eq!(
            raised_limit(100, 10, short, Some(4096)),
            Ok(Some(short + share))
        );
        assert_eq!(raised_limit(100, 10, short, None), Ok(Some(short + share)));
        // ...as far as the hard limit allows.
        assert_eq!(raised_limit(100, 10, short, Some(1000)), Ok(Some(1000)));
        assert_eq!(raised_limit(100, 10, 64, Some(4096)), Ok(Some(needed)));
        assert_eq!(raised_limit(100, 10, 64, Some(needed)), Ok(Some(needed)));
        assert_eq!(
            raised_limit(100, 10, 64, Some(short)),
            Err(format!(
                "100 workers need about {share} open files in this process, which has 10 open \
                 and may have at most {short} (`ulimit -Hn`): raise that limit or start fewer \
                 workers"
            ))
        );
    }
}
