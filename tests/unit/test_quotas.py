"""The settings' unified limits and the per-image quotas: the maths and the messages."""

from __future__ import annotations

import sys
import types
from types import SimpleNamespace

import pytest

from imageport.access.limits import (
    IMAGE_COUNT_TOTAL,
    IMAGE_COUNT_UPLOADING,
    IMAGE_SIZE_TOTAL,
    IMAGE_STAGE_TOTAL,
)
from imageport.access.quotas import (
    OverLimit,
    Quotas,
    SettingsLimitEnforcer,
    build_limit_enforcer,
    mib,
    over_limit_message,
    user_properties,
)
from imageport.config import Settings
from imageport.errors import OverQuota

MIB = 1024 * 1024


class Usage:
    """A usage reader that records what it was asked."""

    def __init__(self, **values):
        self.values = values
        self.asked = []

    def __call__(self, project_id, names):
        self.asked.append((project_id, list(names)))
        return {name: self.values[name] for name in names}


def test_over_limit_message_is_oslo_limits():
    message = over_limit_message("p1", [OverLimit(IMAGE_COUNT_TOTAL, 2, 2, 1)])
    assert message == (
        "Project p1 is over a limit for [Resource image_count_total is over limit of 2 due to "
        "current usage 2 and delta 1]"
    )


def test_the_message_matches_oslo_limit_itself():
    exception = pytest.importorskip("oslo_limit.exception")
    infos = [
        exception.OverLimitInfo(IMAGE_COUNT_UPLOADING, 1, 2, 0),
        exception.OverLimitInfo(IMAGE_SIZE_TOTAL, 10, 12, 3),
    ]
    ours = [OverLimit(IMAGE_COUNT_UPLOADING, 1, 2, 0), OverLimit(IMAGE_SIZE_TOTAL, 10, 12, 3)]
    assert over_limit_message("p", ours) == str(exception.ProjectOverLimit("p", infos))


def test_usage_plus_delta_may_reach_the_limit_but_not_pass_it():
    enforcer = SettingsLimitEnforcer({IMAGE_COUNT_TOTAL: 2})
    enforcer.enforce("p", {IMAGE_COUNT_TOTAL: 1}, Usage(image_count_total=1))
    with pytest.raises(OverQuota) as refused:
        enforcer.enforce("p", {IMAGE_COUNT_TOTAL: 1}, Usage(image_count_total=2))
    assert refused.value.code == "over_quota"
    assert str(refused.value) == (
        "Project p is over a limit for [Resource image_count_total is over limit of 2 due to "
        "current usage 2 and delta 1]"
    )


def test_delta_zero_refuses_only_usage_already_over():
    enforcer = SettingsLimitEnforcer({IMAGE_SIZE_TOTAL: 10})
    enforcer.enforce("p", {IMAGE_SIZE_TOTAL: 0}, Usage(image_size_total=10))
    with pytest.raises(OverQuota, match="current usage 11 and delta 0"):
        enforcer.enforce("p", {IMAGE_SIZE_TOTAL: 0}, Usage(image_size_total=11))


def test_a_zero_limit_refuses_everything():
    enforcer = SettingsLimitEnforcer({IMAGE_COUNT_TOTAL: 0})
    with pytest.raises(OverQuota, match="over limit of 0 due to current usage 0 and delta 1"):
        enforcer.enforce("p", {IMAGE_COUNT_TOTAL: 1}, Usage(image_count_total=0))


def test_unlimited_names_cost_no_usage_query():
    enforcer = SettingsLimitEnforcer({IMAGE_SIZE_TOTAL: None, IMAGE_STAGE_TOTAL: 5})
    usage = Usage(image_stage_total=1)
    enforcer.enforce("p", {IMAGE_SIZE_TOTAL: 100, IMAGE_STAGE_TOTAL: 1}, usage)
    assert usage.asked == [("p", [IMAGE_STAGE_TOTAL])]
    nothing = Usage()
    enforcer.enforce("p", {IMAGE_SIZE_TOTAL: 10**9}, nothing)
    assert nothing.asked == []


def test_every_limit_passed_is_named_in_name_order():
    enforcer = SettingsLimitEnforcer(
        {IMAGE_SIZE_TOTAL: 1, IMAGE_STAGE_TOTAL: 1, IMAGE_COUNT_UPLOADING: 1}
    )
    usage = Usage(image_size_total=5, image_stage_total=0, image_count_uploading=1)
    deltas = {IMAGE_SIZE_TOTAL: 0, IMAGE_STAGE_TOTAL: 1, IMAGE_COUNT_UPLOADING: 1}
    with pytest.raises(OverQuota) as refused:
        enforcer.enforce("p", deltas, usage)
    assert str(refused.value) == (
        "Project p is over a limit for [Resource image_count_uploading is over limit of 1 due "
        "to current usage 1 and delta 1, Resource image_size_total is over limit of 1 due to "
        "current usage 5 and delta 0]"
    )


def test_the_settings_give_the_limits():
    settings = Settings(image_size_total=3, image_count_uploading=0)
    enforcer = build_limit_enforcer(settings)
    assert isinstance(enforcer, SettingsLimitEnforcer)
    assert enforcer.limits == {
        IMAGE_SIZE_TOTAL: 3,
        IMAGE_STAGE_TOTAL: None,
        IMAGE_COUNT_TOTAL: None,
        IMAGE_COUNT_UPLOADING: 0,
    }


