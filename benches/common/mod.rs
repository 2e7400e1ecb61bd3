//! Helpers shared by the rcu-defer benchmarks.
//!
//! Each bench binary (`harness = false`) includes this file with
//! `mod common;` and uses the subset it needs.
//!
//! The main helper is [`run_in_both_flavors`]. The read-side flavor is
//! chosen once per process (`RCU_DEFER_FLAVOR=fence|membarrier`), so one
//! process cannot measure both. [`run_in_both_flavors`] runs the same binary
//! again as a child, with the same arguments (filters, `--test`, `--list`,
//! baselines), `RCU_DEFER_FLAVOR=fence` and a marker variable that keeps the
//! child from starting a child of its own. Once that child has finished (so
//! the two never compete for the CPU), it measures the flavor in effect in
//! this process. Benchmark groups are named after [`rcu_defer::flavor`],
//! the flavor actually in effect, never after the one that was asked for.

#![allow(dead_code)] // each bench binary uses its own subset

use criterion::Criterion;
use rcu_defer::Flavor;
use std::ffi::OsString;
use std::process::{Command, ExitCode};
use std::time::Duration;

/// The environment variable that forces the flavor (read by `rcu_defer`).
pub const FLAVOR_VAR: &str = "RCU_DEFER_FLAVOR";

/// Set in the environment of the re-executed child; its value is the flavor
/// the parent asked for. A process that sees it never spawns a child.
pub const CHILD_MARKER_VAR: &str = "RCU_DEFER_BENCH_FLAVOR_CHILD";

/// The Criterion configuration every rcu-defer bench starts from: short
/// enough that a bench binary finishes in about a minute, long enough for
/// stable medians of nanosecond-scale operations. Command-line options
/// (`--measurement-time`, `--sample-size`, filters, `--test`, ...) override
/// it.
pub fn criterion() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(1000))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50)
        .nresamples(20_000)
        .configure_from_args()
}

/// The name of the flavor in effect in this process (`"membarrier"` or
/// `"fence"`, as [`Flavor`] displays it), deciding it if nothing has yet.
/// Use it in group names, so that results are labelled with the flavor
/// that produced them.
pub fn flavor_name() -> String {
    rcu_defer::flavor().to_string()
}

/// Whether this process is the re-executed child of [`run_in_both_flavors`].
pub fn is_flavor_child() -> bool {
    std::env::var_os(CHILD_MARKER_VAR).is_some()
}

/// Registers the calling thread as an RCU reader (its first `read_lock`
/// does that), so that registration is never part of a measurement, and
/// checks that it is left outside any read section.
pub fn register_reader_thread() {
    drop(rcu_defer::read_lock());
    assert!(
        !rcu_defer::in_read_section(),
        "the bench thread must start outside any read section"
    );
}

/// Options after which Criterion only prints something and exits: a child
/// would print it twice.
fn prints_and_exits(args: &[OsString]) -> bool {
    args.iter()
        .any(|a| a == "-h" || a == "--help" || a == "-V" || a == "--version")
}

/// Runs `flavored` (benchmarks whose cost depends on the flavor) in a child
/// process under the fence flavor, then in this process under the flavor in
/// effect here, then `unflavored` (benchmarks that do not touch the flavor)
/// in this process only, and prints Criterion's final summary.
///
/// No child is started when this process already runs the fence flavor
/// (no membarrier, or `RCU_DEFER_FLAVOR=fence` given by the user): the
/// results would be the same group twice. The child's output goes to this
/// process's stdout and stderr.
///
/// Returns failure if the child could not be run or failed; this process's
/// own benchmarks still run first, so one flavor's results are never lost
/// to the other's failure.
pub fn run_in_both_flavors(
    flavored: impl Fn(&mut Criterion),
    unflavored: impl Fn(&mut Criterion),
) -> ExitCode {
    if is_flavor_child() {
        let mut c = criterion();
        flavored(&mut c);
        c.final_summary();
        return ExitCode::SUCCESS;
    }

    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let child_ok = if rcu_defer::flavor() == Flavor::Fence || prints_and_exits(&args) {
        if !prints_and_exits(&args) {
            eprintln!(
                "rcu-defer bench: this process already uses the fence flavor; \
                 measuring it once, with no re-executed child"
            );
        }
        true
    } else {
        run_fence_child(&args)
    };

    let mut c = criterion();
    flavored(&mut c);
    unflavored(&mut c);
    c.final_summary();
    if child_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Re-executes this binary with `args` under the fence flavor and waits for
/// it. Returns whether it ran and succeeded.
fn run_fence_child(args: &[OsString]) -> bool {
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("rcu-defer bench: cannot find this executable to re-run it: {e}");
            return false;
        }
    };
    let status = Command::new(&exe)
        .args(args)
        .env(FLAVOR_VAR, "fence")
        .env(CHILD_MARKER_VAR, "fence")
        .status();
    match status {
        Ok(status) if status.success() => true,
        Ok(status) => {
            eprintln!("rcu-defer bench: the fence-flavor run ({exe:?}) failed: {status}");
            false
        }
        Err(e) => {
            eprintln!("rcu-defer bench: cannot start the fence-flavor run ({exe:?}): {e}");
            false
        }
    }
}
