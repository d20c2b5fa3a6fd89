#!/usr/bin/env bash
# The CUDA engine's checks on a lent GPU machine (issue #16), in two halves:
#
#   tools/gpu_check.sh build   here: builds the CUDA test binaries and igpt, strips copies
#                              into target/gpu/ (what the device tool carries: under its
#                              64 MiB), and says which glibc they need
#   tools/gpu_check.sh run     there (CUDA, PyTorch, no Rust): finds the NVIDIA libraries,
#                              runs the kernel compile check, every parity test (kernels
#                              first: the first failure names the kernel and by how much),
#                              then the benchmarks against PyTorch on the same GPU
#                              (iGPT-S shape, f32 without TF32): one RESULT line each;
#                              under 8 minutes
#
# The device call, from this checkout:  run(command="bash tools/gpu_check.sh run",
#                                            carry=["target/gpu"], timeout_s=540)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=target/gpu

build() {
  mkdir -p "$OUT"
  cargo build --release --features cuda
  local json
  json=$(cargo test --release --features cuda --no-run --message-format=json --test cuda_kernels --test cuda_parity)
  for t in cuda_kernels cuda_parity; do
    local exe
    exe=$(printf '%s\n' "$json" | grep "\"name\":\"$t\"" | grep -o '"executable":"[^"]*"' | cut -d'"' -f4 | tail -1)
    strip -o "$OUT/$t" "$exe"
  done
  strip -o "$OUT/igpt" target/release/igpt
  cp ../shared/bench/torch_ref.py "$OUT/"
  ls -la "$OUT"
  du -sh "$OUT"
  for f in "$OUT"/cuda_kernels "$OUT"/cuda_parity "$OUT"/igpt; do echo "$f needs glibc $(objdump -T "$f" | grep -o "GLIBC_[0-9.]*" | sort -V | tail -1)"; done
}

run() {
  local libs
  libs=$(find / \( -name 'libnvrtc.so*' -o -name 'libcublas.so*' -o -name 'libcublasLt.so*' \) 2>/dev/null \
    | grep -v -e stub -e '\.alt' | xargs -r -n1 dirname | sort -u | paste -sd:)
  export LD_LIBRARY_PATH="${libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export IGPT_ROOT=$PWD RUST_BACKTRACE=1
  echo "== machine"; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
  ldd --version | head -1; echo "libraries: $LD_LIBRARY_PATH"
  "$OUT/igpt" info --device cuda || true
  echo "== NVRTC compiles the kernels"; "$OUT/cuda_kernels" --nocapture
  echo "== parity with the CPU engine"
  local rc=0
  for t in every_kernel_matches_the_cpu fixture_models_match_the_cpu the_fine_tuning_step_matches_the_cpu; do
    timeout 240 "$OUT/cuda_parity" --exact "$t" --nocapture --test-threads 1 || { rc=1; echo "FAILED: $t"; }
  done
  bench || rc=1
  return $rc
}

# iGPT-S (E=512, 24 layers, 8 heads, 32x32, 512 colours): training at batch 32, sampling at
# batch 64, igpt then PyTorch (eager + SDPA; transformers' generate for sampling)
bench() {
  echo "== benchmarks"
  local py=/opt/torch/.venv/bin/python3 shape="--n-embd 512 --n-layer 24 --n-head 8 --side 32 --colors 512"
  [ -x "$py" ] || py=python3
  timeout 150 "$OUT/igpt" bench train --device cuda $shape --batch 32 --steps 3 --warmup 1 || echo "igpt bench train failed"
  timeout 100 "$py" "$OUT/torch_ref.py" train --device cuda --no-tf32 $shape --batch 32 --steps 3 --warmup 1 || true
  timeout 100 "$OUT/igpt" bench sample --device cuda $shape --batch 64 || echo "igpt bench sample failed"
  timeout 100 "$py" "$OUT/torch_ref.py" sample --device cuda --no-tf32 $shape --batch 64 || true
  timeout 100 "$py" "$OUT/torch_ref.py" hf-generate --device cuda --no-tf32 $shape --batch 64 || true
}

case "${1:-}" in
  build) build ;;
  run) run ;;
  *) echo "usage: tools/gpu_check.sh build|run" >&2; exit 2 ;;
esac
