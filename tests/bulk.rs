//! Long strings travel beside their frames, in shared memory, between a
//! pool and its local workers: they must come back exactly, whatever
//! happens to the worker that made them, within the frame limit, and leave
//! no descriptor behind.

use std::sync::{Mutex, MutexGuard, PoisonError};

use buckshot::{Error, Pool};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

mod common;

const MIB: usize = 1 << 20;

/// One test at a time: the descriptor count must see this file's pools
/// alone.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

fn collect<O: Send + 'static>(
    what: &str,
    results: impl Iterator<Item = Result<O, Error>> + Send + 'static,
) -> Vec<Result<O, Error>> {
    common::within(what, move || results.collect())
}

/// Bytes that differ from position to position, so that a misplaced
/// piece shows.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 12) as u8)
        .collect()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Record {
    id: u32,
    #[serde(with = "serde_bytes")]
    body: Vec<u8>,
    note: String,
    parts: Vec<ByteBuf>,
}

fn record(id: u32) -> Record {
    Record {
        id,
        body: pattern(5 * MIB + id as usize, id as u8),
        note: "n".repeat(6 * MIB) + &id.to_string(),
        parts: vec![
            ByteBuf::from(pattern(4 * MIB, 1)),
            ByteBuf::from(vec![id as u8; 3]),
            ByteBuf::from(pattern(4 * MIB + 1, 2)),
        ],
    }
}

/// Reverses every long string, so that the worker must have read each
/// one whole, and returns the record.
fn reverse(mut record: Record) -> Record {
    record.body.reverse();
    record.note = record.note.chars().rev().collect();
    for part in &mut record.parts {
        part.reverse();
    }
    record.id += 1000;
    record
}
buckshot::register!(reverse);

fn reversed(record: &Record) -> Record {
    reverse(record.clone())
}

#[test]
fn long_strings_come_back_exactly() {
    let _serial = serial();
    let pool = Pool::new(2).unwrap();
    let inputs: Vec<Record> = (0..6).map(record).collect();
    let results = collect("records", pool.map(reverse, inputs.clone()).unwrap());
    assert_eq!(results.len(), inputs.len());
    for (input, result) in inputs.iter().zip(results) {
        assert_eq!(result.unwrap(), reversed(input), "record {}", input.id);
    }
}

fn bytes_of(len: u64) -> ByteBuf {
    ByteBuf::from(pattern(len as usize, len as u8))
}
buckshot::register!(bytes_of);

/// The same, and the last one says so when it is made.
fn bytes_then_announce((len, last, path): (u64, bool, String)) -> ByteBuf {
    let bytes = bytes_of(len);
    if last {
        common::announce(&path);
    }
    bytes
}
buckshot::register!(bytes_then_announce);

/// Large outputs made faster than they are read: the worker runs out of
/// free reply slots and sends the rest inline.
#[test]
fn outputs_made_faster_than_they_are_read_all_arrive() {
    let _serial = serial();
    let pool = Pool::new(1).unwrap();
    let rendezvous = common::Rendezvous::new();
    let lens: Vec<u64> = (0..8).map(|k| (4 * MIB + k) as u64).collect();
    let inputs: Vec<(u64, bool, String)> = lens
        .iter()
        .enumerate()
        .map(|(k, &len)| (len, k == lens.len() - 1, rendezvous.path()))
        .collect();
    let mut results = pool.map(bytes_then_announce, inputs).unwrap();
    // The first pulls every input; the rest are read only once the worker
    // made the last output.
    let first = results.next().unwrap();
    rendezvous.wait();
    let outputs: Vec<_> = std::iter::once(first)
        .chain(collect("outputs", results))
        .collect();
    assert_eq!(outputs.len(), lens.len());
    for (len, output) in lens.iter().zip(outputs) {
        let output = output.unwrap();
        assert_eq!(
            output.as_slice(),
            pattern(*len as usize, *len as u8),
            "{len}"
        );
    }
}

#[test]
fn a_worker_that_exits_after_each_answer_leaves_its_outputs_readable() {
    let _serial = serial();
    let pool = Pool::builder()
        .processes(2)
        .max_tasks_per_worker(1)
        .build()
        .unwrap();
    let lens: Vec<u64> = (0..6).map(|k| (4 * MIB + k) as u64).collect();
    let results = collect("outputs", pool.map(bytes_of, lens.clone()).unwrap());
    for (len, result) in lens.iter().zip(results) {
        assert_eq!(
            result.unwrap().as_slice(),
            pattern(*len as usize, *len as u8)
        );
    }
}

