"""Models that are not a plain stack: recurrent, structured outputs, frozen, shared, GPT-2."""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import probes


def probe(model, inputs, loss=lambda out: out.pow(2).sum()):
    with probes.attach(model) as session:
        loss(model(*inputs)).backward()
    return {r.name: r for r in session.collect()}


class LSTMClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 6)
        self.lstm = nn.LSTM(6, 8, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, tokens):
        out, (h, c) = self.lstm(self.embed(tokens))
        return self.head(h[-1])


def test_lstm_classifier():
    torch.manual_seed(0)
    model = LSTMClassifier()
    tokens = torch.randint(0, 20, (4, 5))
    records = probe(model, (tokens,))
    assert [records[n].kind for n in ("embed", "lstm", "head")] == ["embedding", "recurrent", "linear"]
    lstm = records["lstm"]
    out, _ = model.lstm(model.embed(tokens))
    assert lstm.output_shape == (4, 5, 8)  # the first tensor of the (output, (h, c)) tuple
    assert lstm.activation.std == pytest.approx(out.detach().double().std(correction=0).item(), rel=1e-5)
    assert lstm.gradient.param_norm > 0 and lstm.weight.fan_in is None  # no init scheme for gates
    assert records["embed"].gradient.param_norm > 0


@dataclass
class Prediction:
    logits: torch.Tensor
    aux: torch.Tensor


