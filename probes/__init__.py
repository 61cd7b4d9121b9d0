"""probes: observational per-layer measurements of any `nn.Module`.

    with probes.attach(model) as session:
        loss = loss_fn(model(x), y)
        loss.backward()
    records = session.collect()
"""

from probes.records import ActivationStats, GradientStats, LayerRecord, WeightStats
from probes.session import Session, attach

__all__ = ["ActivationStats", "GradientStats", "LayerRecord", "Session", "WeightStats", "attach"]