/// Aborts on the input that says so, after it was read whole.
fn abort_on_zero(bytes: ByteBuf) -> u64 {
    if bytes[0] == 0 {
        std::process::abort();
    }
    bytes.iter().map(|&b| u64::from(b)).sum()
}
buckshot::register!(abort_on_zero);

#[test]
fn a_worker_that_dies_reading_a_long_input_fails_that_input_alone() {
    let _serial = serial();
    let pool = Pool::new(2).unwrap();
    let inputs: Vec<ByteBuf> = (1..=6u8)
        .map(|k| ByteBuf::from(vec![if k == 3 { 0 } else { k }; 5 * MIB]))
        .collect();
    let results = collect("sums", pool.map(abort_on_zero, inputs).unwrap());
    assert_eq!(results.len(), 6, "one result per input");
    for (k, result) in results.into_iter().enumerate() {
        if k == 2 {
            assert!(
                matches!(result, Err(Error::WorkerDied { index: 2, .. })),
                "{result:?}"
            );
        } else {
            assert_eq!(result.unwrap(), ((k + 1) * 5 * MIB) as u64, "input {k}");
        }
    }
}

fn byte_len(bytes: ByteBuf) -> u64 {
    bytes.len() as u64
}
buckshot::register!(byte_len);

#[test]
fn strings_beside_the_frame_count_against_its_limit() {
    let _serial = serial();
    let limit = 8 * MIB as u32;
    let pool = Pool::builder()
        .processes(1)
        .max_frame_bytes(limit)
        .build()
        .unwrap();
    let lens = [5 * MIB as u64, 9 * MIB as u64, 6 * MIB as u64];
    let results = collect("outputs", pool.map(bytes_of, lens).unwrap());
    assert_eq!(results[0].as_ref().unwrap().len(), 5 * MIB);
    let message = results[1].as_ref().unwrap_err().to_string();
    assert!(
        message.contains("bytes is over the frame limit of 8388608"),
        "{message}"
    );
    assert_eq!(results[2].as_ref().unwrap().len(), 6 * MIB);

    let inputs = [5 * MIB, 9 * MIB, 6 * MIB].map(|len| ByteBuf::from(vec![1; len]));
    let results = collect("inputs", pool.map(byte_len, inputs).unwrap());
    assert_eq!(*results[0].as_ref().unwrap(), 5 * MIB as u64);
    let Err(error) = &results[1] else {
        panic!("{:?}", results[1]);
    };
    assert_eq!(error.to_string(), "input 1: could not encode the input");
    let source = std::error::Error::source(error).unwrap().to_string();
    assert!(
        source.ends_with("over the frame limit of 8388608"),
        "{source}"
    );
    assert_eq!(*results[2].as_ref().unwrap(), 6 * MIB as u64);
}

/// The memfds for long strings open in this process: its pools' segments
/// and reply slots.
fn memfds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter(|entry| {
            let entry = entry.as_ref().unwrap();
            std::fs::read_link(entry.path())
                .is_ok_and(|target| target.to_string_lossy().contains("buckshot-bulk"))
        })
        .count()
}

#[test]
fn a_dropped_pool_leaves_no_memfd_open() {
    if common::portable_lacks("memfds (long strings go inline)") {
        return;
    }
    let _serial = serial();
    let before = memfds();
    let pool = Pool::new(2).unwrap();
    let inputs: Vec<Record> = (0..4).map(record).collect();
    let results = collect("records", pool.map(reverse, inputs.clone()).unwrap());
    for (input, result) in inputs.iter().zip(results) {
        assert_eq!(result.unwrap(), reversed(input), "record {}", input.id);
    }
    assert!(memfds() > before, "the pool's workers have reply slots");
    drop(pool);
    assert_eq!(memfds(), before, "every segment and slot closed");
}

/// Sums the bytes, once `gate` exists (if one is given).
fn sum_after((bytes, gate): (ByteBuf, String)) -> u64 {
    if !gate.is_empty() {
        common::wait_until("the gate opens", || std::path::Path::new(&gate).exists());
    }
    bytes.iter().map(|&b| u64::from(b)).sum()
}
buckshot::register!(sum_after);

