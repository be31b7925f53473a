//! Helpers shared by the integration tests. Each test file is its own
//! binary, hence its own worker executable; not every file uses every helper.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

/// Upper bound for anything a test waits on: generous for a loaded 2-core
/// machine, and a loud failure rather than a hang.
pub const BOUND: Duration = Duration::from_secs(60);

/// Says that the calling test is skipped, and why: `feature` (a short name
/// such as `sshd`, `slurm`, `landlock`, `seccomp`, `userns`) is missing
/// here. The line goes straight to stderr, past the test harness's
/// capture, so that `cargo test` shows it, and it starts with `SKIPPED`
/// so that a script can list them. Where the environment promises the
/// feature (`BUCKSHOT_REQUIRE`, a comma-separated list that CI sets to
/// what it installs and what its kernel has), a skip is a failure.
pub fn skip(feature: &str, why: &str) {
    use std::io::Write;
    let required = std::env::var("BUCKSHOT_REQUIRE").unwrap_or_default();
    if required
        .split(',')
        .any(|f| f.trim() == feature || f.trim() == "all")
    {
        panic!("{feature} is required here (BUCKSHOT_REQUIRE={required}) but missing: {why}");
    }
    let test = std::thread::current().name().unwrap_or("a test").to_owned();
    let _ = writeln!(
        std::io::stderr().lock(),
        "SKIPPED {test} ({feature}): {why}"
    );
}

/// Whether this build runs the portable backend (`--cfg buckshot_portable`),
/// which lacks what the calling test needs (`why`): then the test is
/// skipped, and says so.
pub fn portable_lacks(why: &str) -> bool {
    if cfg!(buckshot_portable) {
        skip("native", &format!("the portable backend has no {why}"));
    }
    cfg!(buckshot_portable)
}

/// Processes whose parent is this process, with their state letter
/// (`Z` for a zombie).
pub fn children() -> Vec<(u32, char)> {
    children_of(std::process::id())
}

/// Processes whose parent is `parent`, with their state letter.
pub fn children_of(parent: u32) -> Vec<(u32, char)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // The command name may hold spaces: parse after its closing paren.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next().and_then(|s| s.chars().next()).unwrap_or('?');
        let ppid: u32 = fields.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        if ppid == parent {
            found.push((pid, state));
        }
    }
    found
}

/// Whether a process with this pid exists (zombies included).
pub fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Number of open file descriptors of this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("read /proc/self/fd")
        .count()
}

/// A place where a task running in a worker can announce itself (its pid)
/// to the test, so the test waits on that event instead of sleeping.
pub struct Rendezvous {
    listener: UnixListener,
    path: PathBuf,
}

impl Rendezvous {
    pub fn new() -> Rendezvous {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("buckshot-test-{}-{n}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).expect("bind rendezvous socket");
        Rendezvous { listener, path }
    }

    pub fn path(&self) -> String {
        self.path.to_string_lossy().into_owned()
    }

    /// Waits (at most [`BOUND`]) for one announcement and returns its pid.
    pub fn wait(&self) -> u32 {
        let listener = self.listener.try_clone().expect("clone listener");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("accept");
            let mut text = String::new();
            stream.read_to_string(&mut text).expect("read announcement");
            let _ = tx.send(text.trim().parse::<u32>().expect("a pid"));
        });
        rx.recv_timeout(BOUND)
            .expect("no task announced itself in time")
    }
}

impl Drop for Rendezvous {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Called inside a task: tells the test at `path` this worker's pid.
pub fn announce(path: &str) {
    let mut stream = UnixStream::connect(path).expect("connect to rendezvous");
    write!(stream, "{}", std::process::id()).expect("announce");
}

/// Blocks the calling task forever (until its worker is killed).
pub fn hang() -> ! {
    loop {
        std::thread::park();
    }
}

/// Runs `f` on a thread and waits at most [`BOUND`] for it.
pub fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    within_for(what, BOUND, f)
}

pub fn kill9(pid: u32) {
    // SAFETY: kill has no memory-safety preconditions.
    let rc = unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    assert_eq!(rc, 0, "kill -9 {pid}");
}

/// Waits until `condition` holds, checking every millisecond, and fails
/// loudly after [`BOUND`]. For conditions with no event to wait on (a pid
/// disappearing from `/proc` once its parent reaps it).
pub fn wait_until(what: &str, condition: impl FnMut() -> bool) {
    wait_until_within(what, BOUND, condition);
}

