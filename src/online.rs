//! Online threads: quiescent-state-based readers (liburcu's `urcu-qsbr`).
//!
//! An online thread's reader record holds the grace-period counter value at
//! which the thread last reported a quiescent state, with the `ONLINE` flag
//! (see `reader`). Its read sections change only the depth bits of that
//! word, with no fence and nothing a writer looks at. A writer's scan reads
//! online and ordinary records alike: a record blocks grace period `gp`
//! while it holds a value other than `gp` and 0, and an online record holds
//! `gp` only once its thread has reported a quiescent state after grace
//! period `gp` began.
//!
//! Orderings (each names its pair):
//!
//! - `quiescent`: an Acquire load of the counter, pairing with the leader's
//!   fence before it advanced the counter (so the thread's later loads see
//!   what the writer unpublished before that grace period), then a Release
//!   store of the new value, pairing with the writer's Acquire fence after
//!   its scan (so the thread's earlier loads happen before the free). No
//!   full fence is needed for either; liburcu's `rcu_quiescent_state`
//!   brackets the store with two. The store is followed by the wake-up
//!   check of an ordinary section's end (the flavor's fence, then the
//!   `WAITING` flag), which pairs with the writer's fence after it sets
//!   that flag. A quiescent state at a counter value already published
//!   stores nothing.
//! - going online publishes the counter value and then issues the flavor's
//!   fence, as an ordinary outermost entry does (its pair: the writer's
//!   fence before its scan); going offline publishes 0 exactly as an
//!   ordinary section's end does. Coming back online inside a section
//!   opened while offline publishes that section's counter value, with no
//!   fence (the section's entry fence already ordered it); a writer that
//!   still reads the offline 0 in the online state judges the thread by
//!   its section word, whose every later store that ends the protection is
//!   a Release (see `Local::come_back_online`).

use crate::detect::Error;
use crate::reader::{with_local, Local};
use std::fmt;
use std::marker::PhantomData;
use std::panic::Location;

