//! Signal moderation: whether a device thread's completion passes batch
//! their signals to the pass's end, chosen by measuring both.
//!
//! Batching a pass's signals to its end saves signals (one eventfd write
//! per notifier per pass instead of one per completion the driver asked
//! for) but holds back the first completions of the pass until its last
//! is done. Which wins depends on the driver and on how the device waits
//! between passes:
//!
//! - A driver with a CPU of its own reaps completions while the device
//!   completes more (virtio's `EVENT_IDX` lets it ask for a signal at every
//!   reap); a held signal makes it sleep through the pass. If the device
//!   then sleeps too before the driver resubmits, every round trip pays
//!   two wake-ups, and signals at once win (by up to 2x at iodepth 64 with
//!   libblkio on 2 CPUs when the device polled for only 32 µs after a pass,
//!   shorter than a wake-up of an idle vCPU there).
//! - A device that polls through the driver's turnaround, drivers that
//!   share CPUs with the device, or a guest for which each signal is an
//!   interrupt injection: one signal per pass keeps both sides busy and
//!   leaves the device the CPU time the other signals and wake-ups would
//!   take. Batching wins.
//!
//! [`Moderation`] does not guess: it runs short epochs of each way in
//! alternation (a probe of about 20 ms: three epochs each, the first
//! millisecond after each switch not measured), keeps the one whose median
//! epoch completed more per second, and probes again after 0.25 to 4 s (2 s
//! at first when the loser was far behind). A probe's losing epochs are the
//! price, well under 1% of the time when the loser is twice as slow; the
//! gain is never doing much worse than the better of the two, whatever the
//! driver. Ties (batching must complete 5% more), and loads too light to
//! measure, go to signals at once, the lower-latency choice. A change of
//! load is followed at the next probe, so within 4 s.
//! An epoch in which the device sat idle for over a millisecond between
//! two passes was disturbed (its thread or the driver's did not run: the
//! host or another thread had the CPU) and is measured again instead of
//! judged, up to four in a row.
//!
//! Batching, once chosen, is watched: the same driver can settle into a
//! slower shape under it (one that sleeps through every pass) some time
//! after the probe. Two epochs in a row that complete less than 1/1.25 of
//! what the probe measured for signals at once are a collapse, and a probe
//! starts at once (its first epochs send signals at once). A collapse that
//! was only the machine (another thread on the CPU for a few milliseconds)
//! slows both deliveries alike, and the probe chooses batching again; one
//! that was the driver's shape under batching happens again, and a second
//! collapse in a row sends signals at once for 2 s before the next probe,
//! as after a probe that batching lost by far. A collapse costs
//! milliseconds, not the seconds the choice was kept for, and a driver
//! that collapses after every probe it lets batching win gets at most two
//! such collapses every 2 s.
//!
//! It is a per-thread value with no shared state (one per device thread,
//! `&mut` for each pass): it adds no synchronization to the signal path,
//! and the signal itself is [`IrqNotifier::notify`] or
//! [`IrqNotifier::notify_now`], unchanged.

use super::{IrqNotifier, Notify};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How a pass's signals are delivered; see [`Moderation::start_pass`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Delivery {
    /// Each signal is sent when the completion asks for it
    /// ([`IrqNotifier::notify_now`]).
    AtOnce,
    /// Signals wait for the end of the pass's read section, once per
    /// notifier ([`IrqNotifier::notify`]). The caller holds a read section
    /// (`let _pass = read_lock();`) across the pass.
    Batched,
}

/// Counts kept by a [`Moderation`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ModerationStats {
    /// Passes whose signals were batched.
    pub batched_passes: u64,
    /// Passes whose signals were sent at once.
    pub at_once_passes: u64,
    /// Probes completed (each compares both deliveries).
    pub probes: u64,
    /// Probes that chose batching.
    pub batched_choices: u64,
    /// Times a kept choice of batching collapsed: it completed far less
    /// than the probe measured for signals at once, and was probed again
    /// (the first time) or given up for a while (the second in a row).
    pub fallbacks: u64,
}

