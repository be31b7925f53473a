//! Hosts and connections that fail the ssh launcher, against a private
//! sshd on 127.0.0.1 (the tests say they are skipped where openssh-server
//! is not installed): a host that accepts a connection and never speaks
//! fails the build within ssh's default connect timeout, and one that
//! stops after its greeting, where ssh waits for ever, within the
//! launcher's own bound; a connection that
//! goes silent mid-task fails its input, and the remote kill sent through
//! it does not outlive the pool; a remote program that cannot start is
//! tried exactly as often as the start-up failure limit says, ever more
//! slowly.

mod common;
#[path = "common/sshd.rs"]
mod sshd;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use buckshot::{Error, Launcher, Pool};

fn square(x: u64) -> u64 {
    x * x
}
buckshot::register!(square);

fn announce_and_hang(path: String) -> u64 {
    common::announce(&path);
    common::hang()
}
buckshot::register!(announce_and_hang);

/// The connect timeout the launcher sets when the user does not.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a silent connection lasts before ssh drops it, by default: 3
/// unanswered probes 5 s apart.
const SILENCE: Duration = Duration::from_secs(15);

/// Connections accepted on a port, never answered; closed on drop.
struct Accepted {
    port: u16,
    connections: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
}

impl Accepted {
    /// A listener that accepts every connection and keeps it open. With
    /// `relay_to`, a connection is relayed to that port until the
    /// connections are frozen ([`Accepted::freeze`]).
    fn start(relay_to: Option<u16>) -> (Accepted, Arc<AtomicBool>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (stop, frozen) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let accepted = Accepted {
            port,
            connections: Arc::clone(&connections),
            stop: Arc::clone(&stop),
        };
        let frozen_too = Arc::clone(&frozen);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                let mut kept = connections.lock().unwrap();
                kept.push(client.try_clone().unwrap());
                let Some(to) = relay_to.filter(|_| !frozen_too.load(Ordering::SeqCst)) else {
                    continue;
                };
                let server = TcpStream::connect(("127.0.0.1", to)).unwrap();
                kept.push(server.try_clone().unwrap());
                for (from, to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    let frozen = Arc::clone(&frozen_too);
                    std::thread::spawn(move || relay(from, to, &frozen));
                }
            }
        });
        (accepted, frozen)
    }
}

