"""for_export (AR solves as two matmuls at a fixed size), ONNX round trips and torch.export."""
from __future__ import annotations

import pytest
import segmentation_models_pytorch as smp
import timm
import torch
import torch.nn as nn

from arma_plugin import AutoRegressive2d, FixedSizeAutoRegressive2d, armafy, for_export


def _train_ar(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-zero AR coefficients, as after fine-tuning (alpha ~ N(0, 0.5²))."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, AutoRegressive2d):
                module.alpha.copy_(0.5 * torch.randn(module.alpha.shape, generator=gen))
    return model


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _classifier() -> nn.Module:
    return _train_ar(armafy(timm.create_model("resnet18", num_classes=10))).eval()


def _unet() -> nn.Module:
    return _train_ar(armafy(smp.Unet("resnet18", encoder_weights=None, classes=2), ar_kernel_size=5)).eval()


@pytest.mark.parametrize("boundary", ["circular", "zeros"])
@pytest.mark.parametrize("ar_kernel_size, dilation", [(3, 1), (5, 2)])
@pytest.mark.parametrize("size", [(2, 3), (9, 16)], ids=str)
def test_fixed_size_layer_equals_the_solve(boundary, ar_kernel_size, dilation, size):
    ar = _train_ar(AutoRegressive2d(4, ar_kernel_size, boundary, dilation=dilation).double())
    x = torch.randn(2, 4, *size, dtype=torch.float64)
    fixed = FixedSizeAutoRegressive2d.from_module(ar, *size)
    assert fixed.row_inverse.shape == (4, size[0], size[0]) and fixed.col_inverse.shape == (4, size[1], size[1])
    # float64, alpha ~ N(0, 0.25): condition numbers below ~1e3, so agreement to ~1e-13
    assert _rel_err(fixed(x), ar(x)) < 1e-11


def test_fixed_size_layer_on_long_cyclic_lines():
    """Stable factors whose product partial-pivoting LU inverts with growth exponential in the
    line length (1e20 off at 256 although the condition number is 3): the inverses come from
    the solver, exact for every stable factor."""
    ar = AutoRegressive2d(1, 5, "circular", reparam=False).double()
    with torch.no_grad():
        ar.alpha.copy_(torch.tensor([[[0.0, 0.0, 0.7225, -0.0104], [0.0, 0.0, 0.0238, -0.6796]]]))
    x = torch.randn(2, 1, 3, 256, dtype=torch.float64)
    # float64, condition number 3: agreement to ~1e-15
    assert _rel_err(FixedSizeAutoRegressive2d.from_module(ar, 3, 256)(x), ar(x)) < 1e-12


@pytest.mark.parametrize("make_model, size", [(_classifier, 64), (_unet, 64)], ids=["timm", "smp"])
def test_for_export_equals_the_model_in_float32(make_model, size):
    model = make_model()
    x = torch.randn(2, 3, size, size)
    exportable = for_export(model, x)
    assert not any(isinstance(m, AutoRegressive2d) for m in exportable.modules())
    assert any(isinstance(m, AutoRegressive2d) for m in model.modules())  # a copy: the model is unchanged
    with torch.no_grad():
        # float32 matmuls against the float32 solve: a few ulps per layer, through the whole network
        assert _rel_err(exportable(x), model(x)) < 1e-5


def test_for_export_learns_each_depth_and_refuses_other_sizes():
    model = _classifier()
    exportable = for_export(model, torch.randn(1, 3, 64, 64))
    sizes = {m.map_size for m in exportable.modules() if isinstance(m, FixedSizeAutoRegressive2d)}
    assert sizes == {(32, 32), (16, 16), (8, 8), (4, 4), (2, 2)}  # resnet18's stem and four stages
    assert model.training is False and exportable.training is False
    with pytest.raises(ValueError, match=r"for_export for 32x32 maps, got 48x48"):
        exportable(torch.randn(1, 3, 96, 96))


def test_for_export_keeps_train_mode_and_batch_norm_statistics():
    model = _classifier().train()
    stats = model.bn1.running_mean.clone()
    exportable = for_export(model, torch.randn(2, 3, 32, 32), inplace=True)
    assert exportable is model and model.training and all(m.training for m in model.modules())
    assert torch.equal(model.bn1.running_mean, stats)  # the size-learning forward ran in eval mode


def test_for_export_refuses_a_layer_called_at_two_sizes():
    shared = AutoRegressive2d(3)
    model = nn.Sequential(shared, nn.AvgPool2d(2), shared)
    with pytest.raises(ValueError, match=r"called on maps of sizes \[\(4, 4\), \(8, 8\)\]"):
        for_export(model, torch.randn(1, 3, 8, 8))


def test_for_export_bad_example_input():
    with pytest.raises(ValueError, match="example_input must be a tensor"):
        for_export(_classifier(), [torch.randn(1, 3, 8, 8)])
    with pytest.raises(ValueError, match="inplace must be True or False"):
        for_export(AutoRegressive2d(2), torch.randn(1, 2, 4, 4), inplace=1)


@pytest.mark.parametrize("make_model", [_classifier, _unet], ids=["timm", "smp"])
def test_onnx_round_trip_in_onnxruntime(make_model, tmp_path):
    import onnxruntime

    model = make_model()
    x = torch.randn(1, 3, 64, 64)
    path = str(tmp_path / "model.onnx")
    torch.onnx.export(for_export(model, x), (x,), path, dynamo=False)
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        expected = model(x)
    # onnxruntime's float32 kernels sum in another order than torch's: ~1e-6 relative measured
    assert _rel_err(torch.from_numpy(y), expected) < 1e-4


def test_plain_onnx_export_names_for_export(tmp_path):
    with pytest.raises(Exception, match=r"arma_plugin\.for_export"):
        torch.onnx.export(_classifier(), (torch.randn(1, 3, 32, 32),), str(tmp_path / "m.onnx"), dynamo=True)


@pytest.mark.parametrize("strict", [True, False], ids=["strict", "non-strict"])
@pytest.mark.parametrize("make_model", [_classifier, _unet], ids=["timm", "smp"])
def test_torch_export_equals_eager(make_model, strict):
    model = make_model()
    x = torch.randn(2, 3, 32, 32)
    program = torch.export.export(model, (x,), strict=strict)
    assert any("arma_plugin.ar_solve" in str(node.target) for node in program.graph.nodes)
    with torch.no_grad():
        # the exported graph runs the same kernels in the same order: SMP's own test uses these defaults
        torch.testing.assert_close(program.module()(x), model(x))


@pytest.mark.slow
def test_smp_dpt_export_in_a_one_thread_process_equals_eager():
    """SMP's own export check on its DPT test model (strict export, then eager and exported in
    inference mode, rtol = atol = 1e-5) in a one-thread process. Its decoder's kernels sum in
    an order that depends on torch's thread count, so it also checks that the AR solve's first
    call leaves that count alone (numba's thread-pool start-up once raised it from 1 to 2
    between the exported and the eager run: 8.4e-5 apart)."""
    from solve_checks import run_in_fresh_process

    script = (
        "import torch, segmentation_models_pytorch as smp\n"
        "from arma_plugin import armafy\n"
        "torch.set_num_threads(1)\n"
        "model = armafy(smp.create_model('dpt', 'tu-vit_tiny_patch16_224', encoder_weights=None)).eval()\n"
        "x = torch.rand(1, 3, 224, 224)\n"
        "program = torch.export.export(model, args=(x,), strict=True)\n"
        "with torch.inference_mode():\n"
        "    torch.testing.assert_close(model(x), program.module()(x), rtol=1e-5, atol=1e-5)\n"
        "print(torch.get_num_threads())\n")
    assert run_in_fresh_process(script, timeout=600).split()[-1] == "1"
