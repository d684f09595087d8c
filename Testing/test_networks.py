"""Hirsch et al.'s 3D U-Net: shapes, size, fixed upsampling, memory layout, training, registry."""

import copy

import pytest
import torch
import torch.nn.functional as F

from breasttumorseg.core.errors import ModelError
from breasttumorseg.segmentation.networks import ARCHITECTURES, HirschUNet3D, build_network
from breasttumorseg.segmentation.networks.hirsch_unet import FixedTrilinearUpsample3d


def trainable_parameters(network):
    return sum(p.numel() for p in network.parameters() if p.requires_grad)


@pytest.mark.parametrize("depth, size", [(4, (16, 24, 32)), (3, (8, 12, 20)), (1, (5, 7, 3))])
def test_output_shape_is_input_shape_with_out_channels(depth, size):
    torch.manual_seed(0)
    network = HirschUNet3D(in_channels=3, out_channels=2, base_channels=4, depth=depth).eval()
    with torch.no_grad():
        logits = network(torch.randn(2, 3, *size))
    assert logits.shape == (2, 2, *size)
    assert torch.isfinite(logits).all()


def test_spatial_size_not_divisible_is_refused():
    network = HirschUNet3D(base_channels=4, depth=4)
    assert network.size_divisor == 8
    with pytest.raises(ValueError, match="divisible by 8"):
        network(torch.zeros(1, 3, 16, 16, 12))


def test_parameter_count_at_defaults():
    network = build_network("hirsch_unet3d")
    count = trainable_parameters(network)
    print(f"HirschUNet3D default trainable parameters: {count:,}")
    assert 500_000 <= count <= 5_000_000
    # the fixed upsampling kernels are not parameters and not in the state dict
    assert not any("upsample" in name for name, _ in network.named_parameters())
    assert not any("upsample" in key for key in network.state_dict())
    # channels double per level
    assert [block[0].out_channels for block in network.encoder] == [16, 32, 64, 128]


def test_downsampling_is_overlapping_average_pooling():
    network = HirschUNet3D(base_channels=4)
    pool = network.downsample
    assert isinstance(pool, torch.nn.AvgPool3d)
    assert pool.kernel_size == 3 and pool.stride == 2 and pool.padding == 1
    x = torch.rand(1, 1, 8, 10, 6)
    y = pool(x)
    assert y.shape == (1, 1, 4, 5, 3)
    assert torch.allclose(y[0, 0, 1, 2, 1], x[0, 0, 1:4, 3:6, 1:4].mean())
    # a constant stays constant at the borders (padding not counted)
    assert torch.allclose(pool(torch.full((1, 1, 8, 8, 8), 2.5)), torch.tensor(2.5))


def test_upsampling_is_exact_trilinear_interpolation():
    up = FixedTrilinearUpsample3d(2)
    constant = torch.full((1, 2, 3, 4, 5), 7.0)
    assert torch.allclose(up(constant), torch.tensor(7.0), atol=1e-6)
    assert up(constant).shape == (1, 2, 6, 8, 10)
    # a linear ramp along each axis is continued linearly (half-voxel alignment) inside
    n = 6
    for axis in range(3):
        shape = [1, 1, 4, 4, 4]
        shape[2 + axis] = n
        ramp_values = 3.0 * torch.arange(n, dtype=torch.float32) - 2.0
        view = [1, 1, 1, 1, 1]
        view[2 + axis] = n
        ramp = ramp_values.view(view).expand(shape).contiguous()
        out = FixedTrilinearUpsample3d(1)(ramp).movedim(2 + axis, -1)[0, 0, 0, 0]
        o = torch.arange(2 * n, dtype=torch.float32)
        expected = 3.0 * ((o + 0.5) / 2 - 0.5) - 2.0
        expected = expected.clamp(ramp_values.min(), ramp_values.max())  # edges replicate
        assert torch.allclose(out, expected, atol=1e-5), (axis, out, expected)
    x = torch.randn(2, 2, 3, 5, 4)
    reference = F.interpolate(x, scale_factor=2, mode="trilinear", align_corners=False)
    assert torch.allclose(up(x), reference, atol=1e-5)


