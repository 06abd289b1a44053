//! The seccomp filters every sandboxed runtime runs under, compiled to BPF
//! with `seccompiler` and handed to bubblewrap (`--add-seccomp-fd`), which
//! loads them just before it executes the runtime.
//!
//! They deny what a script has no business doing even inside its namespaces:
//! starting processes (`fork`, `vfork`, `clone` without `CLONE_THREAD`; threads
//! still work), tracing or reading other processes, namespaces and mounts,
//! kernel keyrings, BPF, perf and module loading. `clone3` and `io_uring_*`
//! answer `ENOSYS`, so libc and libuv fall back to `clone` and plain syscalls.
//! On x86_64 a third filter refuses the x32 syscall numbers, which the other
//! filters (keyed by x86_64 numbers) would otherwise let through on kernels
//! built with x32 support.

use seccompiler::{
    sock_filter, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};
use std::collections::BTreeMap;

/// Syscalls that fail with `EPERM`, whatever their arguments.
const DENIED: &[libc::c_long] = &[
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_open_tree,
    libc::SYS_move_mount,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_mount_setattr,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_userfaultfd,
    libc::SYS_kexec_load,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_reboot,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_acct,
    libc::SYS_quotactl,
    libc::SYS_name_to_handle_at,
    libc::SYS_open_by_handle_at,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_fork,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_vfork,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_kexec_file_load,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_iopl,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_ioperm,
];

/// Syscalls that answer `ENOSYS`, as if the kernel were older: callers fall
/// back to what the other filter can inspect (`clone`) or to plain I/O.
const ABSENT: &[libc::c_long] = &[
    libc::SYS_clone3,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
];

/// Starting a process, which the compiler may do (to run its linker).
#[cfg(target_arch = "x86_64")]
const NEW_PROCESS: &[libc::c_long] = &[libc::SYS_fork, libc::SYS_vfork];
#[cfg(not(target_arch = "x86_64"))]
const NEW_PROCESS: &[libc::c_long] = &[];

/// The filters, each as the raw bytes of a `sock_filter` array; with
/// `allow_processes`, `fork`, `vfork` and `clone` of processes pass.
pub(super) fn programs(allow_processes: bool) -> Result<Vec<Vec<u8>>, seccompiler::Error> {
    let arch = TargetArch::try_from(std::env::consts::ARCH)?;

    let mut denied: BTreeMap<i64, Vec<SeccompRule>> = DENIED
        .iter()
        .filter(|nr| !(allow_processes && NEW_PROCESS.contains(nr)))
        .map(|&nr| (nr, Vec::new()))
        .collect();
    if !allow_processes {
        // A new process, not a thread: `clone` without CLONE_THREAD in its
        // flags (the first argument on x86_64 and aarch64).
        let new_process = SeccompCondition::new(
            0,
            SeccompCmpArgLen::Qword,
            SeccompCmpOp::MaskedEq(libc::CLONE_THREAD as u64),
            0,
        )?;
        denied.insert(libc::SYS_clone, vec![SeccompRule::new(vec![new_process])?]);
    }
    let absent = ABSENT.iter().map(|&nr| (nr, Vec::new())).collect();

    let filters = [(denied, libc::EPERM), (absent, libc::ENOSYS)];
    let mut programs = filters
        .into_iter()
        .map(|(rules, errno)| {
            let errno = u32::try_from(errno).expect("errno values are positive");
            let filter = SeccompFilter::new(
                rules,
                SeccompAction::Allow,
                SeccompAction::Errno(errno),
                arch,
            )?;
            let program = BpfProgram::try_from(filter)?;
            Ok(to_bytes(&program))
        })
        .collect::<Result<Vec<_>, seccompiler::Error>>()?;
    if arch == TargetArch::x86_64 {
        programs.push(to_bytes(&no_x32()));
    }
    Ok(programs)
}

/// `EPERM` for every syscall number with the x32 bit set, when the
/// architecture is x86_64; everything else is left to the other filters.
fn no_x32() -> BpfProgram {
    const AUDIT_ARCH_X86_64: u32 = 62 | 0x8000_0000 | 0x4000_0000;
    const X32_SYSCALL_BIT: u32 = 0x4000_0000;
    let instruction = |code: u32, jt, jf, k| sock_filter {
        code: u16::try_from(code).expect("BPF opcodes fit 16 bits"),
        jt,
        jf,
        k,
    };
    let load = |offset| instruction(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0, 0, offset);
    let errno = u32::try_from(libc::EPERM).expect("errno values are positive");
    vec![
        load(4), // seccomp_data.arch
        instruction(
            libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
            0,
            3,
            AUDIT_ARCH_X86_64,
        ),
        load(0), // seccomp_data.nr
        instruction(
            libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K,
            0,
            1,
            X32_SYSCALL_BIT,
        ),
        instruction(
            libc::BPF_RET | libc::BPF_K,
            0,
            0,
            libc::SECCOMP_RET_ERRNO | errno,
        ),
        instruction(libc::BPF_RET | libc::BPF_K, 0, 0, libc::SECCOMP_RET_ALLOW),
    ]
}

/// The in-memory layout of `struct sock_filter[]`, which is what the kernel
/// (and bubblewrap reading it from a file descriptor) expects.
fn to_bytes(program: &BpfProgram) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(program.len() * 8);
    for instruction in program {
        bytes.extend_from_slice(&instruction.code.to_ne_bytes());
        bytes.push(instruction.jt);
        bytes.push(instruction.jf);
        bytes.extend_from_slice(&instruction.k.to_ne_bytes());
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiles_filters_of_whole_instructions() {
        let runtime = programs(false).unwrap();
        let compiler = programs(true).unwrap();
        assert!(runtime.len() >= 2);
        assert_eq!(runtime.len(), compiler.len());
        assert!(compiler[0].len() < runtime[0].len(), "fewer denials");
        for program in runtime.into_iter().chain(compiler) {
            assert!(!program.is_empty());
            assert_eq!(program.len() % 8, 0);
            // The kernel refuses programs longer than BPF_MAXINSNS.
            assert!(program.len() / 8 <= 4096);
        }
    }
}
