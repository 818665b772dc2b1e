#!/usr/bin/env bash
# Spark GPU discovery script: prints {"name": "gpu", "addresses": ["0", "1", ...]}.
# Use it as spark.worker.resource.gpu.discoveryScript (standalone workers) or
# spark.executor.resource.gpu.discoveryScript (YARN/Kubernetes executors).
# THRESHER_FAKE_GPUS="0,1" reports those addresses without nvidia-smi (tests of the
# scheduling path on a machine without GPUs; nothing runs on them).
set -euo pipefail
if [[ -n "${THRESHER_FAKE_GPUS:-}" ]]; then
  ADDRS="${THRESHER_FAKE_GPUS}"
elif command -v nvidia-smi >/dev/null 2>&1; then
  ADDRS=$(nvidia-smi --query-gpu=index --format=csv,noheader | tr -d ' ' | paste -sd, -)
else
  ADDRS=""
fi
if [[ -z "${ADDRS}" ]]; then
  echo '{"name": "gpu", "addresses": []}'
else
  echo "{\"name\": \"gpu\", \"addresses\": [\"${ADDRS//,/\",\"}\"]}"
fi
