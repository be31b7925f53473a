//! Launchers: workers started through a command prefix, mixed with local
//! ones in one pool; a worker out of the pool's reach (its own session,
//! like a remote one) ends with its request stream; a launcher that cannot
//! start workers is given up while the others go on.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use buckshot::{Error, Launcher, Pool};

fn tagged(x: u64) -> (u64, u32) {
    (x * 3, std::process::id())
}
buckshot::register!(tagged);

/// [`tagged`], a little slower: inputs queue while slow workers start.
fn tagged_after_nap(x: u64) -> (u64, u32) {
    std::thread::sleep(Duration::from_millis(5));
    tagged(x)
}
buckshot::register!(tagged_after_nap);

fn announce_and_hang(path: String) -> u64 {
    common::announce(&path);
    common::hang()
}
buckshot::register!(announce_and_hang);

/// A prefix that puts the worker in a session of its own: the pool's
/// kill of the local process group cannot reach it, as it cannot reach a
/// remote worker.
fn own_session() -> Launcher {
    Launcher::command(["setsid", "--wait"])
}

#[test]
fn a_mixed_pool_runs_one_map_in_order() {
    let pool = Pool::builder()
        .workers(Launcher::local(), 1)
        .workers(Launcher::command(["nice", "-n", "5"]), 1)
        .workers(own_session(), 1)
        .build()
        .unwrap();
    assert_eq!(pool.processes(), 3);
    // A worker that is still starting has its inputs taken by those that
    // are ready: maps of slower inputs until every one of them served.
    let (pool, workers) = common::within("every launcher's worker serves", move || {
        let mut workers = HashSet::new();
        while workers.len() < 3 {
            let served = pool.map(tagged_after_nap, 0..30u64).unwrap();
            workers.extend(served.map(|result| result.unwrap().1));
        }
        (pool, workers)
    });
    assert_eq!(
        workers.len(),
        3,
        "every launcher's worker served: {workers:?}"
    );
    let results: Vec<(u64, u32)> = common::within("the mixed map", move || {
        pool.map(tagged, 0..3000u64)
            .unwrap()
            .map(Result::unwrap)
            .collect()
    });
    let outputs: Vec<u64> = results.iter().map(|(y, _)| *y).collect();
    assert_eq!(outputs, (0..3000u64).map(|x| x * 3).collect::<Vec<_>>());
    let served: HashSet<u32> = results.iter().map(|(_, pid)| *pid).collect();
    assert!(served.is_subset(&workers), "{served:?}");
}

#[test]
fn a_worker_out_of_reach_ends_with_its_request_stream() {
    // On a timeout the pool kills the local `setsid`, which the worker
    // outlives; the worker must end because its request stream closed,
    // even though its task never returns.
    let pool = Pool::builder()
        .workers(own_session(), 1)
        .timeout(Duration::from_millis(300))
        .forward_stderr(false)
        .build()
        .unwrap();
    let rendezvous = common::Rendezvous::new();
    let path = rendezvous.path();
    let waiting = std::thread::spawn(move || {
        let result = pool.call(announce_and_hang, path);
        (result, pool)
    });
    let pid = rendezvous.wait();
    assert!(
        common::exits_within(pid, common::KILL_BOUND),
        "worker {pid} still runs after its timeout"
    );
    let (result, pool) = waiting.join().unwrap();
    assert!(
        matches!(result, Err(Error::TaskTimeout { .. })),
        "{result:?}"
    );
    drop(pool);
}

#[test]
fn a_worker_out_of_reach_ends_when_its_map_is_dropped() {
    use futures::StreamExt;
    let pool = Pool::builder()
        .workers(own_session(), 1)
        .forward_stderr(false)
        .build()
        .unwrap();
    let rendezvous = common::Rendezvous::new();
    let mut stream = pool
        .map_stream(announce_and_hang, vec![rendezvous.path()])
        .unwrap();
    let first = futures::executor::block_on(futures::future::poll_fn(|cx| {
        std::task::Poll::Ready(stream.poll_next_unpin(cx))
    }));
    assert!(first.is_pending());
    let pid = rendezvous.wait();
    drop(stream);
    assert!(
        common::exits_within(pid, common::KILL_BOUND),
        "worker {pid} still runs after its map was dropped"
    );
    drop(pool);
}

