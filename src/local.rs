//! Deferred local calls: `call_local`, `call_local_fn` and defer scopes.
//!
//! Inside a read section or a defer scope, a call is recorded instead of
//! made, and runs on the same thread when the outermost section or scope
//! ends; `call_local` records each (function, `Arc`) pair once. This is
//! QEMU's `defer_call` (formerly `blk_io_plug_call`): 64 completions that
//! each ask to notify the guest cost one notification.
//!
//! Storage: one queue of slots per call type (`LocalCall<T>` or a closure
//! type), kept per thread and reused, so recording allocates nothing in the
//! steady state; a vector of (queue, slot) pairs keeps first-recorded order;
//! dedup compares (function address, `Arc` address) keys, linearly for a
//! handful and through a hash set beyond, so it stays O(1) amortized.

use crate::call_rcu::panic_message;
use crate::reader::{current_record_if_registered, read_depth};
use crate::sync::thread_local_lazy;
use std::any::{Any, TypeId};
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::marker::PhantomData;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::Arc;

/// A recorded call, typed.
trait Call: 'static {
    fn call(self);
}

/// `call_local`'s record: the function and a clone of the `Arc`, which
/// keeps the argument alive until the call runs.
struct LocalCall<T: ?Sized + 'static> {
    f: fn(&T),
    arg: Arc<T>,
}

impl<T: ?Sized + 'static> Call for LocalCall<T> {
    fn call(self) {
        (self.f)(&self.arg);
    }
}

/// `call_local_fn`'s record.
struct FnCall<F>(F);

impl<F: FnOnce() + 'static> Call for FnCall<F> {
    fn call(self) {
        (self.0)();
    }
}

/// The slots of one call type, type-erased for the run loop.
trait Queue {
    /// Takes the call out of `slot` and makes it, holding no borrow while it
    /// runs (it may record more calls).
    fn run(&self, slot: usize);
    /// Forgets every slot (all have run), keeping the allocation.
    fn clear(&self);
    fn as_any(&self) -> &dyn Any;
}

struct Slots<C> {
    items: RefCell<Vec<Option<C>>>,
}

impl<C: Call> Queue for Slots<C> {
    fn run(&self, slot: usize) {
        let call = self.items.borrow_mut().get_mut(slot).and_then(Option::take);
        if let Some(call) = call {
            call.call();
        }
    }

