#!/usr/bin/env python3
"""Stand-in for GNU `/usr/bin/time -v -o FILE CMD...` where that is not installed (a GPU machine
without network): runs CMD, writes its wall-clock time, peak RSS and exit status to FILE in GNU
time's wording (the lines benches/bench.sh reads), and exits with CMD's status."""

import resource
import subprocess
import sys
import time


def main() -> int:
    args = sys.argv[1:]
    if len(args) < 3 or args[0] != "-o":
        sys.exit("usage: timev.py -o FILE CMD [ARGS...]")
    out, cmd = args[1], args[2:]
    start = time.monotonic()
    status = subprocess.call(cmd)
    elapsed = time.monotonic() - start
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux
    minutes, seconds = divmod(elapsed, 60)
    with open(out, "w") as f:
        f.write(f'\tCommand being timed: "{" ".join(cmd)}"\n')
        f.write(f"\tElapsed (wall clock) time (h:mm:ss or m:ss): {int(minutes)}:{seconds:05.2f}\n")
        f.write(f"\tMaximum resident set size (kbytes): {peak_kb}\n")
        f.write(f"\tExit status: {status}\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
