"""A model's complete observable state, to check that scoring left it exactly as found."""

import torch


def snapshot(model, copy_state: bool = True):
    """``copy_state=False`` (large models): tensors by identity and in-place version counter instead of
    by value (every in-place write bumps the counter; a rebind changes the identity)."""
    return {
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grad_ids": [id(p.grad) if p.grad is not None else None for p in model.parameters()],
        "grads": [p.grad.clone() if p.grad is not None else None for p in model.parameters()],
        "state": {k: v.clone() for k, v in model.state_dict().items()}
        if copy_state
        else {k: _identity(v) for k, v in model.state_dict(keep_vars=True).items()},
        "dicts": [sorted(m.__dict__) for m in model.modules()],
        "hooks": [
            (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks), len(m._backward_pre_hooks))
            for m in model.modules()
        ],
        "param_hooks": [p._backward_hooks for p in model.parameters()],
        "inplace": [getattr(m, "inplace", None) for m in model.modules()],
        "children": [[id(c) for c in m._modules.values()] for m in model.modules()],
        "forwards": [m.__dict__.get("forward") for m in model.modules()],
    }


def _identity(t):
    return (id(t), t._version, t.data_ptr(), tuple(t.shape), t.dtype)


def assert_same(before, after):
    assert before["training"] == after["training"]
    assert before["requires_grad"] == after["requires_grad"]
    assert before["grad_ids"] == after["grad_ids"]
    for a, b in zip(before["grads"], after["grads"]):
        assert (a is None and b is None) or torch.equal(a, b)
    assert before["state"].keys() == after["state"].keys()
    for k in before["state"]:
        a, b = before["state"][k], after["state"][k]
        assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b, k
    assert before["dicts"] == after["dicts"]
    assert before["hooks"] == after["hooks"]
    assert before["param_hooks"] == after["param_hooks"]
    assert before["inplace"] == after["inplace"]
    assert before["children"] == after["children"]
    assert before["forwards"] == after["forwards"]
