//! Replay files: an input that fails in a worker is kept, and the same
//! program started with `BUCKSHOT_REPLAY=<file>` runs it again, alone, in
//! the foreground, before `main`, and fails the same way. The replays here
//! are this test binary itself: were `main` (the test harness) to run, it
//! would print its test list.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use buckshot::{Error, Pool, Replay};
use serde::{Deserialize, Serialize};

fn segfault_at_three(x: u64) -> u64 {
    if x == 3 {
        // SAFETY: raising a signal has no memory-safety preconditions; the
        // default action of SIGSEGV ends the process as a bad access would.
        unsafe { libc::raise(libc::SIGSEGV) };
    }
    x
}
buckshot::register!(segfault_at_three);

fn panic_at_five(x: u64) -> u64 {
    if x == 5 {
        panic!("input {x} is cursed");
    }
    x
}
buckshot::register!(panic_at_five);

fn hang_at_four(x: u64) -> u64 {
    if x == 4 {
        common::hang();
    }
    x
}
buckshot::register!(hang_at_four);

/// Writes a reply that answers nothing into its worker's reply pipe, then
/// waits to be killed for it.
fn garbage_at_two(x: u64) -> u64 {
    if x == 2 {
        let mut frame = 22u32.to_le_bytes().to_vec();
        frame.push(3); // REPLY, for zero items
        frame.extend_from_slice(&[0; 21]);
        let fd = common::reply_fd();
        // SAFETY: writing a byte buffer to a descriptor this process holds.
        unsafe { libc::write(fd, frame.as_ptr().cast(), frame.len()) };
        common::hang();
    }
    x
}
buckshot::register!(garbage_at_two);

fn always_panics(x: u64) -> u64 {
    panic!("no luck with {x}")
}
buckshot::register!(always_panics);

#[derive(Debug, Serialize, Deserialize)]
struct Scaled {
    x: u64,
    scaled: u64,
    note: String,
}

/// Panics while the file `marker` exists; reads a context.
fn scale_unless_marked(factor: &u64, (x, marker): (u64, String)) -> Scaled {
    if Path::new(&marker).exists() {
        panic!("marked: {marker}");
    }
    Scaled {
        x,
        scaled: x * factor,
        note: "done\n".to_owned(),
    }
}
buckshot::register!(scale_unless_marked);

