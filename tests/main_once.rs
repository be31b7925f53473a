//! `main` runs in the parent only: workers serve tasks before `main` and
//! exit. Every process that runs `main` appends its pid to a marker file;
//! after a map on a pool, the file must hold the parent's pid alone.

use std::io::Write;

fn pid_of(_: u64) -> u32 {
    std::process::id()
}
buckshot::register!(pid_of);

const MARKER_ENV: &str = "BUCKSHOT_TEST_MAIN_MARKER";

fn main() {
    let me = std::process::id();
    if let Some(marker) = std::env::var_os(MARKER_ENV) {
        // Inherited: we are not the first process to run main. Say so and
        // stop, rather than start pools of our own.
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&marker)
            .expect("open marker");
        writeln!(file, "{me}").expect("write marker");
        std::process::exit(3);
    }
    let marker = std::env::temp_dir().join(format!("buckshot-main-once-{me}"));
    std::fs::write(&marker, format!("{me}\n")).expect("create marker");
    // SAFETY: no other thread exists yet.
    unsafe { std::env::set_var(MARKER_ENV, &marker) };

    let pool = buckshot::Pool::new(2).expect("pool");
    let pids: Vec<u32> = pool
        .map(pid_of, 0..100)
        .expect("map")
        .map(|r| r.expect("result"))
        .collect();
    drop(pool);

    let lines = std::fs::read_to_string(&marker).expect("read marker");
    let _ = std::fs::remove_file(&marker);
    assert_eq!(lines, format!("{me}\n"), "main ran in another process");
    assert!(
        pids.iter().all(|&pid| pid != me),
        "a task ran in the parent"
    );
    println!("test main_runs_once ... ok");
    println!();
    println!("test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out");
}
