//! Claims about online (quiescent-state-based) threads: grace periods wait
//! for an online thread until it reports a quiescent state, goes offline or
//! exits, not for its read sections; waits from an online thread go offline
//! for their duration; misuse is refused with where the section began.
//!
//! An online thread holds up every grace period of the process, so the
//! tests of this file run one at a time.

mod common;

use common::{recv, within};
use rcu_defer::virtio::{IrqNotifier, Notify};
use rcu_defer::{
    call_local, call_rcu, cond_synchronize_rcu, drain_call_rcu, get_state_synchronize_rcu, online,
    read_depth, read_lock, synchronize_rcu, synchronize_rcu_timeout, try_synchronize_rcu, Error,
    Online, RcuCell, ReadGuard, StallReport,
};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

/// Long enough for a grace period that nothing holds up.
const SHORT: Duration = Duration::from_millis(200);

/// A grace period that a wake-up ends returns well within this; one that
/// waits for its stall timeout (21 s) or a poll does not.
const PROMPT: Duration = Duration::from_secs(5);

fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the test asks of its online thread.
enum Do {
    Quiescent,
    Offline(mpsc::Receiver<()>),
    Drop,
    EnterSection,
    LeaveSection,
    Exit,
    /// Runs a step with the thread's handle and its held guard (a failed
    /// assertion in it ends the thread, and the test with it).
    Run(Step),
}

/// A step that `Do::Run` runs on the online thread.
type Step = Box<dyn FnOnce(&Online, &mut Option<ReadGuard>) + Send>;

/// A named online thread that does what it is told, and acknowledges.
struct OnlineThread {
    orders: mpsc::Sender<Do>,
    done: mpsc::Receiver<u32>,
    handle: thread::JoinHandle<()>,
    /// The line of its `online()` call.
    online_line: u32,
}

impl OnlineThread {
    fn start(name: &str) -> OnlineThread {
        let (orders, orders_rx) = mpsc::channel::<Do>();
        let (done_tx, done) = mpsc::channel();
        let handle = thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let line = line!() + 1;
                let mut handle = Some(online());
                done_tx.send(line).unwrap();
                let mut guard = None;
                for order in orders_rx {
                    let line = line!() + 2;
                    match order {
                        Do::Quiescent => handle.as_ref().unwrap().quiescent(),
                        Do::Offline(until) => {
                            handle.as_ref().unwrap().offline(|| {
                                done_tx.send(0).unwrap();
                                until.recv().unwrap();
                            });
                        }
                        Do::Drop => drop(handle.take()),
                        Do::EnterSection => guard = Some(read_lock()),
                        Do::LeaveSection => drop(guard.take()),
                        Do::Run(step) => step(handle.as_ref().unwrap(), &mut guard),
                        Do::Exit => {
                            // Leaves online: the handle is leaked, the thread
                            // goes offline in its exit destructor.
                            std::mem::forget(handle.take());
                            done_tx.send(line).unwrap();
                            return;
                        }
                    }
                    done_tx.send(line).unwrap();
                }
            })
            .unwrap();
        let online_line = recv(&done, "the thread to go online");
        OnlineThread {
            orders,
            done,
            handle,
            online_line,
        }
    }

    /// Has the thread do `order`; returns the line it did it at.
    fn order(&self, order: Do) -> u32 {
        self.orders.send(order).unwrap();
        recv(&self.done, "the online thread to acknowledge")
    }

    fn finish(self) {
        drop(self.orders);
        self.handle.join().unwrap();
    }
}

/// A grace period started now times out, held up by one reader: returns
/// the report.
fn held_up() -> StallReport {
    match synchronize_rcu_timeout(SHORT) {
        Err(Error::Timeout(report)) => report,
        other => panic!("a grace period was not held up: {other:?}"),
    }
}

/// Starts `synchronize_rcu` on a thread of its own; the returned receiver
/// gets how long it took.
fn writer() -> mpsc::Receiver<Duration> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let started = Instant::now();
        synchronize_rcu();
        let _ = tx.send(started.elapsed());
    });
    rx
}

