"""Run a command as a child subreaper, so that the CPU time of every process
under it is accounted somewhere when it exits.

    python3 reaper.py COMMAND [ARGS...]

OpenSSH's per-connection processes are not all reaped by their parents: the
unprivileged post-auth child, which does the packet work of a forward, can
outlive its monitor and be re-parented. Under this wrapper it is re-parented
here and reaped here, so its CPU time lands in this process's cutime/cstime
(/proc/PID/stat), instead of in init's. SIGTERM and SIGINT go to the command.
"""

import ctypes
import os
import signal
import sys

PR_SET_CHILD_SUBREAPER = 36


def main(argv):
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
    child = os.fork()
    if child == 0:
        os.execv(argv[0], argv)

    def forward(signum, _frame):
        try:
            os.kill(child, signum)
        except ProcessLookupError:
            pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    status = 0
    while True:
        try:
            pid, st = os.wait()
        except ChildProcessError:
            break
        if pid == child:
            status = os.waitstatus_to_exitcode(st)
    sys.exit(status if status >= 0 else 128 - status)


if __name__ == "__main__":
    main(sys.argv[1:])