class Structured(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.fc = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        h = F.relu(self.fc(x))
        logits, aux = self.head(h), h.sum(1)
        if self.kind == "dict":
            return {"logits": logits, "aux": aux}
        if self.kind == "dataclass":
            return Prediction(logits, aux)
        if self.kind == "ordered":  # the shape of Hugging Face ModelOutput
            return OrderedDict(logits=logits, aux=aux)
        return (logits, aux)


def first_output(out):
    if isinstance(out, dict):
        return out["logits"]
    if isinstance(out, Prediction):
        return out.logits
    return out[0]


@pytest.mark.parametrize("kind", ["dict", "dataclass", "ordered", "tuple"])
def test_structured_outputs(kind):
    model = Structured(kind)
    records = probe(model, (torch.randn(3, 4),), loss=lambda out: first_output(out).sum())
    assert list(records) == ["fc", "relu()", "head"]
    assert records["head"].gradient.output_rms == pytest.approx(1.0)  # d(sum)/d(logits) = 1
    assert records["fc"].gradient.param_norm > 0


class TakesModuleOutputs(nn.Module):
    """A submodule returning a tuple and a dict; the parent uses both."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = Structured("dict")
        self.post = nn.Linear(2, 2)

    def forward(self, x):
        out = self.inner(x)
        return self.post(out["logits"]) + out["aux"][:, None]


def test_module_returning_a_dict_inside_a_model():
    records = probe(TakesModuleOutputs(), (torch.randn(3, 4),))
    assert "inner" not in records  # a container without parameters of its own is not a layer
    assert records["inner.head"].gradient.output_rms is not None


def test_frozen_layers_are_reported_as_frozen_not_broken():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    for p in model[0].parameters():
        p.requires_grad_(False)
    model.register_buffer("scale", torch.ones(1))
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    with probes.attach(model) as session:
        model(torch.randn(5, 4)).sum().backward()
        optimizer.step()
    records = {r.name: r for r in session.collect()}
    frozen = records["0"]
    assert frozen.weight.frozen is True and frozen.trainable_parameters == 0 and frozen.parameters == 20
    assert frozen.params_without_gradient == ()
    assert frozen.gradient.param_norm is None and frozen.update_ratio is None
    assert records["2"].weight.frozen is False and records["2"].update_ratio > 0
    assert all(not p.requires_grad for p in model[0].parameters())


def test_unused_trainable_layer_is_listed_without_gradient():
    class Unused(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used = nn.Linear(3, 3)
            self.spare = nn.Linear(3, 3)

        def forward(self, x):
            return self.used(x)

    records = probe(Unused(), (torch.randn(2, 3),))
    assert records["spare"].calls == 0
    assert set(records["spare"].params_without_gradient) == {"weight", "bias"}
    assert records["used"].params_without_gradient == ()


def test_recurrent_loop_over_a_cell_merges_calls():
    class Loop(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.cell = nn.GRUCell(3, 5)
            self.head = nn.Linear(5, 1)

        def forward(self, xs):
            h = torch.zeros(xs.shape[1], 5)
            for x in xs:
                h = self.cell(x, h)
            return self.head(torch.tanh(h))

    records = probe(Loop(), (torch.randn(6, 2, 3),))
    assert records["cell"].calls == 6 and records["cell"].activation.count == 6 * 2 * 5
    assert records["tanh()"].calls == 1


def test_model_on_parameters_of_other_dtype():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double()
    x = torch.randn(5, 3, dtype=torch.float64)
    records = probe(model, (x,))
    y = model[0](x)
    assert records["0"].activation.std == pytest.approx(y.detach().std(correction=0).item(), rel=1e-12)


def test_tiny_gpt2_from_config():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=16, vocab_size=50, n_positions=16)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config)
    model.config.use_cache = False
    tokens = torch.randint(0, 50, (2, 8))
    with probes.attach(model) as session:
        out = model(tokens, labels=tokens)
        out.loss.backward()
    records = {r.name: r for r in session.collect()}
    assert records["transformer.wte"].kind == "embedding"
    attn = records["transformer.h.0.attn.c_attn"]
    assert attn.type == "Conv1D" and attn.kind == "linear"
    assert (attn.weight.fan_in, attn.weight.fan_out) == (16, 48)  # Conv1D stores (in, out)
    assert records["transformer.h.0.ln_1"].kind == "norm"
    act = records["transformer.h.0.mlp.act"]
    assert (act.type, act.kind, act.activation_kind) == ("NewGELUActivation", "activation", "gelu")
    assert records["transformer.h.0.mlp.c_fc"].followed_by == "gelu"
    assert records["transformer.h.0.mlp.c_fc"].weight.scheme == "he"
    assert not any(r.source == "function" for r in records.values())  # no tanh from inside the GELU
    assert all(r.gradient.param_norm and r.gradient.param_norm > 0
               for r in records.values() if r.trainable_parameters and r.calls)
    assert records["lm_head"].activation.nonfinite == 0


@pytest.mark.parametrize("rows", [50, 1000])  # a small sparse gradient (groupable) and a large one
def test_sparse_embedding_gradients_are_measured_and_leave_backward_alone(rows):
    """Embedding(sparse=True) gives a sparse COO .grad (uncoalesced: repeated ids appear twice)."""

    def build():
        torch.manual_seed(2)
        return nn.Sequential(nn.Embedding(rows, 32, sparse=True), nn.Flatten(), nn.Linear(32 * 4, 3))

    model, plain = build(), build()
    ids = torch.tensor([[1, 2, 2, 7], [7, 7, 3, 0]])
    with probes.attach(model) as session:
        for _ in range(2):  # no zero_grad: the .grad of the second backward is twice the first's
            model(ids).sum().backward()
    for _ in range(2):
        plain(ids).sum().backward()
    assert torch.equal(model[0].weight.grad.to_dense(), plain[0].weight.grad.to_dense())
    record = {r.name: r for r in session.collect()}["0"]
    second = plain[0].weight.grad.coalesce().values().double().pow(2).sum().item()
    expected = (second / 4 + second) / 2  # mean over the two backward passes of ||.grad||^2
    assert record.gradient.param_norm == pytest.approx(expected ** 0.5, rel=1e-5)
    assert record.params_without_gradient == ()


def test_forwards_under_inference_mode_are_measured():
    """Inference tensors have no version counter: they are reduced at once instead of held."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    xs = [torch.randn(4, 8) for _ in range(3)]
    with probes.attach(model) as session:
        with torch.inference_mode():
            outputs = [model(x) for x in xs]
    records = {r.name: r for r in session.collect()}
    expected = torch.cat(outputs).double()
    assert records["2"].calls == 3
    assert records["2"].activation.mean == pytest.approx(expected.mean().item(), rel=1e-6)
    assert records["2"].activation.std == pytest.approx(expected.std(correction=0).item(), rel=1e-5)


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_checkpointed_blocks_are_counted_once_and_their_gradients_measured(use_reentrant):
    """torch.utils.checkpoint runs the block's forward again inside the backward: that replay is
    not a second call, and the output gradients are those of plain autograd."""
    from torch.utils.checkpoint import checkpoint

    class Checkpointed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block = nn.Sequential(nn.Linear(6, 6), nn.Tanh())
            self.head = nn.Linear(6, 1)

        def forward(self, x):
            return self.head(checkpoint(self.block, x, use_reentrant=use_reentrant))

    torch.manual_seed(1)
    model = Checkpointed()
    xs = [torch.randn(5, 6, requires_grad=True) for _ in range(2)]
    with probes.attach(model) as session:
        for x in xs:
            model(x).sum().backward()
    records = {r.name: r for r in session.collect()}
    hidden, grads = [], []
    for x in xs:  # plain autograd, no checkpoint
        z = model.block[0](x)
        z.retain_grad()
        hidden.append(z)
        model.head(torch.tanh(z)).sum().backward()
        grads.append(z.grad)
    assert records["block.0"].calls == 2 and records["block.1"].calls == 2
    values = torch.cat(hidden).double()
    assert records["block.0"].activation.count == values.numel()
    assert records["block.0"].activation.mean == pytest.approx(values.mean().item(), rel=1e-5)
    expected_rms = torch.cat(grads).double().pow(2).mean().sqrt().item()
    assert records["block.0"].gradient.output_rms == pytest.approx(expected_rms, rel=1e-5)
    assert records["block.0"].gradient.backward_calls == 2


def test_parameter_gradients_are_read_again_after_a_backward_that_raised():
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 1))
    x = torch.randn(3, 4)

    def fail(grad):
        raise RuntimeError("boom")

    with probes.attach(model) as session:
        hidden = model[1](model[0](x))
        hidden.register_hook(fail)
        with pytest.raises(RuntimeError, match="boom"):
            model[2](hidden).sum().backward()
        model.zero_grad()
        model(x).sum().backward()
    record = {r.name: r for r in session.collect()}["0"]
    assert record.gradient.backward_calls == 1
    expected = sum(p.grad.double().pow(2).sum() for p in model[0].parameters()).sqrt().item()
    assert record.gradient.param_norm == pytest.approx(expected, rel=1e-5)


