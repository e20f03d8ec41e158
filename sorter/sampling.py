"""Which unaudited items an audit sample draws, chosen inside SQLite in bounded memory.

Stratified by verdict × confidence band (uncertain and low-confidence items are drawn more, with
`stratum_weight`), a simple random sample within each stratum, so an item's chance of being drawn is its
stratum's drawn/available share (recorded in `audit_draws`, weighted 1/p by the report). Why in SQL: a
day at 10 items/s is 576,000 rows, and loading them to pick fifty cost 460 MB; here the per-hour counters
(sorter.item_counts) give the strata's sizes, and one indexed pass returns only a few rows per stratum:
those under a seeded coarse filter, with a seeded pseudo-random rank (`ranked_rows`). The `quota` smallest
ranks of a stratum are a uniform random subset of it; only the items drawn have their image looked for.
"""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from sorter import item_counts, item_layout, store
from sorter.report import parse_time

UNCERTAIN_WEIGHT = 3.0  # uncertain items are where the model needs people most
CONFIDENCE_EDGES = (0.5, 0.8, 0.95)  # sampling strata within a verdict: lower confidence is drawn more
SPARE = 2  # rows fetched per stratum: SPARE × quota + EXTRA, so missing images rarely need a second pass
EXTRA = 16


def allocate(sizes: dict[str, int], weights: dict[str, float], n: int) -> dict[str, int]:
    """Split n across strata by size × weight (largest remainder), each capped at its size and,
    when n allows, at least one per stratum so rare verdicts are never left unchecked."""
    live = {k: s for k, s in sizes.items() if s > 0}
    n = min(n, sum(live.values()))
    take = dict.fromkeys(live, 0)
    if len(live) <= n:
        take = dict.fromkeys(live, 1)
    while sum(take.values()) < n:
        open_ = {k: live[k] * weights.get(k, 1.0) for k in live if take[k] < live[k]}
        left = n - sum(take.values())
        total = sum(open_.values())
        shares = {k: left * w / total for k, w in open_.items()}
        whole = {k: min(int(s), live[k] - take[k]) for k, s in shares.items()}
        if not any(whole.values()):  # hand out the remainder one by one, biggest share first
            whole = dict.fromkeys(sorted(shares, key=lambda k: -shares[k])[:left], 1)
        for k, extra in whole.items():
            take[k] += extra
    return take


def band_name(index: int) -> str:
    """The name of confidence band `index` (0 = below the first edge): `<0.5`, `0.5-0.8`, `0.8-0.95`, `>=0.95`."""
    edges = [0.0, *CONFIDENCE_EDGES]
    if index == 0:
        return f"<{edges[1]:g}"
    return f">={edges[index]:g}" if index == len(edges) - 1 else f"{edges[index]:g}-{edges[index + 1]:g}"


_EDGE_BINS = [round(edge * item_counts.BINS) for edge in CONFIDENCE_EDGES]  # each edge falls on a counter bin


def band_of_bin(bin_: int | None) -> int:
    """The band of a counter's confidence bin (no confidence counts as 0)."""
    return sum((bin_ or 0) >= edge for edge in _EDGE_BINS)


def stratum_weight(stratum: str) -> float:
    """How much more a stratum's items are sampled: uncertain ×3, and lower confidence more (1.5 − the
    band's lower edge: 1.5 below 0.5 down to 0.55 at 0.95 and above)."""
    verdict, conf_band = stratum.split(":", 1)
    lower = 0.0 if conf_band.startswith("<") else float(conf_band.removeprefix(">=").split("-")[0])
    return (UNCERTAIN_WEIGHT if verdict == "uncertain" else 1.0) * (1.5 - lower)


_SCALED = f"coalesce(confidence, 0) * {item_counts.BINS}"  # < k exactly when the counter bin is < k


def _band_case(values: list[str]) -> str:
    """SQL giving values[i] for an item in band i (a comparison per edge on the scaled confidence)."""
    whens = " ".join(f"WHEN {_SCALED} < {edge} THEN {value}" for edge, value in zip(_EDGE_BINS, values, strict=False))
    return f"CASE {whens} ELSE {values[-1]} END"


_STRATUM_SQL = f"coalesce(verdict, 'none') || ':' || ({_band_case([str(i) for i in range(len(_EDGE_BINS) + 1)])})"
_CANDIDATE = ("duplicate_of IS NULL AND label IS NOT NULL AND (error IS NULL OR error = '') "
              "AND destination IS NOT NULL")  # classified, first, an image


def _candidates(conn: sqlite3.Connection, start: str, end: str) -> tuple[str, list]:
    """SQL and parameters for the window's candidates: received in [start, end), `_CANDIDATE`."""
    window, params = item_layout.in_window(conn, store.ms_of_text(start), store.ms_of_text(end))
    return f"{window} AND {_CANDIDATE}", params


