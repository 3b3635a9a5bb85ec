"""`chatledger run` settles the garbage collector before it serves: what the imports built is frozen (a full
collection no longer walks it, with every webhook waiting) and the youngest generation is collected less often."""

import gc

from daemon.cli.service import GC_THRESHOLDS, settle_garbage_collector


def test_what_exists_is_frozen_and_the_young_threshold_raised():
    before = gc.get_threshold()
    gc.unfreeze()
    try:
        settle_garbage_collector()
        assert gc.get_freeze_count() > 1000  # the modules, classes and functions loaded so far
        assert gc.get_threshold() == GC_THRESHOLDS
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