    fn clear(&self) {
        self.items.borrow_mut().clear();
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// A multiply-rotate hasher for keys that are addresses (and type ids):
/// far cheaper than SipHash, and these keys are not attacker-chosen.
#[derive(Default)]
struct AddrHasher(u64);

impl Hasher for AddrHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type AddrBuild = BuildHasherDefault<AddrHasher>;

/// Where a recorded call lives: (queue index, slot index).
type Ticket = (usize, usize);

/// Dedup key of `call_local`: (function address, `Arc` data address).
type Key = (usize, usize);

/// Up to this many pending `call_local` keys, dedup is a linear scan of
/// `keys` (cheaper than hashing for the usual handful of notifiers); past
/// it, `index` holds them all, so dedup stays O(1) amortized.
const LINEAR_KEYS: usize = 8;

/// A run that leaves the hash index larger than this frees it rather than
/// clearing it (clearing costs time proportional to its capacity).
const INDEX_KEEP: usize = 1024;

#[derive(Default)]
struct Pending {
    queues: Vec<Rc<dyn Queue>>,
    queue_of: HashMap<TypeId, usize, AddrBuild>,
    /// The last call type recorded and its queue: skips `queue_of`.
    last_queue: Option<(TypeId, usize)>,
    /// Recorded calls in first-recorded order. `order[..base]` belongs to
    /// runs in progress; `order[base..]` is pending.
    order: Vec<Ticket>,
    base: usize,
    /// Keys of the pending `call_local` records (`keys[key_base..]`).
    keys: Vec<Key>,
    key_base: usize,
    /// All pending keys, once there are more than `LINEAR_KEYS`.
    index: HashSet<Key, AddrBuild>,
}

impl Pending {
    fn has_pending(&self) -> bool {
        self.order.len() > self.base
    }

    /// Records `key` unless it is pending; whether it was new.
    fn insert_key(&mut self, key: Key) -> bool {
        let pending = &self.keys[self.key_base..];
        if pending.len() < LINEAR_KEYS {
            if pending.contains(&key) {
                return false;
            }
        } else {
            if self.index.is_empty() {
                self.index.extend(pending.iter().copied());
            }
            if !self.index.insert(key) {
                return false;
            }
        }
        self.keys.push(key);
        true
    }

    fn queue_index<C: Call>(&mut self) -> usize {
        let type_id = TypeId::of::<C>();
        if let Some((last, index)) = self.last_queue {
            if last == type_id {
                return index;
            }
        }
        let index = match self.queue_of.get(&type_id) {
            Some(&index) => index,
            None => {
                let queue: Rc<dyn Queue> = Rc::new(Slots::<C> {
                    items: RefCell::new(Vec::new()),
                });
                self.queues.push(queue);
                self.queue_of.insert(type_id, self.queues.len() - 1);
                self.queues.len() - 1
            }
        };
        self.last_queue = Some((type_id, index));
        index
    }

    fn push<C: Call>(&mut self, call: C) {
        let index = self.queue_index::<C>();
        let slots = self.queues[index]
            .as_any()
            .downcast_ref::<Slots<C>>()
            .expect("queue_of maps each call type to its own queue");
        let mut items = slots.items.borrow_mut();
        items.push(Some(call));
        let ticket = (index, items.len() - 1);
        drop(items);
        self.order.push(ticket);
    }

    /// Makes everything pending the batch of a new run: returns the
    /// batch's range of `order` and the previous bases, to restore.
    fn start_run(&mut self) -> (usize, usize, usize) {
        let batch = (self.base, self.order.len(), self.key_base);
        self.base = self.order.len();
        self.key_base = self.keys.len();
        if !self.index.is_empty() {
            if self.index.capacity() > INDEX_KEEP {
                self.index = HashSet::default();
            } else {
                self.index.clear();
            }
        }
        batch
    }

    /// Ends a run started by `start_run`: drops its batch unless calls it
    /// recorded are still pending (a section it never closed).
    fn end_run(&mut self, (start, end, key_start): (usize, usize, usize)) {
        if self.order.len() == end {
            self.order.truncate(start);
            self.keys.truncate(key_start);
            self.base = start;
            self.key_base = key_start;
            if start == 0 {
                for queue in &self.queues {
                    queue.clear();
                }
            }
        }
    }
}

/// The thread's defer state.
struct Deferred {
    /// Open defer scopes.
    scopes: Cell<usize>,
    pending: RefCell<Pending>,
}

impl Drop for Deferred {
    fn drop(&mut self) {
        let pending = self.pending.get_mut();
        let n = pending.order.len() - pending.base;
        if n > 0 {
            eprintln!(
                "rcu-defer: a thread is exiting with {n} deferred call(s) that never ran: the \
                 read section or defer scope that recorded them never ended (a leaked guard?)"
            );
        }
    }
}

thread_local_lazy! {
    static DEFERRED: Deferred = Deferred {
        scopes: Cell::new(0),
        pending: RefCell::new(Pending::default()),
    };
}

/// Whether calls made now are deferred: inside a read section or a scope.
fn batching(deferred: &Deferred) -> bool {
    deferred.scopes.get() > 0 || read_depth() > 0
}

/// Tells the read side that this thread has calls to run at its outermost
/// exit.
fn mark_pending() {
    if let Some(record) = current_record_if_registered() {
        record.set_deferred(true);
    }
}

/// Calls `f(arg)` when this thread's outermost read section or defer scope
/// ends; outside both, calls it now.
///
/// Returns `true` if the call was recorded (or made at once), `false` if the
/// same `f` with the same `Arc` (pointer identity) is already pending on
/// this thread, in which case nothing is recorded: the pending call will
/// serve both requests. The pending call holds a clone of `arg`, keeping it
/// alive until it runs.
///
/// Pending calls run in the order they were first recorded, on this
/// thread, after it has left its read section: a call may take read locks,
/// wait for grace periods and record further calls (which run at the end of
/// the section it opens, or at once).
///
/// `f` is identified by its address, and Rust does not promise one address
/// per function: in optimised builds a small function often gets a copy in
/// each codegen unit that names it, so `call_local(f, &a)` written in two
/// places may pass two different pointers and record two calls. Take the
/// pointer once and pass that value everywhere (a `static F: fn(&T) = f;`
/// or a field set once, as [`IrqNotifier`](crate::virtio::IrqNotifier)
/// does). Conversely, two distinct functions with identical code may be
/// merged into one address and then deduplicate against each other.
///
/// ```
/// use rcu_defer::{call_local, read_lock};
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use std::sync::Arc;
///
/// fn notify(count: &AtomicUsize) {
///     count.fetch_add(1, Ordering::Relaxed);
/// }
///
/// let irqs = Arc::new(AtomicUsize::new(0));
/// {
///     let _pass = read_lock();
///     for _ in 0..64 {
///         call_local(notify, &irqs); // the first records, the rest are duplicates
///     }
///     assert_eq!(irqs.load(Ordering::Relaxed), 0);
/// } // the outermost section ends here: `notify` runs once
/// assert_eq!(irqs.load(Ordering::Relaxed), 1);
///
/// assert!(call_local(notify, &irqs)); // outside any section: runs at once
/// assert_eq!(irqs.load(Ordering::Relaxed), 2);
/// ```
pub fn call_local<T: ?Sized + 'static>(f: fn(&T), arg: &Arc<T>) -> bool {
    let recorded = DEFERRED.try_with(|deferred| {
        if !batching(deferred) {
            return None;
        }
        let key = (f as usize, Arc::as_ptr(arg) as *const () as usize);
        let mut pending = deferred.pending.borrow_mut();
        if !pending.insert_key(key) {
            return Some(false);
        }
        pending.push(LocalCall {
            f,
            arg: Arc::clone(arg),
        });
        drop(pending);
        mark_pending();
        Some(true)
    });
    match recorded {
        Ok(Some(recorded)) => recorded,
        // Not batching, or the thread is tearing down its thread-locals
        // (nothing could run the call later): call now.
        Ok(None) | Err(_) => {
            f(arg);
            true
        }
    }
}

/// Calls `f` when this thread's outermost read section or defer scope ends;
/// outside both, calls it now. No deduplication: every call is made.
///
/// ```
/// use rcu_defer::{call_local_fn, defer_scope};
/// use std::cell::Cell;
/// use std::rc::Rc;
///
/// let log = Rc::new(Cell::new(0));
/// let scope = defer_scope();
/// let l = log.clone();
/// call_local_fn(move || l.set(l.get() + 1));
/// assert_eq!(log.get(), 0);
/// drop(scope);
/// assert_eq!(log.get(), 1);
/// ```
pub fn call_local_fn<F: FnOnce() + 'static>(f: F) {
    let mut f = Some(f);
    let recorded = DEFERRED.try_with(|deferred| {
        if !batching(deferred) {
            return false;
        }
        let call = f.take().expect("taken once");
        deferred.pending.borrow_mut().push(FnCall(call));
        mark_pending();
        true
    });
    if !matches!(recorded, Ok(true)) {
        if let Some(f) = f {
            f();
        }
    }
}

