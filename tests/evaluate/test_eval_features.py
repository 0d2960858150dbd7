"""Frozen feature extraction: exact, eval mode, no dropped remainder, cached by content."""

import numpy as np
import torch
from torch.utils.data import TensorDataset

from betaweighter.evaluate.features import dataset_fingerprint, extract_features
from betaweighter.models import build_model


def _data(n=23):
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(n, 3, 8, 8, generator=g), torch.arange(n) % 3)


def test_features_match_an_eval_mode_forward_and_keep_the_remainder(tiny_convnet_config):
    torch.manual_seed(0)
    model = build_model(**tiny_convnet_config).train()
    data = _data()
    feats, labels = extract_features(model, data, batch_size=5)  # 23 = 4 x 5 + 3
    assert feats.shape == (23, 8) and feats.dtype == np.float32
    np.testing.assert_array_equal(labels, np.arange(23) % 3)
    model.eval()
    with torch.no_grad():
        expected = model.features(data.tensors[0]).numpy()
    np.testing.assert_allclose(feats, expected, rtol=1e-5, atol=1e-6)
    # the model's training flag is restored and BatchNorm statistics untouched
    model.train()
    before = model.encoder[0][1].running_mean.clone()
    extract_features(model, data, batch_size=5)
    assert model.training
    torch.testing.assert_close(model.encoder[0][1].running_mean, before)


def test_cache_is_reused_and_keyed_by_the_weights(tiny_convnet_config, image_folder_writer,
                                                  tmp_path):
    from betaweighter.data.labelled import pooled_folders

    root = image_folder_writer(tmp_path / "pool", {"red": 3, "blue": 2})
    pool, _ = pooled_folders([root], image_size=16)
    torch.manual_seed(0)
    model = build_model(**tiny_convnet_config)
    cache = tmp_path / "cache"
    first, _ = extract_features(model, pool, cache_dir=cache, name="pool")
    files = sorted(cache.iterdir())
    assert len(files) == 2
    again, _ = extract_features(model, pool, cache_dir=cache, name="pool")
    np.testing.assert_array_equal(first, again)
    assert sorted(cache.iterdir()) == files  # nothing recomputed or added
    with torch.no_grad():
        model.encoder[0][0].weight.mul_(2.0)  # new weights -> new key, new features
    changed, _ = extract_features(model, pool, cache_dir=cache, name="pool")
    assert len(list(cache.iterdir())) == 4
    assert not np.allclose(changed, first)


def test_datasets_without_a_stable_description_are_not_cached():
    class Opaque(torch.utils.data.Dataset):
        def __len__(self):
            return 1

        def __getitem__(self, i):
            return torch.zeros(3, 4, 4), 0

    assert dataset_fingerprint(Opaque()) is None
    assert dataset_fingerprint(torch.utils.data.Subset(Opaque(), [0])) is None
