//! With rust-vmm: guest memory and guest notifications in a virtio device.
//!
//! # Guest memory
//!
//! With the `vm-memory` feature, `rcu_defer::vm::GuestMemoryRcu<M>` is a
//! drop-in for `vm_memory::GuestMemoryAtomic<M>`: the same `new`, `lock()`,
//! `replace` and `GuestAddressSpace` implementation, so device code that is
//! generic over `GuestAddressSpace` does not change, and virtio-queue's
//! `pop_descriptor_chain`, `add_used` and `needs_notification` take its
//! handles as they take `GuestMemoryAtomic`'s. What changes is `memory()`:
//! instead of an `ArcSwap` load, which falls to a reference-count
//! read-modify-write once the thread already holds 8 handles (vm-virtio
//! issue 89), it is a nested read section and one pointer load, however many
//! handles the thread holds (`cargo bench --bench guest_memory` compares
//! the two). A replaced map, and any region mapping only it holds, is
//! dropped after a grace period on the `rcu-call` thread, never under a
//! handle and never on a device thread.
//!
//! The snippet needs vm-memory's `backend-mmap` feature (for
//! `GuestMemoryMmap`): `vm-memory = { version = "0.18", features =
//! ["backend-mmap"] }`.
//!
//! ```
//! use rcu_defer::vm::GuestMemoryRcu; // instead of vm_memory::GuestMemoryAtomic
//! use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryBackend, GuestMemoryMmap};
//!
//! let ram = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
//! let memory = GuestMemoryRcu::new(ram); // instead of GuestMemoryAtomic::new(ram)
//!
//! // Device thread: unchanged. Hold as many handles as the requests need.
//! let mem = memory.memory();
//! mem.write_obj(0x1234_u32, GuestAddress(0x1000)).unwrap();
//!
//! // Hot-plug: unchanged. Handles taken before keep the old map.
//! let bigger = GuestMemoryMmap::<()>::from_ranges(&[
//!     (GuestAddress(0), 0x10_0000),
//!     (GuestAddress(0x1_0000_0000), 0x10_0000),
//! ])
//! .unwrap();
//! memory.lock().unwrap().replace(bigger);
//! assert_eq!(mem.num_regions(), 1);
//! assert_eq!(memory.memory().num_regions(), 2);
//! drop(mem); // the old map is dropped after the next grace period
//! ```
//!
//! # Guest notifications in a device loop
//!
//! A handle is a read section, so it is not `Send`, and a thread holding one
//! must not wait for a grace period, nor block: notifications batched inside
//! it are sent when it ends (a section that holds them back for longer than
//! the stall timeout is reported). To send guest memory, or a
//! `DescriptorChain`, to another thread, take an owned snapshot,
//! `memory.snapshot()` or `handle.into_inner()` (an `Arc<M>`, as
//! `GuestMemoryAtomic`'s `into_inner`); `From<Arc<M>>` is there too. The
//! `vm` module's documentation lists the remaining differences. In a
//! virtio-queue device loop,
//! [`virtio::IrqNotifier`](crate::virtio::IrqNotifier) goes in the
//! completion pass: take one handle for the pass (`let mem =
//! memory.memory()`; it is the pass's read section), and for each finished
//! chain call `queue.add_used(&*mem, head, len)`, then `irq.notify()` if
//! `queue.needs_notification(&*mem)` says so. The pass's notifications
//! become one eventfd write when its outermost section ends: when `mem`, and
//! any descriptor chain still holding a clone of it, is dropped.
//!
//! The pattern, with the queue left out (a notifier that counts its signals
//! stands for the irqfd):
//!
//! ```
//! use rcu_defer::virtio::{IrqNotifier, Notify};
//! use rcu_defer::vm::GuestMemoryRcu;
//! use std::sync::atomic::{AtomicU32, Ordering};
//! use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryMmap};
//!
//! #[derive(Default)]
//! struct Irqfd(AtomicU32); // an eventfd in a real device
//! impl Notify for Irqfd {
//!     fn signal(&self) -> std::io::Result<()> {
//!         self.0.fetch_add(1, Ordering::Relaxed);
//!         Ok(())
//!     }
//! }
//!
//! let ram = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
//! let memory = GuestMemoryRcu::new(ram);
//! let irq = IrqNotifier::new(Irqfd::default());
//! {
//!     let mem = memory.memory(); // the pass's read section
//!     for request in 0..64u64 {
//!         // queue.add_used(&*mem, head, len) in a real device:
//!         mem.write_obj(request, GuestAddress(request * 8)).unwrap();
//!         irq.notify(); // if queue.needs_notification(&*mem) says so
//!     }
//! } // the section ends: one signal for the pass
//! assert_eq!(irq.notifier().0.load(Ordering::Relaxed), 1);
//! assert_eq!(irq.stats().requested, 64);
//! assert_eq!(irq.stats().signalled, 1);
//! ```
//!
//! `examples/ring_driver/` in the repository is this loop in full, on
//! `virtio_queue::Queue`, with a guest driver on the other side of the ring.
//!
//! # The `vmm-sys-util` feature: one release for the monitor and rcu-defer
//!
//! With the `vmm-sys-util` feature, [`virtio::Notify`](crate::virtio::Notify)
//! is implemented for `vmm_sys_util::eventfd::EventFd`, so a monitor's
//! irqfd goes into an `IrqNotifier` as it is.
//!
//! `vmm-sys-util` releases 0.11 to 0.15 are not semver-compatible with each
//! other, so the impl must be for the very release the monitor uses. The
//! feature accepts `>=0.11, <0.16` (each release in that range is tested), but
//! Cargo resolves a range to the newest release and does not unify it with an
//! older one already in the tree: a monitor on 0.14 that adds rcu-defer gets
//! two copies and "the trait bound `EventFd: Notify` is not satisfied". One
//! command makes Cargo use the monitor's release for rcu-defer too (it then
//! stays in `Cargo.lock`):
//!
//! ```sh
//! cargo update -p vmm-sys-util@0.15.0 --precise 0.14.0
//! ```
