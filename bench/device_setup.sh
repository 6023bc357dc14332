# Source at the start of a device run (after `carry: [".whl"]`): the wheels (bench/wheels_setup.sh),
# then DeepSpeed built from its sdist, for the GPU tests.
source bench/wheels_setup.sh || return 1
if ls .whl/deepspeed-*.tar.gz >/dev/null 2>&1; then
  (cd /tmp && python3 -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/site "$OLDPWD"/.whl/deepspeed-*.tar.gz) || return 1
fi
python3 -c "import torch, transformers, peft, bitsandbytes; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'bitsandbytes', bitsandbytes.__version__)"
