"""tests/vm/guest runs only inside the VM (tests/vm/run.sh); the host never collects it."""

collect_ignore = ["guest"]
