"""Start the LMDeploy Console: `python launch.py --help` lists the options."""

from webui.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
