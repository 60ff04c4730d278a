"""Confinement a sandbox child applies to itself before it runs any student code.

Standalone (standard library only): it runs inside the sandbox, where the grader's code
is not mounted. Order matters: rlimits, then PR_SET_NO_NEW_PRIVS, then Landlock, then
seccomp last, because the seccomp filter forbids some of the calls the earlier steps make.

x86_64 only: on another architecture `seccomp_filter` raises, and the parent's start-up
probe refuses to grade rather than run unconfined.
"""

import ctypes
import os
import platform
import resource
import struct

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
# Resolved here, in the zygote: a child looking it up first would build and cache the
# function object itself, dirtying shared pages (copy-on-write faults) to confine itself.
_libc.prctl.restype = ctypes.c_int

PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2

SYS_LANDLOCK_CREATE_RULESET = 444
SYS_LANDLOCK_ADD_RULE = 445
SYS_LANDLOCK_RESTRICT_SELF = 446
LANDLOCK_CREATE_RULESET_VERSION = 1
LANDLOCK_RULE_PATH_BENEATH = 1

# Filesystem rights, by the ABI version that introduced them.
FS_RIGHTS = [
    (1, 1 << 0),  # EXECUTE
    (1, 1 << 1),  # WRITE_FILE
    (1, 1 << 2),  # READ_FILE
    (1, 1 << 3),  # READ_DIR
    (1, 1 << 4),  # REMOVE_DIR
    (1, 1 << 5),  # REMOVE_FILE
    (1, 1 << 6),  # MAKE_CHAR
    (1, 1 << 7),  # MAKE_DIR
    (1, 1 << 8),  # MAKE_REG
    (1, 1 << 9),  # MAKE_SOCK
    (1, 1 << 10),  # MAKE_FIFO
    (1, 1 << 11),  # MAKE_BLOCK
    (1, 1 << 12),  # MAKE_SYM
    (2, 1 << 13),  # REFER
    (3, 1 << 14),  # TRUNCATE
    (5, 1 << 15),  # IOCTL_DEV
]
FS_READ = (1 << 2) | (1 << 3)  # READ_FILE | READ_DIR
NET_BIND_TCP, NET_CONNECT_TCP = 1, 2  # ABI 4
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1, 2  # ABI 6


class ConfinementError(Exception):
    pass


def landlock_abi():
    """The kernel's Landlock ABI version, or 0 when Landlock is unavailable."""
    abi = _libc.syscall(SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), LANDLOCK_CREATE_RULESET_VERSION)
    return abi if abi > 0 else 0


def set_rlimits_for(limits):
    """The rlimits a job asks for (memory, total CPU seconds)."""
    set_rlimits(limits.get("memory_mb"), limits.get("cpu_seconds_total"))


