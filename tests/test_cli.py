"""The `recross` command: data subcommands on small registered tasks, and every error path."""
import importlib.metadata
import os
import subprocess
import sys
import textwrap

import pytest
import seqio

import recross_jax
from recross_jax import cli

SEQIO_TEST_VOCAB = os.path.join(os.path.dirname(seqio.__file__), "test_data", "sentencepiece",
                                "sentencepiece.model")

TASKS_MODULE = textwrap.dedent('''
    from tasks import common

    def examples(split):
        for i in range(6):
            yield common.make_example(
                inputs=f"Is {i} even? Options: yes, no", targets="yes" if i % 2 == 0 else "no",
                answer_choices=["yes", "no"], task="clitiny.parity", template="plain",
                example_id=common.example_id("clitiny.parity", split, "plain", i))

    def generative(split):
        for i in range(3):
            yield common.make_example(inputs=f"Count to {i}", targets=" ".join(map(str, range(i + 1))),
                                      answer_choices=[], task="clitiny.count", template="plain",
                                      example_id=common.example_id("clitiny.count", split, "plain", i))

    common.register_task("clitiny.parity", examples)
    common.register_task("clitiny.count", generative)
    common.register_mixture("clitiny_mix", ["clitiny.parity", "clitiny.count"])
''')


@pytest.fixture()
def tasks_module(tmp_path, monkeypatch):
    (tmp_path / "clitiny_tasks.py").write_text(TASKS_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("RECROSS_VOCAB", SEQIO_TEST_VOCAB)
    return "clitiny_tasks"


def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_data_list_tasks_and_mixtures(capsys, tasks_module):
    code, out, _ = run(capsys, "data", "list", "--tasks_module", tasks_module)
    assert code == 0 and {"clitiny.parity", "clitiny.count"} <= set(out.split())
    code, out, _ = run(capsys, "data", "list", "--mixtures", "--tasks_module", tasks_module)
    assert code == 0 and "clitiny_mix" in out.split()


def test_data_show_formats_choices_and_generative(capsys, tasks_module):
    code, out, _ = run(capsys, "data", "show", "clitiny_mix", "-n", "8", "--tasks_module", tasks_module)
    assert code == 0
    assert "[clitiny.parity|train|plain|#0]" in out
    assert "inputs : Is 0 even? Options: yes, no" in out and "targets: yes" in out
    assert "choices: yes ||| no" in out
    assert "targets: 0 1 2" in out  # the generative task, reached after the 6 parity examples
    assert out.count("\n[") + out.startswith("[") == 8


def test_data_stats_counts_and_percentiles(capsys, tasks_module):
    code, out, _ = run(capsys, "data", "stats", "clitiny_mix", "--tasks_module", tasks_module)
    assert code == 0
    lines = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith("clitiny")}
    assert lines["clitiny.parity"][1:3] == ["6", "6"]
    assert lines["clitiny.count"][1:3] == ["3", "0"]
    assert "TOTAL (2 tasks)  9" in " ".join(out.split()) or "TOTAL (2 tasks) 9" in " ".join(out.split())
    p50, p90, p99, longest = map(int, lines["clitiny.count"][3].split("/"))
    assert 0 < p50 <= p90 <= p99 <= longest


@pytest.mark.parametrize("argv,message", [
    (["data", "show", "no.such.task"], "unknown task or mixture: 'no.such.task'"),
    (["data", "stats", "no_such_mixture"], "unknown task or mixture: 'no_such_mixture'"),
    (["data", "show", "clitiny.parity", "--split", "dev"], "has no split 'dev'"),
    (["data", "show", "clitiny.parity", "-n", "0"], "-n must be at least 1"),
    (["data", "list", "--gin.no_such_configurable.x=1"], "no_such_configurable"),
])
def test_errors_are_one_line_exit_2(capsys, tasks_module, argv, message):
    code, out, err = run(capsys, *argv, "--tasks_module", tasks_module)
    assert code == 2, err
    assert err.startswith("recross: error: ") and message in err
    assert len(err.strip().splitlines()) == 1


