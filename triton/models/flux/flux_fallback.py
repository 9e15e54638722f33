"""Which models serve a chunk of prompts. Every network has a primary model and maybe fallbacks
(`fallback_<network>`: other precisions or alternatives); precision set k takes each network's
k-th model (its last where it has fewer), so one image never mixes sets. A set is used only
while every model of it is ready (a model that failed to load never is); the next set is tried
only after a load failure or when a single prompt runs out of memory, never after other errors,
and always from the first step of the image; a fallback set is logged and reported with each
image in the output `models` (Python backend 2.51 responses take no parameters). Shipped next
to model.py.
"""

import json


class PrecisionSets:
    def __init__(self, models):
        """`models`: network -> [primary, fallback, ...]."""
        count = max(len(names) for names in models.values())
        self.sets = [{network: names[min(k, len(names) - 1)] for network, names in models.items()} for k in range(count)]

    def ready(self, is_ready):
        """(index, network -> model) of the sets whose every model is ready, primary set first."""
        return [(k, models) for k, models in enumerate(self.sets) if all(is_ready(m) for m in models.values())]



def describe(index, models):
    """What made one image, for the output `models`: a JSON object with the precision set's index
    (0: the primary models) and each network's model."""
    return json.dumps({"precision_set": index, **models}, sort_keys=True)
