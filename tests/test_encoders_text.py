"""The frozen text encoder's cached token states: batches of similar length give each text the states it has
when encoded alone."""

import numpy as np

from gpfuse.encoders.text import encode_texts

TEXTS = [
    "ok",
    "this film was a long, slow and rather boring story about nothing at all, told twice",
    "great acting",
    "i did not like the ending but the music was wonderful and the cast were very good",
    "meh, fine",
]


def test_length_batches_give_each_text_its_own_states():
    states, mask = encode_texts(TEXTS, "minilm", max_len=24, batch_size=2, progress=False)
    assert states.shape == (5, 24, 384) and mask.shape == (5, 24)
    lengths = mask.sum(1)
    assert len(set(lengths.tolist())) == 5  # every batch mixes or cuts lengths differently
    for i, text in enumerate(TEXTS):
        alone, alone_mask = encode_texts([text], "minilm", max_len=24, progress=False)
        np.testing.assert_array_equal(alone_mask[0], mask[i])
        np.testing.assert_allclose(states[i], alone[0], atol=1e-5)
    assert not states[~mask].any()  # padding stays zero
    assert np.abs(states[mask]).min(axis=-1).max() > 0
