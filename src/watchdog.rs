//! The held-notification watchdog: a read section that keeps guest
//! notifications queued (or whose queued signal does not return) for longer
//! than the stall timeout is reported, even when no writer waits for a
//! grace period.
//!
//! A batched [`IrqNotifier::notify`](crate::virtio::IrqNotifier::notify)
//! queues its signal to run when the thread's outermost read section ends.
//! A section that does not end (a guest-memory handle held across a
//! blocking read of a kick eventfd, say) then holds back the guest's
//! interrupt, and the guest and the device wait for each other with no
//! grace period involved, so no stall report would ever name it. And a
//! queued signal that blocks (a `Notify` that takes a lock the code around
//! the section still holds) hangs the thread at the section's end.
//!
//! Each thread's record carries a `HeldWord` (`reader/held.rs`): zero while no signal is
//! queued; otherwise a sequence number that identifies the section, how
//! many signals it has queued, and whether they are running. The owner
//! writes it with plain stores, when a section queues a new notifier and
//! when its queued signals run, never on the per-request path of an
//! already queued notifier. A background thread, `rcu-watchdog`, started
//! with the first [`IrqNotifier`](crate::virtio::IrqNotifier), looks at the
//! words now and then: one that stays the same for longer than the stall
//! timeout ([`set_stall_timeout`](crate::set_stall_timeout)) is reported
//! once, as a [`ReportKind::HeldNotification`](crate::ReportKind::HeldNotification).

#[cfg(not(loom))]
pub(crate) use thread::ensure_started;

#[cfg(loom)]
pub(crate) fn ensure_started() {}

#[cfg(not(loom))]
mod thread {
    use crate::detect::stall_timeout;
    use crate::fork;
    use crate::reader::held::{HeldSection, COUNT_MASK, RUNNING};
    use crate::reader::registry;
    use crate::report::report;
    use crate::sync::AtomicU64;
    use crate::sync::{global, Ordering};
    use crate::sys;
    use std::collections::HashMap;
    use std::time::{Duration, Instant};

    global! {
        /// `fork::generation() + 1` of the process that started the
        /// watchdog thread; 0 if none has. A forked child sees its
        /// parent's value with a lower generation, and starts its own.
        static STARTED: AtomicU64 = AtomicU64::new(0);
    }

    /// How often the watchdog looks when reports are off.
    const IDLE_PERIOD: Duration = Duration::from_secs(1);

    /// Starts the watchdog thread, once per process (a forked child starts
    /// its own). Cheap after the first call: one atomic load.
    pub(crate) fn ensure_started() {
        let wanted = fork::generation() + 1;
        // Relaxed: nothing is published with the flag; at worst two
        // threads race and one of them loses the exchange below.
        let seen = STARTED.load(Ordering::Relaxed);
        if seen == wanted {
            return;
        }
        if STARTED
            .compare_exchange(seen, wanted, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        let started = if fork::generation() > 0 {
            sys::spawn_after_fork(c"rcu-watchdog", watch)
        } else {
            std::thread::Builder::new()
                .name("rcu-watchdog".to_owned())
                .spawn(watch)
                .map(drop)
        };
        if let Err(e) = started {
            report!(
                Config,
                "cannot start the rcu-watchdog thread ({e}): guest notifications that a read \
                 section holds back are not reported"
            );
        }
    }

    /// What the watchdog remembers of a held section between looks.
    struct Seen {
        word: u64,
        since: Instant,
        reported: bool,
    }

    /// The watchdog thread's body: never returns.
    fn watch() {
        let mut seen: HashMap<usize, Seen> = HashMap::new();
        loop {
            let Some(limit) = stall_timeout() else {
                seen.clear();
                std::thread::sleep(IDLE_PERIOD);
                continue;
            };
            // Four looks per timeout: a held section is reported between
            // one and one and a quarter timeouts after it was first seen.
            let period = (limit / 4).clamp(Duration::from_millis(5), Duration::from_secs(5));
            std::thread::sleep(period);
            let held = registry().held_sections();
            let now = Instant::now();
            seen.retain(|key, _| held.iter().any(|h| h.key == *key));
            for section in held {
                let entry = seen.entry(section.key).or_insert(Seen {
                    word: section.word,
                    since: now,
                    reported: false,
                });
                if entry.word != section.word {
                    *entry = Seen {
                        word: section.word,
                        since: now,
                        reported: false,
                    };
                }
                let held_for = now - entry.since;
                if !entry.reported && held_for >= limit {
                    entry.reported = true;
                    report_held(&section, held_for);
                }
            }
        }
    }

    /// Makes the report for a section held for at least `held_for`.
    fn report_held(section: &HeldSection, held_for: Duration) {
        let count = (section.word & COUNT_MASK) >> 1;
        let s = if count == 1 { "" } else { "s" };
        let who = match &section.owner {
            Some(owner) => owner.to_string(),
            None => "a thread".to_owned(),
        };
        let at = match section.entered_at {
            Some(at) => format!("entered at {at}"),
            None => "entry point unknown".to_owned(),
        };
        if section.word & RUNNING != 0 {
            report!(
                HeldNotification,
                "a queued guest notification has been running for at least {held_for:.1?} on \
                 {who} (read section {at}): its Notify::signal does not return. A queued signal \
                 runs as the outermost read section ends, on the thread that queued it, while \
                 the code around the section still holds what it held then: it must not block \
                 nor take a lock that code may hold (VringRwLock::signal_used_queue called \
                 while the vring's get_mut() guard is alive hangs like this; use \
                 rcu_defer::vhost_user, whose notifier takes no vring lock)"
            );
        } else {
            report!(
                HeldNotification,
                "{who} has held back {count} guest notification{s} for at least \
                 {held_for:.1?}: they are queued to be sent when its read section ({at}) ends, \
                 and it has not ended. A read section (a guest memory handle included) held \
                 across a blocking wait, such as a read of a kick eventfd, holds back the \
                 interrupt the guest may be waiting for: drop the handle before the wait"
            );
        }
    }
}
