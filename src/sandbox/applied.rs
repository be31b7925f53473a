//! What came of applying a sandbox, and how a probe says it: the same on
//! every platform, whether the rules can come up there or not.

use std::fs::File;
use std::io::Write;

use super::{Rules, SandboxRule};

/// What came of applying a sandbox.
#[derive(Debug, Default)]
pub(crate) struct Applied {
    pub in_force: Rules,
    /// The rules that did not come up, and why.
    pub problems: Vec<(SandboxRule, String)>,
    /// Rules in force with less than they promise, and what they lack.
    pub warnings: Vec<(SandboxRule, String)>,
    /// With `cpu_time`: the worker's thread directory, for [`super::cpu::Guard`].
    pub tasks: Option<File>,
}

/// For a probe: prints what came up, one line of the rules in force, then
/// a line per rule that did not, `bit<TAB>why`, and a line per warning,
/// `w<bit><TAB>why`.
pub(crate) fn report(applied: &Applied, out: &mut impl Write) -> std::io::Result<()> {
    writeln!(out, "{}", applied.in_force.0)?;
    for (rule, why) in &applied.problems {
        writeln!(out, "{}\t{}", rule.bit(), why.replace('\n', " "))?;
    }
    for (rule, why) in &applied.warnings {
        writeln!(out, "w{}\t{}", rule.bit(), why.replace('\n', " "))?;
    }
    Ok(())
}