/// Chooses, for one device thread, whether its passes batch their signals;
/// see the guide's [`vhost_user`](crate::guide::vhost_user#a-pass-per-read-section-and-when-to-batch)
/// page for when each wins.
///
/// ```
/// # #[cfg(target_os = "linux")] {
/// use rcu_defer::read_lock;
/// use rcu_defer::virtio::{Delivery, EventFd, IrqNotifier, Moderation};
///
/// let irq = IrqNotifier::new(EventFd::new()?);
/// let mut moderation = Moderation::new();
/// for _pass in 0..3 {
///     let delivery = moderation.start_pass();
///     let _section = (delivery == Delivery::Batched).then(read_lock);
///     let mut completed = 0;
///     for _request in 0..8 {
///         // ... put the request on the used ring; if the driver asked:
///         moderation.notify(&irq);
///         completed += 1;
///     }
///     drop(_section); // batched: one signal here
///     moderation.end_pass(completed);
/// }
/// assert_eq!(irq.stats().requested, 24);
/// # }
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct Moderation {
    delivery: Delivery,
    phase: Phase,
    /// When the current epoch began (`None` before the first pass).
    epoch_start: Option<Instant>,
    /// Completions in the current epoch.
    epoch_completions: u64,
    /// When the last pass ended (`None` during a pass or before the first).
    idle_since: Option<Instant>,
    /// Whether the device was idle longer than `DISTURBED` between two
    /// passes of the current epoch.
    epoch_disturbed: bool,
    /// Disturbed epochs measured again instead of judged: in the current
    /// probe, or in a row in the current keep's watch.
    disturbed_epochs: u32,
    /// Passes before this are a warm-up, not measured (see `WARMUP`).
    measure_from: Option<Instant>,
    /// How long the choice a probe makes is kept; doubles while probes
    /// keep choosing the same, back to `KEEP_MIN` when one changes it.
    keep: Duration,
    last_choice: Option<Delivery>,
    /// Epochs in a row that a kept choice of batching completed less than
    /// its `floor`.
    low_epochs: u32,
    /// A collapse of batching started the current probe, or the keep of
    /// batching it chose: a second collapse gives batching up for a while.
    rechecking: bool,
    stats: ModerationStats,
}

/// Where the moderation is in its cycle of probing and keeping.
#[derive(Clone, Copy, Debug)]
enum Phase {
    /// Measuring: epoch `epoch` of `PROBE_EPOCHS`, with the completion rates
    /// (per second) of the epochs so far, by delivery.
    Probe {
        epoch: u32,
        at_once: [f64; PROBE_EPOCHS as usize / 2],
        batched: [f64; PROBE_EPOCHS as usize / 2],
    },
    /// Keeping the probe's choice until `until`. A kept choice of batching
    /// is watched: `floor` is the probe's median rate at once, which its
    /// epochs must not fall below (`None` when signals go at once).
    Keep { until: Instant, floor: Option<f64> },
}

