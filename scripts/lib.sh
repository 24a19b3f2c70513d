# Shell helpers shared by the benchmark scripts: `. "$REPO/scripts/lib.sh"`.
# LOG_TAG names the script in log lines (default "bench").

log() { printf '[%s %s] %s\n' "${LOG_TAG:-bench}" "$(date +%H:%M:%S)" "$*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}

# mountinfo field 5 is the mount point (the scripts' paths contain no spaces).
is_mounted() { awk -v p="$1" '$5 == p { found = 1 } END { exit !found }' /proc/self/mountinfo; }

# Waits until $1 is a mount point, at most $2 tenths of a second (default 15 s).
wait_mounted() {
    local i
    for i in $(seq 1 "${2:-150}"); do
        is_mounted "$1" && return 0
        sleep 0.1
    done
    return 1
}

drop_caches() {
    sync
    echo 3 >/proc/sys/vm/drop_caches
}

# The field at a dotted path ("disk.hits") of the JSON on stdin.
json_field() { python3 -c 'import json,sys; d=json.load(sys.stdin)
for k in sys.argv[1].split("."): d=d[k]
print(d)' "$1"; }

# write_doc_section DOC REPORT NAME [HEADING]: replaces the part of the markdown file DOC
# between `<!-- NAME:begin -->` and `<!-- NAME:end -->` with the file REPORT, keeping the
# rest; without the markers, appends them (after a `## HEADING` line, if given).
write_doc_section() {
    python3 - "$@" <<'PY'
import os, sys
doc, report, name = sys.argv[1], open(sys.argv[2]).read(), sys.argv[3]
heading = sys.argv[4] if len(sys.argv) > 4 else ""
BEGIN, END = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
text = open(doc).read() if os.path.exists(doc) else ""
block = f"{BEGIN}\n{report.rstrip()}\n{END}"
if BEGIN in text and END in text:
    head, rest = text.split(BEGIN, 1)
    text = head + block + rest.split(END, 1)[1]
else:
    intro = f"## {heading}\n\n" if heading else ""
    text = text.rstrip("\n") + "\n\n" + intro + block + "\n"
open(doc, "w").write(text)
PY
}

# The median of the numbers on stdin (separated by spaces or newlines).
median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }
