//! The read side's small costs as loops for `valgrind --tool=callgrind`,
//! whose instruction counts do not depend on what else the machine is
//! doing. `scripts/instruction-counts` runs each loop at two lengths and
//! prints the difference per iteration (the set-up cost cancels out).
//!
//! ```text
//! cargo run --release --example instruction_counts -- OPERATION ITERATIONS
//! ```
//!
//! OPERATION is one of `outermost` (an ordinary thread's `read_lock` +
//! drop), `nested` (the same inside an outer section), `online` (a section
//! on an online thread), `notify_batched` (a section with one
//! `IrqNotifier::notify`, with a notifier that makes no system call) and
//! `notify_now` (an empty section, then one `notify_now` on the same
//! notifier).

use rcu_defer::virtio::{IrqNotifier, Notify};
use rcu_defer::{online, read_lock};
use std::hint::black_box;
use std::process::ExitCode;

/// A notifier that signals nobody: what is left is the library's own cost.
struct NoSyscall;

impl Notify for NoSyscall {
    fn signal(&self) -> std::io::Result<()> {
        black_box(());
        Ok(())
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(op), Some(Ok(n))) = (args.get(1), args.get(2).map(|n| n.parse::<u64>())) else {
        eprintln!(
            "usage: instruction_counts outermost|nested|online|notify_batched|notify_now ITERATIONS"
        );
        return ExitCode::from(2);
    };
    // The thread's first section registers it: outside the counted loop's
    // per-iteration cost either way, but done first so that both lengths
    // pay it alike.
    drop(read_lock());
    match op.as_str() {
        "outermost" => {
            for _ in 0..n {
                drop(black_box(read_lock()));
            }
        }
        "nested" => {
            let _outer = read_lock();
            for _ in 0..n {
                drop(black_box(read_lock()));
            }
        }
        "online" => {
            let _online = online();
            for _ in 0..n {
                drop(black_box(read_lock()));
            }
        }
        "notify_batched" => {
            let irq = IrqNotifier::new(NoSyscall);
            for _ in 0..n {
                let pass = read_lock();
                irq.notify();
                drop(pass);
            }
        }
        "notify_now" => {
            let irq = IrqNotifier::new(NoSyscall);
            for _ in 0..n {
                drop(black_box(read_lock()));
                irq.notify_now();
            }
        }
        other => {
            eprintln!("unknown operation {other:?}");
            return ExitCode::from(2);
        }
    }
    eprintln!("flavor: {}", rcu_defer::flavor());
    ExitCode::SUCCESS
}
