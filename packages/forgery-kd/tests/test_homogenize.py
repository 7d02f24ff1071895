"""Spec §5 test 4: the gradient homogenizer on a toy MLP backbone with two heads."""

import pytest
import torch
from torch import nn

from forgery_kd import ForgeryKDError
from forgery_kd.homogenize import GradientHomogenizer, rotate

D, B = 6, 5


def toy(seed=0):
    torch.manual_seed(seed)
    backbone = nn.Linear(4, D)
    heads = nn.ModuleList([nn.Linear(D, 3), nn.Linear(D, 2)])
    x = torch.randn(B, 4)
    y = [torch.randn(B, 3), torch.randn(B, 2)]
    return backbone, heads, x, y


def task_losses(heads, views, y, weights=(1.0, 7.0)):
    return [w * (head(v) - t).pow(2).mean() for w, head, v, t in zip(weights, heads, views, y, strict=True)]


def per_task_grads(backbone, heads, x, y):
    """Independent reference: each task's gradient w.r.t. h by plain autograd."""
    h = backbone(x)
    losses = task_losses(heads, [h, h], y)
    return h, [torch.autograd.grad(loss, h, retain_graph=True)[0] for loss in losses]


def combined_grad(hom, backbone, heads, x, y, scale=1.0):
    h = backbone(x)
    h.retain_grad()
    losses = task_losses(heads, hom.split(h), y)
    (scale * sum(losses)).backward()
    return h.grad


def test_none_equals_autograd_sum():
    backbone, heads, x, y = toy()
    hom = GradientHomogenizer(2, D, mode="none")
    got = combined_grad(hom, backbone, heads, x, y)
    grads = [p.grad.clone() for p in backbone.parameters()]
    backbone.zero_grad()
    heads.zero_grad()
    h = backbone(x)
    sum(task_losses(heads, [h, h], y)).backward()
    for g, p in zip(grads, backbone.parameters(), strict=True):
        torch.testing.assert_close(g, p.grad)
    _, ref = per_task_grads(backbone, heads, x, y)
    torch.testing.assert_close(got, ref[0] + ref[1])
    stats = hom.stats()
    cos = torch.nn.functional.cosine_similarity(ref[0].flatten(), ref[1].flatten(), dim=0)
    assert stats["grad_cos_01"] == pytest.approx(float(cos), abs=1e-5)
    assert stats["grad_norm_ratio_01"] == pytest.approx(float(ref[0].norm() / ref[1].norm()), rel=1e-5)


@pytest.mark.parametrize("mode", ["norm_balance", "rotograd_scale"])
def test_balancing_modes_give_each_task_the_same_contribution(mode):
    backbone, heads, x, y = toy()
    _, ref = per_task_grads(backbone, heads, x, y)
    norms = torch.stack([g.norm() for g in ref])
    assert norms[1] > 3 * norms[0]  # the tasks really are unbalanced
    got = combined_grad(GradientHomogenizer(2, D, mode=mode), backbone, heads, x, y)
    m = norms.mean()  # at step 1 RotoGrad's convergence ratios are all 1, so C = mean norm too
    contributions = [g * (m / n) for g, n in zip(ref, norms, strict=True)]
    torch.testing.assert_close(got, sum(contributions))
    assert contributions[0].norm() == pytest.approx(float(contributions[1].norm()), rel=1e-5)


def test_rotograd_scale_follows_convergence_ratios_after_step_one():
    backbone, heads, x, y = toy()
    hom = GradientHomogenizer(2, D, mode="rotograd_scale")
    _, first = per_task_grads(backbone, heads, x, y)
    combined_grad(hom, backbone, heads, x, y)
    with torch.no_grad():
        heads[0].weight.mul_(0.5)
    _, second = per_task_grads(backbone, heads, x, y)
    got = combined_grad(hom, backbone, heads, x, y)
    n1 = torch.stack([g.norm() for g in first])
    n2 = torch.stack([g.norm() for g in second])
    ratios = n2 / n1
    c = ((ratios / ratios.sum()) * n2).sum()
    torch.testing.assert_close(got, sum(g * (c / n) for g, n in zip(second, n2, strict=True)))


