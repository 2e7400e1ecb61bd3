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
