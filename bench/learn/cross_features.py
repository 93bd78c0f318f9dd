"""Adds crossed features to the impressions of a MovieLens event stream (movielens_stream.py's),
for the NumPy Wide & Deep reference (dlrm_reference.py), which takes one event field per wide
input. Kiln needs no such copy: the benchmark model's spec crosses user_id with genres and hour
(`cross = [...]`), and serving and `kiln learn` compute the crosses from the plain fields.

    python cross_features.py IN.jsonl OUT.jsonl [--crosses user_genre,user_hour]

Crosses (strings, hashed by the model like any BYTES id):
  user_genre  one id per genre of the movie (up to 4, the model's max_ids): "<user>|<genre>"
  user_hour   "<user>|<hour>"
Every other event is copied unchanged.
"""

import argparse
import json

CROSSES = {
    "user_genre": lambda f: [f"{f['user_id']}|{g}" for g in f.get("genres", [])[:4]],
    "user_hour": lambda f: f"{f['user_id']}|{f['hour']}",
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--crosses", default=",".join(CROSSES))
    a = ap.parse_args()
    crosses = [c for c in a.crosses.split(",") if c]
    for c in crosses:
        if c not in CROSSES:
            raise SystemExit(f"--crosses {a.crosses!r}: {c!r} is not one of {', '.join(CROSSES)}")
    with open(a.src) as f, open(a.dst, "w") as out:
        for line in f:
            ev = json.loads(line)
            if ev["type"] == "impression":
                for c in crosses:
                    ev["features"][c] = CROSSES[c](ev["features"])
                line = json.dumps(ev, separators=(",", ":")) + "\n"
            out.write(line)


if __name__ == "__main__":
    main()
