"""An application that cannot be imported (for the startup_failed test)."""
import this_module_does_not_exist_hostd  # noqa: F401

app = None
