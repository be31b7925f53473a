//! Ways out of a sandbox that its rules close, against real workers: file
//! metadata, named UNIX sockets, a Landlock that enforces only part of the
//! file rights, and root's capabilities where user namespaces are denied.
//! Kernels that lack a feature are reproduced where a filter can do it
//! (see `pretend_landlock_abi` and `deny_user_namespaces`).

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use buckshot::{Error, Pool, Sandbox, SandboxRule};

/// A pool of `sandbox` with two workers, or `None` (and a skip) if its
/// rules do not all come up here.
fn sandboxed(sandbox: Sandbox, feature: &str) -> Option<Pool> {
    let asked = Pool::builder()
        .processes(1)
        .sandbox(sandbox.clone().best_effort())
        .build()
        .unwrap()
        .sandbox_rules()
        .len();
    let pool = Pool::builder().processes(2).sandbox(sandbox).build();
    match pool {
        Ok(pool) => Some(pool),
        Err(e @ Error::Sandbox { .. }) => {
            common::skip(feature, &format!("{e} ({asked} rules come up)"));
            None
        }
        Err(e) => panic!("{e}"),
    }
}

fn errno<T>(result: std::io::Result<T>) -> Option<i32> {
    result.err().map(|e| e.raw_os_error().unwrap_or(-1))
}

fn last_errno(rc: libc::c_int) -> Option<i32> {
    (rc != 0).then(|| std::io::Error::last_os_error().raw_os_error().unwrap())
}

fn c_path(path: &Path) -> std::ffi::CString {
    std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap()
}

/// Tries to change `target`'s metadata every way there is: mode by path
/// and by descriptor (opened for reading, as a read-only path allows),
/// owner (to itself), times, an extended attribute set and removed. The
/// last is `stat`, which works anywhere.
fn change_metadata(target: PathBuf) -> Vec<Option<i32>> {
    let path = c_path(&target);
    let (uid, gid) = (rustix::process::getuid(), rustix::process::getgid());
    let by_fd = std::fs::File::open(&target)
        .and_then(|file| file.set_permissions(std::fs::Permissions::from_mode(0o4777)));
    // SAFETY: each call reads the NUL-terminated path and buffers given,
    // which outlive it.
    let (times, set_xattr, remove_xattr, fchmodat2) = unsafe {
        (
            last_errno(libc::utimensat(
                libc::AT_FDCWD,
                path.as_ptr(),
                std::ptr::null(),
                0,
            )),
            last_errno(libc::setxattr(
                path.as_ptr(),
                c"user.buckshot".as_ptr(),
                b"x".as_ptr().cast(),
                1,
                0,
            )),
            last_errno(libc::removexattr(path.as_ptr(), c"user.kept".as_ptr())),
            last_errno(libc::syscall(452, libc::AT_FDCWD, path.as_ptr(), 0o777, 0) as libc::c_int),
        )
    };
    vec![
        errno(std::fs::set_permissions(
            &target,
            std::fs::Permissions::from_mode(0o4777),
        )),
        errno(by_fd),
        fchmodat2,
        errno(std::os::unix::fs::chown(
            &target,
            Some(uid.as_raw()),
            Some(gid.as_raw()),
        )),
        times,
        set_xattr,
        remove_xattr,
        errno(std::fs::metadata(&target)),
    ]
}
buckshot::register!(change_metadata);

/// A file with mode 0644, an old modification time and one extended
/// attribute; what a task must not change.
fn guarded_file(path: &Path) {
    std::fs::write(path, b"data").unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let file = std::fs::File::options().write(true).open(path).unwrap();
    file.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000))
        .unwrap();
    let c = c_path(path);
    // SAFETY: reads the NUL-terminated strings and the buffer.
    let rc = unsafe {
        libc::setxattr(
            c.as_ptr(),
            c"user.kept".as_ptr(),
            b"k".as_ptr().cast(),
            1,
            0,
        )
    };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
}