def test_lazy_modules_attached_before_their_first_forward():
    """LazyLinear has no parameter shapes until its first forward, which runs under attach."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.LazyLinear(8), nn.ReLU(), nn.LazyLinear(1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(4, 5)
    with probes.attach(model) as session:
        for _ in range(2):
            optimizer.zero_grad()
            model(x).sum().backward()
            optimizer.step()
    records = {r.name: r for r in session.collect()}
    first = records["0"]
    assert (first.type, first.kind, first.parameters) == ("LazyLinear", "linear", 5 * 8 + 8)
    assert (first.weight.fan_in, first.weight.fan_out, first.weight.scheme) == (5, 8, "he")
    assert first.weight.std == pytest.approx(model[0].weight.detach().double().std(correction=0).item(), rel=1e-6)
    assert first.gradient.backward_calls == 2 and first.gradient.param_norm > 0
    assert len(first.update_ratios) == 2


def test_torch_func_transforms_over_the_model_run_unmeasured_and_unharmed():
    """vmap/jacrev/grad wrap tensors that have no data of their own: those calls are skipped."""
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 1))
    batch, x = torch.randn(5, 3, 4), torch.randn(3, 4)
    # Against vmap without probes, not a loop of single calls: a batched matmul rounds differently
    # from per-sample ones on some CPUs (2.98e-8 apart on the CI machine), probes or not.
    with torch.no_grad():
        expected_vmap = torch.vmap(model)(batch)
    expected_jac = torch.func.jacrev(model)(x[0])
    with probes.attach(model) as session:
        assert torch.equal(torch.vmap(model)(batch), expected_vmap)
        assert torch.equal(torch.func.jacrev(model)(x[0]), expected_jac)
        torch.func.grad(lambda v: model(v).sum())(x[0])
        y = model(x)
        y.sum().backward()
    records = {r.name: r for r in session.collect()}
    assert records["1"].calls == 1
    assert records["1"].activation.mean == pytest.approx(torch.tanh(model[0](x)).double().mean().item(), rel=1e-5)
    assert records["0"].gradient.backward_calls == 1


def test_a_model_compiled_before_attach_is_measured_without_tracing_the_probes(caplog):
    """torch.compile then attach (the usual order): the hooks run eagerly at graph breaks instead
    of being traced by dynamo, which recompiled them until its limit (with warnings)."""
    import logging

    torch.manual_seed(6)

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 1)

        def forward(self, x):
            return self.b(F.relu(self.a(x)) * 2)

    model = Block()
    compiled = torch.compile(model, backend="eager")
    xs = [torch.randn(16, 4) for _ in range(3)]
    with caplog.at_level(logging.WARNING, logger="torch._dynamo"):
        with probes.attach(model) as session:
            for x in xs:
                compiled(x).sum().backward()
    records = {r.name: r for r in session.collect()}
    assert [records[name].calls for name in ("a", "relu()", "b")] == [3, 3, 3]
    with torch.no_grad():
        relu = torch.cat([F.relu(model.a(x)) for x in xs]).double()
    assert records["relu()"].activation.mean == pytest.approx(relu.mean().item(), rel=1e-5)
    assert records["relu()"].activation.dead_fraction == pytest.approx(
        1 - (relu > 0).any(0).double().mean().item()
    )
    assert records["a"].gradient.backward_calls == 3
    assert not [r for r in caplog.records if "recompile" in r.getMessage()]


@pytest.mark.parametrize("wrap", ["weight_norm", "spectral_norm"])
def test_parametrized_layers_are_reported_as_the_layer_they_parametrize(wrap):
    """weight_norm/spectral_norm make `ParametrizedLinear` with the originals held by a
    `parametrizations.weight` module: one Linear layer is reported, owning those parameters; the
    machinery is not a layer, and the weight's scale is not judged (reading it would run the
    parametrization) but said so."""
    from torch.nn.utils import parametrizations

    def build():
        torch.manual_seed(8)
        wrapper = getattr(parametrizations, wrap)
        return nn.Sequential(wrapper(nn.Linear(6, 5)), nn.Tanh(), nn.Linear(5, 1))

    model, plain = build(), build()
    x = torch.randn(7, 6)
    with probes.attach(model) as session:
        out = model(x)
        out.sum().backward()
        torch.optim.SGD(model.parameters(), lr=0.1).step()
    expected = plain(x)
    expected.sum().backward()
    assert torch.equal(out, expected)
    records = session.collect()
    assert [(r.name, r.type, r.kind) for r in records] == [
        ("0", "Linear", "linear"), ("1", "Tanh", "activation"), ("2", "Linear", "linear"),
    ]
    first = records[0]
    originals = [p for name, p in plain[0].named_parameters() if "original" in name or name == "bias"]
    assert first.parameters == sum(p.numel() for p in originals)
    assert first.weight is None and records[2].weight is not None
    norm = math.sqrt(sum(p.grad.double().pow(2).sum().item() for p in originals))
    assert first.gradient.param_norm == pytest.approx(norm, rel=1e-5)
    assert any("parametrize" in note and "on 0:" in note for note in session.limitations)
    # the update ratio is over the same parameters (SGD: the update is lr * grad)
    weights = math.sqrt(sum(p.detach().double().pow(2).sum().item() for p in originals))
    assert first.update_ratio == pytest.approx(0.1 * norm / weights, rel=1e-5)


def test_a_tied_weight_counts_in_the_update_ratio_of_every_layer_that_uses_it():
    """An LM head tied to the token embedding (GPT-2): both layers report the shared weight's update."""

    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(30, 8)
            self.head = nn.Linear(8, 30, bias=False)
            self.head.weight = self.emb.weight

        def forward(self, ids):
            return self.head(torch.tanh(self.emb(ids)))

    torch.manual_seed(9)
    model = Tied()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    ids = torch.randint(0, 30, (4, 5))
    expected = []
    with probes.attach(model) as session:
        for _ in range(2):
            before = model.emb.weight.detach().clone()
            optimizer.zero_grad()
            model(ids).logsumexp(-1).sum().backward()
            optimizer.step()
            expected.append(((model.emb.weight - before).double().norm() / before.double().norm()).item())
    records = {r.name: r for r in session.collect()}
    for name in ("emb", "head"):
        assert records[name].update_ratios == pytest.approx(expected, rel=1e-5)


