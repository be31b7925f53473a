//! A program that asks for a journal from a buckshot built without the
//! cargo feature `journal` (this crate depends on it without), and prints
//! what it gets. buckshot's `tests/journal_off.rs` runs it: buckshot's own
//! tests always have the feature.

fn main() {
    let path = std::env::temp_dir().join(format!(
        "buckshot-journal-without-feature-{}.sqlite",
        std::process::id()
    ));
    // The setter is there without the feature; `build` says what is missing.
    match buckshot::Pool::builder()
        .processes(1)
        .journal(&path)
        .build()
    {
        Ok(_) => println!("build: a pool was built"),
        Err(error @ buckshot::Error::Config { .. }) => println!("build: Config: {error}"),
        Err(error) => println!("build: {error:?}"),
    }
    println!("journal file created: {}", path.exists());
    let _ = std::fs::remove_file(&path);
    // So is the count of what a journal left out, 0 on any pool.
    let pool = buckshot::Pool::new(1).expect("a pool without a journal");
    println!("unrecorded: {}", pool.journal_unrecorded());
}