/// The mode, modification time and extended attributes of `path`.
fn metadata_of(path: &Path) -> (u32, i64, Vec<u8>) {
    let meta = std::fs::metadata(path).unwrap();
    let c = c_path(path);
    let mut names = vec![0u8; 256];
    // SAFETY: writes at most `names.len()` bytes into `names`.
    let n = unsafe { libc::listxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    names.truncate(n.max(0) as usize);
    (meta.mode() & 0o7777, meta.mtime(), names)
}

#[test]
fn file_rules_stop_metadata_changes_everywhere_and_stat_works() {
    let scratch = common::TempDir::new("sandbox-metadata");
    let (ro, rw, outside) = (
        scratch.0.join("ro"),
        scratch.0.join("rw"),
        scratch.0.join("outside"),
    );
    for dir in [&ro, &rw, &outside] {
        std::fs::create_dir_all(dir).unwrap();
    }
    let targets = [ro.join("data"), rw.join("data"), outside.join("data")];
    let control = Pool::new(1).unwrap();
    guarded_file(&targets[2]);
    assert_eq!(
        control.call(change_metadata, targets[2].clone()).unwrap(),
        [None; 8],
        "control changes metadata"
    );
    let sandbox = Sandbox::new().read_only(&ro).read_write(&rw);
    let Some(pool) = sandboxed(sandbox, "landlock") else {
        return;
    };
    assert_eq!(pool.sandbox_rules(), [SandboxRule::Files]);
    let denied = Some(libc::EPERM);
    for target in targets {
        guarded_file(&target);
        let before = metadata_of(&target);
        let done = pool.call(change_metadata, target.clone()).unwrap();
        // Outside the paths, opening for fchmod fails first, with EACCES.
        let by_fd = if target.starts_with(&outside) {
            Some(libc::EACCES)
        } else {
            denied
        };
        assert_eq!(
            done,
            [denied, by_fd, denied, denied, denied, denied, denied, None],
            "{}",
            target.display()
        );
        assert_eq!(metadata_of(&target), before, "{}", target.display());
    }
}

/// Tries to reach the named sockets at `stream` and `datagram`: connect
/// (stream), send to (from a datagram pair), and makes a stream pair of
/// its own. Each error, `None` for success.
fn reach_sockets((stream, datagram): (PathBuf, PathBuf)) -> Vec<Option<i32>> {
    use std::os::unix::net::{UnixDatagram, UnixStream};
    let connect = errno(UnixStream::connect(&stream));
    let send = errno(UnixDatagram::pair().and_then(|(a, _b)| a.send_to(b"x", &datagram)));
    let pair = errno(UnixStream::pair());
    vec![connect, send, pair]
}
buckshot::register!(reach_sockets);

#[test]
fn named_unix_sockets_are_out_of_reach_under_no_network() {
    let scratch = common::TempDir::new("sandbox-unix");
    let (stream, datagram) = (scratch.0.join("stream.sock"), scratch.0.join("dgram.sock"));
    let listener = std::os::unix::net::UnixListener::bind(&stream).unwrap();
    let receiver = std::os::unix::net::UnixDatagram::bind(&datagram).unwrap();
    listener.set_nonblocking(true).unwrap();
    receiver.set_nonblocking(true).unwrap();
    let control = Pool::new(1).unwrap();
    let paths = (stream.clone(), datagram.clone());
    assert_eq!(
        control.call(reach_sockets, paths.clone()).unwrap(),
        [None; 3]
    );
    assert!(listener.accept().is_ok() && receiver.recv(&mut [0; 8]).is_ok());
    // Landlock from ABI 9 (Linux 7.1) denies the path; below it, no UNIX
    // socket can be created but stream pairs.
    let (connect, send) = if common::landlock_abi() >= 9 {
        (Some(libc::EACCES), Some(libc::EACCES))
    } else {
        (Some(libc::EPERM), Some(libc::EPERM))
    };
    let sandboxes = [
        Sandbox::new().no_network(),
        // The sockets lie in a path the task may write: still denied.
        Sandbox::new().no_network().read_write(&scratch.0),
    ];
    for sandbox in sandboxes {
        let Some(pool) = sandboxed(sandbox.clone(), "userns") else {
            return;
        };
        for _ in 0..3 {
            assert_eq!(
                pool.call(reach_sockets, paths.clone()).unwrap(),
                [connect, send, None],
                "{sandbox:?}"
            );
        }
        let nothing = std::io::ErrorKind::WouldBlock;
        assert_eq!(listener.accept().unwrap_err().kind(), nothing);
        assert_eq!(receiver.recv(&mut [0; 8]).unwrap_err().kind(), nothing);
    }
}

// Reproductions of kernels and set-ups that lack a feature, by seccomp
// filters on the thread that builds the pool: its threads (the pool's,
// which spawn workers) and processes (the probe, the workers) inherit them.

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xc000_003e;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xc000_00b7;

/// Makes the calling thread, and the threads and processes it starts from
/// then on, see Landlock ABI `abi` when they ask the kernel which ABI it
/// has: a filter hands that one call (`landlock_create_ruleset` with the
/// version flag) to a thread of this process, which answers `abi`. The
/// other Landlock calls reach the kernel as they are, so a ruleset built
/// for that ABI is what the kernel enforces. `Err` if this kernel cannot
/// (seccomp user notifications: Linux 5.0).
fn pretend_landlock_abi(abi: i64) -> Result<(), String> {
    let statement = |code: u32, k: u32| libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let jump_unless = |k: u32, to_allow: u8| libc::sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt: 0,
        jf: to_allow,
        k,
    };
    let load = |offset: u32| statement(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, offset);
    let program = [
        load(4), // arch
        jump_unless(AUDIT_ARCH, 5),
        load(0), // syscall number
        jump_unless(libc::SYS_landlock_create_ruleset as u32, 3),
        load(32), // low half of the third argument: flags
        jump_unless(1, 1),
        statement(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_USER_NOTIF),
        statement(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW),
    ];
    let fprog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_ptr().cast_mut(),
    };
    // SAFETY: no_new_privs on this thread only; the filter program lives
    // across the call, which copies it.
    let listener = unsafe {
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            libc::SECCOMP_FILTER_FLAG_NEW_LISTENER,
            &fprog,
        )
    };
    if listener < 0 {
        return Err(format!(
            "seccomp user notifications: {}",
            std::io::Error::last_os_error()
        ));
    }
    let listener = listener as libc::c_int;
    // Answers for as long as this test process lives.
    std::thread::spawn(move || {
        loop {
            // SAFETY: the kernel fills the zeroed request; the response
            // is read from a live struct.
            unsafe {
                let mut request: libc::seccomp_notif = std::mem::zeroed();
                if libc::ioctl(listener, libc::SECCOMP_IOCTL_NOTIF_RECV, &mut request) != 0 {
                    continue;
                }
                let mut response: libc::seccomp_notif_resp = std::mem::zeroed();
                response.id = request.id;
                response.val = abi;
                libc::ioctl(listener, libc::SECCOMP_IOCTL_NOTIF_SEND, &response);
            }
        }
    });
    Ok(())
}

