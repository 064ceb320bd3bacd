"""ConvLSTM encoder–forecaster (paper Table 3 baseline) and its armafied ARMA-LSTM."""
import pytest
import torch

from arma_plugin import ARMAConfig, ARMAConv2d, armafy
from arma_plugin.models import ConvLSTMNet

SMALL = dict(hidden_channels=(4, 6, 4), layers_per_block=(2, 1, 1), skip_stride=1)


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("kernel_size, dilation, paper", [(3, 1, 0.887), (5, 1, 2.462), (3, 2, 0.887)])
def test_paper_sizes(kernel_size, dilation, paper):
    # Gate-conv inputs of the 12 cells (4 blocks x 3, 32 channels, skip stride 2): block 0 reads
    # 1 + 32, then 32 + 32; block 3's first cell also gets block 1's output (32 + 32 + 32).
    inputs = (1 + 32) + 2 * 64 + 3 * 64 + 3 * 64 + 96 + 2 * 64
    head = (32 + 32) + 1  # 1x1 conv on block 3 + block 1 outputs, with bias
    expected = inputs * 128 * kernel_size ** 2 + 12 * 128 + head
    net = ConvLSTMNet(kernel_size=kernel_size, dilation=dilation)
    assert n_params(net) == expected
    assert round(expected / 1e6, 3) == paper  # Table 3's parameter column


def test_armafy_adds_the_paper_ar_parameters():
    net = ConvLSTMNet()
    arma, report = armafy(net, ARMAConfig(ar_kernel_size=3), return_report=True)
    # 12 gate convs x 128 output channels x (Q=1) x 4 taps; the paper prints 0.893M in total.
    assert n_params(arma) - n_params(net) == 12 * 128 * 4 == report.ar_params_added


@pytest.mark.parametrize("kernel_size, dilation, boundary", [(3, 1, "circular"), (5, 1, "zeros"),
                                                             (3, 2, "circular"), (3, 2, "zeros")])
def test_armafy_converts_every_gate_conv_and_is_identity_at_init(kernel_size, dilation, boundary):
    torch.manual_seed(0)
    net = ConvLSTMNet(kernel_size=kernel_size, dilation=dilation, **SMALL)
    arma = armafy(net, ARMAConfig(boundary=boundary))
    gate_names = [n for n, _ in net.named_modules() if n.endswith(".gates")]
    assert len(gate_names) == 4
    for name in gate_names:
        assert isinstance(arma.get_submodule(name), ARMAConv2d)
    assert type(arma.head) is torch.nn.Conv2d  # 1x1 head: not spatial, not converted
    x = torch.rand(2, 4, 1, 12, 12)
    # alpha = 0 gives A = I: the solve returns its input up to float32 rounding of a few ops.
    torch.testing.assert_close(arma(x, 3), net(x, 3), rtol=0, atol=1e-5)


def test_forward_shapes_and_output_frames():
    net = ConvLSTMNet(**SMALL)
    x = torch.rand(3, 5, 1, 8, 8)
    assert net(x, 4).shape == (3, 4, 1, 8, 8)
    everything = net(x, 4, output_frames=8)
    assert everything.shape == (3, 8, 1, 8, 8)
    # the last 4 of all one-step predictions are the forecasts
    torch.testing.assert_close(everything[:, -4:], net(x, 4), rtol=0, atol=0)


def test_forecast_feeds_back_its_predictions():
    torch.manual_seed(0)
    net = ConvLSTMNet(**SMALL)
    x = torch.rand(1, 3, 1, 8, 8)
    two = net(x, 2)
    # predicting frame 2 from inputs + prediction 1 equals reading prediction 1 as an input
    fed = net(torch.cat((x, two[:, :1]), dim=1), 1)
    torch.testing.assert_close(fed[:, 0], two[:, 1], rtol=0, atol=1e-6)  # same ops, same order


@pytest.mark.parametrize("kwargs, match", [
    (dict(kernel_size=4), "kernel_size"),
    (dict(dilation=0), "dilation"),
    (dict(hidden_channels=(4,), layers_per_block=(1, 1)), "equal length"),
    (dict(skip_stride=0), "skip_stride"),
])
def test_bad_constructor_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ConvLSTMNet(**kwargs)


@pytest.mark.parametrize("shape, future, output, match", [
    ((2, 3, 8, 8), 2, None, r"\[B, T_in, C, H, W\]"),
    ((2, 3, 1, 8, 8), 0, None, "future_frames"),
    ((2, 3, 1, 8, 8), 2, 5, "output_frames"),
])
def test_bad_forward_arguments(shape, future, output, match):
    with pytest.raises(ValueError, match=match):
        ConvLSTMNet(**SMALL)(torch.rand(shape), future, output)
