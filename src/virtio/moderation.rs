//! Signal moderation: whether a device thread's completion passes batch
//! their signals to the pass's end, chosen by measuring both.
//!
//! Batching a pass's signals to its end saves signals (one eventfd write
//! per notifier per pass instead of one per completion the driver asked
//! for) but holds back the first completions of the pass until its last
//! is done. Which wins depends on the driver, not on the device:
//!
//! - A driver with a CPU of its own that reaps completions while the device
//!   completes more (virtio's `EVENT_IDX` lets it ask for a signal at every
//!   reap) loses its overlap when the signal waits: it sleeps through the
//!   pass, then the device waits for its resubmissions. Signals at once win
//!   (by up to 2x at iodepth 64 with libblkio on 2 CPUs).
//! - Drivers and device sharing CPUs (more threads than CPUs), or a guest
//!   for which each signal is an interrupt injection, pay for every signal
//!   and every wake-up with CPU time the device needs: batching wins.
//!
//! [`Moderation`] does not guess: it runs short epochs of each way in
//! alternation (a probe of about 20 ms: three epochs each, the first
//! millisecond after each switch not measured), keeps the one whose median
//! epoch completed more per second, and probes again after 0.5 to 4 s (2 s
//! at first when the loser was far behind). A probe's losing epochs are the
//! price, well under 1% of the time when the loser is twice as slow; the
//! gain is never doing much worse than the better of the two, whatever the
//! driver. Ties (batching must complete 5% more), and loads too light to
//! measure, go to signals at once, the lower-latency choice. A change of
//! load is followed at the next probe, so within 4 s.
//!
//! Batching, once chosen, is watched: the same driver can settle into a
//! slower shape under it (one that sleeps through every pass) some time
//! after the probe. Two epochs in a row that complete less than 1/1.25 of
//! what the probe measured for signals at once end the choice: signals go at once for 2 s
//! before the next probe, as after a probe that batching lost by far. A
//! collapse costs milliseconds, not the seconds the choice was kept for,
//! and a driver that collapses after every probe it lets batching win gets
//! at most one such collapse every 2 s.
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
    /// Times a kept choice of batching was given up before its time,
    /// because it completed far less than the probe measured for signals
    /// at once.
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
    /// Passes before this are a warm-up, not measured (see `WARMUP`).
    measure_from: Option<Instant>,
    /// How long the choice a probe makes is kept; doubles while probes
    /// keep choosing the same, back to `KEEP_MIN` when one changes it.
    keep: Duration,
    last_choice: Option<Delivery>,
    /// Epochs in a row that a kept choice of batching completed less than
    /// its `floor`.
    low_epochs: u32,
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
/// Fewer completions than this in a probe epoch: the load is too light for
/// the choice to matter; signals go at once.
const LIGHT_EPOCH: u64 = 32;
/// Signals go at once for this long from the first pass before the first
/// probe.
const STARTUP: Duration = Duration::from_millis(100);
/// How long a probe's choice is kept at first; each probe that makes the
/// same choice doubles it, up to `KEEP_MAX`. A change in the load is
/// followed at the next probe, so within `KEEP_MAX` at most.
const KEEP_MIN: Duration = Duration::from_millis(500);
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
            measure_from: None,
            keep: KEEP_MIN,
            last_choice: None,
            low_epochs: 0,
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
                    // Batching only when every batched epoch beat every
                    // epoch at once, and its median by the margin: a wrong
                    // choice of batching costs more than a wrong choice of
                    // signals at once.
                    let apart = min(batched) > max(at_once);
                    let (at_once, batched) = (median(at_once), median(batched));
                    let choice = if apart && batched > at_once * MARGIN {
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
        self.phase = Phase::Probe {
            epoch: 0,
            at_once: [0.0; PROBE_EPOCHS as usize / 2],
            batched: [0.0; PROBE_EPOCHS as usize / 2],
        };
        self.switch_to(probe_delivery(0), now);
    }

    /// A kept choice of batching, at a pass `elapsed` into its epoch: ends
    /// it, for signals at once kept `KEEP_DECISIVE`, after
    /// `FALLBACK_EPOCHS` epochs in a row below `floor` (the probe's rate
    /// at once) divided by `DECISIVE`.
    fn watch(&mut self, floor: f64, elapsed: Duration, now: Instant) {
        if self.measure_from.is_some_and(|from| now < from) {
            // Warming up after the switch to batching.
            self.start_epoch(now);
            return;
        }
        if elapsed < EPOCH {
            return;
        }
        if elapsed <= IDLE_EPOCH {
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
            // As a probe that batching lost by far: re-probing at once could
            // let the shape that collapsed win again, and collapse again.
            self.last_choice = None;
            self.choose(Delivery::AtOnce, now, true, 0.0);
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
        self.phase = Phase::Keep {
            until: now + self.keep,
            floor: (choice == Delivery::Batched).then_some(at_once),
        };
        self.switch_to(choice, now);
    }

    fn start_epoch(&mut self, now: Instant) {
        self.epoch_start = Some(now);
        self.epoch_completions = 0;
    }
}

/// The least of three rates.
fn min(rates: [f64; 3]) -> f64 {
    rates.into_iter().fold(f64::INFINITY, f64::min)
}

/// The greatest of three rates.
fn max(rates: [f64; 3]) -> f64 {
    rates.into_iter().fold(0.0, f64::max)
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
        let mut now = start;
        for _ in 0..ms * 10 {
            let delivery = moderation.start_pass_at(now);
            moderation.end_pass(rate(delivery, now) / 10);
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
    fn a_kept_choice_of_batching_that_collapses_is_given_up_within_milliseconds() {
        let mut m = Moderation::new();
        let now = choose_batching(&mut m, Instant::now());
        // A dip below the probe's rate at once, not a collapse: kept.
        let now = drive(&mut m, now, 100, |d| match d {
            Delivery::AtOnce => 1000,
            Delivery::Batched => 900,
        });
        assert_eq!((m.delivery(), m.stats().fallbacks), (Delivery::Batched, 0));
        // The driver falls into sleeping through each pass: batching now
        // completes half of what signals at once did. Long before the 500 ms
        // the choice was kept for, signals go at once again, and stay so
        // (no probe) for `KEEP_DECISIVE`.
        let probes = m.stats().probes;
        let now = drive(&mut m, now, 20, |d| match d {
            Delivery::AtOnce => 1000,
            Delivery::Batched => 500,
        });
        assert_eq!(m.stats().fallbacks, 1);
        assert_eq!(m.delivery(), Delivery::AtOnce);
        drive(
            &mut m,
            now,
            KEEP_DECISIVE.as_millis() as u64 - 100,
            |d| match d {
                Delivery::AtOnce => 1000,
                Delivery::Batched => 500,
            },
        );
        assert_eq!(m.stats().probes, probes);
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
