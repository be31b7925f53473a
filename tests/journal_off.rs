//! Without the cargo feature `journal`, `PoolBuilder::journal` is still
//! there, and `build` fails with an error that names the feature.
//!
//! This crate's own tests always have the feature (it is its own
//! dev-dependency with it), so the program that checks it belongs to the
//! `testlib` member, which depends on buckshot without it. It is built by
//! cargo in a target directory of its own, kept between runs: about 40 s
//! on a loaded 2-core machine the first time, a few seconds after a change.

mod common;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// For a build from scratch on a loaded machine, while other tests run.
const BUILD_BOUND: Duration = Duration::from_secs(600);

#[test]
fn a_journal_without_its_feature_is_a_config_error_that_names_it() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("journal-off");
    std::fs::create_dir_all(&dir).unwrap();
    let (stdout, stderr) = (dir.join("stdout"), dir.join("stderr"));
    let mut child = Command::new(env!("CARGO"))
        .args([
            "run",
            "--quiet",
            "--frozen",
            "--package",
            "buckshot-testlib",
        ])
        .args(["--example", "journal_without_feature", "--target-dir"])
        .arg(dir.join("target"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout).unwrap())
        .stderr(std::fs::File::create(&stderr).unwrap())
        // Its compilers with it, if it must be killed.
        .process_group(0)
        .spawn()
        .unwrap();
    if !common::exits_within(child.id(), BUILD_BOUND) {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
        let _ = child.wait();
        panic!("cargo did not build and run the program within {BUILD_BOUND:?}");
    }
    let status = child.wait().unwrap();
    let stdout = std::fs::read_to_string(&stdout).unwrap();
    let stderr = std::fs::read_to_string(&stderr).unwrap();
    assert!(status.success(), "{status}\n{stdout}\n{stderr}");
    assert_eq!(
        stdout,
        "build: Config: invalid pool configuration: the journal needs the cargo feature \
         `journal`, which this build of buckshot lacks: add `features = [\"journal\"]` to \
         its dependency\n\
         journal file created: false\n\
         unrecorded: 0\n",
        "{stderr}"
    );
}
