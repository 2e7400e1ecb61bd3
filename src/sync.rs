//! The one place that chooses between `std` and `loom` primitives.
//!
//! Every other module imports atomics, fences, mutexes, condition variables,
//! thread-locals, threads and process-wide statics from here, so that
//! `RUSTFLAGS="--cfg loom"` swaps the whole crate onto loom's model checker.

#[cfg(not(loom))]
pub(crate) use std::{
    sync::atomic::{compiler_fence, fence, AtomicBool, AtomicPtr, AtomicU64, AtomicU8},
    sync::{Arc, Condvar, Mutex, MutexGuard},
    thread,
};

#[cfg(loom)]
pub(crate) use loom::{
    sync::atomic::{fence, AtomicBool, AtomicPtr, AtomicU64, AtomicU8},
    sync::{Arc, Condvar, Mutex, MutexGuard},
    thread,
};

pub(crate) use std::sync::atomic::Ordering;

/// One-time initializations for the fork handlers and their hooks, which
/// exist only outside loom (loom has no processes to fork).
#[cfg(not(loom))]
pub(crate) use std::sync::{Once, OnceLock};

/// A `std` atomic that loom does not model, for the test-only fault switch
/// (`fault.rs`): switching a fault on must not add interleavings.
#[cfg(loom)]
pub(crate) use std::sync::atomic::AtomicU8 as UnmodeledAtomicU8;

/// loom has no compiler fence. Between threads a compiler fence orders
/// nothing (C11's `atomic_signal_fence`), so under loom it is a no-op: the
/// protocol's real fences (the fence flavor is forced under loom) must do all
/// the ordering, as they do on hardware.
#[cfg(loom)]
pub(crate) fn compiler_fence(_order: Ordering) {}

/// A spin-wait hint; under loom it yields so that the model makes progress.
#[inline]
pub(crate) fn spin_loop() {
    #[cfg(not(loom))]
    std::hint::spin_loop();
    #[cfg(loom)]
    loom::hint::spin_loop();
}

/// Whether the wait paths may spin before they sleep. Under loom a spin is a
/// yield that multiplies the state space, so the models go straight to sleep.
pub(crate) const MAY_SPIN: bool = cfg!(not(loom));

/// Locks a mutex, ignoring poisoning: the crate never runs user code while
/// it holds one of its own locks, so a poisoned lock still guards consistent
/// data.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A process-wide static: a plain `static` with `std` (so `$init` must be a
/// constant expression), a per-execution lazy static under loom.
macro_rules! global {
    ($(#[$m:meta])* static $name:ident: $t:ty = $init:expr;) => {
        #[cfg(not(loom))]
        $(#[$m])*
        static $name: $t = $init;
        #[cfg(loom)]
        loom::lazy_static! {
            $(#[$m])*
            static ref $name: $t = $init;
        }
    };
}

/// A thread-local with a constant initializer and no destructor (the fast
/// path: no lazy-init check with `std`).
macro_rules! thread_local_const {
    ($(#[$m:meta])* static $name:ident: $t:ty = $init:expr;) => {
        #[cfg(not(loom))]
        std::thread_local! {
            $(#[$m])*
            static $name: $t = const { $init };
        }
        #[cfg(loom)]
        loom::thread_local! {
            $(#[$m])*
            static $name: $t = $init;
        }
    };
}

/// A thread-local with a constant initializer and no destructor whose
/// address is handed out beyond `with` (the reader record). With `std` it is
/// the plain variable; under loom the value is leaked once per thread, so
/// that it stays valid however loom orders the destruction of a thread's
/// locals. Either way `NAME.with(|v| f(v))` gives a `&T`.
macro_rules! thread_local_pinned {
    ($(#[$m:meta])* static $name:ident: $t:ty = $init:expr;) => {
        #[cfg(not(loom))]
        std::thread_local! {
            $(#[$m])*
            static $name: $t = const { $init };
        }
        #[cfg(loom)]
        loom::thread_local! {
            $(#[$m])*
            static $name: &'static $t = Box::leak(Box::new($init));
        }
    };
}

/// A thread-local that is initialized lazily and may have a destructor.
macro_rules! thread_local_lazy {
    ($(#[$m:meta])* static $name:ident: $t:ty = $init:expr;) => {
        #[cfg(not(loom))]
        std::thread_local! {
            $(#[$m])*
            static $name: $t = $init;
        }
        #[cfg(loom)]
        loom::thread_local! {
            $(#[$m])*
            static $name: $t = $init;
        }
    };
}

pub(crate) use {global, thread_local_const, thread_local_lazy, thread_local_pinned};