#[test]
fn spare_segments_are_few_however_many_were_in_flight() {
    if common::portable_lacks("memfds (long strings go inline)") {
        return;
    }
    let _serial = serial();
    let before = memfds();
    let pool = Pool::new(1).unwrap();
    let dir = common::TempDir::new("bulk-gate");
    let gate = dir.0.join("open").to_string_lossy().into_owned();
    // The first input waits at the gate while the others are encoded, one
    // segment each.
    let inputs: Vec<(ByteBuf, String)> = (0..12u8)
        .map(|k| {
            let gate = if k == 0 { gate.clone() } else { String::new() };
            (ByteBuf::from(vec![k; 4 * MIB]), gate)
        })
        .collect();
    let results = pool.map(sum_after, inputs).unwrap();
    let results = std::thread::spawn(move || results.collect::<Vec<_>>());
    // One reply slot, and at least twice as many segments as are kept.
    common::wait_until("segments of inputs in flight", || memfds() >= before + 9);
    std::fs::write(&gate, b"").unwrap();
    let results = common::within("the sums", move || results.join().unwrap());
    for (k, result) in results.into_iter().enumerate() {
        assert_eq!(result.unwrap(), (k * 4 * MIB) as u64, "input {k}");
    }
    // The chunks are answered: their segments went back to the spares,
    // of which at most four are kept.
    assert!(
        memfds() <= before + 1 + 4,
        "{} memfds kept",
        memfds() - before
    );
    drop(pool);
}

/// What one input of the slot tests does in its worker, in order.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Step {
    /// Tell the test here.
    announce: Option<String>,
    /// Wait until this file exists.
    gate: Option<String>,
    /// Free every reply slot of the worker behind the pool's back, as a
    /// task that writes to the slots' memfd through its worker's
    /// descriptor can.
    clobber: bool,
    /// Then return this many bytes of the pattern of `seed`.
    len: u64,
    seed: u8,
}

/// An output that, on this (the test's) side, may hold its decoding up:
/// see [`HOLD`].
#[derive(Debug, Serialize)]
struct Held(ByteBuf);

/// While set: the output whose first byte is `.0` is decoded only once
/// the file `.1` was made and an announcement came to `.2`.
static HOLD: Mutex<Option<(u8, String, common::Rendezvous)>> = Mutex::new(None);

impl<'de> Deserialize<'de> for Held {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let bytes = ByteBuf::deserialize(deserializer)?;
        let hold = HOLD.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((first, gate, rendezvous)) = hold.as_ref() {
            if bytes.first() == Some(first) {
                std::fs::write(gate, b"").unwrap();
                rendezvous.wait();
            }
        }
        Ok(Held(bytes))
    }
}

fn step(step: Step) -> Held {
    if let Some(path) = &step.announce {
        common::announce(path);
    }
    if let Some(gate) = &step.gate {
        common::wait_until("the gate opens", || std::path::Path::new(gate).exists());
    }
    if step.clobber {
        for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
            let is_bulk = std::fs::read_link(entry.path())
                .is_ok_and(|target| target.to_string_lossy().contains("buckshot-bulk"));
            let writable = std::fs::OpenOptions::new().write(true).open(entry.path());
            if let (true, Ok(file)) = (is_bulk, writable) {
                for slot in 0..3u64 {
                    use std::os::unix::fs::FileExt;
                    let _ = file.write_all_at(&[0; 8], slot * (8 << 30));
                }
            }
        }
    }
    Held(ByteBuf::from(pattern(step.len as usize, step.seed)))
}
buckshot::register!(step);

/// Checks the outputs of `steps`: each its own pattern, or, for the seeds
/// in `lost`, refused as no longer in its slot.
fn check_steps(steps: &[Step], results: Vec<Result<Held, Error>>, lost: &[u8]) {
    assert_eq!(results.len(), steps.len());
    for (step, result) in steps.iter().zip(results) {
        match result {
            Ok(Held(bytes)) => {
                assert!(
                    bytes.as_slice() == pattern(step.len as usize, step.seed),
                    "output {} is not its own",
                    step.seed
                );
                assert!(!lost.contains(&step.seed), "{} was not lost", step.seed);
            }
            Err(error @ Error::Decode { .. }) => {
                let source = std::error::Error::source(&error).unwrap().to_string();
                assert_eq!(source, "bulk output no longer in its slot", "{}", step.seed);
                assert!(lost.contains(&step.seed), "{} was lost", step.seed);
            }
            Err(other) => panic!("{}: {other}", step.seed),
        }
    }
}

