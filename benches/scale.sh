#!/usr/bin/env bash
# Peak memory of `scan` against the number of files: 10,000, 100,000 and 1,000,000 empty stubs
# named .png (each read and reported as an error row), spread over 100 folders, and 2,000 hard links
# to one real 1024x1024 PNG (each decoded and scored). Prints one line per run.
# Usage: benches/scale.sh [path/to/cxr-triage]   (default: target/release/cxr-triage)
set -euo pipefail
bin=${1:-target/release/cxr-triage}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
stubs() { # n dir
  mkdir -p "$2"
  for d in $(seq 0 99); do mkdir -p "$2/d$d"; done
  (cd "$2" && seq 0 $(($1 - 1)) | awk '{printf "d%d/img-%06d.png\n", $1 % 100, $1}' | xargs touch)
}
measure() { # label dir
  # A store of its own (written as a real scan does), not the user's.
  /usr/bin/time -f "%M %e" -o "$work/time" "$bin" scan "$2" --quiet --out "$work/out.csv" \
    --cache "$work/store.sqlite3" || true
  rm -f "$work"/store.sqlite3*
  read -r kib secs < <(tail -n 1 "$work/time")
  rows=$(($(wc -l < "$work/out.csv") - 1))
  printf '%-40s %7d rows  peak RSS %6.1f MiB  %6.1f s\n' "$1" "$rows" "$(echo "$kib/1024" | bc -l)" "$secs"
}
stubs 10000 "$work/s10k";  measure "10,000 empty stubs" "$work/s10k"
stubs 100000 "$work/s100k"; measure "100,000 empty stubs" "$work/s100k"; rm -rf "$work/s100k"
stubs 1000000 "$work/s1m"; measure "1,000,000 empty stubs" "$work/s1m"; rm -rf "$work/s1m"
python3 - "$work/real" <<'PY'
import os, sys, zlib, struct
d = sys.argv[1]; os.makedirs(d)
w = h = 1024
raw = b"".join(b"\0" + bytes(((x * 7 + y * 3) ^ (x * y >> 6)) & 255 for x in range(w)) for y in range(h))
def chunk(t, b): return struct.pack(">I", len(b)) + t + b + struct.pack(">I", zlib.crc32(t + b))
png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")
first = os.path.join(d, "img-0000.png"); open(first, "wb").write(png)
for i in range(1, 2000): os.link(first, os.path.join(d, f"img-{i:04}.png"))
PY
measure "2,000 real 1024x1024 PNGs (hard links)" "$work/real"