/// [`wait_until`] with a bound of its own, for what must happen promptly
/// (a slow leak must not pass for a loaded machine).
pub fn wait_until_within(what: &str, bound: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + bound;
    while !condition() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within {bound:?}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// How long the pool may take to kill and reap a worker it gave up on
/// (timed out, cancelled) while the pool lives on. It is a SIGKILL and a
/// pidfd wake-up: milliseconds; far less than [`BOUND`], so that a worker
/// left running until the pool is dropped cannot pass.
pub const KILL_BOUND: Duration = Duration::from_secs(5);

/// Waits (at most [`KILL_BOUND`]) until worker `pid`, a child of this
/// process, is killed and reaped by its pool.
pub fn assert_worker_gone(pid: u32, why: &str) {
    wait_until_within(
        &format!("worker {pid} ({why}) is killed and reaped while the pool lives"),
        KILL_BOUND,
        || !alive(pid),
    );
}

/// File descriptors open in process `pid`, as numbers.
pub fn fds_of(pid: u32) -> Vec<u32> {
    let mut fds: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read /proc/PID/fd")
        .flatten()
        .filter_map(|entry| entry.file_name().to_string_lossy().parse().ok())
        .collect();
    fds.sort();
    fds
}

/// Like [`within`], with a bound of its own: for waits that should end far
/// sooner than [`BOUND`], so that a regression fails fast.
pub fn within_for<T: Send + 'static>(
    what: &str,
    bound: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(bound) {
        Ok(value) => value,
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{what} did not finish within {bound:?}"),
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("{what} panicked"),
    }
}

/// Waits at most `bound` for process `pid` (not necessarily our child) to
/// exit; `true` if it did (or was gone already).
pub fn exits_within(pid: u32, bound: Duration) -> bool {
    use rustix::event::{PollFd, PollFlags, Timespec};
    let pid = rustix::process::Pid::from_raw(pid as i32).expect("a valid pid");
    let pidfd = match rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) {
        Ok(pidfd) => pidfd,
        Err(rustix::io::Errno::SRCH) => return true,
        Err(e) => panic!("pidfd_open({pid:?}): {e}"),
    };
    let mut fds = [PollFd::new(&pidfd, PollFlags::IN)];
    let timeout = Timespec::try_from(bound).expect("a small bound");
    loop {
        match rustix::event::poll(&mut fds, Some(&timeout)) {
            Ok(n) => return n == 1,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => panic!("poll on a pidfd: {e}"),
        }
    }
}

/// Called inside a task: tells the test at `path` the pid `pid` (of a
/// subprocess, say).
pub fn announce_pid(path: &str, pid: u32) {
    let mut stream = UnixStream::connect(path).expect("connect to rendezvous");
    write!(stream, "{pid}").expect("announce");
}

/// The descriptors above 2 of process `pid` that are pipes, with the flags
/// they were opened with.
pub fn pipes_of(pid: u32) -> Vec<(u32, i32)> {
    fds_of(pid)
        .into_iter()
        .filter(|&fd| fd > 2)
        .filter(|fd| {
            std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
                .is_ok_and(|link| link.to_string_lossy().starts_with("pipe:"))
        })
        .map(|fd| {
            let info =
                std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap_or_default();
            let flags = info
                .lines()
                .find_map(|line| line.strip_prefix("flags:"))
                .and_then(|flags| i32::from_str_radix(flags.trim(), 8).ok())
                .unwrap_or(0);
            (fd, flags)
        })
        .collect()
}

/// Called inside a task: the worker's reply pipe, the one pipe it holds
/// open for writing and close-on-exec (descriptors a test process inherited
/// are not close-on-exec, and some of them must not be written to).
pub fn reply_fd() -> i32 {
    let me = std::process::id();
    pipes_of(me)
        .into_iter()
        .find(|&(_, flags)| {
            flags & libc::O_ACCMODE == libc::O_WRONLY && flags & libc::O_CLOEXEC != 0
        })
        .map(|(fd, _)| fd as i32)
        .unwrap_or_else(|| panic!("worker {me} has no reply pipe"))
}

