"""Load on loopback: no job lost, no hang, every submission accepted or refused with 503."""

import sys

from conftest import ROOT, running_server

sys.path.insert(0, str(ROOT / "bench"))
from load import run_load  # noqa: E402


def test_two_hundred_submissions_against_a_queue_of_ten(tmp_path, checkpoints):
    with running_server(tmp_path, checkpoints, MAX_QUEUE_SIZE="10",
                        PIPELINES="lotus") as server:
        figures = run_load(server["url"], jobs=200, submitters=20, pollers=20)
    print(figures)
    assert figures["accepted"] + figures["refused"] == figures["sent"]
    assert figures["other_codes"] == {} and figures["poll_errors"] == []
    assert figures["finished"] == {"completed": figures["accepted"]}
    assert figures["accepted"] >= 10 and figures["refused"] > 0
