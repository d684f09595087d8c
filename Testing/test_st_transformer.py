"""The spatial-temporal transformer: size, masking of absent phases, time embedding, engine binding."""

import pytest
import torch

from breasttumorseg.core.errors import ModelError
from breasttumorseg.segmentation.networks import build_network
from breasttumorseg.segmentation.networks.st_transformer import SpatialTemporalTransformer3D


@pytest.fixture(scope="module")
def network():
    torch.manual_seed(0)
    return SpatialTemporalTransformer3D(base_channels=8, depth=3, heads=4).eval()


def phases(n=2, t=5, size=(16, 32, 32), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, t) + size, generator=g)


def test_the_default_size_stays_far_below_ten_million_parameters():
    for hyper in ({}, {"base_channels": 16}, {"base_channels": 16, "transformer_layers": 2}):
        net = build_network("st_transformer3d", **hyper)
        count = sum(p.numel() for p in net.parameters())
        assert count <= 10_000_000, (hyper, count)
    assert sum(p.numel() for p in SpatialTemporalTransformer3D().parameters()) < 1_000_000


def test_absent_phases_are_masked_not_just_zeroed(network):
    x, times = phases(), torch.tensor([[0.0, 60.0, 120.0, 240.0, 480.0]] * 2)
    valid = torch.tensor([[True, True, True, False, False], [True] * 5])
    with torch.no_grad():
        reference = network(x, times, valid)
        garbage = x.clone()
        garbage[0, 3:] = 1000.0 * torch.rand_like(garbage[0, 3:])
        other_times = times.clone()
        other_times[0, 3:] = 99999.0
        assert torch.equal(network(garbage, other_times, valid), reference)
        # the same study given with only its three phases: the same answer
        alone = network(x[:1, :3], times[:1, :3])
        assert torch.allclose(alone[0], reference[0], atol=1e-4)
        # zeroing phases instead of masking them is a different input: the mask is what excludes them
        zeroed = x.clone()
        zeroed[0, 3:] = 0.0
        assert not torch.allclose(network(zeroed, times, torch.ones_like(valid))[0], reference[0], atol=1e-4)


def test_acquisition_times_enter_in_seconds(network):
    x = phases(n=1, t=4)
    with torch.no_grad():
        early = network(x, torch.tensor([[0.0, 60.0, 120.0, 180.0]]))
        late = network(x, torch.tensor([[0.0, 90.0, 300.0, 600.0]]))
    assert not torch.allclose(early, late, atol=1e-5)


def test_any_number_of_phases_from_two_to_max(network):
    with torch.no_grad():
        for t in range(2, 9):
            out = network(phases(n=1, t=t), torch.linspace(0, 420, t)[None])
            assert out.shape == (1, 2, 16, 32, 32) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="2 to 8"):
        network(phases(n=1, t=9), torch.linspace(0, 420, 9)[None])
    with pytest.raises(ValueError, match="times"):
        network(phases(n=1, t=3))
    with pytest.raises(ValueError, match="pre-contrast"):
        network(phases(n=1, t=3), torch.tensor([[0.0, 1.0, 2.0]]), torch.tensor([[False, True, True]]))
    with pytest.raises(ValueError, match="divisible"):
        network(phases(n=1, t=3, size=(15, 32, 32)), torch.tensor([[0.0, 1.0, 2.0]]))


def test_bound_acquisition_is_what_the_engine_runs(network):
    x, times = phases(n=2, t=4), [0.0, 70.0, 200.0, 400.0]
    bound = network.bind_acquisition(times)
    with torch.no_grad():
        assert torch.equal(bound(x), network(x, torch.tensor([times] * 2)))
    assert bound.size_divisor == network.size_divisor == 4


def test_gradients_reach_every_parameter():
    torch.manual_seed(1)
    net = SpatialTemporalTransformer3D(base_channels=4, depth=3, heads=2)
    valid = torch.tensor([[True, True, True, False]])
    out = net(phases(n=1, t=4), torch.tensor([[0.0, 60.0, 120.0, 0.0]]), valid)
    out[:, 1].mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def test_bad_hyperparameters_are_one_line_model_errors():
    with pytest.raises(ModelError, match="max_phases"):
        build_network("st_transformer3d", max_phases=1)
    with pytest.raises(ModelError, match="heads"):
        build_network("st_transformer3d", base_channels=8, depth=2, heads=3)
