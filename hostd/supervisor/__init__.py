"""The supervisor (the WAS role) as a package of small rooms; hostd.supervisor.loop
has the map. `from hostd.supervisor import Supervisor` is the entry point (hostd/cli.py)."""
from hostd.supervisor.loop import Supervisor

__all__ = ["Supervisor"]
