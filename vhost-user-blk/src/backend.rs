//! The vhost-user side: the device's features and configuration space, and
//! the `VhostUserBackend` that hands kicks to the [`BlkServer`]. The vring
//! type, which follows the frontend's call eventfd, is rcu-defer's
//! `vhost_user::RcuVring`.

use crate::disk::RamDisk;
use crate::request::{BlkServer, NotifyMode, QueueStats, QueueWork};
use crate::warn;
use rcu_defer::vhost_user::{CallNotifier, RcuVring};
use rcu_defer::virtio::IrqNotifier;
use rcu_defer::vm::GuestMemoryRcu;
use rustix::time::{
    timerfd_create, timerfd_settime, Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags,
    Timespec,
};
use std::io;
use std::mem::{offset_of, size_of};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use std::time::{Duration, Instant};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VhostUserDaemon, VringT};
use virtio_bindings::virtio_blk::{
    virtio_blk_config, VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_MQ,
    VIRTIO_BLK_F_SEG_MAX,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

/// Guest memory as vhost-user-backend hands it over.
pub type AtomicMemory = rcu_defer::vhost_user::AtomicMemory<()>;

/// The most queues the device can have.
pub const MAX_QUEUES: usize = 8;
/// The largest queue size the frontend may set (QEMU's `queue-size`).
pub const MAX_QUEUE_SIZE: usize = 1024;
/// The `seg_max` the device advertises: data segments per request, so that
/// a request fits a queue of QEMU's smallest default size (128) with its
/// header and status even without indirect descriptors.
pub const SEG_MAX: u32 = 126;
/// The block size the device advertises, in bytes.
pub const BLK_SIZE: u32 = 512;
/// How long a worker polls its queues after a pass by default (µs). It
/// must outlast a driver's turnaround, which includes waking the driver:
/// tens of microseconds when its CPU has gone idle in a VM (a halted
/// vCPU), so QEMU's `poll-max-ns` default (32768 ns, set for bare metal)
/// misses most of them there and both sides sleep every round trip. The
/// window adapts (see `request::Poller`): it grows only up to the waits it
/// would have caught, and shrinks to nothing under a load whose waits are
/// longer than this.
pub const DEFAULT_POLL_US: u64 = 128;

/// The virtio features the device offers: VERSION_1, EVENT_IDX (when
/// `event_idx`), INDIRECT_DESC, and virtio-blk's SEG_MAX, BLK_SIZE, FLUSH
/// and MQ (the configuration space says how many queues), plus vhost-user's
/// PROTOCOL_FEATURES.
pub fn virtio_features(event_idx: bool) -> u64 {
    (1 << VIRTIO_F_VERSION_1)
        | (u64::from(event_idx) << VIRTIO_RING_F_EVENT_IDX)
        | (1 << VIRTIO_RING_F_INDIRECT_DESC)
        | (1 << VIRTIO_BLK_F_SEG_MAX)
        | (1 << VIRTIO_BLK_F_BLK_SIZE)
        | (1 << VIRTIO_BLK_F_FLUSH)
        | (1 << VIRTIO_BLK_F_MQ)
        | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
}

/// The vhost-user protocol features the device offers: CONFIG (the
/// frontend reads the configuration space from the backend), MQ (it asks
/// for the number of queues), REPLY_ACK (it may ask for an acknowledgement
/// of any message; vhost implements it) and CONFIGURE_MEM_SLOTS (it may add
/// and remove guest memory regions one at a time with ADD_MEM_REG and
/// REM_MEM_REG instead of resending the whole table). libblkio's
/// virtio-blk-vhost-user driver refuses a backend without REPLY_ACK,
/// CONFIG and CONFIGURE_MEM_SLOTS.
pub fn protocol_features() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::CONFIG
        | VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::REPLY_ACK
        | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
}

/// The configuration space (`struct virtio_blk_config`, little-endian):
/// the capacity in 512-byte sectors, `seg_max`, `blk_size` 512 and
/// `num_queues`; every other field 0.
pub fn config_space(capacity_sectors: u64, num_queues: usize) -> Vec<u8> {
    let mut config = vec![0u8; size_of::<virtio_blk_config>()];
    let mut put = |offset: usize, bytes: &[u8]| {
        config[offset..offset + bytes.len()].copy_from_slice(bytes);
    };
    put(
        offset_of!(virtio_blk_config, capacity),
        &capacity_sectors.to_le_bytes(),
    );
    put(
        offset_of!(virtio_blk_config, seg_max),
        &SEG_MAX.to_le_bytes(),
    );
    put(
        offset_of!(virtio_blk_config, blk_size),
        &BLK_SIZE.to_le_bytes(),
    );
    put(
        offset_of!(virtio_blk_config, num_queues),
        &u16::try_from(num_queues).unwrap_or(u16::MAX).to_le_bytes(),
    );
    config
}

