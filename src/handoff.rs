//! What a parent tells a worker when it starts one: the contract that both
//! sides import, and the only one outside the wire protocol.
//!
//! The worker variable marks a worker and carries its [`WorkerConfig`] as
//! one short text,
//! `parent,max_frame_bytes,memory_limit,log_level,backtraces,reply_slot,initializer,max_rss`,
//! with empty fields for what is not set. A launcher that starts workers elsewhere passes the
//! same text on the remote command line, with the variables the pool's
//! user set for workers ([`Handoff`]).

use std::ffi::{OsStr, OsString};

/// Marks a worker process; its value is a [`WorkerConfig`], encoded. The
/// leading underscores say that it is not for users to set.
pub(crate) const WORKER_ENV: &str = "__BUCKSHOT_WORKER";

/// Whether `name` is a variable of the pool's own handoff, or one that
/// changes what a copy of the program does before `main`
/// (`__BUCKSHOT_WORKER`, `BUCKSHOT_REPLAY`, ...): not for a user to set in
/// workers' environment.
pub(crate) fn is_reserved(name: &OsStr) -> bool {
    let name = name.as_encoded_bytes();
    let start = name.iter().take_while(|&&b| b == b'_').count();
    name[start..].starts_with(b"BUCKSHOT_")
}

/// The variables set in workers' environment
/// ([`PoolBuilder::env`](crate::PoolBuilder::env)), in the order set.
/// `Debug` shows their names only: a value may be a secret.
#[derive(Clone, Default)]
pub(crate) struct WorkerEnv(pub Vec<(OsString, OsString)>);

impl std::fmt::Debug for WorkerEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(name, _)| name))
            .finish()
    }
}

/// Everything a worker is started with: its [`WorkerConfig`], and the
/// variables the pool's user set in workers' environment
/// ([`PoolBuilder::env`](crate::PoolBuilder::env)). A launcher puts both
/// in the worker's environment, on this machine or on the remote command
/// line.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Handoff<'a> {
    pub config: WorkerConfig,
    /// Names and values, in the order set; no name is reserved
    /// ([`is_reserved`]).
    pub env: &'a [(OsString, OsString)],
}

impl Handoff<'_> {
    /// The worker's variables, the user's first and the worker variable
    /// last, as names and values.
    pub(crate) fn vars(&self) -> impl Iterator<Item = (OsString, OsString)> + '_ {
        self.env.iter().cloned().chain(std::iter::once((
            OsString::from(WORKER_ENV),
            OsString::from(self.config.to_env()),
        )))
    }

    /// The same, as `NAME=VALUE` words for `env`.
    pub(crate) fn assignments(&self) -> impl Iterator<Item = OsString> + '_ {
        self.vars().map(|(name, value)| {
            let mut word = name;
            word.push("=");
            word.push(value);
            word
        })
    }
}

/// A registered task, as a worker finds it: its position in the task
/// table, and a digest of the table, so that a worker whose table differs
/// runs nothing by position (its handshake says what differs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TaskRef {
    pub position: u32,
    pub table: u64,
}

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
    /// The task to run once before the handshake, if any.
    pub initializer: Option<TaskRef>,
    /// The resident memory past which the worker retires after a message.
    pub max_rss: Option<u64>,
}

impl WorkerConfig {
    pub(crate) fn to_env(self) -> String {
        let optional = |value: Option<u64>| value.map_or(String::new(), |v| v.to_string());
        format!(
            "{},{},{},{},{},{},{},{}",
            optional(self.parent.map(u64::from)),
            self.max_frame_bytes,
            optional(self.memory_limit),
            self.log_level,
            u8::from(self.backtraces),
            optional(self.reply_slot.map(u64::from)),
            self.initializer.map_or(String::new(), |task| format!(
                "{}:{}",
                task.position, task.table
            )),
            optional(self.max_rss),
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
        let initializer = match parts.next()? {
            "" => None,
            task => {
                let (position, table) = task.split_once(':')?;
                Some(TaskRef {
                    position: position.parse().ok()?,
                    table: table.parse().ok()?,
                })
            }
        };
        let max_rss = match parts.next()? {
            "" => None,
            bytes => Some(bytes.parse().ok()?),
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
            initializer,
            max_rss,
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
                for (log_level, backtraces, reply_slot, initializer, max_rss) in [
                    (0, false, None, None, None),
                    (
                        5,
                        true,
                        Some(9),
                        Some(TaskRef {
                            position: 3,
                            table: u64::MAX,
                        }),
                        Some(2 << 30),
                    ),
                ] {
                    let config = WorkerConfig {
                        parent,
                        max_frame_bytes: 1 << 20,
                        memory_limit,
                        log_level,
                        backtraces,
                        reply_slot,
                        initializer,
                        max_rss,
                    };
                    assert_eq!(WorkerConfig::from_env(&config.to_env()), Some(config));
                }
            }
        }
        assert_eq!(
            WorkerConfig::from_env("7,1024,,3,0,,,").map(|c| (c.parent, c.log_level)),
            Some((Some(7), 3))
        );
        assert_eq!(
            WorkerConfig::from_env("7,1024,,3,0,,2:99,4096").map(|c| (c.initializer, c.max_rss)),
            Some((
                Some(TaskRef {
                    position: 2,
                    table: 99
                }),
                Some(4096)
            ))
        );
        for bad in [
            "x,1,,0,0,,,",
            "1,,,0,0,,,",
            "1,2,,6,0,,,",
            "1,2,,0,2,,,",
            "1,2,,0,0,x,,",
            "1,2,,0,0,,2,",
            "1,2,,0,0,,2:,",
            "1,2,,0,0,,:1,",
            "1,2,,0,0,,,x",
            "1,2,,0,0,,",
            "1,2,,0,0",
            "1,2,3",
            "1,2,3,4,0,,,,0",
            "",
        ] {
            assert_eq!(WorkerConfig::from_env(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_pools_own_variables_are_reserved() {
        for name in [
            "__BUCKSHOT_WORKER",
            "__BUCKSHOT_SANDBOX",
            "BUCKSHOT_REPLAY",
            "BUCKSHOT_ANYTHING",
            "_BUCKSHOT_X",
        ] {
            assert!(is_reserved(OsStr::new(name)), "{name}");
        }
        for name in [
            "OMP_NUM_THREADS",
            "BUCKSHOT",
            "MY_BUCKSHOT_X",
            "buckshot_x",
            "__",
        ] {
            assert!(!is_reserved(OsStr::new(name)), "{name}");
        }
    }

    #[test]
    fn a_handoff_sets_the_users_variables_then_the_worker_variable() {
        let config = WorkerConfig::from_env("7,1024,,3,0,,,").unwrap();
        let env = [(OsString::from("A"), OsString::from("x=y z"))];
        let words: Vec<OsString> = Handoff { config, env: &env }.assignments().collect();
        assert_eq!(
            words,
            [
                OsString::from("A=x=y z"),
                OsString::from(format!("{WORKER_ENV}={}", config.to_env()))
            ]
        );
    }
}
