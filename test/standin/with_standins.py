#!/usr/bin/env python3
"""Run a command with a FreshPortal and a PayTrace stand-in of its own.

    with_standins.py [--log-dir DIR] COMMAND [ARG...]

Starts freshportal.py and paytrace.py (quiet) on free ports, runs COMMAND
with FRESHPAY_TEST_FP_URL and FRESHPAY_TEST_PT_URL set to their base URLs,
stops both and exits with COMMAND's exit status.  COMMAND gets this
process's stdin, stdout and stderr; the stand-ins' output is appended to
DIR/standin_fp.log and DIR/standin_pt.log (default DIR: log).

pg_regress runs the psql of each regression test through it (--launcher in
the Makefile's REGRESS_OPTS), so each test gets stand-ins of its own.  Since
pg_regress compares everything the command prints, this prints nothing of
its own unless a stand-in cannot start (exit 2).
"""
import os
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
STANDINS = {"fp": "freshportal.py", "pt": "paytrace.py"}
START_TIMEOUT = 15.0


class Stopped(Exception):
    pass


def on_signal(signum, frame):
    raise Stopped(signum)


def start(kind, portdir, logdir):
    portfile = os.path.join(portdir, kind + ".port")
    with open(os.path.join(logdir, f"standin_{kind}.log"), "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-u", os.path.join(HERE, STANDINS[kind]),
             "--port", "0", "--port-file", portfile, "--quiet"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    return process, portfile


def wait_for_port(kind, process, portfile, deadline):
    while time.monotonic() < deadline:
        try:
            with open(portfile) as f:
                text = f.read().strip()
            if text.isdigit():
                return int(text)
        except FileNotFoundError:
            pass
        if process.poll() is not None:
            raise RuntimeError(f"the {kind} stand-in exited with status {process.returncode}")
        time.sleep(0.02)
    raise RuntimeError(f"the {kind} stand-in wrote no port file within {START_TIMEOUT:.0f} s")


def stop(processes):
    for process in processes:
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + 10
    for process in processes:
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def main(argv):
    logdir = "log"
    if len(argv) > 1 and argv[1].startswith("--log-dir="):
        logdir = argv[1].split("=", 1)[1]
        argv = argv[1:]
    if len(argv) < 2:
        sys.exit(__doc__)
    os.makedirs(logdir, exist_ok=True)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    processes = []
    try:
        with tempfile.TemporaryDirectory(prefix="freshpay-standins-") as portdir:
            started = {kind: start(kind, portdir, logdir) for kind in STANDINS}
            processes = [process for process, _ in started.values()]
            deadline = time.monotonic() + START_TIMEOUT
            env = dict(os.environ)
            try:
                for kind, (process, portfile) in started.items():
                    port = wait_for_port(kind, process, portfile, deadline)
                    env[f"FRESHPAY_TEST_{kind.upper()}_URL"] = f"http://127.0.0.1:{port}"
            except RuntimeError as error:
                print(f"with_standins.py: {error} (see {logdir}/standin_*.log)", file=sys.stderr)
                return 2
            command = subprocess.Popen(argv[1:], env=env)
            try:
                return command.wait()
            except Stopped:
                command.terminate()
                command.wait()
                raise
    except Stopped as stopped:
        return 128 + stopped.args[0]
    finally:
        stop(processes)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
