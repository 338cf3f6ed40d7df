"""Sizes and durations as written in configuration files.

Sizes are binary ("512K" = 512 * 1024 bytes) because every limit they feed (memory,
header buffers) is counted by the kernel in bytes and pages, never in powers of ten.
Durations carry a unit so that "20m" can never be misread as twenty milliseconds.
"""
from __future__ import annotations

_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}

# longest unit first, so "500ms" is not read as "500m" followed by garbage
_DURATION_UNITS = (("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0), ("d", 86400.0))


def parse_size(value) -> int:
    """Parse a size.

    Takes: an int of bytes (>= 0, not a bool), or a string of ASCII digits with an
    optional binary unit K, M, G or T (upper or lower case): "512K", "512M", "2G", "1T",
    "4096".
    Returns: the size in bytes.
    Raises: ValueError naming the value and the accepted forms, for anything else
    (negative, float, bool, "", "12X", "1.5G", " 1G").
    """
    # bool is a subclass of int: `limit = true` must not silently mean 1 byte
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"size must be an integer of bytes or a string like \"512M\", "
                         f"not {type(value).__name__} {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"size must not be negative: {value}")
        return value
    digits, unit = value, ""
    if value and not value[-1].isdigit():
        digits, unit = value[:-1], value[-1].upper()
    # isascii(): str.isdigit() also accepts "²" and other Unicode digits
    if unit not in _SIZE_UNITS or not digits.isascii() or not digits.isdigit():
        raise ValueError(f"bad size {value!r}: expected digits with an optional unit "
                         f"K, M, G or T (binary), e.g. \"512M\"")
    return int(digits) * _SIZE_UNITS[unit]


def parse_duration(value) -> float:
    """Parse a duration.

    Takes: an int of seconds (>= 0, not a bool), or a string of ASCII digits with a unit
    ms, s, m, h or d ("500ms", "90s", "20m", "29h", "1d"); "0" needs no unit.
    Returns: the duration in seconds, as a float.
    Raises: ValueError naming the value and the accepted forms, for anything else
    (negative, float, bool, "", "90", "1.5h", "20 m").
    """
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"duration must be an integer of seconds or a string like "
                         f"\"20m\", not {type(value).__name__} {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"duration must not be negative: {value}")
        return float(value)
    if value == "0":
        return 0.0
    for unit, seconds in _DURATION_UNITS:
        if value.endswith(unit):
            digits = value[: -len(unit)]
            if digits.isascii() and digits.isdigit():
                return int(digits) * seconds
            break
    raise ValueError(f"bad duration {value!r}: expected digits with a unit ms, s, m, h "
                     f"or d, e.g. \"20m\" (or \"0\")")
