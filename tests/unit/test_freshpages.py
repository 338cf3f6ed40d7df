"""bench/freshpages.py: the probe the density benchmark prints beside its demand starts."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import freshpages  # noqa: E402


def test_touch_maps_and_writes_every_page():
    m, us = freshpages.touch(2)
    try:
        assert len(m) == 2 << 20
        assert all(m[i] == 1 for i in range(0, len(m), freshpages.PAGE))
        assert us > 0
    finally:
        m.close()


def test_probe_frees_what_it_touched_and_returns_us_per_page():
    us = freshpages.probe(1)
    assert isinstance(us, float) and us > 0


def test_drain_stops_at_its_bound_when_pages_stay_cheap():
    held, us = freshpages.drain(slow_us=1e9, chunk_mib=8, slow_chunks=1, most_mib=32)
    try:
        assert len(held) == 4 and us > 0
    finally:
        for m in held:
            m.close()


def test_drain_stops_after_the_slow_chunks():
    held, _ = freshpages.drain(slow_us=0.0, chunk_mib=1, slow_chunks=3, most_mib=1024)
    try:
        assert len(held) == 3       # every chunk counts as slow at a 0 µs threshold
    finally:
        for m in held:
            m.close()


def test_main_refuses_an_unknown_command(capsys):
    assert freshpages.main(["nonsense"]) == 2
    assert "probe" in capsys.readouterr().err


def test_reback_touches_and_frees():
    assert freshpages.reback(4) > 0
