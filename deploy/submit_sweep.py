"""The script `ray submit` sends to a cluster's head node: it runs one sweep there.

    ray submit deploy/aws.yaml deploy/submit_sweep.py -- /home/ray/sweeps/my_sweep.yaml [--set k=v ...]

`ray submit` copies this one file; the package comes from the image (deploy/Dockerfile) or the
setup commands, and the sweep YAML from the cluster YAML's file_mounts. It joins the running
cluster (`--address auto`) and exits with the sweep's exit status.
"""

import sys

from orchestrator.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    if not args or args[0].startswith("-"):
        sys.exit("usage: submit_sweep.py SWEEP_YAML [--set key=value ...]")
    sys.exit(main(["run", *args, "--address", "auto"]))
