"""`hostd`: run the server, or check a configuration.

  hostd [--config PATH]                   run in the foreground (systemd runs it so)
  hostd --check-config [--config PATH]    print a summary and exit 0, or every error and exit 2
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hostd import config as hconfig
from hostd import log, protocol

from hostd import DEFAULT_CONFIG  # noqa: E402  (re-exported: hostd.cli.DEFAULT_CONFIG)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="hostd", description="Linux-native web hosting runtime "
                                 "(application pools and worker processes for WSGI apps)")
    ap.add_argument("--config", default=DEFAULT_CONFIG, help=f"main file (default {DEFAULT_CONFIG})")
    ap.add_argument("--check-config", action="store_true",
                    help="validate the main file and every pool file, then exit")
    args = ap.parse_args(argv)
    path = Path(args.config)
    if args.check_config:
        summary, errors = hconfig.check_config(path)
        if errors:
            for line in summary.splitlines():   # warnings count even beside errors
                if line.lstrip().startswith("warning:"):
                    print(line.strip(), file=sys.stderr)
            for e in errors:
                print(f"error: {e}", file=sys.stderr)
            print(f"{len(errors)} error(s) in the configuration", file=sys.stderr)
            return protocol.EXIT_CONFIG
        print(summary)
        return protocol.EXIT_OK
    log.set_process("supervisor")
    try:
        main_cfg = hconfig.load_main(path)
    except hconfig.ConfigErrors as exc:
        for e in exc.errors:
            log.error("config_error", str(e))
        print(f"hostd: cannot start: {len(exc.errors)} error(s) in {path}", file=sys.stderr)
        return protocol.EXIT_CONFIG
    from hostd.supervisor import Supervisor
    sup = Supervisor(path, main_cfg)
    try:
        sup.start()
    except OSError as exc:
        log.error("start_failed", str(exc))
        print(f"hostd: cannot start: {exc}", file=sys.stderr)
        return protocol.EXIT_CONFIG
    return sup.run()


if __name__ == "__main__":
    sys.exit(main())
