//! Calls that run as the thread's outermost read section ends, *before* its
//! end is published to writers.
//!
//! A call recorded here refers to its data by a raw pointer and touches no
//! reference count. That is sound for data that is freed only after a grace
//! period that begins after the call was recorded: such a grace period
//! cannot end while this thread's section is published, and the call runs
//! before the section is unpublished. [`IrqNotifier`] records its signal
//! here, so that a batched notification costs no atomic read-modify-write
//! (where `call_local` would clone and drop an `Arc`).
//!
//! That the call runs at the section's end, and that the section protects
//! until then, holds across every change of the thread's reader state:
//! going offline is refused inside a section, and coming back online
//! (`Local::come_back_online`), dropping the `Online` handle and exiting
//! keep an open section's depth and its `DEFERRED` flag, so its outermost
//! exit still runs the calls before it ends the section's protection.
//!
//! The calls sit in a small fixed array in the thread's reader state: no
//! allocation, and nothing to free at thread exit, since each outermost end
//! runs and empties it. When it is full, or while it is running, recording
//! is refused and the caller falls back to `call_local`.
//!
//! [`IrqNotifier`]: crate::virtio::IrqNotifier

use crate::report::{panic_message, report};
use std::any::Any;
use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// A recorded call: the function and its data.
pub(crate) type RawFn = unsafe fn(*const ());

/// How many distinct calls one section can hold (distinct notifiers in one
/// pass: a device with more queues than this falls back to `call_local`
/// for the rest).
const CAPACITY: usize = 8;

/// Does nothing: fills unused entries.
unsafe fn nothing(_: *const ()) {}

/// An unused entry.
#[allow(clippy::declare_interior_mutable_const)] // the array's initializer
const EMPTY: Cell<(RawFn, *const ())> = Cell::new((nothing, std::ptr::null()));

/// `SectionCalls::len` while `run` runs the calls: recording is refused
/// then (a call recorded by a running call would be neither run nor
/// protected once the section's end is published).
const RUNNING: usize = CAPACITY + 1;

/// A thread's pending section calls, in recording order.
pub(crate) struct SectionCalls {
    /// How many entries of `calls` are pending, or `RUNNING`.
    len: Cell<usize>,
    calls: [Cell<(RawFn, *const ())>; CAPACITY],
}

impl SectionCalls {
    /// No calls.
    pub(crate) const fn new() -> Self {
        SectionCalls {
            len: Cell::new(0),
            calls: [EMPTY; CAPACITY],
        }
    }

    /// Records `f(data)`, unless the same `data` is already pending (then
    /// it returns `true` and records nothing: one call serves both). Returns
    /// `false` if it cannot record: the array is full or running.
    ///
    /// # Safety
    ///
    /// The thread must be inside a read section, and `f(data)` must be safe
    /// to call at any point until that section's outermost end (in
    /// particular, `data` must stay valid until then).
    #[inline]
    pub(crate) unsafe fn record(&self, f: RawFn, data: *const ()) -> bool {
        let len = self.len.get();
        if len == RUNNING {
            return false;
        }
        for entry in &self.calls[..len] {
            if entry.get().1 == data {
                return true;
            }
        }
        if len == CAPACITY {
            return false;
        }
        self.calls[len].set((f, data));
        self.len.set(len + 1);
        true
    }

    /// How many calls are pending (meaningless while they run).
    #[inline(always)]
    pub(crate) fn pending(&self) -> usize {
        self.len.get()
    }

