//! Tasks registered in a library crate, for buckshot's tests: a binary that
//! depends on this crate must find them in its workers.

/// Reverses a string.
pub fn reverse(text: String) -> String {
    text.chars().rev().collect()
}
buckshot::register!(reverse);

/// A generic task, registered for one type.
pub fn double<T: std::ops::Add<Output = T> + Copy>(x: T) -> T {
    x + x
}
buckshot::register!(double::<i64>);
