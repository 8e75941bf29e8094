#!/usr/bin/env bash
# Rebuild Sluice's committed models and held-out data: bash models/build.sh
# Needs python3 (3.11 tested) and PyPI; the venv lives outside the repo.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${TMPDIR:-/tmp}/sluice-models-venv"
WHEELS="${TMPDIR:-/tmp}/sluice-models-wheels"
PY="${PYTHON:-python3}"

# Single-threaded BLAS and a fixed hash seed so reruns give identical bytes.
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONHASHSEED=0

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/pip" install --quiet --disable-pip-version-check \
  numpy==2.4.6 \
  scipy==1.17.1 \
  scikit-learn==1.9.1 \
  skl2onnx==1.20.0 \
  onnx==1.23.2 \
  onnxruntime==1.32.0 \
  protobuf==7.36.2 \
  pillow==13.0.0

# rapidocr-onnxruntime pulls opencv and friends; only one file of its wheel is needed.
RAPIDOCR_WHL="$WHEELS/rapidocr_onnxruntime-1.4.4-py3-none-any.whl"
RAPIDOCR_WHL_SHA256=971d7d5f223a7a808662229df1ef69893809d8457d834e6373d3854bc1782cbf
if [ ! -f "$RAPIDOCR_WHL" ]; then
  "$VENV/bin/pip" download --quiet --disable-pip-version-check --no-deps \
    rapidocr-onnxruntime==1.4.4 -d "$WHEELS"
fi
echo "$RAPIDOCR_WHL_SHA256  $RAPIDOCR_WHL" | sha256sum -c --quiet -

"$VENV/bin/python" "$HERE/make_models.py" --rapidocr-wheel "$RAPIDOCR_WHL"
"$VENV/bin/python" "$HERE/make_test_models.py" "$HERE/test"