/// The writer has not returned after `SHORT`: it is waiting (asleep by
/// then) for the online thread.
fn still_waiting(writer: &mpsc::Receiver<Duration>) {
    assert!(
        writer.recv_timeout(SHORT).is_err(),
        "synchronize_rcu returned while an online thread had reported no quiescent state"
    );
}

/// The writer returns promptly: woken, not timed out.
fn returns_promptly(writer: &mpsc::Receiver<Duration>, after: &str) {
    let took = writer
        .recv_timeout(PROMPT)
        .unwrap_or_else(|_| panic!("the sleeping writer was not woken by {after}"));
    assert!(took < PROMPT, "took {took:?}");
}

#[test]
fn an_online_thread_outside_any_section_holds_up_grace_periods_until_its_quiescent_state_wakes_the_writer(
) {
    let _serial = serial();
    let t = OnlineThread::start("poller");
    let report = held_up();
    assert_eq!(report.readers().len(), 1, "{report}");
    let r = &report.readers()[0];
    assert_eq!(r.thread_name(), Some("poller"));
    assert!(r.is_online() && r.depth() == 0, "{report}");
    let online_at = r.went_online_at().expect("where it went online");
    assert_eq!(
        (online_at.file(), online_at.line()),
        (file!(), t.online_line)
    );
    assert_eq!(r.last_quiescent_at(), None, "{report}");
    let text = report.to_string();
    assert!(
        text.contains("online since") && text.contains("no quiescent state reported"),
        "{text}"
    );

    let w = writer();
    still_waiting(&w);
    let quiescent_line = t.order(Do::Quiescent);
    returns_promptly(&w, "the quiescent state");

    // The next grace period waits again, and names the last report.
    let report = held_up();
    let at = report.readers()[0].last_quiescent_at().expect("a report");
    assert_eq!((at.file(), at.line()), (file!(), quiescent_line));
    t.order(Do::Quiescent);
    t.order(Do::Drop);
    synchronize_rcu_timeout(PROMPT).expect("after the handle was dropped");
    t.finish();
}

#[test]
fn online_read_sections_publish_nothing_the_grace_period_waits_for_the_thread_not_its_sections() {
    let _serial = serial();
    let t = OnlineThread::start("sections");
    t.order(Do::Quiescent);
    // A section entered and left: nothing published, the thread still
    // holds up the grace period that began before its last report.
    let w = writer();
    still_waiting(&w);
    t.order(Do::EnterSection);
    t.order(Do::LeaveSection);
    still_waiting(&w);
    t.order(Do::Quiescent);
    returns_promptly(&w, "the quiescent state after the section");
    t.order(Do::Drop);
    t.finish();
}

#[test]
fn offline_lets_grace_periods_complete_and_the_thread_is_waited_for_again_after_it() {
    let _serial = serial();
    let t = OnlineThread::start("offline");
    let w = writer();
    still_waiting(&w);
    let (release, until) = mpsc::channel();
    t.orders.send(Do::Offline(until)).unwrap();
    recv(&t.done, "the thread to go offline");
    returns_promptly(&w, "going offline");
    synchronize_rcu_timeout(PROMPT).expect("grace periods do not wait for an offline thread");
    release.send(()).unwrap();
    recv(&t.done, "the thread to come back online");
    let report = held_up();
    assert!(report.readers()[0].is_online(), "{report}");
    t.order(Do::Drop);
    t.finish();
}

#[test]
fn dropping_the_handle_takes_the_thread_offline_and_wakes_the_writer_waiting_for_it() {
    let _serial = serial();
    let t = OnlineThread::start("dropper");
    let w = writer();
    still_waiting(&w);
    t.order(Do::Drop);
    returns_promptly(&w, "the handle's drop");
    t.finish();
}

#[test]
fn a_thread_that_exits_online_goes_offline_and_wakes_the_writer_waiting_for_it() {
    let _serial = serial();
    let t = OnlineThread::start("exiter");
    let w = writer();
    still_waiting(&w);
    t.order(Do::Exit);
    t.handle.join().unwrap();
    returns_promptly(&w, "the thread's exit");
    synchronize_rcu_timeout(PROMPT).expect("an exited online thread holds nothing up");
}

