# Shared by the tools/bench_*.sh scripts: the binaries and `run LABEL CMD...`, which prints
# "LABEL | RESULT ..." (the last RESULT line of CMD) and appends it to $OUT.
IGPT=${IGPT:-target/release/igpt}
PY=${PY:-$HOME/.cache/igpt-ref-venv/bin/python}
REF=${REF:-../shared/bench/torch_ref.py}
[ -x "$IGPT" ] || cargo build --release --quiet
run() { # label, command...
  local label=$1; shift
  local line
  line=$("$@" 2>&1 | grep '^RESULT' | tail -1)
  echo "$label | $line" | tee -a "$OUT"
}