/// An epoch's measured part: long enough for thousands of completions at
/// the rates where the choice matters, short enough that a probe's losing
/// half costs little.
const EPOCH: Duration = Duration::from_millis(3);
/// After a switch of delivery, passes for this long are not measured: the
/// pipeline between device and driver still has the shape the other
/// delivery gave it (a driver that was reaping during the pass, or one that
/// slept through it), which would favour whichever delivery came second.
const WARMUP: Duration = Duration::from_millis(1);
/// Epochs per probe, alternating deliveries in the order at once, batched,
/// batched, at once, ... so that a load that drifts during the probe
/// weighs on both alike; each delivery is judged by the median of its
/// epochs, so that one epoch disturbed by the scheduler does not decide.
const PROBE_EPOCHS: u32 = 6;
/// Batching is chosen only when it completed this much more per second:
/// ties and noise go to signals at once.
const MARGIN: f64 = 1.05;
/// An epoch that ran this much longer than `EPOCH` saw the device idle
/// (no pass for a while): its rate says nothing about the delivery.
const IDLE_EPOCH: Duration = Duration::from_millis(40);
/// An epoch in which the device was idle this long between two passes was
/// disturbed: the device's or the driver's thread did not run for a while
/// (another thread, or the host, had its CPU), which slows either delivery
/// alike and says nothing about them. It is measured again instead, up to
/// `MAX_DISTURBED` epochs in a row (a load whose own gaps are this long is
/// judged as it is).
const DISTURBED: Duration = Duration::from_millis(1);
/// See `DISTURBED`.
const MAX_DISTURBED: u32 = 4;
/// Fewer completions than this in a probe epoch: the load is too light for
/// the choice to matter; signals go at once.
const LIGHT_EPOCH: u64 = 32;
/// Signals go at once for this long from the first pass before the first
/// probe.
const STARTUP: Duration = Duration::from_millis(100);
/// How long a probe's choice is kept at first; each probe that makes the
/// same choice doubles it, up to `KEEP_MAX`. A change in the load is
/// followed at the next probe, so within `KEEP_MAX` at most.
const KEEP_MIN: Duration = Duration::from_millis(250);
/// A probe where batching completed less than 1/`DECISIVE` of the rate at
/// once keeps signals at once for `KEEP_DECISIVE` at first: probing such a
/// loser again soon costs more than a slow change of load would.
const DECISIVE: f64 = 1.25;
const KEEP_DECISIVE: Duration = Duration::from_secs(2);
const KEEP_MAX: Duration = Duration::from_secs(4);
/// Epochs in a row below the floor that end a kept choice of batching: one
/// epoch disturbed by the scheduler does not.
const FALLBACK_EPOCHS: u32 = 2;

impl Default for Moderation {
    fn default() -> Self {
        Moderation::new()
    }
}

impl Moderation {
    /// A moderation that starts by probing.
    pub fn new() -> Moderation {
        Moderation {
            delivery: Delivery::AtOnce,
            phase: Phase::Probe {
                epoch: 0,
                at_once: [0.0; PROBE_EPOCHS as usize / 2],
                batched: [0.0; PROBE_EPOCHS as usize / 2],
            },
            epoch_start: None,
            epoch_completions: 0,
            idle_since: None,
            epoch_disturbed: false,
            disturbed_epochs: 0,
            measure_from: None,
            keep: KEEP_MIN,
            last_choice: None,
            low_epochs: 0,
            rechecking: false,
            stats: ModerationStats::default(),
        }
    }

    /// Starts a pass: says how its signals are delivered. With
    /// [`Delivery::Batched`] the caller holds a read section across the
    /// pass, so that [`notify`](Self::notify)'s signals go out as it ends.
    pub fn start_pass(&mut self) -> Delivery {
        self.start_pass_at(Instant::now())
    }

    /// Ends a pass that completed `completions` requests.
    pub fn end_pass(&mut self, completions: u64) {
        self.end_pass_at(completions, Instant::now());
    }

    /// `end_pass` at a given time (the tests' clock).
    fn end_pass_at(&mut self, completions: u64, now: Instant) {
        self.idle_since = Some(now);
        self.epoch_completions += completions;
        match self.delivery {
            Delivery::AtOnce => self.stats.at_once_passes += 1,
            Delivery::Batched => self.stats.batched_passes += 1,
        }
    }

