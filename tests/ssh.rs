//! Workers over ssh, against a private sshd on 127.0.0.1 (the tests say
//! they are skipped where openssh-server is not installed): results equal
//! to serial, the binary shipped once per content hash, timeouts and drops
//! that leave nothing running on the host, a killed worker or session that
//! fails its input alone (a killed connection, those of its workers), an
//! unreachable host named at start-up, a remote program run by its path
//! whatever the path holds, no more workers starting at once than sshd
//! takes, and one connection per pool, whose master ends with the pool.
//!
//! The tests share the host's binary cache, and one of them empties it:
//! they run one at a time.

mod common;
#[path = "common/sshd.rs"]
mod sshd;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use buckshot::{Error, Launcher, Pool};
use tracing_subscriber::layer::{Context, SubscriberExt};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn square(x: u64) -> u64 {
    x * x
}
buckshot::register!(square);

/// Announces its worker's pid and a subprocess's, then hangs.
fn announce_and_hang(path: String) -> u64 {
    // Never waited for: the task hangs until its worker is killed, and
    // the subprocess must go with it.
    #[allow(clippy::zombie_processes)]
    let child = std::process::Command::new("sleep")
        .arg("1000")
        .spawn()
        .unwrap();
    common::announce_pid(&path, child.id());
    common::announce(&path);
    common::hang()
}
buckshot::register!(announce_and_hang);

fn hang_at_zero(x: (u64, String)) -> u64 {
    if x.0 == 0 {
        common::announce(&x.1);
        common::hang();
    }
    x.0
}
buckshot::register!(hang_at_zero);

/// Its worker's pid, after `ms` milliseconds.
fn pid_after_nap(ms: u64) -> u32 {
    std::thread::sleep(Duration::from_millis(ms));
    std::process::id()
}
buckshot::register!(pid_after_nap);

fn serialised() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// How long a remote worker may outlive its timeout or its drop.
const GONE_BOUND: Duration = Duration::from_secs(1);

#[test]
fn ten_thousand_inputs_over_ssh_equal_serial() {
    let _one = serialised();
    let Some(sshd) = sshd::Sshd::start() else {
        return;
    };
    let pool = Pool::builder().workers(sshd.launcher(), 2).build().unwrap();
    let squares: Vec<u64> = common::within("the map over ssh", move || {
        pool.map(square, 0..10_000u64)
            .unwrap()
            .map(Result::unwrap)
            .collect()
    });
    assert_eq!(squares, (0..10_000u64).map(|x| x * x).collect::<Vec<_>>());
}

/// Counts the "binary shipped" events.
#[derive(Clone, Default)]
struct Shipments(Arc<Mutex<usize>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Shipments {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let mut message = String::new();
        struct Visit<'a>(&'a mut String);
        impl tracing::field::Visit for Visit<'_> {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    *self.0 = format!("{value:?}");
                }
            }
        }
        event.record(&mut Visit(&mut message));
        if message == "binary shipped" {
            *self.0.lock().unwrap() += 1;
        }
    }
}