/// An empty directory of its own for one test, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!("buckshot-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create a temporary directory");
        TempDir(path)
    }

    pub fn path(&self) -> String {
        self.0.to_string_lossy().into_owned()
    }

    /// The files in it, sorted.
    pub fn files(&self) -> Vec<PathBuf> {
        files_in(&self.0)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A small tmpfs of its own, mounted on a fresh directory and unmounted on
/// drop: a file system that fills up for real.
pub struct TmpFs(pub PathBuf);

impl TmpFs {
    /// Mounts a tmpfs of `bytes`; `None` (after [`skip`]) where this
    /// process may not mount one (it takes root, or `CAP_SYS_ADMIN`).
    pub fn mount(name: &str, bytes: u64) -> Option<TmpFs> {
        use std::ffi::CString;
        use std::os::unix::ffi::OsStrExt;
        let dir = std::env::temp_dir().join(format!("buckshot-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create a mount point");
        let target = CString::new(dir.as_os_str().as_bytes()).expect("no NUL in a temp path");
        let options = CString::new(format!("size={bytes},mode=0700")).expect("no NUL");
        // SAFETY: every pointer is a NUL-terminated string that lives
        // across the call.
        let rc = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                options.as_ptr().cast(),
            )
        };
        if rc != 0 {
            let why = std::io::Error::last_os_error();
            let _ = std::fs::remove_dir(&dir);
            skip("tmpfs", &format!("cannot mount a tmpfs to fill up: {why}"));
            return None;
        }
        Some(TmpFs(dir))
    }

    /// Fills what is left of it with one file.
    pub fn fill(&self) {
        let mut file = std::fs::File::create(self.0.join("filler")).expect("create a filler");
        let block = vec![0u8; 4096];
        loop {
            match file.write(&block) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling a tmpfs: {e}"),
            }
        }
        // A part-filled last page may still take a few bytes.
        while file.write(&[0]).is_ok_and(|n| n == 1) {}
    }

    /// The files in it, sorted.
    pub fn files(&self) -> Vec<PathBuf> {
        files_in(&self.0)
    }
}

impl Drop for TmpFs {
    fn drop(&mut self) {
        use std::ffi::CString;
        use std::os::unix::ffi::OsStrExt;
        let target = CString::new(self.0.as_os_str().as_bytes()).expect("no NUL in a temp path");
        // SAFETY: a NUL-terminated path that lives across the call.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Called inside a task: appends `x` as a line to the file `log`, in one
/// `write` to a file opened with `O_APPEND`, so that lines of concurrent
/// workers never mix.
pub fn note(log: &str, x: u64) {
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(log)
        .unwrap();
    file.write_all(format!("{x}\n").as_bytes()).unwrap();
}

/// The numbers [`note`] appended to `log`, in order.
pub fn runs(log: &std::path::Path) -> Vec<u64> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|line| line.parse().unwrap())
        .collect()
}

/// The files in `dir`, sorted; none if it cannot be read.
pub fn files_in(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|dir| dir.map(|entry| entry.unwrap().path()).collect())
        .unwrap_or_default();
    files.sort();
    files
}

/// The Landlock ABI of this kernel, 0 if it has none.
pub fn landlock_abi() -> i64 {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: with this flag and no attributes, the call only returns the
    // ABI version.
    let abi = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    abi.max(0)
}

/// Makes the system calls `rules` names fail with `errno` in every thread
/// of this process and its children from now on (a seccomp filter), as on
/// an older kernel or another file system. `Err` if seccomp is missing.
pub fn fail_syscalls(
    rules: std::collections::BTreeMap<i64, Vec<seccompiler::SeccompRule>>,
    errno: i32,
) -> Result<(), String> {
    let filter = seccompiler::SeccompFilter::new(
        rules,
        seccompiler::SeccompAction::Allow,
        seccompiler::SeccompAction::Errno(errno as u32),
        std::env::consts::ARCH
            .try_into()
            .map_err(|e| format!("{e:?}"))?,
    )
    .map_err(|e| e.to_string())?;
    let program: seccompiler::BpfProgram = filter.try_into().map_err(|e| format!("{e:?}"))?;
    seccompiler::apply_filter_all_threads(&program).map_err(|e| e.to_string())
}

/// Workers' stderr lines kept for the test to read, instead of flooding
/// `cargo test`'s output: for pools whose tasks panic or die on purpose.
#[derive(Clone, Default)]
pub struct StderrLines(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl StderrLines {
    /// A pool builder whose workers' stderr lines are kept here.
    pub fn builder(&self) -> buckshot::PoolBuilder {
        let lines = self.clone();
        buckshot::Pool::builder()
            .on_worker_stderr(move |line| lines.0.lock().unwrap().push(line.to_owned()))
    }

    /// The lines kept so far (all of them once the pool is dropped).
    pub fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}
