//! The seccomp filters every sandboxed runtime runs under, compiled to BPF
//! with `seccompiler` and handed to bubblewrap (`--add-seccomp-fd`), which
//! loads them just before it executes the runtime.
//!
//! They deny what a script has no business doing even inside its namespaces:
//! starting processes (`fork`, `vfork`, `clone` without `CLONE_THREAD`; threads
//! still work), tracing or reading other processes, namespaces and mounts,
//! kernel keyrings, BPF, perf and module loading. `clone3` and `io_uring_*`
//! answer `ENOSYS`, so libc and libuv fall back to `clone` and plain syscalls.

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
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

/// The filters, each as the raw bytes of a `sock_filter` array.
pub(super) fn programs() -> Result<Vec<Vec<u8>>, seccompiler::Error> {
    let arch = TargetArch::try_from(std::env::consts::ARCH)?;

    let mut denied: BTreeMap<i64, Vec<SeccompRule>> =
        DENIED.iter().map(|&nr| (i64::from(nr), Vec::new())).collect();
    // A new process, not a thread: `clone` without CLONE_THREAD in its flags
    // (the first argument on x86_64 and aarch64).
    let new_process = SeccompCondition::new(
        0,
        SeccompCmpArgLen::Qword,
        SeccompCmpOp::MaskedEq(libc::CLONE_THREAD as u64),
        0,
    )?;
    denied.insert(
        i64::from(libc::SYS_clone),
        vec![SeccompRule::new(vec![new_process])?],
    );
    let absent = ABSENT.iter().map(|&nr| (i64::from(nr), Vec::new())).collect();

    let filters = [
        (denied, libc::EPERM),
        (absent, libc::ENOSYS),
    ];
    filters
        .into_iter()
        .map(|(rules, errno)| {
            let errno = u32::try_from(errno).expect("errno values are positive");
            let filter =
                SeccompFilter::new(rules, SeccompAction::Allow, SeccompAction::Errno(errno), arch)?;
            let program = BpfProgram::try_from(filter)?;
            Ok(to_bytes(&program))
        })
        .collect()
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
    fn compiles_two_filters_of_whole_instructions() {
        let programs = programs().unwrap();
        assert_eq!(programs.len(), 2);
        for program in programs {
            assert!(!program.is_empty());
            assert_eq!(program.len() % 8, 0);
            // The kernel refuses programs longer than BPF_MAXINSNS.
            assert!(program.len() / 8 <= 4096);
        }
    }
}
