"""Deliberately failing: shows that a failing VM test fails .ci/run. Removed right after."""


def test_deliberately_failing(http):
    status, _, body = http.get("alpha.localhost")
    assert status == 418, f"deliberate failure (got {status})"
