"""The worker runtime (the IIS w3wp role), and what an app may call from inside it.

    import workers
    workers.report_unhealthy("cache corrupted")   # please recycle me (IIS HSE_REQ_REPORT_UNHEALTHY)
"""

_reporter = None   # set by workers.runtime in a worker process


def report_unhealthy(reason: str = "") -> bool:
    """Asks hostd to recycle this worker (overlapping: requests keep being served).

    Takes: a short reason, logged and shown as the recycle reason.
    Returns: True when the request reached the supervisor; False outside a hostd worker.
    Never raises.
    """
    if _reporter is None:
        return False
    try:
        return bool(_reporter(str(reason)))
    except Exception:
        return False