    /// Runs the pending calls in recording order and empties the array.
    /// Called at the outermost end of a section, before the end is
    /// published.
    ///
    /// With several calls, a panicking one does not stop the others: the
    /// first panic is returned (or, if the thread is already unwinding,
    /// reported and dropped). A single call, the usual case (one notifier
    /// per pass), is made directly: its panic unwinds to the caller, which
    /// must then call [`abandon`](Self::abandon) before it publishes the
    /// section's end.
    #[inline]
    pub(crate) fn run(&self) -> Option<Box<dyn Any + Send>> {
        match self.len.get() {
            0 => None,
            1 if !std::thread::panicking() => {
                let (f, data) = self.calls[0].get();
                self.len.set(RUNNING);
                // SAFETY: `record`'s caller promised that `f(data)` may be
                // called until the end of the section that was open then,
                // and that end is now: this runs before it is published.
                unsafe { f(data) };
                self.len.set(0);
                None
            }
            _ => self.run_each(),
        }
    }

    /// `run` for several calls, or while unwinding: each under
    /// `catch_unwind`.
    #[cold]
    #[inline(never)]
    fn run_each(&self) -> Option<Box<dyn Any + Send>> {
        let len = self.len.replace(RUNNING);
        let mut first_panic = None;
        for entry in &self.calls[..len] {
            let (f, data) = entry.get();
            // SAFETY: as in `run`.
            let outcome = catch_unwind(AssertUnwindSafe(|| unsafe { f(data) }));
            if let Err(payload) = outcome {
                if std::thread::panicking() {
                    report!(
                        CallbackPanicked,
                        "a call deferred to the end of a read section panicked while the \
                         thread was already unwinding: {}; the panic is dropped",
                        panic_message(&*payload)
                    );
                } else if first_panic.is_none() {
                    first_panic = Some(payload);
                }
            }
        }
        self.abandon();
        first_panic
    }

    /// Forgets the pending calls (after a single call's panic unwound out of
    /// `run`; the others, if any, have run).
    pub(crate) fn abandon(&self) {
        self.len.set(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::sync::thread_local_const! {
        static SEEN: Cell<usize> = Cell::new(0);
    }

    /// Counts its calls; `data` is only an identity here.
    unsafe fn count(_: *const ()) {
        SEEN.with(|s| s.set(s.get() + 1));
    }

    fn data(i: usize) -> *const () {
        (0x1000 + 0x10 * i) as *const ()
    }

    #[test]
    fn a_full_array_still_finds_duplicates_and_refuses_only_new_calls() {
        let calls = SectionCalls::new();
        for i in 0..CAPACITY {
            // SAFETY: `count` never dereferences its data.
            assert!(unsafe { calls.record(count, data(i)) });
        }
        // SAFETY: as above.
        unsafe {
            assert!(calls.record(count, data(0)), "a duplicate is served");
            assert!(
                calls.record(count, data(CAPACITY - 1)),
                "a duplicate is served"
            );
            assert!(
                !calls.record(count, data(CAPACITY)),
                "a new call is refused"
            );
        }
        SEEN.with(|s| s.set(0));
        assert!(calls.run().is_none());
        assert_eq!(
            SEEN.with(Cell::get),
            CAPACITY,
            "each recorded call ran once"
        );
        // SAFETY: as above.
        assert!(unsafe { calls.record(count, data(0)) }, "empty again");
    }

    /// Records its data pointer's target call again while the calls run.
    unsafe fn record_while_running(calls: *const ()) {
        // SAFETY: the test passes a `SectionCalls` that outlives the run.
        let calls = unsafe { &*(calls as *const SectionCalls) };
        // SAFETY: `count` never dereferences its data.
        let recorded = unsafe { calls.record(count, data(7)) };
        assert!(!recorded, "recording is refused while the calls run");
    }

    #[test]
    fn recording_is_refused_while_the_calls_run_with_one_call_or_several() {
        for others in [0, 2] {
            let calls = SectionCalls::new();
            let this = &calls as *const SectionCalls as *const ();
            // SAFETY: `calls` outlives the run below.
            unsafe {
                assert!(calls.record(record_while_running, this));
                for i in 0..others {
                    assert!(calls.record(count, data(i)));
                }
            }
            assert!(calls.run().is_none(), "no call panicked");
        }
    }
}
