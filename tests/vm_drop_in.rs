//! Claims about what makes `GuestMemoryRcu` a drop-in for
//! `GuestMemoryAtomic`: `From<Arc<M>>`, owned snapshots (`into_inner`,
//! `snapshot`) that may leave the thread, and reports that name the line
//! of the caller of `memory()`, not rcu-defer's.

mod common;

use common::within;
use rcu_defer::vm::GuestMemoryRcu;
use rcu_defer::{drain_call_rcu, in_read_section, try_synchronize_rcu, Error};
use std::sync::Arc;
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryBackend, GuestMemoryMmap};

fn ram() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1_0000)]).unwrap()
}

/// Claim: `From<Arc<M>>` wraps the caller's map itself, not a copy: a
/// handle dereferences to the very `M` in the `Arc`.
#[test]
fn from_arc_wraps_the_callers_map_and_handles_dereference_to_it() {
    let map = Arc::new(ram());
    let memory = GuestMemoryRcu::from(Arc::clone(&map));
    let handle = memory.memory();
    assert!(std::ptr::eq(&*handle, &*map));
    drop(handle);
    assert_eq!(memory.snapshot().num_regions(), 1);
    assert!(Arc::ptr_eq(&memory.snapshot(), &map));
}

/// Claim: `into_inner` gives an owned `Arc` that closes no section but
/// keeps its map alive after a replace, after the grace period that frees
/// the replaced map's published count, and after the last address space
/// is gone; the map goes with the last snapshot.
#[test]
fn a_snapshot_keeps_its_map_after_replace_and_the_map_goes_with_the_last_snapshot() {
    let memory = GuestMemoryRcu::new(ram());
    memory
        .memory()
        .write_obj(0x1234_u32, GuestAddress(0x10))
        .unwrap();
    let snapshot = memory.memory().into_inner();
    assert!(!in_read_section(), "a snapshot is no read section");
    let weak = Arc::downgrade(&snapshot);

    memory.lock().unwrap().replace(ram());
    drop(memory);
    drain_call_rcu();
    assert_eq!(
        snapshot.read_obj::<u32>(GuestAddress(0x10)).unwrap(),
        0x1234,
        "the replaced map is still readable through the snapshot"
    );
    assert_eq!(
        Arc::strong_count(&snapshot),
        1,
        "only the snapshot holds it"
    );
    drop(snapshot);
    assert!(
        weak.upgrade().is_none(),
        "the map went with the last snapshot"
    );
}

/// Claim: a `DescriptorChain` popped with a snapshot is `Send`: a worker
/// thread serves it (virtiofsd's thread-pool pattern) and its write is seen
/// through the device's map.
#[test]
fn a_descriptor_chain_popped_with_a_snapshot_is_served_on_a_worker_thread() {
    let memory = GuestMemoryRcu::new(ram());
    let mut queue: Queue = {
        let mem = memory.memory();
        let driver = MockSplitQueue::create(&*mem, GuestAddress(0), 16);
        let desc = RawDescriptor::from(SplitDescriptor::new(0x8000, 8, 2 /* WRITE */, 0));
        driver.add_desc_chains(&[desc], 0).unwrap();
        driver.create_queue().unwrap()
    };
    let chain = queue
        .pop_descriptor_chain(memory.snapshot())
        .expect("the posted chain");
    assert!(!in_read_section());
    within("a chain served on a worker thread", move || {
        let desc = chain.clone().next().unwrap();
        chain.memory().write_obj(0xfeed_u64, desc.addr()).unwrap();
    });
    assert_eq!(
        memory
            .memory()
            .read_obj::<u64>(GuestAddress(0x8000))
            .unwrap(),
        0xfeed
    );
}

/// Claim: a deadlock error for a section entered by `memory()` names the
/// line of the `memory()` call (in this file), not rcu-defer's source.
#[test]
fn a_deadlock_error_for_a_section_entered_by_memory_names_the_callers_line() {
    let memory = GuestMemoryRcu::new(ram());
    let (handle, line) = (memory.memory(), line!());
    match try_synchronize_rcu() {
        Err(Error::InReadSection { entered_at, .. }) => {
            assert_eq!(entered_at.file(), file!());
            assert_eq!(entered_at.line(), line);
        }
        other => panic!("expected a deadlock error, got {other:?}"),
    }
    drop(handle);
}

/// Claim: the same holds for a section entered through a generic function
/// over `GuestAddressSpace` that is itself `#[track_caller]`: the location
/// follows the call chain out to the user's line.
#[test]
fn the_callers_line_is_named_through_a_track_caller_generic_function() {
    #[track_caller]
    fn take<A: GuestAddressSpace>(space: &A) -> A::T {
        space.memory()
    }
    let memory = GuestMemoryRcu::new(ram());
    let (handle, line) = (take(&memory), line!());
    let Err(Error::InReadSection { entered_at, .. }) = try_synchronize_rcu() else {
        panic!("expected a deadlock error");
    };
    assert_eq!((entered_at.file(), entered_at.line()), (file!(), line));
    drop(handle);
}