def test_upsampling_equals_hirsch_fixed_transposed_convolution():
    """The paper's layer: a depthwise stride-2 transposed convolution with the fixed kernel
    [1/4, 3/4, 3/4, 1/4] per axis on the edge-replicated input gives the same values."""
    channels = 3
    k = torch.tensor([0.25, 0.75, 0.75, 0.25])  # linear interpolation by 2 as a stride-2 kernel
    kernel = (k[:, None, None] * k[None, :, None] * k[None, None, :]).expand(channels, 1, 4, 4, 4)
    torch.manual_seed(5)
    x = torch.randn(2, channels, 5, 6, 7)
    transposed = F.conv_transpose3d(F.pad(x, (1, 1, 1, 1, 1, 1), mode="replicate"), kernel, stride=2, padding=3,
                                    groups=channels)
    assert transposed.shape == (2, channels, 10, 12, 14)
    assert torch.allclose(FixedTrilinearUpsample3d(channels)(x), transposed, atol=1e-5)


def test_channels_last_layout_changes_no_output():
    """The network keeps its weights in channels_last_3d; its logits equal the same layers run
    on plain contiguous weights and activations, and come back contiguous."""
    torch.manual_seed(6)
    network = HirschUNet3D(in_channels=2, base_channels=4, depth=3, norm="instance").eval()
    assert network.encoder[0][0].weight.is_contiguous(memory_format=torch.channels_last_3d)
    plain = copy.deepcopy(network).to(memory_format=torch.contiguous_format)
    assert plain.encoder[0][0].weight.is_contiguous()
    x = torch.randn(2, 2, 8, 12, 16)
    with torch.no_grad():
        out = network(x)
        h, skips = x, []
        for level, block in enumerate(plain.encoder):  # the forward pass, written out without any layout change
            h = block(h)
            if level < plain.depth - 1:
                skips.append(h)
                h = plain.downsample(h)
        for level in reversed(range(plain.depth - 1)):
            h = plain.decoder[level](torch.cat([plain.upsample[level](h), skips[level]], dim=1))
        reference = plain.head(h)
    assert reference.is_contiguous() and out.is_contiguous()
    assert torch.allclose(out, reference, atol=1e-5)


def test_fixed_upsampling_weights_do_not_train_but_the_rest_does():
    torch.manual_seed(1)
    network = HirschUNet3D(base_channels=4, depth=3).train()
    first_conv = network.encoder[0][0].weight.clone()
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-2)
    x = torch.randn(2, 3, 8, 8, 8)
    target = (x[:, :1] > 0.5).long()[:, 0]
    losses = []
    for _ in range(15):
        optimizer.zero_grad()
        loss = F.cross_entropy(network(x), target)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    for up in network.upsample:
        assert not list(up.parameters()) and not up.state_dict()
    assert not torch.equal(network.encoder[0][0].weight, first_conv)
    assert losses[-1] < 0.7 * losses[0]