def _candidate(g: item_counts.Group) -> bool:
    """`_CANDIDATE` for a counter group."""
    return not g.dup and g.label is not None and g.reason is None and g.kept


def _named(key: str) -> str:
    """'fresh:3' (the SQL's band index) → 'fresh:>=0.95'."""
    verdict, index = key.rsplit(":", 1)
    return f"{verdict}:{band_name(int(index))}"


def audited_ids(conn: sqlite3.Connection, ids: tuple[int, int] | None) -> set[int]:
    """The audited items among the window's id range (`store.window_ids`), through the audits' item_id
    index: few rows, where `id NOT IN (audits)` tested on every row of a day doubled the cost of a draw."""
    if ids is None or not store.has_table(conn, "audits"):
        return set()
    return {r[0] for r in conn.execute("SELECT DISTINCT item_id FROM audits WHERE item_id BETWEEN ? AND ?", ids)}


def stratum_sizes(conn: sqlite3.Connection, start: str, end: str, ids: tuple[int, int] | None,
                  audited: set[int]) -> dict[str, int]:
    """How many unaudited candidates each stratum holds in the window: from the per-hour counters (and the
    partial hours' rows, `item_counts.window_groups`), less the audited ones (those in the window's id
    range `ids`)."""
    sizes: dict[str, int] = {}
    for g in item_counts.window_groups(conn, parse_time(start), parse_time(end)):
        if _candidate(g):
            key = f"{g.verdict or 'none'}:{band_of_bin(g.bin)}"
            sizes[key] = sizes.get(key, 0) + g.n
    if audited and ids is not None:  # by a subquery: a long window's audits outnumber SQLite's `?` limit
        where, params = _candidates(conn, start, end)
        for key, n in conn.execute(f"SELECT {_STRATUM_SQL} AS k, COUNT(*) FROM items WHERE id IN (SELECT item_id "
                                   f"FROM audits WHERE item_id BETWEEN ? AND ?) AND {where} GROUP BY k",
                                   [*ids, *params]):
            sizes[key] = sizes.get(key, 0) - n
    return {k: n for k, n in sorted(sizes.items()) if n > 0}