/// The vring type: vhost-user-backend's `VringRwLock` plus an
/// [`IrqNotifier`] over the vring's call eventfd, which follows
/// SET_VRING_CALL and signals with no lock on the vring
/// (`rcu_defer::vhost_user::RcuVring`).
pub type BlkVring = RcuVring;

/// How the device's queues are spread over worker threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workers {
    /// One worker thread serves all the queues, as one QEMU IOThread
    /// serves all of a device's queues: a kick on any queue serves every
    /// queue that has work.
    One,
    /// A worker thread per queue.
    PerQueue,
}

impl Workers {
    /// The command-line spelling: `one` or `per-queue`.
    pub fn name(self) -> &'static str {
        match self {
            Workers::One => "one",
            Workers::PerQueue => "per-queue",
        }
    }
}

/// The device's set-up: how many queues, how they are spread over worker
/// threads, and when the driver is notified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceConfig {
    /// The number of queues, 1 to [`MAX_QUEUES`] (configuration space
    /// `num_queues`, VIRTIO_BLK_F_MQ).
    pub queues: usize,
    /// Which worker thread serves which queue.
    pub workers: Workers,
    /// When the driver is notified of completions.
    pub notify: NotifyMode,
    /// An asynchronous disk: each request completes this many microseconds
    /// after the device pops it, with every other request due by then, in
    /// one pass (see `BlkServer::set_latency`); 0: at once.
    pub latency_us: u64,
    /// After a pass, poll the queues for more work for up to this many
    /// microseconds before sleeping until a kick, the window adapting to
    /// the load (see `BlkServer::set_poll_max`); 0: never poll. Default
    /// [`DEFAULT_POLL_US`].
    pub poll_us: u64,
    /// Whether the device offers VIRTIO_RING_F_EVENT_IDX. Without it every
    /// completion needs a signal (unless the driver sets
    /// VRING_AVAIL_F_NO_INTERRUPT), as with drivers that do not negotiate it.
    pub event_idx: bool,
}

impl DeviceConfig {
    /// One queue on one worker thread, notifying as `notify` says.
    pub fn new(notify: NotifyMode) -> DeviceConfig {
        DeviceConfig {
            queues: 1,
            workers: Workers::One,
            notify,
            event_idx: true,
            latency_us: 0,
            poll_us: DEFAULT_POLL_US,
        }
    }

    /// The queues of each worker thread, as vhost-user-backend's
    /// `queues_per_thread` wants them: a bit mask of queue indices per
    /// thread.
    pub fn queues_per_thread(&self) -> Vec<u64> {
        match self.workers {
            Workers::One => vec![(1u64 << self.queues) - 1],
            Workers::PerQueue => (0..self.queues).map(|queue| 1u64 << queue).collect(),
        }
    }
}

/// The backend of one frontend connection.
pub struct BlkBackend {
    capacity_sectors: u64,
    config: DeviceConfig,
    /// `config.queues_per_thread()`.
    queues_per_thread: Vec<u64>,
    /// The guest memory the requests are served from: a mirror of the map
    /// vhost-user-backend hands over in `update_memory` (the same regions).
    mem: GuestMemoryRcu<GuestMemoryMmap<()>>,
    /// A server per worker thread.
    servers: Vec<Mutex<BlkServer>>,
    /// Each queue's notifier, taken from its vring when its worker thread
    /// first runs.
    irqs: Vec<OnceLock<Arc<IrqNotifier<CallNotifier>>>>,
    /// Each worker thread's exit eventfd, handed to vhost-user-backend once.
    exits: Mutex<Vec<Option<(EventConsumer, EventNotifier)>>>,
    /// Whether a ring error has been reported on stderr (only the first
    /// is).
    ring_error_reported: AtomicBool,
    /// Each worker thread's timer for its delayed completions
    /// (`config.latency_us`; empty without one).
    timers: Vec<OwnedFd>,
}

