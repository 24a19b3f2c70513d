"""Results, medians and ratios, markdown tables, doc sections.

Every measured pass is one JSON record in results.jsonl:
    {"type": "pass", "run", "system", "pass", "seconds", "bytes", "files", ["iops"],
     ["src": slowfs deltas {"bytes","reads","meta"}],
     ["bc": bicache deltas {"source_bytes","source_reads","source_meta","ram_hits",
            "ram_misses","disk_hits","disk_misses","passthrough_opens"},
      "after": bicache after the pass {"meta_bytes","meta_entries","ram_bytes",
            "ram_capacity","disk_bytes","rss_kb","hwm_kb"}], ...workload extras}
plus {"type": "mount", ...} (each bicache mount's VmHWM / sampled RSS, at unmount) and any
scenario-specific records. Ratios are always taken within one run (baseline measured in
the same run), then the median over runs is shown.
"""

import os
import statistics

MiB = 1 << 20


# ------------------------------------------------------------------------- metrics
def mbps(r):
    return r["bytes"] / r["seconds"] / 1e6 if r.get("bytes") and r.get("seconds") else None


def fps(r):
    return r["files"] / r["seconds"] if r.get("files") and r.get("seconds") else None


def iops(r):
    return r.get("iops")


def secs(r):
    return r.get("seconds")


def amp(r):
    """Read amplification: bytes the source served / bytes read."""
    if "src" not in r or not r.get("bytes"):
        return None
    return r["src"]["bytes"] / r["bytes"]