def test_pcgrad_projects_conflicting_gradients():
    backbone, heads, x, y = toy()
    _, (g1, g2) = per_task_grads(backbone, heads, x, y)
    got = combined_grad(GradientHomogenizer(2, D, mode="pcgrad"), backbone, heads, x, y)
    dot = (g1 * g2).sum()
    p1 = g1 - dot / g2.pow(2).sum() * g2 if dot < 0 else g1
    p2 = g2 - dot / g1.pow(2).sum() * g1 if dot < 0 else g2
    torch.testing.assert_close(got, p1 + p2)


def reference_rotograd_step(backbone, heads, skew, x, y, counter, ref_norms, burn_in=20):
    """The rotograd library's procedure, re-derived with hooks and a separate rotation backward:
    rotated copies use detached R, hooks capture g̃_k, the rotation loss is backpropagated by autograd."""
    rotations = torch.linalg.matrix_exp(skew - skew.transpose(1, 2))
    h = backbone(x)
    reps, rotated_grads, grads = [], [None, None], [None, None]
    for k in range(2):
        rep = h.detach().clone().requires_grad_(True)
        z = rep @ rotations[k].detach().T
        z.register_hook(lambda g, k=k: rotated_grads.__setitem__(k, g))
        reps.append(rep)
        loss = task_losses(heads, [z, z], y)[k]
        loss.backward()
        grads[k] = rep.grad
    mean = sum(grads) / 2
    scaled = [g * (mean.norm() / g.norm()) for g in grads]
    ref = (sum(scaled) / 2).detach()
    for k in range(2):
        diff = ref @ rotations[k].T - rotated_grads[k]
        diff.pow(2).sum(1).mean().backward(retain_graph=True)
    norms = torch.stack([g.norm() for g in grads])
    if counter in (0, burn_in):
        ref_norms = norms.clone()
    ratios = norms / ref_norms
    c = ((ratios / ratios.sum()) * norms).sum()
    h.backward(sum(g * (c / n) for g, n in zip(grads, norms, strict=True)))
    return ref_norms


def test_rotograd_matches_an_independent_reference_for_three_steps():
    backbone, heads, x, y = toy(1)
    backbone2, heads2, _, _ = toy(1)
    hom = GradientHomogenizer(2, D, mode="rotograd")
    skew = torch.zeros(2, D, D, requires_grad=True)
    params = [*backbone.parameters(), *heads.parameters(), *hom.rotations.parameters()]
    params2 = [*backbone2.parameters(), *heads2.parameters(), skew]
    opt = torch.optim.SGD(params, lr=0.1)
    opt2 = torch.optim.SGD(params2, lr=0.1)
    ref_norms = None
    for step in range(3):
        opt.zero_grad()
        opt2.zero_grad()
        h = backbone(x)
        sum(task_losses(heads, hom.split(h), y)).backward()
        ref_norms = reference_rotograd_step(backbone2, heads2, skew, x, y, step, ref_norms)
        for p, q in zip(params, params2, strict=True):
            torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-4)
        if step > 0:
            assert hom.rotations.skew.grad.abs().max() > 0
        opt.step()
        opt2.step()


def test_rotation_grad_equals_autograd_of_rotation_loss():
    backbone, heads, x, y = toy(2)
    hom = GradientHomogenizer(2, D, mode="rotate_only")
    with torch.no_grad():
        hom.rotations.skew.normal_(0, 0.3)
    sum(task_losses(heads, hom.split(backbone(x)), y)).backward()
    injected = hom.rotations.skew.grad.clone()
    hom.rotations.skew.grad = None
    hom.rotation_loss().backward()
    torch.testing.assert_close(injected, hom.rotations.skew.grad, atol=1e-6, rtol=1e-5)


