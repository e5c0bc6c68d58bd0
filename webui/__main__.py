"""`python -m webui` starts the console."""

from webui.cli import main

raise SystemExit(main())
