"""The config keys, one module per group, each holding:

- ``TITLE``: the group's heading in the schema table;
- ``Keys``: a frozen dataclass whose fields are the group's keys (:func:`~sparse_nte.config.fields.key`:
  type, default, allowed values and meaning, in one place);
- ``derive(r)``: fills in the group's derived values from others (optional);
- ``check(r)``: reports contradictions between values (``r.fail(r.conflict(...))``; optional);
- ``no_effect(v)``: ``{key: why}`` for keys that have no effect under the values ``v`` (optional).

``r`` is the resolver (:class:`sparse_nte.config.resolve.Resolver`). Choices of a component
(optimizers, schedules, strategies, ...) are imported from the component's registry.
:data:`GROUPS` is the order of the keys in the schema, the file and the docs.
"""
from __future__ import annotations

from sparse_nte.config.groups import (adaptation, connectivity, dale, data, kwta, local_rules, model,
                                      ntk, nte, plasticity, rule, run, selection, strategy,
                                      training)

#: Group modules in schema order.
GROUPS = (run, data, kwta, connectivity, model, rule, training, nte, local_rules, dale, plasticity,
          strategy, selection, ntk, adaptation)
