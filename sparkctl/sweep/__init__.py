"""`sparkctl sweep`: the same benchmark on several layouts of one cluster, one
after the other, saved as it goes (store), with explain's prediction beside each
measured point (predict) and a recommendation in plain words (report). The
orchestration (up, bench, down per layout) lives in sparkctl/ops/sweep.py."""
