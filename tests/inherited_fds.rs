//! Workers, and the programs of launchers, hold none of the program's
//! descriptors: a listening socket, a client connection and a file that
//! lack close-on-exec stay in the program.

mod common;

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::MetadataExt;

use buckshot::{Launcher, Pool, Sandbox, SandboxRule};

/// Clears close-on-exec, as socket activation, C libraries or a wrapper's
/// `exec 3>file` leave descriptors.
fn inheritable(fd: RawFd) {
    // SAFETY: F_SETFD on a descriptor the caller owns touches no memory.
    let rc = unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
    assert_eq!(rc, 0);
}

/// The descriptors of the calling process: number, whether close-on-exec,
/// and (device, inode).
fn descriptors(_: ()) -> Vec<(RawFd, bool, (u64, u64))> {
    let mut found = Vec::new();
    for fd in 0..4096 {
        // SAFETY: F_GETFD and fstat on any number touch only `stat`.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags < 0 {
                continue;
            }
            let mut stat: libc::stat = std::mem::zeroed();
            assert_eq!(libc::fstat(fd, &mut stat), 0);
            found.push((
                fd,
                flags & libc::FD_CLOEXEC != 0,
                (stat.st_dev, stat.st_ino),
            ));
        }
    }
    found
}
buckshot::register!(descriptors);

/// What the program holds without close-on-exec: a listener, a connection
/// to it, its accepted end, and a file.
struct Held {
    _listener: std::net::TcpListener,
    _client: std::net::TcpStream,
    _server: std::net::TcpStream,
    _file: std::fs::File,
    identities: Vec<(u64, u64)>,
}

fn hold(scratch: &common::TempDir) -> Held {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    let file = std::fs::File::create(scratch.0.join("held")).unwrap();
    let mut identities = Vec::new();
    for fd in [
        listener.as_raw_fd(),
        client.as_raw_fd(),
        server.as_raw_fd(),
        file.as_raw_fd(),
    ] {
        inheritable(fd);
        let meta = std::fs::metadata(format!("/proc/self/fd/{fd}")).unwrap();
        identities.push((meta.dev(), meta.ino()));
    }
    Held {
        _listener: listener,
        _client: client,
        _server: server,
        _file: file,
        identities,
    }
}

/// Everything a worker holds above stderr it opened itself (close-on-exec),
/// and nothing the program held.
fn assert_clean(pool: &Pool, held: &Held, what: &str) {
    for _ in 0..4 {
        let fds = pool.call(descriptors, ()).unwrap();
        for (fd, cloexec, identity) in &fds {
            assert!(
                !held.identities.contains(identity),
                "{what}: a worker holds the program's descriptor as fd {fd}: {fds:?}"
            );
            assert!(
                *fd <= 2 || *cloexec,
                "{what}: a worker holds fd {fd} that it did not open: {fds:?}"
            );
        }
    }
}

#[test]
fn workers_hold_none_of_the_programs_descriptors() {
    workers_are_clean();
}

fn workers_are_clean() {
    let scratch = common::TempDir::new("inherited-fds");
    let held = hold(&scratch);
    let pool = Pool::new(2).unwrap();
    assert_clean(&pool, &held, "plain pool");
    let sandboxed = Pool::builder()
        .processes(2)
        .sandbox(Sandbox::new().no_subprocesses().best_effort())
        .build()
        .unwrap();
    if sandboxed.sandbox_rules().is_empty() {
        common::skip("seccomp", "no sandbox rule comes up here");
    } else {
        assert_eq!(sandboxed.sandbox_rules(), [SandboxRule::NoSubprocesses]);
        assert_clean(&sandboxed, &held, "sandboxed pool");
    }
}

/// The descriptors of a launcher's own program (a shell here), as its
/// `/proc/PID/fd` links, written to `list` before it execs the worker.
#[test]
fn a_launchers_program_holds_none_of_the_programs_descriptors() {
    launchers_are_clean();
}

fn launchers_are_clean() {
    let scratch = common::TempDir::new("inherited-fds-launcher");
    let held = hold(&scratch);
    let list = scratch.0.join("launcher-fds");
    let script = format!(
        "for fd in /proc/$$/fd/*; do echo \"$fd $(readlink $fd)\"; done > '{}'; exec \"$@\"",
        list.display()
    );
    let pool = Pool::builder()
        .workers(Launcher::command(["sh", "-c", &script, "sh"]), 1)
        .build()
        .unwrap();
    assert_clean(&pool, &held, "worker of a command launcher");
    let listing = std::fs::read_to_string(&list).unwrap();
    let links: Vec<&str> = listing.lines().collect();
    assert!(!links.is_empty(), "the launcher listed nothing");
    for link in &links {
        let (_, target) = link.split_once(' ').unwrap();
        assert!(
            !target.starts_with("socket:") && !target.ends_with("/held"),
            "the launcher's program holds the program's descriptor: {links:?}"
        );
    }
}

/// Set in the copy of this binary that runs under a kernel without
/// `close_range`.
const NO_CLOSE_RANGE_ENV: &str = "BUCKSHOT_TEST_NO_CLOSE_RANGE";

/// Before Linux 5.9, `close_range(2)` fails with `ENOSYS`: the descriptors
/// are closed one by one instead. A copy of this binary runs both cases
/// above under a seccomp filter that makes `close_range` fail so, which
/// its workers and launchers inherit.
#[test]
fn without_close_range_workers_and_launchers_hold_none_of_the_programs_descriptors() {
    let name = "without_close_range_workers_and_launchers_hold_none_of_the_programs_descriptors";
    if std::env::var_os(NO_CLOSE_RANGE_ENV).is_some() {
        let close_range = [(libc::SYS_close_range, vec![])].into_iter().collect();
        if let Err(e) = common::fail_syscalls(close_range, libc::ENOSYS) {
            common::skip("seccomp", &format!("no seccomp filter here: {e}"));
            return;
        }
        // SAFETY: close_range on an empty range above any open descriptor
        // closes nothing.
        let rc = unsafe { libc::syscall(libc::SYS_close_range, 5000u32, 5000u32, 0u32) };
        let errno = std::io::Error::last_os_error().raw_os_error();
        assert_eq!((rc, errno), (-1, Some(libc::ENOSYS)), "the filter holds");
        workers_are_clean();
        launchers_are_clean();
        return;
    }
    let output = common::within(name, move || {
        std::process::Command::new(std::env::current_exe().unwrap())
            .args([name, "--exact", "--nocapture", "--test-threads=1"])
            .env(NO_CLOSE_RANGE_ENV, "1")
            .output()
            .unwrap()
    });
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    for skipped in stderr.lines().filter(|line| line.starts_with("SKIPPED")) {
        eprintln!("{skipped}");
    }
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "{}\n{stdout}\n{stderr}",
        output.status
    );
}
