"""Qwen3 language model vs transformers, packed rows vs separate samples."""

import pytest
import torch

from llava_ov15.model.attention import Segments, make_decode_mask
from llava_ov15.model.config import TextConfig
from llava_ov15.model.qwen3 import Qwen3ForCausalLM
from llava_ov15.model.testing import hf_qwen3, tiny_model


def _lm(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = TextConfig(vocab_size=300, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                     head_dim=16, intermediate_size=96, rope_theta=kw.pop("theta", 1e6), **kw)
    m = Qwen3ForCausalLM(cfg)
    with torch.no_grad():
        for name, p in m.named_parameters():  # non-trivial norm weights too
            p.copy_(torch.randn_like(p) * (0.1 if "norm" not in name else 0.2) + ("norm" in name))
    return m.eval()


@pytest.mark.parametrize("theta", [1e6, 5e6])
def test_logits_match_transformers_qwen3(theta):
    ours = _lm(theta=theta)
    ref = hf_qwen3(ours.cfg, ours.state_dict())
    ids = torch.randint(0, 300, (2, 37))
    with torch.no_grad():
        a = ours(ids)
        b = ref(input_ids=ids).logits
    assert (a - b).abs().max().item() <= 1e-5


def test_bf16_close_to_transformers():
    ours = _lm().to(torch.bfloat16)
    ref = hf_qwen3(ours.cfg, ours.state_dict()).to(torch.bfloat16)
    ids = torch.randint(0, 300, (1, 20))
    with torch.no_grad():
        a, b = ours(ids).float(), ref(input_ids=ids).logits.float()
    assert (a - b).abs().max().item() <= 0.05 * b.abs().max().item()


def test_packed_row_equals_separate_samples_lm():
    m = _lm()
    lens = [5, 11, 3, 9]
    ids = torch.randint(0, 300, (1, sum(lens)))
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()])
    pos = torch.cat([torch.arange(n) for n in lens])[None]
    with torch.no_grad():
        packed = m(ids, pos, Segments.from_cu_seqlens(cu, 1, sum(lens)))
        # also: segments derived from restarting position ids
        packed2 = m(ids, pos, Segments.from_position_ids(pos))
        alone = torch.cat([m(s) for s in ids.split(lens, dim=1)], dim=1)
    assert (packed - alone).abs().max().item() <= 1e-5
    assert torch.equal(packed, packed2)


def test_packed_row_with_images_equals_separate():
    m = tiny_model()
    img = m.config.tokens.image
    g1, g2 = torch.tensor([[1, 4, 6]]), torch.tensor([[1, 2, 4]])
    pv1, pv2 = torch.randn(24, 588), torch.randn(8, 588)
    s1 = torch.tensor([1, 2] + [img] * 6 + [3, 4])
    s2 = torch.tensor([5, 6, 7, 8, 9])
    s3 = torch.tensor([10, img, img, 11])
    row = torch.cat([s1, s2, s3])[None]
    cu = torch.tensor([0, 10, 15, 19])
    labels = row.clone()
    with torch.no_grad():
        packed = m(row, torch.cat([pv1, pv2]), torch.cat([g1, g2]), cu_seqlens=cu,
                   labels=labels)
        a = m(s1[None], pv1, g1, labels=s1[None])
        b = m(s2[None], labels=s2[None])
        c = m(s3[None], pv2, g2, labels=s3[None])
    alone = torch.cat([a.logits, b.logits, c.logits], 1)
    assert (packed.logits - alone).abs().max().item() <= 1e-5
    # loss: token mean over the union of each sample's own targets (no cross-boundary targets)
    assert packed.num_loss_tokens == a.num_loss_tokens + b.num_loss_tokens + c.num_loss_tokens
    total = (a.loss * a.num_loss_tokens + b.loss * b.num_loss_tokens
             + c.loss * c.num_loss_tokens) / packed.num_loss_tokens
    assert abs(packed.loss.item() - total.item()) <= 1e-5


def test_left_padded_batch_masked_forward_equals_alone():
    m = tiny_model()
    a, b = torch.randint(0, 300, (7,)), torch.randint(0, 300, (3,))
    ids = torch.zeros(2, 7, dtype=torch.long)
    ids[0], ids[1, 4:] = a, b
    valid = ids != 0
    valid[0] = True
    with torch.no_grad():
        out = m(ids, attention_mask=valid).logits
        la, lb = m(a[None]).logits, m(b[None]).logits
    assert (out[0] - la[0]).abs().max() <= 1e-5
    assert (out[1, 4:] - lb[0]).abs().max() <= 1e-5
    assert torch.isfinite(out).all()
    assert make_decode_mask(valid, 7).shape == (2, 1, 7, 7)


def test_backward_runs_and_gradient_checkpointing_matches():
    m = tiny_model().train()
    img = m.config.tokens.image
    ids = torch.tensor([[1, 2] + [img] * 6 + [3, 4, 5]])
    pv, g = torch.randn(24, 588), torch.tensor([[1, 4, 6]])
    m(ids, pv, g, labels=ids).loss.backward()
    g1 = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad()
    m.set_gradient_checkpointing(True)
    m(ids, pv, g, labels=ids).loss.backward()
    for n, p in m.named_parameters():
        assert p.grad is not None, n
        assert torch.allclose(p.grad, g1[n], atol=1e-6), n
