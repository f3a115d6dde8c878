"""The store factory knows exactly the kinds the settings accept: no entry nothing can reach."""

from __future__ import annotations

from typing import get_args

import pytest
from pydantic import ValidationError

from imageport import stores
from imageport.config import Settings, StoreSettings

KINDS = set(get_args(StoreSettings.model_fields["kind"].annotation))


def test_every_configurable_kind_has_a_factory_and_nothing_else_does():
    assert {"file", "s3"} == KINDS
    assert set(stores._FACTORIES) == KINDS


def test_an_http_store_cannot_be_configured():
    with pytest.raises(ValidationError):
        StoreSettings(kind="http")


def test_each_configurable_kind_builds(tmp_path):
    settings = Settings(
        data_dir=tmp_path,
        default_store="files",
        stores={
            "files": StoreSettings(kind="file", path=tmp_path / "images"),
            "bucket": StoreSettings(kind="s3", bucket="images", region="us-east-1"),
        },
    )
    built = stores.build_stores(settings)
    assert isinstance(built["files"], stores.FileStore)
    assert isinstance(built["bucket"], stores.S3Store)
