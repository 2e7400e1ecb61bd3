//! `ThreadBound<T>`: the marker that makes [`ReadGuard`](crate::ReadGuard)
//! and [`DeferScope`](crate::DeferScope) neither `Send` nor `Sync`, with a
//! compiler error that names the guard and says why.
//!
//! A raw-pointer marker (`PhantomData<*const ()>`) does the same, but the
//! error then reads "`*const ()` cannot be sent between threads safely",
//! with the guard only in a note further down. Here `ThreadBound<T>` is
//! `Send` and `Sync` only where `T: StaysOnItsThread`, a trait that no type
//! implements and that code outside this crate cannot name: so it is never
//! `Send` nor `Sync`, and the error is the trait's message with `{Self}`
//! the guard:
//!
//! ```text
//! error[E0277]: `ReadGuard` cannot be sent to or shared with another thread: read
//!   sections and defer scopes belong to the thread that entered them
//! ```

use std::marker::PhantomData;

/// Implemented by no type. A type holding `ThreadBound<T>` is `Send` or
/// `Sync` only if `T` implements it, that is never; the attribute turns the
/// unmet bound into the error a user sees.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be sent to or shared with another thread: read sections and defer \
               scopes belong to the thread that entered them",
    label = "`{Self}` cannot leave the thread that created it",
    note = "enter a section on the other thread with `rcu_defer::read_lock()`; to take a value \
            out of a section, clone it (`RcuCell::get_cloned`, or `RcuCell::load_full` for an \
            `RcuCell<Arc<T>>`)"
)]
pub(crate) trait StaysOnItsThread {}

/// Neither `Send` nor `Sync`; a zero-sized field of the type `T` that must
/// stay on its thread (e.g. `PhantomData<ThreadBound<ReadGuard>>`).
pub(crate) struct ThreadBound<T>(PhantomData<(T, *const ())>);

// SAFETY: no type implements `StaysOnItsThread` (this module has no impl,
// and the trait is private to the crate), so this impl never applies and
// `ThreadBound<T>` is never `Send`. It exists to replace the automatic
// impl, whose failure would name `*const ()` instead of `T`.
unsafe impl<T: StaysOnItsThread> Send for ThreadBound<T> {}

// SAFETY: as for `Send`: this impl never applies.
unsafe impl<T: StaysOnItsThread> Sync for ThreadBound<T> {}
