#!/usr/bin/env bash
# The seed's best model on one GPU under JAX, in under 5 minutes: images per
# second in float32 and mixed_bfloat16, at batch 320 (the hyperspace's own)
# and 1024, against the plain Keras reference and the original's map_fn flip.
#
#   bash local_infra/gpu_bench.sh fetch   # here, with pip and the internet:
#       downloads into .whl/ the wheels (Python 3.12) of what a JAX-only GPU
#       box lacks: Keras, hyperopt, namex, optree
#   bash local_infra/gpu_bench.sh         # there, from the repository root:
#       installs .whl/ if present, runs benchmark.py, writes gpu_bench.json
#       (into $OUT when that is set)
#
# The GPU box needs Python 3.12 with JAX for CUDA, NumPy, SciPy, pandas,
# h5py, ml-dtypes, rich, absl-py, networkx, cloudpickle and tqdm; TensorFlow
# is not needed.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=.whl
WANTED="keras==3.15.1 hyperopt==0.3.0 namex==0.1.0 optree==0.20.0"

if [ "${1:-}" = fetch ]; then
  platforms=""
  for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 \
             manylinux2014_x86_64 manylinux1_x86_64; do
    platforms="$platforms --platform $tag"
  done
  # shellcheck disable=SC2086  # one word per platform flag and per package
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp $platforms -d "$WHEELS" $WANTED
  grep -qx "/$WHEELS/" .git/info/exclude 2>/dev/null || echo "/$WHEELS/" >> .git/info/exclude
  exit 0
fi

if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/hks-site "$WHEELS"/*.whl
  export PYTHONPATH=/tmp/hks-site${PYTHONPATH:+:$PYTHONPATH}
fi
export KERAS_BACKEND=jax PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
# Throughput and TPE only: the overhead and memory sections start trial
# processes, which would find the GPU's memory taken by this one.
timeout 290 python3 benchmark.py --only throughput,tpe --models best \
  --batch-sizes 320,1024 --precisions mixed_bfloat16,float32 --steps 20 --repeats 3 \
  --archive-images 5000 --out "${OUT:-.}/gpu_bench.json"
