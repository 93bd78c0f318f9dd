#!/usr/bin/env python3
"""Writes Kiln's Grafana dashboards (serving.json, sparse-learning.json, datacache.json) next to
this file. Standard library only; run it after changing a panel and commit its output
(`--check` writes nothing and fails, naming them, when the committed files differ).

Every dashboard takes its Prometheus data source from the `DS_PROMETHEUS` variable (a data source
variable, so the same file works when provisioned and when imported), and filters by `job` (the
scrape job) and, where it applies, by `model` or `table`. Queries use `$__rate_interval`.
"""

import json
import pathlib
import sys

from boards_datacache import datacache
from boards_serving import serving, sparse_learning

HERE = pathlib.Path(__file__).resolve().parent


def main():
    check = sys.argv[1:] == ["--check"]
    stale = []
    for name, board in (
        ("serving.json", serving()),
        ("sparse-learning.json", sparse_learning()),
        ("datacache.json", datacache()),
    ):
        text = json.dumps(board.json(), indent=2) + "\n"
        path = HERE / name
        if not check:
            path.write_text(text)
        elif not path.exists() or path.read_text() != text:
            stale.append(name)
    if stale:
        sys.exit(f"stale dashboards (run deploy/grafana/gen_dashboards.py): {', '.join(stale)}")


if __name__ == "__main__":
    main()
