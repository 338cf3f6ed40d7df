"""hostd.units: sizes and durations as written in config files."""
import pytest

from hostd.units import parse_duration, parse_size


@pytest.mark.parametrize("value, expected", [
    ("512K", 512 * 1024),
    ("512M", 512 * 1024 ** 2),
    ("2G", 2 * 1024 ** 3),
    ("1T", 1024 ** 4),
    ("4k", 4096),          # unit letters are case-insensitive
    ("4096", 4096),        # no unit: bytes
    ("0", 0),
    (0, 0),
    (16384, 16384),
])
def test_parse_size_good(value, expected):
    assert parse_size(value) == expected


@pytest.mark.parametrize("value", [
    -1, "-1K", "12X", "", "K", "1.5G", 1.5, 2.0, True, False, None, " 1G", "1G ",
    "1 G", "1KB", "1GiB", "²", "0x10", [1], "1e3",
])
def test_parse_size_bad(value):
    with pytest.raises(ValueError):
        parse_size(value)


def test_parse_size_message_names_the_value():
    with pytest.raises(ValueError, match="12X"):
        parse_size("12X")


@pytest.mark.parametrize("value, expected", [
    ("500ms", 0.5),
    ("90s", 90.0),
    ("20m", 1200.0),
    ("29h", 29 * 3600.0),
    ("1d", 86400.0),
    ("0", 0.0),
    (0, 0.0),
    (45, 45.0),
    ("0s", 0.0),
])
def test_parse_duration_good(value, expected):
    result = parse_duration(value)
    assert result == expected
    assert isinstance(result, float)


@pytest.mark.parametrize("value", [
    "90", "", "m", "1.5h", "-5s", -5, "20 m", "20M", "5w", "1hs", "ms", 1.5, True,
    None, "²s", " 5s",
])
def test_parse_duration_bad(value):
    with pytest.raises(ValueError):
        parse_duration(value)


def test_parse_duration_message_names_the_value():
    with pytest.raises(ValueError, match="5w"):
        parse_duration("5w")