/// Copies `from` to `to` until either ends, or the connection is frozen:
/// then it stops forwarding and leaves both open, as a network that drops
/// everything silently would.
fn relay(mut from: TcpStream, mut to: TcpStream, frozen: &AtomicBool) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if frozen.load(Ordering::SeqCst) || to.write_all(&buf[..n]).is_err() {
            return;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

impl Drop for Accepted {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for connection in self.connections.lock().unwrap().drain(..) {
            let _ = connection.shutdown(Shutdown::Both);
        }
        // Wakes the accepting thread, which sees `stop`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

#[test]
fn a_host_that_never_speaks_fails_the_build_and_is_named() {
    let (silent, _) = Accepted::start(None);
    let port = silent.port;
    let started = Instant::now();
    // No connect timeout given: the launcher's own applies.
    let result = common::within("the build against a silent host", move || {
        Pool::builder()
            .workers(
                Launcher::ssh("nobody@127.0.0.1")
                    .port(port)
                    .ssh_config("/dev/null"),
                1,
            )
            .build()
    });
    let took = started.elapsed();
    match result {
        Err(error @ Error::Launcher { .. }) => {
            let message = error.to_string();
            let message = message
                .strip_prefix("a launcher could not get ready: ssh nobody@127.0.0.1: ")
                .unwrap_or_else(|| panic!("{message}"));
            assert!(message.contains("timed out"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert!(took >= CONNECT_TIMEOUT, "gave up after {took:?}");
    drop(silent);
}

/// How long the launcher waits for its connection to the host (the
/// helper bound).
const SETUP_BOUND: Duration = Duration::from_secs(60);

#[test]
fn a_host_that_stops_after_its_greeting_fails_the_build_within_a_bound() {
    // It greets as sshd does, then says nothing more: with no probes
    // (`ServerAliveInterval=0`) ssh waits in the key exchange for ever,
    // and only the launcher's bound ends the wait.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = Arc::clone(&stop);
    let greeter = std::thread::spawn(move || {
        let mut kept = Vec::new();
        for client in listener.incoming() {
            if stopped.load(Ordering::SeqCst) {
                return;
            }
            let Ok(mut client) = client else { continue };
            let _ = client.write_all(b"SSH-2.0-OpenSSH_9.2\r\n");
            kept.push(client);
        }
    });
    let started = Instant::now();
    let result = common::within_for(
        "the build against a host that stops after its greeting",
        SETUP_BOUND + Duration::from_secs(30),
        move || {
            Pool::builder()
                .workers(
                    Launcher::ssh("nobody@127.0.0.1")
                        .port(port)
                        .ssh_config("/dev/null")
                        .ssh_option("ServerAliveInterval", "0"),
                    1,
                )
                .build()
        },
    );
    let took = started.elapsed();
    match result {
        Err(error @ Error::Launcher { .. }) => assert_eq!(
            error.to_string(),
            format!(
                "a launcher could not get ready: ssh nobody@127.0.0.1: no answer within {SETUP_BOUND:?}"
            )
        ),
        other => panic!("{other:?}"),
    }
    assert!(took >= SETUP_BOUND, "gave up after {took:?}");
    // Its ssh is killed and reaped.
    let left: Vec<u32> = common::children()
        .into_iter()
        .map(|(pid, _)| pid)
        .filter(|pid| {
            let command = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            String::from_utf8_lossy(&command).contains(&port.to_string())
        })
        .collect();
    assert!(left.is_empty(), "{left:?} outlived the build");
    stop.store(true, Ordering::SeqCst);
    let _ = TcpStream::connect(("127.0.0.1", port));
    greeter.join().unwrap();
}

/// The local `ssh` processes of ours that send a remote kill through
/// `port`, zombies included.
fn remote_kills(port: u16) -> Vec<u32> {
    common::children()
        .into_iter()
        .filter(|&(pid, _)| {
            let command = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let command = String::from_utf8_lossy(&command).replace('\0', " ");
            command.starts_with("ssh ")
                && command.contains(&format!(" -p {port} "))
                && command.contains("kill -s KILL")
        })
        .map(|(pid, _)| pid)
        .collect()
}

#[test]
fn a_silent_connection_fails_its_input_and_its_remote_kill_ends_with_the_pool() {
    let Some(sshd) = sshd::Sshd::start() else {
        return;
    };
    let (relay, frozen) = Accepted::start(Some(sshd.port));
    let port = relay.port;
    let pool = Pool::builder()
        .workers(sshd.launcher().port(port), 1)
        .forward_stderr(false)
        .build()
        .unwrap();
    // The pool must have heard the worker's handshake before the
    // connection goes silent: a task's announcement, which does not go
    // through the connection, can overtake it on a loaded machine.
    let pool = common::within("a first call", move || {
        assert_eq!(pool.call(square, 3).unwrap(), 9);
        pool
    });
    let rendezvous = common::Rendezvous::new();
    let path = rendezvous.path();
    let call = std::thread::spawn(move || (pool.call(announce_and_hang, path), pool));
    let worker = rendezvous.wait();
    frozen.store(true, Ordering::SeqCst);
    let frozen_at = Instant::now();
    let (result, pool) = common::within("the call on a silent connection", move || {
        call.join().unwrap()
    });
    let noticed = frozen_at.elapsed();
    assert!(
        matches!(result, Err(Error::WorkerDied { index: 0, .. })),
        "{result:?}"
    );
    // No sooner than ssh's probes say the connection is gone.
    assert!(noticed >= SILENCE - Duration::from_secs(5), "{noticed:?}");

    // The pool sent the remote kill of that worker through the silent
    // connection too; it hangs until the pool goes.
    common::wait_until_within("a remote kill is under way", common::KILL_BOUND, || {
        !remote_kills(port).is_empty()
    });
    let dropped_at = Instant::now();
    drop(pool);
    assert!(
        dropped_at.elapsed() < common::KILL_BOUND,
        "the drop took {:?}",
        dropped_at.elapsed()
    );
    let left = remote_kills(port);
    assert!(left.is_empty(), "remote kills {left:?} outlived the pool");

    // Once the connection is closed, the worker ends with its session.
    drop(relay);
    assert!(
        common::exits_within(worker, common::KILL_BOUND),
        "worker {worker} outlived its closed session"
    );
}

#[test]
fn a_remote_program_that_cannot_start_is_tried_as_often_as_the_limit_ever_more_slowly() {
    let Some(sshd) = sshd::Sshd::start() else {
        return;
    };
    let dir = common::TempDir::new("bad-remote-program");
    let log = dir.0.join("log");
    let program = dir.0.join("worker");
    std::fs::write(
        &program,
        format!(
            "#!/bin/sh\necho \"start $(date +%s%N)\" >> '{log}'\necho 'no worker here' >&2\n\
             echo \"exit $(date +%s%N)\" >> '{log}'\nexit 3\n",
            log = log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &program,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let pool = Pool::builder()
        .workers(
            sshd.launcher()
                .remote_program(program.to_string_lossy().into_owned()),
            1,
        )
        .forward_stderr(false)
        .build()
        .unwrap();
    let result = common::within("the call", move || pool.call(square, 3));
    let reason = match result {
        Err(Error::PoolClosed {
            reason: Some(reason),
            ..
        }) => reason,
        other => panic!("{other:?}"),
    };
    let expected = format!(
        "ssh {}@127.0.0.1: 5 workers in a row died before their handshake; last: ",
        sshd.user
    );
    assert!(reason.starts_with(&expected), "{reason}");
    assert!(reason.ends_with(": no worker here"), "{reason}");

    let log = std::fs::read_to_string(&log).unwrap();
    let times = |what: &str| -> Vec<u128> {
        log.lines()
            .filter_map(|line| line.strip_prefix(what))
            .map(|t| t.trim().parse().unwrap())
            .collect()
    };
    let (starts, exits) = (times("start "), times("exit "));
    assert_eq!(starts.len(), 5, "{log}");
    // Each start after a failure waits for a delay that doubles from
    // 10 ms, counted from when the pool saw the failure, after the exit.
    for k in 1..starts.len() {
        let waited = Duration::from_nanos((starts[k] - exits[k - 1]) as u64);
        let delay = Duration::from_millis(10) * (1 << (k - 1));
        assert!(waited >= delay, "start {k} came {waited:?} after a failure");
    }
}
