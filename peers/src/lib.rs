//! Side-by-side comparison of rcu-defer's read side with its peers: not part
//! of the library, never published.
//!
//! The comparison itself is the bench `benches/read_side_peers.rs`
//! (`cargo bench -p peers`). This library only wraps liburcu for it: a C
//! shim (`c/`, built by `build.rs` with the `cc` crate) compiles liburcu's
//! read side with `_LGPL_SOURCE`, so that `urcu_memb_read_lock()` and
//! friends are inlined into the shim's loop as they would be in a C program,
//! and exposes a loop of `n` empty read-side critical sections, so that the
//! cost of calling C from Rust is paid once per Criterion sample rather
//! than once per section.
//!
//! liburcu is optional. Without it (no `liburcu-dev` installed, or
//! `RCU_DEFER_PEERS_LIBURCU=0`), `build.rs` does not set `cfg(peers_liburcu)`,
//! [`LIBURCU`] is `false`, the `liburcu` module does not exist, and the
//! bench measures the Rust peers only and says so.

/// Whether this build has the liburcu shim (liburcu-dev was found when the
/// crate was built).
pub const LIBURCU: bool = cfg!(peers_liburcu);

/// liburcu's `urcu-memb`, `urcu-mb` and `urcu-qsbr` flavors, through the C
/// shim.
///
/// liburcu requires every thread to register before its first read-side
/// critical section and to unregister before it exits. A reader handle
/// ([`MembReader`](liburcu::MembReader), [`MbReader`](liburcu::MbReader))
/// registers the calling thread the first time the thread asks for one; a
/// thread-local destructor unregisters it when the thread exits. Handles
/// cannot leave their thread, so every call through one runs on a
/// registered thread.
#[cfg(peers_liburcu)]
pub mod liburcu {
    use std::marker::PhantomData;

    /// A thread's registration with one flavor; unregisters on drop (at
    /// thread exit, as a thread-local).
    struct Registration {
        unregister: unsafe extern "C" fn(),
    }

    impl Drop for Registration {
        fn drop(&mut self) {
            // SAFETY: only made right after this thread registered with the
            // flavor `unregister` belongs to, and dropped once, at thread
            // exit. liburcu's own per-thread state is plain C `__thread`
            // data, which has no destructor, so it is still valid here.
            unsafe { (self.unregister)() }
        }
    }

