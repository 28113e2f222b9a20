"""`python -m mintfax_sandbox [OPTIONS]`: run the simulator (see `--help`)."""

from mintfax_sandbox.cli import main

raise SystemExit(main())