    /// Requests a signal on `irq` as the current pass's delivery says:
    /// [`IrqNotifier::notify`] when batched, [`IrqNotifier::notify_now`]
    /// otherwise.
    pub fn notify<N: Notify + 'static>(&self, irq: &Arc<IrqNotifier<N>>) {
        match self.delivery {
            Delivery::AtOnce => irq.notify_now(),
            Delivery::Batched => irq.notify(),
        }
    }

    /// The current pass's delivery.
    pub fn delivery(&self) -> Delivery {
        self.delivery
    }

    /// The counts so far.
    pub fn stats(&self) -> ModerationStats {
        self.stats
    }

    /// `start_pass` at a given time (the tests' clock).
    fn start_pass_at(&mut self, now: Instant) -> Delivery {
        if let Some(since) = self.idle_since.take() {
            self.epoch_disturbed |= now.saturating_duration_since(since) > DISTURBED;
        }
        let Some(start) = self.epoch_start else {
            // The first pass: a driver that has just connected is still
            // starting its queues, and its rates say little yet.
            self.epoch_start = Some(now);
            self.phase = Phase::Keep {
                until: now + STARTUP,
                floor: None,
            };
            return self.delivery;
        };
        let elapsed = now.saturating_duration_since(start);
        match self.phase {
            Phase::Keep { until, floor } => {
                if now >= until {
                    // A keep that ran its time ends a recheck.
                    self.rechecking = false;
                    self.begin_probe(now);
                } else if let Some(floor) = floor {
                    self.watch(floor, elapsed, now);
                }
            }
            Phase::Probe {
                epoch,
                mut at_once,
                mut batched,
            } => {
                if self.measure_from.is_some_and(|from| now < from) {
                    // Warming up after a switch: the epoch starts later.
                    self.start_epoch(now);
                    return self.delivery;
                }
                if elapsed < EPOCH {
                    return self.delivery;
                }
                if elapsed > IDLE_EPOCH {
                    // The device was idle during the epoch: start over.
                    self.begin_probe(now);
                    return self.delivery;
                }
                if self.epoch_disturbed && self.disturbed_epochs < MAX_DISTURBED {
                    // The same epoch again.
                    self.disturbed_epochs += 1;
                    self.start_epoch(now);
                    return self.delivery;
                }
                if self.epoch_completions < LIGHT_EPOCH {
                    self.choose(Delivery::AtOnce, now, false, 0.0);
                    return self.delivery;
                }
                let rate = self.epoch_completions as f64 / elapsed.as_secs_f64();
                // The epochs of each delivery so far: the order is balanced,
                // so epoch `e` is its delivery's `e / 2`-th.
                let slot = epoch as usize / 2;
                match self.delivery {
                    Delivery::AtOnce => at_once[slot] = rate,
                    Delivery::Batched => batched[slot] = rate,
                }
                let epoch = epoch + 1;
                if epoch == PROBE_EPOCHS {
                    self.stats.probes += 1;
                    // Medians, so that one slow epoch of either does not
                    // decide; a wrong choice of batching is watched and
                    // costs milliseconds.
                    let (at_once, batched) = (median(at_once), median(batched));
                    let choice = if batched > at_once * MARGIN {
                        Delivery::Batched
                    } else {
                        Delivery::AtOnce
                    };
                    self.choose(choice, now, batched * DECISIVE < at_once, at_once);
                } else {
                    self.phase = Phase::Probe {
                        epoch,
                        at_once,
                        batched,
                    };
                    self.switch_to(probe_delivery(epoch), now);
                }
            }
        }
        self.delivery
    }

    /// Starts an epoch with `delivery`, after a warm-up if that is a switch.
    fn switch_to(&mut self, delivery: Delivery, now: Instant) {
        if delivery != self.delivery {
            self.measure_from = Some(now + WARMUP);
        }
        self.delivery = delivery;
        self.start_epoch(now);
    }

    fn begin_probe(&mut self, now: Instant) {
        self.disturbed_epochs = 0;
        self.phase = Phase::Probe {
            epoch: 0,
            at_once: [0.0; PROBE_EPOCHS as usize / 2],
            batched: [0.0; PROBE_EPOCHS as usize / 2],
        };
        self.switch_to(probe_delivery(0), now);
    }

    /// A kept choice of batching, at a pass `elapsed` into its epoch: after
    /// `FALLBACK_EPOCHS` epochs in a row below `floor` (the probe's rate
    /// at once) divided by `DECISIVE`, probes again, or, when that probe
    /// was itself a recheck, sends signals at once for `KEEP_DECISIVE`.
    fn watch(&mut self, floor: f64, elapsed: Duration, now: Instant) {
        if self.measure_from.is_some_and(|from| now < from) {
            // Warming up after the switch to batching.
            self.start_epoch(now);
            return;
        }
        if elapsed < EPOCH {
            return;
        }
        if self.epoch_disturbed && self.disturbed_epochs < MAX_DISTURBED {
            // Neither low nor high.
            self.disturbed_epochs += 1;
        } else if elapsed <= IDLE_EPOCH {
            self.disturbed_epochs = 0;
            let rate = self.epoch_completions as f64 / elapsed.as_secs_f64();
            // A collapse, not a dip: the probe's own epochs vary by more
            // than a few percent, and a floor measured just after batched
            // epochs can be high.
            self.low_epochs = if rate * DECISIVE < floor {
                self.low_epochs + 1
            } else {
                0
            };
        }
        if self.low_epochs >= FALLBACK_EPOCHS {
            self.stats.fallbacks += 1;
            self.low_epochs = 0;
            if self.rechecking {
                // The recheck's probe let batching win and it collapsed
                // again: the driver's shape under batching, which a probe's
                // short epochs do not see. As a probe that batching lost by
                // far.
                self.last_choice = None;
                self.choose(Delivery::AtOnce, now, true, 0.0);
            } else {
                self.rechecking = true;
                self.begin_probe(now);
            }
        } else {
            self.start_epoch(now);
        }
    }

    /// Keeps `choice` until the next probe; `decisive`: batching was far
    /// behind, so probing it again soon would mostly cost. `at_once`: the
    /// probe's median rate at once, the floor a kept choice of batching is
    /// watched against.
    fn choose(&mut self, choice: Delivery, now: Instant, decisive: bool, at_once: f64) {
        if choice == Delivery::Batched {
            self.stats.batched_choices += 1;
        }
        self.keep = if self.last_choice == Some(choice) {
            (self.keep * 2).min(KEEP_MAX)
        } else if decisive {
            KEEP_DECISIVE
        } else {
            KEEP_MIN
        };
        self.last_choice = Some(choice);
        self.low_epochs = 0;
        self.disturbed_epochs = 0;
        if choice == Delivery::AtOnce {
            self.rechecking = false;
        }
        self.phase = Phase::Keep {
            until: now + self.keep,
            floor: (choice == Delivery::Batched).then_some(at_once),
        };
        self.switch_to(choice, now);
    }

    fn start_epoch(&mut self, now: Instant) {
        self.epoch_start = Some(now);
        self.epoch_disturbed = false;
        self.epoch_completions = 0;
    }
}

