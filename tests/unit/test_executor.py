"""What a task of the task engine may name and carry: registered work only, with
arguments that travel as JSON."""

from __future__ import annotations

import json

import pytest
from flask import Flask
from kombu.utils.json import dumps, loads

from app.executor import UnknownWork, background, executor, registered
from app.services.deployments.rollout import run_rollout
from app.services.notifiers.base import Notice


def test_work_that_was_never_registered_is_refused_before_it_runs():
    ran: list[int] = []

    def work() -> None:
        ran.append(1)

    with pytest.raises(UnknownWork):
        executor.submit("anything", 1, work, app=Flask(__name__))
    assert ran == []


def test_a_task_cannot_name_an_importable_path():
    with pytest.raises(UnknownWork):
        registered("os.system")
    assert registered("rollout") is run_rollout


def test_a_name_belongs_to_one_function():
    @background("unit-test-work")
    def first() -> None:
        """Registered first."""

    def second() -> None:
        """Another function under the same name."""

    with pytest.raises(ValueError, match="unit-test-work"):
        background("unit-test-work")(second)
    assert registered("unit-test-work") is first


def test_a_notice_travels_as_plain_json_and_comes_back_whole():
    from app import tasks

    notice = Notice("deployment.failed", "Deployment of s**p.e*****e.com failed", "text")
    encoded = dumps([tasks.TASK, ["notice", [7, notice]]])
    assert json.loads(encoded)[1][1][1]["__value__"] == {
        "event": "deployment.failed", "subject": notice.subject, "text": "text"}
    assert loads(encoded) == [tasks.TASK, ["notice", [7, notice]]]
