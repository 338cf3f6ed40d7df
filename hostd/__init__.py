"""hostd: the IIS process model (HTTP.sys + WAS + application pools + workers) on Linux."""

__version__ = "0.1.0"

#: the main file hostd and hostctl read when --config is not given
DEFAULT_CONFIG = "/etc/hostd/hostd.toml"