/// The name of this binary's copy in the cache: its SHA-256, 32 hex digits.
fn this_binary_hash() -> String {
    use sha2::Digest;
    let bytes = std::fs::read("/proc/self/exe").unwrap();
    let digest = sha2::Sha256::digest(&bytes);
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn the_binary_is_shipped_once_per_content() {
    let _one = serialised();
    let Some(sshd) = sshd::Sshd::start() else {
        return;
    };
    // This binary's copy only: the cache is the user's.
    let home = std::env::var("HOME").unwrap();
    let _ = std::fs::remove_file(format!("{home}/.cache/buckshot/{}", this_binary_hash()));
    let shipments = Shipments::default();
    let subscriber = tracing_subscriber::registry().with(shipments.clone());
    tracing::subscriber::with_default(subscriber, || {
        for expected in [1, 1] {
            let pool = Pool::builder().workers(sshd.launcher(), 1).build().unwrap();
            assert_eq!(pool.call(square, 9).unwrap(), 81);
            assert_eq!(*shipments.0.lock().unwrap(), expected, "shipped again");
        }
    });
}

#[test]
fn a_timeout_or_a_drop_leaves_nothing_on_the_host() {
    let _one = serialised();
    let Some(sshd) = sshd::Sshd::start() else {
        return;
    };
    let pool = Pool::builder()
        .workers(sshd.launcher(), 1)
        .timeout(Duration::from_millis(500))
        .forward_stderr(false)
        .build()
        .unwrap();
    let rendezvous = common::Rendezvous::new();
    let path = rendezvous.path();
    let call = std::thread::spawn(move || (pool.call(announce_and_hang, path), pool));
    let (subprocess, worker) = (rendezvous.wait(), rendezvous.wait());
    let (result, pool) = call.join().unwrap();
    assert!(
        matches!(result, Err(Error::TaskTimeout { .. })),
        "{result:?}"
    );
    for pid in [worker, subprocess] {
        assert!(
            common::exits_within(pid, GONE_BOUND),
            "process {pid} still runs on the host after the timeout"
        );
    }
    // A drop: the worker running the dropped map's input goes too.
    let rendezvous = common::Rendezvous::new();
    let mut stream = pool
        .map_stream(announce_and_hang, vec![rendezvous.path()])
        .unwrap();
    let first = futures::executor::block_on(futures::future::poll_fn(|cx| {
        std::task::Poll::Ready(futures::StreamExt::poll_next_unpin(&mut stream, cx))
    }));
    assert!(first.is_pending());
    let (subprocess, worker) = (rendezvous.wait(), rendezvous.wait());
    drop(stream);
    for pid in [worker, subprocess] {
        assert!(
            common::exits_within(pid, GONE_BOUND),
            "process {pid} still runs on the host after the drop"
        );
    }
    // The pool's own drop, with a task running: when it returns, the
    // worker and its subprocess are gone, or about to be.
    let rendezvous = common::Rendezvous::new();
    let mut stream = pool
        .map_stream(announce_and_hang, vec![rendezvous.path()])
        .unwrap();
    let first = futures::executor::block_on(futures::future::poll_fn(|cx| {
        std::task::Poll::Ready(futures::StreamExt::poll_next_unpin(&mut stream, cx))
    }));
    assert!(first.is_pending());
    let (subprocess, worker) = (rendezvous.wait(), rendezvous.wait());
    drop(pool);
    for pid in [worker, subprocess] {
        assert!(
            common::exits_within(pid, common::KILL_BOUND),
            "process {pid} still runs on the host after its pool was dropped"
        );
    }
    drop(stream);
}

/// The parent of process `pid`.
fn parent_of(pid: u32) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    after_name.split(' ').nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_killed_worker_or_session_fails_its_input_alone() {
    let _one = serialised();
    let Some(sshd) = sshd::Sshd::start() else {
        return;
    };
    for kill_the_session in [false, true] {
        let pool = Pool::builder()
            .workers(sshd.launcher(), 2)
            .forward_stderr(false)
            .build()
            .unwrap();
        // Both workers serve before the fault, so that what the bound below
        // covers needs no login (seconds each on a loaded machine): the
        // death, and the rest of the map on the other worker.
        let pool = common::within("both workers start", move || {
            let mut served = std::collections::HashSet::new();
            while served.len() < 2 {
                served.extend(
                    pool.map(pid_after_nap, [50, 50])
                        .unwrap()
                        .map(Result::unwrap),
                );
            }
            pool
        });
        let rendezvous = common::Rendezvous::new();
        let inputs: Vec<(u64, String)> = (0..200).map(|x| (x, rendezvous.path())).collect();
        let map = std::thread::spawn(move || {
            let results: Vec<_> = pool.map(hang_at_zero, inputs).unwrap().collect();
            (results, pool)
        });
        let worker = rendezvous.wait();
        // The worker itself, or the sshd process serving its session:
        // the pool's one connection, which serves both workers' sessions.
        let victim = if kill_the_session {
            parent_of(worker)
        } else {
            worker
        };
        common::kill9(victim);
        let (results, pool) = common::within("the rest of the map", move || map.join().unwrap());
        assert_eq!(results.len(), 200);
        assert!(
            matches!(results[0], Err(Error::WorkerDied { index: 0, .. })),
            "{:?}",
            results[0]
        );
        for (x, result) in results.iter().enumerate().skip(1) {
            match result {
                Ok(y) => assert_eq!(*y, x as u64),
                // What the other worker ran when the connection went.
                Err(Error::WorkerDied { .. }) if kill_the_session => {}
                Err(e) => panic!("input {x}: {e:?}"),
            }
        }
        if !kill_the_session {
            assert!(results[1..].iter().all(Result::is_ok), "not alone");
        }
        assert!(
            common::exits_within(worker, GONE_BOUND),
            "worker {worker} lingers"
        );
        drop(pool);
    }
}

/// Starts a subprocess that keeps the worker's stderr, announces it, and
/// takes the worker down.
fn crash_leaving_a_subprocess(path: String) -> u64 {
    #[allow(clippy::zombie_processes)]
    let child = std::process::Command::new("sleep")
        .arg("1000")
        .spawn()
        .unwrap();
    common::announce_pid(&path, child.id());
    std::process::abort()
}
buckshot::register!(crash_leaving_a_subprocess);

#[test]
fn a_crash_is_noticed_though_a_subprocess_holds_stderr() {
    // sshd keeps a session open while any process holds its stderr: the
    // worker must not hand the session's stderr to its tasks.
    let _one = serialised();
    let Some(sshd) = sshd::Sshd::start() else {
        return;
    };
    let pool = Pool::builder()
        .workers(sshd.launcher(), 1)
        .forward_stderr(false)
        .build()
        .unwrap();
    let rendezvous = common::Rendezvous::new();
    let path = rendezvous.path();
    let call = std::thread::spawn(move || pool.call(crash_leaving_a_subprocess, path));
    let subprocess = rendezvous.wait();
    let result = common::within("the crashed call", move || call.join().unwrap());
    assert!(
        matches!(result, Err(Error::WorkerDied { index: 0, .. })),
        "{result:?}"
    );
    assert!(
        common::exits_within(subprocess, GONE_BOUND),
        "the crashed worker's subprocess {subprocess} still runs"
    );
}

#[test]
fn an_unreachable_host_is_a_launcher_error_that_names_it() {
    let _one = serialised();
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let result = Pool::builder()
        .workers(
            Launcher::ssh("nobody@127.0.0.1")
                .port(closed)
                .ssh_config("/dev/null")
                .ssh_option("ConnectTimeout", "5"),
            1,
        )
        .build();
    match result {
        Err(error @ Error::Launcher { .. }) => {
            let message = error.to_string();
            let message = message
                .strip_prefix("a launcher could not get ready: ssh nobody@127.0.0.1: ")
                .unwrap_or_else(|| panic!("{message}"));
            assert!(message.contains("refused"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

/// Writes an executable shell script at `path`.
fn script(path: &std::path::Path, body: &str) {
    std::fs::write(path, format!("#!/bin/sh\n{body}")).unwrap();
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
}

/// Lines in file `path` (none if it does not exist).
fn lines_in(path: &std::path::Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |text| text.lines().count())
}

#[test]
fn a_remote_program_is_run_by_its_path_even_with_a_space_in_it() {
    let _one = serialised();
    let Some(sshd) = sshd::Sshd::start() else {
        return;
    };
    let dir = common::TempDir::new("remote-program");
    let (runs, impostor_runs) = (dir.0.join("runs"), dir.0.join("impostor-runs"));
    // The program runs this binary; the path up to its space names another
    // program, which a shell would run if the path were not quoted.
    let exe = std::env::current_exe().unwrap();
    script(
        &dir.0.join("my worker"),
        &format!(
            "echo run >> '{}'\nexec '{}'\n",
            runs.display(),
            exe.display()
        ),
    );
    script(
        &dir.0.join("my"),
        &format!("echo run >> '{}'\nexit 1\n", impostor_runs.display()),
    );
    let program = dir.0.join("my worker").to_string_lossy().into_owned();
    let pool = Pool::builder()
        .workers(sshd.launcher().remote_program(program), 2)
        .forward_stderr(false)
        .build()
        .unwrap();
    let squares: Vec<u64> = common::within("the map", move || {
        pool.map(square, 0..1000u64)
            .unwrap()
            .map(Result::unwrap)
            .collect()
    });
    assert_eq!(squares, (0..1000u64).map(|x| x * x).collect::<Vec<_>>());
    assert_eq!(lines_in(&runs), 2, "each worker ran the program once");
    assert_eq!(lines_in(&impostor_runs), 0, "the impostor ran");
}

/// Local `ssh` processes of ours that relay a worker.
fn ssh_workers() -> usize {
    common::children()
        .into_iter()
        .filter(|&(pid, _)| {
            let command = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let command = String::from_utf8_lossy(&command);
            // Started as `/usr/bin/ssh` (the program found in PATH).
            let program = command.split('\0').next().unwrap_or_default();
            program.rsplit('/').next() == Some("ssh") && command.contains("__BUCKSHOT_WORKER=")
        })
        .count()
}

/// Waits until file `starts` has `n` lines, then checks for 2 s that no
/// more come and that no more `ssh` workers are under way.
fn no_more_than(starts: &std::path::Path, n: usize) {
    common::wait_until(&format!("{n} workers start"), || lines_in(starts) >= n);
    // A start too many would come with the others: none comes.
    let watched = std::time::Instant::now();
    while watched.elapsed() < Duration::from_secs(2) {
        assert_eq!(lines_in(starts), n, "more than {n} workers started");
        let relays = ssh_workers();
        assert!(relays <= n, "{relays} ssh workers under way");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn no_more_workers_start_at_once_than_sshd_takes() {
    let _one = serialised();
    let Some(sshd) = sshd::Sshd::start() else {
        return;
    };
    // The program holds each worker at start-up until it takes a ticket
    // or the gate opens; the test hands them out. However many are ready,
    // those starting must not exceed the launcher's bound (8).
    let dir = common::TempDir::new("ssh-starts");
    let starts = dir.0.join("starts");
    let exe = std::env::current_exe().unwrap();
    script(
        &dir.0.join("gated worker"),
        &format!(
            "d='{d}'\necho start >> \"$d/starts\"\n\
             until [ -e \"$d/gate\" ]; do\n\
             for t in \"$d\"/ticket.*; do mv \"$t\" \"$d/taken.$$\" 2>/dev/null && break 2; done\n\
             sleep 0.02\ndone\nexec '{exe}'\n",
            d = dir.0.display(),
            exe = exe.display()
        ),
    );
    let program = dir.0.join("gated worker").to_string_lossy().into_owned();
    let pool = Pool::builder()
        .workers(sshd.launcher().remote_program(program), 12)
        .forward_stderr(false)
        .build()
        .unwrap();
    // None ready: eight start.
    no_more_than(&starts, 8);
    // Two ready: two more start, still eight at once.
    for ticket in 0..2 {
        std::fs::write(dir.0.join(format!("ticket.{ticket}")), "").unwrap();
    }
    no_more_than(&starts, 10);
    std::fs::write(dir.0.join("gate"), "").unwrap();
    let squares: Vec<u64> = common::within("the map", move || {
        let squares = pool
            .map(square, 0..1000u64)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        common::wait_until("every worker starts", || lines_in(&starts) >= 12);
        squares
    });
    assert_eq!(squares, (0..1000u64).map(|x| x * x).collect::<Vec<_>>());
}

/// Our `ssh` masters that reach `port`, by pid, with their control
/// socket's path.
fn masters(port: u16) -> Vec<(u32, String)> {
    common::children()
        .into_iter()
        .filter_map(|(pid, _)| {
            let command = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let words: Vec<String> = command
                .split(|&b| b == 0)
                .map(|w| String::from_utf8_lossy(w).into_owned())
                .collect();
            // Started as `/usr/bin/ssh` (the program found in PATH).
            let is_master = words
                .first()
                .is_some_and(|w| w.rsplit('/').next() == Some("ssh"))
                && words.iter().any(|w| w == "ControlMaster=yes")
                && words
                    .windows(2)
                    .any(|w| w[0] == "-p" && w[1] == port.to_string());
            let path = words.iter().find_map(|w| w.strip_prefix("ControlPath="))?;
            is_master.then(|| (pid, path.to_owned()))
        })
        .collect()
}

#[test]
fn a_pool_logs_in_once_and_its_master_ends_with_it() {
    let _one = serialised();
    let Some(sshd) = sshd::Sshd::start() else {
        return;
    };
    // Shipped (or found) by a pool of its own: the pool below logs in
    // once for its check, its 4 workers and their remote kills.
    drop(Pool::builder().workers(sshd.launcher(), 1).build().unwrap());
    let before = sshd.logins();
    let pool = Pool::builder()
        .workers(sshd.launcher(), 4)
        .forward_stderr(false)
        .build()
        .unwrap();
    let found = masters(sshd.port);
    assert_eq!(found.len(), 1, "{found:?}");
    let (master, socket) = found[0].clone();
    let dir = std::path::Path::new(&socket).parent().unwrap().to_owned();
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&dir).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o700, "{}", dir.display());
    assert!(socket.len() < 100, "{socket}");
    let pool = common::within("all 4 workers serve", move || {
        let mut served = std::collections::HashSet::new();
        while served.len() < 4 {
            served.extend(
                pool.map(pid_after_nap, [50; 8])
                    .unwrap()
                    .map(Result::unwrap),
            );
        }
        pool
    });
    // The drop kills the 4 workers on the host too, through the master.
    drop(pool);
    assert_eq!(sshd.logins() - before, 1, "logins");
    assert!(
        !std::path::Path::new(&format!("/proc/{master}")).exists(),
        "master {master} outlived its pool"
    );
    assert!(!dir.exists(), "{} outlived its pool", dir.display());
}

/// Set in this binary run as a process that makes a pool over ssh and is
/// killed: the address of the sshd ([`sshd::Sshd::address`]).
const KILLED_ENV: &str = "BUCKSHOT_TEST_SSH_KILLED";

#[test]
fn the_master_ends_when_its_pools_process_is_killed() {
    if let Ok(address) = std::env::var(KILLED_ENV) {
        // The process to kill: a pool whose workers have served, then
        // the pid of its master, then nothing.
        let launcher = sshd::Sshd::launcher_to(&address);
        let port = address.split('\t').nth(1).unwrap().parse().unwrap();
        let pool = Pool::builder()
            .workers(launcher, 2)
            .forward_stderr(false)
            .build()
            .unwrap();
        assert_eq!(pool.map(square, 0..4u64).unwrap().count(), 4);
        let found = masters(port);
        assert_eq!(found.len(), 1, "{found:?}");
        println!("master {} {}", found[0].0, found[0].1);
        common::hang();
    }
    let _one = serialised();
    let Some(sshd) = sshd::Sshd::start() else {
        return;
    };
    let mut killed = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "the_master_ends_when_its_pools_process_is_killed",
            "--nocapture",
        ])
        .env(KILLED_ENV, sshd.address())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = std::io::BufReader::new(killed.stdout.take().unwrap());
    let (master, socket) = common::within("the pool's process says its master", move || {
        std::io::BufRead::lines(stdout)
            .map(Result::unwrap)
            .find_map(|line| {
                let (pid, socket) = line.strip_prefix("master ")?.split_once(' ')?;
                Some((pid.parse::<u32>().unwrap(), socket.to_owned()))
            })
            .expect("the pool's process ended first")
    });
    common::kill9(killed.id());
    killed.wait().unwrap();
    // Its session's input ends with the process, and the workers' sessions
    // with their request streams: then the master exits.
    assert!(
        common::exits_within(master, common::KILL_BOUND),
        "master {master} outlived its pool's process"
    );
    // The directory it left is removed when the next pool opens its own.
    let dir = std::path::Path::new(&socket).parent().unwrap().to_owned();
    assert!(dir.exists(), "{}", dir.display());
    drop(Pool::builder().workers(sshd.launcher(), 1).build().unwrap());
    assert!(!dir.exists(), "{} is left", dir.display());
}