#[test]
fn a_launcher_that_cannot_start_workers_is_given_up_and_the_rest_go_on() {
    let pool = Pool::builder()
        .workers(Launcher::local(), 1)
        .workers(Launcher::command(["false"]), 1)
        .forward_stderr(false)
        .build()
        .unwrap();
    let results: Vec<(u64, u32)> = common::within("the map", move || {
        let results = pool
            .map(tagged, 0..500u64)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        // Still usable after the launcher was given up.
        assert_eq!(pool.call(tagged, 7).unwrap().0, 21);
        results
    });
    let outputs: Vec<u64> = results.iter().map(|(y, _)| *y).collect();
    assert_eq!(outputs, (0..500u64).map(|x| x * 3).collect::<Vec<_>>());
    let workers: HashSet<u32> = results.iter().map(|(_, pid)| *pid).collect();
    assert_eq!(workers.len(), 1, "only the local worker served");
}

#[test]
fn a_pool_whose_only_launcher_fails_says_which() {
    let pool = Pool::builder()
        .workers(Launcher::command(["false"]), 2)
        .forward_stderr(false)
        .build()
        .unwrap();
    let result = common::within("the map", move || pool.call(tagged, 1));
    let message = result.unwrap_err().to_string();
    assert!(
        message.contains("workers in a row died before their handshake"),
        "{message}"
    );
}

/// Another test program of this crate, built beside this one: it has
/// other tasks registered.
fn another_program() -> Option<std::path::PathBuf> {
    let me = std::env::current_exe().ok()?;
    // The newest build of it: older ones may speak an older protocol.
    std::fs::read_dir(me.parent()?)
        .ok()?
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| {
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            name.starts_with("errors-") && path.extension().is_none()
        })
        .max_by_key(|path| path.metadata().and_then(|m| m.modified()).ok())
}

#[test]
fn a_launcher_that_runs_another_program_is_refused_by_name() {
    let Some(other) = another_program() else {
        common::skip(
            "errors-program",
            "the errors test program is not built beside this one (cargo test --test errors)",
        );
        return;
    };
    // The prefix is followed by `env VAR=... THIS_BINARY`: run the other
    // program with the same variable instead.
    let script = format!("exec env \"$2\" '{}'", other.display());
    let odd = || Launcher::command(["sh", "-c", script.as_str(), "sh"]);
    // Beside local workers, it is given up and the map completes.
    let pool = Pool::builder()
        .workers(Launcher::local(), 1)
        .workers(odd(), 1)
        .forward_stderr(false)
        .build()
        .unwrap();
    let results: Vec<(u64, u32)> = common::within("the map", move || {
        pool.map(tagged, 0..300u64)
            .unwrap()
            .map(Result::unwrap)
            .collect()
    });
    let outputs: Vec<u64> = results.iter().map(|(y, _)| *y).collect();
    assert_eq!(outputs, (0..300u64).map(|x| x * 3).collect::<Vec<_>>());
    let workers: HashSet<u32> = results.iter().map(|(_, pid)| *pid).collect();
    assert_eq!(workers.len(), 1, "only the local worker served");
    // Alone, the pool says which launcher and why.
    let pool = Pool::builder()
        .workers(odd(), 1)
        .forward_stderr(false)
        .build()
        .unwrap();
    let message = common::within("the call", move || pool.call(tagged, 1))
        .unwrap_err()
        .to_string();
    assert!(message.contains("sh -c exec env"), "{message}");
    assert!(message.contains("registered tasks"), "{message}");
}

fn abort_at(x: u64) -> u64 {
    if x == 13 {
        std::process::abort();
    }
    x
}
buckshot::register!(abort_at);

