//! Keeps the input that failed, then runs this program again with
//! `BUCKSHOT_REPLAY` to replay it alone, as you would under a debugger:
//! `BUCKSHOT_REPLAY=<file> gdb target/release/examples/replay`.

use std::process::Command;

use buckshot::Pool;

fn parse(line: String) -> usize {
    line.split(',').nth(2).expect("three fields").len()
}
buckshot::register!(parse);

fn main() -> Result<(), buckshot::Error> {
    let dir = std::env::temp_dir().join(format!("buckshot-replay-example-{}", std::process::id()));
    let pool = Pool::builder().processes(2).keep_failures(&dir).build()?;
    let lines = ["a,b,c", "a,b", "x,y,zz"].map(String::from);
    let mut kept = None;
    for result in pool.map(parse, lines)? {
        match result {
            Ok(len) => println!("third field: {len} bytes"),
            Err(e) => {
                println!("{e}");
                kept = e.replay_file().map(ToOwned::to_owned);
            }
        }
    }
    let file = kept.expect("the failed input was kept");
    // The same program, running only that input, before `main`.
    let replay = Command::new(std::env::current_exe().expect("this program"))
        .env("BUCKSHOT_REPLAY", &file)
        .output()
        .expect("run the replay");
    println!("replay: {}", replay.status);
    print!("{}", String::from_utf8_lossy(&replay.stderr));
    assert_eq!(replay.status.code(), Some(101), "the replay panics again");
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}
