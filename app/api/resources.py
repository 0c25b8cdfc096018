"""Registers every API resource module."""

from flask import Flask


def register(app: Flask) -> None:
    return None
