"""Model families through one interface (`recross_jax.models`): stored configs say their family,
and `recross train` trains BERT2BERT, warm-started from a BERT checkpoint, by changing only the
model gin file; evaluation takes the result unchanged."""
from __future__ import annotations

import hashlib
import json
import os
import textwrap

import gin
import jax
import numpy as np
import pytest
import tiny_bert

from recross_jax import checkpoints, evaluate, models, train
from recross_jax.errors import UserError
from recross_jax.models import Bert2BertConfig, T5Config
from tasks import vocab

TASKS_MODULE = '''
from tasks import common

WORDS = ["red", "green", "blue", "gold", "pink", "gray"]


def examples(split):
    for i in range(24):
        word = WORDS[i % len(WORDS)]
        yield common.make_example(inputs=f"the cat of the {word} house", targets=word,
                                  answer_choices=WORDS[:3] if i % 6 < 3 else [], task="toy_b2b",
                                  template="plain",
                                  example_id=common.example_id("toy_b2b", split, "plain", i))


common.register_task("toy_b2b", examples)
'''

EXPERIMENT = '''
from __gin__ import dynamic_registration

from recross_jax.models import bert2bert
import toy_b2b_tasks

include 'gin/upstream.gin'
include 'gin/models/minilm2minilm.gin'

bert2bert.Bert2BertConfig:
  hidden_size = 32
  num_encoder_layers = 2
  num_decoder_layers = 2
  num_attention_heads = 4
  intermediate_size = 64
  max_position_embeddings = 160
  decoder_start_token_id = 2  # [CLS] of tiny_bert's tokenizer

VOCAB_SIZE = 31
MIXTURE_OR_TASK_NAME = 'toy_b2b'
TASK_FEATURE_LENGTHS = {'inputs': 12, 'targets': 4}
BATCH_SIZE = 8
WARMUP_STEPS = 1
CHECKPOINT_PERIOD = 2
'''


def test_configs_say_their_family():
    t5 = T5Config(vocab_size=64)
    assert models.config_from_dict(t5.to_dict()) == t5
    legacy = {k: v for k, v in t5.to_dict().items() if k != "family"}  # written before families
    assert models.config_from_dict(legacy) == t5
    b2b = Bert2BertConfig(vocab_size=64, hidden_size=32, num_attention_heads=4,
                          decoder_start_token_id=2)
    assert models.config_from_dict(b2b.to_dict()) == b2b
    assert (t5.width, b2b.width) == (512, 32)
    assert type(models.build(b2b)).__module__ == "recross_jax.models.bert2bert"
    with pytest.raises(UserError, match="unknown model family 'gpt'"):
        models.config_from_dict({"family": "gpt"})
    with pytest.raises(UserError, match="no warm start"):
        models.warm_start(t5, "/nowhere", None)


@pytest.fixture()
def experiment(tmp_path, monkeypatch):
    bert_dir = tiny_bert.make_bert_dir(str(tmp_path / "bert"), with_pooler=False)
    (tmp_path / "toy_b2b_tasks.py").write_text(TASKS_MODULE)
    (tmp_path / "b2b.gin").write_text(textwrap.dedent(EXPERIMENT))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # gin/ paths
    # The project vocabulary is resolved once per process: forget it, here and after the test.
    monkeypatch.delitem(vocab.VOCABULARY.__dict__, "resolved", raising=False)
    yield tmp_path, bert_dir
    vocab.VOCABULARY.__dict__.pop("resolved", None)
    gin.clear_config()


def _train(tmp_path, bert_dir, model_dir, steps, warm_start=None, learning_rate=1.0):
    return train.main([f"--gin_file={tmp_path / 'b2b.gin'}", f"--gin.MODEL_DIR='{model_dir}'",
                       f"--gin.TRAIN_STEPS={steps}", "--gin.training.train.progress=False",
                       f"--gin.LEARNING_RATE={learning_rate}",
                       f"--gin.training.train.warm_start='{warm_start or bert_dir}'",
                       f"--gin.tasks.vocab.vocabulary_path.path='{bert_dir}/tokenizer.json'"])


def test_train_warm_starts_bert2bert_records_it_and_evaluation_takes_it(experiment, capsys):
    tmp_path, bert_dir = experiment
    model_dir = tmp_path / "run"
    assert _train(tmp_path, bert_dir, model_dir, 1, learning_rate=0.0) == 0, capsys.readouterr().err
    config, params = checkpoints.restore_model(str(model_dir))
    assert isinstance(config, Bert2BertConfig) and config.vocab_size == 31
    warm = models.warm_start(config, bert_dir, jax.random.PRNGKey(0))
    # A step at learning rate 0 keeps the warm start: both stacks carry BERT's word embeddings.
    embedding = warm["encoder"]["embeddings"]["word_embeddings"]["embedding"]
    np.testing.assert_array_equal(params["encoder"]["embeddings"]["word_embeddings"]["embedding"],
                                  embedding)
    np.testing.assert_array_equal(params["decoder"]["embeddings"]["word_embeddings"]["embedding"],
                                  embedding)
    init = json.loads((model_dir / train_init_file()).read_text())
    with open(os.path.join(bert_dir, "model.safetensors"), "rb") as f:
        assert init["warm_start_sha256"] == hashlib.sha256(f.read()).hexdigest()
    assert init["family"] == "bert2bert"

    gin.clear_config()
    assert _train(tmp_path, bert_dir, model_dir, 3) == 0, capsys.readouterr().err  # resumes
    assert vocab.VOCABULARY.vocab_size == 31  # tiny_bert's WordPiece tokenizer
    assert checkpoints.CheckpointManager(str(model_dir)).latest_step() == 3
    with gin.unlock_config():
        gin.bind_parameter("tasks.vocab.vocabulary_path.path", f"{bert_dir}/tokenizer.json")
    results = evaluate.run_eval(str(model_dir), "toy_b2b", "test", str(tmp_path / "eval"),
                                batch_size=4, max_input_length=12, max_target_length=4,
                                progress=False)
    assert results["num_examples"] > 0 and 0.0 <= results["soft_em"] <= 1.0
    assert results["num_choice_examples"] > 0 and 0.0 <= results["accuracy"] <= 1.0


def test_resuming_with_other_warm_start_weights_is_refused(experiment, capsys):
    tmp_path, bert_dir = experiment
    model_dir = tmp_path / "run"
    assert _train(tmp_path, bert_dir, model_dir, 1) == 0, capsys.readouterr().err
    other = tiny_bert.make_bert_dir(str(tmp_path / "other"), with_pooler=False, seed=1)
    gin.clear_config()
    assert _train(tmp_path, bert_dir, model_dir, 2, warm_start=other) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "was started with warm_start_sha256=" in err[0]


def train_init_file() -> str:
    from recross_jax import training  # pylint: disable=import-outside-toplevel
    return training.INIT_FILE


def test_t5_has_no_warm_start():
    with pytest.raises(UserError):
        models.warm_start(T5Config(vocab_size=8), "x", None)
