# Source at the start of a device run (after `carry: [".whl"]`): installs the wheels the GPU machine
# lacks (fetched here by ../shared/tools/device-wheels.sh) into /tmp/site and puts tuner on the path.
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || return 1
if ls .whl/deepspeed-*.tar.gz >/dev/null 2>&1; then
  (cd /tmp && python3 -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/site "$OLDPWD"/.whl/deepspeed-*.tar.gz) || return 1
fi
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers, peft, bitsandbytes; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'bitsandbytes', bitsandbytes.__version__)"
