"""Test app whose import fails."""
raise RuntimeError("this app is broken on purpose")
