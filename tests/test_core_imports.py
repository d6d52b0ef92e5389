"""The model and training core runs where only jax/flax/optax/orbax are installed (a GPU or TPU
machine without TensorFlow, seqio, ScaNN or PyTorch): every library module but the SeqIO data
layer imports without them, and a tiny model trains, checkpoints and encodes.

The subprocess sees a copy of site-packages (links) without the heavy packages, so they are as
absent as on such a machine: libraries probing for them (etils looks for TensorFlow) find nothing.
"""
import os
import re
import subprocess
import sys
import sysconfig
import textwrap

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

HEAVY = ("tensorflow", "tensorflow_text", "seqio", "scann", "torch", "transformers",
         "sentence_transformers", "faiss")
# The modules that are the SeqIO/TensorFlow data layer by design: the batch pipeline and the
# WordPiece vocabulary (a seqio.Vocabulary with TensorFlow ops).
DATA_LAYER = ("recross_jax.data", "recross_jax.wordpiece")

SCRIPT = textwrap.dedent('''
    import importlib, pkgutil, sys, tempfile

    HEAVY = set({heavy!r})
    import recross_jax
    names = sorted(m.name for m in pkgutil.walk_packages(recross_jax.__path__, "recross_jax."))
    for name in names:
        if name not in {data_layer!r}:
            importlib.import_module(name)

    import jax, numpy as np, optax
    from flax import linen as nn
    from recross_jax import checkpoints, training
    from recross_jax.models import bert, t5

    config = t5.T5Config(vocab_size=64, dtype="float32", emb_dim=16, num_heads=2,
                         num_encoder_layers=1, num_decoder_layers=1, head_dim=8, mlp_dim=32)
    model = t5.Transformer(config)
    tokens = np.ones((2, 6), np.int32)
    params = nn.unbox(model.init(jax.random.PRNGKey(0), tokens, tokens, tokens))["params"]
    state = training.TrainState.create(params, optax.adamw(1e-3))
    batch = {{"encoder_input_tokens": tokens, "decoder_input_tokens": tokens,
             "decoder_target_tokens": tokens, "decoder_loss_weights": np.ones((2, 6), np.float32)}}
    state, metrics = training.make_train_step(model, optax.adamw(1e-3))(state, batch)
    assert np.isfinite(float(metrics["loss"])), metrics
    with tempfile.TemporaryDirectory() as model_dir:
        checkpoints.save_model(model_dir, config, state.params, step=1)
        restored_config, restored = checkpoints.restore_model(model_dir)
    assert restored_config == config
    encoder = bert.BertModel(bert.BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1,
                                             num_attention_heads=2, intermediate_size=32))
    bert_params = encoder.init(jax.random.PRNGKey(1), tokens)
    assert encoder.apply(bert_params, tokens).last_hidden_state.shape == (2, 6, 16)
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)
    assert not loaded, loaded
    print("core ok:", len(names) - len({data_layer!r}), "modules")
''')


def _is_heavy(entry: str) -> bool:
    """Whether a site-packages entry (package, module, .dist-info, .libs) is a heavy package's."""
    top = re.split(r"[-.]", entry, maxsplit=1)[0].lower()
    return top in HEAVY or top.startswith(("tensorflow", "torch", "tf_keras"))


def test_core_needs_none_of_the_heavy_packages(tmp_path):
    site_packages = sysconfig.get_paths()["purelib"]
    light = tmp_path / "site-packages"
    light.mkdir()
    for entry in os.listdir(site_packages):
        if not _is_heavy(entry) and not entry.endswith(".pth"):
            os.symlink(os.path.join(site_packages, entry), light / entry)
    assert not (light / "tensorflow").exists() and (light / "jax").exists()
    script = SCRIPT.format(heavy=HEAVY, data_layer=DATA_LAYER)
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join([str(light), REPO]))
    result = subprocess.run([sys.executable, "-S", "-c", script], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "core ok:" in result.stdout
