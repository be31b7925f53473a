//! Whether this process runs with privileges it was not given by whoever
//! ran it: then none of the hidden modes ([`crate::entry`]) may run.

/// Whether the kernel started this process in secure mode (`AT_SECURE`):
/// its effective ids or capabilities differ from those of whoever ran it
/// (setuid, setgid, file capabilities). Its copies would refuse every
/// hidden mode.
pub(crate) fn is_privileged() -> bool {
    // SAFETY: getauxval reads the auxiliary vector the kernel gave this
    // process; it has no preconditions and returns 0 for a missing entry.
    unsafe { libc::getauxval(libc::AT_SECURE) != 0 }
}
