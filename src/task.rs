//! The shapes a task can have.
//!
//! A task is a function of up to four arguments. [`Task`] is implemented
//! for every function of those shapes, with a marker type that tells the
//! shapes apart (the way axum tells its handlers apart): `fn(A) -> O` is a
//! `Task<Args<(A,)>>` whose input is `A`, and `fn(A, B) -> O` a
//! `Task<Args<(A, B)>>` whose input is the tuple `(A, B)`. The marker is
//! inferred: [`register!`](crate::register) and [`Pool::map`](crate::Pool::map)
//! take any of them without annotations.
//!
//! A function of no arguments, `fn() -> O`, is a `Task<Args<()>>` whose
//! input is `()`: what [`PoolBuilder::initializer`](crate::PoolBuilder::initializer)
//! takes, and a task that can be mapped too.
//!
//! A one-argument task whose argument is a tuple stays a one-argument task:
//! `fn f(p: (i64, i64))` takes inputs of type `(i64, i64)`, like
//! `fn g(a: i64, b: i64)`, and both are called with the same inputs.
//!
//! A task whose first argument is a reference, `fn(&C, A) -> O`, reads a
//! context: data sent once to each worker rather than with every input
//! ([`Pool::with_context`](crate::Pool::with_context)). It is a
//! `Task<ContextArgs<C, (A,)>>` whose input is `A`. (A plain task cannot
//! take a reference: its arguments are decoded into owned values.)

use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A function that pools can run, of any of the shapes buckshot supports.
///
/// Implemented for every `Fn() -> O`, `Fn(A) -> O`, `Fn(A, B) -> O`,
/// `Fn(A, B, C) -> O` and `Fn(A, B, C, D) -> O` whose arguments and output
/// are `serde` types;
/// not meant to be implemented by hand. `Marker` tells the shapes apart and
/// is always inferred.
///
/// ```
/// fn scale(x: f64, by: f64) -> f64 {
///     x * by
/// }
/// buckshot::register!(scale);
///
/// # fn main() -> Result<(), buckshot::Error> {
/// let pool = buckshot::Pool::new(1)?;
/// // A task of several arguments takes the tuple of them as its input.
/// let scaled: Vec<f64> = pool
///     .map(scale, [(1.0, 2.0), (3.0, 4.0)])?
///     .collect::<Result<_, _>>()?;
/// assert_eq!(scaled, [2.0, 12.0]);
/// # Ok(())
/// # }
/// ```
pub trait Task<Marker>: 'static {
    /// What one call takes: the argument, or the tuple of the arguments.
    type Input: Serialize + DeserializeOwned;
    /// What one call returns.
    type Output: Serialize + DeserializeOwned;
    /// What the task reads besides its input: `()` for a plain task, `C`
    /// for one whose first argument is `&C`.
    type Context: Serialize + DeserializeOwned + Send + 'static;

    /// Calls the function with `input` spread over its arguments.
    #[doc(hidden)]
    fn call_with(&self, context: &Self::Context, input: Self::Input) -> Self::Output;
}

/// The marker of a task whose arguments are the types of the tuple `T`:
/// `Args<()>` for `fn() -> O`, `Args<(A,)>` for `fn(A) -> O`,
/// `Args<(A, B)>` for `fn(A, B) -> O`, and so on. Never built; it only
/// tells [`Task`]'s shapes apart.
pub struct Args<T>(PhantomData<fn() -> T>);

impl<T> std::fmt::Debug for Args<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Args")
    }
}

/// The marker of a task that reads a context of type `C` (its first
/// argument, `&C`) besides arguments of the types of the tuple `T`. Never
/// built; it only tells [`Task`]'s shapes apart.
pub struct ContextArgs<C, T>(PhantomData<fn() -> (C, T)>);

impl<C, T> std::fmt::Debug for ContextArgs<C, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ContextArgs")
    }
}