/// Makes the calling thread an *online* (quiescent-state-based) reader
/// until the returned handle is dropped.
///
/// While the thread is online, its read sections stay in thread-local
/// memory (a depth counter, and where the outermost one began): no store
/// that writers look at and no fence, whatever the
/// [`Flavor`](crate::Flavor). In exchange, grace periods wait for the thread
/// itself, not for its sections: a grace period ends only once every online
/// thread has reported a quiescent state after it began
/// ([`Online::quiescent`]), gone offline ([`Online::offline`], dropping the
/// handle) or exited, and every ordinary read section that began before it
/// has ended. This is liburcu's `urcu-qsbr`, DPDK's `rte_rcu_qsbr` and Open
/// vSwitch's `ovsrcu`: a polling I/O thread reports once per loop
/// iteration. So what an online thread loads stays
/// protected until its next quiescent state or until it goes offline,
/// inside a read section or not (DPDK's readers have no sections); a
/// section is still what [`RcuCell::read`](crate::RcuCell::read) asks for,
/// what [`call_local`](crate::call_local) batches end with, and what the
/// deadlock checks see.
///
/// Online and ordinary threads mix freely. An online thread keeps
/// [`read_lock`](crate::read_lock) as its read-side API (sections still
/// nest, [`call_local`](crate::call_local) calls still run when the
/// outermost one ends, and waiting for a grace period inside one is still
/// refused). [`synchronize_rcu`](crate::synchronize_rcu),
/// [`drain_call_rcu`](crate::drain_call_rcu) and the other waits, called
/// outside any read section, take the thread offline for the wait and back
/// online after it, as liburcu does. A thread that blocks for long while
/// online holds up every grace period (and is named in the stall report,
/// with where it went online and where it last reported a quiescent state):
/// block inside [`Online::offline`].
///
/// What mixing costs, by flavor. In the default
/// [`Flavor::Membarrier`](crate::Flavor::Membarrier), a grace period sends
/// the expedited barrier (`membarrier(2)`: an interrupt to every CPU that
/// runs a thread of the process) only while some thread is an *ordinary*
/// reader: one that has entered a read section while not online and has
/// not exited since, or an online thread inside [`Online::offline`] or
/// waiting for a grace period. A program whose readers are all online
/// waits for grace periods with plain fences, as liburcu's urcu-qsbr does;
/// one ordinary reader makes every grace period pay the barrier and
/// interrupt the online threads too. Where grace periods are frequent and
/// ordinary sections few, call
/// [`set_flavor(Flavor::Fence)`](crate::set_flavor) first thing in `main`:
/// ordinary sections then pay a real fence each, grace periods no system
/// call, and online threads nothing either way.
///
/// A thread that exits while online goes offline; so does one that forks,
/// in neither process: the child keeps the forking thread's online state.
///
/// ```
/// use rcu_defer::{online, read_lock, RcuCell};
/// use std::sync::Arc;
/// use std::thread;
///
/// let table = Arc::new(RcuCell::new(vec![1, 2, 3]));
/// let poller = {
///     let table = Arc::clone(&table);
///     thread::spawn(move || {
///         let online = online();
///         let mut sum = 0;
///         for _ in 0..1000 {
///             {
///                 let guard = read_lock(); // a counter increment
///                 sum += table.read(&guard).iter().sum::<i32>();
///             }
///             online.quiescent(); // nothing read before this is still in use
///         }
///         // Blocking while online would hold up writers: go offline.
///         online.offline(|| thread::sleep(std::time::Duration::from_millis(1)));
///         sum
///     })
/// };
/// table.replace(vec![4, 5, 6]); // the old vector is dropped after a grace period
/// assert!(poller.join().unwrap() > 0);
/// rcu_defer::drain_call_rcu();
/// ```
///
/// # Panics
///
/// If the calling thread is inside a read section (its sections would
/// change meaning halfway), or already has an `Online` handle.
#[track_caller]
pub fn online() -> Online {
    let at = Location::caller();
    let active = with_local(|local| {
        if let (depth @ 1.., entered_at) = local.section() {
            panic!(
                "rcu-defer: online() was called inside a read section (depth {depth}, entered \
                 at {}); go online outside any read section",
                DisplayLocation(entered_at)
            );
        }
        if let Some(first) = local.online_handle.get() {
            panic!(
                "rcu-defer: online() was called on a thread that is already online (its \
                 Online handle was made at {first}); a thread has at most one handle"
            );
        }
        let active = local.go_online(at);
        if active {
            local.online_handle.set(Some(at));
        }
        active
    })
    .unwrap_or(false);
    Online {
        active,
        _not_send: PhantomData,
    }
}

/// The calling thread is online (a quiescent-state-based reader) while this
/// handle lives; see [`online`]. Dropping it takes the thread offline (at
/// the end of the current read section, if one is open).
///
/// The handle belongs to its thread: it is neither `Send` nor `Sync`.
///
/// ```compile_fail,E0277
/// fn needs_send<T: Send>(_: T) {}
/// needs_send(rcu_defer::online());
/// ```
///
/// ```compile_fail,E0277
/// fn needs_sync<T: Sync>(_: &T) {}
/// needs_sync(&rcu_defer::online());
/// ```
#[must_use = "the thread goes offline again as soon as the handle is dropped"]
pub struct Online {
    /// Whether the thread really went online: `false` only for a thread
    /// that was already exiting (its reader registration gone), which stays
    /// an ordinary reader, for which every method is still correct.
    active: bool,
    /// A raw pointer makes the handle `!Send` and `!Sync`.
    _not_send: PhantomData<*const ()>,
}

impl Online {
    /// Reports a quiescent state: the thread holds no reference to
    /// RCU-protected data that it obtained before this call. Grace periods
    /// that began before the call may end as far as this thread is
    /// concerned.
    ///
    /// Cheap: a load of the grace-period counter and, if a grace period has
    /// begun since the thread's last report, one store and the check for a
    /// waiting writer. No fence in the default flavor. Call it where the
    /// thread holds nothing, typically once per iteration of its main loop.
    /// Nothing to do while the thread is offline.
    ///
    /// ```
    /// let online = rcu_defer::online();
    /// online.quiescent();
    /// ```
    ///
    /// # Panics
    ///
    /// Inside a read section, where it would end the section's protection
    /// early; the message names where the section was entered (see
    /// [`try_quiescent`](Online::try_quiescent)).
    #[track_caller]
    #[inline]
    pub fn quiescent(&self) {
        if let Err(e) = self.try_quiescent() {
            in_section_panic(e);
        }
    }

