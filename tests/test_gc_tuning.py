"""``multiref serve`` tunes the cyclic collector before serving (app.cli.tune_gc): what exists at
startup is frozen out of later full collections, and the thresholds come from the settings."""

from __future__ import annotations

import gc

from app.cli import tune_gc
from app.settings import Settings


def test_serve_freezes_the_startup_objects_and_sets_the_thresholds():
    before = gc.get_threshold()
    try:
        tune_gc(Settings(gc_thresholds=[900, 11, 12]))
        assert gc.get_freeze_count() > 10_000  # the modules and classes imported so far
        assert gc.get_threshold() == (900, 11, 12)
        gc.unfreeze()
        tune_gc(Settings(gc_freeze=False))
        assert gc.get_freeze_count() == 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
