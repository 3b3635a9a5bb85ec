"""The short chaos soak: about 2,000 events through PostgreSQL restarts, kill -9 and Airtable 503s."""

import pytest

from tests.soak import ACTIONS, Soak

pytestmark = pytest.mark.acceptance


def test_chaos_soak_loses_nothing_and_duplicates_nothing(tmp_path):
    report = Soak(tmp_path, 2000).run()
    assert report.problems == []
    assert len(report.acknowledged) == 2000
    assert [a for a, _, _ in report.actions] == list(ACTIONS)  # all the chaos happened
    assert report.duplicates_sent > 0 and report.malformed_sent > 0
    assert report.refused > 0  # the kills were felt by the senders, who re-sent
    # every malformed element is kept; one whose batch was re-sent after a kill -9 ate the answer, twice
    assert report.figures["quarantined"] >= report.malformed_sent