/// Opens `path` for writing; its error, `None` for success.
fn open_for_writing(path: PathBuf) -> Option<i32> {
    errno(std::fs::File::options().write(true).open(path))
}
buckshot::register!(open_for_writing);

/// Truncates `path` by path, `truncate(2)`, without opening it.
fn truncate_by_path(path: PathBuf) -> Option<i32> {
    let path = c_path(&path);
    // SAFETY: reads the NUL-terminated path, which outlives the call.
    last_errno(unsafe { libc::truncate(path.as_ptr(), 0) })
}
buckshot::register!(truncate_by_path);

#[test]
fn a_landlock_that_lacks_file_rights_does_not_count_as_in_force() {
    if common::portable_lacks("sandbox (its rules are Linux only)") {
        return;
    }
    if common::landlock_abi() < 3 {
        common::skip(
            "landlock",
            &format!("this kernel has Landlock ABI {}", common::landlock_abi()),
        );
        return;
    }
    let scratch = common::TempDir::new("sandbox-partial-landlock");
    let (rw, outside) = (scratch.0.join("rw"), scratch.0.join("outside"));
    std::fs::create_dir_all(&rw).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    let target = outside.join("data");
    std::fs::write(&target, b"not to be truncated").unwrap();
    let thread = std::thread::spawn(move || {
        if let Err(why) = pretend_landlock_abi(2) {
            common::skip("seccomp", &why);
            return;
        }
        let sandbox = Sandbox::new().read_write(&rw);
        match Pool::builder()
            .processes(1)
            .sandbox(sandbox.clone())
            .build()
        {
            Err(error @ Error::Sandbox { .. }) => assert_eq!(
                error.to_string(),
                "sandbox rule files cannot come up: Landlock ABI 2 of this kernel \
                 cannot deny truncate (ABI 3, Linux 6.2), ioctl_dev (ABI 5, Linux 6.10)"
            ),
            Err(other) => panic!("{other}"),
            Ok(pool) => panic!(
                "a partial Landlock counted as in force: truncate by path {:?}",
                pool.call(truncate_by_path, target.clone()).unwrap()
            ),
        }
        // Best effort: the rights ABI 2 has hold, the others do not.
        let pool = Pool::builder()
            .processes(1)
            .sandbox(sandbox.best_effort())
            .build()
            .unwrap();
        assert_eq!(pool.sandbox_rules(), [SandboxRule::Files]);
        assert_eq!(
            pool.call(open_for_writing, target.clone()).unwrap(),
            Some(libc::EACCES)
        );
        assert_eq!(pool.call(truncate_by_path, target.clone()).unwrap(), None);
        assert_eq!(std::fs::read(&target).unwrap(), b"");
    });
    thread.join().unwrap();
}

