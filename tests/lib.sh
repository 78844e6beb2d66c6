# Shell helpers the test and bench scripts share (POSIX sh, sourced):
# waiting for a server's line, reading idemproxy's port, stopping what a
# script started, by process id.

# wait_line FILE PATTERN TRIES STEP [PID]: until FILE has a line that
# matches PATTERN (grep), looking TRIES times STEP seconds apart. 1 if it
# does not come, or PID (when given) exits first.
wait_line() {
    _tries=0
    until grep -q "$2" "$1" 2>/dev/null; do
        _tries=$((_tries + 1))
        [ "$_tries" -gt "$3" ] && return 1
        [ -n "${5:-}" ] && ! kill -0 "$5" 2>/dev/null && return 1
        sleep "$4"
    done
    return 0
}

# listening_port FILE: the port of idemproxy's "listening http=HOST:PORT"
# line in FILE.
listening_port() {
    sed -n 's/^listening http=[^ ]*:\([0-9]*\).*/\1/p' "$1"
}

# stop_pids PID...: signal each, then wait for each.
stop_pids() {
    for _pid in "$@"; do
        kill "$_pid" 2>/dev/null || true
    done
    for _pid in "$@"; do
        wait "$_pid" 2>/dev/null || true
    done
}
