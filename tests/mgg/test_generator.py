from __future__ import annotations

import torch
import torch.nn.functional as F

from tta_cli.mgg import MetaGradientGenerator
from tta_cli.mgg.generator import LN_EPS, GradientMemory, reconstruction_gradient


def make_generator(memory: bool = True, seed: int = 0) -> MetaGradientGenerator:
    torch.manual_seed(seed)
    generator = MetaGradientGenerator(memory=memory)
    # Move every weight off its initial value so that no part of the layer is trivially zero.
    with torch.no_grad():
        for param in generator.parameters():
            param.add_(0.3 * torch.randn_like(param))
    return generator


def test_parameter_count_matches_the_paper() -> None:
    assert MetaGradientGenerator().parameter_count() == 164
    assert MetaGradientGenerator(memory=False).parameter_count() == 164


def test_each_coordinate_is_independent_of_the_others() -> None:
    generator = make_generator()
    torch.manual_seed(1)
    features = torch.randn(1000, 2)
    with torch.no_grad():
        together, memory = generator(features)
        alone = [generator(features[index : index + 1]) for index in (0, 17, 999)]
        permutation = torch.randperm(1000)
        shuffled, shuffled_memory = generator(features[permutation])
    for (output, single_memory), index in zip(alone, (0, 17, 999), strict=True):
        torch.testing.assert_close(output, together[index : index + 1])
        torch.testing.assert_close(single_memory.weight, memory.weight[index : index + 1])
    torch.testing.assert_close(shuffled, together[permutation])
    torch.testing.assert_close(shuffled_memory.bias, memory.bias[permutation])
    assert together.abs().max() < 1


def test_closed_form_reconstruction_gradient_matches_autograd() -> None:
    torch.manual_seed(2)
    prediction = torch.randn(7, 8, requires_grad=True)
    target, gain, shift = torch.randn(7, 8), torch.rand(8) + 0.5, torch.randn(8)
    loss = 0.5 * (F.layer_norm(prediction, (8,), gain, shift, eps=LN_EPS) - target).pow(2).sum()
    (expected,) = torch.autograd.grad(loss, prediction)
    torch.testing.assert_close(reconstruction_gradient(prediction.detach(), target, gain, shift), expected)


def test_inner_step_matches_an_autograd_reference_on_one_coordinate() -> None:
    layer = make_generator().body
    assert isinstance(layer, GradientMemory)
    torch.manual_seed(3)
    token = torch.randn(1, 2)
    weight, bias = torch.randn(1, 8, 8) * 0.3, torch.randn(1, 8) * 0.3
    with torch.no_grad():
        output, memory = layer(token, type(layer.initial_memory(1))(weight, bias))

    # Reference: the inner loss written out plainly, its gradient by autograd, one step.
    key, value, query = layer.key(token)[0].detach(), layer.value(token)[0].detach(), layer.query(token)[0].detach()
    gain, shift = layer.inner_gain.detach(), layer.inner_shift.detach()
    inner_weight, inner_bias = weight[0].clone().requires_grad_(True), bias[0].clone().requires_grad_(True)
    prediction = F.layer_norm(key @ inner_weight + inner_bias, (8,), gain, shift, eps=LN_EPS)
    loss = 0.5 * (prediction - (value - key)).pow(2).sum()
    grad_weight, grad_bias = torch.autograd.grad(loss, (inner_weight, inner_bias))
    eta = layer.step_size(token)[0].detach()
    new_weight, new_bias = weight[0] - eta * grad_weight, bias[0] - eta * grad_bias
    expected = query + F.layer_norm(query @ new_weight + new_bias, (8,), gain, shift, eps=LN_EPS)

    torch.testing.assert_close(memory.weight[0], new_weight)
    torch.testing.assert_close(memory.bias[0], new_bias)
    torch.testing.assert_close(output[0], expected)


def test_memory_step_size_is_learned_and_input_dependent() -> None:
    layer = make_generator().body
    assert isinstance(layer, GradientMemory)
    eta = layer.step_size(torch.tensor([[0.0, 0.0], [3.0, -3.0]]))
    assert eta.shape == (2, 1) and eta[0] != eta[1]
    assert (eta >= 0).all()


def test_the_generator_is_differentiable_in_its_weights() -> None:
    generator = make_generator()
    output, memory = generator(torch.randn(5, 2))
    output.sum().backward()
    assert all(param.grad is not None for param in generator.parameters())
    assert memory is not None and memory.weight.requires_grad


def test_the_plain_mlp_ablation_has_no_memory() -> None:
    generator = make_generator(memory=False)
    output, memory = generator(torch.randn(4, 2))
    assert memory is None and output.shape == (4,)