def test_functional_call_with_replacement_parameters_is_said_in_limitations():
    """torch.func.functional_call runs the module with other tensors: their gradients are not the
    module's, so its own parameters show none, and the session says why."""
    torch.manual_seed(10)
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 1))
    params = {k: v.detach().clone().requires_grad_() for k, v in model.named_parameters()}
    x = torch.randn(3, 4)
    with probes.attach(model) as session:
        torch.func.functional_call(model, params, (x,)).sum().backward()
    records = {r.name: r for r in session.collect()}
    assert records["0"].activation.count == 12 and records["0"].gradient.output_rms is not None
    assert records["0"].params_without_gradient == ("weight", "bias")
    said = [note for note in session.limitations if "functional_call" in note]
    assert len(said) == 1 and "on 0, 2:" in said[0]

    with probes.attach(model) as session:  # the module's own parameters: nothing to say
        model(x).sum().backward()
    assert not any("functional_call" in n for n in session.limitations)


def _twins(build):
    torch.manual_seed(0)
    first = build()
    torch.manual_seed(0)
    return first, build()


def _channels_last_cnn():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),  # same weight shape as the next: stacked rows
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2),
    ).to(memory_format=torch.channels_last)


def test_a_channels_last_cnn_is_measured_and_unharmed():
    """channels_last maps and weights (the usual layout for fast CNN training) stack into
    non-contiguous batches; the batched reductions must not assume a view is possible."""
    plain, probed = _twins(_channels_last_cnn)
    xs = [torch.randn(4, 3, 8, 8).to(memory_format=torch.channels_last) for _ in range(3)]
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in (plain, probed)]
    with probes.attach(probed) as session:
        for x in xs:
            for model, optimizer in zip((plain, probed), optimizers):
                optimizer.zero_grad()
                model(x).pow(2).mean().backward()
                optimizer.step()
        records = {r.name: r for r in session.collect()}
    for a, b in zip(plain.parameters(), probed.parameters()):
        assert torch.equal(a, b)
    # the last forward's ReLU maps, recomputed: units are channels whatever the memory layout
    with torch.no_grad():
        relu = probed[2](probed[1](probed[0](xs[-1])))
    assert records["2"].activation.units == 8
    assert records["2"].activation.dead_fraction_last == pytest.approx(
        1 - (relu > 0).any(0).any(-1).any(-1).double().mean().item()
    )
    assert len(records["3"].update_ratios) == 3 and records["3"].gradient.param_norm > 0
    assert records["3"].weight.std == pytest.approx(probed[3].weight.double().std(correction=0).item(), rel=1e-6)


