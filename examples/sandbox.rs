//! A sandboxed pool: a task fed untrusted input cannot reach the network,
//! read files outside the allowed ones, start programs, or spin forever.
//!
//! Run with `cargo run --example sandbox`.

use std::fs;
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use buckshot::{Error, Pool, Sandbox};

/// What an exploited parser might try: read a secret, phone home, run a shell.
fn mischief(_input: String) -> Vec<String> {
    vec![
        format!(
            "read /etc/hostname: {:?}",
            fs::read("/etc/hostname").map(drop)
        ),
        format!(
            "connect: {:?}",
            TcpStream::connect("127.0.0.1:22").map(drop)
        ),
        format!("run sh: {:?}", Command::new("sh").status().map(drop)),
    ]
}
buckshot::register!(mischief);

fn main() -> Result<(), Error> {
    let pool = Pool::builder()
        .processes(2)
        .sandbox(
            Sandbox::new()
                .no_network()
                .read_only("/usr")
                .cpu_time(Duration::from_secs(10))
                .no_subprocesses()
                .best_effort(), // where the kernel lacks a feature, go on without it
        )
        .build()?;
    println!("rules in force: {:?}", pool.sandbox_rules());
    for line in pool.call(mischief, "untrusted input".to_owned())? {
        println!("{line}");
    }
    Ok(())
}