#[test]
fn dropping_the_handle_inside_a_section_keeps_the_section_published_until_it_ends() {
    let _serial = serial();
    let t = OnlineThread::start("drop-in-section");
    t.order(Do::EnterSection);
    t.order(Do::Drop);
    let report = held_up();
    let r = &report.readers()[0];
    assert!(!r.is_online() && r.depth() == 1, "{report}");
    let w = writer();
    still_waiting(&w);
    t.order(Do::LeaveSection);
    returns_promptly(&w, "the end of the section");
    t.finish();
}

#[test]
fn waits_from_an_online_thread_go_offline_for_their_duration_and_it_is_online_after() {
    let _serial = serial();
    let (tx, rx) = mpsc::channel();
    let (go, wait_go) = mpsc::channel::<()>();
    let t = thread::Builder::new()
        .name("waiting-poller".to_owned())
        .spawn(move || {
            let online = online();
            synchronize_rcu();
            try_synchronize_rcu().unwrap();
            synchronize_rcu_timeout(PROMPT).unwrap();
            call_rcu(|| ());
            drain_call_rcu();
            cond_synchronize_rcu(get_state_synchronize_rcu());
            let cell = RcuCell::new(1);
            assert_eq!(cell.replace_sync(2), 1);
            tx.send(()).unwrap();
            wait_go.recv().unwrap();
            drop(online);
        })
        .unwrap();
    // Each wait above would wait for the thread's own quiescent state if it
    // stayed online.
    within("the online thread's waits", move || rx.recv().unwrap());
    let report = held_up();
    assert_eq!(
        report.readers()[0].thread_name(),
        Some("waiting-poller"),
        "back online after the waits: {report}"
    );
    go.send(()).unwrap();
    t.join().unwrap();
}

#[test]
fn waiting_inside_an_online_read_section_is_refused_with_where_it_began() {
    let _serial = serial();
    within("the refusals", || {
        let online = online();
        let line = line!() + 1;
        let guard = read_lock();
        match try_synchronize_rcu() {
            Err(Error::InReadSection {
                depth: 1,
                entered_at,
                ..
            }) => assert_eq!((entered_at.file(), entered_at.line()), (file!(), line)),
            other => panic!("not refused: {other:?}"),
        }
        match online.try_quiescent() {
            Err(Error::InReadSection { op, entered_at, .. }) => {
                assert_eq!(op, "Online::quiescent");
                assert_eq!(entered_at.line(), line);
            }
            other => panic!("quiescent inside a section not refused: {other:?}"),
        }
        let panicked = catch_unwind(AssertUnwindSafe(|| online.quiescent()))
            .expect_err("quiescent() inside a section must panic");
        let text = common::panic_text(&*panicked);
        assert!(text.contains(&format!("{}:{line}", file!())), "{text}");
        let panicked = catch_unwind(AssertUnwindSafe(|| online.offline(|| ())))
            .expect_err("offline() inside a section must panic");
        assert!(common::panic_text(&*panicked).contains("Online::offline"));
        drop(guard);
        online.quiescent();
        online.offline(|| ());
    });
}

#[test]
fn an_online_threads_refusals_name_the_outermost_section_not_a_nested_one() {
    let _serial = serial();
    within("the refusals, nested", || {
        let online = online();
        let line = line!() + 1;
        let outer = read_lock();
        // Nested sections opened and closed, and one still open: none of
        // them is where the section began.
        drop(read_lock());
        let inner = read_lock();
        drop(read_lock());
        match online.try_quiescent() {
            Err(Error::InReadSection {
                depth: 2,
                entered_at,
                ..
            }) => {
                assert_eq!((entered_at.file(), entered_at.line()), (file!(), line));
            }
            other => panic!("quiescent inside a nested section not refused: {other:?}"),
        }
        drop(inner);
        match try_synchronize_rcu() {
            Err(Error::InReadSection {
                depth: 1,
                entered_at,
                ..
            }) => {
                assert_eq!(entered_at.line(), line);
            }
            other => panic!("not refused: {other:?}"),
        }
        drop(outer);
        // The next outermost section records its own location.
        let line = line!() + 1;
        let guard = read_lock();
        match online.try_quiescent() {
            Err(Error::InReadSection { entered_at, .. }) => assert_eq!(entered_at.line(), line),
            other => panic!("not refused: {other:?}"),
        }
        drop(guard);
        online.quiescent();
    });
}

