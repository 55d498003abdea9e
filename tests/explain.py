"""Lesson checks that say what is wrong: one way for every lesson's test to fail.

A student whose version of a function is wrong sees the idea that broke, in the course's
words, and the smallest example that shows it: never a bare `assert tensor(False)` or a
dump of two tensors. Each helper takes `idea`, the sentence that names what the code must
do ("a masked token predicts itself: no shift"), and puts it after what was found.
"""

from contextlib import contextmanager

import torch


def shown(value, limit=12):
    """A short, readable form of a value: lists for small tensors, rounded floats."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        if value.numel() > limit:
            return f"tensor of shape {tuple(value.shape)}"
        value = value.tolist()
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(shown(v, limit) for v in value) + "]"
    return repr(value)


def expect_equal(got, want, what, idea):
    """got == want (tensors: same shape and values), else: 'WHAT: got G, expected W: IDEA',
    where for two large tensors of one shape G and W are their first differing entries."""
    if isinstance(want, torch.Tensor) and isinstance(got, torch.Tensor) and got.shape == want.shape:
        differ = torch.nonzero(got.to(want.dtype) != want)
        if len(differ):
            where = tuple(int(i) for i in differ[0])
            raise AssertionError(f"{what}: {len(differ)} of {want.numel()} entries differ, the first at {where}: "
                                 f"got {shown(got[where])}, expected {shown(want[where])}: {idea}")
        return
    same = not isinstance(want, torch.Tensor) and got == want
    assert same, f"{what}: got {shown(got)}, expected {shown(want)}: {idea}"


def expect_close(got, want, what, idea, atol=1e-5):
    """Tensors equal within atol, else the first place they differ, both values, and IDEA."""
    got, want = torch.as_tensor(got).detach().float().cpu(), torch.as_tensor(want).detach().float().cpu()
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)}, expected {tuple(want.shape)}: {idea}"
    difference = (got - want).abs()
    if not difference.max() <= atol:                     # also catches NaN
        where = tuple(int(i) for i in torch.nonzero(~(difference <= atol))[0])
        raise AssertionError(f"{what}: at {where} got {got[where].item():.4g}, expected {want[where].item():.4g} "
                             f"(largest difference {difference.max().item():.3g}): {idea}")


@contextmanager
def explaining(idea):
    """Turn an error raised inside (a shape mismatch deep in torch, say) into a sentence."""
    try:
        yield
    except AssertionError:
        raise
    except Exception as error:      # the student's code crashed: say where it hurts, not only how
        message = str(error).splitlines()[0] if str(error) else ""
        raise AssertionError(f"{type(error).__name__}: {message}: {idea}") from None
