//! Replay files: an input that fails in a worker is kept, and the same
//! program started with `BUCKSHOT_REPLAY=<file>` runs it again, alone, in
//! the foreground, before `main`, and fails the same way. The replays here
//! are this test binary itself: were `main` (the test harness) to run, it
//! would print its test list.
//!
//! Its tasks fail on purpose, loudly: its pools forward none of their
//! workers' stderr (what a failure says is in its error and its file).

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
    // Four inputs a frame: the culprit is found among them, and kept alone.
    let pool = Pool::builder()
        .forward_stderr(false)
        .processes(2)
        .batch_size(4)
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
    // Four inputs a frame: the file holds the input that panicked, not
    // the first of its frame.
    let pool = Pool::builder()
        .forward_stderr(false)
        .processes(2)
        .batch_size(4)
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
    assert!(
        stderr.contains("replaying input 5 of `replay::panic_at_five`"),
        "{stderr}"
    );
    assert!(
        stderr.contains("the task panicked: input 5 is cursed"),
        "{stderr}"
    );
    assert!(stderr.contains("tests/replay.rs"), "where: {stderr}");
    assert_main_did_not_run(&output);
}

#[test]
fn a_hang_is_kept_alone_and_replays_until_the_timeout() {
    let dir = common::TempDir::new("replay-hang");
    let timeout = Duration::from_millis(300);
    let pool = Pool::builder()
        .forward_stderr(false)
        .processes(2)
        .batch_size(3)
        .timeout(timeout)
        .keep_failures(&dir.0)
        .build()
        .unwrap();
    let results: Vec<_> = pool.map(hang_at_four, 0..9u64).unwrap().collect();
    let error = results[4].as_ref().unwrap_err();
    assert!(error.is_timeout(), "{error:?}");
    for (x, result) in results.iter().enumerate().filter(|(x, _)| *x != 4) {
        assert_eq!(*result.as_ref().unwrap(), x as u64);
    }
    let file = kept(error);
    assert_eq!(dir.files(), std::slice::from_ref(&file));
    let started = Instant::now();
    let output = replay(&file);
    assert!(started.elapsed() >= timeout);
    assert_eq!(output.status.code(), Some(124), "{:?}", output.status);
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("replaying input 4 of `replay::hang_at_four`"),
        "{stderr}"
    );
    assert!(
        stderr.contains("past its pool's timeout of 300ms"),
        "{stderr}"
    );
    assert_main_did_not_run(&output);
}

#[test]
fn a_protocol_error_is_kept() {
    let dir = common::TempDir::new("replay-protocol");
    let pool = Pool::builder()
        .forward_stderr(false)
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
        .forward_stderr(false)
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
        .forward_stderr(false)
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
        .forward_stderr(false)
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
    let pool = Pool::builder()
        .forward_stderr(false)
        .processes(1)
        .build()
        .unwrap();
    let results: Vec<_> = pool.map(panic_at_five, [5u64]).unwrap().collect();
    let error = results[0].as_ref().unwrap_err();
    assert!(
        matches!(error, Error::TaskPanicked { replay: None, .. }),
        "{error:?}"
    );
    assert_eq!(error.replay_file(), None);
}

fn panics_on_text(text: String) -> usize {
    panic!("no luck with {} bytes", text.len())
}
buckshot::register!(panics_on_text);

/// Whether `file` is a whole replay file of an input of `bytes` bytes or
/// more.
fn whole(file: &Path, bytes: usize) -> bool {
    let Ok(content) = std::fs::read(file) else {
        return false;
    };
    let Ok(value) = ciborium::de::from_reader::<ciborium::Value, _>(content.as_slice()) else {
        return false;
    };
    value.as_map().is_some_and(|entries| {
        entries.iter().any(|(key, value)| {
            key.as_text() == Some("input") && value.as_bytes().is_some_and(|b| b.len() >= bytes)
        })
    })
}

