//! Build script of the `peers` crate: compiles the C shim around liburcu's
//! read side when liburcu is installed, and builds the crate without it
//! otherwise, so that `cargo build --workspace`, `cargo clippy --workspace
//! --all-targets` and `cargo bench --no-run` work on any machine.
//!
//! Detection: `c/probe.c` (which includes `<urcu/urcu-memb.h>` and
//! `<urcu/urcu-mb.h>` and calls both flavors' `register_thread`) is compiled
//! and linked against `-lurcu-memb -lurcu-mb -lurcu-qsbr` (the last for the
//! urcu-qsbr shim) with the C compiler the `cc`
//! crate would use. Only if that succeeds is the shim compiled, linked, and
//! `cfg(peers_liburcu)` set for the crate's library, tests and benches.
//!
//! `RCU_DEFER_PEERS_LIBURCU` overrides the detection: `0` builds without
//! liburcu even when it is installed (to check that configuration), `1`
//! makes a missing liburcu a build error instead of a warning (for CI,
//! which checks for liburcu itself and must not silently measure nothing).
//!
//! Installing liburcu-dev later does not by itself re-run this script:
//! `touch peers/build.rs` (or `cargo clean -p peers`) does.

use std::env;
use std::path::PathBuf;
use std::process::Command;

/// The override described above.
const MODE_VAR: &str = "RCU_DEFER_PEERS_LIBURCU";

/// The cfg set when the shim is built and linked.
const CFG: &str = "peers_liburcu";

fn main() {
    println!("cargo:rustc-check-cfg=cfg({CFG})");
    println!("cargo:rerun-if-env-changed={MODE_VAR}");
    for file in [
        "c/probe.c",
        "c/shim_body.h",
        "c/urcu_memb_shim.c",
        "c/urcu_mb_shim.c",
        "c/urcu_qsbr_shim.c",
    ] {
        println!("cargo:rerun-if-changed={file}");
    }

    let mode = env::var(MODE_VAR).unwrap_or_default();
    let required = match mode.as_str() {
        "0" => {
            println!(
                "cargo:warning=peers: {MODE_VAR}=0, building without liburcu \
                 (the urcu-memb and urcu-mb benchmarks are skipped)"
            );
            return;
        }
        "1" => true,
        "" => false,
        other => panic!("{MODE_VAR} must be 0, 1 or unset, not {other:?}"),
    };

    match probe().and_then(|()| build_shim()) {
        Ok(()) => {
            println!("cargo:rustc-link-lib=dylib=urcu-memb");
            println!("cargo:rustc-link-lib=dylib=urcu-mb");
            println!("cargo:rustc-link-lib=dylib=urcu-qsbr");
            println!("cargo:rustc-cfg={CFG}");
        }
        Err(why) if required => {
            panic!("{MODE_VAR}=1 but liburcu cannot be used: {why}")
        }
        Err(why) => {
            // One line, shown once per (re)build of this crate.
            println!(
                "cargo:warning=peers: liburcu not usable ({why}); building without it, \
                 the urcu-memb and urcu-mb benchmarks are skipped. \
                 Install it with `apt-get install liburcu-dev`."
            );
        }
    }
}

/// A `cc` build with the settings the shim is compiled with, for the
/// compiler this target uses.
fn shim_build() -> cc::Build {
    let mut build = cc::Build::new();
    build
        .define("_LGPL_SOURCE", None)
        .opt_level(2)
        // Position-independent *executable* code, as a C program built by a
        // distribution compiler is: liburcu's thread-local reader state is
        // then reached with the initial-exec TLS model, not through
        // __tls_get_addr (the bench is an executable, so this is valid).
        .pic(false)
        .flag("-fPIE")
        .warnings(true)
        .cargo_warnings(false);
    build
}

/// Compiles and links `c/probe.c` against both liburcu flavors.
fn probe() -> Result<(), String> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or("OUT_DIR is not set")?);
    let compiler = shim_build()
        .cargo_metadata(false)
        .try_get_compiler()
        .map_err(|e| format!("no C compiler: {e}"))?;
    let output = Command::new(compiler.path())
        .args(compiler.args())
        .arg("c/probe.c")
        .arg("-o")
        .arg(out_dir.join("liburcu_probe"))
        .args(["-lurcu-memb", "-lurcu-mb", "-lurcu-qsbr"])
        .output()
        .map_err(|e| format!("cannot run {:?}: {e}", compiler.path()))?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    // The first line that says what went wrong (a missing header or
    // library), for the warning.
    let first_error = stderr
        .lines()
        .find(|l| l.contains("error") || l.contains("cannot find"))
        .unwrap_or("the probe program did not compile")
        .trim()
        .to_string();
    Err(first_error)
}

/// Compiles the three shims into one static library that Cargo links.
fn build_shim() -> Result<(), String> {
    shim_build()
        .file("c/urcu_memb_shim.c")
        .file("c/urcu_mb_shim.c")
        .file("c/urcu_qsbr_shim.c")
        .try_compile("peers_urcu_shim")
        .map_err(|e| format!("the shim did not compile: {e}"))
}
