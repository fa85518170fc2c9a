"""``multiref serve`` tunes the cyclic collector before serving (app.cli.tune_gc): what exists at
startup is frozen out of later full collections, the thresholds come from the settings, and
glibc's free heap pages go back to the kernel after each full collection."""

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
        from app import cli

        while cli._trim_after_full_collections in gc.callbacks:
            gc.callbacks.remove(cli._trim_after_full_collections)
        gc.unfreeze()
        gc.set_threshold(*before)


def test_serve_trims_the_heap_after_each_full_collection():
    """The trim is registered once, runs after full collections only, at most once per
    ``malloc_trim_seconds``, and can be turned off."""
    from app import cli

    if cli._malloc_trim() is None:
        import pytest

        pytest.skip("not glibc")
    calls = []
    real = cli._malloc_trim
    before = gc.get_threshold()
    try:
        tune_gc(Settings())
        tune_gc(Settings(malloc_trim_seconds=0))
        assert gc.callbacks.count(cli._trim_after_full_collections) == 1
        cli._malloc_trim = lambda: calls.append  # records trim(0)
        gc.collect(1)
        assert calls == []
        gc.collect()
        assert calls == [0]
        tune_gc(Settings(malloc_trim_seconds=3600))  # at most once an hour: not again now
        gc.collect()
        assert calls == [0]
        gc.callbacks.remove(cli._trim_after_full_collections)
        tune_gc(Settings(malloc_trim=False))
        assert cli._trim_after_full_collections not in gc.callbacks
    finally:
        cli._malloc_trim = real
        if cli._trim_after_full_collections in gc.callbacks:
            gc.callbacks.remove(cli._trim_after_full_collections)
        gc.unfreeze()
        gc.set_threshold(*before)
