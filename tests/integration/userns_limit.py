"""Run a command in a new user namespace that may make at most N more (as root).

    python userns_limit.py N CMD...

The namespace maps uids and gids 0-65535 to themselves (root writes the maps of its
child's namespace), and its user.max_user_namespaces is set to N: with 0 it stands for a
system that refuses unprivileged user namespaces, for the test only.
"""

import ctypes
import os
import sys

CLONE_NEWUSER = 0x10000000


def main() -> int:
    limit, cmd = sys.argv[1], sys.argv[2:]
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(ready_r)
        os.close(go_w)
        if ctypes.CDLL(None, use_errno=True).unshare(CLONE_NEWUSER) != 0:
            os._exit(125)
        os.write(ready_w, b"1")
        if os.read(go_r, 1) != b"1":  # the maps are written
            os._exit(125)
        with open("/proc/sys/user/max_user_namespaces", "w") as f:
            f.write(limit)
        os.execvp(cmd[0], cmd)
    os.close(ready_w)
    os.close(go_r)
    if os.read(ready_r, 1) == b"1":
        for name in ("uid_map", "gid_map"):
            with open(f"/proc/{pid}/{name}", "w") as f:
                f.write("0 0 65536")
        os.write(go_w, b"1")
    os.close(go_w)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    sys.exit(main())
