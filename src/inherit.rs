//! What a process started by a pool inherits from the program: its stdio,
//! and no other descriptor.
//!
//! `std::process::Command` passes every descriptor that lacks
//! close-on-exec to the child: a listening socket or a client connection
//! of the program (socket activation, C libraries, `exec 3>file` in a
//! wrapper script), or a file opened outside a sandbox's paths. A task
//! could accept the program's clients, write on its connections, or read
//! and write the file past Landlock, which checks paths at `open` only.
//!
//! - A worker, and a sandbox probe, close every descriptor but their
//!   protocol ones first thing in the hook, before any task runs
//!   ([`close_all_but`]). Local workers are still spawned by
//!   `posix_spawn` (std's `Command`): asking std to close them in the
//!   child (`pre_exec`) makes it fork instead, which was measured at
//!   72-80 ms per spawn from a program with 1 GiB resident, against
//!   1.3-1.5 ms, and cost that program 470 ms of page faults afterwards.
//!   Until the hook runs, only the program's own constructors run in the
//!   new process.
//! - A launcher's program (`ssh`, `srun`, a command prefix) is not ours and
//!   would keep them open as long as it runs: it is started through this
//!   binary ([`through_this_binary`]), which closes them and execs it
//!   ([`exec`]). That costs one more exec of this binary per
//!   remote worker start, about a millisecond, still without a fork.

use std::ffi::{CString, OsStr, OsString};
use std::os::fd::RawFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::CommandExt;
use std::process::Command;

/// Marks a process that only closes its inherited descriptors and execs
/// another program; its value is that program's command line, each word
/// in hex, separated by commas.
pub(crate) const EXEC_ENV: &str = "__BUCKSHOT_EXEC";

/// Exit code of a process that could not exec the program it was asked
/// to, as a shell's for a command it cannot run.
pub(crate) const EXIT_FAILED: i32 = 127;

/// Closes every descriptor of this process above stderr but those in
/// `keep`. Call it while nothing else of the process holds descriptors it
/// needs (before `main`, single-threaded).
pub(crate) fn close_all_but(keep: &[RawFd]) -> std::io::Result<()> {
    let mut keep: Vec<u32> = keep
        .iter()
        .filter_map(|&fd| u32::try_from(fd).ok())
        .collect();
    keep.sort_unstable();
    let mut first = 3;
    for fd in keep.into_iter().chain([u32::MAX]) {
        if fd > first {
            crate::sys::close_range(first, fd - 1)?;
        }
        first = first.max(fd.saturating_add(1));
    }
    Ok(())
}

/// The same command, started through this binary, which closes every
/// descriptor above stderr and then execs it. For a launcher's command:
/// like every launcher's command, it leads a process group of its own.
/// Not from a privileged process (setuid, file capabilities): its copy
/// would refuse, so the command is started as it is.
///
/// The program is looked up here, as `Command::spawn` would: one that is
/// not there (or not executable) is the spawn's error, not a start-up
/// failure of the copy's.
pub(crate) fn through_this_binary(command: Command) -> std::io::Result<Command> {
    if crate::sys::is_privileged() {
        return Ok(command);
    }
    let program = find_program(&command)?;
    let words = std::iter::once(program.as_os_str()).chain(command.get_args());
    let mut through = Command::new(crate::sys::exe_path());
    through.env(EXEC_ENV, encode(words)).process_group(0);
    for (key, value) in command.get_envs() {
        match value {
            Some(value) => through.env(key, value),
            None => through.env_remove(key),
        };
    }
    if let Some(dir) = command.get_current_dir() {
        through.current_dir(dir);
    }
    Ok(through)
}

/// The path `command`'s program runs from: as given if it holds a `/`,
/// else the first executable file of that name in the `PATH` the command
/// will see, as `execvp` searches it. The errors are those of `execvp`.
fn find_program(command: &Command) -> std::io::Result<std::path::PathBuf> {
    use std::path::{Path, PathBuf};
    let program = command.get_program();
    let check = |path: &Path| -> std::io::Result<()> {
        let path = match command.get_current_dir() {
            Some(dir) => dir.join(path),
            None => path.to_owned(),
        };
        rustix::fs::access(&path, rustix::fs::Access::EXEC_OK)?;
        match path.is_file() {
            true => Ok(()),
            false => Err(std::io::Error::from_raw_os_error(libc::EACCES)),
        }
    };
    if program.as_bytes().contains(&b'/') {
        let path = PathBuf::from(program);
        return check(&path).map(|()| path);
    }
    let path = command
        .get_envs()
        .find(|(key, _)| *key == "PATH")
        .map(|(_, value)| value.map(OsStr::to_owned))
        .unwrap_or_else(|| std::env::var_os("PATH"))
        .unwrap_or_else(|| "/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_absolute() && check(candidate).is_ok())
        .ok_or_else(|| std::io::Error::from_raw_os_error(libc::ENOENT))
}

fn encode<'a>(words: impl Iterator<Item = &'a OsStr>) -> String {
    let hex: Vec<String> = words
        .map(|word| word.as_bytes().iter().map(|b| format!("{b:02x}")).collect())
        .collect();
    hex.join(",")
}

