"""probes: observational per-layer measurements of any `nn.Module`.

    with probes.attach(model) as session:
        loss = loss_fn(model(x), y)
        loss.backward()
    records = session.collect()

The records are plain data and import without torch; `attach` and `Session` import torch on
first use, so code that only reads records (reports, rules) stays light.
"""

from probes.records import ActivationStats, GradientStats, LayerRecord, WeightStats

__all__ = ["ActivationStats", "GradientStats", "LayerRecord", "Session", "WeightStats", "attach"]


def __getattr__(name: str):
    if name in ("Session", "attach"):
        from probes import session

        return getattr(session, name)
    raise AttributeError(f"module 'probes' has no attribute {name!r}")
