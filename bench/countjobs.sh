#!/bin/sh
# twistd, with the disk pool's jobs counted (bench/profile_small.py starts stor through it)
here=$(dirname "$(readlink -f "$0")")
exec "$(dirname "$STOR_BENCH_REAL_TWISTD")/python" "$here/countjobs.py" "$@"
