//! Which rules can come up here: found out once, when a pool is built, by
//! a copy of the program that applies them to itself before `main`, says
//! which came up, and exits. It costs about one worker start (a
//! millisecond), and it asks the kernel exactly what the workers will ask
//! (user namespaces may be disabled, Landlock compiled out, seccomp denied
//! by a container, a path missing), which no check from this process,
//! with its threads, could do without changing itself.

use std::io::Write;
use std::process::{Command, Stdio};

use super::{Rules, SANDBOX_ENV, Sandbox, SandboxRule, apply};

/// Marks a probe: a copy that applies [`SANDBOX_ENV`] and reports.
pub(crate) const PROBE_ENV: &str = "__BUCKSHOT_SANDBOX_PROBE";

/// Exit code of a probe that could not say what came up.
pub(crate) const EXIT_FAILED: i32 = 101;

/// What a probe found.
#[derive(Debug)]
pub(crate) struct Found {
    pub in_force: Rules,
    pub problems: Vec<(SandboxRule, String)>,
    /// Rules in force with less than they promise (best effort only).
    pub warnings: Vec<(SandboxRule, String)>,
}

/// Runs a probe of `sandbox`; why not, if it cannot run.
pub(crate) fn run(sandbox: &Sandbox) -> Result<Found, String> {
    let output = Command::new(crate::sys::exe_path())
        .env(PROBE_ENV, "1")
        .env(SANDBOX_ENV, sandbox.to_env())
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("could not start a probe: {e}"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    let parsed = parse(&text).filter(|_| output.status.success());
    parsed.ok_or_else(|| {
        format!(
            "the probe failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )
    })
}

fn parse(text: &str) -> Option<Found> {
    let mut lines = text.lines();
    let in_force = Rules(lines.next()?.parse().ok()?);
    let (mut problems, mut warnings) = (Vec::new(), Vec::new());
    for line in lines {
        let (bit, why) = line.split_once('\t')?;
        let (list, bit) = match bit.strip_prefix('w') {
            Some(bit) => (&mut warnings, bit),
            None => (&mut problems, bit),
        };
        let bit: u8 = bit.parse().ok()?;
        let rule = SandboxRule::ALL.into_iter().find(|r| r.bit() == bit)?;
        list.push((rule, why.to_owned()));
    }
    Some(Found {
        in_force,
        problems,
        warnings,
    })
}

/// Applies the sandbox the environment names, says what came up, and
/// exits. Called before `main` ([`crate::entry`]).
pub(crate) fn answer() -> ! {
    // It runs no task, but applies the rules as a worker would: with what
    // a worker holds.
    if let Err(e) = crate::inherit::close_all_but(&[]) {
        eprintln!("buckshot: could not close inherited descriptors: {e}");
        std::process::exit(EXIT_FAILED);
    }
    let Some(sandbox) = std::env::var(SANDBOX_ENV)
        .ok()
        .and_then(|value| Sandbox::from_env(&value))
    else {
        eprintln!("buckshot: bad {SANDBOX_ENV} value");
        std::process::exit(EXIT_FAILED);
    };
    let applied = apply::apply(&sandbox);
    let mut out = std::io::stdout().lock();
    let code = match apply::report(&applied, &mut out).and_then(|()| out.flush()) {
        Ok(()) => 0,
        Err(_) => EXIT_FAILED,
    };
    drop(out);
    std::process::exit(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_parse_back() {
        let applied = apply::Applied {
            in_force: Rules(5),
            problems: vec![(SandboxRule::Files, "no\nLandlock".to_owned())],
            warnings: vec![(SandboxRule::CpuTime, "short".to_owned())],
            tasks: None,
        };
        let mut text = Vec::new();
        apply::report(&applied, &mut text).unwrap();
        let found = parse(std::str::from_utf8(&text).unwrap()).unwrap();
        assert_eq!(found.in_force, Rules(5));
        assert_eq!(
            found.problems,
            [(SandboxRule::Files, "no Landlock".to_owned())]
        );
        assert_eq!(found.warnings, [(SandboxRule::CpuTime, "short".to_owned())]);
        assert!(parse("").is_none());
        assert!(parse("1\n99\tx").is_none());
        assert!(parse("1\nw99\tx").is_none());
        assert!(parse("1\nx2\tx").is_none());
    }
}