def test_state_dict_round_trip_gives_the_same_outputs():
    torch.manual_seed(2)
    a = build_network("hirsch_unet3d", base_channels=4, depth=3)
    with torch.no_grad():
        for module in a.modules():
            if isinstance(module, torch.nn.BatchNorm3d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    b = build_network("hirsch_unet3d", **a.hyperparameters())
    b.load_state_dict(a.state_dict(), strict=True)
    x = torch.randn(1, 3, 8, 12, 8)
    with torch.no_grad():
        assert torch.equal(a.eval()(x), b.eval()(x))


def test_build_network_refuses_bad_requests_in_one_line():
    assert ARCHITECTURES["hirsch_unet3d"] is HirschUNet3D
    with pytest.raises(ModelError, match="unknown network architecture 'vnet'") as info:
        build_network("vnet")
    assert "\n" not in str(info.value)
    with pytest.raises(ModelError, match="bad hyperparameters") as info:
        build_network("hirsch_unet3d", widht=3)
    assert "\n" not in str(info.value)
    with pytest.raises(ModelError, match="depth must be a positive integer"):
        build_network("hirsch_unet3d", depth=0)
    with pytest.raises(ModelError, match="base_channels"):
        build_network("hirsch_unet3d", base_channels=2.5)


def test_instance_norm_gives_the_same_output_in_training_and_inference_mode():
    """With ``norm="instance"`` a patch's output does not depend on the mode or on the other
    patches of the batch, which is why the kinetic model uses it; batch norm differs."""
    torch.manual_seed(3)
    x = torch.randn(2, 3, 8, 16, 16)
    instance = build_network("hirsch_unet3d", base_channels=4, depth=3, norm="instance")
    assert instance.hyperparameters()["norm"] == "instance"
    assert not any(isinstance(m, torch.nn.BatchNorm3d) for m in instance.modules())
    with torch.no_grad():
        trained_mode = instance.train()(x)
        inference_mode = instance.eval()(x)
        alone = instance.eval()(x[:1])
    assert torch.allclose(trained_mode, inference_mode, atol=1e-5)
    assert torch.allclose(alone, inference_mode[:1], atol=1e-5)
    batch = build_network("hirsch_unet3d", base_channels=4, depth=3)
    assert "norm" not in batch.hyperparameters()
    with torch.no_grad():
        assert not torch.allclose(batch.train()(x), batch.eval()(x), atol=1e-3)
    rebuilt = build_network("hirsch_unet3d", **instance.hyperparameters())
    rebuilt.load_state_dict(instance.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), inference_mode)
    with pytest.raises(ModelError, match="norm must be one of batch, instance"):
        build_network("hirsch_unet3d", norm="group")


def test_state_dict_is_in_the_plain_layout(tmp_path):
    """Weights live in channels_last_3d, but a state dict is plain contiguous tensors, as safetensors needs."""
    from safetensors.torch import load_file, save_file

    network = HirschUNet3D(base_channels=4, depth=3)
    state = network.state_dict()
    assert all(tensor.is_contiguous() for tensor in state.values())
    assert torch.equal(state["encoder.0.0.weight"], network.encoder[0][0].weight.detach())
    assert isinstance(network.state_dict(keep_vars=True)["encoder.0.0.weight"], torch.nn.Parameter)
    path = tmp_path / "w.safetensors"
    save_file(state, str(path))
    assert torch.equal(load_file(str(path))["encoder.0.0.weight"], state["encoder.0.0.weight"])


def test_eval_mode_folds_batch_norm_into_the_convolutions_with_the_same_output():
    """In eval mode a batch-normalised block runs as convolutions with folded weights; its output
    equals convolution -> BatchNorm3d (running statistics) -> ReLU run layer by layer."""
    torch.manual_seed(8)
    network = HirschUNet3D(in_channels=2, base_channels=4, depth=3).eval()
    with torch.no_grad():
        for module in network.modules():
            if isinstance(module, torch.nn.BatchNorm3d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.3, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.3, 0.3)
    block = network.encoder[1]
    x = torch.randn(2, 4, 6, 8, 10)
    with torch.no_grad():
        folded = block(x)
        layer_by_layer = x
        for layer in block:  # nn.Sequential's own order: conv, BatchNorm3d, ReLU
            layer_by_layer = layer(layer_by_layer)
    assert torch.allclose(folded, layer_by_layer, atol=1e-5)
    assert not torch.equal(folded, torch.relu(torch.nn.functional.conv3d(x, block[0].weight, padding=1)))
    block.train()  # training uses batch statistics, never the folded form
    assert not torch.allclose(block(x), folded, atol=1e-3)
