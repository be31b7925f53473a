//! A privileged copy of a program (setuid root here) must not serve tasks to
//! whoever starts it with the worker variable: the caller would run
//! registered code with privileges it does not have. And a privileged
//! program that builds a pool is told at once that its workers would
//! refuse; nor does such a copy replay a kept input, probe a sandbox or
//! exec a launcher's program: it refuses every hidden mode. Needs root to
//! make the setuid copy, and setpriv; skipped with a message otherwise.

mod common;

use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A task that would read what only root may read.
fn read_shadow(_: u64) -> usize {
    std::fs::read("/etc/shadow").map_or(0, |bytes| bytes.len())
}
buckshot::register!(read_shadow);

/// The uid and gid of `nobody`.
const NOBODY: &str = "65534";

/// A copy of this test binary in a fresh directory that `nobody` can reach,
/// owned by root with `mode`.
fn copy_of_this_binary(dir: &Path, name: &str, mode: u32) -> PathBuf {
    let path = dir.join(name);
    std::fs::copy(std::env::current_exe().unwrap(), &path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o7777, mode);
    path
}

/// Starts `program` as `nobody` with the worker variable set, as a pool of
/// this process would (this process as the expected parent), and returns
/// what it wrote to its reply stream and its stderr. Its requests close
/// once its first frame came (or its reply stream ended): a worker ends
/// when they close, and may before its handshake.
fn start_as_nobody_with_the_worker_variable(program: &Path) -> (Vec<u8>, String) {
    let mut child = Command::new("setpriv")
        .args([
            &format!("--reuid={NOBODY}"),
            &format!("--regid={NOBODY}"),
            "--clear-groups",
        ])
        .arg(program)
        .env(
            "__BUCKSHOT_WORKER",
            format!("{},1073741824,,0,0,,,", std::process::id()),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start setpriv");
    let requests = child.stdin.take();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    common::within("the started copy", move || {
        let mut replies = Vec::new();
        let mut len = [0u8; 4];
        if stdout.read_exact(&mut len).is_ok() {
            replies.extend_from_slice(&len);
            let mut frame = vec![0; u32::from_le_bytes(len) as usize];
            stdout.read_exact(&mut frame).unwrap();
            replies.extend_from_slice(&frame);
        }
        drop(requests);
        stdout.read_to_end(&mut replies).unwrap();
        let mut text = String::new();
        stderr.read_to_string(&mut text).unwrap();
        child.wait().unwrap();
        (replies, text)
    })
}

/// Set in the setuid copy started by the test below: there, this test
/// builds a pool and prints the outcome.
const BUILD_ENV: &str = "BUCKSHOT_TEST_BUILD_WHEN_PRIVILEGED";

#[test]
fn building_a_pool_when_privileged() {
    if std::env::var_os(BUILD_ENV).is_none() {
        return; // Only meaningful in the setuid copy.
    }
    match buckshot::Pool::new(1) {
        Ok(_) => println!("RESULT: a pool was built"),
        Err(e @ buckshot::Error::Privileged) => println!("RESULT: Privileged: {e}"),
        Err(e) => println!("RESULT: {e:?}"),
    }
}

/// A directory that `nobody` can enter, on a file system that honours the
/// setuid bit; `None` if there is none.
fn shared_dir() -> Option<PathBuf> {
    let dir = std::env::temp_dir().join(format!("buckshot-privilege-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let stat = rustix::fs::statvfs(&dir).unwrap();
    if stat.f_flag.contains(rustix::fs::StatVfsMountFlags::NOSUID) {
        let _ = std::fs::remove_dir_all(&dir);
        return None;
    }
    Some(dir)
}

#[test]
fn a_setuid_copy_refuses_to_serve_tasks() {
    if !rustix::process::geteuid().is_root() {
        common::skip("root", "making a setuid-root copy needs root");
        return;
    }
    if Command::new("setpriv").arg("--version").output().is_err() {
        common::skip("setpriv", "setpriv (util-linux) is not installed");
        return;
    }
    let Some(dir) = shared_dir() else {
        common::skip(
            "suid-tmp",
            "the temporary directory is on a nosuid file system",
        );
        return;
    };
    let plain = copy_of_this_binary(&dir, "plain", 0o755);
    let setuid = copy_of_this_binary(&dir, "setuid", 0o4755);

    // The control: the same binary without the setuid bit, started the same
    // way, does serve (it says hello), so the refusal below is not an
    // accident of how it was started.
    let (replies, stderr) = start_as_nobody_with_the_worker_variable(&plain);
    assert!(
        replies.len() > 5 && replies[4] == 1,
        "the plain copy did not say hello: {replies:?}, stderr: {stderr}"
    );

    let (replies, stderr) = start_as_nobody_with_the_worker_variable(&setuid);
    assert_eq!(
        replies, b"",
        "the setuid copy served as a worker; stderr: {stderr}"
    );
    assert!(
        stderr.contains("refusing to serve as a worker in a privileged process"),
        "{stderr}"
    );

    // Nor does it replay a kept input (which runs a task the same way).
    let kept = dir.join("kept.replay");
    std::fs::write(&kept, b"not a replay file").unwrap();
    let as_nobody = |program: &Path, var: &str, value: &std::ffi::OsStr| {
        let output = Command::new("setpriv")
            .args([
                &format!("--reuid={NOBODY}"),
                &format!("--regid={NOBODY}"),
                "--clear-groups",
            ])
            .arg(program)
            .env(var, value)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let replay_as_nobody = |program: &Path| {
        let (code, _, stderr) = as_nobody(program, "BUCKSHOT_REPLAY", kept.as_os_str());
        (code, stderr)
    };
    // The control reads the file (and finds it is none).
    let (code, stderr) = replay_as_nobody(&plain);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("not a replay file"), "{stderr}");
    let (code, stderr) = replay_as_nobody(&setuid);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("refusing to replay in a privileged process"),
        "{stderr}"
    );

    // Nor does it run a launcher's program for whoever asks (each word of
    // the command line in hex), or probe a sandbox.
    let hex = |word: &str| -> String { word.bytes().map(|b| format!("{b:02x}")).collect() };
    let echo = std::ffi::OsString::from(format!("{},{}", hex("/bin/echo"), hex("ran")));
    let (code, stdout, stderr) = as_nobody(&plain, "__BUCKSHOT_EXEC", &echo);
    assert_eq!((code, stdout.as_str()), (Some(0), "ran\n"), "{stderr}");
    let (code, stdout, stderr) = as_nobody(&setuid, "__BUCKSHOT_EXEC", &echo);
    assert_eq!((code, stdout.as_str()), (Some(127), ""), "{stderr}");
    assert!(
        stderr.contains("refusing to run __BUCKSHOT_EXEC in a privileged process"),
        "{stderr}"
    );
    let probe = std::ffi::OsStr::new("1");
    let (code, _, stderr) = as_nobody(&plain, "__BUCKSHOT_SANDBOX_PROBE", probe);
    assert_eq!(code, Some(101), "{stderr}");
    assert!(stderr.contains("bad __BUCKSHOT_SANDBOX value"), "{stderr}");
    let (code, _, stderr) = as_nobody(&setuid, "__BUCKSHOT_SANDBOX_PROBE", probe);
    assert_eq!(code, Some(101), "{stderr}");
    assert!(
        stderr.contains("refusing to probe a sandbox in a privileged process"),
        "{stderr}"
    );

    // The same copy, as a program that builds a pool.
    let output = Command::new("setpriv")
        .args([
            &format!("--reuid={NOBODY}"),
            &format!("--regid={NOBODY}"),
            "--clear-groups",
        ])
        .arg(&setuid)
        .args(["--exact", "building_a_pool_when_privileged", "--nocapture"])
        .env(BUILD_ENV, "1")
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains(
            "RESULT: Privileged: this program runs with privileges \
             (setuid, setgid or file capabilities), and its copies refuse to serve as workers"
        ),
        "{stdout}"
    );
}
