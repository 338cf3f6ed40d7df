"""Thin, honest wrappers over the kernel interfaces hostd uses.

Each module wraps one kernel facility (fd passing, sockets, prctl, later cgroups and
namespaces) and adds no policy: callers decide what to do with an errno.
"""
