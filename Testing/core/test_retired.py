import logging

import pytest

from MVGCore.retired import drop_retired


def test_a_retired_key_with_the_surviving_value_is_dropped_with_a_note(caplog):
    with caplog.at_level(logging.INFO, logger="MVGCore.retired"):
        kept = drop_retired({"a": 1, "old": False}, {"old": False}, "x.json")
    assert kept == {"a": 1}
    assert "x.json: dropped the retired setting old=False" in caplog.text


def test_a_retired_key_asking_for_the_retired_behaviour_is_refused_in_one_line():
    with pytest.raises(ValueError, match=r"^x.json: old=True was retired \(only old=False remains\)"):
        drop_retired({"old": True}, {"old": False}, "x.json")


def test_data_without_retired_keys_is_unchanged():
    data = {"a": 1}
    assert drop_retired(data, {"old": 0}, "x") == data
