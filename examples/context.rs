//! A context: data sent once to each worker, not once per input. Here a
//! word list of 100,000 entries is looked up by 20,000 inputs; the list
//! travels to each of the 2 workers once.
//!
//! Run with `cargo run --example context`.

use std::collections::HashMap;
use std::sync::OnceLock;

use buckshot::{Error, Pool};

#[derive(serde::Serialize, serde::Deserialize)]
struct Dictionary {
    words: Vec<String>,
}

/// The position of `word` in the dictionary, through an index that each
/// worker builds once, on first use.
fn position(dictionary: &Dictionary, word: String) -> Option<usize> {
    static INDEX: OnceLock<HashMap<String, usize>> = OnceLock::new();
    let index = INDEX.get_or_init(|| {
        let words = dictionary.words.iter().enumerate();
        words.map(|(i, word)| (word.clone(), i)).collect()
    });
    index.get(&word).copied()
}
buckshot::register!(position);

fn main() -> Result<(), Error> {
    let dictionary = Dictionary {
        words: (0..100_000).map(|i| format!("word{i}")).collect(),
    };
    let pool = Pool::new(2)?;
    let ctx = pool.with_context(&dictionary);
    let queries = (0..20_000).map(|i| format!("word{}", i * 7));
    let found = ctx
        .map(position, queries)?
        .collect::<Result<Vec<Option<usize>>, Error>>()?;
    let hits = found.iter().flatten().count();
    println!("{} queries, {hits} found (expected 14286)", found.len());
    println!("word70 is at {:?} (expected Some(70))", found[10]);
    Ok(())
}