def set_rlimits(memory_mb, cpu_seconds, file_bytes=16 << 20, open_files=64):
    if memory_mb:
        resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))
    if cpu_seconds:
        soft = int(cpu_seconds) + 1
        resource.setrlimit(resource.RLIMIT_CPU, (soft, soft + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (file_bytes, file_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))


def no_new_privs():
    if _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise ConfinementError("prctl(PR_SET_NO_NEW_PRIVS) failed: " + os.strerror(ctypes.get_errno()))


def landlock(read_only, read_write, minimum_abi=1):
    """Allow reading `read_only` trees and full access to `read_write` trees; no other
    file access, no TCP bind/connect, no signals or abstract sockets out of the domain."""
    abi = landlock_abi()
    if abi < minimum_abi:
        raise ConfinementError("Landlock ABI %d is below the required %d" % (abi, minimum_abi))
    handled_fs = 0
    for version, right in FS_RIGHTS:
        if abi >= version:
            handled_fs |= right
    handled_net = (NET_BIND_TCP | NET_CONNECT_TCP) if abi >= 4 else 0
    scoped = (SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL) if abi >= 6 else 0
    if abi >= 6:
        attr = struct.pack("=QQQ", handled_fs, handled_net, scoped)
    elif abi >= 4:
        attr = struct.pack("=QQ", handled_fs, handled_net)
    else:
        attr = struct.pack("=Q", handled_fs)
    buf = ctypes.create_string_buffer(attr, len(attr))
    ruleset = _libc.syscall(SYS_LANDLOCK_CREATE_RULESET, buf, ctypes.c_size_t(len(attr)), 0)
    if ruleset < 0:
        raise ConfinementError("landlock_create_ruleset failed: " + os.strerror(ctypes.get_errno()))
    try:
        for paths, access in ((read_only, FS_READ), (read_write, handled_fs)):
            for path in paths:
                _landlock_allow(ruleset, path, access)
        if _libc.syscall(SYS_LANDLOCK_RESTRICT_SELF, ctypes.c_int(ruleset), 0) != 0:
            raise ConfinementError("landlock_restrict_self failed: " + os.strerror(ctypes.get_errno()))
    finally:
        os.close(ruleset)
    return abi


def _landlock_allow(ruleset, path, access):
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        if not os.path.isdir(path):
            access &= (1 << 0) | (1 << 1) | (1 << 2) | (1 << 14) | (1 << 15)  # file rights only
        rule = ctypes.create_string_buffer(struct.pack("=Qi", access, fd), 12)
        if _libc.syscall(SYS_LANDLOCK_ADD_RULE, ruleset, LANDLOCK_RULE_PATH_BENEATH, rule, 0) != 0:
            raise ConfinementError("landlock_add_rule(%s) failed: %s" % (path, os.strerror(ctypes.get_errno())))
    finally:
        os.close(fd)


# --- seccomp --------------------------------------------------------------------------

AUDIT_ARCH_X86_64 = 0xC000003E
SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_ALLOW = 0x7FFF0000
EPERM, ENOSYS = 1, 38
CLONE_THREAD = 0x00010000

# x86_64 syscall numbers denied outright: networking, new processes and programs, other
# processes' memory and identity, and the kernel's administrative interfaces.
DENIED = {
    "socket": 41, "connect": 42, "accept": 43, "bind": 49, "listen": 50, "socketpair": 53,
    "accept4": 288, "fork": 57, "vfork": 58, "execve": 59, "execveat": 322,
    "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311, "pidfd_open": 434,
    "pidfd_getfd": 438, "pidfd_send_signal": 424, "tkill": 200, "rt_sigqueueinfo": 129,
    "rt_tgsigqueueinfo": 297, "mount": 165, "umount2": 166, "pivot_root": 155, "chroot": 161,
    "unshare": 272, "setns": 308, "move_mount": 429, "open_tree": 428, "fsopen": 430,
    "fsconfig": 431, "fsmount": 432, "fspick": 433, "mount_setattr": 442, "bpf": 321,
    "perf_event_open": 298, "userfaultfd": 323, "io_uring_setup": 425, "io_uring_enter": 426,
    "io_uring_register": 427, "keyctl": 250, "add_key": 248, "request_key": 249,
    "init_module": 175, "finit_module": 313, "delete_module": 176, "kexec_load": 246,
    "kexec_file_load": 320, "reboot": 169, "swapon": 167, "swapoff": 168, "acct": 163,
    "quotactl": 179, "mknod": 133, "mknodat": 259, "personality": 135, "syslog": 103,
    "settimeofday": 164, "clock_settime": 227, "adjtimex": 159, "iopl": 172, "ioperm": 173,
    "open_by_handle_at": 304, "name_to_handle_at": 303, "fanotify_init": 300, "vhangup": 153,
    "setuid": 105, "setgid": 106, "setreuid": 113, "setregid": 114, "setresuid": 117,
    "setresgid": 119, "setgroups": 116, "setfsuid": 122, "setfsgid": 123,
    # SysV IPC and POSIX queues: one IPC namespace serves every child of a zygote, so
    # a segment would carry data (hidden inputs) and memory from one submission to the next.
    "shmget": 29, "shmat": 30, "shmctl": 31, "shmdt": 67, "semget": 64, "semop": 65,
    "semctl": 66, "semtimedop": 220, "msgget": 68, "msgsnd": 69, "msgrcv": 70, "msgctl": 71,
    "mq_open": 240, "mq_unlink": 241, "mq_timedsend": 242, "mq_timedreceive": 243,
    "mq_notify": 244, "mq_getsetattr": 245,
    # Anonymous shared memory is not counted by RLIMIT_AS; a child's memfds are made for it
    # by the zygote (see zygote.make_spare), sized and sealed by the parent.
    "memfd_create": 319, "memfd_secret": 447,
    # Permissions and times: a mode-000 directory in scratch would survive the cleanup
    # (same uid) and fill the tmpfs for later submissions.
    "chmod": 90, "fchmod": 91, "fchmodat": 268, "fchmodat2": 452, "chown": 92, "fchown": 93,
    "lchown": 94, "fchownat": 260, "utime": 132, "utimes": 235, "futimesat": 261, "utimensat": 280,
    "ioprio_set": 251, "migrate_pages": 256, "move_pages": 279, "process_madvise": 440,
    "process_mrelease": 448, "kcmp": 312,
}
# Calls aimed at a process by pid in args[0], allowed only on ourselves (0 or our pid):
# the zygote shares our uid, and lowering its hard limits or giving it an idle policy, a
# pinned CPU or a low priority would hurt every later submission.
SELF_ONLY = {"prlimit64": 302, "sched_setparam": 142, "sched_setscheduler": 144, "sched_setaffinity": 203, "sched_setattr": 314}
SYS_SETPRIORITY = 141  # setpriority(which, who, prio): only PRIO_PROCESS on ourselves
SYS_CLONE, SYS_CLONE3, SYS_KILL, SYS_TGKILL = 56, 435, 62, 234


def _stmt(code, k):
    return struct.pack("=HBBI", code, 0, 0, k & 0xFFFFFFFF)


def _jump(code, k, jt, jf):
    return struct.pack("=HBBI", code, jt, jf, k & 0xFFFFFFFF)


LD_W_ABS, JEQ_K, JGE_K, JSET_K, RET_K = 0x20, 0x15, 0x35, 0x45, 0x06


def _pid_is_self(arg, own_pid, allow_zero, deny):
    """Instructions that ALLOW if args[arg] (64-bit) is our pid (or 0) and deny otherwise."""
    lo, hi = 16 + 8 * arg, 20 + 8 * arg
    allow = _stmt(RET_K, SECCOMP_RET_ALLOW)
    if allow_zero:
        return [_stmt(LD_W_ABS, lo), _jump(JEQ_K, own_pid, 1, 0), _jump(JEQ_K, 0, 0, 3),
                _stmt(LD_W_ABS, hi), _jump(JEQ_K, 0, 0, 1), allow, deny]
    return [_stmt(LD_W_ABS, lo), _jump(JEQ_K, own_pid, 0, 3),
            _stmt(LD_W_ABS, hi), _jump(JEQ_K, 0, 0, 1), allow, deny]


def _only_for(nr, body):
    """Run `body` (which ends in a return) for syscall `nr`; otherwise fall through."""
    return [_stmt(LD_W_ABS, 0), _jump(JEQ_K, nr, 0, len(body))] + body


def build_filter(own_pid):
    """The BPF program: deny DENIED with EPERM, clone3 with ENOSYS (so threads fall back to
    clone), clone unless it makes a thread, kill/tgkill aimed at anyone but ourselves, and
    the SELF_ONLY calls and setpriority on anyone but ourselves."""
    deny = _stmt(RET_K, SECCOMP_RET_ERRNO | EPERM)
    prog = [
        _stmt(LD_W_ABS, 4),  # seccomp_data.arch
        _jump(JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
        _stmt(RET_K, SECCOMP_RET_KILL_PROCESS),
        _stmt(LD_W_ABS, 0),  # seccomp_data.nr
        _jump(JGE_K, 0x40000000, 0, 1),  # the x32 ABI: another syscall table
        deny,
    ]
    for nr in sorted(set(DENIED.values())):
        prog += [_jump(JEQ_K, nr, 0, 1), deny]
    prog += [_jump(JEQ_K, SYS_CLONE3, 0, 1), _stmt(RET_K, SECCOMP_RET_ERRNO | ENOSYS)]
    # clone: only with CLONE_THREAD (args[0], low word at offset 16).
    prog += _only_for(SYS_CLONE, [
        _stmt(LD_W_ABS, 16),
        _jump(JSET_K, CLONE_THREAD, 1, 0),
        deny,
        _stmt(RET_K, SECCOMP_RET_ALLOW),
    ])
    for nr in (SYS_KILL, SYS_TGKILL):  # pid 0 would be our whole process group
        prog += _only_for(nr, _pid_is_self(0, own_pid, False, deny))
    for nr in sorted(SELF_ONLY.values()):
        prog += _only_for(nr, _pid_is_self(0, own_pid, True, deny))
    # setpriority(which=PRIO_PROCESS (0), who=0 or our pid): args[0] must be 0.
    # Layout: [0] load which.lo, [1] which.lo == 0?, [2] load which.hi, [3] which.hi == 0?,
    # then the check of `who`, whose last instruction (index 3 + n) is the deny.
    self_check = _pid_is_self(1, own_pid, True, deny)
    n = len(self_check)
    prog += _only_for(SYS_SETPRIORITY, [
        _stmt(LD_W_ABS, 16), _jump(JEQ_K, 0, 0, (3 + n) - 1 - 1),
        _stmt(LD_W_ABS, 20), _jump(JEQ_K, 0, 0, (3 + n) - 3 - 1),
    ] + self_check)
    prog.append(_stmt(RET_K, SECCOMP_RET_ALLOW))
    if len(prog) > 4096:
        raise ConfinementError("seccomp program too long")
    return prog


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


_PID_SENTINEL = 0xFFFFFFFF  # never a pid (pid_max is at most 2**22)
_template = None  # (program built for the sentinel, indices of the instructions naming it)


def filter_for(own_pid):
    """build_filter(own_pid) from a template built once (in the zygote, before it forks a
    child, so a child only patches its pid into a copy: building costs ~0.2 ms)."""
    global _template
    if _template is None:
        prog = build_filter(_PID_SENTINEL)
        _template = (prog, [i for i, ins in enumerate(prog) if ins[:2] == b"\x15\x00" and ins[4:] == b"\xff\xff\xff\xff"])
    prog, at = _template
    prog = list(prog)
    for i in at:
        prog[i] = prog[i][:4] + struct.pack("=I", own_pid)
    return prog


MACHINE = platform.machine()


def seccomp_filter(own_pid):
    if MACHINE != "x86_64":
        raise ConfinementError("the seccomp filter is written for x86_64, not " + MACHINE)
    prog = filter_for(own_pid)
    code = b"".join(prog)
    filters = ctypes.create_string_buffer(code, len(code))
    fprog = SockFprog(len(prog), ctypes.addressof(filters))
    if _libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        raise ConfinementError("prctl(PR_SET_SECCOMP) failed: " + os.strerror(ctypes.get_errno()))


