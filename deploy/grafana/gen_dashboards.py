#!/usr/bin/env python3
"""Writes Kiln's Grafana dashboards (serving.json, sparse-learning.json, datacache.json) next to
this file. Standard library only; run it after changing a panel and commit its output.

Every dashboard takes its Prometheus data source from the `DS_PROMETHEUS` variable (a data source
variable, so the same file works when provisioned and when imported), and filters by `job` (the
scrape job) and, where it applies, by `model` or `table`. Queries use `$__rate_interval`.
"""

import json
import pathlib

from boards_datacache import datacache
from boards_serving import serving, sparse_learning

HERE = pathlib.Path(__file__).resolve().parent


def main():
    for name, board in (
        ("serving.json", serving()),
        ("sparse-learning.json", sparse_learning()),
        ("datacache.json", datacache()),
    ):
        (HERE / name).write_text(json.dumps(board.json(), indent=2) + "\n")


if __name__ == "__main__":
    main()