def test_autocast_bfloat16_forwards_are_measured_and_unharmed():
    plain, probed = _twins(lambda: nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4), nn.Tanh()))
    x = torch.randn(8, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = plain(x)
    expected.float().sum().backward()
    with probes.attach(probed) as session:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = probed(x)
        out.float().sum().backward()
    records = session.collect()
    assert out.dtype == torch.bfloat16 and torch.equal(out, expected)
    for a, b in zip(plain.parameters(), probed.parameters()):
        assert torch.equal(a.grad, b.grad)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        hidden = probed[0](x)
    assert records[0].activation.mean == pytest.approx(hidden.double().mean().item(), rel=1e-5)
    assert records[0].activation.std == pytest.approx(hidden.double().std(correction=0).item(), rel=1e-5)


class _Generator(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 6)

    def forward(self, z):
        return torch.tanh(self.b(F.relu(self.a(z))))


def test_two_models_probed_at_once_keep_their_records_apart():
    """A GAN step, D(G(z)), with both models attached: each activation called as a function
    belongs to the model whose forward called it, and is counted once."""
    torch.manual_seed(0)
    generator = _Generator()
    discriminator = nn.Sequential(nn.Linear(6, 8), nn.LeakyReLU(0.2), nn.Linear(8, 1))
    z = torch.randn(5, 4)
    with probes.attach(generator) as g_session, probes.attach(discriminator) as d_session:
        discriminator(generator(z)).sum().backward()
        F.relu(z)  # outside both models: nobody's
    g_records = {r.name: r for r in g_session.collect()}
    d_records = {r.name: r for r in d_session.collect()}
    assert sorted(g_records) == ["a", "b", "relu()", "tanh()"]
    assert sorted(d_records) == ["0", "1", "2"]
    assert all(r.calls == 1 for r in [*g_records.values(), *d_records.values()])
    with torch.no_grad():
        relu = F.relu(generator.a(z))
    assert g_records["relu()"].activation.mean == pytest.approx(relu.double().mean().item(), rel=1e-6)
    assert d_records["0"].gradient.output_rms > 0


def test_a_users_hook_that_replaces_an_output_is_seen_through():
    """A forward hook registered before attach that returns a new output: the model computes
    with it, so that is what the layer is reported to output."""
    plain, probed = _twins(lambda: nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1)))
    for model in (plain, probed):
        model[0].register_forward_hook(lambda module, args, out: out * 2)
    x = torch.randn(3, 4)
    plain(x).sum().backward()
    with probes.attach(probed) as session:
        out = probed(x)
        out.sum().backward()
    records = session.collect()
    assert torch.equal(out, plain(x))
    for a, b in zip(plain.parameters(), probed.parameters()):
        assert torch.equal(a.grad, b.grad)
    with torch.no_grad():
        replaced = probed[0](x)  # the hook doubles it here too
    assert records[0].activation.mean == pytest.approx(replaced.double().mean().item(), rel=1e-6)