/// The median of three rates.
fn median([a, b, c]: [f64; 3]) -> f64 {
    a.max(b).min(a.min(b).max(c))
}

/// The delivery of a probe's epoch `epoch`: at once, batched, batched, at
/// once, at once, batched, ...
fn probe_delivery(epoch: u32) -> Delivery {
    if epoch.div_ceil(2) % 2 == 0 {
        Delivery::AtOnce
    } else {
        Delivery::Batched
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drives `moderation` with a device whose completion rate (per ms) is
    /// `rate(delivery)`, for `ms` milliseconds of passes 100 µs apart.
    fn drive(
        moderation: &mut Moderation,
        start: Instant,
        ms: u64,
        rate: impl Fn(Delivery) -> u64,
    ) -> Instant {
        drive_at(moderation, start, ms, |delivery, _| rate(delivery))
    }

    /// `drive` with a rate that also depends on the time.
    fn drive_at(
        moderation: &mut Moderation,
        start: Instant,
        ms: u64,
        rate: impl Fn(Delivery, Instant) -> u64,
    ) -> Instant {
        drive_paused(moderation, start, ms, rate, &[])
    }

    /// `drive_at` with no passes during the `pauses` (from, to): the
    /// device's or the driver's thread did not run.
    fn drive_paused(
        moderation: &mut Moderation,
        start: Instant,
        ms: u64,
        rate: impl Fn(Delivery, Instant) -> u64,
        pauses: &[(Instant, Instant)],
    ) -> Instant {
        let mut now = start;
        for _ in 0..ms * 10 {
            if !pauses.iter().any(|&(from, to)| now >= from && now < to) {
                let delivery = moderation.start_pass_at(now);
                moderation.end_pass_at(rate(delivery, now) / 10, now);
            }
            now += Duration::from_micros(100);
        }
        now
    }

    #[test]
    fn probe_epochs_alternate_both_deliveries_evenly() {
        let order: Vec<_> = (0..PROBE_EPOCHS).map(probe_delivery).collect();
        use Delivery::*;
        assert_eq!(order, [AtOnce, Batched, Batched, AtOnce, AtOnce, Batched]);
    }

    #[test]
    fn batching_is_kept_where_it_completes_more() {
        let mut m = Moderation::new();
        // Signals at once while the driver starts, then the first probe.
        let now = drive(&mut m, Instant::now(), 90, |d| match d {
            Delivery::AtOnce => 1000,
            Delivery::Batched => 1300,
        });
        assert_eq!((m.delivery(), m.stats().probes), (Delivery::AtOnce, 0));
        let now = drive(&mut m, now, 100, |d| match d {
            Delivery::AtOnce => 1000,
            Delivery::Batched => 1300,
        });
        assert_eq!(m.delivery(), Delivery::Batched);
        assert_eq!(m.stats().probes, 1);
        drive(&mut m, now, 2000, |d| match d {
            Delivery::AtOnce => 1000,
            Delivery::Batched => 1300,
        });
        assert_eq!(m.last_choice, Some(Delivery::Batched));
        assert!(m.stats().batched_passes > 10 * m.stats().at_once_passes);
    }

    #[test]
    fn signals_go_at_once_where_batching_loses_or_ties() {
        for batched in [500, 1000, 1020] {
            let mut m = Moderation::new();
            drive(&mut m, Instant::now(), 3000, |d| match d {
                Delivery::AtOnce => 1000,
                Delivery::Batched => batched,
            });
            assert_eq!(
                m.last_choice,
                Some(Delivery::AtOnce),
                "batched rate {batched}"
            );
            assert_eq!(m.stats().batched_choices, 0);
            // The probes' batched epochs are a small part of the passes.
            let s = m.stats();
            assert!(s.batched_passes * 20 < s.at_once_passes, "{s:?}");
        }
    }

    /// Drives a new `m` from `start` through its first probe, where
    /// batching completes 1.3x more, and returns when it has chosen it.
    fn choose_batching(m: &mut Moderation, start: Instant) -> Instant {
        let now = drive(m, start, 200, |d| match d {
            Delivery::AtOnce => 1000,
            Delivery::Batched => 1300,
        });
        assert_eq!(m.delivery(), Delivery::Batched);
        now
    }

    #[test]
    fn a_kept_choice_of_batching_that_collapses_is_probed_again_within_milliseconds() {
        let mut m = Moderation::new();
        let now = choose_batching(&mut m, Instant::now());
        // A dip below the probe's rate at once, not a collapse: kept.
        let mut now = drive(&mut m, now, 100, |d| match d {
            Delivery::AtOnce => 1000,
            Delivery::Batched => 900,
        });
        assert_eq!((m.delivery(), m.stats().fallbacks), (Delivery::Batched, 0));
        // The driver falls into sleeping through each pass: batching now
        // completes half of what signals at once did. Long before the 250 ms
        // the choice was kept for, a probe starts with signals at once.
        let probes = m.stats().probes;
        let collapsed = |d| match d {
            Delivery::AtOnce => 1000,
            Delivery::Batched => 500,
        };
        let mut waited_ms = 0;
        while m.stats().fallbacks == 0 {
            now = drive(&mut m, now, 1, collapsed);
            waited_ms += 1;
            assert!(waited_ms <= 12, "no fallback after {waited_ms} ms");
        }
        assert_eq!(m.delivery(), Delivery::AtOnce);
        assert!(matches!(m.phase, Phase::Probe { .. }), "{:?}", m.phase);
        // The probe confirms it: signals at once, with no probe for
        // `KEEP_DECISIVE`.
        let now = drive(&mut m, now, 50, collapsed);
        assert_eq!(m.stats().probes, probes + 1);
        assert_eq!(m.last_choice, Some(Delivery::AtOnce));
        drive(
            &mut m,
            now,
            KEEP_DECISIVE.as_millis() as u64 - 100,
            collapsed,
        );
        assert_eq!(m.stats().probes, probes + 1);
        assert_eq!(m.delivery(), Delivery::AtOnce);
        assert_eq!(m.stats().fallbacks, 1);
    }

    #[test]
    fn a_collapse_that_the_next_probe_does_not_confirm_keeps_batching() {
        let mut m = Moderation::new();
        let now = choose_batching(&mut m, Instant::now());
        // 10 ms in which the machine, not the delivery, halves the rate
        // (another process had the CPU): batching looks collapsed.
        let slow_from = now + Duration::from_millis(50);
        let slow_to = slow_from + Duration::from_millis(10);
        let rate = |d, t: Instant| {
            let rate = match d {
                Delivery::AtOnce => 1000,
                Delivery::Batched => 1300,
            };
            if t >= slow_from && t < slow_to {
                rate / 2
            } else {
                rate
            }
        };
        drive_at(&mut m, now, 200, rate);
        let s = m.stats();
        assert_eq!(
            (s.fallbacks, s.probes, s.batched_choices),
            (1, 2, 2),
            "{s:?}"
        );
        assert_eq!(m.delivery(), Delivery::Batched);
    }

    #[test]
    fn batching_that_collapses_again_after_a_new_probe_goes_at_once_for_seconds() {
        // A driver that settles into sleeping through every pass 10 ms
        // after a switch to batching: longer than a probe's batched epochs
        // last, so each probe lets batching win.
        let start = Instant::now();
        let mut m = Moderation::new();
        let switched = std::cell::Cell::new((start, Delivery::AtOnce));
        let rate = |d, now: Instant| {
            if d != switched.get().1 {
                switched.set((now, d));
            }
            match d {
                Delivery::AtOnce => 1000,
                Delivery::Batched if now - switched.get().0 < Duration::from_millis(10) => 1300,
                Delivery::Batched => 500,
            }
        };
        let now = drive_at(&mut m, start, 400, rate);
        let s = m.stats();
        assert_eq!((s.fallbacks, s.batched_choices), (2, 2), "{s:?}");
        assert_eq!(m.delivery(), Delivery::AtOnce);
        drive_at(&mut m, now, KEEP_DECISIVE.as_millis() as u64 - 500, rate);
        assert_eq!(
            m.stats(),
            ModerationStats {
                at_once_passes: m.stats().at_once_passes,
                ..s
            }
        );
        assert_eq!(m.delivery(), Delivery::AtOnce);
    }

    #[test]
    fn one_slow_epoch_does_not_end_a_kept_choice_of_batching() {
        let mut m = Moderation::new();
        let now = choose_batching(&mut m, Instant::now());
        // One 3 ms stretch at half speed (another thread had the CPU).
        let slow_from = now + Duration::from_millis(50);
        let slow_to = slow_from + EPOCH;
        let rate = |d, t: Instant| match (d, t >= slow_from && t < slow_to) {
            (Delivery::Batched, true) => 500,
            (Delivery::Batched, false) => 1300,
            (Delivery::AtOnce, _) => 1000,
        };
        // Millisecond by millisecond, to see that an epoch was counted low.
        let (mut now, mut most_low) = (now, 0);
        for _ in 0..200 {
            now = drive_at(&mut m, now, 1, rate);
            most_low = most_low.max(m.low_epochs);
        }
        assert_eq!(most_low, 1, "the slow stretch made one epoch low");
        assert_eq!((m.delivery(), m.stats().fallbacks), (Delivery::Batched, 0));
    }

    #[test]
    fn a_kept_choice_of_batching_survives_epochs_that_the_machine_disturbed() {
        let mut m = Moderation::new();
        let now = choose_batching(&mut m, Instant::now());
        // Twice, 2.5 ms in which no pass ran (the host had the CPU): two
        // epochs in a row far below the floor, but they say nothing about
        // the delivery.
        let ms = Duration::from_micros(1000);
        let p1 = now + 50 * ms;
        let p2 = p1 + 4 * ms;
        let pauses = [(p1, p1 + 5 * ms / 2), (p2, p2 + 5 * ms / 2)];
        let batching = |d, _| match d {
            Delivery::AtOnce => 1000,
            Delivery::Batched => 1300,
        };
        drive_paused(&mut m, now, 100, batching, &pauses);
        let s = m.stats();
        assert_eq!((s.fallbacks, s.probes), (0, 1), "{s:?}");
        assert_eq!(m.delivery(), Delivery::Batched);
    }

    #[test]
    fn a_probe_measures_a_disturbed_epoch_again() {
        // Batching wins, but the host takes the CPU for 2 ms in the first
        // probe's first batched epoch (after its warm-up): judged as it
        // was, that epoch would be below every epoch at once.
        let start = Instant::now();
        let ms = Duration::from_micros(1000);
        let pause = start + STARTUP + 6 * ms;
        let mut m = Moderation::new();
        drive_paused(
            &mut m,
            start,
            150,
            |d, _| match d {
                Delivery::AtOnce => 1000,
                Delivery::Batched => 1300,
            },
            &[(pause, pause + 2 * ms)],
        );
        let s = m.stats();
        assert_eq!((s.probes, s.batched_choices), (1, 1), "{s:?}");
        assert_eq!(m.delivery(), Delivery::Batched);
    }

    #[test]
    fn a_change_in_the_load_is_followed_at_the_next_probe() {
        let mut m = Moderation::new();
        let now = drive(&mut m, Instant::now(), 1000, |d| match d {
            Delivery::AtOnce => 1000,
            Delivery::Batched => 500,
        });
        assert_eq!(m.last_choice, Some(Delivery::AtOnce));
        drive(
            &mut m,
            now,
            KEEP_MAX.as_millis() as u64 + 200,
            |d| match d {
                Delivery::AtOnce => 500,
                Delivery::Batched => 1000,
            },
        );
        assert_eq!(m.last_choice, Some(Delivery::Batched));
    }

    #[test]
    fn one_disturbed_epoch_does_not_decide() {
        // Batching loses, except in one epoch of the first probe where the
        // at-once epochs were slowed down (another thread took the CPU).
        let start = Instant::now();
        let mut m = Moderation::new();
        let disturbed = |now: Instant| {
            let t = now - start;
            // The fourth epoch (the second at once), after its warm-up.
            t >= STARTUP + Duration::from_millis(11) && t < STARTUP + Duration::from_millis(14)
        };
        drive_at(&mut m, start, 130, |d, now| match d {
            Delivery::AtOnce if disturbed(now) => 100,
            Delivery::AtOnce => 1000,
            Delivery::Batched => 800,
        });
        assert_eq!(m.stats().probes, 1);
        assert_eq!(m.last_choice, Some(Delivery::AtOnce));
    }

    #[test]
    fn passes_right_after_a_switch_are_not_measured() {
        // Batching is within the margin once settled, but for 1 ms after a switch
        // each delivery still has the pipeline the other one left: batching
        // looks twice as fast and signals at once half as fast. Measured
        // from the switch, batching would win the probe.
        let start = Instant::now();
        let mut m = Moderation::new();
        let last_switch = std::cell::Cell::new((start, Delivery::AtOnce));
        drive_at(&mut m, start, 130, |d, now| {
            if d != last_switch.get().1 {
                last_switch.set((now, d));
            }
            let settled = now - last_switch.get().0 >= Duration::from_millis(1);
            match (d, settled) {
                (Delivery::AtOnce, true) => 1000,
                (Delivery::AtOnce, false) => 500,
                (Delivery::Batched, true) => 1010,
                (Delivery::Batched, false) => 2000,
            }
        });
        assert_eq!(m.stats().probes, 1);
        assert_eq!(m.last_choice, Some(Delivery::AtOnce));
    }

    #[test]
    fn a_light_or_idle_load_gets_signals_at_once() {
        let mut m = Moderation::new();
        drive(&mut m, Instant::now(), 100, |_| 1);
        assert_eq!(m.delivery(), Delivery::AtOnce);
        assert_eq!(m.stats().batched_choices, 0);

        // A pass, a long idle time, a pass: the probe starts over rather
        // than judge by the idle epoch.
        let mut m = Moderation::new();
        let t = Instant::now();
        m.start_pass_at(t);
        m.end_pass(1000);
        m.start_pass_at(t + Duration::from_secs(1));
        assert!(matches!(m.phase, Phase::Probe { epoch: 0, .. }));
    }
}
