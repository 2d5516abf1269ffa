"""RICE-ViT vs transformers' MLCDVisionModel; varlen packing of several images; merger."""

import pytest
import torch

from llava_ov15.model.config import VisionConfig
from llava_ov15.model.processor import patchify
from llava_ov15.model.vision import VisionTower, patch_positions


def _tower(seed=0):
    torch.manual_seed(seed)
    cfg = VisionConfig(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128,
                       out_hidden_size=48)
    m = VisionTower(cfg)
    with torch.no_grad():
        for name, p in m.named_parameters():
            p.copy_(torch.randn_like(p) * (0.2 if "norm" in name else 0.05) + ("norm" in name))
        m.class_pos_emb.normal_(0, 1.0)
    return m.eval()


def _image(h, w, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(3, 14 * h, 14 * w, generator=g)


def _ours(tower, images):
    pv = torch.cat([torch.from_numpy(patchify(im.numpy())) for im in images])
    grid = torch.tensor([[1, im.shape[1] // 14, im.shape[2] // 14] for im in images])
    return pv, grid


@pytest.mark.parametrize("hw", [(2, 2), (4, 6), (6, 4), (8, 2)])
def test_matches_mlcd(hw):
    from llava_ov15.model.testing import hf_mlcd

    tower = _tower()
    ref = hf_mlcd(tower.cfg, tower.state_dict())
    im = _image(*hw, seed=hw[0] * 10 + hw[1])
    pv, grid = _ours(tower, [im])
    with torch.no_grad():
        ours = tower.features(pv, grid)
        theirs = ref(pixel_values=im[None]).last_hidden_state[0, 1:]  # drop CLS, row-major
    rc = patch_positions(grid, 2)
    theirs = theirs[rc[:, 0] * hw[1] + rc[:, 1]]  # -> merge-window order
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max().item() <= 1e-5


def test_two_images_in_one_call_equal_separate_calls():
    tower = _tower()
    ims = [_image(4, 6, 1), _image(2, 8, 2), _image(6, 2, 3)]
    pv, grid = _ours(tower, ims)
    with torch.no_grad():
        joint = tower(pv, grid)
        alone = torch.cat([tower(*_ours(tower, [im])) for im in ims])
    assert joint.shape == (sum(im.shape[1] * im.shape[2] // 14**2 // 4 for im in ims), 48)
    assert (joint - alone).abs().max().item() <= 1e-5


def test_patch_positions_window_order():
    rc = patch_positions(torch.tensor([[1, 2, 4]]), 2).tolist()
    assert rc == [[0, 0], [0, 1], [1, 0], [1, 1], [0, 2], [0, 3], [1, 2], [1, 3]]


def test_merger_groups_windows():
    tower = _tower()
    x = torch.randn(8, 64)
    out = tower.merger(x)
    first = tower.merger.mlp(tower.merger.ln_q(x[:4]).reshape(1, -1))
    assert torch.allclose(out[:1], first, atol=1e-6)


def test_grid_mismatch_is_an_error():
    tower = _tower()
    with pytest.raises(ValueError, match="patches"):
        tower(torch.randn(10, 588), torch.tensor([[1, 2, 4]]))