    /// Like [`quiescent`](Online::quiescent), but inside a read section
    /// returns [`Error::InReadSection`] instead of panicking (and reports
    /// nothing).
    ///
    /// ```
    /// use rcu_defer::{online, read_lock, Error};
    /// let online = online();
    /// let guard = read_lock();
    /// assert!(matches!(online.try_quiescent(), Err(Error::InReadSection { depth: 1, .. })));
    /// drop(guard);
    /// assert!(online.try_quiescent().is_ok());
    /// ```
    #[track_caller]
    #[inline]
    pub fn try_quiescent(&self) -> Result<(), Error> {
        let at = Location::caller();
        match with_local(|local| local.quiescent(at)) {
            Some(Err(())) => Err(in_section_error("Online::quiescent")),
            _ => Ok(()),
        }
    }

    /// Runs `f` with the thread offline, and brings it back online when `f`
    /// returns or unwinds. Going offline counts as a quiescent state, and
    /// grace periods do not wait for an offline thread: block here (a
    /// `poll(2)` with a timeout, a lock, a channel), not while online.
    ///
    /// Inside `f` the thread is an ordinary reader: its read sections are
    /// published and waited for as any ordinary thread's. A section that
    /// `f` opens and leaves open (it returns the guard, or forgets it)
    /// keeps its protection: the thread comes back online no later than
    /// where that section began, so what it reads there stays protected
    /// until its first quiescent state after the section ends, and
    /// [`quiescent`](Online::quiescent) is refused until then.
    ///
    /// ```
    /// use rcu_defer::{online, read_depth, read_lock};
    /// let online = online();
    /// let guard = online.offline(read_lock); // a section opened offline
    /// assert_eq!(read_depth(), 1);
    /// assert!(online.try_quiescent().is_err()); // the section is still open
    /// drop(guard);
    /// online.quiescent();
    /// ```
    ///
    /// ```
    /// let online = rcu_defer::online();
    /// let n = online.offline(|| {
    ///     rcu_defer::synchronize_rcu(); // does not wait for this thread
    ///     42
    /// });
    /// assert_eq!(n, 42);
    /// ```
    ///
    /// # Panics
    ///
    /// Inside a read section, before calling `f` (going offline would end
    /// the section's protection early), with the location where the section
    /// was entered; and whatever `f` panics with (the thread is back online
    /// then).
    #[track_caller]
    pub fn offline<R>(&self, f: impl FnOnce() -> R) -> R {
        /// Brings the thread back online however `f` ends.
        struct BackOnline(bool);
        impl Drop for BackOnline {
            fn drop(&mut self) {
                if self.0 {
                    let _ = with_local(Local::come_back_online);
                }
            }
        }
        let went = match with_local(Local::go_offline) {
            Some(Err(())) => in_section_panic(in_section_error("Online::offline")),
            Some(Ok(went)) => went,
            None => false,
        };
        let _back = BackOnline(went);
        f()
    }
}

impl Drop for Online {
    fn drop(&mut self) {
        if self.active {
            let _ = with_local(Local::drop_online);
        }
    }
}

impl fmt::Debug for Online {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let online = with_local(Local::is_online).unwrap_or(false);
        f.debug_struct("Online").field("online", &online).finish()
    }
}

/// The error for an operation that would end the current read section's
/// protection early.
#[track_caller]
fn in_section_error(op: &'static str) -> Error {
    let (depth, entered_at) = with_local(Local::section).unwrap_or((0, None));
    Error::InReadSection {
        op,
        depth,
        entered_at: entered_at.unwrap_or(Location::caller()),
    }
}

#[cold]
#[track_caller]
fn in_section_panic(e: Error) -> ! {
    match e {
        Error::InReadSection {
            op,
            depth,
            entered_at,
        } => panic!(
            "rcu-defer: {op} was called inside a read section (depth {depth}, outermost \
             section entered at {entered_at}); it would end the section's protection early: \
             call it where the thread holds no read guard"
        ),
        other => panic!("rcu-defer: {other}"),
    }
}

/// A location that may be unknown, for messages.
struct DisplayLocation(Option<&'static Location<'static>>);

impl fmt::Display for DisplayLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(at) => write!(f, "{at}"),
            None => f.write_str("an unknown location"),
        }
    }
}
