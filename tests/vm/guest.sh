#!/bin/sh
# Runs inside the VM, chrooted into the machine's root file system (read-only) with the
# repository mounted read-write at its own path. $1 is the run folder written by run.sh:
# `python` (the interpreter to use) and `args` (one argument per line).
run=$1
export HOME=/tmp PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PYTHONDONTWRITEBYTECODE=1 PROXYD_VM_GUEST=1 PYTHONUNBUFFERED=1
cd "$(dirname "$0")/../.." || exit 98
ip link set lo up
echo  # the console may still hold a line of firmware output
py=$(cat "$run/python")
# argv from the file, one per line (arguments may contain spaces, never newlines)
set --
while IFS= read -r a; do set -- "$@" "$a"; done < "$run/args"
"$py" "$@"
