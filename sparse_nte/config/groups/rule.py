"""Learning-rule keys: how the weight updates are computed (sparse_nte.rules)."""
from __future__ import annotations

from dataclasses import dataclass
from sparse_nte.config.fields import key
from sparse_nte.rules import RULES

TITLE = "learning rule"


@dataclass(frozen=True)
class RuleKeys:
    learning_rule: str = key(
        "backprop", choices=tuple(RULES),
        doc="How weight updates are computed: backprop (the gradient of the loss through the whole "
            "network, applied by `optimizer`; with optimizer = nte, the NTE posterior update), hsic "
            "(the HSIC bottleneck, layer by layer, with a format step for the output; Ma et al. 2020) "
            "or ib_hebbian (the information-bottleneck Hebbian rule with a working memory; Daruwalla "
            "& Lipasti 2024). The local rules never pass an error across layers.")


#: The group's keys (read by sparse_nte.config.schema).
KEYS = RuleKeys
