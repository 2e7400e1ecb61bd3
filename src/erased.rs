//! A deferred call with its type erased, stored inline when it is small.
//!
//! `call_local` keeps the pending calls of a thread in one slot and one
//! vector, whatever their argument types, so recording is a store or a push
//! and running is a walk in order. An [`Erased`] holds the call (an `FnOnce()`) in three words of
//! inline storage, or a box when it is larger, next to a function pointer
//! that knows its real type. A `call_local` call (a `fn(&T)` and an
//! `Arc<T>`, fat or thin) always fits, so recording one never allocates.
//!
//! This is the only `unsafe` of the deferred-call machinery; everything
//! else goes through `Erased::new`, `Erased::run` and `Drop`.

use std::marker::PhantomData;
use std::mem::{self, ManuallyDrop, MaybeUninit};
use std::ptr;

/// The inline storage: room for a `fn(&T)` next to an `Arc<T>` of an unsized
/// `T` (a fat pointer), aligned like a pointer. Kept as separate words, not
/// one block of bytes, so that moving a call around (into the thread's
/// pending slot, out of it, into `op`) is word-sized loads and stores that
/// the CPU forwards from one to the next, and `op` gets the words in
/// registers.
type Storage = [MaybeUninit<usize>; 3];

/// Runs (`true`) or drops (`false`) the call stored in the three words.
type Op = unsafe fn(MaybeUninit<usize>, MaybeUninit<usize>, MaybeUninit<usize>, bool);

/// A call to make later, on the thread that recorded it.
pub(crate) struct Erased {
    storage: Storage,
    /// `op_for::<C>()` of the `C` written into `storage`.
    op: Op,
    /// The stored call may be neither `Send` nor `Sync` (`call_local_fn`
    /// takes any `'static` closure): neither is `Erased`.
    _not_send: PhantomData<*const ()>,
}

/// Whether a `C` can live in `Storage` itself.
const fn fits<C>() -> bool {
    mem::size_of::<C>() <= mem::size_of::<Storage>()
        && mem::align_of::<C>() <= mem::align_of::<Storage>()
}

/// Rebuilds the `C` from the three words and calls or drops it.
///
/// # Safety
///
/// The words must be those of an `Erased` made by `Erased::store::<C>`,
/// taken out of it exactly once (`run` or `drop`).
unsafe fn op_for<C: FnOnce()>(
    w0: MaybeUninit<usize>,
    w1: MaybeUninit<usize>,
    w2: MaybeUninit<usize>,
    run: bool,
) {
    let storage: Storage = [w0, w1, w2];
    // SAFETY: the caller guarantees that these words hold a `C`, written by
    // `store` with the size and alignment `fits::<C>()` checked (the array
    // is aligned like its words); the `Erased` they came from gave them up,
    // so this moves the `C` out exactly once.
    let call = unsafe { ptr::read(storage.as_ptr().cast::<C>()) };
    if run {
        call();
    } else {
        drop(call);
    }
}

impl Erased {
    /// Stores `call` inline, or boxed if it is too large for that.
    pub(crate) fn new<C: FnOnce() + 'static>(call: C) -> Self {
        if fits::<C>() {
            Self::store(call)
        } else {
            Self::store(Box::new(call))
        }
    }

    fn store<C: FnOnce() + 'static>(call: C) -> Self {
        // A compile-time constant for each `C`: `new` boxes what does not fit.
        assert!(fits::<C>(), "a call stored inline must fit its storage");
        let mut storage: Storage = [MaybeUninit::uninit(); 3];
        // SAFETY: `fits::<C>()` (asserted above) guarantees that a `C` fits
        // in `storage` with its alignment; `storage` is a fresh local, so
        // nothing is overwritten. `op_for::<C>` is stored with it, and it is
        // the only thing that ever reads the value back.
        unsafe { ptr::write(storage.as_mut_ptr().cast::<C>(), call) };
        Erased {
            storage,
            op: op_for::<C>,
            _not_send: PhantomData,
        }
    }

    /// Makes the call, consuming it.
    pub(crate) fn run(self) {
        let this = ManuallyDrop::new(self);
        let [w0, w1, w2] = this.storage;
        // SAFETY: `storage` holds the value `op` was made for (written in
        // `store`, never taken: `run` and `drop` each take `self`, and
        // `ManuallyDrop` keeps `Drop` from taking it a second time).
        unsafe { (this.op)(w0, w1, w2, true) };
    }
}

impl Drop for Erased {
    /// Drops a call without running it, releasing what it captured. (The
    /// deferred-call machinery runs every call it records, and leaves the
    /// calls of a section that never ends pending; this keeps an `Erased`
    /// dropped any other way from leaking.)
    fn drop(&mut self) {
        let [w0, w1, w2] = self.storage;
        // SAFETY: as in `run`: the value is there and is taken only here
        // (the words left behind are never read again).
        unsafe { (self.op)(w0, w1, w2, false) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    #[test]
    fn a_small_call_is_stored_inline_and_a_large_one_boxed_and_both_run_once() {
        assert!(fits::<(fn(&u8), std::sync::Arc<[u8]>)>());
        assert!(!fits::<[u64; 4]>());
        let count = Rc::new(Cell::new(0));
        let small = {
            let count = Rc::clone(&count);
            Erased::new(move || count.set(count.get() + 1))
        };
        let big = {
            let count = Rc::clone(&count);
            let payload = [1u64, 2, 3, 4];
            Erased::new(move || count.set(count.get() + payload.iter().sum::<u64>() as usize))
        };
        small.run();
        big.run();
        assert_eq!(count.get(), 11);
        assert_eq!(Rc::strong_count(&count), 1, "running released the captures");
    }

    #[test]
    fn dropping_a_call_that_never_ran_releases_its_captures_without_running_it() {
        let count = Rc::new(Cell::new(0));
        let call = {
            let count = Rc::clone(&count);
            Erased::new(move || count.set(1))
        };
        assert_eq!(Rc::strong_count(&count), 2);
        drop(call);
        assert_eq!(Rc::strong_count(&count), 1);
        assert_eq!(count.get(), 0);
    }
}