#[test]
fn a_full_disk_leaves_whole_files_only_and_its_map_stops_writing() {
    let Some(fs) = common::TmpFs::mount("replay-full", 256 << 10) else {
        return;
    };
    let pool = Pool::builder()
        .forward_stderr(false)
        .processes(2)
        .keep_failures(&fs.0)
        .build()
        .unwrap();
    // Each file holds its 16 KiB input: a dozen or so fit.
    let bytes = 16 << 10;
    let inputs = |n: usize| (0..n).map(move |k| format!("{k:05}{}", "x".repeat(bytes)));
    let errors: Vec<Error> = pool
        .map(panics_on_text, inputs(300))
        .unwrap()
        .map(Result::unwrap_err)
        .collect();
    let files = fs.files();
    let mut with_file: Vec<&Path> = errors.iter().filter_map(Error::replay_file).collect();
    with_file.sort();
    assert!(
        !with_file.is_empty() && with_file.len() < 100,
        "{}",
        with_file.len()
    );
    assert_eq!(
        files, with_file,
        "every file there is an error's, and whole"
    );
    for file in &files {
        assert!(whole(file, bytes), "{} is cut short", file.display());
    }
    // One input found the disk full; those after it were not tried.
    let why: Vec<String> = errors
        .iter()
        .filter(|e| e.replay_file().is_none())
        .map(|e| match e {
            Error::TaskPanicked {
                replay: Some(Replay::NotKept(why)),
                ..
            } => why.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(why.len(), 300 - files.len());
    assert!(
        why.iter()
            .take_while(|why| !why.contains("is full"))
            .all(|why| why.starts_with("could not write it: No space left on device")),
        "{why:?}"
    );
    let full = format!(
        "{} is full (No space left on device (os error 28)): its map writes no more replay files",
        fs.0.display()
    );
    assert_eq!(
        why.iter().filter(|why| **why == full).count(),
        why.len() - 1,
        "{why:?}"
    );
    // A kept file replays.
    let output = replay(&files[0]);
    assert_eq!(output.status.code(), Some(101));
    // With room again, another map keeps its failures.
    for file in &files {
        std::fs::remove_file(file).unwrap();
    }
    let again: Vec<Error> = pool
        .map(panics_on_text, inputs(3))
        .unwrap()
        .map(Result::unwrap_err)
        .collect();
    assert!(again.iter().all(|e| e.replay_file().is_some()), "{again:?}");
    assert_eq!(fs.files().len(), 3);
}

#[test]
fn a_kept_file_never_replaces_another() {
    never_replaces("replay-names");
}

fn never_replaces(dir_name: &str) {
    let dir = common::TempDir::new(dir_name);
    // Files under the names the pool would pick first, final and
    // temporary: it must write past them, and leave them as they are.
    // Names hold the input's index in its map (0 here, for input 5).
    let pid = std::process::id();
    let mut planted = Vec::new();
    for n in 0..4000 {
        let name = format!("panic_at_five-0-{pid}-{n}.replay");
        let path = match n % 2 {
            0 => dir.0.join(&name),
            _ => dir.0.join(format!(".{name}.tmp")),
        };
        std::fs::write(&path, format!("planted {n}")).unwrap();
        planted.push(path);
    }
    let pool = Pool::builder()
        .forward_stderr(false)
        .processes(1)
        .keep_failures(&dir.0)
        .build()
        .unwrap();
    let results: Vec<_> = pool.map(panic_at_five, 5..6u64).unwrap().collect();
    let file = kept(results[0].as_ref().unwrap_err());
    assert!(!planted.contains(&file), "{}", file.display());
    assert!(whole(&file, 1));
    for (n, path) in planted.iter().enumerate() {
        assert_eq!(
            std::fs::read_to_string(path).unwrap(),
            format!("planted {n}")
        );
    }
    assert_eq!(dir.files().len(), planted.len() + 1);
}

/// A directory that cannot take the file (gone since the pool was built):
/// the input fails at once, and says why no file was kept.
#[test]
fn a_file_that_cannot_be_written_is_not_kept_and_says_why() {
    let dir = common::TempDir::new("replay-gone");
    let pool = Pool::builder()
        .forward_stderr(false)
        .processes(1)
        .keep_failures(&dir.0)
        .build()
        .unwrap();
    std::fs::remove_dir(&dir.0).unwrap();
    let results = common::within("a failure whose file cannot be written", move || {
        pool.map(panic_at_five, 4..7u64)
            .unwrap()
            .collect::<Vec<_>>()
    });
    assert_eq!(results[0].as_ref().ok(), Some(&4));
    assert_eq!(results[2].as_ref().ok(), Some(&6));
    match &results[1] {
        Err(Error::TaskPanicked {
            replay: Some(Replay::NotKept(why)),
            ..
        }) => assert!(
            why.starts_with("could not write it: No such file or directory"),
            "{why}"
        ),
        other => panic!("{other:?}"),
    }
    assert!(!dir.0.exists());
}

/// Set in the copy of this binary that runs on a file system that cannot
/// refuse to replace a file on rename.
const NO_NOREPLACE_ENV: &str = "BUCKSHOT_TEST_NO_RENAME_NOREPLACE";

/// Some file systems do not support `renameat2`'s `RENAME_NOREPLACE`
/// (`EINVAL`): a kept file still never replaces another. A copy of this
/// binary runs the case above under a seccomp filter that fails such
/// renames so.
#[test]
fn without_rename_noreplace_a_kept_file_never_replaces_another() {
    let name = "without_rename_noreplace_a_kept_file_never_replaces_another";
    if std::env::var_os(NO_NOREPLACE_ENV).is_some() {
        use seccompiler::{SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule};
        let noreplace = libc::RENAME_NOREPLACE as u64;
        let flags = SeccompCondition::new(
            4,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::MaskedEq(noreplace),
            noreplace,
        )
        .unwrap();
        let renameat2 = [(
            libc::SYS_renameat2,
            vec![SeccompRule::new(vec![flags]).unwrap()],
        )]
        .into_iter()
        .collect();
        if let Err(e) = common::fail_syscalls(renameat2, libc::EINVAL) {
            common::skip("seccomp", &format!("no seccomp filter here: {e}"));
            return;
        }
        never_replaces("replay-names-no-noreplace");
        return;
    }
    let output = common::within(name, move || {
        Command::new(std::env::current_exe().unwrap())
            .args([name, "--exact", "--nocapture", "--test-threads=1"])
            .env(NO_NOREPLACE_ENV, "1")
            .output()
            .unwrap()
    });
    let stdout = text(&output.stdout);
    let stderr = text(&output.stderr);
    for skipped in stderr.lines().filter(|line| line.starts_with("SKIPPED")) {
        eprintln!("{skipped}");
    }
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "{}\n{stdout}\n{stderr}",
        output.status
    );
}

/// Says which input it runs on stderr; 0 panics, 1 segfaults.
fn says_then_fails(x: u64) -> u64 {
    eprintln!("running input {x}");
    match x {
        0 => panic!("zero is cursed"),
        1 => {
            // SAFETY: raising a signal has no memory-safety preconditions.
            unsafe { libc::raise(libc::SIGSEGV) };
            x
        }
        x => x,
    }
}
buckshot::register!(says_then_fails);

/// A reply that only holds a kept panic still counts as an answer: the
/// worker's stderr is cut there, so the next input's failure carries its
/// own words, not the panicking one's.
#[test]
fn a_kept_panic_ends_its_inputs_stderr() {
    let dir = common::TempDir::new("replay-stderr-mark");
    let pool = Pool::builder()
        .forward_stderr(false)
        .processes(1)
        .batch_size(1)
        .keep_failures(&dir.0)
        .build()
        .unwrap();
    let results: Vec<_> = pool.map(says_then_fails, [0u64, 1, 2]).unwrap().collect();
    assert!(matches!(&results[0], Err(Error::TaskPanicked { .. })));
    let Err(Error::WorkerDied { stderr, .. }) = &results[1] else {
        panic!("{:?}", results[1]);
    };
    assert!(stderr.contains("running input 1"), "{stderr}");
    assert!(!stderr.contains("running input 0"), "{stderr}");
    assert_eq!(results[2].as_ref().ok(), Some(&2));
}
