import json
from pathlib import Path

from tuner.config.schema import DEEPSPEED_PRESETS
from tuner.core.errors import TunerError
from tuner.core.workspace import resolve_path


def partitions_weights(deepspeed: str | None) -> bool:
    """True when the config's ``deepspeed`` value is ZeRO-3 (a preset or a JSON file's stage), whose
    weights exist only inside their module's forward: Liger's fused cross-entropy reads the LM head's
    weight directly, so it stays off there."""
    path = deepspeed_config_path(deepspeed)
    if not path:
        return False
    try:
        stage = json.loads(Path(path).read_text()).get("zero_optimization", {}).get("stage")
    except (OSError, ValueError):
        return False
    return stage == 3


def deepspeed_config_path(value: str | None) -> str | None:
    """A preset name (zero2, ...) -> the JSON shipped in tuner/deepspeed; a path stays a path."""
    if not value:
        return None
    if value in DEEPSPEED_PRESETS:
        return str(Path(__file__).parent / f"{value}.json")
    path = resolve_path(value)
    if not path.is_file():
        raise TunerError(
            f"deepspeed config {value} not found; use one of {', '.join(DEEPSPEED_PRESETS)} or a .json file"
        )
    return str(path)