def med(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


# ---------------------------------------------------------------------- formatting
def fmt(v, spec=".1f", none="-"):
    return none if v is None else format(v, spec)


def fx(v):
    """A ratio: 2 decimals, more for small ones."""
    if v is None:
        return "-"
    return f"{v:.2f}x" if v >= 0.1 else f"{v:.3f}x" if v >= 0.001 else f"{v:.1e}x"


def spread(vals, spec=".0f"):
    vals = [v for v in vals if v is not None]
    if len(vals) < 2:
        return "-"
    return f"{min(vals):{spec}}-{max(vals):{spec}}"


def mib(kb):
    return "-" if kb is None else f"{kb / 1024:,.0f} MiB"


def table(head, rows):
    L = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    L += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return L


def verdict(measured, target, higher_is_better=True):
    if measured is None:
        return "not measured"
    if target == 0:
        return "met" if measured <= 0 else f"**missed**: {measured:,}"
    short = (target - measured if higher_is_better else measured - target) / target
    if short <= 0:
        return "met"
    pct = 100 * short
    return f"**missed** by {pct:.1f}%" if pct < 10 else f"**missed** by {pct:.0f}%"


# -------------------------------------------------------------------------- results
class Results:
    """Pass records by (system, pass, run). `stand_in(system, pass)` may name another pass
    of the same system that stands for this one (a system without a cache of its own has
    no warm pass: its cold pass is shown again, marked *)."""

    def __init__(self, rows, order=None, stand_in=None):
        self.rows = rows
        self.by = {}
        for r in rows:
            if r.get("type", "pass") == "pass":
                self.by[(r["system"], r["pass"], r["run"])] = r
        # Run 0: set-up outside the measured runs (a fill pass, say).
        self.runs = sorted({r["run"] for r in rows if r.get("run", 0) >= 1})
        seen = []
        for r in rows:
            if r.get("type", "pass") == "pass" and r["system"] not in seen:
                seen.append(r["system"])
        order = order or []
        self.systems = [s for s in order if s in seen] + [s for s in seen if s not in order]
        self.stand_in = stand_in or (lambda s, p: None)

    def of_type(self, t):
        return [r for r in self.rows if r.get("type") == t]

    def get(self, system, p, run):
        r = self.by.get((system, p, run))
        if r is not None:
            return r, None
        alt = self.stand_in(system, p)
        if alt and (system, alt, run) in self.by:
            return self.by[(system, alt, run)], alt
        return None, None

    def per_run(self, system, p, f):
        out = []
        for run in self.runs:
            r, _ = self.get(system, p, run)
            if r is not None:
                v = f(r)
                if v is not None:
                    out.append(v)
        return out

    def median(self, system, p, f):
        return med(self.per_run(system, p, f))

    def stood_in(self, system, p):
        for run in self.runs:
            r, alt = self.get(system, p, run)
            if r is not None:
                return alt
        return None

    def ratio(self, system, base, p, f, base_pass=None):
        """Median over runs of f(system's pass) / f(base's pass) of the same run."""
        vals = []
        for run in self.runs:
            a, _ = self.get(system, p, run)
            b, _ = self.get(base, base_pass or p, run)
            if a is None or b is None:
                continue
            fa, fb = f(a), f(b)
            if fa is not None and fb:
                vals.append(fa / fb)
        return med(vals)

    def has(self, p):
        return any(k[1] == p for k in self.by)


def workload_table(res, p, title, kind, labels, baselines=("native", "rclone")):
    """The per-workload table of the suite and fio scenarios. kind: "mb" (MB/s), "rand"
    (MB/s and IOPS), "files" (files/s and MB/s), "walk" (files/s, no bytes)."""
    main = fps if kind in ("files", "walk") else mbps
    unit = "files/s" if kind in ("files", "walk") else "MB/s"
    spec = ".0f" if kind in ("files", "walk") else ".1f"
    if not any(res.per_run(s, p, main) for s in res.systems):
        return []
    baselines = [b for b in baselines if b in res.systems]
    head = ["system", unit]
    if kind == "files":
        head.append("MB/s")
    if kind == "rand":
        head.append("IOPS")
    head += [f"x {labels.get(b, b)}" for b in baselines]
    if kind != "walk":
        head += ["pulled from source", "source / read"]
    head += ["source requests (reads / meta)", f"{unit} min-max"]
    rows, notes = [], set()
    for s in res.systems:
        vals = res.per_run(s, p, main)
        if not vals:
            continue
        alt = res.stood_in(s, p)
        name = labels.get(s, s)
        if alt:
            name += " *"
            notes.add(alt)
        row = [name, fmt(med(vals), spec)]
        if kind == "files":
            row.append(fmt(res.median(s, p, mbps)))
        if kind == "rand":
            row.append(fmt(res.median(s, p, iops), ".0f"))
        row += [fx(res.ratio(s, b, p, main)) for b in baselines]
        src = res.per_run(s, p, lambda r: r.get("src"))
        if kind != "walk":
            if src:
                row += [f"{med([x['bytes'] for x in src]) / 1e6:,.0f} MB",
                        fmt(res.median(s, p, amp), ".3f")]
            else:
                row += ["n/a", "n/a"]
        row.append(f"{med([x['reads'] for x in src]):,.0f} / {med([x['meta'] for x in src]):,.0f}"
                   if src else "n/a")
        row.append(spread(vals, spec))
        rows.append(row)
    L = [f"#### {title}", ""] + table(head, rows)
    if notes:
        L += ["", "\\* no cache of its own: the same pass as "
              + ", ".join(f"`{n}`" for n in sorted(notes))
              + " (page cache dropped, nothing else to warm), shown again here."]
    return L + [""]


def counters_table(res, passes, labels, systems=None):
    """bicache's own view of each pass: where the bytes came from."""
    rows = []
    for s in systems or res.systems:
        for p in passes:
            bc = res.per_run(s, p, lambda r: r.get("bc"))
            if not bc or res.stood_in(s, p):
                continue
            m = lambda k: med([x.get(k, 0) for x in bc])  # noqa: E731
            rows.append([labels.get(s, s), p, f"{m('source_bytes') / 1e6:,.0f}",
                         f"{m('source_reads'):,.0f}", f"{m('source_meta'):,.0f}",
                         f"{m('ram_hits'):,.0f}", f"{m('disk_hits'):,.0f}",
                         f"{m('passthrough_opens'):,.0f}"])
    if not rows:
        return []
    return (["#### bicache's own counters (median per pass)", ""]
            + table(["system", "pass", "bicache source MB", "source reads", "source meta ops",
                     "RAM hits", "SSD hits", "passthrough opens"], rows) + [""])


def rss_table(res, labels, limit_of=None):
    """Each bicache mount's VmHWM (read just before its unmount) and largest sampled VmRSS."""
    mounts = res.of_type("mount")
    if not mounts:
        return []
    rows = []
    for m in mounts:
        limit = limit_of(m) if limit_of else None
        over = " (**over**)" if limit and m["hwm_kb"] and m["hwm_kb"] * 1024 > limit else ""
        rows.append([labels.get(m["system"], m["system"]), m["run"], m["phase"],
                     mib(m["hwm_kb"]) + over, mib(m["rss_max_kb"]),
                     "-" if not limit else f"{limit / MiB:,.0f} MiB"])
    return (["#### bicache daemon peak RSS", "",
             "VmHWM from /proc/PID/status read just before each unmount (the pid comes from "
             "`bicache stats --json`) and the largest VmRSS sampled every 0.2 s, per mount; a "
             "mount's use is named by the passes it served.", ""]
            + table(["system", "run", "mount used for", "VmHWM", "largest sampled VmRSS",
                     "RAM budget + 100 MiB"], rows) + [""])


def ram_limit(m):
    """RAM budget + 100 MiB of a mount record (from its last stats), or None."""
    f = m.get("final") or {}
    cap = (f.get("ram") or {}).get("capacity")
    return cap + 100 * MiB if cap else None


# ------------------------------------------------------------------------ doc text
def header(meta, extra=()):
    """The lines every generated section starts with: date, commit, runs, machine, the
    exact command (which reproduces every table of the section)."""
    el = int(meta.get("elapsed", 0))
    runs = meta["runs"]
    L = [f"Generated by `bench/run.py {meta['scenario']}` on {meta['date']}; bicache at "
         f"{meta['commit']}; {runs} run(s) in {el // 60} min {el % 60} s"
         + (" (**a --quick run at tiny sizes: the numbers say nothing about performance**)"
            if meta.get("quick") else
            " (**fewer than 3 runs: read the numbers as indicative**)" if runs < 3 else "")
         + ".", "",
         f"- Command: `{meta['command']}` (as root, from the repository root); it reproduces "
         "every table of this section. Raw results: `BENCH_DIR/results/"
         f"{meta['scenario']}/` (one JSON record per pass, logs).",
         f"- Machine: {meta['machine']}. The local disk is cached by the host: absolute "
         "numbers swing between runs, so ratios are taken within one run, then the median "
         "over runs is shown."]
    if meta.get("versions"):
        L.append(f"- Tools: {meta['versions']}.")
    L += list(extra)
    return L + [""]


def write_doc_section(doc, name, text, heading=None):
    """Replaces the part of `doc` between `<!-- name:begin -->` and `<!-- name:end -->`
    with `text`, keeping the rest; without the markers, appends them at the end (after a
    `## heading` line, if given)."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    old = open(doc).read() if os.path.exists(doc) else ""
    block = f"{begin}\n{text.rstrip()}\n{end}"
    if begin in old and end in old:
        head, rest = old.split(begin, 1)
        new = head + block + rest.split(end, 1)[1]
    else:
        intro = f"## {heading}\n\n" if heading else ""
        new = old.rstrip("\n") + ("\n\n" if old else "") + intro + block + "\n"
    with open(doc + ".tmp", "w") as f:
        f.write(new)
    os.replace(doc + ".tmp", doc)