#[test]
fn a_second_handle_and_going_online_inside_a_section_panic() {
    let _serial = serial();
    within("the refusals", || {
        let first = online();
        let second = catch_unwind(|| drop(online()));
        assert!(common::panic_text(&*second.unwrap_err()).contains("already online"));
        drop(first);
        let guard = read_lock();
        let inside = catch_unwind(|| drop(online()));
        assert!(common::panic_text(&*inside.unwrap_err()).contains("inside a read section"));
        drop(guard);
        drop(online());
    });
}

fn bump(count: &AtomicUsize) {
    count.fetch_add(1, Ordering::SeqCst);
}

#[test]
fn call_local_on_an_online_thread_runs_once_at_the_end_of_the_outermost_section() {
    let _serial = serial();
    within("the batch", || {
        let online = online();
        let count = Arc::new(AtomicUsize::new(0));
        // One function pointer value for every call: deduplication is by
        // pointer, and Miri gives each use of a function's name an address
        // of its own now and then (compiled code may too, across codegen
        // units).
        let bump: fn(&AtomicUsize) = bump;
        for pass in 1..=3 {
            {
                let _pass = read_lock();
                for _ in 0..64 {
                    let _inner = read_lock();
                    call_local(bump, &count);
                }
                assert_eq!(count.load(Ordering::SeqCst), pass - 1);
            }
            assert_eq!(count.load(Ordering::SeqCst), pass);
            online.quiescent();
        }
        // A section that deferred a call leaves the thread online: a grace
        // period that begins after the section still waits for the
        // thread's next quiescent state, and only for that.
        {
            let _pass = read_lock();
            call_local(bump, &count);
        }
        let held = thread::spawn(|| synchronize_rcu_timeout(SHORT))
            .join()
            .unwrap();
        assert!(
            matches!(held, Err(Error::Timeout(_))),
            "the thread went offline at the end of a section that deferred a call: {held:?}"
        );
        online.quiescent();
        let writer = thread::spawn(synchronize_rcu);
        online.offline(|| writer.join().unwrap());
    });
}

/// Has the online thread run `step` (see `Do::Run`).
fn run(t: &OnlineThread, step: impl FnOnce(&Online, &mut Option<ReadGuard>) + Send + 'static) {
    t.order(Do::Run(Box::new(step)));
}

/// The thread is inside a section of depth 1 that it may not end with a
/// quiescent state.
fn in_one_section_quiescent_refused(online: &Online) {
    assert_eq!(read_depth(), 1, "the section opened while offline was lost");
    assert!(
        matches!(
            online.try_quiescent(),
            Err(Error::InReadSection { depth: 1, .. })
        ),
        "a quiescent state was accepted inside the section opened while offline"
    );
}

#[test]
fn a_guard_returned_from_offline_keeps_its_section_and_the_thread_holds_up_grace_periods_until_a_quiescent_state_after_it(
) {
    let _serial = serial();
    let t = OnlineThread::start("offline-guard");
    run(&t, |online, guard| *guard = Some(online.offline(read_lock)));
    run(&t, |online, _| in_one_section_quiescent_refused(online));
    let report = held_up();
    assert_eq!(report.readers()[0].depth(), 1, "{report}");
    let w = writer();
    still_waiting(&w);
    t.order(Do::LeaveSection);
    run(&t, |_, _| assert_eq!(read_depth(), 0));
    // Online again at the section's grace-period value: what the thread
    // read in the section stays protected until its next quiescent state.
    still_waiting(&w);
    t.order(Do::Quiescent);
    returns_promptly(&w, "the quiescent state after the section");
    t.order(Do::Drop);
    t.finish();
}

/// Counts its signals, thread-safely.
#[derive(Default)]
struct Counting(AtomicUsize);

