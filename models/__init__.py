"""Network builders: the MLP and CNN of the sparse-dynamic-synapses project assembled from
sparse_nte layers (k-WTA, sparse weights, Dale's law), with heads as the scenario requires.

    model = build_model(config, scenario)
    logits = model(x, t)            # x (B, C, H, W), t (B,) task ids -> (B, head_size)
"""
from __future__ import annotations

from typing import Any, Mapping

from models.activity import ActivityRecorder
from models.blocks import ChannelLayerNorm, ExcitatoryKWinners, HiddenBlock
from models.net import CNN, CONV_CHANNELS, CONV_KERNEL, MLP, Net
from models.spec import ADDED_KEYS, MODEL_KEYS, NetSpec

__all__ = [
    "build_model", "Net", "MLP", "CNN", "NetSpec", "MODEL_KEYS", "ADDED_KEYS",
    "HiddenBlock", "ChannelLayerNorm",
    "ExcitatoryKWinners", "ActivityRecorder", "CONV_CHANNELS", "CONV_KERNEL",
]


def build_model(config: Mapping[str, Any], scenario: Any) -> Net:
    """Build the network an experiment describes, shaped for ``scenario``.

    Reads the keys in :data:`MODEL_KEYS` (those of :data:`ADDED_KEYS` default to the schema when absent) from
    ``config`` (see :class:`NetSpec` for their meaning; ``cnn`` chooses :class:`CNN` over
    :class:`MLP`) and from ``scenario`` its ``input_shape``,
    ``num_heads``, ``head_size``, ``tasks`` and ``head_of(task)``: the model has ``num_heads``
    heads of ``head_size`` outputs and routes an example of task t to head ``head_of(t)``.
    Deterministic given ``config["seed"]``. Raises ValueError for missing or invalid keys, and
    when ``config`` has an ``input_scaling`` other than the one the scenario scales its batches
    with (a scenario built without passing the key would train on inputs of another scale
    without a word).
    """
    spec = NetSpec.from_config(config)
    wanted, actual = getattr(config, "input_scaling", None), getattr(scenario, "input_scaling", None)
    if wanted is not None and actual is not None and wanted != actual:
        raise ValueError(f"build_model: the config says input_scaling = {wanted} but scenario "
                         f"{getattr(scenario, 'name', '?')!r} scales its inputs '{actual}'; build "
                         f"it with build_scenario(..., input_scaling=config['input_scaling'])")
    num_tasks = len(scenario.tasks)
    if num_tasks < 1:
        raise ValueError(f"build_model: scenario {getattr(scenario, 'name', '?')!r} has no tasks")
    head_of_task = tuple(int(scenario.head_of(i)) for i in range(num_tasks))
    cls = CNN if spec.cnn else MLP
    return cls(spec, tuple(int(v) for v in scenario.input_shape), num_heads=int(scenario.num_heads),
               head_size=int(scenario.head_size), head_of_task=head_of_task)
