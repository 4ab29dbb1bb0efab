"""A module the zygote tests start with ``python -m`` (or as a script): ``report PATH`` writes what the process sees, ``write FD``
writes to an inherited descriptor, ``exit N`` exits with N, ``sleep`` waits to be killed, ``raise`` raises,
``atexit`` exits while a thread still works and with a handler registered."""

import atexit
import json
import os
import socket
import sys
import threading
import time

if __name__ == "__main__":
    what = sys.argv[1]
    if what == "report":
        seen = {"argv": sys.argv[1:], "argv0": sys.argv[0], "path0": sys.path[0], "marker": os.environ.get("ZYGOTE_TEST_MARKER"), "cwd": os.getcwd(),
                "pid": os.getpid(), "session": os.getsid(0), "stdin": sys.stdin.read(),
                "interfaces": [name for _, name in socket.if_nameindex()]}
        with open(sys.argv[2], "w") as f:
            json.dump(seen, f)
        print("reported", flush=True)
    elif what == "write":  # to an inherited descriptor
        os.write(int(sys.argv[2]), b"through the inherited descriptor")
    elif what == "exit":
        sys.exit(int(sys.argv[2]))
    elif what == "sleep":
        print("sleeping", flush=True)
        time.sleep(600)
    elif what == "raise":
        raise ValueError("the child's own error")
    elif what == "atexit":
        atexit.register(lambda: print("atexit handler ran", flush=True))
        threading.Thread(target=lambda: (time.sleep(0.3), print("thread finished", flush=True))).start()
