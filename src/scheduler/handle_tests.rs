//! Tests of a worker handle's take-back against a real pipe: a `sleep`
//! process stands for a worker that never reads its requests.

use std::os::unix::process::CommandExt;
use std::process::Command;

use super::*;
use crate::handoff::Handoff;
use crate::launch::{Launch, Local};
use crate::protocol::RunFrame;
use crate::scheduler::spawner::SpawnRequest;

/// Starts `sleep 60`: a worker that never reads its requests.
#[derive(Debug)]
struct Sleeper;

impl Launch for Sleeper {
    fn command(&self, _: &Handoff<'_>) -> Command {
        let mut command = Command::new("sleep");
        command.arg("60").process_group(0);
        command
    }

    fn worker_is_child(&self) -> bool {
        true
    }

    fn kill_rest(&self, local_pid: u32, reported: Option<&Reported>) {
        Local.kill_rest(local_pid, reported);
    }
}

/// A worker that said hello and reads nothing.
fn sleeper() -> WorkerHandle {
    let process = SpawnRequest::plain(Arc::new(Sleeper)).spawn().unwrap();
    let mut worker = WorkerHandle::new(process, 0, Some(crate::flow::STARTUP_TIMEOUT));
    worker.books.ready(Instant::now());
    worker
}

#[test]
fn a_start_is_timed_only_when_it_is_bounded() {
    let spawn = || SpawnRequest::plain(Arc::new(Sleeper)).spawn().unwrap();
    let bound = Duration::from_secs(3);
    let mut bounded = WorkerHandle::new(spawn(), 0, Some(bound));
    let deadline = bounded.deadline().expect("a deadline while it starts");
    assert!(deadline <= Instant::now() + bound);
    bounded.check_deadline(deadline);
    assert_eq!(bounded.fate(), Some(&Fate::StartupTimeout));
    let mut unbounded = WorkerHandle::new(spawn(), 0, None);
    assert_eq!(unbounded.deadline(), None);
    unbounded.check_deadline(Instant::now() + Duration::from_secs(3600));
    assert_eq!(unbounded.fate(), None);
}

fn chunk(first_index: usize, context: u64) -> Chunk {
    let mut frame = RunFrame::new(0);
    frame
        .push_with(|buf| protocol::encode(&first_index, buf))
        .unwrap();
    Chunk {
        map: 0,
        task: 0,
        context,
        first_index,
        count: 1,
        frame: frame.finish(),
        attempts: 0,
        returns: 0,
        bulk: Vec::new(),
        context_frame: None,
        timeout: None,
    }
}

fn context(id: u64) -> SharedContext {
    let frame = protocol::context_frame(id, |buf| protocol::encode(&id, buf)).unwrap();
    SharedContext {
        id,
        frame: Arc::new(frame),
        beside: None,
    }
}

/// A context whose frame names where its value is (the value itself is
/// never read here).
fn context_beside(id: u64) -> SharedContext {
    SharedContext {
        id,
        frame: Arc::new(protocol::context_beside_frame(id, &[0; 24])),
        beside: None,
    }
}

fn assign(worker: &mut WorkerHandle, chunk: Chunk, context: Option<&SharedContext>) {
    let estimate = Duration::from_millis(1);
    worker.assign(chunk, context, estimate, Arc::default());
}

/// The bytes it has to write, in order.
fn unwritten(worker: &WorkerHandle) -> Vec<u8> {
    worker
        .books
        .unwritten()
        .iter()
        .flat_map(|s| s.to_vec())
        .collect()
}

/// What is in its request pipe, read out of it.
fn drain_pipe(worker: &mut WorkerHandle) -> Vec<u8> {
    let mut buf = vec![0; worker.process.unread_requests().unwrap() as usize];
    let n = worker.process.take_unread(&mut buf);
    buf.truncate(n);
    buf
}

#[test]
#[cfg_attr(
    not(buckshot_native),
    ignore = "reading frames back needs /proc (the portable backend takes back unwritten frames only)"
)]
fn frames_taken_back_owe_their_context_and_forget_frames_again() {
    // Inline, and as the few bytes that name a memfd.
    frames_taken_back_owe_again(context(7));
    frames_taken_back_owe_again(context_beside(7));
}

fn frames_taken_back_owe_again(seven: SharedContext) {
    let mut worker = sleeper();
    assign(&mut worker, chunk(0, 0), None);
    let head = unwritten(&worker);
    // Context 3 was sent before and is dead: its FORGET frame goes with
    // the next frame, with context 7's frame.
    worker.contexts.insert(3);
    worker.forget(3);
    assign(&mut worker, chunk(1, 7), Some(&seven));
    assign(&mut worker, chunk(2, 7), Some(&seven));
    worker.try_write().unwrap();
    assert!(worker.books.all_written());
    let taken = worker.take_back();
    let indices: Vec<usize> = taken.iter().map(|c| c.first_index).collect();
    assert_eq!(indices, [1, 2]);
    assert!(!worker.contexts.contains(&7), "context 7 never reached it");
    assert_eq!(worker.forgets, [3]);
    // The head it has not read either stays, and goes out again whole.
    assert_eq!(worker.books.frames(), 1);
    assert_eq!(unwritten(&worker), head);
    worker.try_write().unwrap();
    assert_eq!(drain_pipe(&mut worker), head);
    // Its next frame of context 7 brings the FORGET and the context.
    assign(&mut worker, chunk(3, 7), Some(&seven));
    let mut expected = protocol::forget_frame(3);
    expected.extend_from_slice(&seven.frame);
    let next = unwritten(&worker);
    assert!(
        next.starts_with(&expected),
        "no context with the next frame"
    );
    assert!(worker.forgets.is_empty() && worker.contexts.contains(&7));
}

#[test]
#[cfg_attr(
    not(buckshot_native),
    ignore = "reading frames back needs /proc (the portable backend takes back unwritten frames only)"
)]
fn a_retiring_worker_gives_back_frames_and_gets_its_retire_frame_again() {
    let mut worker = sleeper();
    for k in 0..3 {
        assign(&mut worker, chunk(k, 0), None);
    }
    let head = unwritten(&worker)[..worker.books.unwritten()[0].len()].to_vec();
    worker.retire();
    worker.try_write().unwrap();
    assert_eq!(worker.retire_written, protocol::RETIRE_FRAME.len());
    let taken = worker.take_back();
    assert_eq!(taken.len(), 2);
    assert_eq!(worker.retire_written, 0);
    assert!(!worker.all_written());
    worker.try_write().unwrap();
    let mut expected = head;
    expected.extend_from_slice(&protocol::RETIRE_FRAME);
    assert_eq!(drain_pipe(&mut worker), expected);
    assert_eq!(worker.books.assigned(), 1);
}

#[test]
#[cfg_attr(
    not(buckshot_native),
    ignore = "reading frames back needs /proc (the portable backend takes back unwritten frames only)"
)]
fn a_worker_that_has_not_said_hello_gives_back_its_head_too() {
    let mut worker = sleeper();
    worker.books = Books::default();
    assign(&mut worker, chunk(0, 0), None);
    assign(&mut worker, chunk(1, 0), None);
    worker.try_write().unwrap();
    let taken = worker.take_back();
    assert_eq!(taken.len(), 2);
    assert_eq!(worker.books.frames(), 0);
    assert_eq!(worker.process.unread_requests(), Some(0));
    // A doomed worker gives nothing back: it is being buried.
    assign(&mut worker, chunk(2, 0), None);
    worker.doom(Fate::Died);
    assert!(worker.take_back().is_empty());
}