def test_help_lists_every_command_and_reranker_takes_one_action(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    listed = capsys.readouterr().out
    for name in ("train", "eval", "mine", "reranker", "data", "index", "retrieve", "generalize",
                 "report", "assets", "vocab"):
        assert f"\n    {name} " in listed or f"\n    {name}\n" in listed, name
    code, out, err = run(capsys, "reranker", "--help")
    assert code == 0 and not err
    assert out.startswith("usage: recross reranker train --tuples FILE --out DIR")
    for argv, got in ((["reranker"], "(no action given)"), (["reranker", "fit"], "(got 'fit')")):
        code, _, err = run(capsys, *argv)
        assert code == 2 and err.strip().splitlines() == [
            f"recross: error: usage: recross reranker train --tuples FILE --out DIR "
            f"[gin flags] {got}"]


def test_version_is_the_package_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"recross-jax {recross_jax.__version__}"
    # setup.py reads it from the package: the installed distribution carries the same version
    assert importlib.metadata.version("recross-jax") == recross_jax.__version__


def test_missing_tasks_module_is_a_user_error(capsys):
    code, _, err = run(capsys, "data", "list", "--tasks_module", "no_such_tasks_module")
    assert code == 2 and "cannot import tasks module 'no_such_tasks_module'" in err


def test_console_script_exit_code_and_usage_errors():
    recross = os.path.join(os.path.dirname(sys.executable), "recross")
    result = subprocess.run([recross, "data", "show", "x.y", "--tasks_module", "json"],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "recross: error: unknown task or mixture: 'x.y' (see `recross data list [--mixtures]`)")
    result = subprocess.run([recross, "nonsense"], capture_output=True, text=True, check=False)
    assert result.returncode == 2 and "invalid choice" in result.stderr


def test_cpu_devices_from_the_environment(capsys, monkeypatch):
    monkeypatch.setenv(cli.CPU_DEVICES_ENV, "two")
    code, _, err = run(capsys, "data", "list")
    assert code == 2 and err == "recross: error: RECROSS_CPU_DEVICES must be a positive integer, got 'two'\n"
    # In a fresh process (this one's JAX already has its devices): the host CPU becomes 2 devices,
    # and asking for another count once JAX has started is a clear error.
    script = textwrap.dedent('''
        import jax
        from recross_jax import cli
        from recross_jax.errors import UserError
        cli._use_cpu_devices("2")
        print(jax.device_count(), jax.numpy.ones(4).sum())
        cli._use_cpu_devices("2")  # the same count again is fine
        try:
            cli._use_cpu_devices("3")
        except UserError as e:
            print(e)
    ''')
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                            env=dict(os.environ, JAX_PLATFORMS="cpu"))
    lines = result.stdout.splitlines()
    assert lines[0] == "2 4.0"
    assert lines[1].startswith("cannot use 3 CPU devices: JAX already started with 2")


def test_compilation_cache_from_the_environment(capsys, monkeypatch, tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    monkeypatch.setenv(cli.COMPILATION_CACHE_ENV, str(not_a_dir))
    code, _, err = run(capsys, "data", "list")
    assert code == 2 and err == f"recross: error: RECROSS_COMPILATION_CACHE is not a directory: {not_a_dir}\n"
    monkeypatch.setenv(cli.COMPILATION_CACHE_ENV, str(not_a_dir / "below"))
    code, _, err = run(capsys, "data", "list")
    assert code == 2 and err == (f"recross: error: cannot create the RECROSS_COMPILATION_CACHE "
                                 f"directory {not_a_dir / 'below'}: Not a directory\n")
    assert cli.use_compilation_cache("off") is None
    # In a fresh process: the default lies in the asset cache, and a compiled program is
    # written there and read back by the next process instead of being compiled again.
    script = textwrap.dedent('''
        import os, jax, jax.numpy as jnp
        from jax._src import monitoring
        from recross_jax import cli
        cli.CACHE_MIN_COMPILE_SECONDS = 0.0
        hits = []
        monitoring.register_event_listener(
            lambda event, **kw: hits.append(event) if event == "/jax/compilation_cache/cache_hits" else None)
        path = cli.use_compilation_cache(None)
        print(path == os.path.join(os.environ["RECROSS_CACHE"], "jax_compilation_cache"))
        print(float(jax.jit(lambda x: jnp.tanh(x) @ x.T)(jnp.ones((4, 4))).sum()), len(hits))
    ''')
    env = {**os.environ, "RECROSS_CACHE": str(tmp_path / "cache"), "JAX_PLATFORMS": "cpu"}
    env.pop(cli.COMPILATION_CACHE_ENV)
    runs = [subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                           env=env, check=True).stdout.split() for _ in range(2)]
    assert runs[0][0] == "True" and runs[0][2] == "0"  # a cold cache: everything compiled
    assert runs[1][:2] == runs[0][:2] and int(runs[1][2]) >= 1  # the same result, from the cache
    assert os.listdir(tmp_path / "cache" / "jax_compilation_cache")


def test_missing_vocabulary_is_one_line_exit_2_before_any_dataset_is_traced(
        capsys, tasks_module, monkeypatch, tmp_path):
    from recross_jax import data, evaluate  # pylint: disable=import-outside-toplevel
    from recross_jax.errors import UserError  # pylint: disable=import-outside-toplevel
    from tasks import vocab  # pylint: disable=import-outside-toplevel
    missing = tmp_path / "missing.model"
    monkeypatch.setenv("RECROSS_VOCAB", str(missing))
    # The project vocabulary loads its file once per process: forget it for this test.
    monkeypatch.delitem(vocab.VOCABULARY.__dict__, "resolved", raising=False)
    code, _, err = run(capsys, "data", "show", "clitiny_mix", "-n", "1", "--tasks_module", tasks_module)
    assert code == 2 and err.startswith(f"recross: error: vocabulary file not found: {missing} (run")
    assert err.count("\n") == 1
    # The evaluation and training pipelines raise it too (not TensorFlow's StagingError).
    with pytest.raises(UserError, match="vocabulary file not found"):
        evaluate.load_examples("clitiny.parity", "train")
    with pytest.raises(UserError, match="vocabulary file not found"):
        data.get_dataset("clitiny_mix", "train", 2, {"inputs": 16, "targets": 4})
