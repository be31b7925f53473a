//! The worker's Landlock domain: the file rules, named UNIX sockets under
//! `no_network`, and a scope on signals and abstract sockets for every
//! sandbox.
//!
//! Rights are asked of the newest ABI the `landlock` crate knows, best
//! effort (the crate drops those the kernel lacks), and what the kernel
//! enforced is then checked here against what each rule needs, since the
//! crate reports a ruleset that lacks rights as merely "partially
//! enforced":
//! - the file rules need every file right of ABI 5 (Linux 6.10): below it,
//!   `truncate(2)` by path (ABI 3) or device ioctls (ABI 5) work on any
//!   file. `refer` (ABI 2) is not needed: without it, ABI 1 denies every
//!   rename and link across directories;
//! - `resolve_unix` (ABI 9, Linux 7.1) denies connecting and sending to
//!   named UNIX sockets outside the paths that grant it; under
//!   `no_network`, none grants it. Below ABI 9 the caller denies UNIX
//!   sockets with seccomp instead.

use landlock::{
    ABI, Access, AccessFs, BitFlags, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus,
    Scope, path_beneath_rules,
};

use super::Sandbox;

/// The newest ABI whose rights the worker asks for.
const NEWEST: ABI = ABI::V9;

/// The ABI whose file rights the file rules need.
const FILES_ABI: ABI = ABI::V5;

/// What the kernel enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Domain {
    /// The ABI the ruleset was built for: the kernel's, or the newest the
    /// crate knows if the kernel's is newer.
    pub abi: ABI,
}

impl Domain {
    /// Whether named UNIX sockets are denied by Landlock.
    pub(crate) fn denies_unix_sockets(self) -> bool {
        AccessFs::from_all(self.abi).contains(AccessFs::ResolveUnix)
    }

    /// The file rights the file rules need that this domain lacks.
    pub(crate) fn missing_file_rights(self) -> BitFlags<AccessFs> {
        let needed = AccessFs::from_all(FILES_ABI) & !BitFlags::from(AccessFs::Refer);
        needed & !AccessFs::from_all(self.abi)
    }

    /// Why the file rules do not fully hold here, if they do not.
    pub(crate) fn files_shortfall(self) -> Option<String> {
        let missing = self.missing_file_rights();
        if missing.is_empty() {
            return None;
        }
        let names: Vec<String> = missing.iter().map(describe).collect();
        Some(format!(
            "Landlock ABI {} of this kernel cannot deny {}",
            self.abi,
            names.join(", ")
        ))
    }
}

/// A right the file rules need, with the ABI and Linux release that
/// brought it.
fn describe(right: AccessFs) -> String {
    let (name, abi, linux) = match right {
        AccessFs::Truncate => ("truncate", 3, "6.2"),
        AccessFs::IoctlDev => ("ioctl_dev", 5, "6.10"),
        other => return format!("{other:?}"),
    };
    format!("{name} (ABI {abi}, Linux {linux})")
}

/// Restricts this process: with `files`, to the sandbox's paths; with
/// `deny_unix`, away from every named UNIX socket. `Err` if the kernel
/// enforces no Landlock at all (or a path is missing).
pub(crate) fn restrict(sandbox: &Sandbox, files: bool, deny_unix: bool) -> Result<Domain, String> {
    if files {
        for path in sandbox.read_only.iter().chain(&sandbox.read_write) {
            if let Err(e) = std::fs::metadata(path) {
                return Err(format!("{}: {e}", path.display()));
            }
        }
    }
    let unix = if deny_unix {
        BitFlags::from(AccessFs::ResolveUnix)
    } else {
        BitFlags::EMPTY
    };
    let handled = if files {
        AccessFs::from_all(NEWEST)
    } else {
        unix
    };
    let fail = |e: landlock::RulesetError| format!("Landlock: {e}");
    let mut ruleset = Ruleset::default();
    if !handled.is_empty() {
        ruleset = ruleset.handle_access(handled).map_err(fail)?;
    }
    let mut created = ruleset
        .scope(Scope::from_all(ABI::V6))
        .map_err(fail)?
        .create()
        .map_err(fail)?;
    if files {
        // The binary stays readable, for backtraces.
        let binary = std::env::current_exe().ok();
        created = created
            .add_rules(path_beneath_rules(
                sandbox.read_only.iter().chain(&binary),
                AccessFs::from_read(NEWEST),
            ))
            .map_err(fail)?
            .add_rules(path_beneath_rules(
                &sandbox.read_write,
                AccessFs::from_all(NEWEST) & !unix,
            ))
            .map_err(fail)?;
    }
    let status = created.restrict_self().map_err(fail)?;
    if status.ruleset == RulesetStatus::NotEnforced {
        return Err("this kernel does not enforce Landlock".to_owned());
    }
    Ok(Domain {
        abi: ABI::from(status.landlock),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_abi_lacks_what_came_after_it() {
        let shortfall = |abi| Domain { abi }.files_shortfall();
        assert_eq!(
            shortfall(ABI::V1).unwrap(),
            "Landlock ABI 1 of this kernel cannot deny truncate (ABI 3, Linux 6.2), \
             ioctl_dev (ABI 5, Linux 6.10)"
        );
        assert_eq!(
            shortfall(ABI::V4).unwrap(),
            "Landlock ABI 4 of this kernel cannot deny ioctl_dev (ABI 5, Linux 6.10)"
        );
        for abi in [ABI::V5, ABI::V7, ABI::V9] {
            assert_eq!(shortfall(abi), None);
        }
        let unix = |abi| Domain { abi }.denies_unix_sockets();
        assert!(!unix(ABI::V8) && unix(ABI::V9));
    }
}
