//! What follows the operating system, whichever backend runs on it.

use rustix::process::Resource;

/// The system's name, for messages.
pub(crate) fn platform() -> &'static str {
    if cfg!(target_os = "macos") {
        "macOS"
    } else if cfg!(target_os = "freebsd") {
        "FreeBSD"
    } else if cfg!(target_os = "linux") {
        "Linux"
    } else {
        std::env::consts::OS
    }
}

/// Whether the kernel started this process in secure mode (`AT_SECURE`):
/// its effective ids or capabilities differ from those of whoever ran it
/// (setuid, setgid, file capabilities).
#[cfg(target_os = "linux")]
pub(crate) fn is_privileged() -> bool {
    // SAFETY: getauxval reads the auxiliary vector the kernel gave this
    // process; it has no preconditions and returns 0 for a missing entry.
    unsafe { libc::getauxval(libc::AT_SECURE) != 0 }
}

/// Whether this process was made setuid or setgid (`issetugid`), or its
/// ids changed since it started.
#[cfg(not(target_os = "linux"))]
pub(crate) fn is_privileged() -> bool {
    // SAFETY: issetugid takes nothing and only returns a flag.
    unsafe { libc::issetugid() != 0 }
}

/// The resource limit that bounds the memory a process maps, if the
/// system enforces one.
///
/// - Linux: `RLIMIT_DATA` (heap, anonymous and private writable mappings,
///   thread stacks), not `RLIMIT_AS`: the address space counts what is
///   reserved, not used, and glibc reserves 64 MiB of it per malloc arena.
/// - FreeBSD: `RLIMIT_AS`, as its `RLIMIT_DATA` leaves out `mmap`.
/// - macOS enforces neither: none.
pub(crate) const MEMORY_RESOURCE: Option<Resource> = if cfg!(target_os = "linux") {
    Some(Resource::Data)
} else if cfg!(target_os = "freebsd") {
    Some(Resource::As)
} else {
    None
};

/// The file that says what [`MEMORY_RESOURCE`] counts for this process
/// now, opened while it can be (before a sandbox that may hide `/proc`).
pub(crate) fn open_memory_status() -> Option<std::fs::File> {
    if cfg!(target_os = "linux") {
        std::fs::File::open("/proc/self/status").ok()
    } else {
        None
    }
}

/// What [`MEMORY_RESOURCE`] counts now, from [`open_memory_status`]'s file:
/// `VmData`.
pub(crate) fn memory_in_use(mut status: std::fs::File) -> Option<u64> {
    let mut text = String::new();
    std::io::Read::read_to_string(&mut status, &mut text).ok()?;
    let line = text.lines().find(|line| line.starts_with("VmData:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
