//! A write to an `RcuCell` from inside its own `update` closure.

#[test]
fn a_write_to_the_same_cell_from_inside_update_panics_instead_of_hanging() {
    use rcu_defer::RcuCell;
    let cell = std::sync::Arc::new(RcuCell::new(1u32));
    let inner = cell.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            inner.update(|v| {
                inner.replace(*v + 10);
                *v + 1
            })
        }));
        tx.send(result.map_err(|p| p.downcast_ref::<String>().cloned().unwrap_or_default()))
            .unwrap();
    });
    let message = rx
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("a re-entrant write hung")
        .expect_err("a re-entrant write must panic");
    assert!(message.contains("inside RcuCell::update"), "{message}");
    // Nothing changed, and the cell still works.
    let g = rcu_defer::read_lock();
    assert_eq!(*cell.read(&g), 1);
    drop(g);
    cell.update(|v| v + 1);
    let g = rcu_defer::read_lock();
    assert_eq!(*cell.read(&g), 2);
}

/// A value that counts its drops.
struct Counted(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

#[test]
fn the_value_a_refused_write_from_inside_update_was_given_is_dropped_not_leaked() {
    use rcu_defer::RcuCell;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let drops = Arc::new(AtomicUsize::new(0));
    let cell = RcuCell::new(Counted(Arc::clone(&drops)));
    for write in ["replace", "replace_sync"] {
        let before = drops.load(Ordering::SeqCst);
        let refused = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            cell.update(|_| {
                let building = Counted(Arc::clone(&drops));
                match write {
                    "replace" => cell.replace(building),
                    _ => drop(cell.replace_sync(building)),
                }
                Counted(Arc::clone(&drops))
            })
        }));
        assert!(refused.is_err(), "{write} from inside update must panic");
        assert_eq!(
            drops.load(Ordering::SeqCst),
            before + 1,
            "the value given to the refused {write} was dropped, and nothing else"
        );
    }
    drop(cell);
    // Only the cell's own value is left, and dropping the cell drops it.
    assert_eq!(drops.load(Ordering::SeqCst), 3);
}
