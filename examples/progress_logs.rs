//! A progress bar with logs: workers' stderr lines and `tracing` events
//! print above the bar instead of tearing it apart. (`bar.suspend` prints
//! them also when the bar is hidden, stderr not being a terminal, where
//! `bar.println` would drop them.)
//!
//! Run with `cargo run --example progress_logs`.

use std::io::Write;

use buckshot::{Error, Pool};
use indicatif::{ProgressBar, ProgressIterator};

fn thumbnail(image: u64) -> u64 {
    std::thread::sleep(std::time::Duration::from_millis(10));
    if image % 50 == 0 {
        eprintln!("image {image}: corrupt header, left blank");
    } else if image % 70 == 0 {
        tracing::warn!(image, "huge image, scaled in two steps");
    }
    image % 97 + 32
}
buckshot::register!(thumbnail);

/// Writes each formatted event above the bar.
#[derive(Clone)]
struct AboveBar(ProgressBar);

impl Write for AboveBar {
    fn write(&mut self, text: &[u8]) -> std::io::Result<usize> {
        self.0.suspend(|| std::io::stderr().write_all(text))?;
        Ok(text.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn main() -> Result<(), Error> {
    let bar = ProgressBar::new(300);
    let above = AboveBar(bar.clone());
    tracing_subscriber::fmt()
        .with_writer(move || above.clone())
        .with_ansi(false)
        .init();
    let lines = bar.clone();
    let pool = Pool::builder()
        .on_worker_stderr(move |line| lines.suspend(|| eprintln!("{line}")))
        .build()?;
    let sizes: Vec<u64> = pool
        .map(thumbnail, 1..=300)?
        .progress_with(bar.clone())
        .collect::<Result<_, Error>>()?;
    bar.finish_and_clear();
    println!(
        "{} thumbnails, the widest {} pixels",
        sizes.len(),
        sizes.iter().max().unwrap()
    );
    Ok(())
}