impl Notify for Counting {
    fn signal(&self) -> std::io::Result<()> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

#[test]
fn calls_deferred_in_a_section_returned_from_offline_run_when_it_ends() {
    let _serial = serial();
    within("the deferred calls", || {
        let online = online();
        let irq = IrqNotifier::new(Counting::default());
        let count = Arc::new(AtomicUsize::new(0));
        let guard = online.offline(|| {
            let guard = read_lock();
            irq.notify();
            call_local(bump, &count);
            guard
        });
        in_one_section_quiescent_refused(&online);
        assert_eq!(
            irq.stats().signalled,
            0,
            "signalled before the section ended"
        );
        assert_eq!(
            count.load(Ordering::SeqCst),
            0,
            "ran before the section ended"
        );
        drop(guard);
        assert_eq!(read_depth(), 0);
        assert_eq!(irq.stats().signalled, 1, "the queued signal was lost");
        assert_eq!(irq.notifier().0.load(Ordering::SeqCst), 1);
        assert_eq!(
            count.load(Ordering::SeqCst),
            1,
            "the call_local call was lost"
        );
        online.quiescent();
        drop(online);
        synchronize_rcu_timeout(PROMPT).expect("nothing holds up grace periods");
    });
}

#[test]
fn a_section_left_open_by_the_stall_handler_of_an_online_threads_wait_keeps_its_protection() {
    const TEST: &str =
        "a_section_left_open_by_the_stall_handler_of_an_online_threads_wait_keeps_its_protection";
    if common::is_child(TEST) {
        thread_local! {
            static KEPT: std::cell::RefCell<Vec<ReadGuard>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        // The stall handler runs on the waiting thread, which is offline for
        // the wait; it leaves a section open behind it.
        rcu_defer::set_stall_timeout(Some(Duration::from_millis(50)));
        rcu_defer::set_stall_handler(|_| KEPT.with(|kept| kept.borrow_mut().push(read_lock())));
        let holder = common::hold_a_section(Duration::from_millis(300));
        let online = online();
        synchronize_rcu();
        holder.join();
        assert_eq!(
            KEPT.with(|kept| kept.borrow().len()),
            1,
            "the stall handler ran here"
        );
        in_one_section_quiescent_refused(&online);
        assert!(
            matches!(
                thread::spawn(|| synchronize_rcu_timeout(SHORT))
                    .join()
                    .unwrap(),
                Err(Error::Timeout(_))
            ),
            "a grace period ended while the stall handler's section was open"
        );
        KEPT.with(|kept| kept.borrow_mut().clear());
        assert_eq!(read_depth(), 0);
        online.quiescent();
        drop(online);
        synchronize_rcu_timeout(PROMPT).expect("nothing holds up grace periods");
        return;
    }
    common::run_child(TEST, common::HANG_LIMIT);
}

#[test]
fn a_value_read_in_a_section_returned_from_offline_is_not_freed_while_the_section_is_open() {
    let _serial = serial();
    within("the reader and the writer", || {
        // On the heap, so that Miri reports a read of it after a free.
        let cell = Arc::new(RcuCell::new(vec![1u64; 4]));
        let (to_main, from_reader) = mpsc::channel();
        let (to_reader, from_main) = mpsc::channel::<()>();
        let reader = {
            let cell = Arc::clone(&cell);
            thread::spawn(move || {
                let online = online();
                let guard = online.offline(read_lock);
                let seen = cell.read(&guard);
                to_main.send(true).unwrap();
                from_main.recv().unwrap();
                // A polling loop's quiescent state, reached with the section
                // still open while a writer waits: refused, or the writer
                // frees `seen`.
                to_main.send(online.try_quiescent().is_err()).unwrap();
                from_main.recv().unwrap();
                let sum: u64 = seen.iter().sum();
                drop(guard);
                online.quiescent();
                sum
            })
        };
        recv(&from_reader, "the reader to read");
        // The writer frees the old value as soon as replace_sync returns.
        let writer = {
            let cell = Arc::clone(&cell);
            thread::spawn(move || assert_eq!(cell.replace_sync(vec![2; 4]), vec![1; 4]))
        };
        thread::sleep(SHORT);
        to_reader.send(()).unwrap();
        let refused = recv(&from_reader, "the reader's quiescent state");
        thread::sleep(SHORT);
        let early = writer.is_finished();
        to_reader.send(()).unwrap();
        assert_eq!(reader.join().unwrap(), 4, "the reader read a freed value");
        assert!(refused, "a quiescent state was accepted inside the section");
        assert!(
            !early,
            "replace_sync returned while a section opened offline was still open"
        );
        writer.join().unwrap();
    });
}