/// Implements [`Task`] for functions of the given arguments.
macro_rules! task_of_arity {
    ($input:ty => $($arg:ident),+) => {
        impl<F, $($arg,)+ O> Task<Args<($($arg,)+)>> for F
        where
            F: Fn($($arg),+) -> O + 'static,
            $($arg: Serialize + DeserializeOwned,)+
            O: Serialize + DeserializeOwned,
        {
            type Input = $input;
            type Output = O;
            type Context = ();

            #[allow(non_snake_case)]
            fn call_with(&self, _: &(), input: Self::Input) -> O {
                let ($($arg,)+) = task_of_arity!(@spread input; $($arg),+);
                self($($arg),+)
            }
        }

        impl<F, Ctx, $($arg,)+ O> Task<ContextArgs<Ctx, ($($arg,)+)>> for F
        where
            F: Fn(&Ctx, $($arg),+) -> O + 'static,
            Ctx: Serialize + DeserializeOwned + Send + 'static,
            $($arg: Serialize + DeserializeOwned,)+
            O: Serialize + DeserializeOwned,
        {
            type Input = $input;
            type Output = O;
            type Context = Ctx;

            #[allow(non_snake_case)]
            fn call_with(&self, context: &Ctx, input: Self::Input) -> O {
                let ($($arg,)+) = task_of_arity!(@spread input; $($arg),+);
                self(context, $($arg),+)
            }
        }
    };
    // A one-argument task takes its argument as it is, not in a tuple.
    (@spread $input:ident; $a:ident) => { ($input,) };
    (@spread $input:ident; $($arg:ident),+) => { $input };
}

// A task of no arguments takes `()`, and reads no context.
impl<F, O> Task<Args<()>> for F
where
    F: Fn() -> O + 'static,
    O: Serialize + DeserializeOwned,
{
    type Input = ();
    type Output = O;
    type Context = ();

    fn call_with(&self, _: &(), (): ()) -> O {
        self()
    }
}

task_of_arity!(A => A);
task_of_arity!((A, B) => A, B);
task_of_arity!((A, B, C) => A, B, C);
task_of_arity!((A, B, C, D) => A, B, C, D);

/// A task that reads no context: what [`Pool::map`](crate::Pool::map) and
/// its siblings take.
///
/// `Marker` (the `M` in their signatures) is the shape of the function,
/// [`Args`] of its argument types (`Args<(String,)>` for
/// `fn(String) -> u32`), which the compiler infers from the function you
/// pass: you never name it. It exists because one type could implement
/// `Fn` with several argument lists, and Rust tells such impls apart only
/// by a type parameter.
pub trait PlainTask<Marker>: Task<Marker, Context = ()> {}

impl<F, M> PlainTask<M> for F where F: Task<M, Context = ()> {}

#[cfg(test)]
mod tests {
    use super::*;

    fn none() -> u64 {
        7
    }

    fn one(x: u64) -> u64 {
        x + 1
    }

    fn pair(p: (i64, i64)) -> i64 {
        p.0 - p.1
    }

    fn two(a: i64, b: i64) -> i64 {
        a - b
    }

    fn four(a: u8, b: u16, c: u32, d: String) -> String {
        format!("{a}{b}{c}{d}")
    }

    fn call<F: Task<M, Context = ()>, M>(f: F, input: F::Input) -> F::Output {
        f.call_with(&(), input)
    }

    #[derive(serde::Serialize, serde::Deserialize)]
    struct Table(Vec<u32>);

    fn with_table(table: &Table, index: usize) -> u32 {
        table.0[index]
    }

    fn with_table_2(table: &Table, a: usize, b: usize) -> u32 {
        table.0[a] + table.0[b]
    }

    fn call_in<F: Task<M>, M>(f: F, context: &F::Context, input: F::Input) -> F::Output {
        f.call_with(context, input)
    }

    #[test]
    fn every_shape_is_called_with_its_input() {
        assert_eq!(call(none, ()), 7);
        assert_eq!(call(one, 1), 2);
        assert_eq!(call(pair, (5, 3)), 2);
        assert_eq!(call(two, (5, 3)), 2);
        assert_eq!(call(four, (1, 2, 3, "4".into())), "1234");
    }

    #[test]
    fn a_reference_first_reads_the_context() {
        let table = Table(vec![10, 20, 30]);
        assert_eq!(call_in(with_table, &table, 2), 30);
        assert_eq!(call_in(with_table_2, &table, (0, 1)), 30);
    }
}
