"""`paired_mse` (its own backward) against ``F.mse_loss`` on the two halves, through autograd."""
import pytest
import torch
import torch.nn.functional as F

from timm_rspc.method.alignment import paired_mse


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize('layout', ['contiguous', 'transposed'])
def test_paired_mse_equals_mse_loss_of_the_halves(dtype, layout):
    base = torch.randn(6, 7, 5, generator=torch.Generator().manual_seed(0)).to(dtype)
    if layout == 'transposed':
        base = base.transpose(1, 2)
    ours, theirs = base.clone().requires_grad_(True), base.clone().requires_grad_(True)
    expected = F.mse_loss(theirs[:3].float(), theirs[3:].float())
    got = paired_mse(ours)
    assert got.dtype == expected.dtype
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=0)
    (3 * expected).backward()
    (3 * got).backward()
    assert ours.grad.dtype == dtype and ours.grad.shape == base.shape
    torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-6 if dtype != torch.bfloat16 else 1e-2, atol=1e-9)


def test_paired_mse_needs_an_even_batch():
    with pytest.raises(ValueError, match='even batch'):
        paired_mse(torch.zeros(3, 4))