    /// Generates one flavor's reader handle over its shim functions.
    macro_rules! flavor {
        (
            $(#[$doc:meta])*
            $reader:ident, $name:literal,
            registration: $registration:ident,
            register: $register:ident,
            unregister: $unregister:ident,
            loop_n: $loop_n:ident,
            lock: $lock:ident,
            unlock: $unlock:ident,
            ongoing: $ongoing:ident,
            synchronize: $synchronize:ident,
        ) => {
            extern "C" {
                fn $register();
                fn $unregister();
                fn $loop_n(n: u64);
                fn $lock();
                fn $unlock();
                fn $ongoing() -> std::ffi::c_int;
                fn $synchronize();
            }

            thread_local! {
                static $registration: Registration = {
                    // SAFETY: runs once per thread (thread-local
                    // initialization), so the thread is not registered yet.
                    unsafe { $register() };
                    Registration { unregister: $unregister }
                };
            }

            $(#[$doc])*
            #[derive(Clone, Copy)]
            pub struct $reader {
                /// Registration is per thread: the handle must stay on it.
                _not_send: PhantomData<*const ()>,
            }

            impl $reader {
                /// A handle for the calling thread, registering the thread
                /// with this flavor if it is not yet.
                pub fn current() -> Self {
                    $registration.with(|_| ());
                    $reader {
                        _not_send: PhantomData,
                    }
                }

                /// Runs `n` empty outermost read-side critical sections
                /// (read lock, read unlock), inlined in the shim's loop.
                pub fn read_lock_unlock_n(self, n: u64) {
                    // SAFETY: the handle proves the thread is registered;
                    // each lock is matched by an unlock inside the loop.
                    unsafe { $loop_n(n) }
                }

                /// Runs `f` inside one read-side critical section.
                ///
                /// `f` must not call [`synchronize_rcu`](Self::synchronize_rcu)
                /// of this flavor (it refuses, by panicking).
                pub fn with_read_lock<R>(self, f: impl FnOnce() -> R) -> R {
                    /// Unlocks even if `f` panics.
                    struct Unlock;
                    impl Drop for Unlock {
                        fn drop(&mut self) {
                            // SAFETY: matches the lock taken below on this
                            // registered thread.
                            unsafe { $unlock() }
                        }
                    }
                    // SAFETY: the handle proves the thread is registered.
                    unsafe { $lock() };
                    let _unlock = Unlock;
                    f()
                }

                /// Whether this thread is inside a read-side critical
                /// section of this flavor.
                pub fn read_ongoing(self) -> bool {
                    // SAFETY: reads this registered thread's own state.
                    unsafe { $ongoing() != 0 }
                }

                /// Waits for a grace period of this flavor.
                ///
                /// # Panics
                ///
                /// Inside a read section of this flavor on this thread,
                /// where liburcu would wait for the thread forever.
                pub fn synchronize_rcu(self) {
                    assert!(
                        !self.read_ongoing(),
                        concat!("synchronize_rcu inside a liburcu ", $name, " read section")
                    );
                    // SAFETY: registered, and not inside a read section of
                    // this flavor (checked above).
                    unsafe { $synchronize() }
                }
            }
        };
    }

    flavor! {
        /// A thread registered with liburcu's `urcu-memb` flavor: readers
        /// use compiler barriers only, the writer uses `membarrier(2)`
        /// (rcu-defer's membarrier flavor is the same scheme).
        MembReader, "urcu-memb",
        registration: MEMB_REGISTRATION,
        register: peers_urcu_memb_register_thread,
        unregister: peers_urcu_memb_unregister_thread,
        loop_n: peers_urcu_memb_read_lock_unlock_n,
        lock: peers_urcu_memb_read_lock,
        unlock: peers_urcu_memb_read_unlock,
        ongoing: peers_urcu_memb_read_ongoing,
        synchronize: peers_urcu_memb_synchronize_rcu,
    }

    extern "C" {
        fn peers_urcu_qsbr_register_thread();
        fn peers_urcu_qsbr_unregister_thread();
        fn peers_urcu_qsbr_read_lock_unlock_n(n: u64);
        fn peers_urcu_qsbr_quiescent_state();
        fn peers_urcu_qsbr_thread_offline();
        fn peers_urcu_qsbr_thread_online();
        fn peers_urcu_qsbr_synchronize_rcu();
        fn peers_urcu_qsbr_reads_under_writer(nanos: u64, writes: *mut u64) -> u64;
    }

    thread_local! {
        static QSBR_REGISTRATION: Registration = {
            // SAFETY: runs once per thread (thread-local initialization), so
            // the thread is not registered yet.
            unsafe { peers_urcu_qsbr_register_thread() };
            Registration { unregister: peers_urcu_qsbr_unregister_thread }
        };
    }

    /// A thread registered with liburcu's `urcu-qsbr` flavor, which makes it
    /// online: its read-side critical sections are empty, and grace periods
    /// wait for it until it reports a quiescent state or goes offline
    /// (rcu-defer's online threads are the same scheme).
    #[derive(Clone, Copy)]
    pub struct QsbrReader {
        /// Registration is per thread: the handle must stay on it.
        _not_send: PhantomData<*const ()>,
    }

    impl QsbrReader {
        /// A handle for the calling thread, registering it (online) if it
        /// is not yet.
        pub fn current() -> Self {
            QSBR_REGISTRATION.with(|_| ());
            QsbrReader {
                _not_send: PhantomData,
            }
        }

        /// Runs `n` empty read-side critical sections in the shim's loop.
        pub fn read_lock_unlock_n(self, n: u64) {
            // SAFETY: the handle proves the thread is registered.
            unsafe { peers_urcu_qsbr_read_lock_unlock_n(n) }
        }

        /// `rcu_quiescent_state()`.
        pub fn quiescent_state(self) {
            // SAFETY: registered (online) thread.
            unsafe { peers_urcu_qsbr_quiescent_state() }
        }

        /// Runs `f` with the thread offline (`rcu_thread_offline()` ...
        /// `rcu_thread_online()`).
        pub fn offline<R>(self, f: impl FnOnce() -> R) -> R {
            /// Back online even if `f` panics.
            struct Online;
            impl Drop for Online {
                fn drop(&mut self) {
                    // SAFETY: matches the offline call below on this
                    // registered thread.
                    unsafe { peers_urcu_qsbr_thread_online() }
                }
            }
            // SAFETY: registered thread, online here.
            unsafe { peers_urcu_qsbr_thread_offline() };
            let _online = Online;
            f()
        }

        /// Reads for `duration` on this (online) thread, a quiescent state
        /// every 1024 reads, while a writer thread of the shim swaps a
        /// pointer and calls `synchronize_rcu()` back to back: returns
        /// (reads, grace periods).
        ///
        /// # Panics
        ///
        /// If a read saw a value other than the one every published
        /// pointer leads to (the shim then returns 0 reads).
        pub fn reads_under_writer(self, duration: std::time::Duration) -> (u64, u64) {
            let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
            let mut writes = 0;
            // SAFETY: registered thread; `writes` is a valid out-pointer
            // for the call.
            let reads = unsafe { peers_urcu_qsbr_reads_under_writer(nanos, &mut writes) };
            assert!(reads > 0, "a urcu-qsbr read saw a wrong value");
            (reads, writes)
        }

        /// `synchronize_rcu()`; liburcu takes the online caller offline for
        /// the wait.
        pub fn synchronize_rcu(self) {
            // SAFETY: registered thread; qsbr's read sections are empty, so
            // no section can be open here.
            unsafe { peers_urcu_qsbr_synchronize_rcu() }
        }
    }

    flavor! {
        /// A thread registered with liburcu's `urcu-mb` flavor: readers
        /// issue a full memory barrier on entry and exit of the outermost
        /// section (rcu-defer's fence flavor is the counterpart).
        MbReader, "urcu-mb",
        registration: MB_REGISTRATION,
        register: peers_urcu_mb_register_thread,
        unregister: peers_urcu_mb_unregister_thread,
        loop_n: peers_urcu_mb_read_lock_unlock_n,
        lock: peers_urcu_mb_read_lock,
        unlock: peers_urcu_mb_read_unlock,
        ongoing: peers_urcu_mb_read_ongoing,
        synchronize: peers_urcu_mb_synchronize_rcu,
    }
}