def _scrambled(seed: int) -> tuple[int, int]:
    """An odd multiplier below 2³¹ and an offset below 2³² from the seed (splitmix64), so that seeds 1 and 2
    order the items as differently as 1 and 1000 (a plain offset would shift every rank alike)."""
    x = (seed * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    x ^= x >> 31
    return ((x >> 33) | 1) & 0x7FFFFFFF, x & 0xFFFFFFFF


def ranked_rows(seed: int, where: str, limit: str) -> str:
    """SQL for the ids (and verdict, confidence) of the rows matching `where` that pass a coarse seeded
    filter, `(id · a + b) mod 2³² < limit`, each with `r`, a seeded pseudo-random rank 0 ≤ r < `_RANKS`.

    Two hashes, because a day is 576,000 rows: the filter is one multiply per row, cheap enough for all of
    them but a lattice, not random; the rank, for the few rows that pass, is the `hash32` finaliser of the
    id (times an odd multiplier plus an offset, then xorshift 16 and multiply by 0x45d9f3b twice, and a last
    xorshift; x ^ y written (x | y) - (x & y), which SQLite lacks), random enough that the smallest ranks
    of a stratum are a uniform sample of it. Both in 64-bit integers that never overflow; each rank step is
    a subquery SQLite runs as a co-routine (LIMIT -1 keeps it from being flattened), so every value is
    computed once. A Python function called for every row of a day instead cost a third of a second."""
    (coarse, shift), (mult, offset) = _scrambled(seed), _scrambled(seed ^ 0x5EED)

    def mixed(x: str) -> str:
        return f"(({x} >> 16) | {x}) - (({x} >> 16) & {x})"

    inner = (f"SELECT id, verdict, confidence, (id * {mult} + {offset}) % {_RANKS} AS x FROM items "
             f"WHERE {where} AND (id * {coarse} + {shift}) % {_RANKS} < {limit} LIMIT -1")
    for _ in range(2):
        inner = f"SELECT id, verdict, confidence, ({mixed('x')}) * 73244475 % {_RANKS} AS x FROM ({inner}) LIMIT -1"
    return f"SELECT id, verdict, confidence, {mixed('x')} AS r FROM ({inner})"


_RANKS = 1 << 32


@dataclass
class Drawn:
    """One stratum's draw: the rows picked (their image on disk), and how many were looked at to find
    them: a drawn item whose image has gone (retention, a hand) is passed over for the next."""

    rows: list[dict]
    looked: int
    missing: int


def _ranked(conn: sqlite3.Connection, start: str, end: str, limits: dict[str, float], seed: int,
            ordered: bool = False) -> Iterator[dict]:
    """The candidates that pass their stratum's coarse filter (`ranked_rows`; the limit a share of `_RANKS`),
    with their rank, in one pass; `ordered`, in rank order (SQLite sorts, spilling to disk, and the rows are
    read one at a time). The limit is looked up with a CASE on the verdict, then one on the band: building
    the stratum's name for every row of a day would cost more than the rest of the draw."""
    verdicts = sorted({key.rsplit(":", 1)[0] for key in limits})
    where, params = _candidates(conn, start, end)
    cases = []
    for verdict in verdicts:
        bands = [limits.get(f"{verdict}:{i}", -1.0) for i in range(len(_EDGE_BINS) + 1)]
        cases.append(f"WHEN ? THEN ({_band_case(['?'] * len(bands))})")
        params += [verdict, *(int(share * _RANKS) if share >= 0 else -1 for share in bands)]
    rows = ranked_rows(seed, where, f"CASE coalesce(verdict, 'none') {' '.join(cases)} ELSE -1 END")
    sql = ("SELECT i.id, i.sha256, i.source_path, i.destination, i.label, i.confidence, i.verdict, "
           f"COALESCE(i.keep_p, 1.0) AS keep_p, d.r FROM ({rows}) d CROSS JOIN items i ON i.id = d.id"
           f"{' ORDER BY d.r' if ordered else ''}")
    cursor = conn.execute(sql, params)
    names = [c[0] for c in cursor.description]
    for row in cursor:
        found = dict(zip(names, row, strict=True))
        found["k"] = f"{found['verdict'] or 'none'}:{_band_index(found['confidence'])}"
        yield found


def _band_index(confidence: float | None) -> int:
    """The band of a confidence, as `_band_case` decides it (and `band_of_bin` for a counter's bin)."""
    scaled = float(confidence or 0.0) * item_counts.BINS
    return sum(scaled >= edge for edge in _EDGE_BINS)


def _take(rows: Iterable[dict], quota: int, audited: set[int]) -> Drawn:
    """The first `quota` unaudited rows (given in rank order) whose image is still on disk."""
    picked: list[dict] = []
    looked = missing = 0
    for row in rows:
        if len(picked) == quota:
            break
        if row["id"] in audited:
            continue
        looked += 1
        if Path(row["destination"]).is_file():
            picked.append(row)
        else:
            missing += 1
    return Drawn(picked, looked, missing)


def draw(conn: sqlite3.Connection, start: str, end: str, n: int, seed: int | None = None
         ) -> tuple[list[dict], int]:
    """Up to n unaudited items of the window, stratified (`allocate` by `stratum_weight`), and how many
    candidates there were. Each picked row gains `stratum`, `share` (its stratum's drawn/available share)
    and `p` (share × the item's `keep_p`). When drawn images had gone from disk, the available count is
    estimated from the share of images found among those looked at (drawn/available stays an honest p)."""
    seed = secrets.randbits(32) if seed is None else seed
    ids = store.window_ids(conn, start, end)
    audited = audited_ids(conn, ids)
    sizes = stratum_sizes(conn, start, end, ids, audited)
    quota = {k: q for k, q in allocate(sizes, {k: stratum_weight(_named(k)) for k in sizes}, n).items() if q}
    if not quota:
        return [], sum(sizes.values())
    limits = {k: min(1.0, (SPARE * q + EXTRA) / sizes[k]) for k, q in quota.items()}
    found: dict[str, list[dict]] = {k: [] for k in quota}
    for row in _ranked(conn, start, end, limits, seed):
        if row["k"] in found:  # always (the SQL's limit is -1 for every other stratum)
            found[row["k"]].append(row)
    picked: list[dict] = []
    for key, q in quota.items():
        drawn = _take(sorted(found[key], key=lambda r: r["r"]), q, audited)
        if len(drawn.rows) < q and limits[key] < 1.0:  # too many images gone: on through the whole stratum
            drawn = _take(_ranked(conn, start, end, {key: 1.0}, seed, ordered=True), q, audited)
        available = sizes[key] * (drawn.looked - drawn.missing) / drawn.looked if drawn.missing else sizes[key]
        share = len(drawn.rows) / available if available else 0.0
        picked += [{**{k: v for k, v in r.items() if k not in ("k", "r")}, "stratum": _named(key), "share": share,
                    "p": share * float(r["keep_p"])} for r in drawn.rows]
    return sorted(picked, key=lambda r: r["id"]), sum(sizes.values())