/// The timer of a worker thread with delayed completions: the
/// `handle_event` device event after the queues' and vhost-user-backend's
/// own.
fn timer_event(queues: usize) -> u16 {
    queues as u16 + 1
}

/// Arms `timer` to fire at `due` (at once if that has passed), or disarms
/// it.
fn arm(timer: &OwnedFd, due: Option<Instant>) -> io::Result<()> {
    let value = match due {
        // A zero it_value disarms: a due time already past fires in 1 ns.
        Some(due) => due
            .saturating_duration_since(Instant::now())
            .max(Duration::from_nanos(1)),
        None => Duration::ZERO,
    };
    let spec = Itimerspec {
        it_interval: Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        },
        it_value: Timespec {
            tv_sec: value.as_secs() as _,
            tv_nsec: value.subsec_nanos() as _,
        },
    };
    timerfd_settime(timer, TimerfdTimerFlags::empty(), &spec)?;
    Ok(())
}

/// What a connection's backend did: the stats line's figures, less the CPU
/// time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectionStats {
    /// The counts of all the queues together.
    pub queue: QueueStats,
    /// Eventfd writes to the call fds of all the queues
    /// (`IrqNotifier::stats().signalled`).
    pub signals: u64,
}

impl BlkBackend {
    /// A backend serving `disk` with the queues, worker threads and
    /// notification mode that `config` says.
    ///
    /// # Errors
    ///
    /// `config.queues` is 0 or above [`MAX_QUEUES`], or a worker thread's
    /// exit eventfd cannot be created.
    pub fn new(disk: Arc<RwLock<RamDisk>>, config: DeviceConfig) -> io::Result<BlkBackend> {
        if !(1..=MAX_QUEUES).contains(&config.queues) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "the device has 1 to {MAX_QUEUES} queues, not {}",
                    config.queues
                ),
            ));
        }
        let capacity_sectors = disk
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .sectors();
        let queues_per_thread = config.queues_per_thread();
        let exits = (0..queues_per_thread.len())
            .map(|_| {
                new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC)
                    .map(Some)
                    .map_err(|e| io::Error::new(e.kind(), format!("cannot create an eventfd: {e}")))
            })
            .collect::<io::Result<Vec<_>>>()?;
        let timers = if config.latency_us == 0 {
            Vec::new()
        } else {
            (0..queues_per_thread.len())
                .map(|_| {
                    timerfd_create(
                        TimerfdClockId::Monotonic,
                        TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
                    )
                    .map_err(|e| io::Error::other(format!("cannot create a timerfd: {e}")))
                })
                .collect::<io::Result<Vec<_>>>()?
        };
        Ok(BlkBackend {
            capacity_sectors,
            servers: (0..queues_per_thread.len())
                .map(|_| {
                    let mut server = BlkServer::new(Arc::clone(&disk), config.notify);
                    server.set_latency(Duration::from_micros(config.latency_us));
                    server.set_poll_max(Duration::from_micros(config.poll_us));
                    Mutex::new(server)
                })
                .collect(),
            timers,
            irqs: (0..config.queues).map(|_| OnceLock::new()).collect(),
            config,
            queues_per_thread,
            mem: GuestMemoryRcu::new(GuestMemoryMmap::new()),
            exits: Mutex::new(exits),
            ring_error_reported: AtomicBool::new(false),
        })
    }

    /// Registers each worker thread's timer of delayed completions with
    /// `daemon`'s event loops (nothing to do without `config.latency_us`).
    /// Call before the daemon starts serving.
    ///
    /// # Errors
    ///
    /// The epoll registration failed.
    pub fn register_timers(&self, daemon: &VhostUserDaemon<Arc<BlkBackend>>) -> io::Result<()> {
        for (timer, handler) in self.timers.iter().zip(daemon.get_epoll_handlers()) {
            handler
                .register_listener(
                    timer.as_raw_fd(),
                    EventSet::IN,
                    u64::from(timer_event(self.config.queues)),
                )
                .map_err(|e| io::Error::other(format!("cannot watch a timerfd: {e}")))?;
        }
        Ok(())
    }

    /// The device's set-up.
    pub fn config(&self) -> DeviceConfig {
        self.config
    }

    /// What the backend has done so far, over all its queues.
    pub fn stats(&self) -> ConnectionStats {
        let mut stats = ConnectionStats::default();
        for server in &self.servers {
            let queue = server
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .stats();
            stats.queue.requests += queue.requests;
            stats.queue.suppressed += queue.suppressed;
            stats.queue.errors += queue.errors;
        }
        stats.signals = self
            .irqs
            .iter()
            .filter_map(OnceLock::get)
            .map(|irq| irq.stats().signalled)
            .sum();
        stats
    }

    /// The device's queue index of each vring that vhost-user-backend hands
    /// to worker thread `thread_id` (the set bits of its mask, in order).
    fn thread_queues(&self, thread_id: usize) -> impl Iterator<Item = usize> {
        let mask = self.queues_per_thread.get(thread_id).copied().unwrap_or(0);
        (0..self.config.queues).filter(move |queue| mask & (1 << queue) != 0)
    }
}