fn decode(value: &str) -> Option<Vec<OsString>> {
    value
        .split(',')
        .map(|word| {
            if word.len() % 2 != 0 {
                return None;
            }
            let bytes = (0..word.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(word.get(i..i + 2)?, 16).ok())
                .collect::<Option<Vec<u8>>>()?;
            Some(OsString::from_vec(bytes))
        })
        .collect::<Option<Vec<_>>>()
        .filter(|words| !words[0].is_empty())
}

/// Closes every descriptor above stderr and execs the program `value`
/// names (see [`through_this_binary`]); exits if it cannot. Called before
/// `main` ([`crate::entry`]).
pub(crate) fn exec(value: OsString) -> ! {
    let fail = |message: String| -> ! {
        eprintln!("buckshot: {message}");
        std::process::exit(EXIT_FAILED)
    };
    // SAFETY: this runs in a constructor before `main`, where nothing else
    // reads the environment (see `worker::serve_from`).
    unsafe { std::env::remove_var(EXEC_ENV) };
    let Some(words) = value.to_str().and_then(decode) else {
        fail(format!("bad {EXEC_ENV} value {value:?}"));
    };
    if let Err(e) = close_all_but(&[]) {
        fail(format!("could not close inherited descriptors: {e}"));
    }
    let words: Vec<CString> = match words
        .iter()
        .map(|word| CString::new(word.as_bytes()))
        .collect()
    {
        Ok(words) => words,
        Err(_) => fail(format!("a word of {words:?} holds a NUL byte")),
    };
    let mut argv: Vec<*const libc::c_char> = words.iter().map(|word| word.as_ptr()).collect();
    argv.push(std::ptr::null());
    // SAFETY: `argv` is a NULL-terminated array of NUL-terminated strings
    // that outlive the call; execvp returns only on failure.
    unsafe { libc::execvp(argv[0], argv.as_ptr()) };
    fail(format!(
        "could not start {:?}: {}",
        words[0],
        std::io::Error::last_os_error()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines_round_trip_with_odd_bytes() {
        let words = [
            OsString::from("ssh"),
            OsString::from_vec(b"a,b \xff".to_vec()),
            OsString::new(),
        ];
        let encoded = encode(words.iter().map(OsString::as_os_str));
        assert_eq!(decode(&encoded).unwrap(), words);
        for bad in ["", "7", "zz", "73,7", ",73"] {
            assert_eq!(decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_wrapped_command_keeps_its_environment_and_directory() {
        let mut command = Command::new("sh");
        command
            .arg("host")
            .env("KEPT", "1")
            .env_remove("GONE")
            .current_dir("/tmp");
        let through = through_this_binary(command).unwrap();
        assert_eq!(through.get_program(), crate::sys::exe_path());
        let envs: Vec<_> = through.get_envs().collect();
        assert!(envs.contains(&(OsStr::new("KEPT"), Some(OsStr::new("1")))));
        assert!(envs.contains(&(OsStr::new("GONE"), None)));
        let exec = envs
            .iter()
            .find(|(key, _)| *key == EXEC_ENV)
            .and_then(|(_, value)| value.as_ref())
            .unwrap();
        let words = decode(exec.to_str().unwrap()).unwrap();
        assert!(
            words[0].as_bytes().starts_with(b"/") && words[0].as_bytes().ends_with(b"/sh"),
            "{words:?}"
        );
        assert_eq!(words[1..], [OsString::from("host")]);
        assert_eq!(
            through.get_current_dir(),
            Some(std::path::Path::new("/tmp"))
        );
    }

    #[test]
    fn a_program_that_is_not_there_is_the_spawns_error() {
        let missing = |command: Command| {
            through_this_binary(command)
                .err()
                .and_then(|e| e.raw_os_error())
        };
        let mut empty_path = Command::new("sh");
        empty_path.env("PATH", "/nonexistent");
        assert_eq!(missing(empty_path), Some(libc::ENOENT));
        assert_eq!(
            missing(Command::new("/nonexistent/program")),
            Some(libc::ENOENT)
        );
        // A file that is not executable, and a directory.
        assert_eq!(missing(Command::new("/proc/self/stat")), Some(libc::EACCES));
        assert_eq!(missing(Command::new("/")), Some(libc::EACCES));
        let mut relative = Command::new("./sh");
        relative.current_dir("/bin");
        assert!(through_this_binary(relative).is_ok());
    }
}