#[test]
fn a_slot_refilled_behind_the_pools_back_is_never_read_as_another_output() {
    if common::portable_lacks("memfds (long strings go inline)") {
        return;
    }
    let _serial = serial();
    let pool = Pool::builder().processes(1).batch_size(1).build().unwrap();
    let dir = common::TempDir::new("bulk-clobber");
    let gate = dir.0.join("gate").to_string_lossy().into_owned();
    let rendezvous = common::Rendezvous::new();
    let len = 4 * MIB as u64;
    let steps = [
        // Read at once.
        Step::default(),
        // Fills slot 0; its delivery waits, unread.
        Step {
            gate: Some(gate.clone()),
            len,
            seed: 11,
            ..Step::default()
        },
        // Frees every slot, then fills the first free one: slot 0.
        Step {
            clobber: true,
            len,
            seed: 12,
            ..Step::default()
        },
        Step {
            announce: Some(rendezvous.path()),
            ..Step::default()
        },
    ];
    let mut results = pool.map(step, steps.clone()).unwrap();
    let first = results.next().unwrap();
    std::fs::write(&gate, b"").unwrap();
    rendezvous.wait();
    let results: Vec<_> = std::iter::once(first)
        .chain(collect("outputs", results))
        .collect();
    // 11's bytes are gone: refused, not read as 12's.
    check_steps(&steps, results, &[11]);
}

#[test]
fn a_slot_is_held_until_every_item_of_its_delivery_is_decoded() {
    let _serial = serial();
    // Two inputs per message, so that 10 and 11 come in one delivery,
    // whose lease holds both slots.
    let pool = Pool::builder().processes(1).batch_size(2).build().unwrap();
    let dir = common::TempDir::new("bulk-lease");
    let (gate_12, gate_14) = (dir.0.join("12"), dir.0.join("14"));
    let gate = |path: &std::path::Path| Some(path.to_string_lossy().into_owned());
    let (made_12, made_14) = (common::Rendezvous::new(), common::Rendezvous::new());
    let len = 4 * MIB as u64;
    let long = |seed| Step {
        len,
        seed,
        ..Step::default()
    };
    let steps = [
        long(10),
        long(11),
        // Made while 11 is being decoded: 10's slot must still be held.
        Step {
            gate: gate(&gate_12),
            ..long(12)
        },
        Step {
            announce: Some(made_12.path()),
            gate: gate(&gate_14),
            ..Step::default()
        },
        // Made once the delivery of 10 and 11 is gone, before 12 is read.
        long(14),
        Step {
            announce: Some(made_14.path()),
            ..Step::default()
        },
    ];
    // 11 is decoded only once 12 is made.
    *HOLD.lock().unwrap_or_else(PoisonError::into_inner) = Some((
        pattern(1, 11)[0],
        gate_12.to_string_lossy().into_owned(),
        made_12,
    ));
    let mut results = pool.map(step, steps.clone()).unwrap();
    let first = results.next().unwrap();
    *HOLD.lock().unwrap_or_else(PoisonError::into_inner) = None;
    std::fs::write(&gate_14, b"").unwrap();
    made_14.wait();
    let results: Vec<_> = std::iter::once(first)
        .chain(collect("outputs", results))
        .collect();
    check_steps(&steps, results, &[]);
}

/// Set in the copy of this test binary that runs under a file size limit.
const UNDER_A_FILE_SIZE_LIMIT: &str = "BUCKSHOT_TEST_UNDER_FSIZE_LIMIT";

/// Reply slots are sparse memfds far larger than any output: under
/// `ulimit -f` the kernel would end the program with SIGXFSZ for making
/// one. There, everything goes inline, and long strings still come back.
#[test]
fn a_pool_under_a_file_size_limit_sends_everything_inline() {
    if std::env::var_os(UNDER_A_FILE_SIZE_LIMIT).is_some() {
        let pool = Pool::new(2).unwrap();
        let inputs: Vec<Record> = (0..2).map(record).collect();
        let results = collect("records", pool.map(reverse, inputs.clone()).unwrap());
        for (input, result) in inputs.iter().zip(results) {
            assert_eq!(result.unwrap(), reversed(input));
        }
        return;
    }
    let _serial = serial();
    let exe = std::env::current_exe().unwrap();
    let status = common::within("a copy under ulimit -f", move || {
        std::process::Command::new("sh")
            .arg("-c")
            // 512-byte blocks: 512 MiB, under the slots' sparse size.
            .arg(r#"ulimit -f 1048576 && exec "$0" --exact "$1" --test-threads 1"#)
            .arg(exe)
            .arg("a_pool_under_a_file_size_limit_sends_everything_inline")
            .env(UNDER_A_FILE_SIZE_LIMIT, "1")
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap()
    });
    assert!(status.success(), "the copy under ulimit -f: {status}");
}