def test_rotations_stay_orthogonal_after_50_steps():
    backbone, heads, x, y = toy(3)
    hom = GradientHomogenizer(2, D, mode="rotograd", rotation_dim=4)
    opt = torch.optim.Adam([*backbone.parameters(), *heads.parameters(), *hom.parameters()], lr=0.05)
    for _ in range(50):
        opt.zero_grad()
        sum(task_losses(heads, hom.split(backbone(x)), y)).backward()
        opt.step()
    r = hom.rotations()
    assert hom.rotations.skew.abs().max() > 1e-3  # they did move
    torch.testing.assert_close(r.transpose(1, 2) @ r, torch.eye(4).expand(2, 4, 4), atol=1e-5, rtol=0)
    # only the first rotation_dim channels are rotated
    h = torch.randn(3, D)
    torch.testing.assert_close(rotate(h, r[0])[:, 4:], h[:, 4:])


def test_loss_scaling_scales_the_combined_gradient_and_not_the_rotation_update():
    outs = []
    for scale in (1.0, 1024.0):
        backbone, heads, x, y = toy(4)
        backbone.double(), heads.double()
        x, y = x.double(), [t.double() for t in y]
        hom = GradientHomogenizer(2, D, mode="rotograd").double()
        with torch.no_grad():
            hom.rotations.skew.normal_(0, 0.3)
        hom.grad_scale = scale
        g = combined_grad(hom, backbone, heads, x, y, scale=scale)
        outs.append((g, hom.rotations.skew.grad / scale, hom.stats()))
    torch.testing.assert_close(outs[1][0], 1024.0 * outs[0][0], rtol=1e-5, atol=0)
    torch.testing.assert_close(outs[1][1], outs[0][1], rtol=1e-5, atol=1e-9)
    assert outs[1][2]["grad_norm_0"] == pytest.approx(outs[0][2]["grad_norm_0"], rel=1e-5)


def test_conv_maps_and_bad_input():
    hom = GradientHomogenizer(2, 8, mode="rotograd", rotation_dim=5)
    h = torch.randn(3, 8, 4, 4, requires_grad=True)
    views = hom.split(h)
    assert [v.shape for v in views] == [h.shape, h.shape]
    (views[0].sum() + 2 * views[1].pow(2).sum()).backward()
    assert h.grad.shape == h.shape and hom.rotations.skew.grad.shape == (2, 5, 5)
    with pytest.raises(ForgeryKDError, match="channels"):
        hom.split(torch.randn(3, 7, 4, 4))
    with pytest.raises(ForgeryKDError, match="unknown"):
        GradientHomogenizer(2, 8, mode="gradnorm")


def test_geotorch_rotograd_matches_the_rotograd_library():
    rotograd = pytest.importorskip("rotograd")
    pytest.importorskip("geotorch")
    backbone, heads, x, y = toy(5)
    backbone2, heads2, _, _ = toy(5)
    hom = GradientHomogenizer(2, D, mode="rotograd", rotation_param="geotorch")
    model = rotograd.RotoGrad(backbone2, [heads2[0], heads2[1]], D, burn_in_period=20)
    model.train()
    for step in range(3):
        for p in [*backbone.parameters(), *heads.parameters(), *hom.parameters(), *model.parameters()]:
            p.grad = None
        sum(task_losses(heads, hom.split(backbone(x)), y)).backward()
        preds = model(x)
        model.backward([w * (p - t).pow(2).mean() for w, p, t in zip((1.0, 7.0), preds, y, strict=True)])
        for p, q in zip(backbone.parameters(), backbone2.parameters(), strict=True):
            torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-4)
        with torch.no_grad():
            for p in [
                *backbone.parameters(),
                *hom.parameters(),
                *backbone2.parameters(),
                *model.parameters(),
            ]:
                if p.grad is not None:
                    p -= 0.1 * p.grad
        assert step >= 0