def test_keystone_limits_load_the_keystone_enforcer_lazily(monkeypatch):
    module_name, class_name = "imageport.access.keystone_limits", "KeystoneLimitEnforcer"
    fake = types.ModuleType(module_name)

    class FakeEnforcer:
        def __init__(self, settings):
            self.settings = settings

    setattr(fake, class_name, FakeEnforcer)
    monkeypatch.setitem(sys.modules, module_name, fake)
    settings = Settings(use_keystone_limits=True)
    enforcer = build_limit_enforcer(settings)
    assert isinstance(enforcer, FakeEnforcer)
    assert enforcer.settings is settings


def test_mib_rounds_down_as_glance():
    assert [mib(None), mib(0), mib(MIB - 1), mib(MIB), mib(5 * MIB + 7)] == [0, 0, 0, 1, 5]


def test_reserved_properties_do_not_count():
    assert user_properties(["a", "b", "os_glance_import_task", "os_glance_failed_import"]) == 2


# The Quotas facade


class Recorder:
    """An enforcer that records the deltas it is asked about."""

    def __init__(self):
        self.calls = []

    def enforce(self, project_id, deltas, usage):  # noqa: ARG002 - usage is not read here
        self.calls.append((project_id, dict(deltas)))


def _quotas(enforcer=None, **limits):
    defaults = {"max_properties": 3, "max_members": 2, "max_locations": 2}
    return Quotas(
        enforcer=enforcer or Recorder(),
        default_store="local",
        **{**defaults, **limits},
    )


def test_no_project_no_unified_limit():
    recorder = Recorder()
    quotas = _quotas(recorder)
    quotas.check_create(None, None)
    quotas.check_create(None, "p")
    assert recorder.calls == [("p", {IMAGE_COUNT_TOTAL: 1})]


def test_data_checks_use_the_declared_length_as_delta():
    recorder = Recorder()
    quotas = _quotas(recorder)
    quotas.check_data(None, "p", staging=True, declared=3 * MIB + 1)
    quotas.check_data(None, "p", staging=False, declared=None)
    quotas.check_uploading(None, "p")
    assert recorder.calls == [
        ("p", {IMAGE_STAGE_TOTAL: 3}),
        ("p", {IMAGE_SIZE_TOTAL: 0}),
        ("p", {IMAGE_COUNT_UPLOADING: 0}),
    ]


def _image(size=None, stores=()):
    return SimpleNamespace(size=size, locations=[SimpleNamespace(store_id=s) for s in stores])


def test_import_deltas_per_method():
    recorder = Recorder()
    quotas = _quotas(recorder, max_locations=10)
    quotas.check_import(None, "p", _image(size=4 * MIB), "glance-direct", ())
    quotas.check_import(None, "p", _image(), "web-download", ())
    quotas.check_import(None, "p", _image(), "glance-download", ())
    quotas.check_import(None, "p", _image(size=7 * MIB, stores=["local"]), "copy-image", ["s3"])
    assert [deltas for _, deltas in recorder.calls] == [
        {IMAGE_SIZE_TOTAL: 4},
        {IMAGE_SIZE_TOTAL: 0, IMAGE_STAGE_TOTAL: 0, IMAGE_COUNT_UPLOADING: 1},
        {IMAGE_SIZE_TOTAL: 0, IMAGE_STAGE_TOTAL: 0, IMAGE_COUNT_UPLOADING: 1},
        {IMAGE_SIZE_TOTAL: 0, IMAGE_STAGE_TOTAL: 7, IMAGE_COUNT_UPLOADING: 1},
    ]


def test_import_counts_the_locations_it_would_add():
    quotas = _quotas(max_locations=2)
    quotas.check_import(None, "p", _image(), "web-download", ["a", "b"])
    quotas.check_import(None, "p", _image(stores=["a"]), "copy-image", ["a", "b"])
    with pytest.raises(OverQuota) as refused:
        quotas.check_import(None, "p", _image(stores=["a", "b"]), "copy-image", ["c"])
    assert str(refused.value).startswith(
        "The limit has been exceeded on the number of allowed image locations. "
        "Attempted: 3, Maximum: 2."
    )
    with pytest.raises(OverQuota, match="Attempted: 3, Maximum: 2"):
        quotas.check_import(None, "p", _image(), "web-download", ["a", "b", "c"])


def test_per_image_messages_are_glances_then_say_what_to_do():
    quotas = _quotas()
    quotas.check_properties(["a", "b", "c", "os_glance_import_task"])
    with pytest.raises(OverQuota) as props:
        quotas.check_properties(["a", "b", "c", "d"])
    assert str(props.value) == (
        "The limit has been exceeded on the number of allowed image properties. Attempted: 4, "
        "Maximum: 3. Remove properties first, or ask the operator to raise max_image_properties."
    )
    quotas.check_members(2)
    with pytest.raises(OverQuota) as members:
        quotas.check_members(3)
    assert str(members.value).startswith(
        "The limit has been exceeded on the number of allowed image members for this image. "
        "Attempted: 3, Maximum: 2."
    )
    assert props.value.code == members.value.code == "over_quota"
