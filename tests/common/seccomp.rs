//! Seccomp filters for tests that run a sandboxed child process.

use std::io;

/// `AUDIT_ARCH_*` of the architecture the tests are built for.
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;

/// Which threads a filter applies to.
pub enum Threads {
    /// The calling thread only (and threads it creates later).
    Calling,
    /// Every thread of the process (`SECCOMP_FILTER_FLAG_TSYNC`).
    All,
}

/// Installs a filter that answers each system call in `rules` with its
/// action (`SECCOMP_RET_*`) and every other one, and any call made for
/// another architecture, with `otherwise`. Sets `PR_SET_NO_NEW_PRIVS`
/// first, as an unprivileged filter requires. A filter cannot be removed:
/// install it in a child process.
pub fn install(rules: &[(libc::c_long, u32)], otherwise: u32, threads: Threads) -> io::Result<()> {
    // Classic BPF opcodes (linux/bpf_common.h): BPF_LD|BPF_W|BPF_ABS,
    // BPF_JMP|BPF_JEQ|BPF_K and BPF_RET|BPF_K (BPF_LD, BPF_W and BPF_K are 0).
    const LD_W_ABS: u16 = 0x20;
    const JEQ_K: u16 = 0x05 | 0x10;
    const RET_K: u16 = 0x06;
    // Offsets in `struct seccomp_data`: nr, then arch.
    const NR: u32 = 0;
    const ARCH: u32 = 4;
    let insn = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    let mut program = vec![
        insn(LD_W_ABS, 0, 0, ARCH),
        insn(JEQ_K, 1, 0, AUDIT_ARCH),
        insn(RET_K, 0, 0, otherwise),
        insn(LD_W_ABS, 0, 0, NR),
    ];
    for &(nr, action) in rules {
        // Not this call: skip its return.
        program.push(insn(JEQ_K, 0, 1, nr as u32));
        program.push(insn(RET_K, 0, 0, action));
    }
    program.push(insn(RET_K, 0, 0, otherwise));
    let fprog = libc::sock_fprog {
        len: u16::try_from(program.len()).expect("a short filter"),
        filter: program.as_mut_ptr(),
    };
    // SAFETY: PR_SET_NO_NEW_PRIVS takes integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let flags = match threads {
        Threads::Calling => 0,
        Threads::All => libc::SECCOMP_FILTER_FLAG_TSYNC,
    };
    // SAFETY: `fprog` points at `program`, both alive for the call; the
    // kernel copies the filter before returning.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            flags,
            &fprog as *const libc::sock_fprog,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
