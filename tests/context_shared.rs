//! Long contexts between a pool and its local workers go through shared
//! memory: encoded once into a memfd that each worker maps, never through
//! its pipe. They must arrive whole in every worker, again in a
//! replacement, and leave no descriptor behind. On the portable backend
//! they go inline, as short ones always do.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Mutex, MutexGuard, PoisonError, mpsc};
use std::time::Duration;

use buckshot::{Error, Pool};
use serde_bytes::ByteBuf;

/// Past the threshold from which contexts go beside their frame.
const LONG: usize = 6 << 20;
/// How long inputs wait for each other: far more than they need.
const MEET_BOUND: Duration = Duration::from_secs(60);

/// One test at a time: the memfd count must see this file's pools alone.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Bytes that differ from position to position, so that a misplaced
/// piece shows.
fn pattern(len: usize) -> ByteBuf {
    ByteBuf::from(
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ (i >> 12) as u8)
            .collect::<Vec<u8>>(),
    )
}

fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// The bytes this process has read through `read` and the like: a
/// context that came through the pipe counts here, a mapped one does not.
fn bytes_read() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").expect("read /proc/self/io");
    io.lines()
        .find_map(|line| line.strip_prefix("rchar: "))
        .and_then(|n| n.trim().parse().ok())
        .expect("an rchar line")
}

/// The memfds open in this process.
fn memfds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter(|entry| {
            std::fs::read_link(entry.path())
                .is_ok_and(|target| target.to_string_lossy().starts_with("/memfd:"))
        })
        .count()
}

/// What a worker saw of its context.
type Seen = (u32, usize, u64, u64);

/// Reads the context, then waits until every input of its map (on as
/// many workers, with `batch_size(1)`) has met at `path`: its pid, the
/// context's length and checksum, and what its worker read through
/// `read`.
fn hold(table: &ByteBuf, path: String) -> Seen {
    let seen = (
        std::process::id(),
        table.len(),
        checksum(table),
        bytes_read(),
    );
    let mut stream = UnixStream::connect(&path).expect("reach the test");
    stream.write_all(b"!").expect("announce");
    stream.set_read_timeout(Some(MEET_BOUND)).unwrap();
    let mut go = [0];
    stream.read_exact(&mut go).expect("the others came in time");
    seen
}
buckshot::register!(hold);

/// The test's end of a meeting of `n` inputs: once all are there, lets
/// them go.
fn meeting(n: usize) -> (String, mpsc::Receiver<()>) {
    let path = std::env::temp_dir().join(format!(
        "buckshot-context-shared-{}-{n}.sock",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut met = Vec::new();
        while met.len() < n {
            let Ok((mut stream, _)) = listener.accept() else {
                return;
            };
            let mut hello = [0];
            if stream.read_exact(&mut hello).is_ok() {
                met.push(stream);
            }
        }
        for mut stream in met {
            let _ = stream.write_all(b"!");
        }
        let _ = tx.send(());
    });
    (path.to_string_lossy().into_owned(), rx)
}

#[test]
fn a_long_context_reaches_every_worker_through_shared_memory() {
    let _serial = serial();
    const WORKERS: usize = 4;
    let pool = Pool::builder()
        .processes(WORKERS)
        .batch_size(1)
        .build()
        .unwrap();
    let table = pattern(LONG);
    let expected = checksum(&table);
    let before = memfds();
    let ctx = pool.with_context(&table);
    let made = memfds() - before;
    let (path, met) = meeting(WORKERS);
    let results = ctx.map(hold, vec![path; WORKERS]).unwrap();
    let seen: Vec<Seen> = common::within("every worker holds the context", move || {
        let seen = results.map(Result::unwrap).collect();
        met.recv_timeout(MEET_BOUND).expect("all met");
        seen
    });
    let mut pids: Vec<u32> = seen.iter().map(|s| s.0).collect();
    pids.sort_unstable();
    pids.dedup();
    assert_eq!(pids.len(), WORKERS, "one input per worker: {seen:?}");
    for &(pid, len, sum, read) in &seen {
        assert_eq!((len, sum), (LONG, expected), "worker {pid}");
        if cfg!(buckshot_portable) {
            assert!(read > LONG as u64, "worker {pid} read it inline: {read}");
        } else {
            assert!(read < (LONG / 4) as u64, "worker {pid} read {read} bytes");
        }
    }
    let expected_made = usize::from(!cfg!(buckshot_portable));
    assert_eq!(made, expected_made, "memfds made for the context");
}