#[test]
fn replacements_that_keep_failing_are_started_ever_more_slowly() {
    // Two workers start; every start after those fails. With one worker
    // still ready, the launcher is never given up: its failing
    // replacements must back off, not spin.
    let dir = std::env::temp_dir().join(format!("buckshot-backoff-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let script = format!(
        "echo start >> '{d}/starts'; n=$(wc -l < '{d}/starts'); [ \"$n\" -le 2 ] || exit 1; exec \"$@\"",
        d = dir.display()
    );
    let pool = Pool::builder()
        .workers(Launcher::command(["sh", "-c", script.as_str(), "sh"]), 2)
        .forward_stderr(false)
        .build()
        .unwrap();
    let results = common::within("the map", move || {
        let results: Vec<_> = pool.map(abort_at, 0..20u64).unwrap().collect();
        // A window in which replacements keep failing.
        std::thread::sleep(Duration::from_secs(2));
        drop(pool);
        results
    });
    assert_eq!(results.len(), 20);
    for (x, result) in results.iter().enumerate() {
        match result {
            Err(Error::WorkerDied { index: 13, .. }) if x == 13 => {}
            Ok(y) if x != 13 && *y == x as u64 => {}
            other => panic!("input {x}: {other:?}"),
        }
    }
    let starts = std::fs::read_to_string(dir.join("starts"))
        .unwrap()
        .lines()
        .count();
    let _ = std::fs::remove_dir_all(&dir);
    // Doubling from 10 ms: about 8 attempts in 2 s; a tight loop makes
    // hundreds.
    assert!(starts < 20, "{starts} starts");
}

/// A handshake as another program would send it: well formed, but of
/// another protocol version. Each byte as a `printf` octal escape.
fn foreign_hello() -> String {
    #[derive(serde::Serialize)]
    struct Hello {
        version: u32,
        pid: u32,
        tasks: u32,
        digest: u64,
    }
    let hello = Hello {
        version: 999,
        pid: std::process::id(),
        tasks: 1,
        digest: 0,
    };
    let mut body = vec![1u8];
    ciborium::into_writer(&hello, &mut body).unwrap();
    let mut frame = (body.len() as u32).to_le_bytes().to_vec();
    frame.extend_from_slice(&body);
    frame.iter().map(|b| format!("\\{b:03o}")).collect()
}

#[test]
fn nothing_is_written_to_a_worker_before_its_handshake_checks_out() {
    // Another program answers our pipes: it records every byte it is
    // sent, waits up to 2 s for the first one, then says hello in a
    // protocol of its own. No byte of ours may reach it: it could run our
    // inputs with its own code.
    let dir = common::TempDir::new("foreign");
    let script = r#"record=$1/received-$$; hello=$2; exec 3<&0
timeout 2 head -c 1 <&3 > "$record"
printf "$hello"
exec cat <&3 >> "$record""#;
    let foreign = Launcher::command(["sh", "-c", script, "sh", &dir.path(), &foreign_hello()]);
    let pool = Pool::builder()
        .workers(foreign, 2)
        .forward_stderr(false)
        .build()
        .unwrap();
    let results = common::within("the map", move || {
        pool.map(tagged, 0..4u64)
            .map(|results| results.collect::<Vec<_>>())
    });
    let reason = "worker speaks protocol 999, this process";
    match results {
        Ok(results) => {
            assert_eq!(results.len(), 4);
            for result in results {
                match result {
                    Err(Error::PoolClosed {
                        reason: Some(why), ..
                    }) => assert!(why.contains(reason), "{why}"),
                    other => panic!("{other:?}"),
                }
            }
        }
        Err(error) => assert!(error.to_string().contains(reason), "{error}"),
    }
    // The pool is dropped: the programs were killed, their records are
    // final.
    let records = dir.files();
    assert!(!records.is_empty(), "no program started");
    for record in records {
        let received = std::fs::read(&record).unwrap();
        assert!(
            received.is_empty(),
            "another program was sent {} bytes before its handshake: {:?}",
            received.len(),
            &received[..received.len().min(32)]
        );
    }
}

fn exit_with(code: i32) -> u64 {
    std::process::exit(code)
}
buckshot::register!(exit_with);

#[test]
fn a_worker_that_starts_ends_the_launchers_streak_of_failures() {
    // Two starts in three fail, and every input kills its worker: the
    // failures add up to far more than the limit of five in a row, but
    // never more than two in a row, so the launcher is never given up.
    let dir = common::TempDir::new("streak");
    let script = format!(
        "echo start >> '{d}/starts'; n=$(wc -l < '{d}/starts'); [ $((n % 3)) -eq 0 ] || exit 3; exec \"$@\"",
        d = dir.0.display()
    );
    let pool = Pool::builder()
        .workers(Launcher::command(["sh", "-c", script.as_str(), "sh"]), 1)
        .forward_stderr(false)
        .build()
        .unwrap();
    let (results, last) = common::within("inputs that kill their workers", move || {
        let results: Vec<_> = (0..4).map(|_| pool.call(exit_with, 9)).collect();
        (results, pool.call(tagged, 2))
    });
    for result in &results {
        assert!(
            matches!(result, Err(Error::WorkerDied { status: Some(status), .. }) if status.code() == Some(9)),
            "{result:?}"
        );
    }
    assert_eq!(last.unwrap().0, 6);
    let starts = std::fs::read_to_string(dir.0.join("starts"))
        .unwrap()
        .lines()
        .count();
    assert_eq!(starts, 15, "three starts per worker");
}
