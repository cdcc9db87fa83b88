"""The privatized file's manifest is parsed with the wire's bounded JSON: a hostile header is a
SchemaError naming the field (a 400 at the gateway), never a RecursionError or a slow int parse."""

from __future__ import annotations

import pytest

from client_sdk import wire
from client_sdk.privatized_file import Manifest

BASE = {"model": "minilm-l6", "split_layer": "3", "num_labels": "2", "mechanism": "privtune"}


@pytest.mark.parametrize(
    ("field", "text"),
    [
        ("label_names", "[" * 10_000 + "]" * 10_000),
        ("label_names", "[" + "9" * 10_000 + "]"),
        ("mechanism_config", '{"a": ' * 5_000 + "1" + "}" * 5_000),
        ("mechanism_config", '{"eta": NaN}'),
    ],
)
def test_a_hostile_manifest_field_is_a_schema_error_naming_it(field, text):
    with pytest.raises(wire.SchemaError) as info:
        Manifest.from_metadata({**BASE, field: text})
    assert info.value.param == field


def test_a_well_formed_manifest_round_trips():
    manifest = Manifest.from_metadata({**BASE, "label_names": '["neg", "pos"]', "mechanism_config": '{"eta": 5}'})
    assert manifest.label_names == ("neg", "pos") and manifest.mechanism_config == {"eta": 5}
    assert Manifest.from_metadata(manifest.to_metadata()) == manifest
