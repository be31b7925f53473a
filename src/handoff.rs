//! What a parent tells a worker when it starts one: the contract that both
//! sides import, and the only one outside the wire protocol.
//!
//! The worker variable marks a worker and carries its [`WorkerConfig`] as
//! one short text, `parent,max_frame_bytes,memory_limit,log_level,backtraces,reply_slot`,
//! with empty fields for what is not set. A launcher that starts workers elsewhere passes the
//! same text on the remote command line.

/// Marks a worker process; its value is a [`WorkerConfig`], encoded. The
/// leading underscores say that it is not for users to set.
pub(crate) const WORKER_ENV: &str = "__BUCKSHOT_WORKER";

/// What a pool tells a worker at spawn time, through [`WORKER_ENV`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WorkerConfig {
    /// The process expected as the worker's parent, when the worker is a
    /// child of the pool's process: if it is gone already, so is the pool.
    /// A worker started through a launcher elsewhere (ssh, srun) has
    /// another parent, and no such check.
    pub parent: Option<u32>,
    pub max_frame_bytes: u32,
    pub memory_limit: Option<u64>,
    /// The most verbose level of events to send the pool: 0 is none, 1
    /// error ... 5 trace.
    pub log_level: u8,
    /// Whether a panic's report carries a backtrace.
    pub backtraces: bool,
    /// The pool's fd number of this worker's reply slot, for long strings
    /// in shared memory (a local worker only; see `bulk`).
    pub reply_slot: Option<u32>,
}

impl WorkerConfig {
    pub(crate) fn to_env(self) -> String {
        let optional = |value: Option<u64>| value.map_or(String::new(), |v| v.to_string());
        format!(
            "{},{},{},{},{},{}",
            optional(self.parent.map(u64::from)),
            self.max_frame_bytes,
            optional(self.memory_limit),
            self.log_level,
            u8::from(self.backtraces),
            optional(self.reply_slot.map(u64::from)),
        )
    }

    pub(crate) fn from_env(value: &str) -> Option<WorkerConfig> {
        let mut parts = value.split(',');
        let parent = match parts.next()? {
            "" => None,
            p => Some(p.parse().ok()?),
        };
        let max_frame_bytes = parts.next()?.parse().ok()?;
        let memory_limit = match parts.next()? {
            "" => None,
            m => Some(m.parse().ok()?),
        };
        let log_level = parts.next()?.parse().ok().filter(|&level| level <= 5)?;
        let backtraces = match parts.next()? {
            "0" => false,
            "1" => true,
            _ => return None,
        };
        let reply_slot = match parts.next()? {
            "" => None,
            fd => Some(fd.parse().ok()?),
        };
        if parts.next().is_some() {
            return None;
        }
        Some(WorkerConfig {
            parent,
            max_frame_bytes,
            memory_limit,
            log_level,
            backtraces,
            reply_slot,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_round_trip() {
        for parent in [None, Some(42)] {
            for memory_limit in [None, Some(1 << 30)] {
                for (log_level, backtraces, reply_slot) in [(0, false, None), (5, true, Some(9))] {
                    let config = WorkerConfig {
                        parent,
                        max_frame_bytes: 1 << 20,
                        memory_limit,
                        log_level,
                        backtraces,
                        reply_slot,
                    };
                    assert_eq!(WorkerConfig::from_env(&config.to_env()), Some(config));
                }
            }
        }
        assert_eq!(
            WorkerConfig::from_env("7,1024,,3,0,").map(|c| (c.parent, c.log_level)),
            Some((Some(7), 3))
        );
        for bad in [
            "x,1,,0,0,",
            "1,,,0,0,",
            "1,2,,6,0,",
            "1,2,,0,2,",
            "1,2,,0,0,x",
            "1,2,,0,0",
            "1,2,3",
            "1,2,3,4,0,,0",
            "",
        ] {
            assert_eq!(WorkerConfig::from_env(bad), None, "{bad:?}");
        }
    }
}
