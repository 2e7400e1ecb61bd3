//! Correctness: what is model-checked, stress-tested and checked for
//! undefined behaviour, and how to run each.
//!
//! # Model-checked
//!
//! With loom (`loom-tests/tests/` in the repository), every interleaving
//! within the bound written next to each model:
//!
//! - grace periods: a reader that began before `synchronize_rcu` has ended
//!   when it returns, with a second writer sharing grace periods, with nested
//!   guards, and with a sleeping writer that two readers must wake; a section
//!   that begins after the grace period started does not hold it up
//!   (`grace_period.rs`);
//! - `call_rcu` and `drain_call_rcu`: every callback queued before a drain
//!   has run when it returns, exactly once, never inside a read section that
//!   was open when it was queued (`call_rcu.rs`);
//! - `call_local`: deferred calls run exactly once, after the outermost end,
//!   without holding up a concurrent writer (`call_local.rs`);
//! - registration: threads that register and exit during a grace period are
//!   not missed (`registration.rs`);
//! - `RcuCell`: `replace_sync` and `replace` never drop a value under a
//!   reader; two concurrent `update`s lose nothing, nor do a
//!   `compare_exchange` and an `update` racing each other, and the exchanged
//!   value outlives the exchanger's section (`cell.rs`);
//! - the deadlock detector refuses only the calling thread's own section
//!   (`detect.rs`);
//! - failures: with every writer fence failing as a refused `membarrier`
//!   does, two writers both get the error and free nothing, and a `call_rcu`
//!   callback stays queued while its drain gets the error; a stall handler
//!   that panics neither ends a grace period early nor breaks the next one
//!   (`failures.rs`);
//! - a batched `IrqNotifier::notify`, which holds no reference count: its
//!   queued signal never outlives the notifier, whichever thread drops the
//!   last `Arc` (`notify.rs`);
//! - and that the models can fail: with a deliberate fault compiled only
//!   under `cfg(loom)` (the reader's fence dropped, or the wait for readers
//!   skipped), loom reports the broken protocol (`broken.rs`).
//!
//! ```sh
//! RUSTFLAGS="--cfg loom" cargo test -p loom-tests --release --target-dir target/loom
//! ```
//!
//! # Stress-tested
//!
//! Where loom's bounded search stops:
//!
//! - `tests/torture.rs` (rcutorture-style, both flavors at once, ~2 s):
//!   readers record the grace-period age of what they see (the "pipe"
//!   histogram; age 2 means freed, and fails the test), updaters use
//!   `replace`, `replace_sync` and `update`, several threads flood
//!   `call_rcu`, reader threads are created and destroyed all the time,
//!   readers defer `call_local` calls, online (QSBR) readers also read with
//!   no section between quiescent states and go offline, wait for grace
//!   periods and drop their handle now and then, a writer retires against
//!   polled cookies, a stall handler with a 1 ms timeout panics now and then,
//!   and (Linux) a forker forks the tortured process every 100 ms, each child
//!   checking its registry, grace periods, drain and `replace_sync`; every
//!   callback runs exactly once and live objects return to the baseline. The
//!   long run: `RCU_DEFER_TORTURE_SECS=600 cargo test --release --test
//!   torture -- --ignored --nocapture`.
//! - `tests/call_rcu_flood.rs`: 10 million `call_rcu`s from two threads while
//!   readers run; every callback runs once, queue memory follows the backlog
//!   and comes back after `drain_call_rcu` (`BENCHMARKS.md`, "Memory under a
//!   `call_rcu` flood").
//! - `tests/fork.rs`: real child processes forked while another thread is in
//!   a read section, waits in `synchronize_rcu`, or while the `rcu-call`
//!   thread runs a batch or waits for its grace period; from inside a read
//!   section; while threads register and exit; and a grandchild. Each child
//!   finishes `synchronize_rcu`, `call_rcu` + `drain_call_rcu` and
//!   `RcuCell::replace_sync` within seconds, holds no record of the parent's
//!   threads, and its stall reports name only its own; the parent goes on.
//! - `tests/scale.rs`: a thousand registered threads (twenty stuck in a
//!   section give a ten-line stall report), ten thousand threads created and
//!   destroyed under a writer's `replace_sync` loop; the registry's entries,
//!   capacity and stand-ins return to their baseline. The 100,000-thread
//!   run: `cargo test --release --test scale -- --ignored --nocapture`.
//!
//! # Checked for undefined behaviour
//!
//! By Miri (in CI when a nightly toolchain with Miri is installed,
//! `scripts/miri`): `RcuCell` and `Retired` (`tests/cell.rs`), online
//! threads and sections left open across `Online::offline`
//! (`tests/online.rs`), the batched notify's queued signal and when a
//! notifier's state is freed (`tests/notify_lifetime.rs`), `call_local` and
//! its type-erased deferred calls (`tests/call_local.rs`, `src/erased.rs`),
//! and a `call_rcu` callback that leaves the `rcu-call` thread online. Miri
//! has no `membarrier`, so it runs the fence flavor; the script says which
//! tests it leaves out and why (child processes, loops sized for compiled
//! code).
//!
//! ```sh
//! rustup component add --toolchain nightly miri rust-src
//! scripts/miri
//! ```
//!
//! # The examples on these pages
//!
//! Every Rust example in the crate documentation and in this guide runs as a
//! doc test (`cargo test --doc`), and so do the README's.