/// Opens a defer scope: [`call_local`] and [`call_local_fn`] calls are
/// batched until the scope (and any read section around it) ends, without
/// entering a read section.
///
/// Use it where the batched code must block or wait for grace periods,
/// which a read section forbids (QEMU's `defer_call_begin`/`defer_call_end`).
/// Scopes and read guards nest in any order; the calls run when the last of
/// them ends.
///
/// ```
/// use rcu_defer::{defer_scope, synchronize_rcu};
/// let scope = defer_scope();
/// synchronize_rcu(); // allowed: a defer scope is not a read section
/// drop(scope);
/// ```
///
/// The scope belongs to its thread:
///
/// ```compile_fail
/// fn needs_send<T: Send>(_: T) {}
/// needs_send(rcu_defer::defer_scope());
/// ```
pub fn defer_scope() -> DeferScope {
    DEFERRED.with(|deferred| deferred.scopes.set(deferred.scopes.get() + 1));
    DeferScope {
        _not_send: PhantomData,
    }
}

/// An open defer scope; see [`defer_scope`]. Dropping the outermost scope
/// outside any read section runs the thread's pending calls.
///
/// # Panics
///
/// Dropping it resumes the first panic of a pending call, after all of them
/// have run (unless the thread is already unwinding; then such panics are
/// reported on stderr and dropped).
#[must_use = "calls are batched only while the scope is alive"]
#[derive(Debug)]
pub struct DeferScope {
    /// `!Send` and `!Sync`: the scope belongs to its thread.
    _not_send: PhantomData<*const ()>,
}

impl Drop for DeferScope {
    fn drop(&mut self) {
        let _ = DEFERRED.try_with(|deferred| {
            let scopes = deferred.scopes.get() - 1;
            deferred.scopes.set(scopes);
            if scopes == 0 && read_depth() == 0 && deferred.pending.borrow().has_pending() {
                deferred.run();
            }
        });
    }
}

/// Called by the read side when the outermost section ends and the thread
/// has marked pending calls.
#[cold]
#[inline(never)]
pub(crate) fn run_if_due() {
    let _ = DEFERRED.try_with(|deferred| {
        if deferred.scopes.get() == 0 {
            deferred.run();
        }
    });
}

impl Deferred {
    /// Runs every pending call in first-recorded order; see [`DeferScope`]'s
    /// `# Panics`. The thread is outside any read section and scope.
    fn run(&self) {
        let batch = self.pending.borrow_mut().start_run();
        if let Some(record) = current_record_if_registered() {
            record.set_deferred(false);
        }
        let unwinding = std::thread::panicking();
        let mut first_panic = None;
        for i in batch.0..batch.1 {
            // Clone the queue out of the borrow: the call may record more.
            let (queue, slot) = {
                let pending = self.pending.borrow();
                let (queue, slot) = pending.order[i];
                (Rc::clone(&pending.queues[queue]), slot)
            };
            if let Err(payload) = catch_unwind(AssertUnwindSafe(|| queue.run(slot))) {
                if unwinding {
                    eprintln!(
                        "rcu-defer: a deferred call panicked while the thread was already \
                         unwinding: {}; the panic is dropped",
                        panic_message(&*payload)
                    );
                } else if first_panic.is_none() {
                    first_panic = Some(payload);
                }
            }
        }
        let mut pending = self.pending.borrow_mut();
        pending.end_run(batch);
        if pending.has_pending() {
            // Recorded by the batch inside a scope or section it never
            // closed: keep them for that section's end.
            drop(pending);
            mark_pending();
        }
        if let Some(payload) = first_panic {
            resume_unwind(payload);
        }
    }
}