/// Makes the user namespace unshare fail with EPERM for the calling thread
/// and what it starts from then on, as where user namespaces are disabled.
fn deny_user_namespaces() -> Result<(), String> {
    use seccompiler::{
        SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
    };
    let new_user = libc::CLONE_NEWUSER as u64;
    let condition = SeccompCondition::new(
        0,
        SeccompCmpArgLen::Qword,
        SeccompCmpOp::MaskedEq(new_user),
        new_user,
    )
    .map_err(|e| e.to_string())?;
    let rule = SeccompRule::new(vec![condition]).map_err(|e| e.to_string())?;
    let filter = SeccompFilter::new(
        [(libc::SYS_unshare, vec![rule])].into_iter().collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        std::env::consts::ARCH
            .try_into()
            .map_err(|e| format!("{e}"))?,
    )
    .map_err(|e| e.to_string())?;
    let program: seccompiler::BpfProgram = filter.try_into().map_err(|e| format!("{e}"))?;
    seccompiler::apply_filter(&program).map_err(|e| e.to_string())
}

/// What a task of a `no_network` worker can do with root's powers: join
/// the network namespace of its pool's process (`setns`), and the
/// capability sets it holds (`CapEff`, `CapPrm`, `CapBnd`, `CapAmb`).
fn escape_the_namespace(_: ()) -> (Option<i32>, Vec<String>) {
    let pool = rustix::process::getppid().map_or(1, |p| p.as_raw_nonzero().get());
    let joined = std::fs::File::open(format!("/proc/{pool}/ns/net")).and_then(|ns| {
        rustix::thread::move_into_link_name_space(
            std::os::fd::AsFd::as_fd(&ns),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .map_err(std::io::Error::from)
    });
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let capabilities = ["CapEff", "CapPrm", "CapBnd", "CapAmb"]
        .iter()
        .map(|name| {
            let line = status.lines().find(|l| l.starts_with(name)).unwrap();
            line.split_whitespace().nth(1).unwrap().to_owned()
        })
        .collect();
    (errno(joined), capabilities)
}
buckshot::register!(escape_the_namespace);

#[test]
fn without_user_namespaces_no_network_keeps_no_capability() {
    if common::portable_lacks("sandbox (its rules are Linux only)") {
        return;
    }
    let root = rustix::process::geteuid().is_root();
    let thread = std::thread::spawn(move || {
        if let Err(why) = deny_user_namespaces() {
            common::skip("seccomp", &why);
            return;
        }
        let built = Pool::builder()
            .processes(1)
            .sandbox(Sandbox::new().no_network())
            .build();
        if !root {
            // Without user namespaces, only root gets a network namespace.
            match built {
                Err(Error::Sandbox {
                    rule: SandboxRule::NoNetwork,
                    reason,
                    ..
                }) => assert!(reason.contains("user and network namespace"), "{reason}"),
                other => panic!("expected no_network to be refused, got {other:?}"),
            }
            return;
        }
        let pool = built.unwrap();
        let (joined, capabilities) = pool.call(escape_the_namespace, ()).unwrap();
        assert!(joined.is_some(), "a task joined the program's network");
        assert_eq!(capabilities, ["0000000000000000"; 4]);
    });
    thread.join().unwrap();
}

/// A seccomp rule that cannot come up says so, with the kernel's reason:
/// here a filter of the program makes `seccomp(2)` itself fail with
/// `EBUSY` for the thread that builds the pool and what it starts.
#[test]
fn a_seccomp_rule_that_cannot_come_up_says_why() {
    if common::portable_lacks("sandbox (its rules are Linux only)") {
        return;
    }
    let thread = std::thread::spawn(|| {
        use seccompiler::{SeccompAction, SeccompFilter};
        let filter = SeccompFilter::new(
            [(libc::SYS_seccomp, vec![])].into_iter().collect(),
            SeccompAction::Allow,
            SeccompAction::Errno(libc::EBUSY as u32),
            std::env::consts::ARCH.try_into().unwrap(),
        )
        .unwrap();
        let program: seccompiler::BpfProgram = filter.try_into().unwrap();
        if let Err(e) = seccompiler::apply_filter(&program) {
            common::skip("seccomp", &format!("no seccomp filter here: {e}"));
            return;
        }
        for (sandbox, rule) in [
            (
                Sandbox::new().no_subprocesses(),
                SandboxRule::NoSubprocesses,
            ),
            (
                Sandbox::new().cpu_time(std::time::Duration::from_secs(5)),
                SandboxRule::CpuTime,
            ),
        ] {
            let built = Pool::builder().processes(1).sandbox(sandbox).build();
            match built {
                Err(Error::Sandbox {
                    rule: r, reason, ..
                }) if r == rule => assert!(
                    reason.contains("seccomp: ") && reason.contains("Device or resource busy"),
                    "{rule}: {reason}"
                ),
                other => panic!("expected {rule} to be refused, got {other:?}"),
            }
        }
    });
    thread.join().unwrap();
}

/// `clone3` as a task can call it directly, like `fork`: its result
/// (`Ok(())` if it made a process, which exits at once), and the result of
/// an x32 `getpid` on x86-64 (another number for the same call), as errnos.
fn raw_clone3_and_x32(_: ()) -> (Option<i32>, Option<i32>) {
    /// `struct clone_args` of Linux 5.3 (`CLONE_ARGS_SIZE_VER0`).
    #[repr(C)]
    #[derive(Default)]
    struct CloneArgs {
        flags: u64,
        pidfd: u64,
        child_tid: u64,
        parent_tid: u64,
        exit_signal: u64,
        stack: u64,
        stack_size: u64,
        tls: u64,
    }
    let args = CloneArgs {
        exit_signal: libc::SIGCHLD as u64,
        ..CloneArgs::default()
    };
    // SAFETY: clone3 without a stack behaves as fork (the arguments live
    // across the call).
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    let clone3 = match pid {
        // SAFETY: the child only leaves, with _exit, which is
        // async-signal-safe.
        0 => unsafe { libc::_exit(0) },
        pid if pid > 0 => {
            let mut status = 0;
            // SAFETY: reaps the child this task just made.
            unsafe { libc::waitpid(pid as libc::pid_t, &mut status, 0) };
            None
        }
        _ => std::io::Error::last_os_error().raw_os_error(),
    };
    let x32 = if cfg!(target_arch = "x86_64") {
        // SAFETY: getpid takes no argument, under any number.
        let rc = unsafe { libc::syscall(libc::SYS_getpid | 0x4000_0000) };
        (rc < 0).then(|| std::io::Error::last_os_error().raw_os_error().unwrap())
    } else {
        Some(libc::ENOSYS)
    };
    (clone3, x32)
}
buckshot::register!(raw_clone3_and_x32);

/// `no_subprocesses` denies `clone3` (whose flags seccomp cannot read) as
/// `ENOSYS`, and calls of the x32 ABI, which would name `fork` and
/// `execve` by other numbers.
#[test]
fn no_subprocesses_closes_clone3_and_the_x32_numbers() {
    let plain = Pool::new(1).unwrap();
    let (clone3, _) = plain.call(raw_clone3_and_x32, ()).unwrap();
    if clone3 == Some(libc::ENOSYS) {
        common::skip("clone3", "this kernel has no clone3 (Linux 5.3)");
        return;
    }
    assert_eq!(clone3, None, "clone3 makes a process outside a sandbox");
    let Some(pool) = sandboxed(Sandbox::new().no_subprocesses(), "seccomp") else {
        return;
    };
    for _ in 0..2 {
        let (clone3, x32) = pool.call(raw_clone3_and_x32, ()).unwrap();
        assert_eq!(clone3, Some(libc::ENOSYS), "clone3 under no_subprocesses");
        assert_eq!(x32, Some(libc::ENOSYS), "an x32 call under no_subprocesses");
    }
}
