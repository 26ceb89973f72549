#!/usr/bin/env python3
"""Runs inside a copy of autoheal-agent.service's sandbox (same [Service] directives, this as
ExecStart) and tries what each directive forbids. Prints one line per directive:
`effective NAME: what happened` or `NOT-effective NAME: what happened`."""
import ctypes
import errno
import mmap
import os
import resource
import socket

libc = ctypes.CDLL(None, use_errno=True)


def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return line.split(":", 1)[1].strip()
    return ""


def mount_opts(path):
    best = None
    for line in open("/proc/self/mountinfo"):
        f = line.split()
        if path == f[4] or path.startswith(f[4].rstrip("/") + "/"):
            if best is None or len(f[4]) >= len(best[0]):
                best = (f[4], f[5])
    return best[1].split(",") if best else []


def report(name, ok, detail):
    print(f"{'effective' if ok else 'NOT-effective'} {name}: {detail}", flush=True)


def write_fails(path):
    try:
        with open(path, "w") as f:
            f.write("x")
        os.unlink(path)
        return False, "write succeeded"
    except OSError as e:
        return e.errno in (errno.EROFS, errno.EACCES, errno.EPERM), errno.errorcode.get(e.errno, str(e.errno))


report("NoNewPrivileges", status("NoNewPrivs") == "1", f"NoNewPrivs={status('NoNewPrivs')}")
report("CapabilityBoundingSet", int(status("CapBnd") or "1", 16) == 0, f"CapBnd={status('CapBnd')}")
report("SystemCallFilter", status("Seccomp") == "2", f"Seccomp={status('Seccomp')} filters={status('Seccomp_filters')}")
report("ProtectSystem=strict", "ro" in mount_opts("/usr") and "ro" in mount_opts("/etc"),
       f"/usr {mount_opts('/usr')[:1]}, /etc {mount_opts('/etc')[:1]}")
report("ProtectHome=read-only", "ro" in mount_opts("/home"), f"/home {mount_opts('/home')[:1]}")
report("ProtectKernelTunables", "ro" in mount_opts("/proc/sys"), f"/proc/sys {mount_opts('/proc/sys')[:1]}")
report("ProtectControlGroups", "ro" in mount_opts("/sys/fs/cgroup"), f"/sys/fs/cgroup {mount_opts('/sys/fs/cgroup')[:1]}")
report("PrivateTmp", not os.path.exists("/tmp/rehearsal-host-marker"), "the container's /tmp marker is not visible")
devs = sorted(os.listdir("/dev"))
report("PrivateDevices", "kmsg" not in devs and "console" not in devs, f"/dev: {' '.join(devs)}")
writable = "rw" in mount_opts("/run/autoheal")
report("RuntimeDirectory (the one writable place)", writable, f"/run/autoheal {mount_opts('/run/autoheal')[:1]}")

# IPAddressDeny=any: 192.0.2.1 (TEST-NET-1) is in no allowed range. Refused at once (EPERM)
# when the BPF firewall is on; otherwise the connect is attempted.
s = socket.socket()
s.settimeout(1)
try:
    s.connect(("192.0.2.1", 9))
    report("IPAddressDeny", False, "connected")
except PermissionError:
    report("IPAddressDeny", True, "EPERM")
except OSError as e:
    report("IPAddressDeny", False, f"attempted, then {e.__class__.__name__} {e}")
finally:
    s.close()

try:
    socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0).close()
    report("RestrictAddressFamilies", False, "AF_NETLINK socket created")
except OSError as e:
    report("RestrictAddressFamilies", e.errno == errno.EAFNOSUPPORT, errno.errorcode.get(e.errno, ""))

CLONE_NEWUTS = 0x04000000
if libc.unshare(CLONE_NEWUTS) == 0:
    report("RestrictNamespaces", False, "unshare(CLONE_NEWUTS) succeeded")
else:
    e = ctypes.get_errno()
    report("RestrictNamespaces", e == errno.EPERM, errno.errorcode.get(e, str(e)))

PROT_RWX = mmap.PROT_READ | mmap.PROT_WRITE | 0x4
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
addr = libc.mmap(None, 4096, PROT_RWX, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
if addr in (None, ctypes.c_void_p(-1).value):
    e = ctypes.get_errno()
    report("MemoryDenyWriteExecute", e == errno.EPERM, errno.errorcode.get(e, str(e)))
else:
    report("MemoryDenyWriteExecute", False, "W+X mapping made")

soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
try:
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft - 1, hard))
    report("SystemCallFilter=~@resources", False, "setrlimit succeeded: glibc calls prlimit64, which is in @default, not @resources (so on any host, not only in nspawn)")
except OSError as e:
    report("SystemCallFilter=~@resources", e.errno == errno.EPERM, errno.errorcode.get(e.errno, ""))

if libc.personality(0x0400000) == -1:  # READ_IMPLIES_EXEC
    report("LockPersonality", True, "personality() refused")
else:
    report("LockPersonality", False, "personality(READ_IMPLIES_EXEC) accepted")
