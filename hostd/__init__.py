"""hostd: the IIS process model (HTTP.sys + WAS + application pools + workers) on Linux."""

__version__ = "0.1.0"