#[test]
fn a_short_context_stays_inline() {
    let _serial = serial();
    let pool = Pool::builder().processes(1).build().unwrap();
    let table = pattern(100_000);
    let before = memfds();
    let ctx = pool.with_context(&table);
    assert_eq!(memfds(), before, "no memfd for a short context");
    let (path, _met) = meeting(1);
    let (_, len, sum, _) = ctx.call(hold, path).unwrap();
    assert_eq!((len, sum), (table.len(), checksum(&table)));
}

fn sum_or_die(table: &ByteBuf, (index, path): (u32, String)) -> u64 {
    if index == 3 {
        common::announce(&path);
        common::hang();
    }
    checksum(table) ^ u64::from(index)
}
buckshot::register!(sum_or_die);

#[test]
fn a_worker_killed_mid_map_is_replaced_and_its_replacement_maps_the_context() {
    let _serial = serial();
    // One input per frame: the death is that input's alone.
    let pool = Pool::builder()
        .processes(1)
        .batch_size(1)
        .forward_stderr(false)
        .build()
        .unwrap();
    let table = pattern(LONG);
    let expected = checksum(&table);
    let ctx = pool.with_context(&table);
    let rendezvous = common::Rendezvous::new();
    let path = rendezvous.path();
    let results = ctx
        .map(sum_or_die, (0..8).map(move |i| (i, path.clone())))
        .unwrap();
    let killer = std::thread::spawn(move || {
        let pid = rendezvous.wait();
        common::kill9(pid);
        pid
    });
    let results: Vec<Result<u64, Error>> =
        common::within("the map ends", move || results.collect());
    let killed = killer.join().unwrap();
    for (index, result) in results.iter().enumerate() {
        match result {
            Err(Error::WorkerDied { index: 3, .. }) if index == 3 => {}
            Ok(sum) => assert_eq!(*sum, expected ^ index as u64, "input {index}"),
            other => panic!("input {index}: {other:?}"),
        }
    }
    // The replacement ran the inputs after the killed one, with the
    // context mapped from the same memfd.
    let (pid, len, sum, _) = {
        let (path, _met) = meeting(1);
        ctx.call(hold, path).unwrap()
    };
    assert_ne!(pid, killed);
    assert_eq!((len, sum), (LONG, expected));
}

fn length(table: &ByteBuf, extra: usize) -> usize {
    table.len() + extra
}
buckshot::register!(length);

fn nothing(x: u8) -> u8 {
    x
}
buckshot::register!(nothing);

#[test]
fn the_memfd_closes_with_the_last_holder_of_the_context() {
    let _serial = serial();
    let pool = Pool::builder().processes(2).build().unwrap();
    // Workers started, with their own memfds (reply slots).
    assert_eq!(pool.map(nothing, 0..20).unwrap().count(), 20);
    let before = memfds();
    let fds = common::open_fds();
    let table = pattern(LONG);
    let ctx = pool.with_context(&table);
    assert_eq!(ctx.call(length, 1).unwrap(), LONG + 1);
    // A map outlives its handle, and so does the memfd.
    let mut map = ctx.map(length, 0..4).unwrap();
    drop(ctx);
    assert_eq!(map.next().unwrap().unwrap(), LONG);
    if !cfg!(buckshot_portable) {
        assert_eq!(memfds(), before + 1, "the map holds the context");
    }
    assert_eq!(map.count(), 3);
    assert_eq!(memfds(), before, "no memfd left");
    assert_eq!(common::open_fds(), fds, "no descriptor left");
}
