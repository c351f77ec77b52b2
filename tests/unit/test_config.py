import json

import pytest

from gridop.sessions.config import build_session_config, read_session_config_file


def test_merge_adds_the_session_id_to_airgen_and_grid() -> None:
    merged = build_session_config({"airgen": {"vehicle": "drone"}, "grid": {"ui": True}, "extra": 1}, "s-1")
    assert merged == {"session_id": "s-1", "airgen": {"vehicle": "drone"}, "grid": {"ui": True}}


@pytest.mark.parametrize("missing", ["airgen", "grid"])
def test_a_missing_section_is_a_value_error_naming_it(missing: str) -> None:
    config = {"airgen": {}, "grid": {}}
    del config[missing]
    with pytest.raises(ValueError, match=f"'{missing}'"):
        build_session_config(config, "s-1")


def test_sections_must_be_objects() -> None:
    with pytest.raises(ValueError, match="'grid' must be an object"):
        build_session_config({"airgen": {}, "grid": []}, "s-1")


def test_config_file_errors_name_the_argument(tmp_path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="session_config_file_path"):
        read_session_config_file(bad)
    with pytest.raises(ValueError, match="no such file"):
        read_session_config_file(tmp_path / "absent.json")
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"airgen": {}, "grid": {}}))
    assert read_session_config_file(good) == {"airgen": {}, "grid": {}}