impl VhostUserBackend for BlkBackend {
    type Bitmap = ();
    type Vring = BlkVring;

    fn num_queues(&self) -> usize {
        self.config.queues
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        self.queues_per_thread.clone()
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        virtio_features(self.config.event_idx)
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        protocol_features()
    }

    /// vhost-user-backend sets EVENT_IDX on the vring's queue itself, and
    /// `needs_notification` applies it there.
    fn set_event_idx(&self, _enabled: bool) {}

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let config = config_space(self.capacity_sectors, self.config.queues);
        (offset as usize..)
            .take(size as usize)
            .map(|at| config.get(at).copied().unwrap_or(0))
            .collect()
    }

    /// Called by vhost-user-backend with the whole new map after each
    /// SET_MEM_TABLE, ADD_MEM_REG and REM_MEM_REG (it builds the map with
    /// `insert_region` / `remove_region`); the mirror follows each.
    fn update_memory(&self, mem: AtomicMemory) -> io::Result<()> {
        // The same regions (a `GuestMemoryMmap` clone shares them): the old
        // map goes after a grace period, never under a request.
        self.mem.follow(&mem);
        Ok(())
    }

    fn exit_event(&self, thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        self.exits
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_mut(thread_index)?
            .take()
    }

    /// Serves a kick on one of the worker thread's queues: every queue of
    /// the thread that has work (see `BlkServer::serve_queues`; batched,
    /// one read section per pass over them).
    fn handle_event(
        &self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[BlkVring],
        thread_id: usize,
    ) -> io::Result<()> {
        let timer = device_event == timer_event(self.config.queues);
        if usize::from(device_event) >= vrings.len() && !timer {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("an event for queue {device_event}, which the device does not have"),
            ));
        }
        let Some(server) = self.servers.get(thread_id) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("an event for worker thread {thread_id}, which the device does not have"),
            ));
        };
        for (vring, queue) in vrings.iter().zip(self.thread_queues(thread_id)) {
            self.irqs[queue].get_or_init(|| Arc::clone(vring.irq()));
        }
        let mut states: Vec<_> = vrings.iter().map(VringT::get_mut).collect();
        let mut work: Vec<QueueWork<'_, CallNotifier>> = states
            .iter_mut()
            .zip(vrings)
            .zip(self.thread_queues(thread_id))
            .filter(|((state, _), _)| state.is_enabled())
            .map(|((state, vring), id)| QueueWork {
                id,
                queue: state.get_queue_mut(),
                irq: vring.irq(),
            })
            .collect();
        let mut server = server.lock().unwrap_or_else(PoisonError::into_inner);
        let mut errors = if timer {
            // Level-triggered: clear the expiry (none left is fine, the
            // fd is non-blocking).
            let mut expirations = [0u8; 8];
            let _ = rustix::io::read(&self.timers[thread_id], &mut expirations);
            Vec::new()
        } else {
            server.serve_queues(&mut work, &self.mem)
        };
        if let Some(timer) = self.timers.get(thread_id) {
            errors.extend(server.complete_due(&mut work, &self.mem));
            arm(timer, server.next_due())?;
        }
        if let Some((_, e)) = errors.first() {
            // An error here would end the worker thread, and with it the
            // device: report it and wait for the next kick instead.
            if !self.ring_error_reported.swap(true, Ordering::Relaxed) {
                warn(format_args!(
                    "{e}; the queue is served again at the next kick (further ring errors \
                     are not reported)"
                ));
            }
        }
        Ok(())
    }
}