fn replay_command(file: &Path) -> Command {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .env("BUCKSHOT_REPLAY", file)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Replays `file` to its end, within [`common::BOUND`].
fn replay(file: &Path) -> Output {
    let child = replay_command(file).spawn().unwrap();
    common::within("a replay", move || child.wait_with_output().unwrap())
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// What a replay must never do: run `main` (here, the test harness).
fn assert_main_did_not_run(output: &Output) {
    let stdout = text(&output.stdout);
    assert!(
        !stdout.contains("running") && !stdout.contains("test result"),
        "main ran in the replay: {stdout}"
    );
}

fn kept(error: &Error) -> PathBuf {
    let file = error
        .replay_file()
        .unwrap_or_else(|| panic!("no replay file for {error}"));
    assert!(file.exists(), "{} is not there", file.display());
    assert!(
        error.to_string().contains(&file.display().to_string()),
        "the message names the file: {error}"
    );
    file.to_owned()
}

#[test]
fn a_segfault_is_kept_and_replays_as_a_segfault() {
    let dir = common::TempDir::new("replay-segfault");
    let pool = Pool::builder()
        .processes(2)
        .keep_failures(&dir.0)
        .build()
        .unwrap();
    let results: Vec<_> = pool.map(segfault_at_three, 0..8u64).unwrap().collect();
    let mut files = Vec::new();
    for (x, result) in results.into_iter().enumerate() {
        match result {
            Err(error @ Error::WorkerDied { index: 3, .. }) => files.push(kept(&error)),
            Ok(y) => assert_eq!(y, x as u64),
            other => panic!("input {x}: {other:?}"),
        }
    }
    assert_eq!(dir.files(), files, "one file, for the failure alone");
    let output = replay(&files[0]);
    assert_eq!(
        output.status.signal(),
        Some(libc::SIGSEGV),
        "{:?}: {}",
        output.status,
        text(&output.stderr)
    );
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("replaying input 3 of `replay::segfault_at_three`"),
        "{stderr}"
    );
    assert_main_did_not_run(&output);
}

#[test]
fn a_panic_is_kept_and_replays_as_a_panic() {
    let dir = common::TempDir::new("replay-panic");
    let pool = Pool::builder()
        .processes(2)
        .keep_failures(&dir.0)
        .build()
        .unwrap();
    let results: Vec<_> = pool.map(panic_at_five, 0..40u64).unwrap().collect();
    let error = results[5].as_ref().unwrap_err();
    assert!(
        matches!(error, Error::TaskPanicked { index: 5, message, .. } if message == "input 5 is cursed"),
        "{error:?}"
    );
    for (x, result) in results.iter().enumerate().filter(|(x, _)| *x != 5) {
        assert_eq!(*result.as_ref().unwrap(), x as u64);
    }
    let file = kept(error);
    assert_eq!(dir.files(), std::slice::from_ref(&file));
    let output = replay(&file);
    assert_eq!(output.status.code(), Some(101), "{:?}", output.status);
    let stderr = text(&output.stderr);
    assert!(stderr.contains("input 5 is cursed"), "{stderr}");
    assert!(stderr.contains("tests/replay.rs"), "where: {stderr}");
    assert_main_did_not_run(&output);
}

#[test]
fn a_hang_is_kept_and_replays_as_a_hang() {
    let dir = common::TempDir::new("replay-hang");
    let pool = Pool::builder()
        .processes(2)
        .timeout(Duration::from_millis(300))
        .keep_failures(&dir.0)
        .build()
        .unwrap();
    let results: Vec<_> = pool.map(hang_at_four, 0..6u64).unwrap().collect();
    let error = results[4].as_ref().unwrap_err();
    assert!(error.is_timeout(), "{error:?}");
    let file = kept(error);
    let mut child = replay_command(&file).spawn().unwrap();
    // It must still be running well past the pool's timeout.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(2) {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the replay of a hang ended"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.signal(), Some(libc::SIGKILL));
    assert!(text(&output.stderr).contains("replaying input 4 of `replay::hang_at_four`"));
    assert_main_did_not_run(&output);
}

#[test]
fn a_protocol_error_is_kept() {
    let dir = common::TempDir::new("replay-protocol");
    let pool = Pool::builder()
        .processes(2)
        .keep_failures(&dir.0)
        .build()
        .unwrap();
    let results: Vec<_> = pool.map(garbage_at_two, 0..5u64).unwrap().collect();
    let error = results[2].as_ref().unwrap_err();
    assert!(
        matches!(error, Error::Protocol { index: 2, .. }),
        "{error:?}"
    );
    assert_eq!(dir.files(), [kept(error)]);
    for x in [0, 1, 3, 4] {
        assert_eq!(*results[x].as_ref().unwrap(), x as u64);
    }
}

#[test]
fn an_input_that_now_succeeds_prints_its_output_with_its_context() {
    let dir = common::TempDir::new("replay-succeeds");
    let marker = dir.0.with_extension("marker");
    std::fs::write(&marker, b"").unwrap();
    let pool = Pool::builder()
        .processes(1)
        .keep_failures(&dir.0)
        .build()
        .unwrap();
    let marker_text = marker.to_string_lossy().into_owned();
    let results: Vec<_> = pool
        .with_context(&10u64)
        .map(scale_unless_marked, [(7u64, marker_text)])
        .unwrap()
        .collect();
    let file = kept(results[0].as_ref().unwrap_err());
    std::fs::remove_file(&marker).unwrap();
    let output = replay(&file);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(
        text(&output.stdout),
        "{\"x\": 7, \"scaled\": 70, \"note\": \"done\\n\"}\n"
    );
}

#[test]
fn a_map_keeps_at_most_so_many_files_and_says_so() {
    let dir = common::TempDir::new("replay-bounded");
    let pool = Pool::builder()
        .processes(2)
        .batch_size(3)
        .keep_failures(&dir.0)
        .max_kept_failures(4)
        .build()
        .unwrap();
    let results: Vec<_> = pool.map(always_panics, 0..20u64).unwrap().collect();
    let errors: Vec<&Error> = results.iter().map(|r| r.as_ref().unwrap_err()).collect();
    let with_file = errors.iter().filter(|e| e.replay_file().is_some()).count();
    assert_eq!(with_file, 4);
    assert_eq!(dir.files().len(), 4);
    for error in errors.iter().filter(|e| e.replay_file().is_none()) {
        assert!(
            matches!(error, Error::TaskPanicked { replay: Some(Replay::NotKept(why)), .. } if why.contains("already kept 4")),
            "{error:?}"
        );
        assert!(error.to_string().contains("no replay file"), "{error}");
    }
    // The bound is per map.
    let results: Vec<_> = pool.map(always_panics, 0..2u64).unwrap().collect();
    assert!(
        results
            .iter()
            .all(|r| r.as_ref().unwrap_err().replay_file().is_some())
    );
}

#[test]
fn a_file_from_another_program_is_refused() {
    let dir = common::TempDir::new("replay-foreign");
    let pool = Pool::builder()
        .processes(1)
        .keep_failures(&dir.0)
        .build()
        .unwrap();
    let results: Vec<_> = pool.map(panic_at_five, [5u64]).unwrap().collect();
    let file = kept(results[0].as_ref().unwrap_err());
    // Another program: same task name, another task table.
    let bytes = std::fs::read(&file).unwrap();
    let mut value: ciborium::Value = ciborium::de::from_reader(bytes.as_slice()).unwrap();
    for (key, field) in value.as_map_mut().unwrap() {
        if key.as_text() == Some("registry") {
            *field = ciborium::Value::Integer(12345.into());
        }
    }
    let foreign = dir.0.join("foreign.replay");
    let mut out = Vec::new();
    ciborium::ser::into_writer(&value, &mut out).unwrap();
    std::fs::write(&foreign, out).unwrap();
    let output = replay(&foreign);
    assert_eq!(output.status.code(), Some(2));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("kept by another program"), "{stderr}");
    assert_main_did_not_run(&output);
    // And a file that is no replay file at all.
    let garbage = dir.0.join("garbage.replay");
    std::fs::write(&garbage, b"not cbor").unwrap();
    let output = replay(&garbage);
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output.stderr).contains("not a replay file"));
}

#[test]
fn nothing_is_kept_without_keep_failures() {
    let pool = Pool::builder().processes(1).build().unwrap();
    let results: Vec<_> = pool.map(panic_at_five, [5u64]).unwrap().collect();
    let error = results[0].as_ref().unwrap_err();
    assert!(
        matches!(error, Error::TaskPanicked { replay: None, .. }),
        "{error:?}"
    );
    assert_eq!(error.replay_file(), None);
}
