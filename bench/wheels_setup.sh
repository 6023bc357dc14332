# Source at the start of a device run (after `carry: [".whl"]`): installs the wheels the GPU machine
# lacks (fetched here by ../shared/tools/device-wheels.sh) into /tmp/site, puts tuner on the path and
# prints the GPU. No DeepSpeed build: benchmarks do not need it (bench/device_setup.sh adds it).
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || return 1
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
mkdir -p "${OUT:-/tmp/out}/logs"
